"""The probe of what a state declares to :func:`optaxtra.inspect`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from optaxtra._core.paths import path_str, quote
from optaxtra._introspect.declare import Declaration, declaration
from optaxtra.testing._context import Context
from optaxtra.testing._trees import aval, describe, fail


def _declared(node: Any) -> bool:
  return declaration(type(node)) is not None


def declared_states(
  state: Any, path: str = ""
) -> Iterator[tuple[str, Any, Declaration]]:
  """``(path, node, declaration)`` of every declared state in ``state``, nested
  ones too (an inner state of a declared wrapper)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(
    state, is_leaf=lambda x: x is not state and _declared(x)
  )
  if _declared(state):
    flat = [((), state)]
  for key_path, node in flat:
    if not _declared(node):
      continue
    where = "/".join(p for p in (path, path_str(key_path)) if p)
    decl = declaration(type(node))
    assert decl is not None
    yield where, node, decl
    listed = {f for f, _ in decl.values} | set(decl.trees)
    for field in _field_names(node):
      if field not in listed:
        child = getattr(node, field)
        yield from declared_states(child, f"{where}/{field}" if where else field)


def _field_names(node: Any) -> list[str]:
  fields = getattr(node, "_fields", None)
  if fields is None:
    fields = list(getattr(node, "__dataclass_fields__", {}))
  return list(fields)


def _is_scalar(x: Any) -> bool:
  a = aval(jnp.asarray(x)) if isinstance(x, int | float) else aval(x)
  return (
    a is not None
    and a.shape == ()
    and (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == jnp.bool_)
  )


def _is_by_path(x: Any) -> bool:
  """A value by path: a non-empty dict from rule labels (``"[<pattern>]"``,
  ``"[default]"``) to numeric scalars."""
  return (
    isinstance(x, Mapping)
    and bool(x)
    and all(isinstance(k, str) and _is_scalar(v) for k, v in x.items())
  )


def _check_state(state: Any, when: str) -> None:
  for where, node, decl in declared_states(state):
    cls = type(node).__name__
    at = f"the {cls} at {quote(where)}" if where else f"the {cls}"
    for field, name in decl.values:
      value = getattr(node, field)
      if value is not None and not _is_scalar(value) and not _is_by_path(value):
        if aval(value) is not None:
          what = describe(aval(value))
        else:
          flat = jax.tree_util.tree_flatten_with_path(value)[0]
          shown = ", ".join(
            f"{quote(path_str(p))}: {describe(aval(x))}" for p, x in flat[:3]
          )
          what = f"a tree of {len(flat)} leaves ({shown})"
        fail(
          f"{at} in the state {when} declares {field!r} a value (reported as "
          f"{name!r} by optaxtra.inspect), but it holds {what}. A declared value "
          "is a numeric scalar (shape ()), a dict of them keyed by rule (a value "
          "by path: '[<pattern>]', '[default]'), or None; declare a field shaped "
          "like the params in trees=[...] instead."
        )
    if decl.derive is None:
      continue
    try:
      derived = decl.derive(node)
    except Exception as e:
      fail(f"{at} in the state {when}: its declared derive raised {e!r}.")
    if not isinstance(derived, Mapping):
      fail(
        f"{at} in the state {when}: its declared derive returned "
        f"{type(derived).__name__}, not a mapping from names to values."
      )
    for name, value in derived.items():
      if not isinstance(name, str) or (
        value is not None and not _is_scalar(value) and not _is_by_path(value)
      ):
        fail(
          f"{at} in the state {when}: its declared derive returned {name!r}: "
          f"{describe(aval(value))}; it must map names (str) to numeric scalars, "
          "dicts of them keyed by rule, or None."
        )


def probe_declared_values(ctx: Context) -> None:
  """What each declared state says it holds (``optaxtra.inspectable``) holds:
  its values are numeric scalars or None, its derived values too, in init's
  state and in the state after the last update; and ``optaxtra.inspect``
  reads the state, eagerly and under ``jax.jit``, with the same names. A state
  holding no declared state is not probed."""
  from optaxtra._introspect import (
    inspect as _inspect,  # optaxtra's package imports testing
  )

  states = [(ctx.state0, "that init returns")]
  if ctx.step is not None:
    states.append((ctx.step.state, f"after update {ctx.step.number}"))
  for state, when in states:
    if not any(True for _ in declared_states(state)):
      return  # nothing declared: inspect reads it by convention, if at all
    _check_state(state, when)
    try:
      eager = _inspect.inspect(state)
      jitted = jax.jit(_inspect.inspect)(state)
    except (TypeError, ValueError) as e:
      fail(f"optaxtra.inspect cannot read the state {when}: {e}")
    counts = {k: int(v) for k, v in eager.items() if k.split("/")[-1] == "count"}
    if (
      "count" in jitted
      and len(counts) > 1
      and (jnp.ndim(jitted["count"]) == 0 and int(jitted["count"]) == _inspect.DISAGREE)
    ):
      fail(
        f"the counts in the state {when} disagree: {counts}. optaxtra.inspect "
        "reports the counts of stages that advance together as one count, so "
        "every stage's count must be the number of updates done (incremented "
        "by each update, optax.safe_increment); a count of something else, or "
        "the state of a wrapped transformation that some updates skip, is "
        "declared with optaxtra.inspectable(..., counts_apart=[field])."
      )
    if sorted(eager) != sorted(jitted):
      fail(
        f"optaxtra.inspect reads the state {when} with the names "
        f"{sorted(eager)} eagerly but {sorted(jitted)} under jax.jit."
      )
