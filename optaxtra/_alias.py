"""Ready-made optimizers chaining optaxtra's building blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxtra import _checks
from optaxtra._adamax_clipped import scale_by_adamax_clipped
from optaxtra._learning_rate import ScalarOrSchedule, scale_by_learning_rate
from optaxtra._weight_decay import add_decayed_weights_decoupled

Coupling = Literal["learning_rate", "normalized", "independent"]
_COUPLINGS = ("learning_rate", "normalized", "independent")


def decay_schedule(
  learning_rate: ScalarOrSchedule,
  coupling: Coupling,
  peak_learning_rate: float | None = None,
  *,
  fn: str = "decay_schedule",
) -> ScalarOrSchedule | None:
  """The ``schedule`` argument of the decoupled decay for a named coupling.

  Args:
    learning_rate: the optimizer's learning rate, a float or a schedule.
    coupling: ``"learning_rate"`` (PyTorch / Keras / optax.adamw / BERT: decay
      scaled by the learning rate), ``"normalized"`` (Loshchilov & Hutter,
      Composer: decay scaled by ``learning_rate(t) / peak_learning_rate``) or
      ``"independent"`` (TF-Addons: decay independent of the learning rate).
    peak_learning_rate: the normaliser for ``"normalized"``. Defaults to the
      learning rate itself when that is a float; required for a schedule.
    fn: the public function asking, for error messages.

  Returns:
    A float, a schedule, or None, to pass as
    ``add_decayed_weights_decoupled(..., schedule=...)``.

  Examples:
    >>> import optaxtra
    >>> s = optaxtra.decay_schedule(lambda t: 0.01 / (1 + t), "normalized",
    ...                             peak_learning_rate=0.01)
    >>> float(s(0)), float(s(1))
    (1.0, 0.5)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  if coupling not in _COUPLINGS:
    raise ValueError(
      f"{fn}: weight_decay_coupling must be one of {_COUPLINGS}, got {coupling!r}."
    )
  if coupling != "normalized":
    if peak_learning_rate is not None:
      raise ValueError(
        f"{fn}: peak_learning_rate is only used with "
        f"weight_decay_coupling='normalized', got coupling {coupling!r}. "
        "Drop peak_learning_rate, or choose the 'normalized' coupling."
      )
    return learning_rate if coupling == "learning_rate" else None
  if peak_learning_rate is None:
    if callable(learning_rate):
      raise ValueError(
        f"{fn}: weight_decay_coupling='normalized' with a learning-rate "
        "schedule needs peak_learning_rate (the value the schedule is "
        "normalised by, usually its maximum)."
      )
    if isinstance(learning_rate, jax.Array | np.ndarray):
      # Inside optax.inject_hyperparams a schedule arrives here as its current
      # value: normalising it by itself would silently give 1 at every step.
      raise ValueError(
        f"{fn}: weight_decay_coupling='normalized' with an array learning "
        "rate needs peak_learning_rate. Inside optax.inject_hyperparams a "
        "schedule arrives as its current value, so the peak cannot be "
        "inferred; pass peak_learning_rate explicitly (or a Python float "
        "learning rate)."
      )
    return None  # a constant learning rate normalised by itself is 1
  _checks.check_scalar(
    fn, "peak_learning_rate", peak_learning_rate, low=0.0, low_open=True, high=None
  )
  if callable(learning_rate):
    return lambda count: learning_rate(count) / peak_learning_rate
  return learning_rate / peak_learning_rate


def adamax_clipped(
  learning_rate: ScalarOrSchedule,
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  *,
  clip_multiplier: ArrayLike = 1.2,
  clip_epsilon: ArrayLike = 1e-4,
  clip: bool = True,
  bias_correction: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  track_clip_fraction: bool = False,
  weight_decay: ScalarOrSchedule = 0.0,
  weight_decay_coupling: Coupling = "learning_rate",
  peak_learning_rate: float | None = None,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Neural-GPU clipped Adamax, with a learning rate and decoupled decay.

  The chain

  .. code-block:: python

    optax.chain(
        optaxtra.scale_by_adamax_clipped(b1, b2, eps, ...),
        optaxtra.scale_by_learning_rate(learning_rate),
        optaxtra.add_decayed_weights_decoupled(
            weight_decay, schedule=<from weight_decay_coupling>,
            mask=weight_decay_mask),
    )

  With the defaults it is the optimizer of Freivalds & Liepins (2017), as in
  their ``AdamaxOptimizer``: ``params -= lr * mu / (nu + eps)`` with the
  gradient clipped to ``nu * 1.2 + 1e-4``, no bias correction and no decay.

  The default coupling, ``"learning_rate"``, scales the decay by the learning
  rate as PyTorch's and Keras' ``AdamW`` and ``optax.adamw`` do, so that a
  ``weight_decay`` taken from a recipe written for those means the same here.
  ``"normalized"`` follows Loshchilov & Hutter (decay times
  ``lr(t) / peak_learning_rate``), ``"independent"`` TF-Addons (decay alone).

  Args:
    learning_rate: a non-negative float or a schedule (int32 step -> value),
      e.g. from :mod:`optaxtra.schedules`.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the running infinity norm, in [0, 1).
    eps: non-negative term added to the denominator.
    clip_multiplier: see :func:`optaxtra.scale_by_adamax_clipped`.
    clip_epsilon: see :func:`optaxtra.scale_by_adamax_clipped`.
    clip: whether to clip the gradients.
    bias_correction: whether to bias-correct the first moment.
    mu_dtype: dtype of the first moment (default: the params').
    nu_dtype: dtype of the infinity norm (default: the params').
    track_clip_fraction: record the share of clipped gradient entries in the
      state (``optaxtra.inspect(state)["clip_fraction"]``); off by default, as
      it costs a reduction over every gradient entry.
    weight_decay: non-negative decoupled decay coefficient, float or schedule.
    weight_decay_coupling: ``"learning_rate"`` (default), ``"normalized"`` or
      ``"independent"``; see :func:`optaxtra.decay_schedule`.
    peak_learning_rate: normaliser of the ``"normalized"`` coupling.
    weight_decay_mask: which parameters decay: a bool tree or a function of
      the params, e.g. ``optaxtra.masks.path_mask(exclude=["bias", "LayerNorm"])``.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; its state is a tuple of
    the three stages' states, readable with :func:`optaxtra.inspect`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> tx = optaxtra.adamax_clipped(1e-2, weight_decay=1e-4)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]  # first step: +-1e-2*0.1, clipped
    Array([ 0.99899...,  -1.99899...], dtype=float32)

  References:
    Freivalds & Liepins, `Improving the Neural GPU Architecture for Algorithm
    Learning <https://arxiv.org/abs/1702.08727>`_, 2017.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
  """
  fn = "adamax_clipped"
  schedule = decay_schedule(
    learning_rate, weight_decay_coupling, peak_learning_rate, fn=fn
  )
  return optax.chain(
    scale_by_adamax_clipped(
      b1,
      b2,
      eps,
      clip_multiplier=clip_multiplier,
      clip_epsilon=clip_epsilon,
      clip=clip,
      bias_correction=bias_correction,
      mu_dtype=mu_dtype,
      nu_dtype=nu_dtype,
      track_clip_fraction=track_clip_fraction,
    ),
    scale_by_learning_rate(learning_rate),
    add_decayed_weights_decoupled(
      weight_decay, schedule=schedule, mask=weight_decay_mask
    ),
  )
