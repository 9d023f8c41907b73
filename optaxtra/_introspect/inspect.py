"""Reading the values an update used from an Optax state."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra._core import checks as _checks
from optaxtra._core.numerics import bias_correction_factor
from optaxtra._core.paths import box_types
from optaxtra._core.paths import children as one_level
from optaxtra._introspect import optax_states as _optax_states
from optaxtra._introspect.declare import declaration
from optaxtra._introspect.states import check_is_a_state

_ROLES = {"learning_rate": "lr", "bias_correction": "bc"}
_EFFECTIVE = "effective_learning_rate"
_COUNT = "count"
# The merged count of a clock whose counts disagree under jax.jit (never a count).
DISAGREE = -1


@dataclasses.dataclass
class _Record:
  """A value found in the state.

  ``path`` is where it lives, its reported name last (``learning_rate[^head/]``
  for one rule of a value by path); ``source`` the field's path and name,
  shared by the entries of one dict; ``value`` None only for a hidden factor
  (a ``bias_correction`` that is off). ``clock`` is where the counts that
  advance together with this one are rooted (``()`` for the optimizer's own).
  """

  path: tuple[str, ...]
  value: Any
  role: str | None = None  # "lr", "bc" or "adam" (an Adam count awaiting b1, b2)
  used: bool = False  # an "lr"/"bc" paired, or an "adam" count resolved
  source: tuple[str, ...] = ()
  label: str = ""  # "[<pattern>]" for one rule of a value by path
  clock: tuple[str, ...] = ()
  apart: bool = False  # a count field declared in counts_apart itself
  field: tuple[str, ...] = ()  # the path of the field holding it

  @property
  def name(self) -> str:
    return self.path[-1]


def _is_number(x: Any) -> bool:
  if isinstance(x, bool | int | float | np.generic):
    return True
  if isinstance(x, jax.Array | np.ndarray):
    return jnp.issubdtype(x.dtype, jnp.number) or x.dtype == bool
  return False


def _number(x: Any, boxes: tuple[type, ...], *, any_shape: bool) -> Any | None:
  """``x`` if it is a value to report, else None.

  A value is a number: a Python or NumPy scalar, or a numeric array of shape
  ``()`` (concrete or traced), or a Flax box (the ``Variable`` in which
  ``nnx.Optimizer`` keeps each state leaf) around one. ``any_shape`` also takes
  numeric arrays with dimensions (a declared field, in a stacked state). A
  tree is never a value, nor any other array: a field of an undeclared state
  that is named ``count`` but holds a params-shaped array is not a counter.
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


def _label(key: Any) -> str | None:
  """The label of one entry of a value by path: ``[<pattern>]``."""
  if not isinstance(key, str):
    return None
  return key if key.startswith("[") and key.endswith("]") else f"[{key}]"


def _values(
  child: Any,
  path: tuple[str, ...],
  key: str,
  name: str,
  boxes: tuple[type, ...],
  *,
  declared: bool,
  clock: tuple[str, ...],
  role: str | None,
  apart: bool = False,
) -> list[_Record]:
  """The records of one value field: a number, a dict of numbers (a value by
  path: one record per rule), or, for a declared ``bias_correction`` that is
  None, a hidden factor of 1."""
  src, field = (*path, name), (*path, key)
  if child is None:
    if declared and role == "bc":
      return [_Record(src, None, role, source=src, clock=clock, field=field)]
    return []
  if declared and isinstance(child, Mapping):
    out = []
    for k, v in child.items():
      label, value = _label(k), _number(v, boxes, any_shape=True)
      if label is None or value is None:
        return []  # not a value by path (optaxtra.testing says so)
      where = (*path, name + label)
      out.append(_Record(where, value, role, source=src, label=label, field=field))
    return out
  value = _number(child, boxes, any_shape=declared)
  if value is None:
    return []
  return [_Record(src, value, role, source=src, clock=clock, apart=apart, field=field)]


def _children(node: Any) -> list[tuple[str, bool, Any]]:
  """``(key, is_attribute, child)`` one level down, in the tree's own order."""
  if _is_number(node) or node is None:
    return []
  return one_level(node) or []


def _adam_factor(count: Any, b1: Any, b2: Any) -> jax.Array:
  """Adam's ``sqrt(1 - b2**t) / (1 - b1**t)``; 1 before the first update."""
  b1, b2 = jnp.asarray(b1), jnp.asarray(b2)
  dt = jnp.result_type(b1, b2, jnp.float32)
  count = jnp.asarray(count)
  factor = bias_correction_factor(b1, b2, jnp.maximum(count, 1), dt)
  return jnp.where(count == 0, jnp.ones_like(factor), factor)


def _pair(records: list[_Record], path: tuple[str, ...]) -> None:
  """Forms ``effective_learning_rate`` where exactly one learning rate meets
  one bias correction (each a value, or a value by path: one per rule)."""
  lrs = [r for r in records if r.role == "lr" and not r.used]
  bcs = [r for r in records if r.role == "bc" and not r.used]
  if len({r.source for r in lrs}) != 1 or len({r.source for r in bcs}) != 1:
    return
  lr_by, bc_by = {r.label: r for r in lrs}, {r.label: r for r in bcs}
  if set(bc_by) == {""}:
    pairs = [(lr, bc_by[""], label) for label, lr in lr_by.items()]
  elif set(lr_by) == {""}:
    pairs = [(lr_by[""], bc, label) for label, bc in bc_by.items()]
  elif set(lr_by) == set(bc_by):
    pairs = [(lr, bc_by[label], label) for label, lr in lr_by.items()]
  else:
    return  # two values by path with other rules: no product is defined
  for r in lrs + bcs:
    r.used = True
  src = (*path, _EFFECTIVE)
  for lr, bc, label in pairs:
    value = lr.value if bc.value is None else jnp.asarray(lr.value) * bc.value
    records.append(_Record((*path, _EFFECTIVE + label), value, source=src, label=label))


def _walk_inject(
  node: Any, path: tuple[str, ...], boxes: tuple[type, ...], clock: tuple[str, ...]
) -> list:
  """``inject_hyperparams``: its count, every numeric hyperparameter, the inner
  state, and Adam's bias correction where the inner state is Optax's Adam."""
  records: list[_Record] = []
  count = _number(node.count, boxes, any_shape=True)
  if count is not None:
    where = (*path, _COUNT)
    records.append(_Record(where, count, clock=clock, field=where))
  hyper = {}
  for key in sorted(node.hyperparams, key=str):
    value = _number(node.hyperparams[key], boxes, any_shape=True)
    if value is None:
      continue
    hyper[key] = value
    where = (*path, "hyperparams", str(key))
    records.append(_Record(where, value, _ROLES.get(key), source=where, clock=clock))
  # The schedules' own states (optax >= 0.2.5): counts that advance with it.
  schedules = getattr(node, "hyperparams_states", None)
  if schedules is not None:
    records += _walk(schedules, (*path, "hyperparams_states"), boxes, clock)
  records += _walk(node.inner_state, (*path, "inner_state"), boxes, clock)
  adams = [r for r in records if r.role == "adam" and not r.used]
  if len(adams) == 1 and "b1" in hyper and "b2" in hyper:
    adams[0].used = True
    factor = _adam_factor(adams[0].value, hyper["b1"], hyper["b2"])
    where = (*adams[0].path[:-1], "bias_correction")
    records.append(_Record(where, factor, "bc", source=where))
  return records


def _derived(
  node: Any, derive: Any, path: tuple[str, ...], boxes: tuple[type, ...]
) -> list[_Record]:
  """The values a declared ``derive`` returns, checked."""
  cls = type(node).__qualname__
  name_of = getattr(derive, "__qualname__", repr(derive))
  derived = derive(node)
  if not isinstance(derived, Mapping):
    raise TypeError(
      f"inspect: the derive function {name_of} declared for {cls} (with "
      f"optaxtra.inspectable) returned a {type(derived).__name__}, not a "
      "mapping from names to values; return a dict, e.g. "
      "{'effective_learning_rate': state.learning_rate * state.bias_correction}."
    )
  out = []
  for n, v in derived.items():
    if v is None:
      continue
    found = _values(v, path, str(n), str(n), boxes, declared=True, clock=(), role=None)
    if not found:
      raise TypeError(
        f"inspect: the derive function {name_of} declared for {cls} (with "
        f"optaxtra.inspectable) returned {n!r}: {type(v).__name__}; each value "
        "must be a number (a scalar array), a dict of numbers (one per "
        "by_path rule), or None."
      )
    out += found
  return out


def _walk(
  node: Any, path: tuple[str, ...], boxes: tuple[type, ...], clock: tuple[str, ...]
) -> list[_Record]:
  if isinstance(node, _optax_states.INJECT):
    records = _walk_inject(node, path, boxes, clock)
    _pair(records, path)
    return records
  records = []
  decl = declaration(type(node))
  if decl is None:  # not declared: the conventional names, scalars only
    values = {k: k for k in _optax_states.CONVENTION}
    trees: tuple[str, ...] = ()
    apart: tuple[str, ...] = ()
  else:
    values, trees, apart = dict(decl.values), decl.trees, decl.counts_apart
  own: list[_Record] = []
  for key, is_attr, child in _children(node):
    if is_attr and key in trees:
      continue
    here = (*path, key) if is_attr and key in apart else clock
    if is_attr and key in values:
      # A field so named is that value or nothing: never walked into, since
      # what it holds, if not a number, is shaped like the params.
      name = values[key]
      found = _values(
        child,
        path,
        key,
        name,
        boxes,
        declared=decl is not None,
        clock=here,
        role=_ROLES.get(name),
        apart=here != clock,
      )
      own += found
      records += found
      continue
    records += _walk(child, (*path, key), boxes, here)
  if decl is not None and decl.derive is not None:
    derived = _derived(node, decl.derive, path, boxes)
    if any(r.source[-1] == _EFFECTIVE for r in derived):
      for r in own:  # the state formed its own product: nothing to pair
        r.used = r.used or r.role in ("lr", "bc")
    records += derived
  if isinstance(node, _optax_states.ADAM_COUNT):
    records += [
      _Record(r.path, r.value, "adam", clock=r.clock, field=r.field)
      for r in own
      if r.name == _COUNT
    ]
  _pair(records, path)
  return records


def _merge(counts: list[_Record]) -> Any | None:
  """The one value of counts that advance together, or None where they do not
  agree (or are not integer arrays of one shape, which no comparison makes
  one count). Traced counts cannot be compared when traced: they give their
  value where they agree and ``DISAGREE`` where not."""
  values = [jnp.asarray(r.value) for r in counts]
  first = values[0]
  if len(values) == 1:
    return first
  if any(
    not jnp.issubdtype(v.dtype, jnp.integer) or v.shape != first.shape for v in values
  ):
    return None
  if any(_checks.is_traced(v) for v in values):
    same = functools.reduce(jnp.logical_and, [v == first for v in values[1:]])
    return jnp.where(same, first, jnp.asarray(DISAGREE, first.dtype))
  if all(np.array_equal(np.asarray(v), np.asarray(first)) for v in values[1:]):
    return first
  return None


def _count_keys(records: list[_Record]) -> dict[int, tuple[str, Any] | None]:
  """For each count record (by ``id``): its key and value, or None where it is
  one of several reported once."""
  counts = [r for r in records if r.name == _COUNT]
  if not counts:
    return {}
  candidates = [r for r in counts if not r.apart] or counts
  outermost = min(candidates, key=lambda r: len(r.path))
  clocks: dict[tuple[str, ...], list[_Record]] = {}
  for r in counts:
    clocks.setdefault(r.clock, []).append(r)
  out: dict[int, tuple[str, Any] | None] = {}
  for clock, members in clocks.items():
    main = any(r is outermost for r in members)
    merged = _merge(members)
    if merged is not None:
      if main:
        key = _COUNT
      elif len(members) == 1:
        key = "/".join(members[0].path)
      else:
        key = "/".join((*clock, _COUNT))
      out[id(members[0])] = (key, merged)
      for r in members[1:]:
        out[id(r)] = None
      continue
    for r in members:
      key = _COUNT if r is outermost else "/".join(r.path)
      out[id(r)] = (key, jnp.asarray(r.value))
  return out


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
    The decay coefficient as given (:class:`optaxtra.AdamaxClippedState`;
    also the ``weight_decay`` hyperparameter of ``inject_hyperparams``, the
    factory's argument: for ``optax.adamw`` the coefficient that the learning
    rate multiplies).
  ``decay_rate``
    The share of each decayed weight the update removed,
    ``weight_decay(t) * schedule(t)``
    (:class:`optaxtra.AddDecayedWeightsDecoupledState`,
    :class:`optaxtra.AdamaxClippedState`).
  ``clip_fraction``
    :class:`optaxtra.ScaleByAdamaxClippedState` and
    :class:`optaxtra.AdamaxClippedState`, when tracked: the share of gradient
    entries clipped.
  ``bias_correction``
    The factor by which the adaptive stage's bias correction multiplied the
    step: optaxtra's Adam (``sqrt(1 - b2**t) / (1 - b1**t)``) and clipped
    Adamax (``1 / (1 - b1**t)``) record it (``adamax_clipped`` only with
    ``bias_correction=True``); for an
    :class:`optax.ScaleByAdamState` inside ``inject_hyperparams`` with ``b1``
    and ``b2`` it is computed as Adam's from the hyperparameters and the
    state's count.
  ``effective_learning_rate``
    ``learning_rate * bias_correction``, formed where one learning rate and one
    factor meet (see Names), or as the state computes it
    (:class:`optaxtra.AdamaxClippedState`: the learning rate times its bias
    correction, if any). For ``inject_hyperparams(optax.adam)`` this is
    Adam's ``alpha_t = lr * sqrt(1 - b2**t) / (1 - b1**t)`` (Kingma & Ba,
    Section 2), in the hyperparameters' precision.
  ``count``
    The number of updates done: the one count of the stages that advance
    together (see Counts).
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
  ``step_size``, ``weight_decay``, ``decay_rate`` and the hyperparameters hold
  the values the
  first update will use, ``clip_fraction`` is 0, and ``bias_correction`` is 1
  (so ``effective_learning_rate`` equals the learning rate). Inside
  :class:`optax.MultiSteps` the values are those of the last *inner* update.

  Names: a name found once in the state is the key. A name found more than
  once (two learning rates in a partition, a hyperparameter and a stage both
  called ``learning_rate``) is reported under each value's path in the state
  instead, its keys joined with ``/`` (``inner_states/adam/1/learning_rate``
  for ``state.inner_states["adam"][1].learning_rate``,
  ``hyperparams/learning_rate`` for ``state.hyperparams["learning_rate"]``);
  nothing is dropped and no occurrence is picked over another. A derived
  value is keyed by the path of the state it was derived at:
  ``bias_correction`` at the Adam state, ``effective_learning_rate`` at the
  innermost state (a chain, a partition's group, an ``inject_hyperparams``
  state) holding exactly one unpaired learning rate and one unpaired bias
  correction. Where that state holds several of either, no product is
  formed: it would be a guess. A stage whose bias correction is off (its
  ``bias_correction`` is None) reports none, and a learning rate it meets
  gives ``effective_learning_rate`` equal to the learning rate, as the ready-made
  optimizer of the same stages reports it.

  Counts: every stage keeps a count, and the stages of one optimizer advance
  together: each update increments every one of them (chains, ``masked``,
  ``partition`` groups, ``inject_hyperparams`` and the states they hold).
  Their counts are one number, reported once as ``count``. Which counts
  advance together is decided by the state's structure, never by comparing
  values (a traced value cannot be compared when ``inspect`` is traced, and a
  key that came and went with the values would break a log): a wrapper that
  skips or accumulates updates (:class:`optax.MultiSteps`,
  :func:`optax.apply_if_finite`, ``optax.transforms.conditionally_*``,
  :func:`optaxtra.skip_bad_steps`) keeps its inner stages' counts apart from
  the stages outside it, and a field named ``count`` that counts something
  else (``optax.apply_every``'s cycle, ``optax.contrib.reduce_on_plateau``'s
  values) is apart on its own (:func:`optaxtra.inspectable`'s
  ``counts_apart`` declares it). The counts apart from the outermost count's
  are reported once per wrapper, under the wrapper's field
  (``0/inner_state/count``), or under their own path when alone. Counts that
  should agree but do not (a state carried from another run with a stage
  added, whose count starts at 0) are never merged into one silently: outside
  ``jax.jit`` each is then reported under its path (the outermost as
  ``count``); under ``jax.jit``, where their values are not known when the
  keys are chosen, the one ``count`` is ``-1`` (``DISAGREE``, never a
  count): call ``inspect`` outside ``jit`` on that state to see each.

  Values by path: a hyperparameter given by :func:`optaxtra.by_path` is
  recorded by its stage as a dict by rule and reported as one value per
  rule, keyed ``<name>[<pattern>]`` and ``<name>[default]``, e.g.
  ``inspect(state)["learning_rate[^head/]"]``; ``effective_learning_rate``
  is formed rule by rule. The keys are fixed by the rules, so they work
  under ``jax.jit`` and as TensorBoard tags.

  Limits: only what the state stores can be read. Optax's own learning-rate
  stage keeps no learning rate (``optax.adam(1e-3)``'s state is a count and
  the moments), so use :func:`optax.inject_hyperparams` or optaxtra's stages
  to see it. :class:`optax.ScaleByAdamState` is shared by Optax's ``adam``,
  ``adamw``, ``nadam``, ``adamax``, ``radam``, ``lamb`` and others and does not
  say which built it; its ``bias_correction`` is always Adam's, the step-size
  factor of ``adam`` and ``adamw`` only. A state with nothing to report (e.g.
  ``optax.sgd(0.1)``'s) gives ``{}``.

  Which fields are read: each state class says so itself, with
  :func:`optaxtra.inspectable` (optaxtra's states do; Optax's are declared in
  one place inside optaxtra; a user's transformation declares its own state to
  have its values reported under names it chooses, without touching
  optaxtra). A declared field is read whatever its shape, so a state stacked
  by ``jax.vmap(tx.init)`` reports it with the stacking axis. Fields of
  undeclared states are read only when named as above, and only when they
  hold a number (a Python or NumPy scalar, an array
  of shape ``()``, or a Flax ``Variable`` around one). A field so named that
  holds an array with dimensions or a tree (the ``count`` field of params that
  are NamedTuples, kept in a user's state; a per-parameter ``learning_rate``
  tree) is neither reported nor looked into, and the params-shaped fields of
  Optax's and optaxtra's states (``mu``, ``nu``, ``trace``, ...) are never
  looked into. What cannot be told from a counter is still reported: a
  *scalar* field named ``count`` in such params, kept in an undeclared state
  (declare the state, listing that field in ``trees``, and it is not). To
  read every stage of a stacked state, undeclared ones too, map the stack:
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
     'eps', 'eps_root', 'learning_rate']

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015 (alpha_t, Section 2).
  """
  boxes = box_types()
  check_is_a_state(state, boxes)
  _optax_states.declare_optax_states()
  records = [
    r for r in _walk(state, (), boxes, ()) if r.role != "adam" and r.value is not None
  ]
  counts = _count_keys(records)
  by_name: dict[str, list[_Record]] = {}
  for r in records:
    by_name.setdefault(r.name, []).append(r)
  out: dict[str, jax.Array] = {}
  for r in records:
    if id(r) in counts:
      found = counts[id(r)]
      if found is None:
        continue
      key, value = found
    else:
      key = r.name if len(by_name[r.name]) == 1 else "/".join(r.path)
      value = jnp.asarray(r.value)
    if key in out:  # only if a dict key itself contains "/"
      raise ValueError(
        f"inspect: two values in the state are both named {key!r}; rename the "
        "dict keys of the state (e.g. a partition's labels) so they hold no '/'."
      )
    out[key] = value
  return out
