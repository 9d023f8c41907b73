"""Checking schedule arguments, and turning steps and values into arrays.

Every schedule in :mod:`optaxtra.schedules` computes its boundaries (staircase
steps, epochs, warmup ends, join points, cycles) on the *integer* step, so that
they are exact for every int32 step. The helpers here hold the conventions that
make that possible: integer arguments are concrete Python ints that fit an
int32 step count, integer steps stay integers, and values are computed in one
floating dtype decided by the schedule's values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra import _checks

INT32_MAX = 2**31 - 1

Schedule = Callable[[Any], jax.Array]


def check_int(fn: str, name: str, value: Any, *, low: int, what: str = "") -> int:
  """``value`` as a Python int ``>= low`` fitting an int32 step count.

  Integral floats (``40.0``) are accepted; anything else raises: a float with a
  fractional part (``31.25`` steps per epoch, the usual result of dividing a
  dataset size by a batch size) a ``ValueError``, a traced value, a bool or a
  non-number a ``TypeError``.

  Args:
    fn: the public function the argument belongs to, for the message.
    name: the argument's name.
    value: the argument.
    low: the smallest allowed value.
    what: what the argument counts, for the message (e.g. "steps").

  Returns:
    The value as a Python int.
  """
  unit = f" {what}" if what else ""
  if _checks.is_traced(value):
    raise TypeError(
      f"{fn}: {name} must be a concrete integer, got a traced value. It sets "
      "an integer boundary, fixed when the schedule is built; build the "
      "schedule outside jax.jit (with optax.inject_hyperparams, list it in "
      "static_args)."
    )
  arr = None if isinstance(value, bool) else np.asarray(value)
  if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
    raise TypeError(f"{fn}: {name} must be an integer number{unit}, got {value!r}.")
  v = arr.item()
  if isinstance(v, float):
    if not math.isfinite(v) or not v.is_integer():
      raise ValueError(
        f"{fn}: {name} must be a whole number{unit}, got {v!r}. Round it "
        f"explicitly (e.g. {name}=math.ceil(...) or {name}=... // ...)."
      )
    v = int(v)
  if v < low:
    raise ValueError(f"{fn}: {name} must be >= {low}{unit}, got {v}.")
  if v > INT32_MAX:
    raise ValueError(
      f"{fn}: {name} must fit the int32 step count (<= 2**31 - 1), got {v}."
    )
  return v


def check_value(fn: str, name: str, value: Any) -> None:
  """Raises unless ``value`` is a finite real scalar (a tracer passes)."""
  if callable(value):
    raise TypeError(
      f"{fn}: {name} must be a number, got the function {value!r}. To chain "
      "schedules use optaxtra.schedules.join or linear_warmup."
    )
  _checks.check_scalar(fn, name, value)
  v = _checks.concrete_scalar(value)
  if v is not None and not math.isfinite(v):
    raise ValueError(f"{fn}: {name} must be finite, got {v!r}.")


def check_schedule(fn: str, name: str, schedule: Any) -> None:
  """Raises ``TypeError`` unless ``schedule`` is callable."""
  if not callable(schedule):
    raise TypeError(
      f"{fn}: {name} must be a schedule (a function step -> value), got "
      f"{schedule!r}. Wrap a number in optaxtra.schedules.constant(...)."
    )


def value_dtype(*values: Any) -> Any:
  """The floating dtype a schedule with these values returns.

  float32, or wider when a value is: Python floats count as JAX's default float
  (float64 under ``jax_enable_x64``), arrays as their own dtype (integers as
  the default float), and nothing narrower than float32 is returned.
  """
  dtypes = []
  for v in values:
    if v is None:
      continue
    if isinstance(v, int | float) or not hasattr(v, "dtype"):
      dtypes.append(_checks.default_float())
      continue
    dt = jnp.dtype(v.dtype)
    dtypes.append(dt if jnp.issubdtype(dt, jnp.floating) else _checks.default_float())
  return jnp.result_type(jnp.float32, *dtypes)


def as_step(fn: str, step: Any) -> tuple[jax.Array, bool]:
  """``step`` as an array, and whether it is an integer (exact) step.

  Integer steps of any shape are kept as integers (int32, or int64 when given
  under x64). Floating steps (fractional epochs passed on by
  :func:`optaxtra.schedules.per_epoch`) are kept floating, at least float32.
  """
  if isinstance(step, bool):
    raise TypeError(f"{fn}: the step must be an integer, got {step!r}.")
  try:
    arr = jnp.asarray(step)
  except OverflowError:
    raise ValueError(
      f"{fn}: the step {step!r} does not fit the int32 step count (Optax's "
      "counts are int32: at most 2**31 - 1)."
    ) from None
  except TypeError as e:
    raise TypeError(
      f"{fn}: the step must be an integer or an integer array, got {step!r} ({e})."
    ) from None
  if jnp.issubdtype(arr.dtype, jnp.integer):
    return arr.astype(jnp.promote_types(arr.dtype, jnp.int32)), True
  if jnp.issubdtype(arr.dtype, jnp.floating):
    return arr.astype(jnp.promote_types(arr.dtype, jnp.float32)), False
  raise TypeError(
    f"{fn}: the step must be an integer or an integer array, got dtype {arr.dtype}."
  )


def compute_dtype(vdt: Any, step: jax.Array) -> Any:
  """The dtype to compute in: the values' dtype, widened for a float step."""
  if jnp.issubdtype(step.dtype, jnp.floating):
    return jnp.promote_types(vdt, step.dtype)
  return vdt


def as_values(fn: str, name: str, out: Any, shape: tuple[int, ...]) -> jax.Array:
  """A schedule's output as a floating array of the step's shape."""
  arr = jnp.asarray(out)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    arr = arr.astype(_checks.default_float())
  try:
    return jnp.broadcast_to(arr, shape)
  except ValueError:
    raise ValueError(
      f"{fn}: {name} returned shape {arr.shape} for steps of shape {shape}; a "
      "schedule must return a scalar per step (write it with jnp operations "
      "so that it works on arrays of steps)."
    ) from None


def shift(step: jax.Array, begin: int) -> jax.Array:
  """``max(step, begin) - begin``: steps since ``begin``, never overflowing."""
  if begin == 0:
    return jnp.maximum(step, 0)
  return jnp.maximum(step, begin) - begin


def split(d: jax.Array, n: int, exact: bool, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """``(floor(d / n), frac)`` with ``d / n == floor + frac`` and 0 <= frac < 1.

  For an integer ``d`` the floor is the integer quotient (exact) and only the
  remainder is divided in floating point, so the fraction is accurate even
  where ``d`` itself is not representable in ``dtype`` (above 2**24 in
  float32). Both results are in ``dtype``.
  """
  if exact:
    q = d // n
    r = d - q * n
    return q.astype(dtype), r.astype(dtype) / n
  d = d.astype(dtype)
  q = jnp.floor(d / n)
  return q, jnp.clip(d / n - q, 0, 1)
