"""AdamW as PyTorch and Optax compute it, with every hyperparameter by path."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import optax
from jax.typing import ArrayLike

from optaxtra._adam import ScaleByAdamState, scale_by_adam
from optaxtra._core import checks as _checks
from optaxtra._core.masking import resolve_mask
from optaxtra._core.paths import paths as _paths
from optaxtra._introspect.declare import inspectable
from optaxtra._learning_rate import (
  LearningRate,
  ScalarOrSchedule,
  effective_learning_rate,
)
from optaxtra._weight_decay import Decay, decay_updates

_FN = "adamw"


@inspectable(
  values=[
    "count",
    "learning_rate",
    "learning_rate_scale",
    "weight_decay",
    "decay_rate",
    "bias_correction",
  ],
  trees=["mu", "nu"],
  # A factor of None: b1 or b2 differ by group, so there is no one alpha_t.
  derive=functools.partial(effective_learning_rate, unknown_factor=True),
)
class AdamWState(NamedTuple):
  """State of :func:`optaxtra.adamw`.

  Every value is the one the most recent update used (before the first
  update, the one the first update will use). Where a hyperparameter is given
  by path (:func:`optaxtra.by_path`), its field is a dict keyed by rule
  (``"[<pattern>]"``, ``"[default]"``), which :func:`optaxtra.inspect` reports
  as ``learning_rate[<pattern>]`` and so on.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    mu: Adam's first moment.
    nu: Adam's second moment.
    learning_rate: the learning rate used, ``learning_rate_scale *
      learning_rate(t)``.
    learning_rate_scale: float32 multiplier of the learning rate and of the
      decay coupled to it, 1.0 at init; set it with
      :func:`optaxtra.set_learning_rate_scale` (no recompilation; by group
      where the learning rate is by path).
    weight_decay: the decay coefficient as given, ``weight_decay(t)``.
    decay_rate: the share of each decayed weight removed,
      ``weight_decay(t) * learning_rate_scale * learning_rate(t)``.
    bias_correction: Adam's factor ``sqrt(1 - b2**t) / (1 - b1**t)`` (so that
      ``inspect`` gives the effective learning rate); None where ``b1`` or
      ``b2`` differ by path.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  mu: optax.Updates
  nu: optax.Updates
  learning_rate: Any
  learning_rate_scale: Any
  weight_decay: Any
  decay_rate: Any
  bias_correction: jax.Array | None


