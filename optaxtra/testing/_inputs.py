"""Arguments of ``check_transformation``: a TypeError or ValueError if unusable."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core.paths import quote
from optaxtra.testing._trees import FN, aval, float64, leaves, tree_diff


def check_inputs(
  tx: Any,
  params: Any,
  grads: Any,
  num_steps: Any,
  zero_grad_rtol: Any,
  check_grad_dependence: Any,
) -> None:
  """Raises ``TypeError`` or ``ValueError`` for arguments the probes cannot use."""
  if not (
    callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
  ):
    raise TypeError(
      f"{FN}: tx must be an optax.GradientTransformation (with init and update), "
      f"got {type(tx).__name__}. Pass e.g. optax.adam(1e-3), not optax.adam."
    )
  param_leaves = leaves(params)
  if not param_leaves:
    raise ValueError(f"{FN}: params has no array leaves; there is nothing to check.")
  for path, p in param_leaves:
    dt = getattr(p, "dtype", None)
    if dt is None or not jnp.issubdtype(dt, jnp.inexact):
      raise TypeError(
        f"{FN}: parameter {quote(path)} is {type(p).__name__} of dtype {dt}; pass "
        "floating (or complex) arrays, e.g. jnp.zeros(3)."
      )
    if getattr(aval(p), "weak_type", False):
      raise ValueError(
        f"{FN}: parameter {quote(path)} is weakly typed (made from a Python "
        "scalar, e.g. jnp.array(0.5)); its state would be too, and change type "
        f"after the first update. Give it a dtype: jnp.asarray(value, jnp.{dt})."
      )
  if grads is not None:
    _check_grads(grads, params, param_leaves)
  if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
    raise TypeError(f"{FN}: num_steps must be an int, got {num_steps!r}.")
  if num_steps < 2:
    raise ValueError(
      f"{FN}: num_steps must be >= 2 (the second jitted step is where a "
      f"recompilation shows), got {num_steps}."
    )
  if zero_grad_rtol is not None:
    _hyper.real(
      FN,
      "zero_grad_rtol",
      zero_grad_rtol,
      low=0.0,
      fix="Pass None to skip the zero-gradient check.",
    )
  _checks.check_flag(FN, "check_grad_dependence", check_grad_dependence)


def _check_grads(grads: Any, params: Any, param_leaves: list[tuple[str, Any]]) -> None:
  """Given grads must be finite and like the params, leaf for leaf."""
  if jax.tree.structure(grads) != jax.tree.structure(params):
    raise ValueError(
      f"{FN}: grads must have the params' tree ({tree_diff(grads, params)})."
    )
  for (path, g), (_, p) in zip(leaves(grads), param_leaves, strict=True):
    if jnp.shape(g) != jnp.shape(p):
      raise ValueError(
        f"{FN}: grads for {quote(path)} has shape {jnp.shape(g)}, the parameter "
        f"{jnp.shape(p)}."
      )
    if jnp.result_type(g) != p.dtype:
      raise ValueError(
        f"{FN}: grads for {quote(path)} has dtype {jnp.result_type(g)}, the "
        f"parameter {p.dtype}; gradients come in the params' dtypes."
      )
    if not np.all(np.isfinite(float64(g))):
      raise ValueError(
        f"{FN}: grads for {quote(path)} is not finite; the checks need finite grads."
      )
