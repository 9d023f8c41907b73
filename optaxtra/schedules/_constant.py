"""Schedules that hold their value between steps: constant and piecewise."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from optaxtra.schedules import _arguments as _args
from optaxtra.schedules import _steps


def constant(value: float | jax.Array) -> _args.Schedule:
  """The same value at every step.

  Unlike :func:`optax.constant_schedule`, which returns ``value`` itself, the
  schedule returns an array of the step's shape, so that ``s(jnp.arange(n))``
  samples a run like every other schedule here.

  Args:
    value: the value, a finite scalar.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> schedules.constant(0.1)(jnp.arange(3))
    Array([0.1, 0.1, 0.1], dtype=float32)

  Raises:
    ValueError: a non-finite ``value``. Called with a concrete step outside
      int32 without ``jax_enable_x64``, the step: it is refused, not wrapped
      (under x64, int64 steps are exact; see :mod:`optaxtra.schedules`).

  References:
    Optax, :func:`optax.constant_schedule`.
  """
  fn = "constant"
  _args.check_value(fn, "value", value)
  vdt = _args.value_dtype(value)

  def schedule(step):
    step, _ = _steps.as_step(fn, step)
    return jnp.full(step.shape, value, vdt)

  return schedule


def piecewise_constant(
  init_value: float | jax.Array,
  boundaries_and_scales: Mapping[int, float] | None = None,
) -> _args.Schedule:
  """``init_value`` times every scale whose boundary step has been reached.

  Optax's signature and semantics: at step ``t`` the value is ``init_value``
  multiplied by each ``scale`` with ``boundary <= t``, in the order of the
  boundaries (the products are the same float32 numbers as Optax's). The
  boundaries are compared with the integer step, exactly.

  Args:
    init_value: the value before the first boundary.
    boundaries_and_scales: a mapping ``{step: scale}`` of non-negative integer
      steps (up to ``2**63 - 1``) to non-negative finite scales, or None for a
      constant.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: a negative or fractional boundary, or a negative or non-finite
      scale or ``init_value``. Called with a concrete step outside int32 without
      ``jax_enable_x64``, the step: it is refused, not wrapped (under x64, int64
      steps are exact; see :mod:`optaxtra.schedules`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> s = schedules.piecewise_constant(1.0, {100: 0.1, 200: 0.5})
    >>> s(jnp.array([0, 99, 100, 199, 200]))
    Array([1.  , 1.  , 0.1 , 0.1 , 0.05], dtype=float32)

  References:
    Optax, :func:`optax.piecewise_constant_schedule`.
  """
  fn = "piecewise_constant"
  _args.check_value(fn, "init_value", init_value)
  if boundaries_and_scales is None:
    boundaries_and_scales = {}
  if not isinstance(boundaries_and_scales, Mapping):
    raise TypeError(
      f"{fn}: boundaries_and_scales must be a mapping {{step: scale}} or None, "
      f"got {boundaries_and_scales!r}."
    )
  pieces = []
  for b, scale in boundaries_and_scales.items():
    step = _args.check_int(fn, f"the boundary {b!r}", b, low=0, what="steps")
    _args.check_value(fn, f"the scale at step {step}", scale, low=0.0)
    pieces.append((step, scale))
  pieces.sort(key=lambda p: p[0])
  vdt = _args.value_dtype(init_value, *(s for _, s in pieces))

  def schedule(step):
    step, _ = _steps.as_step(fn, step)
    v = jnp.asarray(init_value, vdt)
    out = jnp.broadcast_to(v, step.shape)
    for boundary, scale in pieces:
      v = v * jnp.asarray(scale, vdt)
      out = jnp.where(_steps.reached(step, boundary), v, out)
    return out

  return schedule
