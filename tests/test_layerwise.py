"""layerwise_lr_decay: timm's groups, the grouping of real trees, the refusals."""

from __future__ import annotations

import collections
import fnmatch
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need

import optaxtra
from optaxtra import masks

# --- timm's reference, transcribed ----------------------------------------------
#
# What timm's create_optimizer_v2(model, "adamw", lr, weight_decay,
# layer_decay=...) gives a VisionTransformer, written out from
# pytorch-image-models (timm is not a test dependency):
#   timm/optim/_param_groups.py    param_groups_layer_decay
#   timm/models/_manipulate.py     group_with_matcher, MATCH_PREV_GROUP
#   timm/models/vision_transformer.py  VisionTransformer.group_matcher,
#                                      VisionTransformer.no_weight_decay
# timm applies a group's lr_scale in its schedulers:
# param_group["lr"] = value * param_group["lr_scale"].

TIMM_VIT_GROUP_MATCHER = {
  "stem": r"^cls_token|pos_embed|patch_embed",  # stem and embed
  "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
}
TIMM_VIT_NO_WEIGHT_DECAY = {"pos_embed", "cls_token", "dist_token"}
TIMM_MATCH_PREV_GROUP = (99999,)


def timm_layer_map(names, group_matcher):
  """group_with_matcher(names, group_matcher, reverse=True): name -> layer id."""
  compiled = []
  for ordinal, (_, spec) in enumerate(group_matcher.items()):
    if spec is None:
      continue
    if isinstance(spec, tuple | list):
      for rx, suffix in spec:
        compiled.append((re.compile(rx), (ordinal,), suffix))
    else:
      compiled.append((re.compile(spec), (ordinal,), None))

  def grouping(name):
    for rx, prefix, suffix in compiled:
      r = rx.match(name)
      if r:
        parts = (prefix, r.groups(), suffix)
        return tuple(map(float, itertools.chain.from_iterable(filter(None, parts))))
    return (float("inf"),)  # unmatched (neck, head): the largest ordinal

  grouping_of = collections.defaultdict(list)
  for n in names:
    grouping_of[grouping(n)].append(n)
  layer_of = {}
  lid = -1
  for key in sorted(grouping_of):
    if lid < 0 or key[-1] != TIMM_MATCH_PREV_GROUP[0]:
      lid += 1
    for n in grouping_of[key]:
      layer_of[n] = lid
  return layer_of


def timm_param_groups_layer_decay(named_shapes, weight_decay, layer_decay):
  """param_groups_layer_decay for a ViT: name -> (lr_scale, weight_decay)."""
  layer_map = timm_layer_map([n for n, _ in named_shapes], TIMM_VIT_GROUP_MATCHER)
  num_layers = max(layer_map.values()) + 1
  layer_max = num_layers - 1
  layer_scales = [layer_decay ** (layer_max - i) for i in range(num_layers)]
  out = {}
  for name, shape in named_shapes:
    no_decay = len(shape) <= 1 or any(
      fnmatch.fnmatch(name, p) for p in TIMM_VIT_NO_WEIGHT_DECAY
    )
    layer_id = layer_map.get(name, layer_max)
    out[name] = (layer_scales[layer_id], 0.0 if no_decay else weight_decay)
  return out


def timm_vit_names(depth, dim=4, mlp=8, patch=2, chans=3, tokens=5, classes=3):
  """A timm VisionTransformer's named_parameters (class token, no registers)."""
  out = [
    ("cls_token", (1, 1, dim)),
    ("pos_embed", (1, tokens, dim)),
    ("patch_embed.proj.weight", (dim, chans, patch, patch)),
    ("patch_embed.proj.bias", (dim,)),
  ]
  for i in range(depth):
    b = f"blocks.{i}"
    out += [
      (f"{b}.norm1.weight", (dim,)),
      (f"{b}.norm1.bias", (dim,)),
      (f"{b}.attn.qkv.weight", (3 * dim, dim)),
      (f"{b}.attn.qkv.bias", (3 * dim,)),
      (f"{b}.attn.proj.weight", (dim, dim)),
      (f"{b}.attn.proj.bias", (dim,)),
      (f"{b}.norm2.weight", (dim,)),
      (f"{b}.norm2.bias", (dim,)),
      (f"{b}.mlp.fc1.weight", (mlp, dim)),
      (f"{b}.mlp.fc1.bias", (mlp,)),
      (f"{b}.mlp.fc2.weight", (dim, mlp)),
      (f"{b}.mlp.fc2.bias", (dim,)),
    ]
  out += [
    ("norm.weight", (dim,)),
    ("norm.bias", (dim,)),
    ("head.weight", (classes, dim)),
    ("head.bias", (classes,)),
  ]
  return out


