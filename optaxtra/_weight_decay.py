"""Decoupled weight decay with an explicit coupling to the learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core.dtypes import compute_dtype
from optaxtra._core.masking import resolve_mask
from optaxtra._core.numerics import safe_increment
from optaxtra._introspect.declare import inspectable
from optaxtra._learning_rate import ScalarOrSchedule

_FN = "add_decayed_weights_decoupled"


@inspectable(values=["count", "decay_rate"])
class AddDecayedWeightsDecoupledState(NamedTuple):
  """State of :func:`optaxtra.add_decayed_weights_decoupled`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    decay_rate: the per-step decay rate the most recent update applied,
      ``weight_decay(t) * schedule(t)``, the share of each weight it removed;
      before the first update, the rate the first update will apply.
      (Called ``weight_decay`` in optaxtra 0.1.)
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  decay_rate: jax.Array


def _value(v: ScalarOrSchedule | None, count: jax.Array) -> Any:
  if v is None:
    return 1.0
  return v(count) if callable(v) else v


def decay_rate_fn(
  fn: str, weight_decay: ScalarOrSchedule, schedule: ScalarOrSchedule | None
) -> Callable[[jax.Array], jax.Array]:
  """``count -> weight_decay(count) * schedule(count)``, a floating scalar."""
  fdt = _checks.default_float()

  def rate(count):
    wd = _checks.schedule_output(fn, "weight_decay", _value(weight_decay, count))
    sc = _checks.schedule_output(fn, "schedule", _value(schedule, count))
    r = wd * sc
    if not jnp.issubdtype(r.dtype, jnp.floating):
      r = r.astype(fdt)
    return r

  return rate


def check_rate(fn: str, r: jax.Array, count: jax.Array) -> None:
  """Raises for a concrete per-step rate outside [0, 1)."""
  if _checks.is_traced(r) or 0 <= float(r) < 1:
    return
  at = "" if _checks.is_traced(count) else f" at step {int(count)}"
  raise ValueError(
    f"{fn}: weight_decay * schedule is {float(r)!r}{at}; it must be in [0, 1) "
    "(1 zeroes the weights, more flips their sign). Check the schedules' "
    "values at that step."
  )


def decay_updates(fn: str, updates: Any, params: Any, r: jax.Array, mask: Any) -> Any:
  """``updates - r * params`` on the leaves ``mask`` selects (all for None)."""
  flags = (
    resolve_mask(fn, mask, params)
    if mask is not None
    else [True] * len(jax.tree.leaves(params))
  )

  def leaf(u, p):
    dt = compute_dtype(u, p, r)
    return (u.astype(dt) - r.astype(dt) * p.astype(dt)).astype(u.dtype)

  treedef = jax.tree.structure(params)
  out = [
    leaf(u, p) if f else u
    for u, p, f in zip(
      jax.tree.leaves(updates), jax.tree.leaves(params), flags, strict=True
    )
  ]
  return treedef.unflatten(out)


