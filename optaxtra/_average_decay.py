"""The decay schedules of the conventions users bring to average_params."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks


def _as_float(count: jax.Array) -> jax.Array:
  return jnp.asarray(count).astype(_checks.default_float())


def _decay_argument(fn: str, decay: Any) -> Any:
  """``decay``, checked to be a number in [0, 1)."""
  if callable(decay):
    raise TypeError(f"{fn}: decay must be a number in [0, 1), got {decay!r}.")
  _checks.check_scalar(fn, "decay", decay, low=0.0, high=1.0, min_float32=True)
  return decay


def ema_warmup(decay: float = 0.999) -> optax.Schedule:
  """TensorFlow's decay with ``num_updates``: ``min(decay, (1 + n) / (10 + n))``.

  ``tf.train.ExponentialMovingAverage(decay, num_updates=step)`` lowers the
  decay while few updates are done, so that the average soon forgets where it
  started. In TensorFlow's examples ``num_updates`` is the optimizer's step
  counter (``global_step``, ``optimizer.iterations``) read after the
  optimizer's step, so here ``n = count + 1``: the number of updates done, the
  one being averaged in included. The average starts at the params given to
  init, as TensorFlow's shadow variables start at the variables' values (its
  documentation calls ``ema.apply`` once before training). For a counter read
  before the step (``n = count``) pass
  ``lambda count: jnp.minimum(decay, (1 + count) / (10 + count))``.

  Args:
    decay: the largest decay, in [0, 1).

  Returns:
    A schedule ``count -> d`` for :func:`optaxtra.average_params`, computed
    in the default float dtype (float32; float64 with ``jax_enable_x64``).

  Examples:
    >>> import optaxtra
    >>> schedule = optaxtra.ema_warmup(0.999)
    >>> schedule(0), schedule(8)  # n = 1: 2 / 11; n = 9: 10 / 19
    (Array(0.18181819, dtype=float32), Array(0.5263158, dtype=float32))
    >>> schedule(10_000)  # (1 + n) / (10 + n) reaches 0.999 at n = 8990
    Array(0.999, dtype=float32)
  """
  decay = _decay_argument("ema_warmup", decay)

  def schedule(count):
    n = _as_float(count) + 1
    return jnp.minimum(jnp.asarray(decay, n.dtype), (1 + n) / (10 + n))

  return schedule


def ema_from_first_update(decay: float = 0.999) -> optax.Schedule:
  """``decay``, but 0 for the first update: the average starts at its result.

  PyTorch's ``torch.optim.swa_utils.AveragedModel`` copies the model's
  parameters at its first ``update_parameters`` call and averages from the
  second on (with ``multi_avg_fn=get_ema_multi_avg_fn(decay)``), and Keras's
  ``use_ema=True`` multiplies ``ema_momentum`` by ``iterations != 0``: both
  start the average at the params *after* the first update, not at the
  initial ones.

  Args:
    decay: the decay from the second update on, in [0, 1).

  Returns:
    A schedule ``count -> d`` for :func:`optaxtra.average_params`: 0 at
    ``count = 0``, ``decay`` after, in the default float dtype.

  Examples:
    >>> import optaxtra
    >>> schedule = optaxtra.ema_from_first_update(0.99)
    >>> schedule(0), schedule(1), schedule(2)
    (Array(0., dtype=float32), Array(0.99, dtype=float32), Array(0.99, dtype=float32))
  """
  decay = _decay_argument("ema_from_first_update", decay)

  def schedule(count):
    c = _as_float(count)
    return jnp.where(c == 0, jnp.zeros_like(c), jnp.asarray(decay, c.dtype))

  return schedule


def polyak() -> optax.Schedule:
  """``count / (count + 1)``: the uniform average of the params after each update.

  With it the average after ``t`` updates is ``(p_1 + ... + p_t) / t``, the
  Polyak-Ruppert average of the iterates (the initial params not included),
  as PyTorch's ``AveragedModel(model)`` computes by default (stochastic weight
  averaging) when ``update_parameters`` is called after every step.

  Returns:
    A schedule ``count -> d`` for :func:`optaxtra.average_params`, in the
    default float dtype.

  Examples:
    >>> import optaxtra
    >>> schedule = optaxtra.polyak()
    >>> schedule(0), schedule(1), schedule(3)  # a_1 = p_1, a_2 = (p_1 + p_2) / 2
    (Array(0., dtype=float32), Array(0.5, dtype=float32), Array(0.75, dtype=float32))

  References:
    Polyak & Juditsky, `Acceleration of Stochastic Approximation by Averaging
    <https://doi.org/10.1137/0330046>`_, SIAM J. Control Optim., 1992.

    Izmailov et al., `Averaging Weights Leads to Wider Optima and Better
    Generalization <https://arxiv.org/abs/1803.05407>`_, UAI 2018.
  """

  def schedule(count):
    c = _as_float(count)
    return c / (c + 1)

  return schedule


# --- Trees -------------------------------------------------------------------
