"""The ready-made optimizer: clipped Adamax, a learning rate, decoupled decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxtra._adamax_clipped import ScaleByAdamaxClippedState, scale_by_adamax_clipped
from optaxtra._core import checks as _checks
from optaxtra._core.masking import resolve_mask
from optaxtra._core.paths import paths as masks_paths
from optaxtra._coupling import Coupling, decay_schedule
from optaxtra._introspect.declare import inspectable
from optaxtra._learning_rate import (
  LearningRate,
  ScalarOrSchedule,
  effective_learning_rate,
)
from optaxtra._weight_decay import Decay, decay_updates

_FN = "adamax_clipped"
_DECAY_FN = "add_decayed_weights_decoupled"  # messages name the stage computing


@inspectable(
  values=[
    "count",
    "learning_rate",
    "learning_rate_scale",
    "weight_decay",
    "decay_rate",
    "clip_fraction",
    "bias_correction",
  ],
  trees=["mu", "nu"],
  derive=effective_learning_rate,
)
class AdamaxClippedState(NamedTuple):
  """State of :func:`optaxtra.adamax_clipped`.

  Every value is the one the most recent update used (before the first update,
  the one the first update will use). A field that does not apply is None,
  which JAX takes as an empty subtree: it costs nothing and
  :func:`optaxtra.inspect` does not report it.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    mu: first moment of the clipped gradients.
    nu: running infinity norm of the clipped gradients.
    learning_rate: the learning rate used, ``learning_rate_scale *
      learning_rate(t)``.
    learning_rate_scale: float32 multiplier of the learning rate (and of a
      decay coupled to it), 1.0 at init; set it with
      :func:`optaxtra.set_learning_rate_scale` (no recompilation).
    weight_decay: the decay coefficient as given, ``weight_decay(t)``; None
      without decay (``weight_decay=0``).
    decay_rate: the share of each decayed weight removed,
      ``weight_decay(t) * coupling(t)`` (for the default coupling
      ``weight_decay(t) * learning_rate_scale * learning_rate(t)``); None
      without decay.
    clip_fraction: with ``track_clip_fraction=True``, the share of gradient
      entries clipped; None otherwise.
    bias_correction: with ``bias_correction=True``, the factor
      ``1 / (1 - b1**t)`` applied to the first moment; None otherwise.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  mu: optax.Updates
  nu: optax.Updates
  learning_rate: jax.Array
  learning_rate_scale: jax.Array
  weight_decay: jax.Array | None
  decay_rate: jax.Array | None
  clip_fraction: jax.Array | None
  bias_correction: jax.Array | None


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

  One transformation computing what the chain

  .. code-block:: python

    optax.chain(
        optaxtra.scale_by_adamax_clipped(b1, b2, eps, ...),
        optaxtra.scale_by_learning_rate(learning_rate),
        optaxtra.add_decayed_weights_decoupled(
            weight_decay, schedule=<from weight_decay_coupling>,
            mask=weight_decay_mask),
    )

  computes, to the bit, with one step count for the whole optimizer and a
  state holding only what means something: the moments, the learning rate the
  last update used, and, where there is decay, its coefficient and the rate it
  applied (see :class:`AdamaxClippedState`). The building blocks stay
  available to compose with :func:`optax.chain` yourself.

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
    An :class:`optax.GradientTransformationExtraArgs` whose state is an
    :class:`optaxtra.AdamaxClippedState`, readable with
    :func:`optaxtra.inspect`: ``count``, ``learning_rate``,
    ``learning_rate_scale``, ``effective_learning_rate``, and, where they
    apply, ``weight_decay`` (the coefficient), ``decay_rate`` (the share of
    each weight removed), ``bias_correction`` and ``clip_fraction``. Its
    ``update`` needs the params when there is decay.

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
    >>> info = optaxtra.inspect(state)
    >>> float(info["weight_decay"]), float(info["decay_rate"])  # 1e-4 * lr
    (0.0001, 1e-06)
    >>> sorted(info)
    ['count', 'decay_rate', 'effective_learning_rate', 'learning_rate',
     'learning_rate_scale', 'weight_decay']

  References:
    Freivalds & Liepins, `Improving the Neural GPU Architecture for Algorithm
    Learning <https://arxiv.org/abs/1702.08727>`_, 2017.

    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
  """
  schedule = decay_schedule(
    learning_rate, weight_decay_coupling, peak_learning_rate, fn=_FN
  )
  adamax = scale_by_adamax_clipped(
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
  )
  # The learning-rate and decay kernels of the building blocks, not copies:
  # the same checks, the same arithmetic, so the alias equals the chain to
  # the bit (tests/test_alias.py compares them).
  lr = LearningRate(_FN, learning_rate)
  decay = Decay(_DECAY_FN, weight_decay, schedule)
  # A decay coupled to the learning rate follows its scale, as in PyTorch,
  # where the decay of AdamW is lr * weight_decay with the group's lr.
  coupled = weight_decay_coupling != "independent"
  # No decay at all (a Python or NumPy 0, the default): no decay fields, and no
  # params needed by update. Any array counts as decay, so that the state of
  # optax.inject_hyperparams, which passes arrays, keeps one structure.
  decays = not (
    isinstance(weight_decay, int | float | np.generic) and float(weight_decay) == 0.0
  )

  def init_fn(params):
    # The decay mask is checked here, as the decay stage's init does: a
    # pattern naming no parameter fails when the optimizer is built.
    if decays and weight_decay_mask is not None and jax.tree.leaves(params):
      resolve_mask(_DECAY_FN, weight_decay_mask, params)
    a = cast(ScaleByAdamaxClippedState, adamax.init(params))
    rates = wds = keys = None
    if decays:
      wds, rates, _, keys = decay.rates(a.count, masks_paths(params))
    return AdamaxClippedState(
      count=a.count,
      mu=a.mu,
      nu=a.nu,
      learning_rate=lr.init_value(params),
      learning_rate_scale=lr.init_scale(),
      weight_decay=decay.record_wd(wds) if wds is not None else None,
      decay_rate=(
        decay.record_rates(rates, keys) if rates is not None and keys else None
      ),
      clip_fraction=a.clip_fraction,
      bias_correction=a.bias_correction,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args  # e.g. value=loss for a reduce_on_plateau later in a chain
    _checks.check_state(_FN, state, AdamaxClippedState)
    if decays and params is None:
      raise ValueError(
        f"{_FN} with weight_decay needs the params to decay them: call "
        "tx.update(grads, state, params), or optimizer.update(grads, state, "
        "params)."
      )
    count = state.count
    a = ScaleByAdamaxClippedState(
      count, state.mu, state.nu, state.clip_fraction, state.bias_correction
    )
    # Its optional fields are None, which optax.OptState does not spell.
    updates, new = adamax.update(updates, cast(Any, a))
    a = cast(ScaleByAdamaxClippedState, new)
    updates, used = lr.apply(updates, count, state.learning_rate_scale)
    rates = wds = keys = None
    if decays:
      _checks.check_updates_match(_DECAY_FN, updates, params, "params")
      scale = state.learning_rate_scale if coupled else None
      wds, rates, index, keys = decay.rates(count, masks_paths(params), scale=scale)
      updates = decay_updates(
        _DECAY_FN, updates, params, rates, index, weight_decay_mask
      )
    return updates, AdamaxClippedState(
      count=a.count,
      mu=a.mu,
      nu=a.nu,
      learning_rate=used,
      learning_rate_scale=state.learning_rate_scale,
      weight_decay=decay.record_wd(wds) if wds is not None else None,
      decay_rate=(
        decay.record_rates(rates, keys) if rates is not None and keys else None
      ),
      clip_fraction=a.clip_fraction,
      bias_correction=a.bias_correction,
    )

  # optax.OptState (an ArrayTree) has no None, which JAX takes as an empty
  # subtree: the state's optional fields are None where they do not apply.
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
