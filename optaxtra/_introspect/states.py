"""Refusing, with the fix, what :func:`optaxtra.inspect` cannot read as a state."""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from typing import Any

import optax

from optaxtra._core.paths import children as one_level
from optaxtra._core.paths import show
from optaxtra._introspect.declare import declared_classes


def _state_fields() -> tuple[tuple[str, frozenset[str]], ...]:
  """``(name, fields)`` of the NamedTuple states of Optax and optaxtra, and of
  every state class declared with :func:`optaxtra.inspectable`."""
  return _state_fields_of(declared_classes())


@functools.cache
def _state_fields_of(
  declared: tuple[type, ...],
) -> tuple[tuple[str, frozenset[str]], ...]:
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
  for cls in declared:
    if issubclass(cls, tuple) and getattr(cls, "_fields", ()):
      names.setdefault(cls, f"{cls.__module__}.{cls.__qualname__}")
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
    kids = one_level(node)
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


def check_is_a_state(state: Any, boxes: tuple[type, ...]) -> None:
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
  if one_level(state) is None:
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
    f"leaves: {show(leaves)}), e.g. the params or the gradients. inspect reads "
    "the NamedTuple (or dataclass) states that tx.init builds: pass "
    "tx.init(params) or the state returned by tx.update(...). A checkpoint "
    f"restored without a target also looks like this: {_RESTORE}."
  )
