"""Decoupled weight decay with an explicit coupling to the learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core import paths as _paths
from optaxtra._core.dtypes import compute_dtype
from optaxtra._core.masking import resolve_mask
from optaxtra._core.numerics import safe_increment
from optaxtra._introspect.declare import inspectable
from optaxtra._learning_rate import ScalarOrSchedule

_FN = "add_decayed_weights_decoupled"


@inspectable(values=["count", "weight_decay", "decay_rate"])
class AddDecayedWeightsDecoupledState(NamedTuple):
  """State of :func:`optaxtra.add_decayed_weights_decoupled`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    decay_rate: the per-step decay rate the most recent update applied,
      ``weight_decay(t) * schedule(t)``, the share of each weight it removed;
      before the first update, the rate the first update will apply.
      (Called ``weight_decay`` in optaxtra 0.1.)
    weight_decay: the coefficient as given, ``weight_decay(t)``, at the same
      step (new in 0.3: ``optaxtra.migrate_state`` carries a 0.2 state over).

  With ``weight_decay`` given by path (:func:`optaxtra.by_path`),
  ``weight_decay`` and ``decay_rate`` are dicts keyed by rule
  (``"[<pattern>]"``, ``"[default]"``).
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  decay_rate: Any
  weight_decay: Any


_RATE = _hyper.Range(
  0.0,
  1.0,
  fix="It is the share of each weight removed per step, so 1 zeroes the "
  "weights and more flips their sign. With schedule=learning_rate, "
  "weight_decay is a coefficient such as 1e-2 (PyTorch's AdamW default), not "
  "a rate per step.",
)
_REQUIRED: Any = object()  # schedule has no default: the coupling is written out
_COUPLINGS_TEXT = (
  "schedule=learning_rate for PyTorch's and Keras' AdamW and optax.adamw "
  "(decay scaled by the learning rate), schedule=lambda t: "
  "learning_rate(t) / peak_learning_rate for Loshchilov & Hutter's, or "
  "schedule=None for TF-Addons' (decay independent of the learning rate)"
)


class Decay:
  """The decoupled decay's numbers: coefficients and rates, by rule.

  ``weight_decay`` and ``schedule`` may each be given by path (the schedule
  is the learning rate for PyTorch's coupling, so a learning rate by path
  gives each group its own decay, as ``param_groups`` do). A parameter's
  *group* is the pair of rules it takes; :meth:`rates` gives per group the
  rate ``weight_decay(t) * schedule(t)`` (times the learning-rate scale of
  the schedule's rule, where the decay follows it), checked to lie in
  [0, 1). Without ``by_path`` there is one group and every number is the
  plain scalar, computed as before.
  """

  def __init__(self, fn: str, weight_decay: Any, schedule: Any):
    self.fn = fn
    # Rounded in bfloat16, a decay coefficient or eta_t stays what it was
    # meant to be (unlike b2 = 0.999, which becomes 1): narrow values allowed.
    self.wd = _hyper.resolve_by_path(
      fn, "weight_decay", weight_decay, low=0.0, min_float32=False
    )
    self.schedule = (
      None
      if schedule is None
      else _hyper.resolve_by_path(
        fn,
        "schedule",
        schedule,
        low=0.0,
        fix="It is the eta_t that couples the decay to the learning rate.",
        min_float32=False,
      )
    )
    self.rate = _hyper.Hyper(fn, "weight_decay * schedule", 0.0, _RATE)
    self.wd_keys = [label[len("weight_decay") :] for label in self.wd.labels]
    self.sc_keys = (
      [""]
      if self.schedule is None
      else [label[len("schedule") :] for label in self.schedule.labels]
    )
    self.by_path = self.wd.by_path or (
      self.schedule is not None and self.schedule.by_path
    )
    self.zero = all(c == 0.0 for c in self.wd.constants)

  def groups(self, paths: list[str]) -> tuple[list[tuple[int, int]], list[int]]:
    """The groups (pairs of rule indices) and each path's group index."""
    iw = self.wd.assign(paths)
    isc = [0] * len(paths) if self.schedule is None else self.schedule.assign(paths)
    sc_by_path = self.schedule is not None and self.schedule.by_path
    if self.wd.by_path and sc_by_path:
      pairs = sorted(set(zip(iw, isc, strict=True)))
    elif sc_by_path:
      pairs = [(0, j) for j in range(len(self.sc_keys))]
    else:
      pairs = [(i, 0) for i in range(len(self.wd_keys))]
    where = {pair: k for k, pair in enumerate(pairs)}
    return pairs, [where[pair] for pair in zip(iw, isc, strict=True)]

  def keys(self, pairs: list[tuple[int, int]]) -> list[str]:
    """A group's key in the state: its rules' labels, ``"[^head/]"`` (two
    labels, ``"[^head/][default]"``, where the weight decay and the schedule
    are given by path with different rules)."""
    wd = self.wd.by_path
    sc = self.schedule is not None and self.schedule.by_path
    out = []
    for i, j in pairs:
      a, b = self.wd_keys[i] if wd else "", self.sc_keys[j] if sc else ""
      # Rules shared by both (PyTorch's groups) give one label, not two.
      out.append(a if a == b else a + b)
    return out

  def rates(
    self, count: Any, paths: list[str], *, scale: Any = None
  ) -> tuple[list[jax.Array], list[jax.Array], list[int], list[str]]:
    """At ``count``: the coefficients (by ``weight_decay`` rule), the checked
    rates by group, each path's group and the groups' keys. ``scale`` (the
    learning-rate scale the decay is coupled to: a scalar, or a dict by the
    schedule's rule) multiplies the rates."""
    pairs, index = self.groups(paths)
    wds = self.wd.values(count)
    scs = None if self.schedule is None else self.schedule.values(count)
    scales = None
    if scale is not None:
      # By key, never by position: JAX sorts a dict's keys.
      scales = [scale[k] for k in self.sc_keys] if isinstance(scale, dict) else [scale]
    fdt = _checks.default_float()
    rates = []
    for i, j in pairs:
      # In the default float (float64 under x64): a float32 schedule's value
      # times a coefficient is not rounded to float32 on the way, so AdamW
      # is Optax's and PyTorch's formula in float64.
      r = wds[i] if scs is None else wds[i].astype(fdt) * scs[j].astype(fdt)
      if not jnp.issubdtype(r.dtype, jnp.floating):
        r = r.astype(fdt)
      if scales is not None:
        r = r * scales[j].astype(r.dtype)  # 1.0 * r is r to the bit
      rates.append(self.rate.check(r, count))
    return wds, rates, index, self.keys(pairs)

  def record_wd(self, values: list[jax.Array]) -> Any:
    """The coefficients as the state holds them: a scalar, or a dict by rule."""
    out = _copies(values)
    return dict(zip(self.wd_keys, out, strict=True)) if self.wd.by_path else out[0]

  def record_rates(self, values: list[jax.Array], keys: list[str]) -> Any:
    """The rates as the state holds them: a scalar, or a dict by group."""
    out = _copies(values)
    return dict(zip(keys, out, strict=True)) if self.by_path else out[0]


