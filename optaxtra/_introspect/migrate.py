"""Changing the optimizer of a running training: :func:`migrate_state`.

A state is matched to another by *place*: the class of the state holding a
value, which state of that class it is (the first, the second, ... in the
order of the tree), the field, and, below the field, the keys down to the
value, which for a per-parameter field (moments, traces, averages) are the
parameter's path. Where a value sits in a chain, or inside which wrappers
(``optax.masked``, ``optax.partition``, :class:`optax.MultiSteps`, ...), is
not part of its place, so a chain that gains or loses a stage keeps the
values of the others. A state class may declare the classes it continues
(:func:`migrates_from`); the places of those then match its own.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra._adam import ScaleByAdamState
from optaxtra._adamax_clipped import ScaleByAdamaxClippedState
from optaxtra._adamw import AdamWState
from optaxtra._alias import AdamaxClippedState
from optaxtra._core import paths as _paths
from optaxtra._core.patterns import Patterns, _compile, _no_match
from optaxtra._introspect import optax_states as _optax_states
from optaxtra._introspect.declare import _fields, declaration
from optaxtra._introspect.states import _state_fields
from optaxtra._learning_rate import ScaleByLearningRateState
from optaxtra._weight_decay import AddDecayedWeightsDecoupledState

_FN = "migrate_state"
T = TypeVar("T", bound=type)

# Rows of one per-parameter field with one status shown as one row by str().
_GROUP = 6

# --- Declaring the states a state continues -----------------------------------

# new class -> [(old class, {new field: old field})], in the order declared.
_CONTINUES: dict[type, list[tuple[type, dict[str, str]]]] = {}


def migrates_from(
  *states: type | tuple[type, Mapping[str, str | None]],
) -> Callable[[T], T]:
  """Declares the state classes that a state class continues.

  A class decorator for the state of your own transformation (or, called as
  ``migrates_from(...)(cls)``, a declaration for a class you do not own).
  :func:`optaxtra.migrate_state` carries a value from an old state to the
  new one where both have it at the same place: the same state class, the
  same field and, for a per-parameter field, the same parameter path. When
  the new state's class has no counterpart of its own class in the old state,
  the classes it was declared to continue count as its own: the ``k``-th
  such state (in the order of the state tree) takes its values from the
  ``k``-th state of each class declared, field by field.

  Fields of the same name in the two classes continue each other; a mapping
  ``{old field: new field}`` adds a renamed field or, with ``None`` as the
  new name, leaves an old field out. Where several declared classes give the
  same field, the first one declared that holds a value wins.

  optaxtra declares its fused :func:`optaxtra.adamax_clipped` state to
  continue the chain it replaces (optaxtra 0.1's way to write it), and each
  stage of that chain to continue the fused state:

  .. code-block:: python

    migrates_from(
        ScaleByAdamaxClippedState,
        (ScaleByLearningRateState, {"scale": "learning_rate_scale", "count": None}),
        (AddDecayedWeightsDecoupledState, {"count": None}),
    )(AdamaxClippedState)

  Declare a state that renames a field the same way, continuing a copy of the
  old class kept under another name, so that checkpoints written before the
  rename restore into the old class and migrate into the new one.

  Args:
    *states: the classes continued, each a NamedTuple or dataclass class, or
      a pair ``(class, {old field: new field or None})``.

  Returns:
    A class decorator, which registers the class (replacing what was declared
    for it before) and returns it unchanged.

  Raises:
    TypeError: for a class that is not a NamedTuple or dataclass, or a
      mapping that is not from field names to field names.
    ValueError: for a field a class does not have.

  Examples:
    >>> import jax.numpy as jnp
    >>> from typing import NamedTuple
    >>> import optax, optaxtra
    >>> class OldState(NamedTuple):
    ...   count: jnp.ndarray
    ...   acc: optax.Updates
    >>> @optaxtra.migrates_from((OldState, {"acc": "trace"}))
    ... class NewState(NamedTuple):
    ...   count: jnp.ndarray
    ...   trace: optax.Updates
    >>> params = {"w": jnp.ones(2)}
    >>> new_tx = optax.GradientTransformation(
    ...     lambda p: NewState(jnp.int32(0), {"w": jnp.zeros(2)}), None)
    >>> old = OldState(jnp.int32(7), {"w": jnp.array([0.5, 0.5])})
    >>> state, report = optaxtra.migrate_state(new_tx, params, old)
    >>> state.trace["w"]
    Array([0.5, 0.5], dtype=float32)
    >>> report.sources
    {'NewState/count': 'OldState/count', 'NewState/trace/w': 'OldState/acc/w'}
  """
  resolved: list[tuple[type, Mapping[str, str | None]]] = []
  for item in states:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
      cls, renames = item
    else:
      cls, renames = item, {}
    if not isinstance(cls, type) or _fields(cls) is None:
      raise TypeError(
        f"migrates_from: {cls!r} is not a NamedTuple or dataclass class; pass "
        "the state classes continued, each alone or as (class, {old field: "
        "new field})."
      )
    for k, v in renames.items():
      if not isinstance(k, str) or not (v is None or isinstance(v, str)):
        raise TypeError(
          f"migrates_from: the mapping for {cls.__name__} maps an old field name "
          f"to a new field name or None, got {k!r}: {v!r}."
        )
    resolved.append((cls, renames))

  def register(new_cls: T) -> T:
    new_fields = _fields(new_cls)
    if new_fields is None:
      raise TypeError(
        f"migrates_from: {new_cls!r} is not a NamedTuple or dataclass class; "
        "declare the class of the state that your transformation's init returns."
      )
    table = []
    for cls, renames in resolved:
      old_fields = _fields(cls) or ()
      for k, v in renames.items():
        if k not in old_fields:
          raise ValueError(
            f"migrates_from: {cls.__name__} has no field {k!r}; its fields are "
            f"{list(old_fields)}."
          )
        if v is not None and v not in new_fields:
          raise ValueError(
            f"migrates_from: {new_cls.__name__} has no field {v!r}; its fields "
            f"are {list(new_fields)}."
          )
      # new field -> old field
      fields = {f: f for f in old_fields if f in new_fields and f not in renames}
      fields.update({v: k for k, v in renames.items() if v is not None})
      table.append((cls, fields))
    _CONTINUES[new_cls] = table
    return new_cls

  return register


# The fused alias continues 0.1's chain, and each stage of that chain the alias.
migrates_from(
  ScaleByAdamaxClippedState,
  (ScaleByLearningRateState, {"scale": "learning_rate_scale", "count": None}),
  (AddDecayedWeightsDecoupledState, {"count": None}),
)(AdamaxClippedState)
migrates_from(AdamaxClippedState)(ScaleByAdamaxClippedState)
migrates_from((AdamaxClippedState, {"learning_rate_scale": "scale"}))(
  ScaleByLearningRateState
)
migrates_from(AdamaxClippedState)(AddDecayedWeightsDecoupledState)
# optaxtra.adamw continues Adam written as a chain, optaxtra's or Optax's (whose
# moments are Adam's too: count, mu, nu).
migrates_from(
  ScaleByAdamState,
  optax.ScaleByAdamState,
  (ScaleByLearningRateState, {"scale": "learning_rate_scale", "count": None}),
  (AddDecayedWeightsDecoupledState, {"count": None}),
)(AdamWState)


# --- The layouts of earlier versions ------------------------------------------
#
# A state class whose fields changed since a release keeps that release's
# layout here: a NamedTuple of the old fields, and for each old field how to
# describe it from today's abstract state (for checkpoint_target). The old
# layout continues into today's class field by field (same names), so that
# migrate_state carries a restored old state over. When a class changes, add
# its previous layout under every earlier version whose layout differs.

Layout = tuple[type, dict[str, Callable[[Any], Any]]]
_LAYOUTS: dict[str, dict[type, Layout]] = {}
# today's class -> [(old layout class, {today's field: old field})]
_PREVIOUS: dict[type, list[tuple[type, dict[str, str]]]] = {}


def _layout(version: str, cls: type, name: str, build: dict[str, Any]) -> type:
  """Registers ``cls``'s layout of ``version``: fields ``build`` (old field ->
  today's field of the same value, or a function of today's abstract state)."""
  old = NamedTuple(name, [(f, Any) for f in build])  # pyright: ignore[reportArgumentType]
  old.__module__ = __name__
  makers = {
    f: (b if callable(b) else (lambda node, b=b: getattr(node, b)))
    for f, b in build.items()
  }
  _LAYOUTS.setdefault(version, {})[cls] = (old, makers)
  today = _fields(cls) or ()
  fields = {  # today's field -> old field: renamed ones, and those kept by name
    (b if isinstance(b, str) else f): f
    for f, b in build.items()
    if isinstance(b, str) or f in today
  }
  _PREVIOUS.setdefault(cls, []).append((old, fields))
  return old


def _float_scalar(value: Any) -> Any:
  """``value``, or where it is None (not kept today) a float scalar's shape."""
  if value is not None:
    return value
  return jax.ShapeDtypeStruct((), jnp.result_type(float))


