"""What an optimizer will do to each parameter, before training: describe."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra._core.paths import path_str, show
from optaxtra._scale_by_path import ScaleByPathState

_FN = "describe"
_PROBE_STEPS = 3
# The table's headers, for the rows' keys path, shape, dtype, trainable,
# weight_decay, lr_multiplier, group, state_bytes.
_HEADERS = (
  "path",
  "shape",
  "dtype",
  "trainable",
  "decay",
  "lr_mult",
  "group",
  "state_bytes",
)


@dataclasses.dataclass(frozen=True)
class Description:
  """What :func:`describe` found: ``rows``, one dict per parameter; ``str()``
  is a table of them."""

  rows: list[dict[str, Any]]

  def __str__(self) -> str:
    cells: list[list[str]] = [list(_HEADERS)]
    for r in self.rows:
      cells.append(
        [
          r["path"] or "(root)",
          "x".join(str(d) for d in r["shape"]) or "()",
          r["dtype"],
          "yes" if r["trainable"] else "FROZEN",
          "yes" if r["weight_decay"] else "-",
          f"{r['lr_multiplier']:.4g}",
          "-" if r["group"] is None else str(r["group"]),
          f"{r['state_bytes']:,}",
        ]
      )
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADERS))]
    right = {"lr_mult", "state_bytes"}
    lines = []
    for n, row in enumerate(cells):
      parts = [
        c.rjust(w) if _HEADERS[i] in right else c.ljust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
      ]
      lines.append("  ".join(parts).rstrip())
      if n == 0:
        lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

  def __repr__(self) -> str:
    return f"Description({len(self.rows)} parameters)\n{self}"


def _stand_ins(params: Any, fill: str, seed: int) -> Any:
  """Small arrays in place of the params: each leaf's ndim and dtype, size 1."""
  rng = np.random.default_rng(seed)

  def leaf(p):
    shape = (1,) * np.ndim(p)
    dtype = jnp.result_type(p)
    if fill == "zeros" or not jnp.issubdtype(dtype, jnp.inexact):
      return jnp.zeros(shape, dtype)
    return jnp.asarray(rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape), dtype)

  return jax.tree.map(leaf, params)


def _run(tx: Any, params: Any, grads_fill: str, params_fill: str) -> list[bool]:
  """Per leaf: whether any probe step gave it a nonzero update."""
  p = _stand_ins(params, params_fill, 1)
  try:
    state = tx.init(p)
    update = jax.jit(tx.update)
    moved = [False] * len(jax.tree.leaves(p))
    for step in range(_PROBE_STEPS):
      g = _stand_ins(params, grads_fill, 10 + step)
      updates, state = update(g, state, p)
      for i, u in enumerate(jax.tree.leaves(updates)):
        moved[i] = moved[i] or bool(np.any(np.asarray(u) != 0))
  except Exception as e:
    raise ValueError(
      f"{_FN}: could not run the optimizer on stand-ins of the params (size-1 "
      f"arrays of each leaf's ndim and dtype): {type(e).__name__}: {e}. "
      "describe runs tx.init and three tx.update steps on them; a "
      "transformation that needs extra arguments or real shapes cannot be "
      "described."
    ) from e
  return moved


def _state_paths(state: Any) -> list[tuple[str, Any]]:
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return [(path_str(k), x) for k, x in flat]


def _children(node: Any) -> list[Any]:
  """The nodes one level below ``node`` in its tree; none for a leaf."""
  kids = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
  return [] if len(kids) == 1 and kids[0] is node else kids


def _owner(state_path: str, param_paths: list[str]) -> int | None:
  """The param whose path is the longest suffix of ``state_path``."""
  best, best_len = None, -1
  for i, p in enumerate(param_paths):
    if p and (state_path == p or state_path.endswith("/" + p)) and len(p) > best_len:
      best, best_len = i, len(p)
  return best


