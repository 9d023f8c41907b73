"""Checks for custom gradient transformations.

:func:`check_transformation` runs a transformation for a few steps, eagerly
and under :func:`jax.jit`, and fails with an ``AssertionError`` that names the
problem and the leaf, for the mistakes that otherwise show up only as a
silently stalled training run, a recompilation every step, or a crash far
from their cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra import _checks, _compat

__all__ = ["check_transformation"]

_FN = "check_transformation"
# The zero-gradient probe compares an update's size with its parameter's, or
# with this when the parameter is smaller (a bias of zeros).
_ZERO_GRAD_FLOOR = 1e-3


def _leaves(tree: Any) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(_checks.path_str(p), x) for p, x in flat]


def _aval(x: Any) -> Any:
  try:
    return _compat.typeof(x)
  except TypeError:
    return None


def _describe(aval: Any) -> str:
  if aval is None:
    return "not an array"
  weak = " (weakly typed)" if getattr(aval, "weak_type", False) else ""
  return f"{aval.dtype}{list(aval.shape)}{weak}"


def _tree_diff(a: Any, b: Any) -> str:
  pa = {p for p, _ in _leaves(a)}
  pb = {p for p, _ in _leaves(b)}
  only_a, only_b = sorted(pa - pb)[:5], sorted(pb - pa)[:5]
  if only_a or only_b:
    return f"leaves only in the first: {only_a}; only in the second: {only_b}"
  sa, sb = str(jax.tree.structure(a)), str(jax.tree.structure(b))
  return f"{sa[:300]} versus {sb[:300]}"


def _fail(msg: str) -> NoReturn:
  raise AssertionError(f"{_FN}: {msg}")


def _check_updates(updates: Any, params: Any, when: str) -> None:
  """Updates must be a tree like the params, leaf for leaf, and finite."""
  if jax.tree.structure(updates) != jax.tree.structure(params):
    _fail(
      f"{when}, the updates' tree is not the params' tree: "
      f"{_tree_diff(updates, params)}. tx.update must return one update per "
      "parameter, in the params' structure."
    )
  for (path, u), (_, p) in zip(_leaves(updates), _leaves(params), strict=True):
    ua, pa = _aval(u), _aval(p)
    if ua is None:
      _fail(f"{when}, the update for '{path}' is a {type(u).__name__}, not an array.")
    if ua.shape != pa.shape:
      _fail(
        f"{when}, the update for '{path}' has shape {ua.shape} but the parameter "
        f"has shape {pa.shape}; optax.apply_updates would broadcast or fail."
      )
    if ua.dtype != pa.dtype:
      _fail(
        f"{when}, the update for '{path}' has dtype {ua.dtype} but the parameter "
        f"has dtype {pa.dtype}. Cast the update back (u.astype(g.dtype)), or the "
        "params change dtype when the update is applied."
      )
    bad = int(np.size(u) - np.count_nonzero(np.isfinite(_float64(u))))
    if bad:
      _fail(
        f"{when}, finite gradients gave non-finite updates for '{path}' ({bad} of "
        f"{np.size(u)} entries are nan or inf)."
      )


def _signature(state: Any) -> tuple[Any, list[tuple[str, Any]]]:
  return jax.tree.structure(state), [(p, _aval(x)) for p, x in _leaves(state)]


def _check_state_like(
  first: tuple[Any, list[tuple[str, Any]]], state: Any, when: str
) -> None:
  """The state after a step must have the init state's tree, shapes, dtypes."""
  treedef, avals = _signature(state)
  hint = (
    "A state that changes between steps makes jax.jit recompile the update "
    "every step and lax.scan reject it: create every state leaf in init with "
    "its final shape and dtype."
  )
  if treedef != first[0]:
    _fail(
      f"the state's tree after {when} differs from the one init returned: "
      f"{_tree_diff(first[0].unflatten([0] * first[0].num_leaves), state)}. {hint}"
    )
  for (path, a0), (_, a1) in zip(first[1], avals, strict=True):
    if a1 is None or a0 is None:
      _fail(
        f"state leaf '{path}' is not an array after init or {when} (got "
        f"{_describe(a0)} and {_describe(a1)}); jax.jit cannot take it."
      )
    if a0.shape != a1.shape or a0.dtype != a1.dtype:
      _fail(
        f"state leaf '{path}' is {_describe(a0)} after init but {_describe(a1)} "
        f"after {when}. {hint}"
      )


