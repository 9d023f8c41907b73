"""Learning rates by parameter path: scale_by_path, layerwise_lr_decay."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core.dtypes import compute_dtype
from optaxtra._core.numerics import safe_increment
from optaxtra._core.paths import show
from optaxtra._core.patterns import _compile_one
from optaxtra._introspect.declare import inspectable
from optaxtra._learning_rate import _scalar
from optaxtra.masks._labels import _PathLabels
from optaxtra.masks._walk import _flatten

Multiplier = float | Callable[[jax.Array], Any]


@inspectable(values=["count"], trees=["multipliers"])
class ScaleByPathState(NamedTuple):
  """State of :func:`optaxtra.scale_by_path` and :func:`optaxtra.layerwise_lr_decay`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    multipliers: float32 vector, one entry per parameter leaf in the params'
      leaf order: the multiplier the most recent update applied to it (before
      the first update, the one the first update will apply). One array
      whatever the number of leaves, so it costs one state buffer;
      :func:`optaxtra.describe` reads it.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  multipliers: jax.Array


def _check_multiplier(fn: str, where: str, m: Any) -> None:
  if callable(m):
    return
  _checks.check_scalar(
    fn,
    where,
    m,
    low=0.0,
    high=None,
    fix="A multiplier scales a leaf's update: 1 leaves it, 0 freezes it.",
  )


def _value(fn: str, where: str, m: Multiplier, count: jax.Array) -> jax.Array:
  v = _scalar(fn, where, m(count) if callable(m) else m)
  if not _checks.is_traced(v) and not float(v) >= 0:
    at = "" if _checks.is_traced(count) else f" at step {int(count)}"
    raise ValueError(
      f"{fn}: {where}{at} is {float(v)!r}; a multiplier must be >= 0 (0 "
      "freezes the leaf)."
    )
  return v


