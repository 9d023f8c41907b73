"""The decay schedules of the conventions users bring to average_params."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper


def _as_float(count: jax.Array) -> jax.Array:
  return jnp.asarray(count).astype(_checks.default_float())


def _decay_argument(fn: str, decay: Any) -> Any:
  """``decay``, checked to be a number in [0, 1)."""
  if callable(decay):
    raise TypeError(f"{fn}: decay must be a number in [0, 1), got {decay!r}.")
  _hyper.real(fn, "decay", decay, low=0.0, high=1.0)
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


def ema_power_warmup(
  decay: float = 0.9999,
  *,
  inv_gamma: float = 1.0,
  power: float = 2 / 3,
  min_decay: float = 0.0,
) -> optax.Schedule:
  r"""The EMA warmup of timm and diffusers: ``1 - (1 + t / inv_gamma) ** -power``.

  With :math:`t` the Optax count (the number of updates before this one):

  .. math::
    d_t = \begin{cases}
      0 & t = 0 \\
      \operatorname{clip}\left(1 - (1 + t / \gamma^{-1})^{-p},\
        \text{min_decay},\ \text{decay}\right) & t \ge 1
    \end{cases}

  the decay of timm's ``ModelEmaV3(model, decay, min_decay=...,
  use_warmup=True, warmup_gamma=inv_gamma, warmup_power=power)`` and of
  diffusers' ``EMAModel(parameters, decay, min_decay=..., use_ema_warmup=True,
  inv_gamma=inv_gamma, power=power)``, value for value (Katherine Crowson's
  warmup: with ``inv_gamma=1`` and ``power=2/3`` the decay reaches 0.999
  after about 31.6 thousand updates and 0.9999 after a million;
  ``power=3/4`` gets there sooner, ``power=1`` is the uniform average).

  The step offset. Both peers count their own steps from 1 and take
  ``step - 1``: timm's training script calls ``ema.update(model,
  step=num_updates)`` after the optimizer's ``num_updates``-th update, and
  diffusers' ``ema.step(...)`` first increments ``optimization_step``; each
  then computes ``max(0, step - update_after_step - 1)``, which (with
  ``update_after_step=0``) is exactly Optax's count ``t``, so the schedule is
  evaluated at the count :func:`optaxtra.average_params` passes it. At
  ``t = 0``, the first update, both return 0.0 (not clipped to ``min_decay``):
  the average becomes a copy of the params after the first update, as their
  EMA model becomes a copy of the model. (Their ``update_after_step=k`` holds
  the decay at 0 for ``k`` more updates; it has no argument here.)

  Args:
    decay: the largest decay, in [0, 1) (as float32 holds it).
    inv_gamma: positive, the warmup's time scale :math:`\gamma^{-1}` (timm's
      ``warmup_gamma``, diffusers' ``inv_gamma``).
    power: positive, the warmup's exponent :math:`p`.
    min_decay: the smallest decay from the second update on, in
      ``[0, decay]``.

  Returns:
    A schedule ``count -> d`` for :func:`optaxtra.average_params`, computed in
    the default float dtype (float32; float64 with ``jax_enable_x64``), as
    :math:`-\operatorname{expm1}(-p \log(1 + t / \gamma^{-1}))`, the same
    number accurate to the dtype's rounding near 0 as well as near 1.

  Raises:
    ValueError: ``decay`` outside [0, 1), ``inv_gamma`` or ``power`` not
      positive, ``min_decay`` outside ``[0, decay]``, or any of them not
      finite.
    TypeError: an argument that is not a real number (a schedule included).

  Examples:
    >>> import optaxtra
    >>> d = optaxtra.ema_power_warmup(0.9999)
    >>> d(0), d(1)  # a copy, then 1 - 2 ** (-2/3)
    (Array(0., dtype=float32), Array(0.37003946, dtype=float32))
    >>> print(d(31_622), d(10**6), d(10**8))  # 0.999, 0.9999, then held at decay
    0.999 0.9999 0.9999
    >>> import optax, jax.numpy as jnp
    >>> tx = optax.chain(optax.sgd(0.1), optaxtra.average_params(d))

  References:
    timm, ``timm/utils/model_ema.py`` (``ModelEmaV3.get_decay``); diffusers,
    ``src/diffusers/training_utils.py`` (``EMAModel.get_decay``); Karras et
    al., `Analyzing and Improving the Training Dynamics of Diffusion Models
    <https://arxiv.org/abs/2312.02696>`_, CVPR 2024 (on EMA profiles).
  """
  fn = "ema_power_warmup"
  for name, value in (
    ("decay", decay),
    ("inv_gamma", inv_gamma),
    ("power", power),
    ("min_decay", min_decay),
  ):
    if callable(value):
      raise TypeError(
        f"{fn}: {name} must be a number, got the function {value!r}; the "
        "schedule is this function's result."
      )
  top = _hyper.real(fn, "decay", decay, low=0.0, high=1.0)
  _hyper.real(fn, "inv_gamma", inv_gamma, low=0.0, low_open=True)
  _hyper.real(fn, "power", power, low=0.0, low_open=True)
  low = _hyper.real(fn, "min_decay", min_decay, low=0.0, high=1.0)
  if top is not None and low is not None and low > top:
    raise ValueError(
      f"{fn}: min_decay={min_decay!r} is above decay={decay!r}; min_decay is the "
      "smallest decay and decay the largest. Pass min_decay <= decay."
    )

  def schedule(count):
    t = _as_float(count)
    dt = t.dtype
    ratio = t / jnp.asarray(inv_gamma, dt)
    d = -jnp.expm1(-jnp.asarray(power, dt) * jnp.log1p(ratio))
    d = jnp.clip(d, jnp.asarray(min_decay, dt), jnp.asarray(decay, dt))
    return jnp.where(t <= 0, jnp.zeros_like(d), d)

  return schedule


# --- Trees -------------------------------------------------------------------
