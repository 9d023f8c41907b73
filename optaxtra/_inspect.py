"""Reading the values an update used from an Optax state."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra import _checks
from optaxtra._adam import ScaleByAdamState as _OptaxtraAdamState
from optaxtra._adamax_clipped import ScaleByAdamaxClippedState
from optaxtra.masks import _box_types, _show

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
_PARAM_TREES: dict[type, tuple[str, ...]] = {
  optax.ScaleByAdamState: ("mu", "nu"),
  _OptaxtraAdamState: ("mu", "nu"),
  ScaleByAdamaxClippedState: ("mu", "nu"),
  optax.MultiStepsState: ("acc_grads",),
  optax.TraceState: ("trace",),
  optax.EmaState: ("ema",),
}
# The same for more of Optax's states, where this Optax version has them.
for _name, _fields in {
  "ApplyEvery": ("grad_acc",),
  "FactoredState": ("v_row", "v_col", "v"),
  "ScaleByAdaDeltaState": ("e_g", "e_x"),
  "ScaleByAdanState": ("m", "v", "n", "g"),
  "ScaleByAmsgradState": ("mu", "nu", "nu_max"),
  "ScaleByBeliefState": ("mu", "nu"),
  "ScaleByLBFGSState": (
    "params",
    "updates",
    "diff_params_memory",
    "diff_updates_memory",
  ),
  "ScaleByLionState": ("mu",),
  "ScaleByNovogradState": ("mu", "nu"),
  "ScaleByRStdDevState": ("mu", "nu"),
  "ScaleByRmsState": ("nu",),
  "ScaleByRpropState": ("step_sizes", "prev_updates"),
  "ScaleByRssState": ("sum_of_squares",),
  "ScaleBySM3State": ("mu", "nu"),
}.items():
  _cls = getattr(optax, _name, None)
  if isinstance(_cls, type):
    _PARAM_TREES.setdefault(_cls, _fields)
_INJECT = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)
# Packages whose state classes' named fields are known to be the counters and
# values they are named after, whatever their shape (a state stacked by
# jax.vmap(tx.init) holds them with a leading axis).
_OWN_PACKAGES = ("optax", "optaxtra")


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


def _own(node: Any) -> bool:
  """Whether ``node`` is a state class of Optax's or optaxtra's own."""
  return type(node).__module__.partition(".")[0] in _OWN_PACKAGES


def _number(x: Any, boxes: tuple[type, ...], *, any_shape: bool) -> Any | None:
  """``x`` if it is a value to report, else None.

  A value is a number: a Python or NumPy scalar, or a numeric array of shape
  ``()`` (concrete or traced), or a Flax box (the ``Variable`` in which
  ``nnx.Optimizer`` keeps each state leaf) around one. ``any_shape`` also takes
  numeric arrays with dimensions (a field of Optax's or optaxtra's own states
  in a stacked state). A tree is never a value, nor any other array: a field
  of a user's state that is named ``count`` but holds a params-shaped array is
  not a counter.
  """
  if boxes and isinstance(x, boxes):
    leaves = jax.tree.leaves(x)
    if len(leaves) != 1:
      return None
    x = leaves[0]
  if not _is_number(x):
    return None
  if not any_shape and jnp.ndim(x) != 0:
    return None
  return x


def _one_level(node: Any) -> list[tuple[str, bool, Any]] | None:
  """``(key, is_attribute, child)`` one level down, or None for a leaf."""
  flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
  if len(flat) == 1 and not flat[0][0]:
    return None
  out = []
  for path, child in flat:
    (key,) = path
    out.append(
      (_checks.path_str((key,)), isinstance(key, jax.tree_util.GetAttrKey), child)
    )
  return out


def _children(node: Any) -> list[tuple[str, bool, Any]]:
  """``(key, is_attribute, child)`` one level down, in the tree's own order."""
  if _is_number(node) or node is None:
    return []
  return _one_level(node) or []


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