def adamw(
  learning_rate: ScalarOrSchedule,
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  weight_decay: ScalarOrSchedule = 1e-2,
  *,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  mu_dtype: Any | None = None,
  nesterov: bool = False,
) -> optax.GradientTransformation:
  r"""AdamW: PyTorch's and Optax's numbers, every hyperparameter by path.

  Per parameter, at step ``t`` (1 for the first update)::

    m = b1 * m + (1 - b1) * g          v = b2 * v + (1 - b2) * g**2
    p <- p - lr * wd * p - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

  the update of PyTorch's ``torch.optim.AdamW`` and of :func:`optax.adamw` (decay
  on the params before the update, scaled by the learning rate). In float64
  it is that formula to rounding; in float32 it agrees with both to a few
  ulps (they order the same operations differently).

  ``weight_decay=1e-2`` is PyTorch's default; Optax's ``optax.adamw`` defaults
  to ``1e-4``: pass ``weight_decay=1e-4`` for its numbers.

  ``learning_rate``, ``b1``, ``b2``, ``eps`` and ``weight_decay`` each take a
  number, (``learning_rate`` and ``weight_decay``) a schedule, or values by
  parameter path, :func:`optaxtra.by_path`: PyTorch's param groups in one
  optimizer with one state. A group's decay follows its own learning rate,
  as in PyTorch. The learning-rate scale (:func:`optaxtra.set_learning_rate_scale`,
  by group with ``group=``) changes a group's learning rate mid-run without
  recompiling, as ``param_groups[i]["lr"] = x`` does in PyTorch.

  Args:
    learning_rate: a non-negative number, a schedule, or a ``by_path``.
    b1: decay rate of the first moment, in [0, 1) (number or ``by_path``).
    b2: decay rate of the second moment, in [0, 1) (number or ``by_path``).
    eps: non-negative term added to the denominator (number or ``by_path``).
    weight_decay: non-negative decay coefficient (number, schedule or
      ``by_path``); PyTorch's default 1e-2.
    weight_decay_mask: which parameters decay: a bool tree or a function of
      the params (e.g. ``optaxtra.masks.path_mask(exclude=["bias"])``); None
      decays every parameter. (A ``by_path`` weight decay of 0 does the same
      by group.)
    mu_dtype: dtype of the first moment (default: the params').
    nesterov: Optax's Nesterov look-ahead (``optax.adamw(nesterov=True)``).

  Returns:
    An :class:`optax.GradientTransformation` whose state is an
    :class:`optaxtra.AdamWState`, readable with :func:`optaxtra.inspect`
    (``learning_rate``, ``weight_decay``, ``decay_rate``,
    ``effective_learning_rate``, each by group where given by path). Its
    ``update`` needs the params.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"head": jnp.ones(2), "body": jnp.ones(2)}
    >>> tx = optaxtra.adamw(
    ...     optaxtra.by_path({"^head": 1e-2}, default=1e-3),
    ...     weight_decay=optaxtra.by_path({"^head": 0.0}, default=0.1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"head": jnp.ones(2), "body": jnp.ones(2)},
    ...                            state, params)
    >>> updates["head"], updates["body"]  # -lr * (1 + wd)
    (Array([-0.01, -0.01], dtype=float32), Array([-0.0011, -0.0011], dtype=float32))
    >>> info = optaxtra.inspect(state)
    >>> float(info["learning_rate[^head]"]), float(info["decay_rate[default]"])
    (0.01, 0.0001)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.

    PyTorch, ``torch.optim.AdamW``; Optax, :func:`optax.adamw`.
  """
  adam = scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nesterov=nesterov)
  # The building blocks' kernels: the same checks and arithmetic as the chain
  # scale_by_adam -> scale_by_learning_rate -> add_decayed_weights_decoupled
  # (schedule=learning_rate).
  lr = LearningRate(_FN, learning_rate)
  decay = Decay(_FN, weight_decay, learning_rate)

  def init_fn(params):
    # The mask is checked here, as the decay stage does, not at the first
    # update (inside jit): a pattern naming no parameter is an error now.
    if weight_decay_mask is not None and jax.tree.leaves(params):
      resolve_mask(_FN, weight_decay_mask, params)
    a = cast(ScaleByAdamState, adam.init(params))
    learning = lr.init_value(params)
    wds, rates, _, keys = decay.rates(a.count, _paths(params))
    return AdamWState(
      count=a.count,
      mu=a.mu,
      nu=a.nu,
      learning_rate=learning,
      learning_rate_scale=lr.init_scale(),
      weight_decay=decay.record_wd(wds),
      decay_rate=decay.record_rates(rates, keys),
      bias_correction=a.bias_correction,
    )

  def update_fn(updates, state, params=None):
    _checks.check_state(_FN, state, AdamWState)
    if params is None:
      raise ValueError(
        f"{_FN} needs the params to decay them: call tx.update(grads, state, "
        "params), or optimizer.update(grads, state, params)."
      )
    a = ScaleByAdamState(state.count, state.mu, state.nu, state.bias_correction)
    updates, new = adam.update(updates, cast(Any, a))
    a = cast(ScaleByAdamState, new)
    count = state.count
    scale = state.learning_rate_scale
    updates, used = lr.apply(updates, count, scale)
    _checks.check_updates_match(_FN, updates, params, "params")
    wds, rates, index, keys = decay.rates(count, _paths(params), scale=scale)
    if not decay.zero:
      updates = decay_updates(_FN, updates, params, rates, index, weight_decay_mask)
    return updates, AdamWState(
      count=a.count,
      mu=a.mu,
      nu=a.nu,
      learning_rate=used,
      learning_rate_scale=scale,
      weight_decay=decay.record_wd(wds),
      decay_rate=decay.record_rates(rates, keys),
      bias_correction=a.bias_correction,
    )

  # optax.OptState (an ArrayTree) has no None, which JAX takes as an empty
  # subtree: bias_correction is None where b1 or b2 differ by path.
  return optax.GradientTransformation(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