# 0.2 kept a factor of 1.0 without bias correction (None since 0.3).
_layout(
  "0.2",
  ScaleByAdamaxClippedState,
  "ScaleByAdamaxClippedState_0_2",
  {
    "count": "count",
    "mu": "mu",
    "nu": "nu",
    "clip_fraction": "clip_fraction",
    "bias_correction": lambda s: _float_scalar(s.bias_correction),
  },
)
# 0.2 kept the rate applied; 0.3 also keeps the coefficient as given.
_layout(
  "0.2",
  AddDecayedWeightsDecoupledState,
  "AddDecayedWeightsDecoupledState_0_2",
  {"count": "count", "decay_rate": "decay_rate"},
)


def _continued(cls: Any) -> list[tuple[type, dict[str, str]]]:
  """The classes ``cls`` continues, ``(class, {field of cls: its field})``:
  its own earlier layouts, then each declared class and its earlier layouts."""
  out = list(_PREVIOUS.get(cls, ()))
  for old, fields in _CONTINUES.get(cls, ()):
    out.append((old, fields))
    for older, back in _PREVIOUS.get(old, ()):
      out.append((older, {f: back[o] for f, o in fields.items() if o in back}))
  return out


def checkpoint_target(
  tx: optax.GradientTransformation, params: optax.Params, *, version: str | None = None
) -> Any:
  """The restore target for a checkpoint of ``tx``'s state written by an
  earlier optaxtra.

  A checkpoint is restored against a target describing the state's tree,
  ``jax.eval_shape(tx.init, params)``, which is what this returns for
  ``version=None``. Where a state class of ``tx`` has changed its fields since
  ``version``, the target describes that version's layout instead: restore
  against it, and :func:`optaxtra.migrate_state` carries what was restored
  into today's state (the fields that are new start as ``tx.init`` makes
  them).

  Args:
    tx: the optimizer that wrote the checkpoint, built with today's optaxtra
      with the same arguments.
    params: the params (or their ``jax.ShapeDtypeStruct`` s).
    version: the optaxtra release that wrote the checkpoint (``"0.2"``), or
      None for this one.

  Returns:
    A tree of :class:`jax.ShapeDtypeStruct` in the state's structure, the
    classes of ``version``'s layout where they differ from today's.

  Raises:
    ValueError: for a version with no layout known here.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optaxtra
    >>> params = {"w": jnp.zeros(2)}
    >>> tx = optaxtra.add_decayed_weights_decoupled(1e-2, schedule=None)
    >>> target = optaxtra.checkpoint_target(tx, params, version="0.2")
    >>> type(target).__name__, target._fields  # 0.3 added weight_decay
    ('AddDecayedWeightsDecoupledState_0_2', ('count', 'decay_rate'))
  """
  target = jax.eval_shape(tx.init, params)
  if version is None:
    return target
  if version not in _LAYOUTS:
    raise ValueError(
      f"checkpoint_target: no layout is known for optaxtra {version!r}; the "
      f"versions whose checkpoints this one restores are {sorted(_LAYOUTS)} and "
      "its own (version=None)."
    )
  layouts = _LAYOUTS[version]

  def convert(node: Any) -> Any:
    layout = layouts.get(type(node))
    if layout is None:
      return node
    old, makers = layout
    return old(**{f: make(node) for f, make in makers.items()})

  return jax.tree.map(convert, target, is_leaf=lambda x: type(x) in layouts)


