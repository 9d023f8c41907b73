"""optaxtra.masks on real Flax nnx, Flax linen and Haiku models.

Paths as each framework spells them, BERT's exclusion rule, freezing and two
learning rates through nnx.Optimizer, linen params and Haiku's multi_transform.
The pattern semantics on hand-written trees are in test_masks.py.
"""

from __future__ import annotations

import functools
import re

import flax
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from test_masks import (
  BERT_EXCLUDE,
  HAIKU_PATHS,
  bert_do_use_weight_decay,
  haiku_like_params,
  leaves_by_path,
  linen_like_params,
)

import optaxtra
from optaxtra import masks

pytestmark = pytest.mark.heavy


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def jit(request):
  return jax.jit if request.param else (lambda f: f)


class LinenBert(nn.Module):
  @nn.compact
  def __call__(self, ids):
    x = nn.Embed(11, 4, name="word_embeddings")(ids)
    x = nn.LayerNorm(name="LayerNorm")(x)
    x = nn.Dense(4, name="dense")(x)
    return nn.Dense(3, name="output")(nn.gelu(x))


LINEN_PATHS = [
  "LayerNorm/bias",
  "LayerNorm/scale",
  "dense/bias",
  "dense/kernel",
  "output/bias",
  "output/kernel",
  "word_embeddings/embedding",
]


@functools.cache
def linen_setup():
  model = LinenBert()
  ids = jnp.arange(6).reshape(2, 3) % 11
  params = jax.jit(model.init)(jax.random.key(0), ids)["params"]

  def loss(p):
    return jnp.mean(model.apply({"params": p}, ids) ** 2)

  return params, loss


def test_paths_flax_linen():
  params, _ = linen_setup()
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == jax.tree.map(jnp.shape, linen_like_params())
  assert masks.paths(params) == LINEN_PATHS
  assert masks.paths(flax.core.freeze(params)) == LINEN_PATHS  # FrozenDict
  assert masks.paths({"params": params})[0] == "params/LayerNorm/bias"


def test_paths_flax_linen_partitioned_boxes_name_the_parameter():
  dense = nn.Dense(
    3, kernel_init=nn.with_partitioning(nn.initializers.ones, (None, "model"))
  )
  variables = dense.init(jax.random.key(0), jnp.ones((1, 2)))
  # The raw tree path of the kernel ends in the box's field 'value'.
  raw = [
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)
  ]
  assert any("value" in r for r in raw)
  assert masks.paths(variables) == ["params/bias", "params/kernel"]
  mask = masks.path_mask(exclude="bias")(variables)
  assert isinstance(mask["params"]["kernel"], nn.Partitioned)
  assert jax.tree.leaves(mask) == [False, True]
  tx = optax.add_decayed_weights(0.5, mask=masks.path_mask(exclude="bias"))
  updates, _ = tx.update(
    jax.tree.map(jnp.zeros_like, variables), tx.init(variables), variables
  )
  np.testing.assert_array_equal(updates["params"]["kernel"].value, 0.5)
  np.testing.assert_array_equal(updates["params"]["bias"], 0.0)


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 4, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)])
    self.LayerNorm = nnx.LayerNorm(4, rngs=rngs)

  def __call__(self, ids):
    x = self.LayerNorm(self.embed(ids))
    return self.layers[1](nnx.gelu(self.layers[0](x)))


NNX_PATHS = [
  "LayerNorm/bias",
  "LayerNorm/scale",
  "embed/embedding",
  "layers/0/bias",
  "layers/0/kernel",
  "layers/1/bias",
  "layers/1/kernel",
]
NNX_IDS = jnp.arange(6).reshape(2, 3) % 11


def nnx_loss(model):
  return jnp.mean(model(NNX_IDS) ** 2)


nnx_grad = nnx.jit(nnx.grad(nnx_loss))


@functools.cache
def _nnx_parts():
  # Built under jit once: eager op-by-op initialisation is slow on CPU.
  return nnx.split(nnx.jit(lambda: NnxNet(nnx.Rngs(0)))())


def nnx_model():
  """A fresh NnxNet, always with the same initial parameters."""
  graphdef, state = _nnx_parts()
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


@nnx.jit
def nnx_update(model, opt, grads):
  opt.update(model, grads)