def _groups(abstract: Any, param_paths: list[str]) -> list[Any]:
  """Each param's group under a partition, from where its state lives."""
  found: dict[Any, set[int]] = {}
  labels: list[Any] = []

  def walk(node):
    if isinstance(node, optax.transforms.PartitionState):
      for label, inner in node.inner_states.items():
        labels.append(label)
        owned = found.setdefault(label, set())
        for sp, _ in _state_paths(inner):
          i = _owner(sp, param_paths)
          if i is not None:
            owned.add(i)
      return
    for kid in _children(node):
      walk(kid)

  walk(abstract)
  group: list[Any] = [None] * len(param_paths)
  if not labels:
    return group
  if len(set(labels)) != len(labels):
    raise ValueError(
      f"{_FN}: the optimizer has several partitions; describe reads one."
    )
  claimed: set[int] = set()
  for label in labels:
    for i in found[label]:
      if i in claimed:
        raise ValueError(f"{_FN}: {param_paths[i]!r} has state in two groups.")
      claimed.add(i)
      group[i] = label
  stateless = [label for label in labels if not found[label]]
  rest = [i for i in range(len(param_paths)) if i not in claimed]
  if rest and len(stateless) == 1:
    for i in rest:
      group[i] = stateless[0]
  elif rest:
    raise ValueError(
      f"{_FN}: cannot tell which of the groups {stateless!r} holds "
      f"{show([param_paths[i] for i in rest])}: those groups' transformations "
      "keep no per-parameter state, from which describe reads membership."
    )
  return group


def _multipliers(state: Any, groups: list[Any], n: int) -> list[float]:
  """The product of the scale_by_path multipliers each param passes through."""
  out = [1.0] * n

  def walk(node, group):
    if isinstance(node, ScaleByPathState):
      members = [i for i in range(n) if group is _ALL or groups[i] == group]
      m = np.asarray(node.multipliers, np.float64)
      if len(members) != m.shape[0]:
        raise ValueError(
          f"{_FN}: a scale_by_path stage sees {m.shape[0]} parameters, not the "
          f"{len(members)} describe expected there (is it inside optax.masked? "
          "describe reads scale_by_path at the top level or in a partition's "
          "group)."
        )
      for i, v in zip(members, m, strict=True):
        out[i] *= float(v)
      return
    if isinstance(node, optax.transforms.PartitionState):
      for label, inner in node.inner_states.items():
        walk(inner, label)
      return
    if isinstance(node, optax.MaskedState) and group is _ALL:
      if _has_path_scale(node):
        raise ValueError(
          f"{_FN}: scale_by_path inside optax.masked is not supported; put it "
          "outside the mask (a multiplier of 1 leaves a leaf as it is)."
        )
      return
    for kid in _children(node):
      walk(kid, group)

  walk(state, _ALL)
  return out


_ALL = object()


def _has_path_scale(node: Any) -> bool:
  leaves = jax.tree.leaves(node, is_leaf=lambda x: isinstance(x, ScaleByPathState))
  return any(isinstance(x, ScaleByPathState) for x in leaves)