def _buffers(x: Any) -> list[Any]:
  if isinstance(x, jax.Array) and not _checks.is_traced(x) and x.size:
    return [
      (str(s.device), s.data.unsafe_buffer_pointer()) for s in x.addressable_shards
    ]
  if isinstance(x, np.ndarray) and x.size:
    return [("host", x.__array_interface__["data"][0])]
  return []


def _check_buffers(state: Any, params: Any, read: list[bool]) -> None:
  """No leaf of the initial state may be a params buffer, nor share one.

  ``read[i]``: whether the update reads (or returns) state leaf ``i``. Two state
  leaves may share a buffer when at most one of them is read: ``jax.jit``
  drops unread arguments, so only one is donated.
  """
  owner: dict[Any, str] = {}
  for path, p in _leaves(params):
    for b in _buffers(p):
      owner.setdefault(b, path)
  param_ids = {id(p): path for path, p in _leaves(params) if _buffers(p)}
  seen: dict[Any, str] = {}
  for (path, x), used in zip(_leaves(state), read, strict=True):
    bufs = _buffers(x)
    hit = param_ids.get(id(x)) or next((owner[b] for b in bufs if b in owner), None)
    if hit is not None:
      _fail(
        f"state leaf '{path}' returned by init holds the buffer of parameter "
        f"'{hit}' itself. Donating the params to jax.jit (donate_argnums, as "
        "Flax and most training loops do) deletes it, and the next update fails; "
        "donating both donates one buffer twice. Keep a copy "
        "(jnp.array(p, copy=True)) or jnp.zeros_like(p)."
      )
    if not used:
      continue
    for b in bufs:
      if b in seen:
        _fail(
          f"state leaves '{seen[b]}' and '{path}' returned by init share one "
          "buffer, and the update reads both: donating the state to jax.jit "
          "fails with 'Attempt to donate the same buffer twice'. Create each "
          "leaf separately (one jnp.zeros_like call each)."
        )
      seen[b] = path


def _state_leaves_read(update: Any, grads: Any, state: Any, params: Any) -> list[bool]:
  """Which state leaves the traced update reads or returns."""
  closed = jax.make_jaxpr(update)(grads, state, params)
  used = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars}
  used |= {id(v) for v in closed.jaxpr.outvars}
  start = len(jax.tree.leaves(grads))
  n = len(jax.tree.leaves(state))
  return [id(v) in used for v in closed.jaxpr.invars[start : start + n]]


def _float64(x: Any) -> np.ndarray:
  """A float64 (complex128 for complex) NumPy copy of any leaf, bfloat16 included."""
  a = np.asarray(x)
  return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def _rms(x: Any) -> float:
  a = np.abs(_float64(x))
  return float(np.sqrt(np.mean(a * a))) if a.size else 0.0


def _host_tree(fn: Any, params: Any) -> Any:
  """``fn(shape, dtype)`` per leaf, a NumPy array made a JAX array (no compile)."""
  return jax.tree.map(
    lambda p: jnp.asarray(np.asarray(fn(np.shape(p), p.dtype)).astype(p.dtype)), params
  )


def _default_grads(params: Any, step: int) -> Any:
  """Standard-normal gradients, a fixed draw per step (complex for complex)."""
  rng = np.random.default_rng([20170224, step])

  def draw(shape, dtype):
    if jnp.issubdtype(dtype, jnp.complexfloating):
      return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return rng.standard_normal(shape)

  return _host_tree(draw, params)


