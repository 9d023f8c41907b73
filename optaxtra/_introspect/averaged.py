"""Reading the average back as params: averaged_params."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optaxtra._average import _READ, AverageParamsState
from optaxtra._core import paths as _paths
from optaxtra._core.paths import SHOW, path_str, quote, show


def _find(state: Any) -> list[tuple[str, AverageParamsState]]:
  flat = jax.tree_util.tree_flatten_with_path(
    state, is_leaf=lambda x: isinstance(x, AverageParamsState)
  )[0]
  return [(path_str(p), x) for p, x in flat if isinstance(x, AverageParamsState)]


def averaged_params(state: optax.OptState, params: optax.Params | None = None) -> Any:
  """The average kept by :func:`optaxtra.average_params`, as params.

  Finds the one :class:`optaxtra.AverageParamsState` inside ``state``, at any
  depth: in a chain, :func:`optax.masked`, :func:`optax.partition`,
  :class:`optax.MultiSteps`, :func:`optax.inject_hyperparams`, and the
  ``opt_state`` of Flax's ``nnx.Optimizer`` (whose ``Variable`` boxes are
  looked through).

  Args:
    state: an optimizer state holding exactly one average.
    params: the params, whose tree and dtypes the result takes (Flax boxes
      included) and whose values fill the leaves outside the average's mask.
      Without them the result has the average's tree and dtypes (float32 for
      bfloat16 params, by default), and every leaf must have been averaged.

  Returns:
    The averaged params: with ``params``, a tree like it, each averaged leaf
    cast to its param's dtype and the others the params' own.

  Raises:
    ValueError: when ``state`` holds no average or several (the message says
      how many and where), when leaves outside the mask exist and ``params``
      is None, or when ``params`` does not fit the average.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"w": jnp.ones(2, jnp.bfloat16), "steps": jnp.zeros((), jnp.int32)}
    >>> tx = optax.chain(
    ...     optax.masked(optax.sgd(0.1), {"w": True, "steps": False}),
    ...     optaxtra.average_params(0.9, mask={"w": True, "steps": False}))
    >>> state = tx.init(params)
    >>> state[1].average["w"].dtype  # averaged in float32
    dtype('float32')
    >>> averaged = optaxtra.averaged_params(state, params)
    >>> averaged["w"].dtype, averaged["steps"]
    (dtype(bfloat16), Array(0, dtype=int32))
  """
  found = _find(state)
  if not found:
    raise ValueError(
      f"{_READ}: found no AverageParamsState in the given "
      f"{type(state).__name__}. Put optaxtra.average_params() last in the "
      "optimizer's chain and pass the optimizer's state (tx.init's or "
      "tx.update's, or nnx.Optimizer.opt_state). A state restored by Orbax "
      "without a target is plain dicts: restore against "
      "jax.eval_shape(tx.init, params)."
    )
  if len(found) > 1:
    where = ", ".join(quote(p) for p, _ in found[:SHOW])
    if len(found) > SHOW:
      where += ", ..."
    raise ValueError(
      f"{_READ}: found {len(found)} AverageParamsState in the state, at "
      f"{where}; which average to return is ambiguous. Keep one "
      "average_params in the optimizer, or pass the part of the state that "
      "holds the one you want."
    )
  average = found[0][1].average
  if params is None:
    entries, treedef = _paths.walk(average)
    outside = [e.path for e in entries if e.masked]
    if outside:
      raise ValueError(
        f"{_READ}: {len(outside)} parameters are outside the average's mask "
        f"({show(outside)}); pass the params, averaged_params(state, params), "
        "whose values they keep."
      )
    return _paths.rebuild(entries, treedef, [e.value for e in entries])
  # Matched by path, never by position: params whose names differ from the
  # average's are refused by name, even where the shapes agree.
  pairs = _paths.match(_READ, params, average, a_is="params", b_is="the average")
  p_entries, p_treedef = _paths.walk(params)
  out = []
  for p, a in pairs:
    if a.masked or p.masked:
      out.append(None)
      continue
    if jnp.shape(a.value) != jnp.shape(p.value):
      raise ValueError(
        f"{_READ}: the average of {quote(p.path)} has shape {jnp.shape(a.value)} "
        f"but the parameter has shape {jnp.shape(p.value)}; pass the params the "
        "optimizer was initialised on."
      )
    out.append(jnp.asarray(a.value).astype(jnp.result_type(p.value)))
  return _paths.rebuild(
    p_entries,
    p_treedef,
    [p.value if v is None else v for (p, _), v in zip(pairs, out, strict=True)],
  )
