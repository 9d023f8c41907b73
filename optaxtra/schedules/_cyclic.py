"""Cyclic schedules: cosine annealing with warm restarts, and the one-cycle policy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from optaxtra._core import checks as _checks
from optaxtra.schedules import _arguments as _args
from optaxtra.schedules import _phases, _steps


def cosine_restarts(
  init_value: float | jax.Array,
  period: int,
  *,
  period_mul: int = 1,
  value_mul: float | jax.Array = 1.0,
  end_value: float | jax.Array = 0.0,
) -> _args.Schedule:
  r"""Cosine annealing with warm restarts (SGDR), as PyTorch and timm.

  Cycle :math:`i` starts at step :math:`S_i = P (1 + m + \dots + m^{i-1})` and
  lasts :math:`P_i = P m^i` steps (``period``, ``period_mul``). With
  :math:`t_i = t - S_i` the steps into it and :math:`g` ``value_mul``:

  .. math::
    v(t) = E + (I g^i - E) \cdot \tfrac{1}{2} \left(1 + \cos\frac{\pi t_i}{P_i}\right)

  This is ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=period,
  T_mult=period_mul, eta_min=end_value)`` of base learning rate ``init_value``,
  stepped once per update (for once per epoch, wrap it in
  :func:`optaxtra.schedules.per_epoch`), value for value. ``value_mul`` is
  timm's ``CosineLRScheduler`` ``cycle_decay`` (with ``cycle_mul=period_mul``,
  no warmup and a ``cycle_limit`` never reached; timm's default of 1 stops
  after the first cycle): as in timm only the peak is scaled, so cycle
  :math:`i` falls from ``init_value * value_mul**i`` to the same
  ``end_value`` (timm's ``lr_min``) as every other cycle, rising to it once
  the peaks are below it.

  The cycle is found on the integer step: by integer division, or, for
  ``period_mul > 1``, by comparing the step with the few cycle starts an int32
  (or int64) step can reach, so every restart is exact. PyTorch's closed form
  (``scheduler.step(epoch)``) and timm find it with a floating logarithm,
  which can put a restart a step late (``math.log(1000, 10)`` is
  ``2.9999999999999996``). The value is evaluated as :math:`I g^i
  \sin^2(\tfrac{\pi}{2} (P_i - t_i) / P_i) + E \sin^2(\tfrac{\pi}{2} t_i / P_i)`
  (the same number), both offsets on the integer step: exactly the peak at
  each restart, and accurate near each cycle's end.

  Args:
    init_value: the value at the start of the first cycle.
    period: positive int, the length of the first cycle (up to ``2**63 - 1``).
    period_mul: int ``>= 1``, the ratio of a cycle's length to the one
      before (PyTorch's ``T_mult``).
    value_mul: positive finite ratio of a cycle's peak to the one before
      (timm's ``cycle_decay``).
    end_value: the value every cycle ends towards (PyTorch's ``eta_min``).

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: ``period <= 0``, ``period_mul < 1``, ``value_mul <= 0`` or a
      non-finite value. Called with a concrete step outside int32 without
      ``jax_enable_x64``, the step: it is refused, not wrapped (under x64, int64
      steps are exact; see :mod:`optaxtra.schedules`).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from optaxtra import schedules
    >>> s = schedules.cosine_restarts(1.0, 2, period_mul=2, value_mul=0.5)
    >>> np.asarray(s(jnp.arange(8))).round(4)  # cycles of 2, 4, 8 steps
    array([1.    , 0.5   , 0.5   , 0.4268, 0.25  , 0.0732, 0.25  , 0.2405],
          dtype=float32)

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017; PyTorch,
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``; timm,
    ``timm.scheduler.CosineLRScheduler``.
  """
  fn = "cosine_restarts"
  _args.check_value(fn, "init_value", init_value)
  P = _args.check_int(fn, "period", period, low=1, what="steps")
  m = _args.check_int(fn, "period_mul", period_mul, low=1)
  _args.check_value(
    fn,
    "value_mul",
    value_mul,
    low=0.0,
    low_open=True,
    fix="For the same peak every cycle, leave value_mul=1.0.",
  )
  _args.check_value(fn, "end_value", end_value)
  vdt = _args.value_dtype(init_value, value_mul, end_value)
  scaled = _checks.concrete_scalar(value_mul) != 1.0
  # For period_mul > 1, the cycle starts up to the first beyond int64.
  starts = [0]
  while m > 1 and starts[-1] <= _args.INT64_MAX:
    starts.append(starts[-1] + P * m ** (len(starts) - 1))

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    t = jnp.maximum(step, 0)
    # i: the cycle; done and left: the fractions of it done and left.
    if m == 1 and exact and not _steps.beyond(t, P):
      i = t // P
      into = t - i * P
      done = into.astype(cdt) / _steps.real(P)
      left = (P - into).astype(cdt) / _steps.real(P)
    elif m == 1 and exact:  # a cycle longer than the step can count
      i = jnp.zeros_like(t)
      done = t.astype(cdt) / _steps.real(P)
      left = _steps.remaining(t, P, cdt) / _steps.real(P)
    elif m == 1:
      i, done = _steps.split(t, P, exact, cdt)
      left = 1 - done
    else:
      top = int(jnp.iinfo(t.dtype).max) if exact else _args.INT64_MAX
      reach = [s for s in starts if s <= top]  # the starts the step can reach
      k = len(reach) - 1  # the last cycle the step can be in (never ends)
      i = sum((_steps.reached(t, s).astype(jnp.int32) for s in reach[1:]), start=0)
      i = jnp.asarray(i, jnp.int32) + jnp.zeros(t.shape, jnp.int32)
      ends = [*reach[1:], starts[k + 1]]
      lengths = [float(b - a) for a, b in zip(reach, ends, strict=True)]
      if exact:
        done = (t - jnp.asarray(reach, t.dtype)[i]).astype(cdt)
        left = _steps.remaining(t, ends[-1], cdt)  # ends[-1] is beyond the step
        if k:
          to_next = jnp.asarray(reach[1:], t.dtype)[jnp.minimum(i, k - 1)] - t
          left = jnp.where(i < k, to_next.astype(cdt), left)
      else:
        done = t - jnp.asarray([float(s) for s in reach], cdt)[i]
        left = jnp.asarray([float(e) for e in ends], cdt)[i] - t
      length = jnp.asarray(lengths, cdt)[i]
      done, left = done / length, left / length
    to_peak, to_end = _phases.weights(left, done, cosine=True)
    peak = jnp.asarray(init_value, cdt)
    if scaled:
      peak = peak * jnp.power(jnp.asarray(value_mul, cdt), i.astype(cdt))
    return (peak * to_peak + jnp.asarray(end_value, cdt) * to_end).astype(vdt)

  return schedule


def one_cycle(
  max_value: float | jax.Array,
  total_steps: int,
  *,
  pct_start: float = 0.3,
  div_factor: float | jax.Array = 25.0,
  final_div_factor: float | jax.Array = 1e4,
  anneal: str = "cos",
  three_phase: bool = False,
) -> _args.Schedule:
  r"""The one-cycle policy, PyTorch's ``OneCycleLR`` value for value.

  From :math:`I =` ``max_value / div_factor`` the value rises to ``max_value``,
  then falls to :math:`M = I /` ``final_div_factor``; with ``three_phase`` it
  falls back to :math:`I` first, then to :math:`M`. Each phase is annealed by
  ``anneal``: ``"cos"``, :math:`b + (a - b) (1 + \cos \pi p) / 2`, or
  ``"linear"``, :math:`a + (b - a) p`, from its start value :math:`a` to its end
  value :math:`b`, at the fraction :math:`p = (t - s) / (e - s)` of the phase.

  The phases end where ``torch.optim.lr_scheduler.OneCycleLR(max_lr=max_value,
  total_steps=total_steps, pct_start=pct_start, anneal_strategy=anneal,
  div_factor=div_factor, final_div_factor=final_div_factor,
  three_phase=three_phase)`` ends them: the first at
  ``float(pct_start * total_steps) - 1``, the second (``three_phase``) at
  ``float(2 * pct_start * total_steps) - 2``, the last at ``total_steps - 1``,
  in Python floats as PyTorch computes them. A step is in the first phase
  whose end it does not pass, and each phase starts at the previous one's end
  (the first at 0). The phase is chosen on the integer step (exactly), and
  :math:`t - s` and :math:`e - t` are taken from the integer step, so the
  value is accurate to float rounding at every int32 step. With
  ``pct_start * total_steps < 1`` the rise ends before step 0 and the run
  starts partway down the fall, as in PyTorch. (PyTorch's momentum cycling is
  not part of this schedule.)

  The value at step ``total_steps - 1``, the last update's, is held from then
  on. PyTorch computes one more value, at step ``total_steps`` (the scheduler
  step after the last update, which no update uses), by running the last phase
  past its end (``p > 1``: rising again with ``"cos"``; below :math:`M`, and
  negative when ``final_div_factor`` is large, with ``"linear"``), and raises
  ``ValueError`` for any later step. Optax's ``cosine_onecycle_schedule`` is a
  step longer: its peak and its end come one step after PyTorch's.

  Args:
    max_value: the peak value.
    total_steps: positive int, the number of updates of the cycle.
    pct_start: the fraction of ``total_steps`` spent rising, a concrete
      number in ``[0, 1]`` (used as a Python float).
    div_factor: positive finite, ``max_value`` over the initial value.
    final_div_factor: positive finite, the initial value over the final one.
    anneal: ``"cos"`` or ``"linear"``, PyTorch's ``anneal_strategy``.
    three_phase: fall back to the initial value before the final fall.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: ``total_steps <= 0``, ``pct_start`` outside ``[0, 1]``, a
      ``pct_start * total_steps`` of exactly 1 (the first phase would end where
      it starts: PyTorch divides by zero), a non-positive ``div_factor`` or
      ``final_div_factor``, a non-finite value or an unknown ``anneal``. Called
      with a concrete step outside int32 without ``jax_enable_x64``, the step:
      it is refused, not wrapped (under x64, int64 steps are exact).
    TypeError: a traced ``pct_start`` (it sets the phase ends).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from optaxtra import schedules
    >>> s = schedules.one_cycle(1.0, 10, anneal="linear")
    >>> np.asarray(s(jnp.arange(12))).round(4)  # held at the end
    array([0.04  , 0.52  , 1.    , 0.8571, 0.7143, 0.5714, 0.4286, 0.2857,
           0.1429, 0.    , 0.    , 0.    ], dtype=float32)

  References:
    Smith & Topin, `Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2017;
    PyTorch, ``torch.optim.lr_scheduler.OneCycleLR``.
  """
  fn = "one_cycle"
  _args.check_value(fn, "max_value", max_value)
  T = _args.check_int(fn, "total_steps", total_steps, low=1, what="steps")
  pct = _phases.check_fraction(fn, "pct_start", pct_start, "the phase ends")
  _args.check_value(fn, "div_factor", div_factor, low=0.0, low_open=True)
  _args.check_value(fn, "final_div_factor", final_div_factor, low=0.0, low_open=True)
  _phases.check_choice(fn, "anneal", anneal, ("cos", "linear"))
  _checks.check_flag(fn, "three_phase", three_phase)
  # PyTorch's phase ends, in its arithmetic, and the values each goes between.
  ends: list[float] = [float(pct * T) - 1]
  if three_phase:
    ends.append(float(2 * pct * T) - 2)
  ends.append(T - 1)
  names = [("initial", "max"), ("max", "initial")][: len(ends) - 1]
  names.append(("initial" if three_phase else "max", "min"))
  if ends[0] == 0:
    raise ValueError(
      f"{fn}: pct_start * total_steps must not be 1 (got pct_start={pct!r}, "
      f"total_steps={T}): the rise would end at step 0, where it starts, and "
      "PyTorch divides by zero. Use another pct_start (pct_start=0.0 for no "
      "rise)."
    )
  starts = [0.0, *ends[:-1]]
  vdt = _args.value_dtype(max_value, div_factor, final_div_factor)

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    t = jnp.maximum(step, 0)
    if not _steps.beyond(t, T - 1):  # hold the last update's value
      t = jnp.minimum(t, T - 1 if exact else _steps.real(T - 1))
    peak = jnp.asarray(max_value, cdt)
    initial = peak / jnp.asarray(div_factor, cdt)
    values = {
      "max": peak,
      "initial": initial,
      "min": initial / jnp.asarray(final_div_factor, cdt),
    }
    out = None
    for i in reversed(range(len(ends))):
      s, e = starts[i], ends[i]
      # A phase of no length is never chosen: PyTorch's phases always
      # contain the steps they are chosen for (the one exception is refused).
      length = (e - s) if e > s else 1.0
      done, left = _phases.offset(t, s, cdt)[0], _phases.offset(t, e, cdt)[1]
      wa, wb = _phases.weights(left / length, done / length, anneal == "cos")
      a, b = (values[n] for n in names[i])
      value = a * wa + b * wb
      if out is None:
        out = value
      else:
        inside = ~_steps.reached(t, math.floor(e) + 1) if exact else t <= e
        out = jnp.where(inside, value, out)
    assert out is not None
    return out.astype(vdt)

  return schedule
