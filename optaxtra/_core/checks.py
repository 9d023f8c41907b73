"""Argument and tree checks shared by optaxtra's transformations.

Every check here runs on concrete values only. A value that is a JAX tracer (a
hyperparameter passed through ``optax.inject_hyperparams`` under ``jax.jit``)
cannot be inspected at trace time and is let through, so that traced
hyperparameters keep working.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from optaxtra._core.paths import path_str, quote


def is_traced(value: Any) -> bool:
  """Whether ``value`` is a JAX tracer (its value is unknown at trace time)."""
  return isinstance(value, jax.core.Tracer)


def concrete_scalar(value: Any) -> float | None:
  """``value`` as a Python float, or None when it is traced or a schedule.

  Raises ``TypeError`` for anything that is not a real number: strings (which
  ``float`` would happily parse), booleans, complex numbers and arrays that
  are not scalars (shape ``()``).
  """
  if callable(value):
    return None
  if isinstance(value, str | bytes):
    raise TypeError(f"got the string {value!r}; pass a number, not a string")
  arr = None  # stays None for a tracer, whose value is unknown
  if is_traced(value):
    dtype = value.dtype
  else:
    try:
      arr = np.asarray(value)
    except (TypeError, ValueError):
      raise TypeError(f"got {value!r}, which is not a number") from None
    dtype = arr.dtype
  # jnp.issubdtype knows bfloat16, whose NumPy dtype kind is 'V'.
  if not (
    jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  ) or jnp.issubdtype(dtype, jnp.bool_):
    raise TypeError(f"got {value!r} of dtype {dtype}, not a real number")
  if np.ndim(value) != 0:
    raise TypeError(f"got an array of shape {np.shape(value)}, not a scalar")
  if arr is None:
    return None
  return float(arr)


def check_float32_or_wider(fn: str, name: str, value: Any) -> None:
  """Raises ``TypeError`` if ``value`` is a float array narrower than float32.

  ``optax.inject_hyperparams`` casts float hyperparameters to the params'
  dtype: with bfloat16 params ``b2=0.999`` arrives as 1.0 (Adam's second
  moment then never moves and the updates blow up) and with float16 params
  ``eps=1e-8`` arrives as 0. Such a value is rejected, traced or not, rather
  than silently used.
  """
  dtype = getattr(value, "dtype", None)
  if dtype is None or callable(value):
    return
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    raise TypeError(
      f"{fn}: {name} arrived as {dtype}, too narrow to hold it (in bfloat16 "
      "0.999 rounds to 1.0, in float16 1e-8 rounds to 0). Pass it as a Python "
      "float or a float32/float64 array; with optax.inject_hyperparams and "
      "low-precision params, pass hyperparam_dtype=jnp.float32."
    )


def check_state(fn: str, state: Any, cls: type) -> None:
  """Raises ``TypeError`` unless ``state`` is the ``cls`` that init built.

  The usual way to get something else is a checkpoint restored without a
  target: Orbax then gives NamedTuple states back as dicts.
  """
  if not isinstance(state, cls):
    got = type(state)
    if got.__name__ == cls.__name__:
      # Two classes of one name (record_norm's, one per recorded name): say
      # which is which.
      def qualified(c: type) -> str:
        return f"{c.__module__}.{c.__qualname__}"

      raise TypeError(
        f"{fn}: expected the state made by its init, {qualified(cls)}, got "
        f"another class of the same name, {qualified(got)}: the state of "
        "another transformation of that kind (e.g. record_norm with another "
        "name). Pass each transformation the state its own init returned; in "
        "a chain, the states are in the order of the stages."
      )
    raise TypeError(
      f"{fn}: expected the {cls.__name__} made by init, got "
      f"{got.__name__}. A checkpoint restored without a target comes "
      "back as dicts and lists: restore against "
      "jax.eval_shape(tx.init, params) (see the README's Checkpoints section)."
    )


def check_update_call(
  fn: str,
  updates: Any,
  state: Any,
  cls: type,
  *,
  reference: Any,
  what: str,
  complex_ok: bool,
) -> None:
  """The checks every ``update_fn`` opens with, in order.

  ``state`` is the ``cls`` that init built; ``updates`` has ``reference``'s
  tree and shapes (``what`` names it in the message) and float leaves
  (complex too with ``complex_ok``). Where ``reference`` is the first moment,
  a complex update whose moment is real is also refused.
  """
  check_state(fn, state, cls)
  check_updates_match(fn, updates, reference, what)
  check_float_updates(fn, updates, complex_ok=complex_ok)
  if what == MU:
    check_complex_matches(fn, updates, reference)


MU = "first moment (mu)"


def check_updates_match(fn: str, updates: Any, reference: Any, what: str) -> None:
  """Raises ``ValueError`` unless ``updates`` has ``reference``'s tree and shapes.

  A gradient of another shape would otherwise be silently broadcast against
  the optimizer's moments.
  """
  u_leaves, u_def = jax.tree_util.tree_flatten_with_path(updates)
  r_leaves, r_def = jax.tree_util.tree_flatten_with_path(reference)
  if u_def != r_def:
    u_paths = {path_str(p) for p, _ in u_leaves}
    r_paths = {path_str(p) for p, _ in r_leaves}
    only_u = sorted(u_paths - r_paths)[:5]
    only_r = sorted(r_paths - u_paths)[:5]
    detail = ""
    if only_u or only_r:
      detail = f" Only in the updates: {only_u}; only in the {what}: {only_r}."
    raise ValueError(
      f"{fn}: the updates' tree does not match the {what} built by init."
      f"{detail} Updates: {u_def}; {what}: {r_def}. Pass gradients with the "
      "same structure as the params given to init, or call init again."
    )
  for (path, u), (_, r) in zip(u_leaves, r_leaves, strict=True):
    if jnp.shape(u) != jnp.shape(r):
      raise ValueError(
        f"{fn}: the update for {quote(path_str(path))} has shape {jnp.shape(u)} "
        f"but {quote(path_str(path))} in the {what} has shape {jnp.shape(r)}. Pass "
        "a gradient of the parameter's own shape (optaxtra never broadcasts "
        "updates)."
      )


def check_float_updates(fn: str, updates: Any, *, complex_ok: bool = False) -> None:
  """Raises ``TypeError`` unless every leaf of ``updates`` is a float array.

  An integer gradient would otherwise be computed in float and cast back,
  silently truncating the update to whole numbers.
  """
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    dtype = np.dtype(jnp.result_type(u))
    ok = jnp.issubdtype(dtype, jnp.floating) or (
      complex_ok and jnp.issubdtype(dtype, jnp.complexfloating)
    )
    if not ok:
      kinds = "floating or complex" if complex_ok else "real floating"
      raise TypeError(
        f"{fn}: the update for {quote(path_str(path))} has dtype {dtype}; updates "
        f"must be {kinds} arrays. Compute gradients of float parameters "
        "(jax.grad refuses integer inputs), or leave integer leaves out of "
        "the optimizer with optax.masked or optax.partition."
      )


def check_complex_matches(fn: str, updates: Any, moments: Any) -> None:
  """Raises ``TypeError`` for a complex update whose moment is real.

  Its imaginary part would be dropped when the moment is stored. (A real
  update of complex params is fine: it is a complex number with no imaginary
  part.)
  """
  u_leaves = jax.tree_util.tree_flatten_with_path(updates)[0]
  for (path, u), m in zip(u_leaves, jax.tree.leaves(moments), strict=True):
    if jnp.iscomplexobj(u) and not jnp.iscomplexobj(m):
      raise TypeError(
        f"{fn}: the update for {quote(path_str(path))} has dtype "
        f"{jnp.result_type(u)} but init was given a real parameter there "
        f"(moment dtype {jnp.result_type(m)}); its imaginary part would be "
        "dropped. Give init the complex params, or pass real gradients."
      )


def schedule_output(fn: str, name: str, value: Any) -> jax.Array:
  """A schedule's value as a real scalar array, or a clear error.

  Checked on what is known at trace time (type, dtype, shape), so it holds
  under ``jax.jit`` too: ``None``, strings, booleans and complex numbers raise
  ``TypeError`` naming the schedule, non-scalars ``ValueError``. Integer values
  are fine (a schedule of whole numbers). A traced value's *number* cannot be
  checked; it is used as it is and recorded in the state.
  """
  if value is None or isinstance(value, str | bytes):
    raise TypeError(
      f"{fn}: {name} returned {value!r}; a schedule must return a number (a "
      "Python float or a scalar jax array), e.g. lambda count: 1e-3 * 0.9**count."
    )
  try:
    v = jnp.asarray(value)
  except TypeError:
    raise TypeError(
      f"{fn}: {name} returned {value!r}, which is not a number."
    ) from None
  if jnp.issubdtype(v.dtype, jnp.bool_) or not (
    jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
  ):
    raise TypeError(
      f"{fn}: {name} returned a value of dtype {v.dtype}; it must be a real "
      "number (a float or an int), not a bool or a complex number."
    )
  if v.ndim != 0:
    raise ValueError(
      f"{fn}: {name} must give a scalar, got shape {v.shape}. A schedule maps "
      "one step to one value."
    )
  return v


def loss_value(fn: str, value: Any, *, complex_ok: bool = False) -> jax.Array:
  """The loss passed as ``value=`` as an array of numbers, or a clear error.

  Checked on what is known at trace time (type and dtype), so it holds under
  ``jax.jit``: strings, bools and (unless ``complex_ok``) complex numbers
  raise ``TypeError`` naming ``fn``'s ``value``. Its shape is the caller's to
  check.
  """
  if isinstance(value, str | bytes):
    raise TypeError(f"{fn}: value must be a number (the loss), got {value!r}.")
  try:
    v = jnp.asarray(value)
  except TypeError:
    raise TypeError(
      f"{fn}: value must be a number (the loss), got {value!r}."
    ) from None
  ok = jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
  ok = ok or (complex_ok and jnp.issubdtype(v.dtype, jnp.complexfloating))
  if not ok or jnp.issubdtype(v.dtype, jnp.bool_):
    raise TypeError(
      f"{fn}: value must be a real number (the loss), got dtype {v.dtype}."
    )
  return v


def default_float() -> jnp.dtype:
  """float32, or float64 when ``jax_enable_x64`` is on."""
  return jnp.result_type(float)


def check_flag(fn: str, name: str, value: Any) -> None:
  """Raises ``TypeError`` unless ``value`` is a Python (or NumPy) bool."""
  if not isinstance(value, bool | np.bool_):
    raise TypeError(
      f"{fn}: {name} must be True or False, got {value!r}. It selects code "
      "at trace time, so it cannot be an array; with optax.inject_hyperparams "
      f"pass it as a Python bool or list it in static_args."
    )
