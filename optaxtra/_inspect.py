"""Reading the values an update used from an Optax state."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra import _checks
from optaxtra._adam import ScaleByAdamState as _OptaxtraAdamState
from optaxtra._adamax_clipped import ScaleByAdamaxClippedState

# Fields read from any NamedTuple (or pytree dataclass) in the state, by name.
_FIELDS = (
  "count",
  "learning_rate",
  "step_size",
  "weight_decay",
  "clip_fraction",
  "bias_correction",
)
# The counters of Optax's wrappers, reported under their own names.
_WRAPPER_FIELDS = {
  optax.MultiStepsState: ("mini_step", "gradient_step"),
  optax.ApplyIfFiniteState: ("notfinite_count", "last_finite", "total_notfinite"),
}
# Fields holding trees shaped like the params: never walked into, so that
# params that happen to be NamedTuples with a field called `count` are not read.
_PARAM_TREES = {
  optax.ScaleByAdamState: ("mu", "nu"),
  _OptaxtraAdamState: ("mu", "nu"),
  ScaleByAdamaxClippedState: ("mu", "nu"),
  optax.MultiStepsState: ("acc_grads",),
  optax.TraceState: ("trace",),
  optax.EmaState: ("ema",),
}
_INJECT = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


@dataclasses.dataclass
class _Record:
  path: tuple[str, ...]  # where the value lives in the state, its name last
  value: Any
  role: str | None = None  # "lr", "bc" or "adam" (an Adam count awaiting b1, b2)
  used: bool = False  # an "lr"/"bc" paired, or an "adam" count resolved

  @property
  def name(self) -> str:
    return self.path[-1]


def _is_number(x: Any) -> bool:
  if isinstance(x, bool | int | float | np.generic):
    return True
  if isinstance(x, jax.Array | np.ndarray):
    return jnp.issubdtype(x.dtype, jnp.number) or x.dtype == bool
  return False


def _number(x: Any) -> Any | None:
  """``x`` if it is a number, the single leaf of a wrapper around one, or None.

  Flax's ``nnx.Optimizer`` keeps each state leaf inside a Variable, a pytree
  with one leaf; it is read through.
  """
  if _is_number(x):
    return x
  leaves = jax.tree.leaves(x)
  if len(leaves) == 1 and _is_number(leaves[0]):
    return leaves[0]
  return None


def _children(node: Any) -> list[tuple[str, bool, Any]]:
  """``(key, is_attribute, child)`` one level down, in the tree's own order."""
  if _is_number(node) or node is None:
    return []
  flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
  out = []
  for path, child in flat:
    if not path:  # node is itself a leaf
      return []
    (key,) = path
    out.append(
      (_checks.path_str((key,)), isinstance(key, jax.tree_util.GetAttrKey), child)
    )
  return out


def _adam_factor(count: Any, b1: Any, b2: Any) -> jax.Array:
  """Adam's ``sqrt(1 - b2**t) / (1 - b1**t)``; 1 before the first update."""
  b1, b2 = jnp.asarray(b1), jnp.asarray(b2)
  dt = jnp.result_type(b1, b2, jnp.float32)
  count = jnp.asarray(count)
  t = jnp.maximum(count, 1).astype(dt)
  factor = jnp.sqrt(1 - b2.astype(dt) ** t) / (1 - b1.astype(dt) ** t)
  return jnp.where(count == 0, jnp.ones_like(factor), factor)


def _pair(records: list[_Record], path: tuple[str, ...]) -> None:
  """Forms ``effective_learning_rate`` where exactly one lr meets one factor."""
  lrs = [r for r in records if r.role == "lr" and not r.used]
  bcs = [r for r in records if r.role == "bc" and not r.used]
  if len(lrs) == 1 and len(bcs) == 1:
    lr, bc = lrs[0], bcs[0]
    lr.used = bc.used = True
    value = jnp.asarray(lr.value) * jnp.asarray(bc.value)
    records.append(_Record((*path, "effective_learning_rate"), value))


