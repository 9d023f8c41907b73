"""scale_by_path and layerwise_lr_decay: multipliers by path, step by step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need

import optaxtra

SHAPES = {"encoder": {"kernel": (3, 2), "bias": (2,)}, "head": {"kernel": (2, 1)}}
STEPS = 6


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return jax.tree.map(
    lambda s: jnp.asarray(rng.normal(size=s), dtype),
    SHAPES,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _grads(steps=STEPS, dtype=jnp.float32):
  rng = np.random.default_rng(1)
  return [
    jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s), dtype),
      SHAPES,
      is_leaf=lambda x: isinstance(x, tuple),
    )
    for _ in range(steps)
  ]


def _sched(n):
  return 0.5 / (1.0 + n)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_schedule_and_constant_multipliers_match_the_float64_reference(x64, jit):
  lr = 0.1
  tx = optax.chain(
    optax.sgd(lr),
    optaxtra.scale_by_path({"^encoder/kernel": _sched, "^encoder/": 0.25}, default=2.0),
  )
  params = _params(jnp.float64)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  want = {k: np.asarray(v, np.float64) for k, v in _flat(params).items()}
  mult = {"encoder/kernel": _sched, "encoder/bias": lambda n: 0.25}
  mult["head/kernel"] = lambda n: 2.0
  for n, g in enumerate(_grads(dtype=jnp.float64)):
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    for k, gk in _flat(g).items():
      want[k] = want[k] - lr * mult[k](n) * np.asarray(gk, np.float64)
    got = _flat(params)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-14, atol=1e-15)
    # The state records what this update applied, leaf order bias, kernel, head.
    np.testing.assert_allclose(state[1].multipliers, [0.25, _sched(n), 2.0], rtol=1e-7)
  assert int(state[1].count) == STEPS


def _flat(tree):
  return dict(
    zip(
      optaxtra.masks.paths(tree),
      (np.asarray(x) for x in jax.tree.leaves(tree)),
      strict=True,
    )
  )


def test_a_zero_multiplier_freezes_exactly_even_for_nan():
  tx = optaxtra.scale_by_path({"^head/": 0.0}, default=1.0)
  params = _params()
  state = tx.init(params)
  g = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
  updates, _ = jax.jit(tx.update)(g, state)
  assert np.array_equal(updates["head"]["kernel"], np.zeros((2, 1), np.float32))
  assert np.isnan(updates["encoder"]["kernel"]).all()  # untouched, as given


def test_dtypes_are_kept_and_narrow_leaves_scale_in_float32():
  params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  tx = optaxtra.scale_by_path({"a": 1 / 3}, default=0.5)
  updates, state = tx.update(params, tx.init(params))
  assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  assert float(updates["a"][0]) == float(jnp.bfloat16(1 / 3))
  assert state.multipliers.dtype == jnp.float32


def test_scan_loop_and_check_transformation():
  tx = optax.chain(
    optax.adam(1e-2), optaxtra.scale_by_path({"bias": _sched}, default=1.0)
  )
  params = _params()
  optaxtra.testing.check_transformation(tx, params)
  grads = _grads()
  stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)

  def body(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (p_scan, _), _ = jax.lax.scan(body, (params, tx.init(params)), stacked)
  p, s = params, tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    u, s = step(g, s, p)
    p = optax.apply_updates(p, u)
  for a, b in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize(
  "multipliers, kwargs, error, match",
  [
    (
      {"^enc": 0.5},
      {},
      ValueError,
      r"1 parameter path\(s\) match no rule.*'head/kernel'",
    ),
    ({"^nope/": 0.5}, {"default": 1.0}, ValueError, r"'\^nope/'.*matches no"),
    (
      {"encoder": 0.5, "encoder/bias": 2.0},
      {"default": 1.0},
      ValueError,
      r"'encoder/bias'.*labels nothing.*earlier rule",
    ),
    (
      {"bias": -0.5},
      {"default": 1.0},
      ValueError,
      r"multipliers\['bias'\] must be in \[0, inf\)",
    ),
    ({"bias": float("nan")}, {"default": 1.0}, ValueError, r"multipliers\['bias'\]"),
    ({"bias": 0.5}, {"default": -1.0}, ValueError, "default"),
    (
      {"bias": lambda n: -1.0},
      {"default": 1.0},
      ValueError,
      r"multipliers\['bias'\] at step 0 is -1.0",
    ),
    ({"bias": lambda n: "x"}, {"default": 1.0}, TypeError, "bias"),
    ({}, {}, ValueError, "multipliers is empty"),
    ({"(": 1.0}, {"default": 1.0}, ValueError, "multipliers"),
  ],
)
def test_bad_tables_are_refused_with_the_fix(multipliers, kwargs, error, match):
  with pytest.raises(error, match=match):
    optaxtra.scale_by_path(multipliers, **kwargs).init(_params())


def test_a_tree_of_multipliers_is_refused():
  with pytest.raises(TypeError, match="mapping pattern -> multiplier"):
    optaxtra.scale_by_path([("bias", 0.5)])  # type: ignore[arg-type]


# --- layer-wise decay ----------------------------------------------------------


def _timm_scales(paths, decay, num_layers, layer_of):
  """timm's param_groups_layer_decay: embeddings are layer 0, block i layer
  i + 1, the rest layer num_layers + 1; scale = decay ** (layer_max - id)."""
  layer_max = num_layers + 1
  out = {}
  for p in paths:
    layer_id = layer_of(p)
    out[p] = decay ** (layer_max - layer_id)
  return out


def _bert_layer(path):
  if path.startswith("bert/embeddings/"):
    return 0
  if path.startswith("bert/encoder/layer/"):
    return int(path.split("/")[3]) + 1
  return 4  # pooler, classifier: the head


def _vit_layer(path):
  if path.split("/")[0] in ("embedding", "cls", "pos_embedding"):
    return 0
  if path.startswith("Transformer/encoderblock_"):
    return int(path.split("/")[1].split("_")[1]) + 1
  return 4  # encoder_norm, head


@pytest.mark.heavy
def test_layerwise_decay_is_timms_on_flax_bert_and_vit_trees():
  nn = need("flax").linen

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(4, name="attention")(x)
      return nn.LayerNorm(name="output")(nn.Dense(4, name="intermediate")(x))

  class Embeddings(nn.Module):
    @nn.compact
    def __call__(self, ids):
      x = nn.Embed(10, 4, name="word_embeddings")(ids)
      x = x + nn.Embed(8, 4, name="position_embeddings")(jnp.arange(ids.shape[-1]))
      return nn.LayerNorm(name="LayerNorm")(x)

  class Layers(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(3):
        x = Layer(name=str(i))(x)
      return x

  class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
      return Layers(name="layer")(x)

  class Bert(nn.Module):
    @nn.compact
    def __call__(self, ids):
      x = Encoder(name="encoder")(Embeddings(name="embeddings")(ids))
      return nn.Dense(4, name="pooler")(x[:, 0])

  class BertModel(nn.Module):  # Hugging Face's Flax BERT naming, 3 layers
    @nn.compact
    def __call__(self, ids):
      return nn.Dense(2, name="classifier")(Bert(name="bert")(ids))

  class Vit(nn.Module):  # big_vision's ViT naming, 3 blocks
    @nn.compact
    def __call__(self, img):
      x = nn.Conv(4, (2, 2), strides=(2, 2), name="embedding")(img)
      x = x.reshape(x.shape[0], -1, 4)
      cls = self.param("cls", nn.initializers.zeros, (1, 1, 4))
      x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
      x = x + self.param("pos_embedding", nn.initializers.zeros, (1, x.shape[1], 4))
      x = VitEncoder(name="Transformer")(x)
      return nn.Dense(2, name="head")(x[:, 0])

  class VitEncoder(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(3):
        x = Layer(name=f"encoderblock_{i}")(x)
      return nn.LayerNorm(name="encoder_norm")(x)

  key = jax.random.key(0)
  bert = BertModel().init(key, jnp.zeros((1, 5), jnp.int32))["params"]
  vit = Vit().init(key, jnp.zeros((1, 4, 4, 3)))["params"]
  for params, layer_of in ((bert, _bert_layer), (vit, _vit_layer)):
    paths = optaxtra.masks.paths(params)
    assert any("/0/" in p or "encoderblock_0" in p for p in paths)
    for decay in (0.65, 0.9):
      state = optaxtra.layerwise_lr_decay(decay, 3).init(params)
      want = _timm_scales(paths, decay, 3, layer_of)
      got = dict(zip(paths, np.asarray(state.multipliers, np.float64), strict=True))
      for p in paths:
        assert got[p] == pytest.approx(want[p], rel=1e-7), p


def test_layerwise_decay_table_and_refusals():
  params = {
    "embeddings": {"w": jnp.ones(1)},
    "layers_0": {"w": jnp.ones(1)},
    "layers_1": {"w": jnp.ones(1)},
    "head": {"w": jnp.ones(1)},
  }
  tx = optaxtra.layerwise_lr_decay(0.5, 2, default=0.75)
  state = tx.init(params)
  got = dict(
    zip(optaxtra.masks.paths(params), np.asarray(state.multipliers), strict=True)
  )
  assert got == {
    "embeddings/w": 0.125,
    "head/w": 0.75,
    "layers_0/w": 0.25,
    "layers_1/w": 0.5,
  }
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state)
  assert float(updates["layers_0"]["w"][0]) == 0.25
  with pytest.raises(ValueError, match=r"'layers_1/w' is in layer 1, outside \[0, 1\)"):
    optaxtra.layerwise_lr_decay(0.5, 1).init(params)
  with pytest.raises(ValueError, match="matches no path"):
    optaxtra.layerwise_lr_decay(0.5, 2, layer=r"block(\d+)").init(params)
  with pytest.raises(ValueError, match="has no group"):
    optaxtra.layerwise_lr_decay(0.5, 2, layer=r"layers_\d+")
  with pytest.raises(ValueError, match="both the layer regex and the embed regex"):
    optaxtra.layerwise_lr_decay(0.5, 2, embed=r"w").init(params)
  for bad in (0.0, 1.5, float("nan")):
    with pytest.raises(ValueError, match="decay"):
      optaxtra.layerwise_lr_decay(bad, 2)
  with pytest.raises(ValueError, match="num_layers"):
    optaxtra.layerwise_lr_decay(0.5, 0)
