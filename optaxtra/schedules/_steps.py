"""Turning a step into an array, the range of steps, and step arithmetic.

Integer steps stay integers and are never wrapped: a step that does not fit the
integers JAX computes in (int32, int64 under ``jax_enable_x64``) raises.

The helpers taking a length or a boundary ``n`` (:func:`below`,
:func:`reached`, :func:`shift`, :func:`split`, :func:`remaining`) work for an
``n`` beyond the step's integer dtype too, where the comparison is decided
without arithmetic: the step cannot reach ``n``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra._core import checks as _checks
from optaxtra.schedules._arguments import INT32_MAX, INT64_MAX


def _x64() -> bool:
  """Whether ``jax_enable_x64`` is on (JAX's default int is int64)."""
  return jnp.dtype(jnp.result_type(int)).itemsize == 8


def _step_limits() -> tuple[str, int, int]:
  """The integer dtype JAX computes steps in, and its range."""
  if _x64():
    return "int64", -(2**63), INT64_MAX
  return "int32", -(2**31), INT32_MAX


def _out_of_range(fn: str, value: Any) -> ValueError:
  name, low, high = _step_limits()
  if name == "int32":
    fix = (
      "(Optax's counts are int32, at most 2**31 - 1). It is refused rather "
      "than wrapped to a negative step; turn on jax_enable_x64 to compute "
      "int64 steps exactly."
    )
  else:
    fix = "(jax_enable_x64 is on). It is refused rather than wrapped."
  return ValueError(
    f"{fn}: the step {value!r} does not fit the {name} step count [{low}, {high}] {fix}"
  )


def _host_step(fn: str, step: Any) -> Any:
  """A concrete step (Python, NumPy or a concrete JAX array) as a NumPy array.

  Integer values are checked, not just their dtype: any value outside the
  integers JAX computes in (int32, int64 under x64) raises ``ValueError``, and
  the rest are given a signed dtype that holds them (int32 for values of up to
  32 bits, int64 for int64 and uint32 under x64), so that nothing wraps.
  """
  name, low, high = _step_limits()
  if isinstance(step, int):  # a Python int (bools are refused before)
    if not low <= step <= high:
      raise _out_of_range(fn, step)
    return step
  try:
    arr = np.asarray(step)
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"{fn}: the step must be an integer or an integer array, got {step!r} ({e})."
    ) from None
  if arr.dtype == object:  # a list holding Python ints beyond 64 bits
    values = list(arr.flat)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
      raise TypeError(
        f"{fn}: the step must be an integer or an integer array, got {step!r}."
      )
    raise _out_of_range(fn, max(values, key=lambda v: max(v - high, low - v)))
  if arr.dtype.kind not in "iu":
    return arr
  if arr.size:
    lo, hi = arr.min().item(), arr.max().item()
    if lo < low:
      raise _out_of_range(fn, lo)
    if hi > high:
      raise _out_of_range(fn, hi)
  wide = arr.dtype.itemsize > 4 or (arr.dtype.kind == "u" and arr.dtype.itemsize == 4)
  return arr.astype(np.int64 if wide and name == "int64" else np.int32)


def _wide_unsigned(dtype: Any) -> bool:
  """uint32 and uint64: an unsigned dtype whose values may not fit int32."""
  return jnp.issubdtype(dtype, jnp.unsignedinteger) and jnp.dtype(dtype).itemsize >= 4


def as_step(fn: str, step: Any) -> tuple[jax.Array, bool]:
  """``step`` as an array, and whether it is an integer (exact) step.

  Integer steps of any shape are kept as integers, never wrapped: int32 steps
  (Optax's counts) as they are; int64 steps under ``jax_enable_x64`` as int64.
  A concrete step (a Python int, a NumPy integer or array, a concrete JAX
  array) is checked by value: one beyond the integers JAX computes in (int32,
  or int64 under x64) raises ``ValueError`` naming the step and the limit. A
  traced step is checked by dtype: an unsigned dtype whose values may exceed
  them (uint32, or uint64 under x64) raises ``TypeError`` at trace time.
  Floating steps (fractional epochs passed on by
  :func:`optaxtra.schedules.per_epoch`) are kept floating, at least float32.
  """
  if isinstance(step, bool | np.bool_):
    raise TypeError(f"{fn}: the step must be an integer, got {step!r}.")
  wide = isinstance(step, jax.Array) and _wide_unsigned(step.dtype)
  if _checks.is_traced(step) or (isinstance(step, jax.Array) and not wide):
    arr = step  # int32 (Optax's counts) and floats go straight through
  else:
    step = _host_step(fn, step)
    try:
      arr = jnp.asarray(step)
    except TypeError as e:
      raise TypeError(
        f"{fn}: the step must be an integer or an integer array, got {step!r} ({e})."
      ) from None
  dt = arr.dtype
  if _wide_unsigned(dt):
    if dt.itemsize == 4 and _x64():
      return arr.astype(jnp.int64), True
    name, _, high = _step_limits()
    raise TypeError(
      f"{fn}: the step has dtype {dt}, whose values may exceed the {name} step "
      f"count (at most {high}); a traced step is checked by its dtype, and is "
      f"refused rather than wrapped. Pass {name} steps (Optax's counts are "
      "int32)" + ("" if name == "int64" else " or turn on jax_enable_x64") + "."
    )
  if jnp.issubdtype(dt, jnp.integer):
    return arr.astype(jnp.promote_types(dt, jnp.int32)), True
  if jnp.issubdtype(dt, jnp.floating):
    return arr.astype(jnp.promote_types(dt, jnp.float32)), False
  raise TypeError(
    f"{fn}: the step must be an integer or an integer array, got dtype {dt}."
  )