def nest(named, leaf=lambda name, shape: jnp.zeros(shape)):
  """A JAX tree with the same names: ``blocks.0.norm1.weight`` at that path."""
  out = {}
  for name, shape in named:
    *parents, last = name.split(".")
    node = out
    for k in parents:
      node = node.setdefault(k, {})
    node[last] = leaf(name, shape)
  return out


def timm_weight_decay_mask(params):
  """timm's rule: no decay on 1-d parameters and on model.no_weight_decay()."""
  ndim = masks.min_ndim(2)(params)
  named = masks.path_mask(exclude=["^pos_embed$", "^cls_token$"])(params)
  return jax.tree.map(lambda a, b: a and b, ndim, named)


LR, WD, LAYER_DECAY = 1e-3, 0.05, 0.75


def timm_optimizer(depth):
  """timm's create_optimizer_v2(model, "adamw", LR, WD, layer_decay=...) here."""
  return optax.chain(
    optax.adamw(LR, weight_decay=WD, mask=timm_weight_decay_mask),
    optaxtra.layerwise_lr_decay(LAYER_DECAY, depth),
  )


@pytest.mark.parametrize("depth", [2, 12])
def test_every_scale_and_decay_flag_is_timms_on_a_tiny_vit(depth):
  named = timm_vit_names(depth)
  want = timm_param_groups_layer_decay(named, WD, LAYER_DECAY)
  params = nest(named, lambda n, s: jnp.ones(s))
  tx = timm_optimizer(depth)
  # Every parameter's scale, from the state, to float32 rounding.
  state = tx.init(params)
  got = dict(zip(masks.paths(params), np.asarray(state[1].multipliers), strict=True))
  assert sorted(p.replace("/", ".") for p in got) == sorted(want)
  worst = 0.0
  for path, m in got.items():
    scale = want[path.replace("/", ".")][0]
    worst = max(worst, abs(float(m) - scale) / scale)
  assert worst <= 2**-24, worst
  assert got["norm/weight"] == got[f"blocks/{depth - 1}/norm1/weight"]
  # Weight decay: at zero gradients the update is -LR * scale * WD * p on the
  # decayed parameters, 0 on the others.
  if depth == 2:
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    for p, u in zip(masks.paths(updates), jax.tree.leaves(updates), strict=True):
      scale, wd = want[p.replace("/", ".")]
      np.testing.assert_allclose(u, -LR * scale * wd, rtol=1e-6, err_msg=p)
  # timm's own num_layers (the number of groups it finds) is refused here.
  timm_num_layers = max(timm_layer_map(want, TIMM_VIT_GROUP_MATCHER).values()) + 1
  assert timm_num_layers == depth + 2
  with pytest.raises(ValueError, match=rf"Pass num_layers={depth}, the number"):
    optaxtra.layerwise_lr_decay(LAYER_DECAY, timm_num_layers).init(params)


def test_adamw_steps_match_torch_with_timms_param_groups(torch):
  depth, steps = 2, 3
  named = timm_vit_names(depth)
  groups = timm_param_groups_layer_decay(named, WD, LAYER_DECAY)
  rng = np.random.default_rng(0)
  init = {n: rng.normal(size=s).astype(np.float32) for n, s in named}
  grads = [
    {n: rng.normal(size=s).astype(np.float32) for n, s in named} for _ in range(steps)
  ]
  # torch, as timm's optimizer and scheduler set it up: one group per
  # (lr_scale, weight_decay), lr = LR * lr_scale.
  tparams = {n: torch.nn.Parameter(torch.tensor(v)) for n, v in init.items()}
  by_group = collections.defaultdict(list)
  for n, _ in named:
    by_group[groups[n]].append(tparams[n])
  opt = torch.optim.AdamW(
    [
      {"params": ps, "lr": LR * scale, "weight_decay": wd}
      for (scale, wd), ps in by_group.items()
    ],
    lr=LR,
  )
  tx = timm_optimizer(depth)
  params = nest(named, lambda n, _: jnp.asarray(init[n]))
  # describe shows timm's groups: each parameter's scale and decay flag.
  rows = {r["path"].replace("/", "."): r for r in optaxtra.describe(tx, params).rows}
  for name, (scale, wd) in groups.items():
    assert rows[name]["lr_multiplier"] == pytest.approx(scale, rel=2**-24), name
    assert rows[name]["weight_decay"] == (wd > 0), name
  state = tx.init(params)
  step = jax.jit(tx.update)
  worst = 0.0
  for g in grads:
    for n, p in tparams.items():
      p.grad = torch.tensor(g[n])
    opt.step()
    g_tree = nest(named, lambda n, _, g=g: jnp.asarray(g[n]))
    updates, state = step(g_tree, state, params)
    params = optax.apply_updates(params, updates)
    got = dict(zip(masks.paths(params), jax.tree.leaves(params), strict=True))
    for n, p in tparams.items():
      a, b = np.asarray(got[n.replace(".", "/")]), p.detach().numpy()
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=n)
      worst = max(worst, float(np.max(np.abs(a - b))))
  assert worst < 1e-6