def _walk(node: Any, path: tuple[str, ...], boxes: tuple[type, ...]) -> list[_Record]:
  records: list[_Record] = []
  if isinstance(node, _INJECT):
    count = _number(node.count, boxes, any_shape=True)
    if count is not None:
      records.append(_Record((*path, "count"), count))
    hyper = {}
    for key in sorted(node.hyperparams, key=str):
      value = _number(node.hyperparams[key], boxes, any_shape=True)
      if value is None:
        continue
      hyper[key] = value
      role = "lr" if key == "learning_rate" else None
      records.append(_Record((*path, "hyperparams", str(key)), value, role))
    records += _walk(node.inner_state, (*path, "inner_state"), boxes)
    adams = [r for r in records if r.role == "adam" and not r.used]
    if len(adams) == 1 and "b1" in hyper and "b2" in hyper:
      adams[0].used = True
      factor = _adam_factor(adams[0].value, hyper["b1"], hyper["b2"])
      records.append(_Record((*adams[0].path[:-1], "bias_correction"), factor, "bc"))
  elif isinstance(node, optax.ScaleByAdamState):
    count = _number(node.count, boxes, any_shape=True)
    if count is not None:
      records.append(_Record((*path, "count"), count))
      records.append(_Record((*path, "count"), count, "adam"))
  else:
    skip = _PARAM_TREES.get(type(node), ())
    wrapper = _WRAPPER_FIELDS.get(type(node), ())
    own = _own(node)
    for key, is_attr, child in _children(node):
      if key in skip:
        continue
      if is_attr and (key in _FIELDS or key in wrapper):
        # A field so named is that value or nothing: never walked into, since
        # what it holds, if not a number, is shaped like the params.
        value = _number(child, boxes, any_shape=own)
        if value is not None:
          role = {"learning_rate": "lr", "bias_correction": "bc"}.get(key)
          records.append(_Record((*path, key), value, role))
        continue
      records += _walk(child, (*path, key), boxes)
  _pair(records, path)
  return records


@functools.cache
def _state_fields() -> tuple[tuple[str, frozenset[str]], ...]:
  """``(name, fields)`` of the NamedTuple states of Optax and optaxtra."""
  modules = [
    optax,
    getattr(optax, "transforms", None),
    getattr(optax, "schedules", None),
    sys.modules.get("optax.contrib"),
    sys.modules.get("optaxtra"),
  ]
  names: dict[type, str] = {}
  for module in modules:
    for name, cls in vars(module or object).items():
      if (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and name.endswith("State")
        and getattr(cls, "_fields", ())
      ):
        names.setdefault(cls, f"{module.__name__}.{name}")
  return tuple((name, frozenset(cls._fields)) for cls, name in names.items())


def _scan(state: Any, boxes: tuple[type, ...]) -> tuple[bool, list, list[str]]:
  """Whether ``state`` holds a state object (a NamedTuple, a dataclass, any
  pytree node other than a dict, list, tuple or Flax box); if not, also the
  ``(path, keys)`` of its mappings and the paths of its leaves."""
  mappings: list[tuple[str, frozenset[str]]] = []
  leaves: list[str] = []
  stack: list[tuple[str, Any]] = [("", state)]
  while stack:
    path, node = stack.pop()
    if node is None or isinstance(node, optax.MaskedNode):
      continue
    kids = _one_level(node)
    if kids is None:
      leaves.append(path)
      continue
    plain = isinstance(node, Mapping) or type(node) in (list, tuple)
    if not plain and not (boxes and isinstance(node, boxes)):
      return True, [], []
    if isinstance(node, Mapping):
      mappings.append((path, frozenset(str(k) for k in node)))
    box = not plain  # a box is looked through: its path names the parameter
    for key, _, child in reversed(kids):
      stack.append((path if box else f"{path}/{key}" if path else key, child))
  return False, mappings, leaves


_RESTORE = (
  "restore with a target, e.g. ckptr.restore(path, jax.eval_shape(lambda: "
  "tx.init(params))) (for a saved {'params': ..., 'opt_state': ...} dict, a "
  "target of that dict)"
)


