"""Learning rates by parameter path: scale_by_path, layerwise_lr_decay.

Both are one stage: each parameter's update is multiplied by the multiplier its
path gives it. Paths come from the one path walker (``_core.paths.walk``), so
the stage works where Optax hides some parameters from it (``optax.masked``,
a group of ``optax.partition``, :func:`optaxtra.with_frozen`): a hidden
parameter keeps its path, is seen by the strictness checks, and gets no
multiplier. Every multiplier goes through the hyperparameter resolver
(``_core.hyper``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra._core import checks as _checks
from optaxtra._core import hyper
from optaxtra._core.dtypes import compute_dtype
from optaxtra._core.dtypes import zeros_like as _zeros_like
from optaxtra._core.numerics import safe_increment
from optaxtra._core.paths import Entry, rebuild, show, walk
from optaxtra._core.patterns import _compile_one
from optaxtra._introspect.declare import inspectable

Multiplier = float | Callable[[jax.Array], Any]

_CACHE_SIZE = 16  # tree structures whose assignment a stage remembers
_FIX = "A multiplier scales a leaf's update: 1 leaves it, 0 freezes it."


@inspectable(values=["count"], trees=["multipliers"])
class ScaleByPathState(NamedTuple):
  """State of :func:`optaxtra.scale_by_path` and :func:`optaxtra.layerwise_lr_decay`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    multipliers: float32 vector, one entry per parameter leaf the stage sees
      (in the params' leaf order; leaves hidden by an enclosing
      ``optax.masked`` or ``optax.partition`` group are left out): the
      multiplier the most recent update applied to it (before the first
      update, the one the first update will apply). One array whatever the
      number of leaves, so it costs one state buffer;
      :func:`optaxtra.describe` reads it.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  multipliers: jax.Array


# --- The stage -------------------------------------------------------------------

# Given the entries of a tree (masked ones included), the Hyper of each entry
# (None for a masked entry). Raises ValueError for a table that does not fit.
Assign = Callable[[list[Entry]], list[hyper.Hyper | None]]


def _stage(fn: str, assign: Assign) -> optax.GradientTransformation:
  """A stage multiplying each leaf's update by the multiplier ``assign`` gives it.

  The multiplier of a leaf is found from its own path, in the tree the stage
  is given (params at ``init``, updates at ``update``), so hidden leaves
  (:class:`optax.MaskedNode`) and Flax boxes need no pairing by position.
  Each distinct multiplier is evaluated once per step.
  """
  cache: dict[tuple[tuple[str, bool], ...], list[hyper.Hyper | None]] = {}

  def resolve(tree):
    entries, treedef = walk(tree)
    key = tuple((e.path, e.masked) for e in entries)
    hypers = cache.get(key)
    if hypers is None:
      hypers = assign(entries)
      if len(cache) >= _CACHE_SIZE:
        cache.clear()
      cache[key] = hypers
    return entries, treedef, hypers

  def values(seen: list[hyper.Hyper], count):
    """Each seen leaf's multiplier at ``count`` (checked), and their record."""
    slot: dict[int, int] = {}
    distinct: list[hyper.Hyper] = []
    for h in seen:
      if id(h) not in slot:
        slot[id(h)] = len(distinct)
        distinct.append(h)
    vals = [h(count) for h in distinct]  # each evaluated once
    if not vals:
      return [], jnp.zeros(0, jnp.float32)
    where = [slot[id(h)] for h in seen]
    table = jnp.stack([v.astype(jnp.float32) for v in vals])
    return [vals[i] for i in where], table[np.asarray(where, np.int32)]

  def init_fn(params):
    entries, _, hypers = resolve(params)
    count = jnp.zeros([], jnp.int32)
    _, record = values(_seen(entries, hypers), count)
    return ScaleByPathState(count, record)

  def update_fn(updates, state, params=None):
    del params
    _checks.check_state(fn, state, ScaleByPathState)
    _checks.check_float_updates(fn, updates, complex_ok=True)
    entries, treedef, hypers = resolve(updates)
    seen = _seen(entries, hypers)
    if len(seen) != state.multipliers.shape[0]:
      raise ValueError(
        f"{fn}: the updates have {len(seen)} leaves but init was given params "
        f"with {state.multipliers.shape[0]}. Pass gradients with the params' "
        "structure."
      )
    vals, record = values(seen, state.count)
    scaled = iter(zip(seen, vals, strict=True))
    out: list[Any] = []
    for e in entries:
      if e.masked:
        out.append(None)  # rebuild keeps the MaskedNode
        continue
      h, v = next(scaled)
      u = e.value
      if h.constant == 0.0:
        out.append(_zeros_like(u))  # frozen: exactly 0, even for inf or NaN
      elif h.constant == 1.0:
        out.append(u)
      else:
        dt = compute_dtype(u, v)
        out.append((u.astype(dt) * v.astype(dt)).astype(u.dtype))
    new = ScaleByPathState(safe_increment(state.count), record)
    return rebuild(entries, treedef, out), new

  return optax.GradientTransformation(init_fn, update_fn)