# --- float64 reference -----------------------------------------------------------


def test_steps_match_the_float64_reference_with_a_decay_schedule(x64):
  def decay(n):
    return 0.5 + 0.4 * n / (n + 1.0)

  params = {
    "embed": {"embedding": jnp.ones((3, 2), jnp.float64)},
    "layers": [{"w": jnp.ones(2, jnp.float64)} for _ in range(3)],
    "head": {"w": jnp.ones(2, jnp.float64)},
  }
  power = {"embed/embedding": 4, "layers/0/w": 3, "layers/1/w": 2, "layers/2/w": 1}
  lr = 0.1
  tx = optax.chain(optax.sgd(lr), optaxtra.layerwise_lr_decay(decay, 3))
  state = tx.init(params)
  want = {
    p: np.asarray(x, np.float64)
    for p, x in zip(masks.paths(params), jax.tree.leaves(params), strict=True)
  }
  rng = np.random.default_rng(3)
  update = tx.update
  for n in range(3):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params)
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    for p, gp in zip(masks.paths(g), jax.tree.leaves(g), strict=True):
      want[p] = want[p] - lr * decay(n) ** power.get(p, 0) * np.asarray(gp)
    got = dict(zip(masks.paths(params), jax.tree.leaves(params), strict=True))
    for p in want:
      np.testing.assert_allclose(got[p], want[p], rtol=1e-14, err_msg=p)


# --- The grouping of trees as frameworks name them -------------------------------


def tree(*paths):
  """A params tree from path strings."""
  return nest([(p.replace("/", "."), (2,)) for p in paths])


def check_groups(params, num_layers, layer_id, decay=0.75, **kwargs):
  """Each leaf's multiplier is decay ** (num_layers + 1 - layer_id(path)):
  the numbering of BEiT and timm (embeddings 0, block i at i + 1, the head
  num_layers + 1)."""
  state = optaxtra.layerwise_lr_decay(decay, num_layers, **kwargs).init(params)
  got = dict(zip(masks.paths(params), np.asarray(state.multipliers), strict=True))
  for p, m in got.items():
    want = decay ** (num_layers + 1 - layer_id(p))
    assert float(m) == pytest.approx(want, rel=2**-24), (p, float(m), want)


def test_big_vision_vit_and_its_map_head():
  paths = ["cls", "pos_embedding", "embedding/kernel", "embedding/bias"]
  for i in range(3):
    b = f"Transformer/encoderblock_{i}"
    paths += [
      f"{b}/LayerNorm_0/scale",
      f"{b}/MultiHeadDotProductAttention_0/query/kernel",
      f"{b}/MlpBlock_0/Dense_0/kernel",
    ]
  paths += [
    "Transformer/encoder_norm/scale",
    "MAPHead_0/probe",
    "MAPHead_0/MlpBlock_0/Dense_0/kernel",  # not a layer: MlpBlock
    "MAPHead_0/LayerNorm_0/scale",
    "head/kernel",
  ]

  def layer_id(p):
    if m := re.search(r"encoderblock_(\d+)", p):
      return int(m.group(1)) + 1
    return 0 if p.split("/")[0] in ("cls", "pos_embedding", "embedding") else 4

  check_groups(tree(*paths), 3, layer_id)