# Fields that hold what the transformation was built with, not what the run
# did: they are taken from new_tx, never carried.
_CONFIG: dict[type, tuple[str, ...]] = {
  optax.InjectHyperparamsState: ("hyperparams",),
  optax.InjectStatefulHyperparamsState: ("hyperparams",),
}


# --- Walking a state ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """One value of a state: where it is and what its place is."""

  where: str  # the state path, as the report spells it
  cls: type | None  # the innermost state class holding it
  occurrence: int  # which state of that class (0 for the first)
  field: str  # its field in that class
  sub: str  # the keys below the field, a parameter path for per-parameter ones
  param: bool  # whether it is a parameter's own value (sub is its path)
  config: bool  # a hyperparameter the transformation was built with
  value: Any

  @property
  def place(self) -> tuple[Any, ...]:
    return (self.cls, self.occurrence, self.field, self.sub)


def _join(*parts: str) -> str:
  return "/".join(p for p in parts if p)


def _is_container(node: Any) -> bool:
  return isinstance(node, Mapping) or type(node) in (list, tuple)


def _one_level(node: Any) -> Any:
  """The treedef one level down ``node`` (the one :func:`paths.children` uses)."""
  return jax.tree_util.tree_structure(node, is_leaf=lambda x: x is not node)


class _Walk:
  """Walks a state, recording its values and putting ``put(leaf)`` in place."""

  def __init__(
    self,
    param_paths: list[str],
    param_shape: Any,
    put: Callable[[_Leaf], Any] | None = None,
  ):
    self.param_paths = param_paths
    self.param_shape = param_shape  # the params' shape if they are one array
    self.put = put
    self.leaves: list[_Leaf] = []
    self.counts: dict[type, int] = {}
    self.boxes = _paths.box_types()
    self.known = {fields: name for name, fields in _state_fields()}

  def run(self, state: Any) -> Any:
    return self._node(state, (), None)

  def _leaf(self, where: tuple[str, ...], ctx: Any, sub: str, param: bool, x: Any):
    cls, occurrence, field, config = ctx or (None, 0, "", False)
    leaf = _Leaf(_join(*where), cls, occurrence, field, sub, param, config, x)
    self.leaves.append(leaf)
    return x if self.put is None else self.put(leaf)

  def _per_parameter(self, cls: type, field: str, child: Any) -> bool:
    """Whether ``child``, the field of a ``cls``, holds a value per parameter:
    a tree naming the params' paths, or a field declared to hold a tree (e.g.
    a moment of a model that has since changed) that is not a single array."""
    if child is None or isinstance(child, optax.MaskedNode):
      return False
    entries, _ = _paths.walk(child)
    names = [e.path for e in entries]
    if names == [""]:  # a single array: per parameter only for params of one
      return self.param_paths == [""] and np.shape(child) == self.param_shape
    if names == self.param_paths:
      return True
    decl = declaration(cls)
    return decl is not None and field in decl.trees

  def _node(self, node: Any, where: tuple[str, ...], ctx: Any, sub: str = "") -> Any:
    if node is None or isinstance(node, optax.MaskedNode):
      return node
    kids = _paths.children(node)
    if kids is None:
      return self._leaf(where, ctx, sub, False, node)
    if self.boxes and isinstance(node, self.boxes):  # looked through, unnamed
      new = [self._node(child, where, ctx, sub) for _, _, child in kids]
      return _one_level(node).unflatten(new)
    if _is_container(node):
      if isinstance(node, Mapping):
        self._refuse_restored_dict(node, where)
      new = [
        self._node(child, (*where, key), ctx, _join(sub, key)) for key, _, child in kids
      ]
      return _one_level(node).unflatten(new)
    cls = type(node)
    occurrence = self.counts.get(cls, 0)
    self.counts[cls] = occurrence + 1
    config = _CONFIG.get(cls, ())
    new = []
    for key, _, child in kids:
      here = (*where, cls.__name__, key)
      field_ctx = (cls, occurrence, key, key in config)
      if self._per_parameter(cls, key, child):
        entries, treedef = _paths.walk(child)
        values = [
          e.value
          if e.masked
          else self._leaf((*here, e.path), field_ctx, e.path, True, e.value)
          for e in entries
        ]
        new.append(_paths.rebuild(entries, treedef, values))
      else:
        new.append(self._node(child, here, field_ctx))
    return _one_level(node).unflatten(new)

  def _refuse_restored_dict(self, node: Mapping, where: tuple[str, ...]) -> None:
    keys = frozenset(str(k) for k in node)
    name = self.known.get(keys)
    if name is not None and len(keys) >= 2:
      at = f"at {_join(*where)!r}" if where else "at its root"
      raise TypeError(
        f"{_FN}: old_state holds a dict {at} with the fields of {name} "
        f"({', '.join(sorted(keys))}): a checkpoint restored without a target. "
        "Orbax then gives NamedTuple states back as dicts and tuples as lists, "
        "and which value belongs to which field is lost. Restore against the "
        "old optimizer's state: ckptr.restore(path, jax.eval_shape(old_tx.init, "
        "params)) (for a checkpoint written by an earlier optaxtra, "
        "optaxtra.checkpoint_target(old_tx, params, version=...)), then migrate "
        "what it returns."
      )