def _by_leaf(
  fn: str, resolve: Callable[[Any], list[tuple[str, Multiplier]]]
) -> optax.GradientTransformation:
  """A stage multiplying each leaf's update by ``resolve(params)``'s multiplier.

  ``resolve`` gives, per leaf of the params (in leaf order), a description of
  where its multiplier came from (for messages) and the multiplier.
  """

  def values(rows, count):
    return [_value(fn, where, m, count) for where, m in rows]

  def record(vals):
    return jnp.stack([v.astype(jnp.float32) for v in vals]) if vals else jnp.zeros(0)

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    return ScaleByPathState(count, record(values(resolve(params), count)))

  def update_fn(updates, state, params=None):
    del params
    _checks.check_state(fn, state, ScaleByPathState)
    _checks.check_float_updates(fn, updates, complex_ok=True)
    rows = resolve(updates)
    if len(rows) != state.multipliers.shape[0]:
      raise ValueError(
        f"{fn}: the updates have {len(rows)} leaves but init was given params "
        f"with {state.multipliers.shape[0]}. Pass gradients with the params' "
        "structure."
      )
    vals = values(rows, state.count)
    leaves, treedef = jax.tree.flatten(updates)
    out = []
    for u, (_, m), v in zip(leaves, rows, vals, strict=True):
      if not callable(m) and float(m) == 0.0:
        out.append(jnp.zeros_like(u))  # frozen: exactly 0, even for inf or NaN
      elif not callable(m) and float(m) == 1.0:
        out.append(u)
      else:
        dt = compute_dtype(u, v)
        out.append((u.astype(dt) * v.astype(dt)).astype(u.dtype))
    new = ScaleByPathState(safe_increment(state.count), record(vals))
    return treedef.unflatten(out), new

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_path(
  multipliers: Mapping[str | re.Pattern, Multiplier],
  *,
  default: Multiplier | None = None,
  strict: bool = True,
) -> optax.GradientTransformation:
  """Multiplies each parameter's update by a multiplier chosen by its path.

  The counterpart of PyTorch's parameter groups with their own ``lr`` and of
  Keras' per-variable learning-rate multipliers, as one stage: place it after
  the optimizer (``optax.chain(optax.adam(1e-3), scale_by_path({...}))``), and
  each leaf's update is multiplied by the multiplier of the first pattern that
  matches its path (:func:`re.search`, paths as :func:`optaxtra.masks.paths`
  lists them), or by ``default``.

  A multiplier of 0 freezes the leaf: its update is exactly 0 (even where the
  optimizer's update is not finite). This stage wraps nothing, so the stages
  before it still keep their moments for a frozen leaf; to keep none, use
  :func:`optaxtra.with_frozen`. A schedule multiplier is evaluated at the
  update count, like every Optax schedule.

  Args:
    multipliers: an ordered mapping ``pattern -> multiplier`` (first match
      wins). A multiplier is a non-negative float or a schedule (int32 step ->
      non-negative scalar).
    default: the multiplier of the leaves no pattern matches; None makes an
      unmatched leaf an error listing its path.
    strict: whether every pattern must decide at least one leaf: a pattern
      matching no path, or only paths an earlier pattern took, raises
      ``ValueError`` saying which (as :func:`optaxtra.masks.path_labels`).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.ScaleByPathState`. The table of multipliers is checked at
    ``init``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"encoder": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
    >>> tx = optax.chain(
    ...     optax.sgd(0.1),
    ...     optaxtra.scale_by_path({"^encoder/": 0.1}, default=1.0))
    >>> state = tx.init(params)
    >>> updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state)
    >>> updates["encoder"]["w"], updates["head"]["w"]
    (Array([-0.01, -0.01], dtype=float32), Array([-0.1, -0.1], dtype=float32))
  """
  fn = "scale_by_path"
  _checks.check_flag(fn, "strict", strict)
  if not isinstance(multipliers, Mapping):
    raise TypeError(
      f"{fn}: multipliers must be a mapping pattern -> multiplier, e.g. "
      f"{{'^encoder/': 0.1}}, got {type(multipliers).__name__}."
    )
  if not multipliers and default is None:
    raise ValueError(
      f"{fn}: multipliers is empty and there is no default, so no leaf would "
      "get a multiplier. Pass e.g. {'^encoder/': 0.1}, default=1.0."
    )
  rules = []
  for pattern, m in multipliers.items():
    rx = _compile_one(fn, "multipliers", pattern)
    _check_multiplier(fn, f"multipliers[{rx.pattern!r}]", m)
    rules.append((rx, m))
  if default is not None:
    _check_multiplier(fn, "default", default)
  # Rule i's label is i, so equal multipliers of two rules stay two rules.
  labels = _PathLabels(
    tuple((rx, i) for i, (rx, _) in enumerate(rules)),
    None if default is None else -1,
    strict,
    fn=fn,
    hint="default=<multiplier> (e.g. default=1.0)",
  )

  def resolve(tree):
    found = jax.tree.leaves(labels(tree))
    return [
      ("default", default)
      if i == -1
      else (f"multipliers[{rules[i][0].pattern!r}]", rules[i][1])
      for i in found
    ]

  return _by_leaf(fn, resolve)  # pyright: ignore[reportArgumentType]


_LAYER = r"(?:^|/)(?:layers?|blocks?|encoderblock|h)[_./]?(\d+)(?:/|$)"
_EMBED = r"(?:^|/)(?:\w*embed\w*|cls|cls_token|pos_embed\w*|patch_embed\w*)(?:/|$)"