def spy():
  """A transformation that records the paths of what it is given."""
  seen = {}

  def init(params):
    seen["init"] = masks.paths(params)
    seen["init_leaf"] = jax.tree_util.tree_leaves(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )[0]
    return optax.EmptyState()

  def update(updates, state, params=None):
    seen["update"] = masks.paths(updates)
    seen["update_params"] = masks.paths(params)
    return updates, state

  return optax.GradientTransformation(init, update), seen


def test_paths_flax_nnx_as_optimizer_hands_them_to_tx():
  model = nnx_model()
  assert masks.paths(nnx.state(model, nnx.Param)) == NNX_PATHS
  tx, seen = spy()
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  nnx_update(model, opt, nnx_grad(model))
  # init gets Variables (whose raw key path ends in '.value'), update plain
  # arrays: both spell the same paths, with no 'value' noise.
  assert isinstance(seen["init_leaf"], nnx.Param)
  assert seen["init"] == seen["update"] == seen["update_params"] == NNX_PATHS


@functools.cache
def haiku_setup():
  def forward(x):
    h = hk.nets.MLP([4, 3], name="mlp")(x)
    return hk.LayerNorm(-1, True, True, name="layer_norm")(h)

  f = hk.without_apply_rng(hk.transform(forward))
  x = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
  params = jax.jit(f.init)(jax.random.key(0), x)
  return params, lambda p: jnp.mean(f.apply(p, x) ** 2)


def test_paths_haiku():
  params, _ = haiku_setup()
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == jax.tree.map(jnp.shape, haiku_like_params())
  assert masks.paths(params) == HAIKU_PATHS


# ---------------------------------------------------------------------------
# Real models: BERT's exclusion list, freezing, two learning rates.


def model_setups():
  """(params, loss, name of a frozen sub-tree's pattern) per framework."""
  lin_params, lin_loss = linen_setup()
  hk_params, hk_loss = haiku_setup()
  return {
    "linen": (lin_params, lin_loss, "^dense/"),
    "haiku": (hk_params, hk_loss, "^mlp/~/linear_0/"),
  }


@pytest.mark.parametrize("framework", ["linen", "haiku"])
def test_bert_exclusion_on_real_models(framework):
  params, _, _ = model_setups()[framework]
  lr, wd = 0.1, 0.01
  tx = optax.adamw(
    lr, weight_decay=wd, mask=masks.path_mask(exclude=BERT_EXCLUDE, strict=False)
  )
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  flat_p, flat_new = leaves_by_path(params), leaves_by_path(new)
  n_decayed = 0
  for name, p in flat_p.items():
    excluded = any(re.search(r, name) for r in BERT_EXCLUDE)
    if excluded:
      np.testing.assert_array_equal(flat_new[name], p)  # bit for bit
    else:
      n_decayed += 1
      want = np.asarray(p, np.float64) * (1 - lr * wd)
      np.testing.assert_allclose(flat_new[name], want, rtol=1e-6)
  # Haiku names a bias 'b', which BERT's list does not catch: its w and b decay.
  assert n_decayed == {"linen": 3, "haiku": 4}[framework]


def test_bert_exclusion_nnx_optimizer():
  model = nnx_model()
  before = {
    p: np.asarray(x)
    for p, x in zip(
      NNX_PATHS, jax.tree.leaves(nnx.state(model, nnx.Param)), strict=True
    )
  }
  lr, wd = 0.1, 0.01
  opt = nnx.Optimizer(
    model,
    optax.adamw(
      lr, weight_decay=wd, mask=masks.path_mask(exclude=BERT_EXCLUDE, strict=False)
    ),
    wrt=nnx.Param,
  )
  zero_grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  nnx_update(model, opt, zero_grads)
  after = dict(
    zip(NNX_PATHS, jax.tree.leaves(nnx.state(model, nnx.Param)), strict=True)
  )
  for name in NNX_PATHS:
    if "LayerNorm" in name or "bias" in name:
      np.testing.assert_array_equal(after[name], before[name])
    else:
      np.testing.assert_allclose(after[name], before[name] * (1 - lr * wd), rtol=1e-6)


