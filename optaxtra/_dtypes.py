"""dtype rules shared by optaxtra's transformations."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def canonical_float_dtype(fn: str, name: str, dtype: Any | None) -> Any | None:
  """``dtype`` as a floating NumPy dtype (or None); ``TypeError`` otherwise."""
  if dtype is None:
    return None
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(
      f"{fn}: {name}={dtype!r} is not a dtype. Pass e.g. jnp.float32, "
      "jnp.bfloat16 or None (the params' dtype)."
    ) from None
  if not jnp.issubdtype(dt, jnp.floating):
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
  zeros = jnp.where(jnp.zeros(jnp.shape(p), bool), p, jnp.zeros([], jnp.result_type(p)))
  return zeros.astype(dtype if dtype is not None else jnp.result_type(p))