def layerwise_lr_decay(
  decay: float,
  num_layers: int,
  *,
  layer: str | re.Pattern = _LAYER,
  embed: str | re.Pattern | None = _EMBED,
  default: float = 1.0,
) -> optax.GradientTransformation:
  r"""Layer-wise learning-rate decay (BEiT, ELECTRA, timm's ``layer_decay``).

  A :func:`scale_by_path` whose multipliers come from the layer index in each
  path: a leaf in layer ``i`` (0-based, the first group of the ``layer``
  regex) gets ``decay ** (num_layers - i)``, a leaf matched by ``embed`` gets
  ``decay ** (num_layers + 1)``, and the rest (the head, final norms) get
  ``default``. That is timm's ``param_groups_layer_decay``, where the
  embeddings are layer 0, block ``i`` is layer ``i + 1`` and the head layer
  ``num_layers + 1``, each scaled by ``decay ** (layer_max - layer_id)``.

  The default ``layer`` regex finds ``layer_3``, ``layers/3``, ``layer/3``
  (Hugging Face's Flax BERT), ``blocks.3``, ``encoderblock_3`` (big_vision's
  ViT) and ``h/3`` (GPT-2) in a path; the default ``embed`` regex a path part
  containing ``embed`` (``embeddings``, ``pos_embedding``, ``patch_embed``) or
  named ``cls``. Check the table with :func:`optaxtra.describe`.

  Args:
    decay: the decay per layer, in (0, 1].
    num_layers: the number of layers (transformer blocks), >= 1.
    layer: a regex whose first group is the layer index.
    embed: a regex for the embedding leaves, or None for none.
    default: the multiplier of the other leaves (the head).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.ScaleByPathState`. ``init`` raises ``ValueError`` for a
    layer index outside ``[0, num_layers)``, for a path that both regexes
    match, and when ``layer`` matches no path.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optaxtra
    >>> params = {"embeddings": jnp.ones(1), "layer_0": {"w": jnp.ones(1)},
    ...           "layer_1": {"w": jnp.ones(1)}, "head": jnp.ones(1)}
    >>> state = optaxtra.layerwise_lr_decay(0.5, 2).init(params)
    >>> state.multipliers  # leaf order: embeddings, head, layer_0, layer_1
    Array([0.125, 1.   , 0.25 , 0.5  ], dtype=float32)

  References:
    Clark et al., `ELECTRA <https://arxiv.org/abs/2003.10555>`_, ICLR 2020;
    Bao et al., `BEiT <https://arxiv.org/abs/2106.08254>`_, ICLR 2022.
  """
  fn = "layerwise_lr_decay"
  _checks.check_scalar(fn, "decay", decay, low=0.0, low_open=True, high=1.0)
  if isinstance(decay, bool) or not 0 < float(decay) <= 1:
    raise ValueError(f"{fn}: decay must be in (0, 1], got {decay!r}.")
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f"{fn}: num_layers must be an int >= 1, got {num_layers!r}.")
  _check_multiplier(fn, "default", default)
  layer_rx = _compile_one(fn, "layer", layer)
  if layer_rx.groups < 1:
    raise ValueError(
      f"{fn}: the layer regex {layer_rx.pattern!r} has no group; its first group "
      r"must capture the layer index, e.g. r'layer_(\d+)'."
    )
  embed_rx = None if embed is None else _compile_one(fn, "embed", embed)
  decay = float(decay)

  def resolve(tree):
    entries, _ = _flatten(fn, tree)
    rows: list[tuple[str, Multiplier]] = []
    in_layers = 0
    for path, _, _ in entries:
      m = layer_rx.search(path)
      e = embed_rx.search(path) if embed_rx is not None else None
      if m and e:
        raise ValueError(
          f"{fn}: the path {path!r} is matched by both the layer regex and the "
          "embed regex; make one of them more specific."
        )
      if m:
        try:
          i = int(m.group(1))
        except (TypeError, ValueError):
          raise ValueError(
            f"{fn}: the layer regex's first group matched {m.group(1)!r} in "
            f"{path!r}, not an integer layer index."
          ) from None
        if not 0 <= i < num_layers:
          raise ValueError(
            f"{fn}: the path {path!r} is in layer {i}, outside [0, {num_layers}) "
            f"for num_layers={num_layers}. Pass the model's number of layers."
          )
        in_layers += 1
        rows.append((f"layer {i}", math.pow(decay, num_layers - i)))
      elif e:
        rows.append(("embeddings", math.pow(decay, num_layers + 1)))
      else:
        rows.append(("default", default))
    if entries and not in_layers:
      raise ValueError(
        f"{fn}: the layer regex {layer_rx.pattern!r} matches no path; the paths "
        f"are {show([p for p, _, _ in entries])}. Pass layer= a regex whose first "
        "group is the layer index in these paths."
      )
    return rows

  return _by_leaf(fn, resolve)
