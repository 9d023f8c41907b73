"""Decaying schedules: exponential, polynomial (Keras/TF1) and cosine."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from optaxtra._core import checks as _checks
from optaxtra.schedules import _arguments as _args
from optaxtra.schedules import _steps


def exponential_decay(
  init_value: float | jax.Array,
  transition_steps: int,
  decay_rate: float | jax.Array,
  transition_begin: int = 0,
  staircase: bool = False,
  end_value: float | jax.Array | None = None,
) -> _args.Schedule:
  r"""Exponential decay, Optax's signature, with exact integer boundaries.

  With :math:`d = \max(t - B, 0)` the steps since ``transition_begin``:

  .. math::
    v(t) = I \cdot r^{d / T}  \qquad\text{or, with staircase,}\qquad
    v(t) = I \cdot r^{\lfloor d / T \rfloor}

  then clipped to ``end_value`` (a lower bound when ``decay_rate < 1``, an
  upper bound otherwise), as :func:`optax.exponential_decay` and Keras'
  ``ExponentialDecay`` (which has no ``transition_begin`` or ``end_value``).

  Unlike them, :math:`\lfloor d / T \rfloor` is an integer division of the
  integer step, so the staircase drops at exactly every ``transition_steps``-th
  step for every int32 step; Optax and Keras divide in float32 first, which
  above 2**24 can put a drop a step early or late. The continuous form is
  computed as :math:`I \cdot r^{\lfloor d/T \rfloor} \cdot r^{(d \bmod T)/T}`,
  accurate where ``d`` itself is not representable in float32.

  The steps count *updates*, not epochs: to decay every ``n`` epochs wrap an
  epoch schedule in :func:`optaxtra.schedules.per_epoch`.

  Args:
    init_value: the value before and at ``transition_begin``.
    transition_steps: positive int, the steps over which the value is
      multiplied by ``decay_rate`` (up to ``2**63 - 1``).
    decay_rate: positive finite factor per ``transition_steps`` steps.
    transition_begin: non-negative int, the step the decay starts at (beyond
      ``2**31 - 1`` an int32 step never reaches it).
    staircase: if True, decay in whole steps of ``transition_steps``.
    end_value: optional bound the decay stops at. It must lie in the decay's
      direction (below ``init_value`` when ``decay_rate < 1``), else every
      value would be ``end_value``, which raises.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: ``transition_steps <= 0``, ``decay_rate <= 0``, a negative
      ``transition_begin``, a non-finite value, or an ``end_value`` on the wrong
      side of ``init_value``. (Optax silently returns a constant for the first
      two, and accepts ``inf``.) Called with a concrete step outside int32
      without ``jax_enable_x64``, the step: it is refused, not wrapped (under
      x64, int64 steps are exact; see :mod:`optaxtra.schedules`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> s = schedules.exponential_decay(1.0, 10, 0.5, staircase=True)
    >>> s(jnp.array([0, 9, 10, 19, 20]))
    Array([1.  , 1.  , 0.5 , 0.5 , 0.25], dtype=float32)
    >>> s = schedules.exponential_decay(1.0, 10_000_000, 0.5, staircase=True)
    >>> float(s(29_999_999)), float(s(30_000_000))  # exact at every int32 step
    (0.25, 0.125)

  References:
    Optax, :func:`optax.exponential_decay`; Keras,
    ``keras.optimizers.schedules.ExponentialDecay``.
  """
  fn = "exponential_decay"
  _args.check_value(fn, "init_value", init_value)
  T = _args.check_int(fn, "transition_steps", transition_steps, low=1, what="steps")
  _args.check_value(
    fn,
    "decay_rate",
    decay_rate,
    low=0.0,
    low_open=True,
    fix="For a constant use optaxtra.schedules.constant.",
  )
  B = _args.check_int(fn, "transition_begin", transition_begin, low=0, what="steps")
  _checks.check_flag(fn, "staircase", staircase)
  rate = _checks.concrete_scalar(decay_rate)
  if end_value is not None:
    _args.check_value(fn, "end_value", end_value)
    init, end = _checks.concrete_scalar(init_value), _checks.concrete_scalar(end_value)
    if rate is not None and init is not None and end is not None:
      if (rate < 1 and end > init) or (rate >= 1 and end < init):
        bound = "lower" if rate < 1 else "upper"
        raise ValueError(
          f"{fn}: end_value={end!r} is a {bound} bound (decay_rate={rate!r}) "
          f"on the wrong side of init_value={init!r}, so every value would be "
          "end_value. For a constant use optaxtra.schedules.constant."
        )
  vdt = _args.value_dtype(init_value, decay_rate, end_value)

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    q, frac = _steps.split(_steps.shift(step, B), T, exact, cdt)
    r = jnp.asarray(decay_rate, cdt)
    value = jnp.asarray(init_value, cdt) * jnp.power(r, q)
    if not staircase:
      value = value * jnp.power(r, frac)
    if end_value is not None:
      end = jnp.asarray(end_value, cdt)
      if rate is None:
        value = jnp.where(r < 1, jnp.maximum(value, end), jnp.minimum(value, end))
      else:
        value = jnp.maximum(value, end) if rate < 1 else jnp.minimum(value, end)
    return value.astype(vdt)

  return schedule


def polynomial_decay(
  init_value: float | jax.Array,
  end_value: float | jax.Array,
  decay_steps: int,
  *,
  power: float | jax.Array = 1.0,
  cycle: bool = False,
) -> _args.Schedule:
  r"""Polynomial decay from ``init_value`` to ``end_value``, Keras/TF1 semantics.

  Without ``cycle``, with :math:`s = \min(\max(t, 0), T)`:

  .. math::
    v(t) = (I - E) \left(\frac{T - s}{T}\right)^{p} + E

  so ``end_value`` is reached at step ``decay_steps`` and kept. With ``cycle``
  the horizon is stretched to the first multiple of ``decay_steps`` not below
  the step, :math:`m T` with :math:`m = \max(1, \lceil t / T \rceil)`, and
  :math:`v(t) = (I - E) ((mT - t) / (mT))^p + E`: the value reaches
  ``end_value`` at every multiple of ``decay_steps`` and jumps back up right
  after (to a lower peak each cycle). This is ``tf.compat.v1.train.polynomial_decay``
  and ``keras.optimizers.schedules.PolynomialDecay``, the schedule of BERT's
  ``create_optimizer`` (``power=1``, ``end_value=0``; add its warmup with
  :func:`optaxtra.schedules.linear_warmup`).

  :math:`\lceil t/T \rceil` and :math:`T - s` are computed on the integer step,
  so the cycle ends are exact for every int32 step, and the remaining fraction
  does not lose precision near the end of the decay.

  Args:
    init_value: the value at step 0.
    end_value: the value at ``decay_steps`` and after.
    decay_steps: positive int, the length of the decay (up to ``2**63 - 1``;
      beyond ``2**31 - 1`` an int32 step never reaches its end, nor cycles).
    power: non-negative finite exponent of the polynomial (1: linear).
    cycle: restart the decay after ``decay_steps`` as TF1 does (see above).

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: ``decay_steps <= 0``, a negative ``power`` or a non-finite
      value. Called with a concrete step outside int32 without
      ``jax_enable_x64``, the step: it is refused, not wrapped (under x64, int64
      steps are exact; see :mod:`optaxtra.schedules`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> s = schedules.polynomial_decay(1.0, 0.0, 4)
    >>> s(jnp.arange(6))
    Array([1.  , 0.75, 0.5 , 0.25, 0.  , 0.  ], dtype=float32)
    >>> s = schedules.polynomial_decay(1.0, 0.0, 4, cycle=True)
    >>> s(jnp.array([3, 4, 5, 8, 9]))  # 5 decays over 8 steps, 9 over 12
    Array([0.25 , 0.   , 0.375, 0.   , 0.25 ], dtype=float32)

  References:
    TensorFlow, ``tf.compat.v1.train.polynomial_decay``; Keras,
    ``keras.optimizers.schedules.PolynomialDecay``; Devlin et al., `BERT
    <https://arxiv.org/abs/1810.04805>`_ (``optimization.py``), 2019.
  """
  fn = "polynomial_decay"
  _args.check_value(fn, "init_value", init_value)
  _args.check_value(fn, "end_value", end_value)
  T = _args.check_int(fn, "decay_steps", decay_steps, low=1, what="steps")
  _args.check_value(fn, "power", power, low=0.0)
  _checks.check_flag(fn, "cycle", cycle)
  vdt = _args.value_dtype(init_value, end_value, power)
  Tf = _steps.real(T)

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    s = jnp.maximum(step, 0)
    # A decay longer than the integer step can count never ends, so it never
    # cycles either: both forms are then the first decay.
    if cycle and not (exact and _steps.beyond(step, T)):
      if exact:
        q = s // T
        r = s - q * T
        m = jnp.where(r == 0, jnp.maximum(q, 1), q + 1)
        left = jnp.where(r == 0, jnp.where(q == 0, T, 0), T - r)  # m*T - s
        frac = left.astype(cdt) / (m.astype(cdt) * Tf)
      else:
        s = s.astype(cdt)
        m = jnp.where(s == 0, 1, jnp.ceil(s / Tf))
        frac = (m * Tf - s) / (m * Tf)
    else:
      frac = _steps.remaining(s, T, cdt) / Tf
    init = jnp.asarray(init_value, cdt)
    end = jnp.asarray(end_value, cdt)
    value = (init - end) * jnp.power(frac, jnp.asarray(power, cdt)) + end
    return value.astype(vdt)

  return schedule


def cosine_decay(
  init_value: float | jax.Array,
  decay_steps: int,
  alpha: float | jax.Array = 0.0,
  exponent: float | jax.Array = 1.0,
  *,
  end_value: float | jax.Array | None = None,
) -> _args.Schedule:
  r"""Cosine decay from ``init_value`` to ``alpha * init_value`` or ``end_value``.

  With :math:`s = \min(\max(t, 0), T)` and the cosine factor
  :math:`c(t) = \left(\tfrac{1}{2}\left(1 + \cos\frac{\pi s}{T}\right)\right)^{p}`:

  .. math::
    v(t) = I \left[(1 - \alpha)\, c(t) + \alpha\right]
    \qquad\text{or, with } E = \text{end_value}, \qquad
    v(t) = E + (I - E)\, c(t)

  The first is :func:`optax.cosine_decay_schedule` and Keras' ``CosineDecay``
  (whose ``exponent`` is 1): the floor ``alpha`` is a fraction of
  ``init_value``. The second has an absolute floor, as timm's
  ``CosineLRScheduler(lr_min=E)``, PyTorch's ``CosineAnnealingLR(eta_min=E)``
  and Optax's ``warmup_cosine_decay_schedule(end_value=E)`` have; give one or
  the other. The bracket is evaluated as
  :math:`\sin^2(\tfrac{\pi}{2}\,(T - s)/T)`, the same number without the
  cancellation that ``1 + cos`` suffers near the end of the decay, with
  :math:`T - s` on the integer step.

  Args:
    init_value: the value at step 0.
    decay_steps: positive int, the length of the decay (up to ``2**63 - 1``;
      beyond ``2**31 - 1`` an int32 step never reaches its end).
    alpha: the final value as a fraction of ``init_value``.
    exponent: non-negative finite power of the cosine factor.
    end_value: the final value itself (an absolute floor, timm's ``lr_min``),
      or None to use ``alpha``. Only with ``alpha=0``.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: ``decay_steps <= 0``, a negative ``exponent``, a non-finite
      value, or both ``end_value`` and a non-zero ``alpha``. Called with a
      concrete step outside int32 without ``jax_enable_x64``, the step: it is
      refused, not wrapped (under x64, int64 steps are exact; see
      :mod:`optaxtra.schedules`).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from optaxtra import schedules
    >>> s = schedules.cosine_decay(1.0, 4, alpha=0.1)
    >>> np.asarray(s(jnp.arange(6))).round(4)
    array([1.    , 0.8682, 0.55  , 0.2318, 0.1   , 0.1   ], dtype=float32)
    >>> s = schedules.cosine_decay(0.5, 4, end_value=1e-3)  # timm's lr_min
    >>> np.asarray(s(jnp.arange(6))).round(4)
    array([0.5   , 0.4269, 0.2505, 0.0741, 0.001 , 0.001 ], dtype=float32)

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017; Optax,
    :func:`optax.cosine_decay_schedule`; timm, ``timm/scheduler/cosine_lr.py``.
  """
  fn = "cosine_decay"
  _args.check_value(fn, "init_value", init_value)
  T = _args.check_int(fn, "decay_steps", decay_steps, low=1, what="steps")
  _args.check_value(fn, "alpha", alpha)
  _args.check_value(fn, "exponent", exponent, low=0.0)
  if end_value is not None:
    _args.check_value(fn, "end_value", end_value)
    if _checks.concrete_scalar(alpha) != 0.0:
      raise ValueError(
        f"{fn}: alpha and end_value both set the final value (alpha as a "
        f"fraction of init_value, end_value as the value itself), got "
        f"alpha={alpha!r} and end_value={end_value!r}. Give one: end_value=... "
        "with alpha=0 (its default), or alpha=... without end_value."
      )
  vdt = _args.value_dtype(init_value, alpha, exponent, end_value)
  half_pi = math.pi / 2

  def schedule(step):
    step, _ = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    left = _steps.remaining(jnp.maximum(step, 0), T, cdt) / _steps.real(T)
    cosine = jnp.square(jnp.sin(jnp.asarray(half_pi, cdt) * left))
    factor = jnp.power(cosine, jnp.asarray(exponent, cdt))
    init = jnp.asarray(init_value, cdt)
    if end_value is not None:
      end = jnp.asarray(end_value, cdt)
      return (end + (init - end) * factor).astype(vdt)
    a = jnp.asarray(alpha, cdt)
    decayed = (1 - a) * factor + a
    return (init * decayed).astype(vdt)

  return schedule