def _check_inputs(tx, params, grads, num_steps, zero_grad_rtol, check_grad_dependence):
  if not (
    callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
  ):
    raise TypeError(
      f"{_FN}: tx must be an optax.GradientTransformation (with init and update), "
      f"got {type(tx).__name__}. Pass e.g. optax.adam(1e-3), not optax.adam."
    )
  leaves = _leaves(params)
  if not leaves:
    raise ValueError(f"{_FN}: params has no array leaves; there is nothing to check.")
  for path, p in leaves:
    dt = getattr(p, "dtype", None)
    if dt is None or not jnp.issubdtype(dt, jnp.inexact):
      raise TypeError(
        f"{_FN}: parameter '{path}' is {type(p).__name__} of dtype {dt}; pass "
        "floating (or complex) arrays, e.g. jnp.zeros(3)."
      )
    if getattr(_aval(p), "weak_type", False):
      raise ValueError(
        f"{_FN}: parameter '{path}' is weakly typed (made from a Python scalar, "
        f"e.g. jnp.array(0.5)); its state would be too, and change type after the "
        f"first update. Give it a dtype: jnp.asarray(value, jnp.{dt})."
      )
  if grads is not None:
    if jax.tree.structure(grads) != jax.tree.structure(params):
      raise ValueError(
        f"{_FN}: grads must have the params' tree ({_tree_diff(grads, params)})."
      )
    for (path, g), (_, p) in zip(_leaves(grads), leaves, strict=True):
      if jnp.shape(g) != jnp.shape(p):
        raise ValueError(
          f"{_FN}: grads for '{path}' has shape {jnp.shape(g)}, the parameter "
          f"{jnp.shape(p)}."
        )
      if jnp.result_type(g) != p.dtype:
        raise ValueError(
          f"{_FN}: grads for '{path}' has dtype {jnp.result_type(g)}, the "
          f"parameter {p.dtype}; gradients come in the params' dtypes."
        )
      if not np.all(np.isfinite(_float64(g))):
        raise ValueError(
          f"{_FN}: grads for '{path}' is not finite; the checks need finite grads."
        )
  if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
    raise TypeError(f"{_FN}: num_steps must be an int, got {num_steps!r}.")
  if num_steps < 2:
    raise ValueError(
      f"{_FN}: num_steps must be >= 2 (the second jitted step is where a "
      f"recompilation shows), got {num_steps}."
    )
  if zero_grad_rtol is not None:
    _checks.check_scalar(
      _FN,
      "zero_grad_rtol",
      zero_grad_rtol,
      low=0.0,
      high=None,
      fix="Pass None to skip the zero-gradient check.",
    )
  _checks.check_flag(_FN, "check_grad_dependence", check_grad_dependence)


