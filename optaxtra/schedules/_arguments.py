"""Checking schedule arguments.

Every schedule in :mod:`optaxtra.schedules` computes its boundaries (staircase
steps, epochs, warmup ends, join points, cycles) on the *integer* step, so that
they are exact for every int32 step. Its arguments are checked here when it is
built: integer arguments are concrete Python ints (up to ``2**63 - 1``: a length
beyond the int32 step count is simply never reached by an int32 step), and
values are computed in one floating dtype decided by the schedule's values.
Turning a step into an array is in ``_steps``, a schedule's output in
``_values``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_LIMITS = {
  INT32_MAX: "the int32 step count (<= 2**31 - 1)",
  INT64_MAX: "an int64 (<= 2**63 - 1)",
}

Schedule = Callable[[Any], jax.Array]


def check_int(
  fn: str,
  name: str,
  value: Any,
  *,
  low: int,
  what: str = "",
  high: int = INT64_MAX,
) -> int:
  """``value`` as a Python int in ``[low, high]``.

  The default ``high`` is ``2**63 - 1``: lengths and boundaries beyond the
  int32 step count are accepted (an int32 step never reaches them), and every
  accepted value fits the int64 steps of ``jax_enable_x64``.

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
    high: the largest allowed value, ``2**31 - 1`` or ``2**63 - 1``.

  Returns:
    The value as a Python int.
  """
  return _hyper.integer(
    fn, name, value, low=low, high=high, whole_floats=True, what=what
  )


def check_ratio(
  fn: str,
  name: str,
  value: Any,
  *,
  low: int,
  what: str = "",
  high: int = INT64_MAX,
) -> Fraction:
  """``value``, a whole or fractional number in ``[low, high]``, as a ``Fraction``.

  For a length that may be fractional, such as ``steps_per_epoch =
  num_examples / batch_size``: a Python or NumPy int or float, or a
  ``fractions.Fraction``, taken *exactly* (a float is the binary
  fraction it holds: ``1281167 / 1024`` is ``Fraction(1281167, 1024)``), so
  that boundaries computed from it are exact integer arithmetic. Bools,
  traced values, strings and arrays with dimensions raise ``TypeError``;
  ``nan``, ``inf`` and values outside the range ``ValueError``.

  Args:
    fn: the public function the argument belongs to, for the message.
    name: the argument's name.
    value: the argument.
    low: the smallest allowed value.
    what: what the argument counts, for the message (e.g. "steps").
    high: the largest allowed value.

  Returns:
    The value as an exact ``fractions.Fraction``.
  """
  unit = f" {what}" if what else ""
  if _checks.is_traced(value):
    raise TypeError(
      f"{fn}: {name} must be a concrete number, got a traced value. It sets "
      "boundaries fixed when the schedule is built; build the schedule outside "
      "jax.jit (with optax.inject_hyperparams, list it in static_args)."
    )
  if isinstance(value, Fraction):
    v: Any = value
  else:
    arr = None if isinstance(value, bool) else np.asarray(value)
    if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
      raise TypeError(f"{fn}: {name} must be a number{unit}, got {value!r}.")
    v = arr.item()
    if isinstance(v, float) and not math.isfinite(v):
      raise ValueError(f"{fn}: {name} must be a finite number{unit}, got {v!r}.")
    v = Fraction(v)
  if v < low:
    raise ValueError(f"{fn}: {name} must be >= {low}{unit}, got {value!r}.")
  if v > high:
    limit = _LIMITS.get(high, f"<= {high}")
    raise ValueError(f"{fn}: {name} must fit {limit}, got {value!r}.")
  return v


def check_value(
  fn: str,
  name: str,
  value: Any,
  *,
  low: float | None = None,
  low_open: bool = False,
  fix: str = "",
) -> None:
  """Raises unless ``value`` is a finite real scalar ``>= low`` (a tracer passes).

  ``nan``, ``inf`` and ``-inf`` all raise ``ValueError`` naming the argument;
  a traced value cannot be inspected and is let through.
  """
  if callable(value):
    raise TypeError(
      f"{fn}: {name} must be a number, got the function {value!r}. To chain "
      "schedules use optaxtra.schedules.join or linear_warmup."
    )
  _hyper.real(fn, name, value, low=low, low_open=low_open, fix=fix)


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