def _walk(state: Any, params: Any, put: Callable[[_Leaf], Any] | None = None):
  entries, _ = _paths.walk(params)
  shape = np.shape(entries[0].value) if len(entries) == 1 else None
  w = _Walk([e.path for e in entries], shape, put)
  return w.run(state), w


# --- The report ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Row:
  status: str  # "carried", "initialised" or "dropped"
  new: str  # the new state's path ("" for a dropped value)
  old: str  # the old state's path ("" for an initialised value)
  why: str  # for an initialised or dropped value
  group: tuple[str, str] | None  # (new, old) field paths of a per-parameter value


@dataclasses.dataclass(frozen=True)
class MigrationReport:
  """What :func:`optaxtra.migrate_state` did with each value of the states.

  A state path names a value as ``<where>/<StateClass>/<field>/<below>``:
  the keys down to the state holding it (a chain's position, a wrapper's
  fields and groups), the class of that state, its field, and the keys below
  the field, which for a per-parameter field are the parameter's path (as
  :func:`optaxtra.masks.paths` spells it), e.g.
  ``"0/ScaleByAdamState/mu/dense/kernel"`` for the first moment of
  ``dense/kernel`` in the first stage of a chain.

  Attributes:
    carried: the paths in the new state given the old state's value.
    initialised: the paths in the new state left as ``new_tx.init(params)``
      made them.
    dropped: the paths in the old state whose value went nowhere.
    sources: for each carried path, the old state's path it came from.
    reasons: for each initialised path, why it was not carried: ``"not in
      the old state"``, ``"reset"``, or ``"a hyperparameter: new_tx's own"``.
    rows: the table's rows in order (new state first, then what was dropped),
      each with ``status`` (``"carried"``, ``"initialised"``, ``"dropped"``),
      ``new`` and ``old`` (the paths, ``""`` where there is none) and ``why``.

  ``str(report)`` is that table, with the rows of a per-parameter field that
  share a status shown as one row (``.../mu/* (120 parameters)``) when there
  are more than six of them.
  """

  carried: list[str]
  initialised: list[str]
  dropped: list[str]
  sources: dict[str, str]
  reasons: dict[str, str]
  # Any: the row class is private (its fields are documented above).
  rows: tuple[Any, ...] = dataclasses.field(repr=False)

  def __str__(self) -> str:
    head = (
      f"{_FN}: {len(self.carried)} carried, {len(self.initialised)} initialised, "
      f"{len(self.dropped)} dropped"
    )
    cells = [["new state", "old state", "what"]]
    for row in _grouped(self.rows):
      cells.append(row)
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = [head]
    for n, row in enumerate(cells):
      lines.append(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
      )
      if n == 0:
        lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

  def __repr__(self) -> str:
    return f"MigrationReport({len(self.rows)} values)\n{self}"