def test_hugging_face_bert_with_its_masked_lm_head_named_cls():
  paths = [
    "bert/embeddings/word_embeddings/embedding",
    "bert/embeddings/position_embeddings/embedding",
    "bert/embeddings/LayerNorm/scale",
  ]
  for i in range(2):
    paths += [
      f"bert/encoder/layer/{i}/attention/self/query/kernel",
      f"bert/encoder/layer/{i}/output/LayerNorm/scale",
    ]
  paths += [
    "bert/pooler/dense/kernel",
    "cls/predictions/transform/dense/kernel",  # the MLM head, not a class token
    "cls/predictions/bias",
  ]

  def layer_id(p):
    if m := re.search(r"layer/(\d+)", p):
      return int(m.group(1)) + 1
    return 0 if "/embeddings/" in p else 3

  check_groups(tree(*paths), 2, layer_id)


def test_hugging_face_gpt2_and_t5():
  gpt2 = ["transformer/wte/embedding", "transformer/wpe/embedding"]
  gpt2 += [f"transformer/h/{i}/attn/c_attn/kernel" for i in range(3)]
  gpt2 += ["transformer/ln_f/scale"]

  def gpt2_id(p):
    if m := re.search(r"/h/(\d+)/", p):
      return int(m.group(1)) + 1
    return 0 if "/wte/" in p or "/wpe/" in p else 4

  check_groups(tree(*gpt2), 3, gpt2_id)
  # ln_f named as a final norm goes with the last block.
  check_groups(
    tree(*gpt2), 3, lambda p: 3 if "ln_f" in p else gpt2_id(p), final_norm="/ln_f/"
  )
  # T5: the relative-position embedding inside layer 0 is in layer 0 (the
  # regex that matches nearest the root decides).
  t5 = ["shared/embedding", "encoder/final_layer_norm/weight"]
  for i in range(2):
    b = f"encoder/block/{i}/layer/0/SelfAttention"
    t5 += [f"{b}/q/kernel", f"{b}/relative_attention_bias/embedding"]

  def t5_id(p):
    if m := re.search(r"block/(\d+)", p):
      return int(m.group(1)) + 1
    return 0 if p.startswith("shared/") else 3

  check_groups(tree(*t5), 2, t5_id)


def test_linen_automatic_names_and_nnx_names():
  linen = [
    "Embed_0/embedding",
    "Block_0/Dense_0/kernel",
    "Block_0/LayerNorm_0/scale",
    "Block_1/Dense_0/kernel",
    "Block_1/LayerNorm_0/scale",
    "LayerNorm_0/scale",  # a final norm not named norm: default
    "Dense_3/kernel",  # the head: Dense_3 is not a layer
  ]

  def linen_id(p):
    if m := re.match(r"Block_(\d+)", p):
      return int(m.group(1)) + 1
    return 0 if p.startswith("Embed_0") else 3

  check_groups(tree(*linen), 2, linen_id)
  nnx = [
    "embed/embedding",
    "blocks/0/attn/kernel",
    "blocks/1/attn/kernel",
    "final_norm/scale",
    "head/kernel",
  ]
  check_groups(
    tree(*nnx),
    2,
    lambda p: (
      int(p.split("/")[1]) + 1
      if p.startswith("blocks/")
      else (0 if p.startswith("embed/") else 3)
    ),
  )


def test_a_final_norm_of_the_root_goes_with_the_last_block_unless_told():
  vit = tree("pos_embed", "blocks/0/w", "blocks/1/w", "norm/scale", "head/w")
  state = optaxtra.layerwise_lr_decay(0.5, 2).init(vit)
  np.testing.assert_array_equal(state.multipliers, [0.25, 0.5, 1.0, 0.5, 0.125])
  state = optaxtra.layerwise_lr_decay(0.5, 2, final_norm=None).init(vit)
  np.testing.assert_array_equal(state.multipliers, [0.25, 0.5, 1.0, 1.0, 0.125])
  # A norm named norm deeper down is no final norm.
  deep = tree("encoder/blocks/0/w", "encoder/norm/scale", "head/w")
  state = optaxtra.layerwise_lr_decay(0.5, 1).init(deep)
  np.testing.assert_array_equal(state.multipliers, [0.5, 1.0, 1.0])


# --- Inside wrappers -------------------------------------------------------------

PARAMS = {
  "embeddings": {"w": jnp.ones(2)},
  "layers_0": {"w": jnp.ones(2)},
  "layers_1": {"w": jnp.ones(2)},
  "head": {"w": jnp.ones(2)},
}
WANT = {"embeddings": 0.125, "layers_0": 0.25, "layers_1": 0.5, "head": 1.0}