def _seen(entries: list[Entry], hypers: list[hyper.Hyper | None]) -> list[hyper.Hyper]:
  """The multipliers of the leaves the stage sees (not masked), in leaf order."""
  out = []
  for e, h in zip(entries, hypers, strict=True):
    if not e.masked:
      assert h is not None, e.path  # assign gives every seen leaf a multiplier
      out.append(h)
  return out


# --- scale_by_path ---------------------------------------------------------------

_NO_DEFAULT = object()  # stands for default=None in the rule checks


def _rules(
  fn: str, multipliers: Any, default: Any
) -> tuple[hyper.ByPath, hyper.PathHyper]:
  if isinstance(multipliers, hyper.ByPath):
    if default is not None:
      raise TypeError(
        f"{fn}: multipliers is a by_path, which carries its own default; pass "
        "default= to by_path, not here."
      )
    table = multipliers
  elif isinstance(multipliers, Mapping) or (
    isinstance(multipliers, Iterable)
    and not isinstance(multipliers, str | bytes | re.Pattern)
  ):
    if not multipliers and default is None:
      raise ValueError(
        f"{fn}: multipliers is empty and there is no default, so no leaf would "
        "get a multiplier. Pass e.g. {'^encoder/': 0.1}, default=1.0."
      )
    if not multipliers:  # everything takes the default
      table = hyper.ByPath((), default)
      return table, hyper.resolve_by_path(
        fn, "multipliers", table, low=0.0, fix=_FIX, min_float32=False
      )
    items = multipliers.items() if isinstance(multipliers, Mapping) else multipliers
    pairs = []
    for item in items:
      if not (isinstance(item, tuple | list) and len(item) == 2):
        raise TypeError(
          f"{fn}: multipliers given as a sequence must hold (pattern, multiplier) "
          f"pairs, got {item!r}."
        )
      pattern, m = item
      rx = _compile_one(fn, "multipliers", pattern)
      if isinstance(pattern, re.Pattern) and rx.flags != re.compile(rx.pattern).flags:
        raise ValueError(
          f"{fn}: the pattern {rx.pattern!r} was compiled with flags, which "
          "paths are not matched with; write them inline, e.g. '(?i)bias'."
        )
      pairs.append((rx.pattern, m))
    table = hyper.by_path(pairs, default=default)
  else:
    raise TypeError(
      f"{fn}: multipliers must be a mapping pattern -> multiplier, e.g. "
      f"{{'^encoder/': 0.1}}, got {type(multipliers).__name__}."
    )
  return table, hyper.resolve_by_path(
    fn, "multipliers", table, low=0.0, fix=_FIX, min_float32=False
  )


