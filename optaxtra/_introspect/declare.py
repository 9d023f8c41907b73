"""How a state declares the values :func:`optaxtra.inspect` reads from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


@dataclasses.dataclass(frozen=True)
class Declaration:
  """What a state class declared with :func:`inspectable`.

  Attributes:
    values: ``(field, name)`` pairs: the field holds a value reported under
      ``name``.
    trees: fields holding params-shaped trees, never looked into.
    derive: a function of the state returning more values by name, or None.
    counts_apart: fields whose counts are kept apart from the other stages'
      (see :func:`inspectable`).
  """

  values: tuple[tuple[str, str], ...]
  trees: tuple[str, ...]
  derive: Callable[[Any], Mapping[str, Any]] | None = None
  counts_apart: tuple[str, ...] = ()


_REGISTRY: dict[type, Declaration] = {}


def _fields(cls: type) -> tuple[str, ...] | None:
  """The field names of a NamedTuple or dataclass class, else None."""
  if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
    return tuple(cls._fields)  # pyright: ignore[reportAttributeAccessIssue]
  if dataclasses.is_dataclass(cls):
    return tuple(f.name for f in dataclasses.fields(cls))
  return None


def _names(arg: str, given: Any) -> list[str]:
  if isinstance(given, str):
    raise TypeError(
      f"inspectable: {arg} must be a list of field names, got the string "
      f"{given!r}; write {arg}=[{given!r}]."
    )
  if not isinstance(given, Iterable):
    raise TypeError(f"inspectable: {arg} must be a list of field names, got {given!r}.")
  names = list(given)
  for n in names:
    if not isinstance(n, str):
      raise TypeError(f"inspectable: {arg} holds {n!r}, not a field name (a str).")
  return names


def inspectable(
  *,
  values: Iterable[str] | Mapping[str, str] = (),
  trees: Iterable[str] = (),
  derive: Callable[[Any], Mapping[str, Any]] | None = None,
  counts_apart: Iterable[str] = (),
) -> Callable[[T], T]:
  """Declares which fields of a state class :func:`optaxtra.inspect` reports.

  A class decorator for the NamedTuple (or pytree dataclass) state of your own
  transformation; called on a class you do not own (``inspectable(...)(cls)``)
  it declares that one. A declared state is read exactly as declared:

  * each field in ``values`` is reported, under its own name or, with a
    mapping ``{field: name}``, under ``name``, whenever it holds a number (a
    scalar, or an array of any shape for a state stacked by ``jax.vmap``);
    a field holding a dict of numbers (a hyperparameter given by
    :func:`optaxtra.by_path`: ``{"[<pattern>]": value, "[default]": value}``)
    is reported as one value per key, ``name[<pattern>]``,
    ``name[default]``; a field holding None is skipped (a ``bias_correction``
    that is None says the stage corrects nothing: it is not reported, and a
    learning rate it meets gives ``effective_learning_rate`` unchanged);
  * each field in ``trees`` (moments, accumulators: anything shaped like the
    params) is never looked into, so that params that are NamedTuples with a
    field called ``count`` are not read as counters;
  * every other field is looked into for nested states (an inner state, a
    tuple of states);
  * ``derive(state)``, if given, returns more values by name, computed from
    the state (e.g. a ratio of two fields): a mapping (a dict) from names to
    numbers, dicts of numbers as above, or None (skipped);
  * each field in ``counts_apart`` holds counts that do not advance with the
    other stages' (a wrapper that skips or accumulates updates lists its inner
    state; a ``count`` that is not the number of updates lists itself): they
    are never merged into the one ``count`` that :func:`optaxtra.inspect`
    reports for the stages that advance together.

  Names have the meanings :func:`optaxtra.inspect` documents: ``count`` is
  the number of updates done, ``learning_rate`` the rate the last update used,
  ``bias_correction`` the factor by which the last update's step was
  multiplied; a ``learning_rate`` and a ``bias_correction`` meeting in one
  state give ``effective_learning_rate``. Other names are yours to choose.

  A state class that is not declared is read by convention: its fields named
  ``count``, ``learning_rate``, ``step_size``, ``weight_decay``,
  ``decay_rate``, ``clip_fraction`` or ``bias_correction`` are reported when
  they hold a scalar, and its other fields are looked into.
  :func:`optaxtra.testing.check_transformation` checks a declaration against
  the state that ``init`` and ``update`` return.

  Args:
    values: the fields holding values to report, or a mapping from field to
      the name to report it under.
    trees: the fields holding params-shaped trees.
    derive: a function of the state returning a mapping from names to values.
    counts_apart: the fields (an inner state, or a value field) whose counts
      advance apart from the rest of the optimizer's.

  Returns:
    A class decorator, which registers the class and returns it unchanged.

  Raises:
    TypeError: for a class that is not a NamedTuple or dataclass, or a field
      name that is not a string.
    ValueError: for a field the class does not have, or one listed twice.

  Examples:
    >>> import jax.numpy as jnp
    >>> from typing import NamedTuple
    >>> import optax, optaxtra
    >>> @optaxtra.inspectable(values=["count", "scale"], trees=["trace"])
    ... class MyState(NamedTuple):
    ...   count: jnp.ndarray
    ...   scale: jnp.ndarray
    ...   trace: optax.Updates
    >>> state = MyState(jnp.int32(3), jnp.float32(0.5), {"count": jnp.zeros(())})
    >>> info = optaxtra.inspect(state)  # the trace's "count" is not read
    >>> info
    {'count': Array(3, dtype=int32), 'scale': Array(0.5, dtype=float32)}
  """
  if isinstance(values, Mapping):
    pairs = [(f, n) for f, n in values.items()]
    for f, n in pairs:
      if not isinstance(f, str) or not isinstance(n, str) or not n:
        raise TypeError(
          f"inspectable: values maps field names to report names (both str), "
          f"got {f!r}: {n!r}."
        )
  else:
    pairs = [(f, f) for f in _names("values", values)]
  tree_fields = _names("trees", trees)
  apart = _names("counts_apart", counts_apart)
  if derive is not None and not callable(derive):
    raise TypeError(
      f"inspectable: derive must be a function of the state, got {derive!r}."
    )

  def register(cls: T) -> T:
    fields = _fields(cls)
    if fields is None:
      raise TypeError(
        f"inspectable: {cls!r} is not a NamedTuple or dataclass class; declare "
        "the class of the state that your transformation's init returns."
      )
    listed = [f for f, _ in pairs] + tree_fields
    unknown = [f for f in listed if f not in fields]
    if unknown:
      raise ValueError(
        f"inspectable: {cls.__name__} has no field {unknown[0]!r}; its fields "
        f"are {list(fields)}."
      )
    twice = sorted({f for f in listed if listed.count(f) > 1})
    if twice:
      raise ValueError(
        f"inspectable: the field {twice[0]!r} of {cls.__name__} is listed twice "
        "(in values and trees, or twice in one); list each field once."
      )
    unknown = [f for f in apart if f not in fields]
    if unknown:
      raise ValueError(
        f"inspectable: {cls.__name__} has no field {unknown[0]!r} (in "
        f"counts_apart); its fields are {list(fields)}."
      )
    in_trees = [f for f in apart if f in tree_fields]
    if in_trees:
      raise ValueError(
        f"inspectable: the field {in_trees[0]!r} of {cls.__name__} is in trees, "
        "which are never looked into, and in counts_apart; a params-shaped tree "
        "holds no counts: list it in trees only."
      )
    _REGISTRY[cls] = Declaration(
      tuple(pairs), tuple(tree_fields), derive, tuple(dict.fromkeys(apart))
    )
    return cls

  return register


def declaration(cls: type) -> Declaration | None:
  """What ``cls`` (or the nearest base class) declared, or None."""
  for base in getattr(cls, "__mro__", (cls,)):
    found = _REGISTRY.get(base)
    if found is not None:
      return found
  return None


def declared_classes() -> tuple[type, ...]:
  """Every class declared so far."""
  return tuple(_REGISTRY)