@pytest.mark.parametrize("where", ["with_frozen", "masked", "partition"])
def test_inside_with_frozen_masked_and_a_partition_group(where):
  inner = optax.chain(optax.sgd(-1.0), optaxtra.layerwise_lr_decay(0.5, 2))
  hidden = {"layers_1", "head"}  # the hidden layer 1 still counts for numbering
  if where == "with_frozen":
    tx = optaxtra.with_frozen(inner, frozen="^layers_1/|^head/")
  elif where == "masked":
    tx = optax.masked(inner, {k: {"w": k not in hidden} for k in PARAMS})
  else:
    labels = {k: {"w": "frozen" if k in hidden else "train"} for k in PARAMS}
    tx = optax.transforms.partition(
      {"train": inner, "frozen": optax.set_to_zero()}, labels
    )
  state = tx.init(PARAMS)
  g = jax.tree.map(jnp.ones_like, PARAMS)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(g, state, PARAMS)
    for k, m in WANT.items():
      if k in hidden:
        want = 1.0 if where == "masked" else 0.0  # masked passes them through
      else:
        want = m
      assert float(updates[k]["w"][0]) == want, (k, where)
  (stage,) = [
    s
    for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, optaxtra.ScaleByPathState)
    )
    if isinstance(s, optaxtra.ScaleByPathState)
  ]
  np.testing.assert_array_equal(stage.multipliers, [0.125, 0.25])


def test_a_traced_decay_through_inject_hyperparams():
  tx = optax.inject_hyperparams(
    optaxtra.layerwise_lr_decay, static_args=("num_layers",)
  )(decay=0.5, num_layers=2)
  state = tx.init(PARAMS)
  g = jax.tree.map(jnp.ones_like, PARAMS)
  update = jax.jit(tx.update)
  updates, state = update(g, state)
  assert float(updates["embeddings"]["w"][0]) == 0.125
  state.hyperparams["decay"] = jnp.asarray(0.25)
  updates, state = update(g, state)
  assert float(updates["layers_0"]["w"][0]) == 0.0625
  state.hyperparams["decay"] = jnp.asarray(1.5)  # out of range, traced: NaN
  updates, state = update(g, state)
  assert np.isnan(updates["layers_0"]["w"]).all()
  assert float(updates["head"]["w"][0]) == 1.0
  tx = optax.inject_hyperparams(optaxtra.layerwise_lr_decay)(decay=0.5, num_layers=2)
  with pytest.raises(TypeError, match=r"num_layers.*static_args"):
    update = jax.jit(tx.update)(g, tx.init(PARAMS))


# --- Arguments -------------------------------------------------------------------


def test_arguments_go_through_the_one_resolver():
  tx = optaxtra.layerwise_lr_decay(0.5, np.int64(2), default=np.float32(0.75))
  np.testing.assert_array_equal(tx.init(PARAMS).multipliers, [0.125, 0.75, 0.25, 0.5])
  tx = optaxtra.layerwise_lr_decay(1.0, 2)  # (0, 1]: 1 changes nothing
  g = jax.tree.map(lambda x: x * 3.0, PARAMS)
  updates, state = tx.update(g, tx.init(PARAMS))
  assert all(
    u is v for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g), strict=True)
  )
  np.testing.assert_array_equal(state.multipliers, [1.0, 1.0, 1.0, 1.0])
  for bad in (0.0, 1.5, float("nan"), 1e39, -0.5):
    with pytest.raises(ValueError, match="decay"):
      optaxtra.layerwise_lr_decay(bad, 2)
  for bad, error in ((0, ValueError), (2.0, TypeError), (True, TypeError)):
    with pytest.raises(error, match="num_layers"):
      optaxtra.layerwise_lr_decay(0.5, bad)
  with pytest.raises(ValueError, match=r"default\] must be|default must be"):
    optaxtra.layerwise_lr_decay(0.5, 2, default=-1.0)
  # decay ** (num_layers + 1) below what float32 holds would freeze silently.
  with pytest.raises(ValueError, match=r"embeddings \(decay \*\* 31\).*0.0 in float32"):
    optaxtra.layerwise_lr_decay(0.001, 30)
  with pytest.raises(ValueError, match=r"default is -1.0 at step 0"):
    optaxtra.layerwise_lr_decay(0.5, 2, default=lambda n: -1.0).init(PARAMS)


