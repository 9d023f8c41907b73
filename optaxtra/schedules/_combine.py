"""Schedules built from schedules: joins, linear warmup, epoch schedules."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp

from optaxtra._core import checks as _checks
from optaxtra.schedules import _arguments as _args
from optaxtra.schedules import _epochs, _steps, _values
from optaxtra.schedules._constant import constant


def join(
  schedules: Sequence[_args.Schedule], boundaries: Sequence[int]
) -> _args.Schedule:
  """Runs ``schedules`` one after the other, each restarted at its boundary.

  Optax's :func:`optax.join_schedules`: before ``boundaries[0]`` the value is
  ``schedules[0](step)``; from ``boundaries[i-1]`` up to ``boundaries[i]`` it is
  ``schedules[i](step - boundaries[i-1])``. The comparisons and the shifts are
  done on the integer step, exactly.

  Each schedule's output is checked when traced (see Raises); its values are
  its own and are passed on unchecked, a NaN or a negative one included.

  Args:
    schedules: the schedules, at least one.
    boundaries: ``len(schedules) - 1`` non-decreasing, non-negative integer
      steps at which the next schedule takes over (up to ``2**63 - 1``; an
      int32 step never reaches one beyond ``2**31 - 1``).

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values of the step's shape.

  Raises:
    ValueError: the wrong number of boundaries, or negative, fractional or
      decreasing ones. Called with a concrete step outside int32 without
      ``jax_enable_x64``, the step: it is refused, not wrapped (under x64, int64
      steps are exact; see :mod:`optaxtra.schedules`).
    TypeError: a schedule that returns None, a string, a bool, a complex
      number or not one value per step (a scalar, or an array of the step's
      shape), raised when it is traced, naming it and what it returned.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> s = schedules.join(
    ...   [schedules.constant(1.0), schedules.polynomial_decay(1.0, 0.0, 4)], [2])
    >>> s(jnp.arange(8))  # the decay starts from its own step 0 at step 2
    Array([1.  , 1.  , 1.  , 0.75, 0.5 , 0.25, 0.  , 0.  ], dtype=float32)

  References:
    Optax, :func:`optax.join_schedules`.
  """
  fn = "join"
  schedules = list(schedules) if isinstance(schedules, Sequence) else schedules
  if not isinstance(schedules, list) or not schedules:
    raise TypeError(f"{fn}: schedules must be a non-empty sequence, got {schedules!r}.")
  for i, s in enumerate(schedules):
    _args.check_schedule(fn, f"schedules[{i}]", s)
  if not isinstance(boundaries, Sequence):
    raise TypeError(
      f"{fn}: boundaries must be a sequence of steps, got {boundaries!r}."
    )
  if len(boundaries) != len(schedules) - 1:
    raise ValueError(
      f"{fn}: boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
      f"entries (the steps where the next schedule starts), got {len(boundaries)}."
    )
  bounds = [
    _args.check_int(fn, f"boundaries[{i}]", b, low=0, what="steps")
    for i, b in enumerate(boundaries)
  ]
  if any(b1 > b2 for b1, b2 in itertools.pairwise(bounds)):
    raise ValueError(f"{fn}: boundaries must be non-decreasing, got {bounds}.")

  def schedule(step):
    step, _ = _steps.as_step(fn, step)
    first = schedules[0]
    out = _values.as_values(fn, "schedules[0]", first, first(step), step.shape)
    for i, (b, s) in enumerate(zip(bounds, schedules[1:], strict=True), start=1):
      later = _values.as_values(
        fn, f"schedules[{i}]", s, s(_steps.shift(step, b)), step.shape
      )
      dtype = jnp.promote_types(out.dtype, later.dtype)
      out = jnp.where(_steps.below(step, b), out.astype(dtype), later.astype(dtype))
    return out

  return schedule


def linear_warmup(
  schedule: _args.Schedule | float,
  warmup_steps: int,
  *,
  init_value: float | jax.Array = 0.0,
  peak_value: float | jax.Array | None = None,
  shift: bool = False,
) -> _args.Schedule:
  """A linear warmup from ``init_value`` to ``peak_value``, then ``schedule``.

  Before ``warmup_steps`` the value is ``init_value + (peak_value -
  init_value) * step / warmup_steps`` (``init_value`` at step 0; with the
  default ``init_value=0`` it is ``peak_value * step / warmup_steps``, as in
  BERT's ``create_optimizer``). From ``warmup_steps`` on it is
  ``schedule(step)``: by default the wrapped schedule runs on the *unshifted*
  step, as BERT's polynomial decay and timm's schedulers (with their default
  ``warmup_prefix=False``) do: it decays from step 0 and the warmup covers its
  start. With ``shift=True`` it is ``schedule(step - warmup_steps)``, the
  wrapped schedule starting after the warmup, as
  ``optax.join_schedules([optax.linear_schedule(0, peak, warmup_steps),
  schedule], [warmup_steps])``, ``optax.warmup_cosine_decay_schedule`` and
  timm's ``warmup_prefix=True`` do.

  ``init_value`` is timm's ``warmup_lr_init`` (``CosineLRScheduler(...,
  warmup_t=W, warmup_lr_init=I)`` warms up as ``I + t * (base - I) / W``) and
  Optax's ``linear_schedule(init_value, ...)``'s start.

  The switch at ``warmup_steps`` is decided on the integer step, exactly.
  ``schedule``'s output is checked when traced (see Raises); its values are its
  own and are passed on unchecked, a NaN or a negative one included.

  Args:
    schedule: the schedule after the warmup, or a number for a constant.
    warmup_steps: non-negative int, the length of the warmup (0: none; up to
      ``2**63 - 1``, beyond ``2**31 - 1`` an int32 step never ends it).
    init_value: the value at step 0, where the warmup starts.
    peak_value: the value the warmup rises towards; defaults to
      ``schedule(0)``.
    shift: start ``schedule`` at the end of the warmup instead of step 0.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values of the step's shape.

  Raises:
    ValueError: a negative or fractional ``warmup_steps``, or a non-finite
      ``init_value``, ``peak_value`` or number ``schedule``. Called with a
      concrete step outside int32 without ``jax_enable_x64``, the step: it is
      refused, not wrapped (under x64, int64 steps are exact; see
      :mod:`optaxtra.schedules`).
    TypeError: a schedule that returns None, a string, a bool, a complex
      number or not one value per step (a scalar, or an array of the step's
      shape), raised when it is traced, naming it and what it returned.

  Examples:
    BERT's learning rate, 8 warmup steps of 64:

    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> lr = schedules.linear_warmup(schedules.polynomial_decay(1.0, 0.0, 64), 8)
    >>> lr(jnp.array([0, 4, 6, 8, 32, 64]))
    Array([0.   , 0.5  , 0.75 , 0.875, 0.5  , 0.   ], dtype=float32)
    >>> lr = schedules.linear_warmup(
    ...   schedules.polynomial_decay(1.0, 0.0, 64), 8, shift=True)
    >>> lr(jnp.array([0, 4, 8, 40, 72]))
    Array([0. , 0.5, 1. , 0.5, 0. ], dtype=float32)

    timm's warmup from ``warmup_lr_init=0.1``:

    >>> lr = schedules.linear_warmup(1.0, 4, init_value=0.1)
    >>> lr(jnp.arange(6))
    Array([0.1  , 0.325, 0.55 , 0.775, 1.   , 1.   ], dtype=float32)

  References:
    Devlin et al., `BERT <https://arxiv.org/abs/1810.04805>`_
    (``optimization.py``, ``create_optimizer``), 2019; Goyal et al.,
    `Accurate, Large Minibatch SGD <https://arxiv.org/abs/1706.02677>`_, 2017;
    timm, ``timm/scheduler/cosine_lr.py`` (``warmup_lr_init``).
  """
  fn = "linear_warmup"
  if not callable(schedule):
    _args.check_value(fn, "schedule", schedule)
    schedule = constant(schedule)
  W = _args.check_int(fn, "warmup_steps", warmup_steps, low=0, what="steps")
  _args.check_value(fn, "init_value", init_value)
  from_zero = _checks.concrete_scalar(init_value) == 0.0
  if peak_value is not None:
    _args.check_value(fn, "peak_value", peak_value)
  _checks.check_flag(fn, "shift", shift)

  def warmed_up(step):
    step, _ = _steps.as_step(fn, step)
    after = _values.as_values(
      fn,
      "schedule",
      schedule,
      schedule(_steps.shift(step, W) if shift else step),
      step.shape,
    )
    if W == 0:
      return after
    if peak_value is None:
      peak = _values.as_values(fn, "schedule", schedule, schedule(0), ())
    else:
      peak = jnp.asarray(peak_value)
    if from_zero:  # peak * frac, in the dtype of the values
      dtype = jnp.result_type(after.dtype, _args.value_dtype(peak))
      frac = jnp.maximum(step, 0).astype(dtype) / _steps.real(W)
      warm = peak.astype(dtype) * frac
    else:
      init = jnp.asarray(init_value)
      dtype = jnp.result_type(after.dtype, _args.value_dtype(peak, init))
      frac = jnp.maximum(step, 0).astype(dtype) / _steps.real(W)
      init = init.astype(dtype)
      warm = init + (peak.astype(dtype) - init) * frac
    return jnp.where(_steps.below(step, W), warm, after.astype(dtype))

  return warmed_up


def per_epoch(
  epoch_schedule: _args.Schedule,
  steps_per_epoch: int | float | Fraction,
  *,
  staircase: bool = True,
) -> _args.Schedule:
  """A schedule written in epochs, turned into one of the step count.

  The value at step ``t`` is ``epoch_schedule(floor(t / steps_per_epoch))``:
  the epoch number, an integer, so every value holds for a whole epoch. With
  ``staircase=False`` it is ``epoch_schedule(t / steps_per_epoch)``, the
  fractional epoch (a float step, which the schedules here accept), so that
  the value moves at every step; the epoch schedule's own boundaries are then
  compared in floating point, so use the default for exact epoch boundaries.
  ``epoch_schedule``'s output is checked when traced (see Raises); its values
  are its own and are passed on unchecked, a NaN or a negative one included.

  Optimizers count *updates*. A Keras ``ExponentialDecay(1e-3,
  decay_steps=25, decay_rate=0.95, staircase=True)`` therefore decays every 25
  batches, not every 25 epochs; ``per_epoch(exponential_decay(1e-3, 25, 0.95,
  staircase=True), steps_per_epoch)`` decays every 25 epochs.

  ``steps_per_epoch`` may be fractional, as where a training script divides
  the dataset's size by the batch size (Haiku's ImageNet example:
  ``1281167 / 1024 = 1251.1396484375``) and lets the epochs straddle batches.
  It is taken as the exact fraction it holds (a float is a binary fraction:
  ``fractions.Fraction(1251.1396484375) == Fraction(1281167, 1024)``; a
  ``fractions.Fraction`` such as ``Fraction(1281167, 1000)`` is taken as
  it is), and the staircase epoch ``floor(t / steps_per_epoch)`` is computed in
  integer arithmetic, exactly for every int32 step: the first step of epoch
  ``e`` is ``ceil(e * steps_per_epoch)``, never a step early or late. Dividing
  in float32 instead, as ``jnp.floor(step / steps_per_epoch)`` does, misplaces
  boundaries (above 2**24 the step itself is rounded). With
  ``staircase=False`` the fractional epoch is accurate to float rounding.

  Args:
    epoch_schedule: a schedule of the epoch number.
    steps_per_epoch: the updates in one epoch, at least 1 (up to ``2**63 -
      1``): an int (``len(dataset) // batch_size`` when the last partial batch
      is dropped, ``math.ceil(len(dataset) / batch_size)`` when it is kept), or
      a float or ``fractions.Fraction`` for epochs of a fractional number
      of steps.
    staircase: pass the whole epoch (True) or the fractional epoch (False).

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values of the step's shape.

  Raises:
    ValueError: a ``steps_per_epoch`` below 1 or not finite. Called with a
      concrete step outside int32 without ``jax_enable_x64``, the step: it is
      refused, not wrapped (under x64, int64 steps are exact; see
      :mod:`optaxtra.schedules`).
    TypeError: a ``steps_per_epoch`` that is not a number (or is traced); a
      schedule that returns None, a string, a bool, a complex number or not
      one value per step (a scalar, or an array of the step's shape), raised
      when it is traced, naming it and what it returned.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from optaxtra import schedules
    >>> epochly = schedules.exponential_decay(1e-3, 25, 0.95, staircase=True)
    >>> lr = schedules.per_epoch(epochly, steps_per_epoch=40)
    >>> lr(jnp.array([0, 999, 1000, 1999, 2000]))  # epochs 0, 24, 25, 49, 50
    Array([0.001    , 0.001    , 0.00095  , 0.00095  , 0.0009025], dtype=float32)
    >>> lr = schedules.per_epoch(schedules.cosine_decay(1.0, 2), 4, staircase=False)
    >>> np.asarray(lr(jnp.array([0, 2, 4, 6, 8]))).round(4)
    array([1.    , 0.8536, 0.5   , 0.1464, 0.    ], dtype=float32)

    Epochs of 2.5 steps start at steps 0, 3 (ceil 2.5), 5, 8, 10:

    >>> epoch = schedules.per_epoch(lambda e: e.astype(jnp.float32), 2.5)
    >>> epoch(jnp.arange(11))
    Array([0., 0., 0., 1., 1., 2., 2., 2., 3., 3., 4.], dtype=float32)

  References:
    Keras, ``keras.optimizers.schedules.ExponentialDecay`` (whose
    ``decay_steps`` counts updates); Goyal et al., `Accurate, Large Minibatch
    SGD <https://arxiv.org/abs/1706.02677>`_, 2017 (schedules in epochs);
    Haiku, ``examples/imagenet/train.py`` (a fractional ``steps_per_epoch``).
  """
  fn = "per_epoch"
  _args.check_schedule(fn, "epoch_schedule", epoch_schedule)
  length = _args.check_ratio(
    fn, "steps_per_epoch", steps_per_epoch, low=1, what="steps"
  )
  _checks.check_flag(fn, "staircase", staircase)
  if length.denominator == 1:
    return _per_whole_epoch(fn, epoch_schedule, length.numerator, staircase)
  x = 1 / length  # epochs per step, < 1
  spe = float(length)

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    dtype = _steps.working_dtype(_checks.default_float(), step)
    if not exact:
      epoch = step / jnp.asarray(spe, dtype)
      if staircase:
        epoch = jnp.floor(epoch)
    elif staircase:
      epoch = _epochs.floor_times(step, x)
    else:
      epoch = _epochs.times(step, x, dtype)
    return _values.as_values(
      fn, "epoch_schedule", epoch_schedule, epoch_schedule(epoch), step.shape
    )

  return schedule


def _per_whole_epoch(
  fn: str, epoch_schedule: _args.Schedule, n: int, staircase: bool
) -> _args.Schedule:
  """:func:`per_epoch` for a whole number of steps per epoch, ``n``."""

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    dtype = _steps.working_dtype(_checks.default_float(), step)
    if exact and _steps.beyond(step, n):
      # An epoch longer than the integer step can count: the step is in
      # epoch 0 (or -1 before step 0) and the fraction is step / n.
      if staircase:
        epoch = jnp.where(step < 0, -1, 0).astype(step.dtype)
      else:
        epoch = step.astype(dtype) / _steps.real(n)
    elif staircase:
      epoch = step // n if exact else jnp.floor(step / _steps.real(n))
    else:
      q, frac = _steps.split(step, n, exact, dtype)
      epoch = q + frac
    return _values.as_values(
      fn, "epoch_schedule", epoch_schedule, epoch_schedule(epoch), step.shape
    )

  return schedule