def _copies(values: list[jax.Array]) -> list[jax.Array]:
  fdt = _checks.default_float()
  # A copy: optax.inject_hyperparams hands over its own arrays, and a state
  # sharing them could not be donated.
  return [jnp.array(v, fdt, copy=True) for v in values]


def decay_updates(
  fn: str,
  updates: Any,
  params: Any,
  rates: list[jax.Array],
  index: list[int],
  mask: Any,
) -> Any:
  """``updates - rate * params`` on the leaves ``mask`` selects (all for None);
  ``index`` gives each parameter's rule in ``rates``."""
  pairs = _paths.match(fn, params, updates, a_is="the params", b_is="the updates")
  live = [(p, u) for p, u in pairs if not (p.masked or u.masked)]
  # One flag per parameter the stage sees (optax.masked and partition hide
  # the others as MaskedNode).
  flags = resolve_mask(fn, mask, params) if mask is not None else [True] * len(live)
  u_entries, treedef = _paths.walk(updates)

  def leaf(u, p, r):
    dt = compute_dtype(u, p, r)
    return (u.astype(dt) - r.astype(dt) * p.astype(dt)).astype(u.dtype)

  out = [
    leaf(u.value, p.value, rates[i]) if f else u.value
    for (p, u), f, i in zip(live, flags, index, strict=True)
  ]
  it = iter(out)
  return _paths.rebuild(
    u_entries, treedef, [None if e.masked else next(it) for e in u_entries]
  )


def coupling_argument(fn: str, schedule: Any) -> Any:
  """``schedule``, or ``TypeError`` when it was left out (no default)."""
  if schedule is _REQUIRED:
    raise TypeError(
      f"{fn}: pass schedule= to say how the decay is coupled to the learning "
      f"rate: {_COUPLINGS_TEXT}. It has no default, since each framework "
      "means something else by weight_decay (the same 0.1 removes 10% of "
      "every weight per step with schedule=None, 0.01% with a learning rate "
      "of 1e-3)."
    )
  return schedule


def add_decayed_weights_decoupled(
  weight_decay: ScalarOrSchedule,
  *,
  schedule: ScalarOrSchedule | None = _REQUIRED,
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

  ``schedule`` has no default: a port of ``optax.adamw(weight_decay=0.1)``
  that left it out would remove 10% of every weight per step instead of
  ``0.1 * lr``. Leaving it out raises ``TypeError`` with the table above.

  Args:
    weight_decay: the non-negative decay coefficient, a float, a schedule
      (int32 step -> value), or values by parameter path
      (:func:`optaxtra.by_path`, e.g. no decay on one group).
    schedule: the multiplier ``eta_t``, a float or a schedule; None means 1
      (TF-Addons' coupling), written out.
      The product ``weight_decay(t) * schedule(t)`` is the share of each
      weight removed per step and must lie in [0, 1): 1 zeroes the weights,
      more flips their sign. It is checked at init (step 0) and at every step
      whose value is concrete; a traced value outside [0, 1) (under
      ``jax.jit``) becomes NaN, so the decayed weights turn NaN where you see
      them, and is recorded in the state's ``decay_rate``.
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
  schedule = coupling_argument(_FN, schedule)
  decay = Decay(_FN, weight_decay, schedule)

  def init_fn(params):
    # optax.tree_map_params calls init with a leafless placeholder: no mask
    # can (or need) be resolved on it.
    if mask is not None and jax.tree.leaves(params):
      resolve_mask(_FN, mask, params)
    count = jnp.zeros([], jnp.int32)
    # A by_path's rules are checked here, against the params' paths.
    wds, rates, _, keys = decay.rates(count, _paths.paths(params))
    return AddDecayedWeightsDecoupledState(
      count, decay.record_rates(rates, keys), decay.record_wd(wds)
    )

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
    wds, rates, index, keys = decay.rates(state.count, _paths.paths(params))
    new_state = AddDecayedWeightsDecoupledState(
      safe_increment(state.count),
      decay.record_rates(rates, keys),
      decay.record_wd(wds),
    )
    if decay.zero:
      return updates, new_state
    return decay_updates(_FN, updates, params, rates, index, mask), new_state

  return optax.GradientTransformation(init_fn, update_fn)