def _grouped(rows: tuple[_Row, ...]) -> list[list[str]]:
  """The table's cells: runs of more than ``_GROUP`` rows of one per-parameter
  field with one status shown as one row."""
  out: list[list[str]] = []
  i = 0
  while i < len(rows):
    r = rows[i]
    j = i + 1
    if r.group is not None:
      while j < len(rows) and (rows[j].group, rows[j].status, rows[j].why) == (
        r.group,
        r.status,
        r.why,
      ):
        j += 1
    if j - i > _GROUP and r.group is not None:
      n = j - i
      new, old = (f"{g}/* ({n} parameters)" if g else "-" for g in r.group)
      out.append([new, old, _what(r)])
    else:
      j = i + 1
      out.append([r.new or "-", r.old or "-", _what(r)])
    i = j
  return out


def _what(r: _Row) -> str:
  return r.status + (f" ({r.why})" if r.why else "")


# --- migrate_state --------------------------------------------------------------


def _check_arguments(new_tx: Any, old_state: Any) -> None:
  if isinstance(old_state, optax.GradientTransformation):
    raise TypeError(
      f"{_FN}: old_state is a GradientTransformation; pass the state it made "
      "(restored from the checkpoint), e.g. migrate_state(new_tx, params, "
      "old_state)."
    )
  init = getattr(new_tx, "init", None)
  if not callable(init):
    raise TypeError(
      f"{_FN}: new_tx must be an optax.GradientTransformation (the optimizer to "
      f"continue with), got {type(new_tx).__name__}."
    )


def _has_state_object(tree: Any, boxes: tuple[type, ...]) -> bool:
  stack = [tree]
  while stack:
    node = stack.pop()
    if node is None or isinstance(node, optax.MaskedNode):
      continue
    kids = _paths.children(node)
    if kids is None:
      continue
    if not _is_container(node) and not (boxes and isinstance(node, boxes)):
      return True
    stack.extend(child for _, _, child in kids)
  return False