def _walk(node: Any, path: tuple[str, ...]) -> list[_Record]:
  records: list[_Record] = []
  if isinstance(node, _INJECT):
    count = _number(node.count)
    if count is not None:
      records.append(_Record((*path, "count"), count))
    hyper = {}
    for key in sorted(node.hyperparams, key=str):
      value = _number(node.hyperparams[key])
      if value is None:
        continue
      hyper[key] = value
      role = "lr" if key == "learning_rate" else None
      records.append(_Record((*path, "hyperparams", str(key)), value, role))
    records += _walk(node.inner_state, (*path, "inner_state"))
    adams = [r for r in records if r.role == "adam" and not r.used]
    if len(adams) == 1 and "b1" in hyper and "b2" in hyper:
      adams[0].used = True
      factor = _adam_factor(adams[0].value, hyper["b1"], hyper["b2"])
      records.append(_Record((*adams[0].path[:-1], "bias_correction"), factor, "bc"))
  elif isinstance(node, optax.ScaleByAdamState):
    count = _number(node.count)
    if count is not None:
      records.append(_Record((*path, "count"), count))
      records.append(_Record((*path, "count"), count, "adam"))
  else:
    skip = _PARAM_TREES.get(type(node), ())
    wrapper = _WRAPPER_FIELDS.get(type(node), ())
    for key, is_attr, child in _children(node):
      if key in skip:
        continue
      if is_attr and (key in _FIELDS or key in wrapper):
        value = _number(child)
        if value is not None:
          role = {"learning_rate": "lr", "bias_correction": "bc"}.get(key)
          records.append(_Record((*path, key), value, role))
          continue
      records += _walk(child, (*path, key))
  _pair(records, path)
  return records