def scale_by_path(
  multipliers: Mapping[str | re.Pattern, Multiplier]
  | Iterable[tuple[str | re.Pattern, Multiplier]]
  | hyper.ByPath,
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

  Every multiplier is checked as optaxtra checks any hyperparameter: a number
  must be finite and >= 0 in float32, the precision it is used in (``1e39``
  is refused: it is ``inf`` there); a schedule's value is checked at each step
  (at ``init`` for step 0), and a bad one raises ``ValueError`` naming the
  rule and the step. Under ``jax.jit`` a schedule's value is traced and
  cannot be checked: one that is negative or not finite becomes NaN, so the
  updates it scales are NaN (visibly), never a silently reversed or frozen
  parameter.

  Inside ``optax.masked``, an ``optax.partition`` group or
  :func:`optaxtra.with_frozen`, the parameters hidden from the stage keep
  their paths: the rules are checked against every path (so one table can
  serve a whole model), and only the parameters the stage sees need a
  multiplier.

  Args:
    multipliers: an ordered mapping ``pattern -> multiplier`` (first match
      wins), a list of ``(pattern, multiplier)`` pairs, or an
      :func:`optaxtra.by_path` (which carries its own default). A multiplier
      is a non-negative float or a schedule (int32 step -> non-negative
      scalar).
    default: the multiplier of the leaves no pattern matches; None makes an
      unmatched leaf an error listing its path.
    strict: whether every pattern must decide at least one leaf: a pattern
      matching no path, or only paths an earlier pattern took, raises
      ``ValueError`` saying which (as :func:`optaxtra.by_path`).

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
    >>> optaxtra.scale_by_path({"^encoder/": lambda n: 1e39}, default=1.0).init(
    ...     params)
    Traceback (most recent call last):
    ...
    ValueError: scale_by_path: multipliers[^encoder/] is inf at step 0; ...
  """
  fn = "scale_by_path"
  hyper.flag(fn, "strict", strict)
  table, resolved = _rules(fn, multipliers, default)
  rule_hypers = resolved.hypers[: len(table.rules)]
  default_hyper = resolved.hypers[-1] if table.default is not None else None
  compiled = [re.compile(p) for p, _ in table.rules]
  checker = (
    table
    if table.default is not None
    else hyper.ByPath(table.rules, default=_NO_DEFAULT)
  )
  n = len(table.rules)

  def assign(entries: list[Entry]) -> list[hyper.Hyper | None]:
    all_paths = [e.path for e in entries]
    if strict and n:
      # Every path the stage can see, hidden ones included, for the rules.
      idx = checker.assign(fn, "multipliers", all_paths)
    else:
      idx = [
        next((i for i, rx in enumerate(compiled) if rx.search(p)), n) for p in all_paths
      ]
    unmatched = [
      e.path for e, i in zip(entries, idx, strict=True) if i == n and not e.masked
    ]
    if unmatched and default_hyper is None:
      raise ValueError(
        f"{fn}: multipliers has no rule for {len(unmatched)} parameter(s): "
        f"{show(unmatched, 10)}. Add a rule that matches "
        "them, or pass default=<multiplier> (e.g. default=1.0); the rules were "
        f"{[p for p, _ in table.rules]}."
      )
    return [
      None if e.masked else (default_hyper if i == n else rule_hypers[i])
      for e, i in zip(entries, idx, strict=True)
    ]

  return _stage(fn, assign)


# --- layerwise_lr_decay ----------------------------------------------------------

# A path part naming a transformer layer, then its index: layers/3, layer_3,
# blocks.3, Block_3 (linen's automatic name), encoderblock_3 (big_vision),
# EncoderBlock_3, TransformerLayer_3, resblocks/3 (CLIP), h/3 (GPT-2).
# MlpBlock_0, Dense_3, Embed_0 and LayerNorm_0 are not layers.
LAYER = (
  r"(?:^|[/.])(?:(?i:(?:encoder|decoder|transformer|res)?_?(?:layers?|blocks?)"
  r"|encoder1dblock)|h)[_./]?(\d+)(?:[/.]|$)"
)
# A path part containing "embed" (embeddings, pos_embedding, patch_embed,
# Embed_0, wte/embedding), but not "unembed", or a class / mask token leaf.
EMBED = r"(?:^|[/.])(?:(?i:(?!un)\w*embed\w*)(?:[/.]|$)|(?:cls|cls_token|mask_token)$)"
# timm's ViT final norm: ``norm`` at the root (``norm.weight``, ``norm.bias``).
FINAL_NORM = r"^norm(?:[/.]|$)"


class _Regex(NamedTuple):
  name: str  # the argument
  rx: re.Pattern
  strict: bool  # given by the user: must decide some path


def layerwise_lr_decay(
  decay: float | Callable[[jax.Array], Any],
  num_layers: int,
  *,
  layer: str | re.Pattern = LAYER,
  embed: str | re.Pattern | None = EMBED,
  default: Multiplier = 1.0,
  final_norm: str | re.Pattern | None = FINAL_NORM,
) -> optax.GradientTransformation:
  r"""Layer-wise learning-rate decay (BEiT, ELECTRA, timm's ``layer_decay``).

  A :func:`scale_by_path` whose multipliers come from the layer index in each
  path: with ``L = num_layers``, a leaf in layer ``i`` (0-based, the first
  group of the ``layer`` regex) gets ``decay ** (L - i)``, a leaf matched by
  ``embed`` gets ``decay ** (L + 1)``, a final norm matched by ``final_norm``
  is grouped with the last layer (``decay ** 1``), and the rest (the head)
  get ``default``. Place it after the optimizer, as a learning-rate
  multiplier: ``optax.chain(optax.adamw(...), layerwise_lr_decay(0.75, 12))``
  scales a leaf's whole update, its decoupled weight decay included, as
  PyTorch does with a param group's ``lr``.

  These are the scales of BEiT, MAE and timm's ``param_groups_layer_decay``
  (the embeddings are their layer 0, block ``i`` their layer ``i + 1``, the
  head the last), each ``decay ** (layer_max - layer_id)``. Their own
  ``num_layers`` counts differently: BEiT's ``get_num_layers()`` is the
  number of blocks, as here; MAE's recipe passes ``len(blocks) + 1``; timm
  computes the number of groups it finds (embeddings, blocks, head:
  ``len(blocks) + 2``; without head parameters one fewer, which shifts all
  its scales by a factor of ``decay``). Here ``num_layers`` is always the
  number of blocks,
  and it is checked against the paths: it must be the highest layer index
  found plus one, since every multiplier depends on it and a miscount would
  shift them all by a factor of ``decay``. Fewer is refused too (a layer
  index of ``num_layers`` or more would get a multiplier above 1). Gaps are
  allowed: the index is the position in the path, so ``nnx.Sequential``'s
  parameterless slots still count.

  Which leaf is what, by default:

  * ``layer`` finds a path part naming a layer then its index: ``layers/3``,
    ``layer_3``, ``layer/3`` (Hugging Face's Flax BERT), ``blocks/3`` (timm,
    nnx lists), ``Block_3`` (linen's automatic name), ``encoderblock_3``
    (big_vision's ViT), ``EncoderBlock_3``, ``resblocks/3`` (CLIP), ``h/3``
    (GPT-2). Names such as ``Dense_3``, ``Embed_0``, ``MlpBlock_0`` or
    ``LayerNorm_0`` are not layers.
  * ``embed`` finds a path part containing ``embed`` (``embeddings``,
    ``pos_embedding``, ``patch_embed``, ``Embed_0``, ``wte/embedding``; not
    ``unembed``) or a ``cls``, ``cls_token`` or ``mask_token`` leaf.
  * ``final_norm`` finds a norm named exactly ``norm`` at the root of the
    tree, timm's ViT final norm, which timm groups with the last block. Other
    final norms (big_vision's ``encoder_norm``, GPT-2's ``ln_f``, T5's
    ``final_layer_norm``, ``layer_norm``) take ``default``, as BEiT, MAE and
    the BERT and GPT-2 recipes do; pass ``final_norm=`` a regex naming them
    to group them with the last block instead, or None to group none. (timm's
    own ViT matcher, ``^norm``, also takes a ``norm_pre`` at the root:
    ``final_norm=r"^norm"`` reproduces that.)

  When several of ``layer``, ``final_norm`` and ``embed`` match a path, the
  one that matches nearest the root decides (a relative-position embedding
  inside layer 3 is in layer 3). Inside ``optax.masked``, an
  ``optax.partition`` group or :func:`optaxtra.with_frozen`, the hidden
  parameters still count for the layer numbering. Layers stacked into one
  array (``nn.scan``) have no index in their path and cannot be decayed
  layer by layer this way. Check the table with :func:`optaxtra.describe`
  (its ``lr_mult`` column) or, as below, from the state.

  Args:
    decay: the decay per layer, in (0, 1] (1 changes nothing): a number, or
      a schedule ``count -> decay``. Through ``optax.inject_hyperparams``
      (with ``num_layers`` in ``static_args``) it is traced: a value outside
      (0, 1] then makes the updates it scales NaN rather than raise.
    num_layers: the number of layers (transformer blocks): the highest layer
      index in the paths plus one. A Python or NumPy int.
    layer: a regex whose first group is the layer index.
    embed: a regex for the embedding leaves, or None for none.
    default: the multiplier of the other leaves (the head): a non-negative
      number or a schedule.
    final_norm: a regex naming the final norms grouped with the last layer,
      or None for none.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.ScaleByPathState`. ``init`` raises ``ValueError`` when
    ``layer`` matches no path, when ``num_layers`` is not the number of
    layers found, and when an ``embed`` or ``final_norm`` regex you gave
    decides no path.

  Examples:
    A helper prints the table: each path and its multiplier. With
    ``decay=0.5`` the multipliers are powers of 2.

    >>> import jax.numpy as jnp
    >>> import optaxtra
    >>> def tree(*paths):  # a params tree from path strings
    ...   out = {}
    ...   for p in paths:
    ...     *parents, leaf = p.split("/")
    ...     node = out
    ...     for k in parents:
    ...       node = node.setdefault(k, {})
    ...     node[leaf] = jnp.zeros(1)
    ...   return out
    >>> def table(tx, params):
    ...   state = tx.init(params)
    ...   for p, m in zip(optaxtra.masks.paths(params), state.multipliers):
    ...     print(f"{p:48} {float(m):g}")

    A ViT as timm names it: the final ``norm`` goes with the last block.

    >>> vit = tree("cls_token", "pos_embed", "patch_embed/proj/kernel",
    ...            "blocks/0/norm1/scale", "blocks/0/attn/qkv/kernel",
    ...            "blocks/1/norm1/scale", "blocks/1/attn/qkv/kernel",
    ...            "norm/scale", "head/kernel")
    >>> table(optaxtra.layerwise_lr_decay(0.5, 2), vit)
    blocks/0/attn/qkv/kernel                         0.25
    blocks/0/norm1/scale                             0.25
    blocks/1/attn/qkv/kernel                         0.5
    blocks/1/norm1/scale                             0.5
    cls_token                                        0.125
    head/kernel                                      1
    norm/scale                                       0.5
    patch_embed/proj/kernel                          0.125
    pos_embed                                        0.125

    A BERT as Hugging Face's Flax BERT names it: the pooler is in the head.

    >>> bert = tree("bert/embeddings/word_embeddings/embedding",
    ...             "bert/embeddings/LayerNorm/scale",
    ...             "bert/encoder/layer/0/attention/self/query/kernel",
    ...             "bert/encoder/layer/1/attention/self/query/kernel",
    ...             "bert/pooler/dense/kernel", "classifier/kernel")
    >>> table(optaxtra.layerwise_lr_decay(0.5, 2), bert)
    bert/embeddings/LayerNorm/scale                  0.125
    bert/embeddings/word_embeddings/embedding        0.125
    bert/encoder/layer/0/attention/self/query/kernel 0.25
    bert/encoder/layer/1/attention/self/query/kernel 0.5
    bert/pooler/dense/kernel                         1
    classifier/kernel                                1

    A GPT-2: its final norm ``ln_f`` takes ``default``, unless named.

    >>> gpt2 = tree("transformer/wte/embedding", "transformer/wpe/embedding",
    ...             "transformer/h/0/ln_1/scale", "transformer/h/0/attn/c_attn/kernel",
    ...             "transformer/h/1/ln_1/scale", "transformer/h/1/attn/c_attn/kernel",
    ...             "transformer/ln_f/scale")
    >>> table(optaxtra.layerwise_lr_decay(0.5, 2), gpt2)
    transformer/h/0/attn/c_attn/kernel               0.25
    transformer/h/0/ln_1/scale                       0.25
    transformer/h/1/attn/c_attn/kernel               0.5
    transformer/h/1/ln_1/scale                       0.5
    transformer/ln_f/scale                           1
    transformer/wpe/embedding                        0.125
    transformer/wte/embedding                        0.125
    >>> table(optaxtra.layerwise_lr_decay(0.5, 2, final_norm="/ln_f/"), gpt2)
    transformer/h/0/attn/c_attn/kernel               0.25
    ...
    transformer/ln_f/scale                           0.5
    ...

    ``num_layers`` is the number of blocks; timm's own count is refused:

    >>> optaxtra.layerwise_lr_decay(0.5, 4).init(vit)
    Traceback (most recent call last):
    ...
    ValueError: layerwise_lr_decay: num_layers=4, but the highest layer index in
    the paths is 1 ('blocks/1/attn/qkv/kernel'), so the model has 2 layers (0 to
    1). Pass num_layers=2, the number of blocks...

  References:
    Clark et al., `ELECTRA <https://arxiv.org/abs/2003.10555>`_, ICLR 2020;
    Bao et al., `BEiT <https://arxiv.org/abs/2106.08254>`_, ICLR 2022;
    He et al., `Masked Autoencoders <https://arxiv.org/abs/2111.06377>`_,
    CVPR 2022.
  """
  fn = "layerwise_lr_decay"
  n_layers = hyper.integer(
    fn,
    "num_layers",
    num_layers,
    low=1,
    fix="It is the number of layers (transformer blocks); with "
    "optax.inject_hyperparams, list it in static_args.",
  )
  decay_h = hyper.resolve(
    fn,
    "decay",
    decay,
    low=0.0,
    low_open=True,
    high=1.0,
    high_open=False,
    fix="It is the factor per layer: 1 changes nothing.",
  )
  default_h = hyper.resolve(fn, "default", default, low=0.0, fix=_FIX)
  layer_rx = _compile_one(fn, "layer", layer)
  if layer_rx.groups < 1:
    raise ValueError(
      f"{fn}: the layer regex {layer_rx.pattern!r} has no group; its first group "
      r"must capture the layer index, e.g. r'layer_(\d+)'."
    )
  others: list[_Regex] = []
  for name, given, default_rx in (
    ("final_norm", final_norm, FINAL_NORM),
    ("embed", embed, EMBED),
  ):
    if given is not None:
      rx = _compile_one(fn, name, given)
      others.append(_Regex(name, rx, strict=rx.pattern != default_rx))

  def multiplier(what: str, power: int) -> hyper.Hyper:
    """The checked multiplier ``decay ** power``, named for messages."""
    name = f"the multiplier of {what} (decay ** {power})"
    fix = (
      "It is smaller than float32 holds: use a larger decay, or freeze these "
      "parameters instead (optaxtra.with_frozen)."
    )
    if decay_h.constant is not None:
      return hyper.resolve(
        fn, name, decay_h.constant**power, low=0.0, low_open=True, fix=fix
      )
    return hyper.resolve(
      fn, name, lambda n: decay_h(n) ** power, low=0.0, low_open=True, fix=fix
    )

  # The smallest multiplier, checked now: a larger decay ** k is fine if it is.
  embed_h = multiplier("the embeddings", n_layers + 1)
  layer_hypers: dict[int, hyper.Hyper] = {}

  def in_layer(i: int) -> hyper.Hyper:
    if i not in layer_hypers:
      layer_hypers[i] = multiplier(f"layer {i}", n_layers - i)
    return layer_hypers[i]

  def classify(path: str) -> tuple[str, int]:
    """``("layer", i)``, ``("final_norm", -1)``, ``("embed", -1)`` or default."""
    hits: list[tuple[int, str, int]] = []
    m = layer_rx.search(path)
    if m is not None:
      try:
        i = int(m.group(1))
      except (TypeError, ValueError):
        raise ValueError(
          f"{fn}: the layer regex's first group matched {m.group(1)!r} in "
          f"{path!r}, not an integer layer index."
        ) from None
      hits.append((m.start(), "layer", i))
    for r in others:
      o = r.rx.search(path)
      if o is not None:
        hits.append((o.start(), r.name, -1))
    if not hits:
      return "default", -1
    hits.sort(key=lambda h: h[0])
    if len(hits) > 1 and hits[0][0] == hits[1][0]:
      raise ValueError(
        f"{fn}: the path {path!r} is matched at the same place by the "
        f"{hits[0][1]} and the {hits[1][1]} regexes; make one of them more "
        "specific."
      )
    return hits[0][1], hits[0][2]

  def assign(entries: list[Entry]) -> list[hyper.Hyper | None]:
    kinds = [classify(e.path) for e in entries]
    layers = [
      (i, e.path) for e, (k, i) in zip(entries, kinds, strict=True) if k == "layer"
    ]
    if entries and not layers:
      raise ValueError(
        f"{fn}: the layer regex {layer_rx.pattern!r} matches no path; the paths "
        f"are {show([e.path for e in entries])}. Pass layer= a regex whose first "
        "group is the layer index in these paths (layers stacked into one array "
        "by nn.scan have no index in their path)."
      )
    _check_num_layers(fn, n_layers, layers)
    for r in others:
      if not r.strict:
        continue
      if not any(r.rx.search(e.path) for e in entries):
        raise ValueError(
          f"{fn}: the {r.name} regex {r.rx.pattern!r} matches no path; the paths "
          f"are {show([e.path for e in entries])}. Fix it, or pass {r.name}=None."
        )
      if not any(k == r.name for k, _ in kinds):
        raise ValueError(
          f"{fn}: every path the {r.name} regex {r.rx.pattern!r} matches is "
          "decided by a regex that matches nearer the root (e.g. it is inside a "
          "layer); make it more specific."
        )
    out: list[hyper.Hyper | None] = []
    for e, (k, i) in zip(entries, kinds, strict=True):
      if e.masked:
        out.append(None)
      elif k == "layer":
        out.append(in_layer(i))
      elif k == "final_norm":
        out.append(in_layer(n_layers - 1))
      elif k == "embed":
        out.append(embed_h)
      else:
        out.append(default_h)
    return out

  return _stage(fn, assign)


def _check_num_layers(fn: str, num_layers: int, layers: Sequence[tuple[int, str]]):
  """``num_layers`` must be the highest layer index found plus one."""
  if not layers:
    return
  top = max(i for i, _ in layers)
  top_path = next(p for i, p in layers if i == top)
  if num_layers == top + 1:
    return
  found = sorted({i for i, _ in layers})
  gaps = ""
  if len(found) != top + 1:
    gaps = (
      f" (layer indices found: {', '.join(map(str, found[:12]))}"
      f"{', ...' if len(found) > 12 else ''}; the index is the position in the "
      "path, so a layer without parameters still counts)"
    )
  if num_layers > top + 1:
    raise ValueError(
      f"{fn}: num_layers={num_layers}, but the highest layer index in the paths "
      f"is {top} ({top_path!r}), so the model has {top + 1} layers (0 to {top})"
      f"{gaps}. Pass num_layers={top + 1}, the number of blocks: every "
      "multiplier is decay ** (num_layers - i), so a wrong count shifts them all. "
      "(timm's param_groups_layer_decay counts the embeddings and the head as "
      "groups too, and MAE's recipe passes len(blocks) + 1; here it is "
      "len(blocks), as BEiT's get_num_layers().) If the layer regex misses some "
      "layers, pass layer= a regex that finds them (optaxtra.masks.paths(params) "
      "lists the paths)."
    )
  raise ValueError(
    f"{fn}: num_layers={num_layers}, but {top_path!r} is in layer {top}, the "
    f"highest layer index found, so the model has {top + 1} layers{gaps}; a "
    f"layer outside [0, {num_layers}) would get a multiplier above 1. Pass "
    f"num_layers={top + 1}, or a layer= regex that matches only the layers."
  )