def _compile_reset(reset: Patterns | None, params: Any) -> tuple[re.Pattern, ...]:
  patterns = _compile(_FN, "reset", reset)
  if not patterns:
    return ()
  all_paths = _paths.paths(params)
  for rx in patterns:
    if not any(rx.search(p) for p in all_paths):
      raise _no_match(_FN, f"reset pattern {rx.pattern!r}", rx, all_paths, params)
  return patterns


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    dtype = np.asarray(x).dtype
  return tuple(np.shape(x)), np.dtype(dtype)


def _describe(x: Any) -> str:
  shape, dtype = _shape_dtype(x)
  return f"shape {shape}, dtype {dtype}"


def _check_carry(new: _Leaf, old: _Leaf) -> None:
  if _shape_dtype(new.value) == _shape_dtype(old.value):
    return
  msg = (
    f"{_FN}: cannot carry {old.where!r} ({_describe(old.value)}) into "
    f"{new.where!r}, which new_tx.init makes with {_describe(new.value)}; a "
    "value is carried only into its own shape and dtype."
  )
  if new.param:
    msg += (
      f" If the parameter {new.sub!r} changed shape, start its state afresh "
      f"with reset=[{'^' + re.escape(new.sub) + '$'!r}]; if the optimizer now "
      "keeps this state in another dtype (e.g. mu_dtype), build new_tx with "
      "the old dtype, or reset the parameters concerned."
    )
  else:
    msg += (
      " The value belongs to the whole stage, not to one parameter, so reset= "
      "does not apply: build that stage of new_tx with the configuration the "
      "old state was made with (e.g. the same number of parameters, the same "
      "dtype options)."
    )
  raise ValueError(msg)


def _check_params_match(old: list[_Leaf], params: Any) -> None:
  """Refuses params that name none of the parameters the old state keeps
  per-parameter values for (params of another model, or spelt differently)."""
  old_params = sorted({leaf.sub for leaf in old if leaf.param})
  names = set(_paths.paths(params))
  if old_params and names and not names.intersection(old_params):
    raise ValueError(
      f"{_FN}: the old state keeps per-parameter values for "
      f"{_paths.show(old_params)}, none of which is a path of params "
      f"({_paths.show(sorted(names))}), so nothing per parameter could be "
      "carried. Pass the params the run trains, in the structure the old "
      "optimizer was initialised on (optaxtra.masks.paths lists a tree's paths)."
    )