def test_num_layers_must_be_the_number_of_layers_found():
  with pytest.raises(
    ValueError,
    match=r"num_layers=3, but the highest layer index in the paths is 1 "
    r"\('layers_1/w'\), so the model has 2 layers.*Pass num_layers=2",
  ):
    optaxtra.layerwise_lr_decay(0.5, 3).init(PARAMS)
  with pytest.raises(
    ValueError,
    match=r"num_layers=1, but 'layers_1/w' is in layer 1, the highest.*num_layers=2",
  ):
    optaxtra.layerwise_lr_decay(0.5, 1).init(PARAMS)
  # Gaps are allowed (the index is a position) and named when refusing.
  gaps = tree("layers/0/w", "layers/2/w", "head/w")
  optaxtra.layerwise_lr_decay(0.5, 3).init(gaps)
  with pytest.raises(ValueError, match=r"layer indices found: 0, 2"):
    optaxtra.layerwise_lr_decay(0.5, 2).init(gaps)


def test_regexes_that_find_nothing_are_refused():
  with pytest.raises(ValueError, match=r"layer regex 'block\(\\\\d\+\)' matches no"):
    optaxtra.layerwise_lr_decay(0.5, 2, layer=r"block(\d+)").init(PARAMS)
  with pytest.raises(ValueError, match="has no group"):
    optaxtra.layerwise_lr_decay(0.5, 2, layer=r"layers_\d+")
  with pytest.raises(ValueError, match="embed regex 'nope' matches no path"):
    optaxtra.layerwise_lr_decay(0.5, 2, embed="nope").init(PARAMS)
  with pytest.raises(ValueError, match="final_norm regex 'nope' matches no path"):
    optaxtra.layerwise_lr_decay(0.5, 2, final_norm="nope").init(PARAMS)
  with pytest.raises(ValueError, match="every path the embed regex '_0/w' matches"):
    optaxtra.layerwise_lr_decay(0.5, 2, embed="_0/w").init(PARAMS)
  with pytest.raises(ValueError, match="at the same place by the layer and the embed"):
    optaxtra.layerwise_lr_decay(0.5, 2, embed=r"^layers_1").init(PARAMS)
  # The default regexes may find nothing: a model without embeddings.
  optaxtra.layerwise_lr_decay(0.5, 2).init(tree("layers_0/w", "layers_1/w"))


# --- Real Flax modules (heavy) ---------------------------------------------------


@pytest.mark.heavy
def test_linen_automatic_block_names_and_an_nnx_optimizer():
  nn, nnx = need("flax.linen"), need("flax.nnx")

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(4)(nn.LayerNorm()(x))

  class Model(nn.Module):
    @nn.compact
    def __call__(self, ids):
      x = nn.Embed(10, 4)(ids)
      for _ in range(3):
        x = Block()(x)
      return nn.Dense(2)(nn.LayerNorm()(x))

  params = Model().init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
  assert "Block_2/Dense_0/kernel" in masks.paths(params)

  def linen_id(p):
    if m := re.match(r"Block_(\d+)/", p):
      return int(m.group(1)) + 1
    return 0 if p.startswith("Embed_0/") else 4

  check_groups(params, 3, linen_id)

  class NBlock(nnx.Module):
    def __init__(self, rngs):
      self.norm = nnx.LayerNorm(4, rngs=rngs)
      self.mlp = nnx.Linear(4, 4, rngs=rngs)

  class NModel(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(10, 4, rngs=rngs)
      self.blocks = nnx.List([NBlock(rngs) for _ in range(3)])
      self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, ids):
      x = self.embed(ids)
      for b in self.blocks:
        x = b.mlp(b.norm(x))
      return self.head(x)

  model = NModel(nnx.Rngs(0))
  tx = optax.chain(optax.sgd(1.0), optaxtra.layerwise_lr_decay(0.5, 3))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = nnx.state(model, nnx.Param)
  before = jax.tree.map(np.asarray, before)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.array([1, 2]))))(model)
  opt.update(model, grads)
  after = nnx.state(model, nnx.Param)
  g = dict(zip(masks.paths(grads), jax.tree.leaves(grads), strict=True))
  b = dict(zip(masks.paths(before), jax.tree.leaves(before), strict=True))
  a = dict(zip(masks.paths(after), jax.tree.leaves(after), strict=True))
  for p in g:
    i = int(p.split("/")[1]) if p.startswith("blocks/") else None
    m = 0.5 ** (3 - i) if i is not None else (0.0625 if p.startswith("embed/") else 1)
    np.testing.assert_allclose(a[p], b[p] - m * np.asarray(g[p]), rtol=1e-6, err_msg=p)
