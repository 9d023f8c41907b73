"""Looking at a schedule before training: sample it, plot it."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra.schedules import _arguments as _args
from optaxtra.schedules import _values

# More epoch lines than this would paint the plot grey; mark every k-th epoch.
_MAX_EPOCH_LINES = 50


def sample(schedule: _args.Schedule, num_steps: int) -> np.ndarray:
  """The values of ``schedule`` at steps ``0, 1, ..., num_steps - 1``.

  The schedule is called once, under :func:`jax.jit`, on
  ``jnp.arange(num_steps, dtype=jnp.int32)`` (the int32 counts an Optax
  optimizer passes it), as it will be called inside a jitted training step; a
  schedule returning a scalar for every step (such as
  :func:`optax.constant_schedule`) is broadcast. The output is checked while
  tracing, as :func:`optaxtra.schedules.join` checks its schedules'; the
  values are returned as they are, NaNs and negative values included, for you
  to look at.

  Args:
    schedule: a schedule, from :mod:`optaxtra.schedules`, Optax or your own
      (written with ``jnp`` operations so that it accepts an array of steps).
    num_steps: positive int, the number of steps to sample.

  Returns:
    A NumPy array of shape ``(num_steps,)``; its ``i``-th entry is the value
    the ``i``-th update (counting from 0) uses.

  Raises:
    ValueError: ``num_steps`` not a positive int of at most ``2**31 - 1``.
    TypeError: a schedule that returns None, a string, a bool, a complex
      number or not one value per step (a scalar, or an array of the step's
      shape), raised when it is traced, naming it and what it returned.

  Examples:
    >>> from optaxtra import schedules
    >>> schedules.sample(schedules.exponential_decay(1.0, 2, 0.5, staircase=True), 5)
    array([1.  , 1.  , 0.5 , 0.5 , 0.25], dtype=float32)
  """
  fn = "sample"
  _args.check_schedule(fn, "schedule", schedule)
  n = _args.check_int(
    fn, "num_steps", num_steps, low=1, what="steps", high=_args.INT32_MAX
  )
  steps = jnp.arange(n, dtype=jnp.int32)

  def checked(t):
    # The output is checked while tracing: a string cannot even leave jit.
    return _values.as_values(fn, "schedule", schedule, schedule(t), t.shape)

  # One compiled call: far cheaper than dispatching every operation eagerly.
  return np.asarray(jax.jit(checked)(steps))


def plot(
  schedule: _args.Schedule,
  num_steps: int,
  *,
  steps_per_epoch: int | float | Fraction | None = None,
  ax: Any = None,
) -> Any:
  """Plots ``schedule`` over ``num_steps`` steps, marking epoch boundaries.

  The curve is drawn as steps (each value holds from its step to the next),
  so that a staircase shows where it drops. With ``steps_per_epoch``, a dashed
  vertical line marks the start of every epoch (every ``k``-th epoch when
  there would be more than 50 lines) and a top axis counts epochs: a decay
  meant per epoch but counted in steps shows at a glance. Needs matplotlib
  (``pip install 'optaxtra[plot]'``), imported only when called.

  Args:
    schedule: a schedule, as for :func:`optaxtra.schedules.sample`.
    num_steps: positive int, the number of steps to draw.
    steps_per_epoch: optional, the updates in one epoch, at least 1: an int,
      or a float or ``fractions.Fraction`` as
      :func:`optaxtra.schedules.per_epoch` takes (a line then marks each
      epoch's first step, ``ceil(epoch * steps_per_epoch)``).
    ax: a matplotlib ``Axes`` to draw on; by default a new figure's.

  Returns:
    The matplotlib ``Axes``, with the schedule's line added first and then
    the epoch boundaries' lines (labelled ``"_epoch"``).

  Examples:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from optaxtra import schedules
    >>> lr = schedules.exponential_decay(1e-3, 25, 0.95, staircase=True)
    >>> ax = schedules.plot(lr, 200, steps_per_epoch=40)
    >>> [line.get_xdata()[0] for line in ax.lines[1:]]  # epoch starts
    [40, 80, 120, 160]
    >>> import matplotlib.pyplot as plt
    >>> plt.close(ax.figure)
  """
  fn = "plot"
  values = sample(schedule, num_steps)
  spe = None
  if steps_per_epoch is not None:
    spe = _args.check_ratio(fn, "steps_per_epoch", steps_per_epoch, low=1, what="steps")
  try:
    from matplotlib.ticker import FormatStrFormatter
  except ImportError:
    raise ImportError(
      "optaxtra.schedules.plot needs matplotlib; install it with "
      "pip install 'optaxtra[plot]' (or use optaxtra.schedules.sample)."
    ) from None
  if ax is None:
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
  steps = np.arange(num_steps)
  ax.plot(steps, values, drawstyle="steps-post")
  if spe is not None:
    count = math.floor((num_steps - 1) / spe)
    every = max(1, math.ceil(count / _MAX_EPOCH_LINES))
    for epoch in range(every, count + 1, every):
      start = math.ceil(epoch * spe)  # the epoch's first step, exactly
      ax.axvline(start, color="0.6", linestyle="--", linewidth=0.8, label="_epoch")
    length = float(spe)
    top = ax.secondary_xaxis(
      "top", functions=(lambda s: s / length, lambda e: e * length)
    )
    top.set_xlabel("epoch" if every == 1 else f"epoch (a line every {every})")
  # Plain tick labels (1e-05, 0.001): a "1e-5" offset above the axes would
  # collide with the epoch axis.
  ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
  ax.set_xlim(0, max(num_steps - 1, 1))
  ax.set_xlabel("step")
  ax.set_ylabel("value")
  return ax