def describe(tx: optax.GradientTransformation, params: Any) -> Description:
  """What ``tx`` will do to each parameter of ``params``, before training.

  One row per parameter (leaf), in the params' leaf order, with ``path``,
  ``shape``, ``dtype``, and:

  ``trainable``
    False where every update is zero: frozen (:func:`optaxtra.with_frozen`,
    :func:`optax.transforms.freeze`, ``optax.set_to_zero`` in a partition),
    or a :func:`optaxtra.scale_by_path` multiplier of 0.
  ``weight_decay``
    True where a decay touches the parameter: decoupled
    (:func:`optaxtra.add_decayed_weights_decoupled`, ``adamax_clipped``,
    :func:`optax.adamw`) or coupled (:func:`optax.add_decayed_weights` before
    the optimizer), masks applied.
  ``lr_multiplier``
    The product of the :func:`optaxtra.scale_by_path` /
    :func:`optaxtra.layerwise_lr_decay` multipliers its update passes through
    (their first-step values), 1.0 if none: its update's scale relative to the
    same optimizer without them.
  ``group``
    Its label under ``optax.partition`` / ``multi_transform`` (and
    :func:`optaxtra.with_frozen`'s ``"trainable"`` / ``"frozen"``), else None.
  ``state_bytes``
    The bytes of optimizer state kept for it (moments, averages), from
    :func:`jax.eval_shape` of ``tx.init`` on the real shapes: nothing is
    allocated.

  How it is found, without a training step on the real params:
  ``trainable`` and ``weight_decay`` by running ``tx.init`` and three jitted
  ``tx.update`` steps on stand-ins (size-1 arrays of each leaf's ndim and
  dtype): a parameter is trainable if random gradients (at zero params) move
  it at one of the steps, decayed if nonzero params move it at zero gradients.
  ``lr_multiplier`` and ``group`` are read from the state, ``state_bytes``
  from its shapes (a state array belongs to the parameter whose path ends its
  path in the state). Limits: a learning rate that is exactly 0 for the first
  three steps makes every parameter look frozen, which raises rather than
  mislead; masks that depend on the parameters' sizes (not their paths or
  ndim) see size 1.

  Args:
    tx: the optimizer, e.g. ``optax.chain(...)``.
    params: the parameters, or their shapes (``jax.ShapeDtypeStruct`` leaves).

  Returns:
    A :class:`Description`: ``print`` it for the table; ``.rows`` holds the
    dicts.

  Raises:
    ValueError: where it cannot describe ``tx`` rightly: the optimizer fails
      on the stand-ins, every update is zero, several partition groups keep no
      per-parameter state, or a ``scale_by_path`` sits inside ``optax.masked``.

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
    path          shape  dtype    trainable  decay  lr_mult  group      state_bytes
    ------------  -----  -------  ---------  -----  -------  ---------  -----------
    dense/bias    4      float32  yes        -            1  trainable           32
    dense/kernel  4x4    float32  yes        yes          1  trainable          128
    embed         10x4   float32  FROZEN     -            1  frozen               0
  """
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  if not leaves_with_paths:
    raise ValueError(f"{_FN}: params has no leaves; pass the model's parameters.")
  paths = [path_str(k) for k, _ in leaves_with_paths]
  leaves = [x for _, x in leaves_with_paths]
  concrete = jax.tree.map(
    lambda x: jnp.zeros((1,) * len(x.shape), x.dtype) if hasattr(x, "shape") else x,
    params,
  )
  moved = _run(tx, concrete, "random", "zeros")
  if not any(moved):
    raise ValueError(
      f"{_FN}: no parameter moved in {_PROBE_STEPS} probe steps with random "
      "gradients, so describe cannot tell frozen parameters from a learning "
      "rate that starts at 0 (a warmup from 0 moves them at the second step; "
      "one that stays 0 longer does not). Describe the optimizer with a "
      "constant learning rate instead."
    )
  decayed = _run(tx, concrete, "zeros", "random")
  abstract = jax.eval_shape(tx.init, params)
  groups = _groups(abstract, paths)
  multipliers = _multipliers(
    tx.init(_stand_ins(concrete, "zeros", 0)), groups, len(paths)
  )
  state_bytes = [0] * len(paths)
  for sp, x in _state_paths(abstract):
    i = _owner(sp, paths)
    if i is not None and hasattr(x, "shape"):
      state_bytes[i] += int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
  rows = []
  for i, (p, x) in enumerate(zip(paths, leaves, strict=True)):
    rows.append(
      {
        "path": p,
        "shape": tuple(int(d) for d in np.shape(x)),
        "dtype": str(jnp.result_type(x)),
        "trainable": bool(moved[i]) and multipliers[i] != 0,
        "weight_decay": bool(decayed[i]),
        "lr_multiplier": multipliers[i],
        "group": groups[i],
        "state_bytes": state_bytes[i],
      }
    )
  return Description(rows)
