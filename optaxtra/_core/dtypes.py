"""dtype rules shared by optaxtra's transformations."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optaxtra._core.paths import path_str, quote


def canonical_float_dtype(
  fn: str, name: str, dtype: Any | None, *, complex_ok: bool = False
) -> Any | None:
  """``dtype`` as a floating (or complex) NumPy dtype, or None; else ``TypeError``."""
  if dtype is None:
    return None
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(
      f"{fn}: {name}={dtype!r} is not a dtype. Pass e.g. jnp.float32, "
      "jnp.bfloat16 or None (the params' dtype)."
    ) from None
  if not (
    jnp.issubdtype(dt, jnp.floating)
    or (complex_ok and jnp.issubdtype(dt, jnp.complexfloating))
  ):
    raise TypeError(
      f"{fn}: {name} must be a floating dtype, got {dt}. Pass e.g. "
      "jnp.float32, jnp.bfloat16 or None (the params' dtype)."
    )
  return dt


def compute_dtype(*arrays: Any) -> Any:
  """The dtype to do a leaf's arithmetic in: the widest input, float32 at least.

  bfloat16 and float16 moments are stored narrow but updated in float32, so that
  decay rates such as 0.999 (which round to 1.0 in bfloat16) keep their value.
  Float64 inputs are computed in float64, with no detour through float32.
  """
  return jnp.result_type(jnp.float32, *(jnp.asarray(a).dtype for a in arrays))


def zeros_like(p: jax.Array, dtype: Any | None = None) -> jax.Array:
  """Zeros of ``p``'s shape (and ``dtype`` or ``p``'s), placed like ``p``.

  ``jnp.zeros_like`` under ``jax.jit`` is a constant that sharding propagation
  knows nothing about, so a jitted ``tx.init`` would put every moment on one
  device. Selecting from ``p`` with an all-false predicate gives the same exact
  zeros (never ``p``'s values, not even its NaNs) but lets the compiler give
  them ``p``'s sharding.
  """
  out = jnp.dtype(dtype if dtype is not None else jnp.result_type(p))
  if isinstance(p, jax.ShapeDtypeStruct):  # abstract params, e.g. jax.eval_shape's
    zeros = jnp.zeros(p.shape, out)
    sharding = getattr(p, "sharding", None)
    return zeros if sharding is None else jax.device_put(zeros, sharding)
  p = jnp.asarray(p, jnp.result_type(p))  # a Python scalar leaf, not weakly typed
  if jnp.iscomplexobj(p) and not jnp.issubdtype(out, jnp.complexfloating):
    p = p.real  # a real moment (Adam's nu) of a complex parameter
  zeros = jnp.where(jnp.zeros(jnp.shape(p), bool), p, jnp.zeros([], p.dtype))
  return zeros.astype(out)


def real_dtype(dtype: Any) -> Any:
  """The real counterpart of a complex dtype (complex64 -> float32), else itself."""
  dt = jnp.dtype(dtype)
  return jnp.finfo(dt).dtype if jnp.issubdtype(dt, jnp.complexfloating) else dt


def second_moment_dtype(p: Any, nu_dtype: Any | None) -> Any:
  """The dtype of a second moment or infinity norm for parameter ``p``.

  ``nu_dtype`` when given. By default the parameter's real dtype, but never
  narrower than float32: in bfloat16 (8 significant bits) ``0.999 * nu``
  rounds back to ``nu``, so a bfloat16 infinity norm never decays and a
  bfloat16 second moment stops averaging; float32 costs 2 more bytes per entry
  for such params and keeps the running statistics right.
  """
  if nu_dtype is not None:
    return nu_dtype
  dt = real_dtype(jnp.result_type(p))
  return jnp.promote_types(dt, jnp.float32)


def check_trainable_params(fn: str, params: Any, *, complex_ok: bool) -> None:
  """Raises ``TypeError`` for a param leaf that no optimizer can train.

  Integer and boolean leaves (step counters, masks, batch statistics kept as
  ints) would get integer moments, truncated at every step; complex leaves
  where the algorithm has no complex form. Abstract leaves
  (``jax.ShapeDtypeStruct``) are checked by their dtype.
  """
  for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    dt = jnp.dtype(jnp.result_type(p))
    if jnp.issubdtype(dt, jnp.floating):
      continue
    if jnp.issubdtype(dt, jnp.complexfloating):
      if complex_ok:
        continue
      why = "complex parameters are not supported here"
    else:
      why = "integer and boolean parameters cannot be trained"
    raise TypeError(
      f"{fn}: the parameter {quote(path_str(path))} has dtype {dt}; {why}. "
      "Leave it out of the optimizer with optax.masked(tx, mask) or "
      "optaxtra.with_frozen(tx, frozen=...), or give it a floating dtype."
    )