def inspect(state: optax.OptState) -> dict[str, jax.Array]:
  r"""The values that an Optax state says its most recent update used.

  Walks any Optax state (chains, :func:`optax.masked`, :func:`optax.partition`
  / ``multi_transform``, :func:`optax.inject_hyperparams`,
  :class:`optax.MultiSteps`, :func:`optax.apply_if_finite`, NamedTuple states
  in general, and the state of Flax's ``nnx.Optimizer``) and returns the scalars
  it records. It works inside :func:`jax.jit` (the values are then traced
  arrays; return them from the jitted step to log them) and outside.

  What is reported, each as the value the most recent update used:

  ``learning_rate``
    The learning rate: the field of :class:`optaxtra.ScaleByLearningRateState`
    (and of any state with a field so named, e.g. Optax's line searches), or
    the ``learning_rate`` hyperparameter of ``inject_hyperparams``.
  ``step_size``
    :class:`optaxtra.ScaleByScheduleState`'s signed multiplier.
  ``weight_decay``
    :class:`optaxtra.AddDecayedWeightsDecoupledState`: the per-step decay rate
    applied, ``weight_decay(t) * schedule(t)``. (A ``weight_decay``
    hyperparameter of ``inject_hyperparams`` is the factory's argument: for
    ``optax.adamw`` the coefficient that the learning rate multiplies.)
  ``clip_fraction``
    :class:`optaxtra.ScaleByAdamaxClippedState`: the share of gradient entries
    clipped.
  ``bias_correction``
    The factor by which the adaptive stage's bias correction multiplied the
    step: optaxtra's Adam (``sqrt(1 - b2**t) / (1 - b1**t)``) and clipped
    Adamax (``1 / (1 - b1**t)``) record it; for an
    :class:`optax.ScaleByAdamState` inside ``inject_hyperparams`` with ``b1``
    and ``b2`` it is computed as Adam's from the hyperparameters and the
    state's count.
  ``effective_learning_rate``
    ``learning_rate * bias_correction``, formed where one learning rate and one
    factor meet (see Names). For ``inject_hyperparams(optax.adam)`` this is
    Adam's ``alpha_t = lr * sqrt(1 - b2**t) / (1 - b1**t)`` (Kingma & Ba,
    Section 2), in the hyperparameters' precision.
  ``count``
    The number of updates done, from the outermost state that keeps a count
    (see Names).
  the other hyperparameters
    Every numeric hyperparameter of ``inject_hyperparams``, under its own name
    (``b1``, ``b2``, ``eps``, ...), with the meaning the wrapped factory gives it.
  ``mini_step``, ``gradient_step``
    :class:`optax.MultiStepsState`'s counters.
  ``notfinite_count``, ``last_finite``, ``total_notfinite``
    :func:`optax.apply_if_finite`'s counters, and whether the last update was
    applied.

  Timing: the ``k``-th update (``k = 1, 2, ...``) uses the schedules' values at
  step ``k - 1`` and the bias correction of ``t = k``; after it, ``inspect``
  returns exactly those. Before the first update, ``learning_rate``,
  ``step_size``, ``weight_decay`` and the hyperparameters hold the values the
  first update will use, ``clip_fraction`` is 0, and ``bias_correction`` is 1
  (so ``effective_learning_rate`` equals the learning rate). Inside
  :class:`optax.MultiSteps` the values are those of the last *inner* update.

  Names: a name found once in the state is the key. A name found more than
  once (two learning rates in a partition, a hyperparameter and a stage both
  called ``learning_rate``) is reported under each value's path in the state
  instead, its keys joined with ``/`` (``inner_states/adam/1/learning_rate``
  for ``state.inner_states["adam"][1].learning_rate``,
  ``hyperparams/learning_rate`` for ``state.hyperparams["learning_rate"]``);
  nothing is dropped and no occurrence is picked over another. The one
  exception is ``count``, which every stage keeps: the outermost (shortest
  path; the first in the tree's order among equals, e.g. a chain's first
  stage) is reported as ``count``, every other one under its path
  (``1/count``, ``inner_state/0/count``, ...). A derived value is keyed by the
  path of the state it was derived at: ``bias_correction`` at the Adam state,
  ``effective_learning_rate`` at the innermost state (a chain, a partition's
  group, an ``inject_hyperparams`` state) holding exactly one unpaired
  learning rate and one unpaired bias correction. Where that state holds
  several of either, no product is formed: it would be a guess.

  Limits: only what the state stores can be read. Optax's own learning-rate
  stage keeps no learning rate (``optax.adam(1e-3)``'s state is a count and
  the moments), so use :func:`optax.inject_hyperparams` or optaxtra's stages
  to see it. :class:`optax.ScaleByAdamState` is shared by Optax's ``adam``,
  ``adamw``, ``nadam``, ``adamax``, ``radam``, ``lamb`` and others and does not
  say which built it; its ``bias_correction`` is always Adam's, the step-size
  factor of ``adam`` and ``adamw`` only. A state with nothing to report (e.g.
  ``optax.sgd(0.1)``'s) gives ``{}``. Fields of other states are read only
  when named as above.

  Args:
    state: an Optax optimizer state, as returned by ``tx.init`` or
      ``tx.update`` (or ``nnx.Optimizer.opt_state``); concrete or traced.

  Returns:
    A dict from the names above to JAX arrays (scalars for an ordinary state),
    in the order the state's tree holds them (a dict returned by a jitted
    function comes back with its keys sorted).

  Raises:
    TypeError: when given a transformation instead of its state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optax.inject_hyperparams(optax.adam)(
    ...     learning_rate=optax.linear_schedule(1e-3, 0.0, 100))
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> step = jax.jit(lambda g, s: tx.update(g, s)[1])
    >>> for _ in range(2):
    ...   state = step({"w": jnp.ones(3)}, state)
    >>> info = optaxtra.inspect(state)
    >>> info["learning_rate"]  # the 2nd update used the schedule at step 1
    Array(0.00099..., dtype=float32)
    >>> info["effective_learning_rate"]  # lr * sqrt(1 - b2**2) / (1 - b1**2)
    Array(0.000232..., dtype=float32)
    >>> sorted(info)
    ['b1', 'b2', 'bias_correction', 'count', 'effective_learning_rate',
     'eps', 'eps_root', 'inner_state/0/count', 'learning_rate']

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015 (alpha_t, Section 2).
  """
  if isinstance(state, optax.GradientTransformation):
    raise TypeError(
      "inspect takes an optimizer state, got a GradientTransformation. Pass "
      "tx.init(params) or the state returned by tx.update(...)."
    )
  records = [r for r in _walk(state, ()) if r.role != "adam"]
  by_name: dict[str, list[_Record]] = {}
  for r in records:
    by_name.setdefault(r.name, []).append(r)
  outermost = None
  if "count" in by_name:
    outermost = min(by_name["count"], key=lambda r: len(r.path))
  out: dict[str, jax.Array] = {}
  for r in records:
    key = r.name if (len(by_name[r.name]) == 1 or r is outermost) else "/".join(r.path)
    if key in out:  # only if a dict key itself contains "/"
      raise ValueError(
        f"inspect: two values in the state are both named {key!r}; rename the "
        "dict keys of the state (e.g. a partition's labels) so they hold no '/'."
      )
    out[key] = jnp.asarray(r.value)
  return out