def add_decayed_weights_decoupled(
  weight_decay: ScalarOrSchedule,
  *,
  schedule: ScalarOrSchedule | None = None,
  mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""Adds decoupled weight decay, ``-weight_decay(t) * schedule(t) * params``.

  Place it *after* the learning-rate stage: it adds the decay directly to the
  parameter change, so the decay never passes through the adaptive moments
  (Loshchilov & Hutter's "decoupled" weight decay, unlike
  :func:`optax.add_decayed_weights` placed before the learning rate, which is
  L2 regularisation for SGD and something else for Adam).

  ``schedule`` is the :math:`\eta_t` of Loshchilov & Hutter and sets how the
  decay is coupled to the learning rate:

  .. list-table::
    :header-rows: 1

    * - behaviour of
      - pass
    * - PyTorch ``AdamW``, Keras ``AdamW``, ``optax.adamw``, BERT's
        ``AdamWeightDecayOptimizer`` (decay scaled by the full learning rate)
      - ``schedule=lr``
    * - the paper, Composer ``DecoupledAdamW``, big_vision (decay follows the
        schedule's shape, not the base lr)
      - ``schedule=lambda t: lr(t) / peak_lr``
    * - TF-Addons ``AdamW`` (decay independent of the lr)
      - ``schedule=None``

  With the PyTorch coupling and ``lr = 1e-3``, ``weight_decay = 1e-2`` decays
  the weights by ``1e-5`` of themselves per step, exactly as
  ``torch.optim.AdamW(lr=1e-3, weight_decay=1e-2)`` does.

  Args:
    weight_decay: the non-negative decay coefficient, a float or a schedule
      (int32 step -> value).
    schedule: the multiplier ``eta_t``, a float or a schedule; None means 1.
      The product ``weight_decay(t) * schedule(t)`` is the share of each
      weight removed per step and must lie in [0, 1): 1 zeroes the weights,
      more flips their sign. It is checked at init (step 0) and at every step
      whose value is concrete; a traced value is used as it is and recorded
      in the state's ``decay_rate``, where :func:`optaxtra.inspect` shows it.
      Schedules must return real scalars (``TypeError`` for None, strings,
      bools and complex numbers, even under ``jax.jit``).
    mask: which parameters to decay: a tree of bools with the params'
      structure (or a prefix of it), or a function params -> such a tree, as
      :func:`optaxtra.masks.path_mask` returns. None decays every parameter.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.AddDecayedWeightsDecoupledState`. Its ``update`` needs the
    params and raises ``ValueError`` without them.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> lr = optax.linear_schedule(1e-2, 0.0, 100)
    >>> tx = optax.chain(
    ...     optaxtra.scale_by_adam(),
    ...     optaxtra.scale_by_learning_rate(lr),
    ...     optaxtra.add_decayed_weights_decoupled(0.1, schedule=lr,
    ...                                            mask={"w": True, "b": False}),
    ... )
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["w"], updates["b"]  # only w decays, by 0.1 * lr(0) of itself
    (Array([-0.001, -0.001], dtype=float32), Array([0., 0.], dtype=float32))
    >>> state[2].decay_rate
    Array(0.001, dtype=float32)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  _checks.check_scalar(_FN, "weight_decay", weight_decay, low=0.0, high=None)
  if schedule is not None:
    _checks.check_scalar(_FN, "schedule", schedule, low=0.0, high=None)
  fdt = _checks.default_float()
  zero = (
    not callable(weight_decay)
    and not _checks.is_traced(weight_decay)
    and _checks.concrete_scalar(weight_decay) == 0.0
  )

  rate = decay_rate_fn(_FN, weight_decay, schedule)

  def init_fn(params):
    # optax.tree_map_params calls init with a leafless placeholder: no mask
    # can (or need) be resolved on it.
    if mask is not None and jax.tree.leaves(params):
      resolve_mask(_FN, mask, params)
    r = rate(jnp.zeros([], jnp.int32))
    if not _checks.is_traced(r) and not 0 <= float(r) < 1:
      raise ValueError(
        f"{_FN}: weight_decay * schedule is {float(r)!r} at step 0; it must be "
        "in [0, 1): it is the share of each weight removed per step, so 1 "
        "zeroes the weights and more flips their sign. With "
        "schedule=learning_rate, weight_decay is a coefficient such as 1e-2 "
        "(PyTorch's AdamW default), not a rate per step."
      )
    return AddDecayedWeightsDecoupledState(jnp.zeros([], jnp.int32), r.astype(fdt))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        f"{_FN} needs the params to decay them: call "
        "tx.update(grads, state, params), or optimizer.update(grads, state, params)."
      )
    _checks.check_update_call(
      _FN,
      updates,
      state,
      AddDecayedWeightsDecoupledState,
      reference=params,
      what="params",
      complex_ok=True,
    )
    r = rate(state.count)
    check_rate(_FN, r, state.count)
    new_state = AddDecayedWeightsDecoupledState(
      safe_increment(state.count), r.astype(fdt)
    )
    if zero:
      return updates, new_state
    return decay_updates(_FN, updates, params, r, mask), new_state

  return optax.GradientTransformation(init_fn, update_fn)