def _check_is_a_state(state: Any, boxes: tuple[type, ...]) -> None:
  """Raises for what cannot be an optimizer state: a function, a lone array,
  or a tree of dicts and lists only (params, or an Orbax restore without a
  target), from which inspect could only return ``{}``."""
  if isinstance(state, optax.GradientTransformation):
    raise TypeError(
      "inspect takes an optimizer state, got a GradientTransformation. Pass "
      "tx.init(params) or the state returned by tx.update(...)."
    )
  if state is None:
    return
  if _one_level(state) is None:
    if callable(state):
      what = f"the callable {getattr(state, '__qualname__', state)!r}"
    elif hasattr(state, "shape") and hasattr(state, "dtype"):
      what = f"a single array (shape {tuple(state.shape)}, dtype {state.dtype})"
    else:
      what = f"a single {type(state).__name__} ({state!r:.60})"
    raise TypeError(
      f"inspect takes an optimizer state, got {what}, which holds no named "
      "value. Pass the whole state: tx.init(params) or the state returned by "
      "tx.update(...), not a transformation, a function or one of its leaves."
    )
  found, mappings, leaves = _scan(state, boxes)
  if found or not leaves:
    return
  known = _state_fields()
  for path, keys in mappings:
    # The same fields (Orbax keeps None fields), else two or more of them.
    names = [n for n, fields in known if keys == fields] or [
      n for n, fields in known if len(keys) >= 2 and keys < fields
    ]
    if names:
      where = f"the entry at {path!r}" if path else "the state itself"
      raise ValueError(
        "inspect: the state is made of dicts and lists only, with no Optax "
        f"state (NamedTuple) in it, yet {where} has the fields of a state such "
        f"as {names[0]} "
        f"({', '.join(sorted(keys))}). That is what Orbax returns for a state "
        "restored without a target (NamedTuples come back as dicts keyed by "
        "field name, tuples as lists), which tx.update refuses too: "
        f"{_RESTORE}, and inspect what it returns."
      )
  raise TypeError(
    f"inspect: got a tree of dicts and lists with no optimizer state in it (its "
    f"leaves: {_show(leaves)}), e.g. the params or the gradients. inspect reads "
    "the NamedTuple (or dataclass) states that tx.init builds: pass "
    "tx.init(params) or the state returned by tx.update(...). A checkpoint "
    f"restored without a target also looks like this: {_RESTORE}."
  )


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
  ``optax.sgd(0.1)``'s) gives ``{}``.

  What counts as a value: fields of other states are read only when named as
  above, and only when they hold a number (a Python or NumPy scalar, an array
  of shape ``()``, or a Flax ``Variable`` around one). A field so named that
  holds an array with dimensions or a tree (the ``count`` field of params that
  are NamedTuples, kept in a user's state; a per-parameter ``learning_rate``
  tree) is neither reported nor looked into, and the params-shaped fields of
  Optax's and optaxtra's states (``mu``, ``nu``, ``trace``, ...) are never
  looked into. What cannot be told from a counter is still reported: a
  *scalar* field named ``count`` in such params, kept in a user's state. The
  fields of Optax's and optaxtra's own state classes are read whatever their
  shape, so a state stacked by ``jax.vmap(tx.init)`` reports them with the
  stacking axis; to read every stage, a user's too, map the stack:
  ``jax.vmap(optaxtra.inspect)(state)``.

  Args:
    state: an Optax optimizer state, as returned by ``tx.init`` or
      ``tx.update`` (or ``nnx.Optimizer.opt_state``); concrete or traced.

  Returns:
    A dict from the names above to JAX arrays (scalars for an ordinary state),
    in the order the state's tree holds them (a dict returned by a jitted
    function comes back with its keys sorted).

  Raises:
    TypeError: when given something that is not a state, from which nothing
      could be read: a transformation (``optax.adam(1e-3)``, or the factory
      ``optax.adam``), a function (``tx.init``), a single array, or a tree of
      dicts and lists holding no state object (the params, the gradients).
    ValueError: when given a tree of dicts and lists only, holding no state
      object but dicts keyed by the fields of an Optax or optaxtra state: what
      Orbax returns for a state restored without a target. Restore with one:
      ``ckptr.restore(path, jax.eval_shape(lambda: tx.init(params)))``.

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
  boxes = _box_types()
  _check_is_a_state(state, boxes)
  records = [r for r in _walk(state, (), boxes) if r.role != "adam"]
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