def adamw_reference(grads_seq, params0, flags, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  """float64 AdamW (Loshchilov & Hutter; optax.adamw), decay only where flags."""
  p = {k: np.asarray(v, np.float64) for k, v in params0.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  nu = {k: np.zeros_like(v) for k, v in p.items()}
  for t, g in enumerate(grads_seq, start=1):
    for k in p:
      gk = np.asarray(g[k], np.float64)
      mu[k] = b1 * mu[k] + (1 - b1) * gk
      nu[k] = b2 * nu[k] + (1 - b2) * gk**2
      step = (mu[k] / (1 - b1**t)) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
      p[k] = p[k] - lr * (step + (wd * p[k] if flags[k] else 0.0))
  return p


def test_masked_adamw_matches_float64_reference_on_linen():
  params, loss = linen_setup()
  lr, wd = 1e-2, 0.1
  tx = optax.adamw(
    lr, weight_decay=wd, mask=masks.path_mask(exclude=["LayerNorm", "bias"])
  )
  state = tx.init(params)
  grad = jax.jit(jax.grad(loss))
  step = jax.jit(lambda p, s: tx.update(grad(p), s, p))
  grads_seq, p = [], params
  for _ in range(3):
    grads_seq.append(leaves_by_path(grad(p)))
    updates, state = step(p, state)
    p = optax.apply_updates(p, updates)
  # The reference takes the same gradients (it has no model); decay where
  # BERT's rule says, from its own float64 params.
  flags = {
    n: bert_do_use_weight_decay(n, wd, ["LayerNorm", "bias"]) for n in LINEN_PATHS
  }
  want = adamw_reference(grads_seq, leaves_by_path(params), flags, lr, wd)
  for name, x in leaves_by_path(p).items():
    np.testing.assert_allclose(x, want[name], rtol=2e-5, atol=1e-6)


def train(params, loss, tx, steps=3):
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize("framework", ["linen", "haiku"])
def test_freezing_a_subtree_leaves_it_bit_for_bit(framework):
  params, loss, frozen = model_setups()[framework]
  tx = optaxtra.with_frozen(optax.adam(0.05), frozen=frozen)
  new, state = train(params, loss, tx)
  old_leaves, new_leaves = leaves_by_path(params), leaves_by_path(new)
  for name in old_leaves:
    if re.search(frozen, name):
      np.testing.assert_array_equal(new_leaves[name], old_leaves[name])
    else:
      assert not np.array_equal(new_leaves[name], old_leaves[name]), name
  # Adam keeps no moments for the frozen parameters.
  adam_mu = state.inner_states["trainable"].inner_state[0].mu
  assert masks.paths(adam_mu) == [
    n for n in masks.paths(params) if not re.search(frozen, n)
  ]


def test_freezing_with_nnx_optimizer_and_partition_labels():
  model = nnx_model()
  before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  # The optax.partition + set_to_zero form, with labels by path.
  tx = optax.transforms.partition(
    {"train": optax.adam(0.05), "frozen": optax.set_to_zero()},
    masks.path_labels({"^layers/0/": "frozen", "^embed/": "frozen"}, default="train"),
  )
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  for _ in range(3):
    nnx_update(model, opt, nnx_grad(model))
  after = jax.tree.leaves(nnx.state(model, nnx.Param))
  for name, b, a in zip(NNX_PATHS, before, after, strict=True):
    if name.startswith(("layers/0/", "embed/")):
      np.testing.assert_array_equal(a, b)
    else:
      assert not np.array_equal(a, b), name


def test_two_learning_rates_nnx_optimizer():
  model = nnx_model()
  before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  grads = nnx_grad(model)
  tx = optax.transforms.partition(
    {"slow": optax.sgd(0.01), "fast": optax.sgd(0.5)},
    masks.path_labels({"^layers/": "fast"}, default="slow"),
  )
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  nnx_update(model, opt, grads)
  after = jax.tree.leaves(nnx.state(model, nnx.Param))
  g = jax.tree.leaves(nnx.state(grads, nnx.Param))
  for name, b, a, gi in zip(NNX_PATHS, before, after, g, strict=True):
    lr = 0.5 if name.startswith("layers/") else 0.01
    want = np.asarray(b, np.float64) - lr * np.asarray(gi, np.float64)
    np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-7)
    assert np.any(np.asarray(gi) != 0), name


def test_two_learning_rates_haiku_multi_transform():
  params, loss = haiku_setup()
  tx = optax.multi_transform(
    {"mlp": optax.sgd(0.2), "norm": optax.sgd(0.02)},
    masks.path_labels({"^mlp/": "mlp", "^layer_norm/": "norm"}),
  )
  grads = jax.jit(jax.grad(loss))(params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for name, u in leaves_by_path(updates).items():
    lr = 0.2 if name.startswith("mlp/") else 0.02
    g = np.asarray(leaves_by_path(grads)[name], np.float64)
    np.testing.assert_allclose(u, -lr * g, rtol=1e-6)
    assert np.any(g != 0), name
