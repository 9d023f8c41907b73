"""What an optimizer will do to each parameter, before training: describe."""

from __future__ import annotations

import dataclasses
import inspect as _pyinspect
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra._average import AverageParamsState
from optaxtra._core import hyper as _hyper
from optaxtra._core import paths as _paths
from optaxtra._core.paths import box_types, children, show
from optaxtra._introspect import inspect as _inspect
from optaxtra._introspect import optax_states as _optax_states
from optaxtra._scale_by_path import ScaleByPathState

_FN = "describe"
_PROBE_STEPS = 3
# The most micro-steps per update of an optax.MultiSteps that describe looks for.
_MAX_MICRO_STEPS = 256
# Relative tolerance of the check that the decay is linear in the params.
_LINEAR_RTOL = 1e-5
# Hyperparameters shown per leaf where a stage records them.
_BETAS = ("b1", "b2", "eps")

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Description:
  """What :func:`describe` found.

  Attributes:
    rows: one dict per parameter, in the params' leaf order (see
      :func:`describe` for the keys).
    notes: lines about the optimizer as a whole (wrappers that skip or
      accumulate updates), printed under the table.
    step: the step described: each row is the update made after ``step``
      updates.

  ``str()`` is a table of the rows: the columns ``path``, ``shape``,
  ``dtype``, ``trainable``, ``lr`` (``learning_rate``), ``decay``
  (``decay_rate``; ``-`` where no decay acts) and ``state_bytes`` always,
  ``lr_mult``, ``group``, ``b1``, ``b2``, ``eps`` and ``averaged`` where
  some row has something to say there.
  """

  rows: list[dict[str, Any]]
  notes: tuple[str, ...] = ()
  step: int = 0

  def __str__(self) -> str:
    columns: list[tuple[str, Callable[[dict[str, Any]], str], bool]] = [
      ("path", lambda r: r["path"] or "(root)", False),
      ("shape", lambda r: "x".join(str(d) for d in r["shape"]) or "()", False),
      ("dtype", lambda r: r["dtype"], False),
      ("trainable", lambda r: "yes" if r["trainable"] else "FROZEN", False),
      ("lr", lambda r: _number(r["learning_rate"]), True),
      ("decay", _decay_cell, True),
    ]
    if any(r["lr_multiplier"] != 1.0 for r in self.rows):
      columns.append(("lr_mult", lambda r: _number(r["lr_multiplier"]), True))
    if any(r["group"] is not None for r in self.rows):
      columns.append(
        ("group", lambda r: "-" if r["group"] is None else str(r["group"]), False)
      )
    for name in _BETAS:
      if any(r.get(name) is not None for r in self.rows):
        columns.append((name, lambda r, n=name: _number(r.get(n)), True))
    if any(r["averaged"] for r in self.rows):
      columns.append(("averaged", lambda r: "yes" if r["averaged"] else "-", False))
    columns.append(("state_bytes", lambda r: f"{r['state_bytes']:,}", True))
    cells = [[c[0] for c in columns]]
    cells += [[c[1](r) for c in columns] for r in self.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
      parts = [
        c.rjust(w) if columns[i][2] else c.ljust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
      ]
      lines.append("  ".join(parts).rstrip())
      if n == 0:
        lines.append("  ".join("-" * w for w in widths))
    if self.step:
      lines.append(f"(the update made after {self.step:,} updates)")
    lines += self.notes
    return "\n".join(lines)

  def __repr__(self) -> str:
    return f"Description({len(self.rows)} parameters)\n{self}"


def _number(v: float | None) -> str:
  if v is None:
    return "-"
  return f"{v:.4g}"


def _decay_cell(r: dict[str, Any]) -> str:
  v = r["decay_rate"]
  if math.isnan(v):
    return "coupled"  # through an adaptive stage: no share per step
  if v == 0.0 and not r["weight_decay"]:
    return "-"
  return f"{v:.4g}"


# --- The transformation -------------------------------------------------------


def _public_name(fn: Any) -> str:
  """``optax.adam`` for a function its top-level package exports, else its
  qualified name."""
  name = getattr(fn, "__name__", None)
  module = getattr(fn, "__module__", None) or ""
  top = module.split(".")[0]
  if name and getattr(sys.modules.get(top), name, None) is fn:
    return f"{top}.{name}"
  return getattr(fn, "__qualname__", None) or repr(fn)


def _check_tx(tx: Any) -> None:
  """``TypeError`` for what is not a transformation, with the fix."""
  if hasattr(tx, "init") and hasattr(tx, "update"):
    return
  if callable(tx):
    name = _public_name(tx)
    try:
      first = next(iter(_pyinspect.signature(tx).parameters), None)
    except (TypeError, ValueError):
      first = None
    call = f"{name}(1e-3)" if first == "learning_rate" else f"{name}(...)"
    raise TypeError(
      f"{_FN}: you passed the function {name}, which builds an optimizer; call "
      f"it: {_FN}({call}, params)."
    )
  raise TypeError(
    f"{_FN}: tx must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), "
    f"got {type(tx).__name__}."
  )


# --- Stand-ins ----------------------------------------------------------------------


def _leaf_info(x: Any) -> tuple[tuple[int, ...], Any]:
  shape = tuple(int(d) for d in getattr(x, "shape", np.shape(x)))
  dtype = x.dtype if isinstance(x, jax.ShapeDtypeStruct) else jnp.result_type(x)
  return shape, jnp.dtype(dtype)


class _Params:
  """The params' entries and stand-ins of them: size-1 arrays of each leaf's
  ndim and dtype, in the params' own tree (Flax boxes kept)."""

  def __init__(self, params: Any):
    self.entries, self.treedef = _paths.walk(params)
    masked = [e.path for e in self.entries if e.masked]
    if masked:
      raise ValueError(
        f"{_FN}: params holds hidden entries (optax.MaskedNode) at "
        f"{show(masked)}; pass the whole params tree."
      )
    if not self.entries:
      raise ValueError(f"{_FN}: params has no leaves; pass the model's parameters.")
    self.paths = [e.path for e in self.entries]
    self.info = [_leaf_info(e.value) for e in self.entries]
    self.inexact = [jnp.issubdtype(dt, jnp.inexact) for _, dt in self.info]

  def stand_in(self, fill: Any, seed: int = 0, *, wide: bool = False) -> Any:
    """``fill`` is "zeros", "random" or a number; ``wide`` gives the floats
    narrower than float32 float32 (to read a decay rate to float32's
    precision)."""
    rng = np.random.default_rng(seed)
    values = []
    for (shape, dt), inexact in zip(self.info, self.inexact, strict=True):
      small = (1,) * len(shape)
      if wide and inexact and jnp.finfo(dt).bits < 32:
        dt = jnp.dtype(jnp.float32)
      if fill == "zeros" or not inexact:
        values.append(jnp.zeros(small, dt))
      elif fill == "random":
        v = rng.uniform(0.5, 1.5, small) * rng.choice([-1, 1], small)
        values.append(jnp.asarray(v, dt))
      else:
        values.append(jnp.full(small, fill, dt))
    return _paths.rebuild(self.entries, self.treedef, values)


def _leaves(tree: Any) -> list[Any]:
  """The update of each parameter (a box's one leaf), in leaf order."""
  return [e.value for e in _paths.walk(tree)[0]]


# --- Setting the step ---------------------------------------------------------


def _replace(node: Any, path: Path, targets: dict[Path, Callable[[Any], Any]]) -> Any:
  """``node`` with the leaves at ``targets`` replaced; nodes off the way kept
  as they are (dicts keep their order)."""
  if path in targets:
    return targets[path](node)
  n = len(path)
  if not any(t[:n] == path for t in targets):
    return node
  kids = children(node)
  if not kids:
    return node
  new = [_replace(child, (*path, key), targets) for key, _, child in kids]
  if isinstance(node, dict):
    by_key = {key: v for (key, _, _), v in zip(kids, new, strict=True)}
    return type(node)(
      (k, by_key[_paths.path_str((jax.tree_util.DictKey(k),))]) for k in node
    )
  treedef = jax.tree_util.tree_structure(node, is_leaf=lambda x: x is not node)
  return treedef.unflatten(new)


def _multisteps(state: Any, path: Path = ()) -> list[tuple[Path, Any]]:
  """Every :class:`optax.MultiStepsState` in ``state``, with its path."""
  if isinstance(state, optax.MultiStepsState):
    return [
      (path, state),
      *_multisteps(state.inner_opt_state, (*path, "inner_opt_state")),
    ]
  out = []
  for key, _, child in children(state) or []:
    out += _multisteps(child, (*path, key))
  return out


def _full(value: int) -> Callable[[Any], Any]:
  def set_to(x):
    return jnp.full(jnp.shape(x), value, jnp.result_type(x))

  return set_to


def _at_step(state: Any, step: int) -> Any:
  """``state`` with every count of updates set to ``step``: the counts of the
  stages (not counters of something else, ``counts_apart`` values) and the
  ``gradient_step`` of ``optax.MultiSteps``."""
  records = _inspect._walk(state, (), box_types(), ())
  targets: dict[Path, Callable[[Any], Any]] = {
    r.field: _full(step) for r in records if r.name == "count" and not r.apart
  }
  for path, _ in _multisteps(state):
    targets[(*path, "gradient_step")] = _full(step)
  return _replace(state, (), targets) if targets else state


# --- Running the optimizer on stand-ins -----------------------------------------


class _Runner:
  """Runs ``tx`` on stand-ins; makes every ``optax.MultiSteps`` inside apply
  its inner update at every call, by setting its mini-step to the last one."""

  def __init__(self, tx: Any, params: _Params, step: int):
    self.tx, self.params, self.step = tx, params, step
    self.last: dict[Path, int] = {}
    # What init's state holds, as traced: its dicts by rule in rule order
    # (a jitted function returns dicts with their keys sorted).
    self.init_records: list[Any] = []

    def init(p):
      state = tx.init(p)
      if not self.init_records:
        self.init_records = _inspect._walk(state, (), box_types(), ())
      return _at_step(state, step)

    self.jitted_init = jax.jit(init)
    self.jitted = jax.jit(lambda g, s, p: tx.update(g, self.prime(s), p))

  def init(self, p: Any) -> Any:
    return self.jitted_init(p)

  def prime(self, state: Any) -> Any:
    if not self.last:
      return state
    return _replace(
      state, (), {(*path, "mini_step"): _full(k) for path, k in self.last.items()}
    )

  def find_micro_steps(self, state: Any, g: Any, p: Any) -> None:
    """The mini-step at which each ``optax.MultiSteps`` applies its update."""
    found = _multisteps(state)
    if not found:
      return
    if len(found) > 1:
      where = ", ".join(repr("/".join(path) or "the root") for path, _ in found)
      raise ValueError(
        f"{_FN}: the optimizer holds several optax.MultiSteps (at {where}); "
        "describe the transformation each wraps instead."
      )
    path, _ = found[0]
    tries = jnp.arange(_MAX_MICRO_STEPS, dtype=jnp.int32)

    def attempt(m):
      s = _replace(state, (), {(*path, "mini_step"): lambda x: m.astype(x.dtype)})
      _, new = self.tx.update(g, s, p)
      before = _get(s, (*path, "gradient_step"))
      return _get(new, (*path, "gradient_step")) != before

    emitted = np.asarray(jax.jit(jax.vmap(attempt))(tries))
    if not emitted.any():
      raise ValueError(
        f"{_FN}: the optax.MultiSteps at {'/'.join(path) or 'the root'} applies "
        f"no update within {_MAX_MICRO_STEPS} micro-steps; describe the "
        "transformation it wraps instead."
      )
    self.last[path] = int(np.argmax(emitted))

  def update(self, g: Any, state: Any, p: Any) -> tuple[Any, Any]:
    return self.jitted(g, state, p)


def _get(node: Any, path: Path) -> Any:
  for key in path:
    node = next(c for k, _, c in children(node) or [] if k == key)
  return node


def _run(runner: _Runner, grads_fill: str, params_fill: str) -> list[bool]:
  """Per leaf: whether any of three jitted steps gave it a nonzero update."""
  p = runner.params.stand_in(params_fill, 1)
  state = runner.init(p)
  moved = [False] * len(runner.params.paths)
  for k in range(_PROBE_STEPS):
    g = runner.params.stand_in(grads_fill, 10 + k)
    updates, state = runner.update(g, state, p)
    for i, u in enumerate(_leaves(updates)):
      moved[i] = moved[i] or bool(np.any(np.asarray(u) != 0))
  return moved


def _decay_probe(runner: _Runner) -> tuple[list[float], Any, Any]:
  """The share of each weight removed at zero gradients, at the step, and the
  state before and after that update (whose records hold the values used).

  With params 1 and then 2, the update of a decayed weight is ``-rate * p``
  in both; NaN marks a leaf whose update is not linear in its weight (a
  decay in the gradient, through an adaptive stage).
  """
  out, states = [], []
  for fill in (1.0, 2.0):
    p = runner.params.stand_in(fill, wide=True)
    state = runner.init(p)
    g = runner.params.stand_in("zeros", wide=True)
    updates, new = runner.update(g, state, p)
    out.append([float(np.real(np.asarray(u).reshape(-1)[0])) for u in _leaves(updates)])
    states.append((state, new))
  bad = [
    path
    for path, u1, u2 in zip(runner.params.paths, *out, strict=True)
    if not (math.isfinite(u1) and math.isfinite(u2))
  ]
  if bad:
    raise ValueError(
      f"{_FN}: the update at step {runner.step}, at zero gradients, is not "
      f"finite for {show(bad)}: a hyperparameter out of its range at that "
      "step (a schedule's value) turns it NaN under jax.jit. Check the "
      f"schedules' values at step {runner.step}."
    )
  rates = []
  for u1, u2, inexact in zip(out[0], out[1], runner.params.inexact, strict=True):
    if not inexact or (u1 == 0 and u2 == 0):
      rates.append(0.0)
    elif abs(u2 - 2 * u1) <= _LINEAR_RTOL * abs(2 * u1):
      rates.append(float(-u1))
    else:
      rates.append(math.nan)
  return rates, states[0][0], states[0][1]


def _in_rule_order(records: list[Any], before: list[Any]) -> list[Any]:
  """``records`` with the entries of each value by rule in rule order.

  A jitted update returns dicts with their keys sorted; ``init`` builds them
  in rule order (first match wins), which ``before`` (its records) keeps.
  """
  order: dict[Path, list[str]] = {}
  for r in before:
    if r.label:
      order.setdefault(r.source, []).append(r.label)
  rank = {
    (src, label): i for src, labels in order.items() for i, label in enumerate(labels)
  }
  return sorted(records, key=lambda r: rank.get((r.source, r.label), 0))


# --- Reading the states -------------------------------------------------------


def _like(params: _Params, abstract: bool) -> Callable[[Any], bool]:
  """Whether a state node is a params-shaped tree (hidden entries allowed)."""
  root = params.paths == [""]

  def like(node: Any) -> bool:
    entries, treedef = _paths.walk(node)
    if treedef != params.treedef:
      return False
    if not root:
      return True
    # A single-array params tree: every leaf has its structure; a per-parameter
    # array has its shape (size 1 in the stand-ins), and is no integer counter.
    e = entries[0]
    if e.masked or not hasattr(e.value, "shape"):
      return False
    shape, dt = _leaf_info(e.value)
    want, pdt = params.info[0]
    if shape != (want if abstract else (1,) * len(want)):
      return False
    return jnp.issubdtype(dt, jnp.inexact) or not jnp.issubdtype(pdt, jnp.inexact)

  return like


def _trees(
  node: Any, like: Callable[[Any], bool], path: Path = ()
) -> list[tuple[Path, list]]:
  """The params-shaped trees in ``node``, with their paths and entries."""
  if node is None or isinstance(node, optax.MaskedNode):
    return []
  if like(node):
    return [(path, _paths.walk(node)[0])]
  out = []
  for key, _, child in children(node) or []:
    out += _trees(child, like, (*path, key))
  return out


def _seen(node: Any, like: Callable[[Any], bool]) -> list[int] | None:
  """The parameters a stage's state keeps per-parameter values for (the ones
  it sees), or None when it keeps none."""
  found = _trees(node, like)
  if not found:
    return None
  return sorted(
    {i for _, entries in found for i, e in enumerate(entries) if not e.masked}
  )


@dataclasses.dataclass
class _Scopes:
  """Which parameters each part of the state applies to."""

  scopes: list[tuple[Path, list[int] | None]]
  group: list[Any]

  def of(self, path: Path) -> tuple[Path, list[int] | None]:
    best = max(
      (s for s in self.scopes if path[: len(s[0])] == s[0]), key=lambda s: len(s[0])
    )
    return best


def _scopes(state: Any, params: _Params) -> _Scopes:
  like = _like(params, abstract=False)
  n = len(params.paths)
  scopes: list[tuple[Path, list[int] | None]] = [((), list(range(n)))]
  groups: list[list[Any]] = [[] for _ in range(n)]

  def masked(node, path, members):
    if isinstance(node, optax.MaskedState):
      inner = (*path, "inner_state")
      scopes.append((inner, members))
      visit(node.inner_state, inner, members)
    else:
      visit(node, path, members)

  def visit(node, path, members):
    if isinstance(node, optax.transforms.PartitionState):
      labels = list(node.inner_states)
      found = {label: _seen(node.inner_states[label], like) for label in labels}
      pool = set(range(n)) if members is None else set(members)
      claimed: set[int] = set()
      for label in labels:
        for i in found[label] or []:
          if i in claimed:
            raise ValueError(
              f"{_FN}: {params.paths[i]!r} has state in two groups of the partition."
            )
          claimed.add(i)
      stateless = [label for label in labels if found[label] is None]
      rest = sorted(pool - claimed)
      if rest and len(stateless) == 1:
        found[stateless[0]] = rest
      elif rest and stateless:
        raise ValueError(
          f"{_FN}: cannot tell which of the groups {stateless!r} holds "
          f"{show([params.paths[i] for i in rest])}: those groups' "
          "transformations keep no per-parameter state, from which describe "
          "reads membership."
        )
      for label in labels:
        member = found[label] or []
        for i in member:
          groups[i].append(label)
        here = (*path, "inner_states", str(label))
        scopes.append((here, member))
        masked(node.inner_states[label], here, member)
      return
    if isinstance(node, optax.MaskedState):
      inner = (*path, "inner_state")
      seen = _seen(node.inner_state, like)
      scopes.append((inner, seen))
      visit(node.inner_state, inner, seen)
      return
    for key, _, child in children(node) or []:
      visit(child, (*path, key), members)

  visit(state, (), list(range(n)))
  group = [
    None if not g else g[0] if len(g) == 1 else "/".join(str(x) for x in g)
    for g in groups
  ]
  return _Scopes(scopes, group)


def _members(scopes: _Scopes, path: Path, what: str) -> list[int]:
  where, members = scopes.of(path)
  if members is None:
    raise ValueError(
      f"{_FN}: cannot tell which parameters the {what} at "
      f"{'/'.join(path)!r} applies to: it sits inside optax.masked at "
      f"{'/'.join(where)!r}, whose inner state keeps nothing per parameter. Put "
      "the stage outside the mask, or in a partition (optax.partition)."
    )
  return members


def _assign(labels: Sequence[str], paths: Sequence[str], name: str) -> list[int]:
  """Each path's index in ``labels`` (``[<pattern>]`` by rule, in rule order,
  and ``[default]``), as the stage assigned them."""
  rules = [(label[1:-1], 0) for label in labels if label != "[default]"]
  default = 0 if "[default]" in labels else None
  table = _hyper.ByPath(tuple(rules), default)
  index = table.assign(_FN, name, list(paths))
  # ByPath numbers the default after the rules; map back to the labels' order.
  order = [label for label in labels if label != "[default]"]
  if default is not None:
    order.append("[default]")
  return [list(labels).index(order[i]) for i in index]


def _per_leaf(
  records: list[Any], scopes: _Scopes, paths: list[str], what: str
) -> list[list[float | None]]:
  """For each record source (a value, or a value by path), its value for each
  parameter it covers (None elsewhere)."""
  sources: dict[Path, list[Any]] = {}
  for r in records:
    sources.setdefault(r.source, []).append(r)
  out = []
  for source, recs in sources.items():
    members = _members(scopes, source[:-1], what)
    values: list[float | None] = [None] * len(paths)
    if len(recs) == 1 and not recs[0].label:
      for i in members:
        values[i] = float(np.asarray(recs[0].value))
    elif any("][" in r.label for r in recs):
      pass  # by two sets of rules at once (a decay by its own and the lr's rules)
    else:  # by rule: assigned as the stage assigns them, over the paths it sees
      labels = [r.label for r in recs]
      index = _assign(labels, [paths[i] for i in members], source[-1])
      for i, k in zip(members, index, strict=True):
        values[i] = float(np.asarray(recs[k].value))
    out.append(values)
  return out


def _multipliers(state: Any, scopes: _Scopes, n: int) -> list[float]:
  """The product of the scale_by_path multipliers each parameter's update
  passes through, as the state records them."""
  out = [1.0] * n

  def visit(node, path):
    if isinstance(node, ScaleByPathState):
      members = _members(scopes, path, "scale_by_path stage")
      m = np.asarray(node.multipliers, np.float64)
      if len(members) != m.shape[0]:
        raise ValueError(
          f"{_FN}: the scale_by_path stage at {'/'.join(path)!r} sees "
          f"{m.shape[0]} parameters, not the {len(members)} describe expected "
          "there."
        )
      for i, v in zip(members, m, strict=True):
        out[i] *= float(v)
      return
    for key, _, child in children(node) or []:
      visit(child, (*path, key))

  visit(state, ())
  return out


def _learning_rates(
  records: list[Any], scopes: _Scopes, paths: list[str]
) -> list[float | None]:
  """The product of the learning rates each parameter's update uses: the
  learning-rate stages' recorded values (by rule where by path), the step
  sizes of ``scale_by_schedule`` (their magnitude), and the ``learning_rate``
  of ``inject_hyperparams`` where the optimizer it wraps records none."""
  stage = [r for r in records if r.role == "lr" and r.path[-2:-1] != ("hyperparams",)]
  stage += [r for r in records if r.source[-1:] == ("step_size",)]
  injected = []
  for r in records:
    if r.role == "lr" and r.path[-2:-1] == ("hyperparams",):
      inner = (*r.path[:-2], "inner_state")
      if not any(s.path[: len(inner)] == inner for s in stage):
        injected.append(r)
  out: list[float | None] = [None] * len(paths)
  for values in _per_leaf(stage + injected, scopes, paths, "learning-rate stage"):
    for i, v in enumerate(values):
      if v is not None:
        before = out[i]
        out[i] = abs(v) * (1.0 if before is None else before)
  return out


def _hyperparameters(
  records: list[Any], scopes: _Scopes, paths: list[str]
) -> dict[str, list[float | None]]:
  """``b1``, ``b2``, ``eps`` per parameter where one stage records them."""
  out = {}
  for name in _BETAS:
    found = [r for r in records if r.source[-1:] == (name,)]
    if not found:
      continue
    column: list[float | None] = [None] * len(paths)
    twice: set[int] = set()
    for values in _per_leaf(found, scopes, paths, f"stage recording {name}"):
      for i, v in enumerate(values):
        if v is None:
          continue
        if column[i] is not None:
          twice.add(i)  # two stages on one parameter: neither is "the" value
        column[i] = v
    out[name] = [None if i in twice else v for i, v in enumerate(column)]
  return out


def _averaged(state: Any, params: _Params) -> list[bool]:
  """Whether an :func:`optaxtra.average_params` in the state averages each
  parameter."""
  out = [False] * len(params.paths)
  index = {p: i for i, p in enumerate(params.paths)}

  def visit(node):
    if isinstance(node, AverageParamsState):
      for e in _paths.walk(node.average)[0]:
        if not e.masked and e.path in index:
          out[index[e.path]] = True
      return
    for _, _, child in children(node) or []:
      visit(child)

  visit(state)
  return out


def _state_bytes(abstract: Any, params: _Params) -> list[int]:
  """The bytes of the params-shaped trees of the state, per parameter."""
  out = [0] * len(params.paths)
  for _, entries in _trees(abstract, _like(params, abstract=True)):
    for i, e in enumerate(entries):
      if not e.masked and hasattr(e.value, "shape"):
        shape, dt = _leaf_info(e.value)
        out[i] += int(np.prod(shape)) * dt.itemsize
  return out


def _notes(state: Any, micro: dict[Path, int]) -> list[str]:
  """Lines about wrappers that decide whether an update is applied."""
  notes = []

  def where(path: Path) -> str:
    return f" (at {'/'.join(path)})" if path else ""

  def visit(node, path):
    name = type(node).__name__
    if name == "SkipBadStepsState":
      spike = getattr(node, "log_norms", None) is not None
      notes.append(
        f"skip_bad_steps{where(path)}: an update whose gradients (or loss) are "
        "not finite"
        + (", or whose gradient norm is a spike," if spike else "")
        + " is skipped: zero updates, the inner state kept as it was."
      )
    elif isinstance(node, optax.ApplyIfFiniteState):
      notes.append(
        f"optax.apply_if_finite{where(path)}: an update whose gradients are not "
        "finite is skipped."
      )
    elif isinstance(node, optax.MultiStepsState):
      k = micro.get(path)
      every = f"every {k + 1} calls" if k is not None else "every k calls"
      notes.append(
        f"optax.MultiSteps{where(path)}: each row is an update of the "
        f"transformation it wraps, applied {every} (at this step) to the "
        "accumulated gradients; the calls between apply zero updates."
      )
    for key, _, child in children(node) or []:
      if not isinstance(child, jax.Array | np.ndarray):
        visit(child, (*path, key))

  visit(state, ())
  return notes


def describe(
  tx: optax.GradientTransformation, params: Any, *, step: int = 0
) -> Description:
  """What ``tx`` will do to each parameter of ``params``, before training.

  One row per parameter (leaf), in the params' leaf order, each a dict with:

  ``path``
    The parameter's path, as :func:`optaxtra.masks.paths` spells it (Flax
    ``Variable`` and metadata boxes looked through: ``dense/kernel``).
  ``shape``, ``dtype``
    The parameter's.
  ``trainable``
    False where every update is zero: frozen (:func:`optaxtra.with_frozen`,
    :func:`optax.transforms.freeze`, ``optax.set_to_zero`` in a partition),
    or a :func:`optaxtra.scale_by_path` multiplier of 0.
  ``learning_rate``
    The learning rate its update uses at ``step``, every multiplier included:
    the value recorded by the learning-rate stage (by rule for a
    :func:`optaxtra.by_path`, its ``learning_rate_scale`` included), times the
    :func:`optaxtra.scale_by_path` / :func:`optaxtra.layerwise_lr_decay`
    multipliers the update passes through; ``inject_hyperparams``'
    ``learning_rate`` where the optimizer it wraps records none. None where
    no stage on its way records a learning rate (no learning-rate stage, or
    one of Optax's own, such as ``optax.adam(1e-3)``'s, which keep none: wrap
    the factory in :func:`optax.inject_hyperparams` to see it).
  ``decay_rate``
    The share of the weight that weight decay removes at ``step``: ``r`` in
    ``p <- p - r * p``, the learning rate and every multiplier it passes
    through included (so a multiplier placed after the decay stage scales it,
    one placed before does not). 0.0 where no decay acts; NaN where the decay
    is added to the gradient and passes through an adaptive stage (L2 in
    Adam's gradient, ``optax.add_decayed_weights`` before ``optax.adam``),
    where no share per step is defined (the table says ``coupled``).
  ``weight_decay``
    True where a decay touches the parameter in one of three steps from
    ``step``: decoupled (:func:`optaxtra.add_decayed_weights_decoupled`,
    ``adamax_clipped``, :func:`optaxtra.adamw`, :func:`optax.adamw`) or
    coupled (:func:`optax.add_decayed_weights` before the optimizer), masks
    applied.
  ``lr_multiplier``
    The product of the :func:`optaxtra.scale_by_path` /
    :func:`optaxtra.layerwise_lr_decay` multipliers its update passes through
    at ``step``, 1.0 if none.
  ``group``
    Its label under ``optax.partition`` / ``multi_transform`` (and
    :func:`optaxtra.with_frozen`'s ``"trainable"`` / ``"frozen"``), labels of
    nested partitions joined by ``/``; else None.
  ``averaged``
    True where an :func:`optaxtra.average_params` in the optimizer averages
    it (what :func:`optaxtra.averaged_params` returns for it).
  ``state_bytes``
    The bytes of optimizer state kept for it (moments, averages, an
    accumulator), from :func:`jax.eval_shape` of ``tx.init`` on the real
    shapes: nothing is allocated. Buffers shared by every parameter (a count,
    ``scale_by_path``'s multipliers) are nobody's.
  ``b1``, ``b2``, ``eps``
    Present where a stage records them (``optax.inject_hyperparams``'
    hyperparameters, a stage's values by path): the value its update uses;
    None for a parameter no such stage (or more than one) covers.

  How it is found, without a training step on the real params: ``tx.init``
  runs on stand-ins (size-1 arrays of each leaf's ndim and dtype), and every
  count of updates in the state is set to ``step``: the counts that
  :func:`optaxtra.inspect` reports as ``count`` (every stage's, those of
  ``inject_hyperparams``' schedules, those inside wrappers), and the
  ``gradient_step`` of ``optax.MultiSteps``; counters of something else
  (declared ``counts_apart``) are left alone. ``trainable`` and
  ``weight_decay``: three jitted ``tx.update`` steps from there, a parameter
  is trainable if random
  gradients (at zero params) move it, decayed if nonzero params move it at
  zero gradients. ``decay_rate``: one update at zero gradients with every
  weight 1, then 2 (float32 for narrower floats): a decayed weight moves by
  ``-r`` and ``-2 r``. ``learning_rate``, ``lr_multiplier`` and ``b1``..
  ``eps``: read from the state that update returns, which records what it
  used (a value by rule is assigned to parameters as the stage assigns it,
  by the paths the stage sees: its partition group, or the leaves inside
  ``optax.masked``). ``group`` and the parameters each part of the state
  applies to: from the parameters a partition group or a masked stage keeps
  per-parameter state for (one group that keeps none takes the rest).
  An ``optax.MultiSteps`` (at the top or inside) is run so that every call
  applies its update: describe finds the micro-step at which it does (up to
  256 micro-steps) and describes the update of the transformation it wraps;
  the notes under the table say so, and name ``skip_bad_steps`` and
  ``optax.apply_if_finite`` wrappers.

  Limits: a multiplier kept in no state (``optax.scale(0.5)``) is not in
  ``learning_rate`` (it is in ``decay_rate`` where it scales the decay); a
  ``scale_by_path`` placed before an adaptive stage is counted although the
  adaptive stage divides most of it away; ``step_size`` of
  ``optaxtra.scale_by_schedule`` counts by its magnitude. A learning rate
  that is exactly 0 for the three steps makes every parameter look frozen,
  which raises rather than mislead; masks that depend on the parameters'
  sizes (not their paths or ndim) see size 1.

  Args:
    tx: the optimizer, e.g. ``optax.chain(...)``, or an
      :class:`optax.MultiSteps`.
    params: the parameters, or their shapes (``jax.ShapeDtypeStruct`` leaves).
    step: the number of updates done before the one described (Optax's
      ``count``): the row shows the update made after ``step`` updates, which
      uses ``schedule(step)``. An int in [0, 2**31 - 1].

  Returns:
    A :class:`Description`: ``print`` it for the table; ``.rows`` holds the
    dicts.

  Raises:
    TypeError: ``tx`` is not a transformation (e.g. the factory
      ``optax.adam`` rather than ``optax.adam(1e-3)``), or ``step`` is not an
      int.
    ValueError: where it cannot describe ``tx`` rightly: the optimizer fails
      on the stand-ins, every update is zero, several partition groups keep no
      per-parameter state, or a stage whose values it reads sits inside an
      ``optax.masked`` that keeps nothing per parameter.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"embed": jnp.zeros((10, 4)), "dense": {"kernel": jnp.zeros((4, 4)),
    ...           "bias": jnp.zeros(4)}}
    >>> tx = optaxtra.with_frozen(
    ...     optaxtra.adamax_clipped(1e-3, weight_decay=1e-2,
    ...         weight_decay_mask=optaxtra.masks.path_mask(exclude=["bias"])),
    ...     frozen="^embed")
    >>> print(optaxtra.describe(tx, params))
    path          shape  dtype    trainable     lr  decay  group      state_bytes
    ------------  -----  -------  ---------  -----  -----  ---------  -----------
    dense/bias    4      float32  yes        0.001      -  trainable           32
    dense/kernel  4x4    float32  yes        0.001  1e-05  trainable          128
    embed         10x4   float32  FROZEN         -      -  frozen               0
  """
  _check_tx(tx)
  step = _hyper.integer(_FN, "step", step)
  _optax_states.declare_optax_states()
  ps = _Params(params)
  runner = _Runner(tx, ps, step)
  try:
    state = runner.init(ps.stand_in("zeros"))
    runner.find_micro_steps(state, ps.stand_in("random", 5), ps.stand_in("zeros"))
    moved = _run(runner, "random", "zeros")
    decayed = _run(runner, "zeros", "random")
    rates, before, after = _decay_probe(runner)
  except ValueError as e:
    if str(e).startswith(f"{_FN}:"):
      raise
    raise _cannot_run(e, step) from e
  except Exception as e:  # what the optimizer raised, said with the context
    raise _cannot_run(e, step) from e
  if not any(moved):
    raise ValueError(
      f"{_FN}: no parameter moved in {_PROBE_STEPS} probe steps from step "
      f"{step} with random gradients, so describe cannot tell frozen "
      "parameters from a learning rate that is 0 there (a warmup from 0 moves "
      "them at the second step; one that stays 0 longer does not). Describe "
      "a later step (step=...), or the optimizer with a constant learning rate."
    )
  scopes = _scopes(before, ps)
  records = _in_rule_order(
    _inspect._walk(after, (), box_types(), ()), runner.init_records
  )
  multipliers = _multipliers(after, scopes, len(ps.paths))
  lrs = _learning_rates(records, scopes, ps.paths)
  betas = _hyperparameters(records, scopes, ps.paths)
  averaged = _averaged(before, ps)
  state_bytes = _state_bytes(jax.eval_shape(tx.init, params), ps)
  rows = []
  for i, (path, (shape, dt)) in enumerate(zip(ps.paths, ps.info, strict=True)):
    lr = lrs[i]
    row = {
      "path": path,
      "shape": shape,
      "dtype": str(dt),
      "trainable": bool(moved[i]) and multipliers[i] != 0,
      "learning_rate": None if lr is None else lr * multipliers[i],
      "decay_rate": rates[i],
      "weight_decay": bool(decayed[i]) or rates[i] != 0.0,
      "lr_multiplier": multipliers[i],
      "group": scopes.group[i],
      "averaged": averaged[i],
      "state_bytes": state_bytes[i],
    }
    for name, column in betas.items():
      row[name] = column[i]
    rows.append(row)
  return Description(rows, tuple(_notes(before, runner.last)), step)


def _cannot_run(e: Exception, step: int) -> ValueError:
  at = f" at step {step}" if step else ""
  return ValueError(
    f"{_FN}: could not run the optimizer on stand-ins of the params (size-1 "
    f"arrays of each leaf's ndim and dtype){at}: {type(e).__name__}: {e}. "
    "describe runs tx.init and tx.update steps on them; a transformation that "
    "needs extra arguments or real shapes cannot be described."
  )