def working_dtype(vdt: Any, step: jax.Array) -> Any:
  """The dtype to compute in: the values' dtype, widened for a float step."""
  if jnp.issubdtype(step.dtype, jnp.floating):
    return jnp.promote_types(vdt, step.dtype)
  return vdt


def real(n: int) -> int | float:
  """``n`` for floating arithmetic: itself, or a float beyond int32.

  JAX reads a Python int as a (weak) int32 without x64 and overflows on a
  larger one even where it meets a float; as a float it is rounded once to
  the computation's dtype, as an int within int32 is.
  """
  return n if n <= INT32_MAX else float(n)


def beyond(step: jax.Array, n: int) -> bool:
  """Whether the integer ``step``'s dtype cannot hold ``n`` (so never reaches it)."""
  return bool(jnp.issubdtype(step.dtype, jnp.integer)) and n > jnp.iinfo(step.dtype).max


def below(step: jax.Array, n: int) -> jax.Array:
  """``step < n``, also for an ``n`` beyond the integer step's dtype."""
  if beyond(step, n):
    return jnp.ones(step.shape, bool)
  return step < (n if jnp.issubdtype(step.dtype, jnp.integer) else real(n))


def reached(step: jax.Array, n: int) -> jax.Array:
  """``step >= n``, also for an ``n`` beyond the integer step's dtype."""
  if beyond(step, n):
    return jnp.zeros(step.shape, bool)
  return step >= (n if jnp.issubdtype(step.dtype, jnp.integer) else real(n))


def shift(step: jax.Array, begin: int) -> jax.Array:
  """``max(step, begin) - begin``: steps since ``begin``, never overflowing."""
  if begin == 0:
    return jnp.maximum(step, 0)
  if beyond(step, begin):
    return jnp.zeros_like(step)
  if not jnp.issubdtype(step.dtype, jnp.integer):
    b = real(begin)
    return jnp.maximum(step, b) - b
  return jnp.maximum(step, begin) - begin


def remaining(s: jax.Array, n: int, dtype: Any) -> jax.Array:
  """``n - min(s, n)`` in ``dtype``, for a step ``s >= 0``.

  For an integer ``s`` the difference is taken in integers, exactly, and
  rounded once; for an ``n`` beyond ``s``'s dtype (which ``s`` never reaches)
  it is ``(n - top) + (top - s)`` with ``top`` the dtype's largest value, two
  exact non-negative integers each rounded once, so that the result stays
  accurate to float rounding where ``n - s`` is small.
  """
  if beyond(s, n):
    top = int(jnp.iinfo(s.dtype).max)
    return (top - s).astype(dtype) + jnp.asarray(n - top, dtype)
  if not jnp.issubdtype(s.dtype, jnp.integer):
    m = real(n)
    return (m - jnp.minimum(s, m)).astype(dtype)
  return (n - jnp.minimum(s, n)).astype(dtype)


def split(d: jax.Array, n: int, exact: bool, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """``(floor(d / n), frac)`` with ``d / n == floor + frac`` and 0 <= frac < 1.

  For an integer ``d`` the floor is the integer quotient (exact) and only the
  remainder is divided in floating point, so the fraction is accurate even
  where ``d`` itself is not representable in ``dtype`` (above 2**24 in
  float32). An ``n`` beyond ``d``'s integer dtype needs ``d >= 0``: the floor
  is then 0 and the fraction ``d / n``. Both results are in ``dtype``.
  """
  if exact:
    if beyond(d, n):
      return jnp.zeros(d.shape, dtype), d.astype(dtype) / real(n)
    q = d // n
    r = d - q * n
    return q.astype(dtype), r.astype(dtype) / real(n)
  d = d.astype(dtype) / real(n)
  q = jnp.floor(d)
  return q, jnp.clip(d - q, 0, 1)