def migrate_state(
  new_tx: optax.GradientTransformation,
  params: optax.Params,
  old_state: optax.OptState,
  *,
  reset: Patterns | None = None,
) -> tuple[optax.OptState, MigrationReport]:
  r"""The state with which ``new_tx`` continues a run made with another optimizer.

  Add a stage to a running optimizer (an :func:`optaxtra.average_params`, a
  :func:`optaxtra.record_norm`), replace a chain by its fused equivalent, wrap
  it in :func:`optaxtra.with_frozen` or :class:`optax.MultiSteps`, grow the
  model: the new optimizer's state is built from the old one, value by value,
  and a report says what came from where.

  Every value of the old state whose *place* exists in the new one is carried
  over. A place is the class of the state holding the value, its field, and,
  for a per-parameter field (a moment, a trace, an average), the parameter's
  path; below the field of a state that holds a dict of values (e.g. a value
  per path group), the dict's keys. Where the state sits is not part of its
  place: its position in a chain, the wrappers around it. Several states of
  one class are matched in the order of the tree (the first of the new state
  takes the first of the old). States of different classes never match, so a
  clipped Adamax's infinity norm ``nu`` never lands in an Adam or RMSprop
  ``nu`` (but Optax's own ``scale_by_adamax`` keeps its state in Optax's
  ``ScaleByAdamState``, like ``scale_by_adam``: from the state alone the two
  cannot be told apart). A state class may declare the classes it continues
  (:func:`optaxtra.migrates_from`): :class:`optaxtra.AdamaxClippedState`
  continues the chain of :class:`optaxtra.ScaleByAdamaxClippedState`,
  :class:`optaxtra.ScaleByLearningRateState` and
  :class:`optaxtra.AddDecayedWeightsDecoupledState` (and each stage of that
  chain continues it), so a checkpoint of the chain continues as
  :func:`optaxtra.adamax_clipped`.

  Everything else is as ``new_tx.init(params)`` makes it:

  * a stage with no counterpart starts afresh, its ``count`` at 0: the run's
    own stages keep their counts (the old Adam's count goes to the new Adam),
    so the updates continue exactly, while the new stage counts its own
    updates and its schedules start from their beginning. For
    :func:`optaxtra.average_params` added to a running optimizer that is the
    right start: its average begins at the current ``params``, and a decay
    schedule such as :func:`optaxtra.ema_warmup` or
    :func:`optaxtra.polyak` warms up over the updates averaged, not over the
    run;
  * the per-parameter values of a parameter the old state does not have (a
    new layer), and of the parameters that ``reset`` names;
  * the hyperparameters that :func:`optax.inject_hyperparams` keeps in its
    state: those of ``new_tx`` apply, so a value you built it with is never
    replaced by the old one.

  The values of the old state that have no place in the new one (a stage
  removed, a layer removed) are dropped. A value is carried only into its
  own shape and dtype: anything else raises ``ValueError`` naming the value,
  and, for a parameter whose shape changed, the ``reset`` that starts it
  afresh.

  Args:
    new_tx: the optimizer to continue with.
    params: the current params (those the old state was updating, or the
      model's params after a change, e.g. with a new layer): ``new_tx`` is
      initialised on them, so a new average starts at them.
    old_state: the state of the old optimizer, as ``tx.update`` returned it
      or as restored from a checkpoint *with a target*
      (``jax.eval_shape(old_tx.init, params)``). A checkpoint restored without
      a target, whose states came back as dicts, is refused with the fix.
    reset: a regular expression or a list of them (searched in the param
      paths, as in :mod:`optaxtra.masks`); the per-parameter state of every
      parameter one of them matches is initialised rather than carried, its
      stage-wide values (counts) carried as usual. Each pattern must match a
      path.

  Returns:
    ``(new_state, report)``: the state for ``new_tx`` (its structure, shapes
    and dtypes those of ``new_tx.init(params)``), and a
    :class:`optaxtra.MigrationReport` listing the state paths carried,
    initialised and dropped; ``print(report)`` shows them as a table.

  Raises:
    TypeError: for an ``old_state`` restored without a target, or arguments
      of the wrong kind.
    ValueError: for a value whose shape or dtype differs from the one
      ``new_tx`` keeps at its place, a ``reset`` pattern that matches no
      path, or ``params`` that name none of the parameters the old state
      keeps values for.

  Examples:
    Adding an average of the weights to a running optimizer; the optimizer
    goes on bit for bit, the average starts at the current params:

    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> old_tx = optaxtra.adamax_clipped(1e-2)
    >>> state = old_tx.init(params)
    >>> updates, state = old_tx.update({"w": jnp.ones(2)}, state)
    >>> params = optax.apply_updates(params, updates)
    >>> new_tx = optax.chain(old_tx, optaxtra.average_params(0.99))
    >>> new_state, report = optaxtra.migrate_state(new_tx, params, state)
    >>> int(new_state[0].count), int(new_state[1].count)
    (1, 0)
    >>> print(report)  # columns aligned; shown here with single spaces
    migrate_state: 5 carried, 3 initialised, 0 dropped
    new state old state what
    ---...
    0/AdamaxClippedState/count AdamaxClippedState/count carried
    0/AdamaxClippedState/mu/w AdamaxClippedState/mu/w carried
    0/AdamaxClippedState/nu/w AdamaxClippedState/nu/w carried
    0/AdamaxClippedState/learning_rate AdamaxClippedState/learning_rate carried
    0/AdamaxClippedState/learning_rate_scale AdamaxClippedState/... carried
    1/AverageParamsState/count - initialised (not in the old state)
    1/AverageParamsState/decay - initialised (not in the old state)
    1/AverageParamsState/average/w - initialised (not in the old state)

    A checkpoint of the chain that :func:`optaxtra.adamax_clipped` fuses,
    continued as the fused optimizer:

    >>> chain = optax.chain(
    ...     optaxtra.scale_by_adamax_clipped(),
    ...     optaxtra.scale_by_learning_rate(1e-2),
    ...     optaxtra.add_decayed_weights_decoupled(1e-4, schedule=1e-2))
    >>> fused = optaxtra.adamax_clipped(1e-2, weight_decay=1e-4)
    >>> state, report = optaxtra.migrate_state(fused, params, chain.init(params))
    >>> report.sources["AdamaxClippedState/learning_rate_scale"]
    '1/ScaleByLearningRateState/scale'
    >>> report.dropped  # the fused state keeps one count
    ['1/ScaleByLearningRateState/count', '2/AddDecayedWeightsDecoupledState/count']
  """
  _check_arguments(new_tx, old_state)
  boxes = _paths.box_types()
  _optax_states.declare_optax_states()
  if old_state is not None and not _has_state_object(old_state, boxes):
    if _paths.children(old_state):
      raise TypeError(
        f"{_FN}: old_state is made of dicts and lists only, with no optimizer "
        "state (NamedTuple) in it: a checkpoint restored without a target "
        "(Orbax gives NamedTuple states back as dicts, tuples as lists), or not "
        "a state at all (the params?). Restore against the old optimizer's "
        "state: ckptr.restore(path, jax.eval_shape(old_tx.init, params)) (for a "
        "checkpoint written by an earlier optaxtra, "
        "optaxtra.checkpoint_target(old_tx, params, version=...)), then migrate "
        "what it returns."
      )
  patterns = _compile_reset(reset, params)
  fresh = new_tx.init(params)
  _, old_walk = _walk(old_state, params)
  old = old_walk.leaves
  _check_params_match(old, params)
  _, new_walk = _walk(fresh, params)
  new = new_walk.leaves
  old_counts = old_walk.counts
  by_place = {leaf.place: leaf for leaf in old}

  def source(leaf: _Leaf) -> _Leaf | None:
    own = old_counts.get(leaf.cls, 0) if leaf.cls is not None else 1
    if leaf.occurrence < own:
      return by_place.get(leaf.place)
    # No state of its own class there: the ones it continues, in order.
    k = leaf.occurrence - own
    for old_cls, fields in _continued(leaf.cls):
      old_field = fields.get(leaf.field)
      if old_field is not None:
        found = by_place.get((old_cls, k, old_field, leaf.sub))
        if found is not None:
          return found
    return None

  carried_from: dict[int, _Leaf] = {}  # index of a new leaf -> its source
  not_carried: dict[int, str] = {}  # id of an old leaf -> why, if it had a place
  reasons: dict[str, str] = {}
  for i, leaf in enumerate(new):
    src = source(leaf)
    if leaf.config:
      reasons[leaf.where] = "a hyperparameter: new_tx's own"
      why = "a hyperparameter: new_tx's own applies"
    elif leaf.param and any(rx.search(leaf.sub) for rx in patterns):
      reasons[leaf.where] = why = "reset"
    elif src is None:
      reasons[leaf.where] = "not in the old state"
      continue
    else:
      _check_carry(leaf, src)
      carried_from[i] = src
      continue
    if src is not None:
      not_carried.setdefault(id(src), why)
  carried_ids = {id(src) for src in carried_from.values()}

  values = []  # what goes in each place of the new state, in order
  seen: set[int] = set()
  for i, leaf in enumerate(new):
    src = carried_from.get(i)
    if src is None:
      values.append(leaf.value)
    elif id(src) in seen:  # one buffer in two places could not be donated
      values.append(jnp.array(src.value, copy=True))
    else:
      seen.add(id(src))
      values.append(src.value)
  it = iter(values)
  new_state, _ = _walk(fresh, params, lambda _: next(it))

  rows: list[_Row] = []
  for i, leaf in enumerate(new):
    src = carried_from.get(i)
    group = (_field_path(leaf), _field_path(src) if src is not None else "")
    group = group if leaf.param else None
    if src is not None:
      rows.append(_Row("carried", leaf.where, src.where, "", group))
    else:
      rows.append(_Row("initialised", leaf.where, "", reasons[leaf.where], group))
  for leaf in old:
    if id(leaf) not in carried_ids:
      why = not_carried.get(id(leaf), "no place in the new state")
      group = ("", _field_path(leaf)) if leaf.param else None
      rows.append(_Row("dropped", "", leaf.where, why, group))
  report = MigrationReport(
    carried=[r.new for r in rows if r.status == "carried"],
    initialised=[r.new for r in rows if r.status == "initialised"],
    dropped=[r.old for r in rows if r.status == "dropped"],
    sources={r.new: r.old for r in rows if r.status == "carried"},
    reasons={r.new: r.why for r in rows if r.status == "initialised"},
    rows=tuple(rows),
  )
  return new_state, report


def _field_path(leaf: _Leaf) -> str:
  """A per-parameter value's path without the parameter's."""
  if not leaf.sub:
    return leaf.where
  return leaf.where[: -len(leaf.sub) - 1]
