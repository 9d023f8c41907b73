"""Warmup schedules of language models: warmup-stable-decay, inverse square root."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optaxtra.schedules import _arguments as _args
from optaxtra.schedules import _phases, _steps


def warmup_stable_decay(
  peak_value: float | jax.Array,
  warmup_steps: int,
  stable_steps: int,
  decay_steps: int,
  *,
  init_value: float | jax.Array = 0.0,
  end_value: float | jax.Array = 0.0,
  decay_shape: str = "linear",
) -> _args.Schedule:
  r"""Warmup, a long stable phase at the peak, then a short decay (WSD).

  With :math:`W, S, D` the three lengths, :math:`I, P, E` the initial, peak
  and end values:

  .. math::
    v(t) = \begin{cases}
      I + (P - I)\, t / W & t < W \\
      P & W \le t < W + S \\
      E + (P - E)\, f(p), \quad p = (t - W - S) / D & W + S \le t < W + S + D \\
      E & t \ge W + S + D
    \end{cases}

  with the decay's shape ``decay_shape``: ``"linear"``, :math:`f(p) = 1 - p`;
  ``"cosine"``, :math:`f(p) = (1 + \cos \pi p) / 2`; or ``"sqrt"``,
  :math:`f(p) = 1 - \sqrt{p}` (Hägele et al.'s "1-sqrt" cooldown). This is the
  schedule of MiniCPM and of Hugging Face's ``get_wsd_schedule`` (which warms
  up from and decays to ``min_lr_ratio * peak``: ``init_value = end_value =
  min_lr_ratio * peak_value``).

  The phase ends are compared with the integer step, exactly, and :math:`1 -
  p` is taken from the integer step too: the decay starts at exactly ``peak_value``
  and ends at exactly ``end_value``, accurate to float rounding in between
  (the cosine as :math:`\sin^2(\tfrac{\pi}{2}(1 - p))`, the square root as
  :math:`(1 - p) / (1 + \sqrt{p})`).

  Args:
    peak_value: the value of the stable phase.
    warmup_steps: non-negative int, the length of the warmup (0: none).
    stable_steps: non-negative int, the length of the stable phase.
    decay_steps: non-negative int, the length of the decay (0: a drop to
      ``end_value``). The three may total up to ``2**63 - 1``.
    init_value: the value at step 0, the warmup's start.
    end_value: the value at the end of the decay and after.
    decay_shape: ``"linear"``, ``"cosine"`` or ``"sqrt"``.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: a negative length, lengths totalling more than ``2**63 - 1``,
      an unknown ``decay_shape`` or a non-finite value. Called with a concrete
      step outside int32 without ``jax_enable_x64``, the step: it is refused,
      not wrapped (under x64, int64 steps are exact).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from optaxtra import schedules
    >>> s = schedules.warmup_stable_decay(1.0, 2, 3, 4, decay_shape="sqrt")
    >>> np.asarray(s(jnp.arange(10))).round(4)
    array([0.    , 0.5   , 1.    , 1.    , 1.    , 1.    , 0.5   , 0.2929,
           0.134 , 0.    ], dtype=float32)

  References:
    Hu et al., `MiniCPM: Unveiling the Potential of Small Language Models with
    Scalable Training Strategies <https://arxiv.org/abs/2404.06395>`_, 2024;
    Hägele et al., `Scaling Laws and Compute-Optimal Training Beyond Fixed
    Training Durations <https://arxiv.org/abs/2405.18392>`_, NeurIPS 2024.
  """
  fn = "warmup_stable_decay"
  _args.check_value(fn, "peak_value", peak_value)
  W = _args.check_int(fn, "warmup_steps", warmup_steps, low=0, what="steps")
  S = _args.check_int(fn, "stable_steps", stable_steps, low=0, what="steps")
  D = _args.check_int(fn, "decay_steps", decay_steps, low=0, what="steps")
  if W + S + D > _args.INT64_MAX:
    raise ValueError(
      f"{fn}: warmup_steps + stable_steps + decay_steps must fit an int64 "
      f"(<= 2**63 - 1), got {W + S + D}."
    )
  _args.check_value(fn, "init_value", init_value)
  _args.check_value(fn, "end_value", end_value)
  _phases.check_choice(fn, "decay_shape", decay_shape, ("linear", "cosine", "sqrt"))
  vdt = _args.value_dtype(peak_value, init_value, end_value)

  def schedule(step):
    step, _ = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    t = jnp.maximum(step, 0)
    peak = jnp.asarray(peak_value, cdt)
    end = jnp.asarray(end_value, cdt)
    if D:
      s = _steps.shift(t, W + S)
      left = _steps.remaining(s, D, cdt) / _steps.real(D)  # 1 - p
      done = jnp.minimum(s.astype(cdt) / _steps.real(D), 1)  # p
      if decay_shape == "sqrt":
        root = jnp.sqrt(done)
        to_peak, to_end = left / (1 + root), root  # 1 - sqrt(p), sqrt(p)
      else:
        to_peak, to_end = _phases.weights(left, done, decay_shape == "cosine")
      out = peak * to_peak + end * to_end
    else:
      out = jnp.broadcast_to(end, t.shape)
    out = jnp.where(_steps.below(t, W + S), peak, out)
    if W:
      init = jnp.asarray(init_value, cdt)
      warm = init + (peak - init) * (t.astype(cdt) / _steps.real(W))
      out = jnp.where(_steps.below(t, W), warm, out)
    return out.astype(vdt)

  return schedule


def inverse_sqrt(
  peak_value: float | jax.Array,
  warmup_steps: int,
  *,
  init_value: float | jax.Array = 0.0,
) -> _args.Schedule:
  r"""A linear warmup, then a decay with the inverse square root of the step.

  .. math::
    v(t) = \begin{cases}
      I + (P - I)\, t / W & t < W \\
      P \sqrt{W / t} & t \ge W
    \end{cases}

  fairseq's ``inverse_sqrt`` learning-rate scheduler (``--lr P
  --warmup-updates W --warmup-init-lr I``) value for value, the step being its
  update count: its warmup is ``I + t * (P - I) / W``, its decay
  ``P * sqrt(W) / sqrt(t)``. The decay is continuous with the warmup's peak
  (:math:`v(W) = P`). With ``init_value=0`` and ``peak_value = d_model**-0.5 *
  warmup_steps**-0.5`` it is the Transformer paper's ("Noam") rate. The switch
  at ``warmup_steps`` is decided on the integer step.

  Args:
    peak_value: the value at step ``warmup_steps``.
    warmup_steps: positive int, the length of the warmup (for none, use 1
      with ``init_value=peak_value``; up to ``2**63 - 1``).
    init_value: the value at step 0.

  Returns:
    A schedule: a function from an int step (a Python int or an integer array
    of any shape) to the values, float32 (float64 under x64 for float64
    values) of the step's shape.

  Raises:
    ValueError: ``warmup_steps <= 0`` (the decay's scale is set by it:
      fairseq divides by zero too), or a non-finite value. Called with a
      concrete step outside int32 without ``jax_enable_x64``, the step: it is
      refused, not wrapped (under x64, int64 steps are exact).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import schedules
    >>> s = schedules.inverse_sqrt(1.0, 4)
    >>> s(jnp.array([0, 2, 4, 16, 64]))
    Array([0.  , 0.5 , 1.  , 0.5 , 0.25], dtype=float32)

  References:
    fairseq, ``fairseq/optim/lr_scheduler/inverse_square_root_schedule.py``;
    Vaswani et al., `Attention Is All You Need
    <https://arxiv.org/abs/1706.03762>`_, NeurIPS 2017.
  """
  fn = "inverse_sqrt"
  _args.check_value(fn, "peak_value", peak_value)
  W = _args.check_int(fn, "warmup_steps", warmup_steps, low=0, what="steps")
  if W == 0:
    raise ValueError(
      f"{fn}: warmup_steps must be >= 1 steps, got 0: it scales the decay "
      "peak_value * sqrt(warmup_steps / step) (fairseq divides by zero). For no "
      "warmup use warmup_steps=1 with init_value=peak_value."
    )
  _args.check_value(fn, "init_value", init_value)
  vdt = _args.value_dtype(peak_value, init_value)

  def schedule(step):
    step, exact = _steps.as_step(fn, step)
    cdt = _steps.working_dtype(vdt, step)
    t = jnp.maximum(step, 0)
    peak = jnp.asarray(peak_value, cdt)
    init = jnp.asarray(init_value, cdt)
    out = init + (peak - init) * (t.astype(cdt) / _steps.real(W))
    if not _steps.beyond(t, W):
      # Below W the ratio is not used; held at 1 it stays finite.
      ratio = _steps.real(W) / jnp.maximum(t, W if exact else _steps.real(W)).astype(
        cdt
      )
      out = jnp.where(_steps.below(t, W), out, peak * jnp.sqrt(ratio))
    return out.astype(vdt)

  return schedule