def check_transformation(
  tx: optax.GradientTransformation,
  params: optax.Params,
  *,
  grads: optax.Updates | None = None,
  num_steps: int = 3,
  zero_grad_rtol: float | None = 0.5,
  check_grad_dependence: bool = True,
  extra_args: Mapping[str, Any] | None = None,
) -> None:
  r"""Runs a gradient transformation a few steps and fails on common mistakes.

  ``tx`` is initialised on ``params`` and updated ``num_steps`` times under
  :func:`jax.jit`, as a training loop does (the params passed to every update).
  It fails with an ``AssertionError`` naming the problem, the step and the leaf
  path when:

  * the updates do not have the params' tree, or a leaf's shape or dtype
    differs from its parameter's;
  * finite gradients give a non-finite update;
  * the state's tree, or a leaf's shape or dtype, after a step differs from
    what ``init`` returned (this breaks :func:`jax.lax.scan` and makes
    :func:`jax.jit` recompile every step);
  * the second jitted update traces (so compiles) again: the message names the
    state leaves whose type changed, in practice one that ``init`` left weakly
    typed (``count=0`` or ``jnp.asarray(1.0)`` instead of
    ``jnp.zeros([], jnp.int32)``) and the update made strong. ``lax.scan``
    accepts that, but every jitted training step after the first is compiled
    anew;
  * a leaf of the state ``init`` returns *is* one of the params' buffers
    (donating the params to :func:`jax.jit`, as Flax and most training loops
    do, deletes it), or two of its leaves that the update reads share one
    buffer (donating the state fails);
  * ``tx.init`` raises, or ``tx.update`` raises under ``jax.jit`` (it must be
    traceable: no Python ``if`` on traced values, no ``float(x)``).

  Two probes look for updates that are not *deltas*. Optax adds updates to the
  parameters (``optax.apply_updates(params, updates) = params + updates``), so
  a transformation that returns the new parameter values, or some fixed value
  such as ones (the mistake of seed 001), silently breaks training:

  * ``zero_grad_rtol``: on a fresh state, all-zero gradients must give, for
    each leaf, an update whose root-mean-square is at most ``zero_grad_rtol``
    times the parameter's (or times 1e-3, if larger: a parameter of zeros).
    Returning ``params - lr * g`` gives ratio 1 and fails, returning ones fails
    for parameters of root-mean-square below ``1 / zero_grad_rtol``; Optax's
    and optaxtra's optimizers give 0, or ``lr * weight_decay`` (far below 0.5)
    with decay. Its limits: it cannot tell new parameter values from a change
    for parameters of zeros (``0 - lr * 0 = 0``), and a transformation whose
    first update is legitimately large for zero gradients (heavy noise, a decay
    of half the weights per step) fails: pass None to skip it.
  * ``check_grad_dependence``: on a fresh state, gradients ``g`` and ``-g``
    must not give the same non-zero update for any leaf. An update that
    ignores the gradient (a constant, the parameters) fails. Zero updates
    (a frozen leaf, ``optax.set_to_zero()``) pass.

  What it cannot see: whether the numbers are *right*. Test those against a
  reference computed from the algorithm's equations.

  Args:
    tx: the transformation to check.
    params: a tree of floating arrays to initialise and update with; include
      every dtype and rank the transformation is meant to handle.
    grads: the gradients fed at every step, a tree like ``params``; by default
      a different standard-normal draw per step (fixed seed, so reproducible).
    num_steps: how many updates to run each way, at least 2.
    zero_grad_rtol: the bound of the zero-gradient probe, or None to skip it.
    check_grad_dependence: whether to run the ``g`` / ``-g`` probe.
    extra_args: keyword arguments passed to every ``tx.update`` call (for
      transformations taking e.g. ``value=loss``).

  Returns:
    None; every check passed.

  Raises:
    AssertionError: a check failed; the message says which, where and why.
    TypeError, ValueError: the arguments themselves are unusable.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> optaxtra.testing.check_transformation(optaxtra.adamax_clipped(1e-3), params)
    >>> def sgd_returning_new_params(lr):  # the mistake of seed 001
    ...   def update(grads, state, params):
    ...     return jax.tree.map(lambda p, g: p - lr * g, params, grads), state
    ...   return optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    >>> optaxtra.testing.check_transformation(sgd_returning_new_params(0.1), params)
    Traceback (most recent call last):
    ...
    AssertionError: check_transformation: on a fresh state, zero gradients gave
    an update for 'w' of root-mean-square 1, 1 times that of the parameter ...
  """
  _check_inputs(tx, params, grads, num_steps, zero_grad_rtol, check_grad_dependence)
  kwargs = dict(extra_args or {})

  def grads_at(step: int) -> Any:
    return grads if grads is not None else _default_grads(params, step)

  try:
    state0 = tx.init(params)
  except Exception as e:
    raise AssertionError(
      f"{_FN}: tx.init(params) raised {type(e).__name__}: {e}"
    ) from e
  first = _signature(state0)
  for path, a in first[1]:
    if a is None:
      _fail(
        f"state leaf '{path}' returned by init is not an array; jax.jit cannot take it."
      )

  # Every trace of the jitted update is recorded with the state types it saw.
  traces: list[list[tuple[str, Any]]] = []

  def traced_update(g, s, p):
    traces.append(_signature(s)[1])
    return tx.update(g, s, p, **kwargs)

  jitted = jax.jit(traced_update)

  def update(g, s, when):
    try:
      return jitted(g, s, params)
    except Exception as e:
      raise AssertionError(
        f"{_FN}: tx.update fails under jax.jit {when}: {type(e).__name__}: {e}"
      ) from e

  state = state0
  for step in range(1, num_steps + 1):
    when = f"at step {step}"
    updates, state = update(grads_at(step), state, when)
    if step == 1:
      read = _state_leaves_read(
        lambda g, s, p: tx.update(g, s, p, **kwargs), grads_at(1), state0, params
      )
      _check_buffers(state0, params, read)
    if len(traces) > 1:
      changed = [
        f"'{path}': {_describe(a)} -> {_describe(b)}"
        for (path, a), (_, b) in zip(traces[0], traces[-1], strict=False)
        if a != b
      ]
      _fail(
        f"the jitted update was traced and compiled again {when}: the state "
        f"passed in has other types than init's: {'; '.join(changed) or 'none found'}"
        ". Give every state leaf its final dtype in init (jnp.zeros([], "
        "jnp.int32), jnp.asarray(x, jnp.float32)) so that one compilation serves "
        "every step."
      )
    _check_updates(updates, params, when)
    _check_state_like(first, state, f"step {step}")

  # Probes for updates that are not deltas, each from a fresh state (same
  # types as the first step's, so the compiled update is reused).
  if zero_grad_rtol is not None:
    when = "on a fresh state with zero gradients"
    zeros = _host_tree(lambda shape, dtype: np.zeros(shape), params)
    updates, _ = update(zeros, tx.init(params), when)
    _check_updates(updates, params, when)
    for (path, u), (_, p) in zip(_leaves(updates), _leaves(params), strict=True):
      ur, pr = _rms(u), _rms(p)
      if ur > zero_grad_rtol * max(pr, _ZERO_GRAD_FLOOR):
        _fail(
          f"on a fresh state, zero gradients gave an update for '{path}' of "
          f"root-mean-square {ur:.4g}, {ur / max(pr, _ZERO_GRAD_FLOOR):.3g} times "
          f"that of the parameter ({pr:.4g}, floored at {_ZERO_GRAD_FLOOR:g}; the "
          f"bound is zero_grad_rtol={zero_grad_rtol:g}). Updates are changes that "
          "optax.apply_updates adds to the params, not the new params: return "
          "-lr * direction, not params - lr * direction (nor a constant). If such "
          "an update is intended (noise, a strong decay), pass zero_grad_rtol=None."
        )
  if check_grad_dependence:
    g = grads_at(1)
    when = "on a fresh state"
    u_pos, _ = update(g, tx.init(params), when)
    neg = jax.tree.map(lambda x: jnp.asarray(-np.asarray(x)), g)
    u_neg, _ = update(neg, tx.init(params), when)
    for (path, a), (_, b), (_, gl) in zip(
      _leaves(u_pos), _leaves(u_neg), _leaves(g), strict=True
    ):
      a, b = _float64(a), _float64(b)
      if np.any(np.asarray(gl) != 0) and np.any(a != 0) and np.array_equal(a, b):
        _fail(
          f"on a fresh state, gradients g and -g gave the same non-zero update for "
          f"'{path}': the update does not depend on the gradient. Return the "
          "change computed from the gradients, not a constant or the params. "
          "Pass check_grad_dependence=False if this is intended."
        )
