"""optaxtra inside Flax (nnx and linen) and Haiku training steps.

Each test trains a small network on scikit-learn's digits with
``optaxtra.adamax_clipped`` and a decoupled weight decay masked by parameter
path, through the framework's own optimizer plumbing, and asserts a test
accuracy. A second step with zero gradients then checks that the path mask,
applied to the framework's own parameter tree, decays exactly the parameters
it names and leaves the others bit-for-bit unchanged.
"""

from __future__ import annotations

import _digits
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state

import optaxtra
from optaxtra import masks
from optaxtra._core.checks import path_str

pytestmark = pytest.mark.heavy

NUM_STEPS = 200
BATCH_SIZE = 64
HIDDEN = 64
PEAK_LR = 5e-3
WEIGHT_DECAY = 1e-2
MIN_TEST_ACCURACY = 0.9


def _learning_rate():
  return optax.cosine_decay_schedule(PEAK_LR, NUM_STEPS, alpha=0.1)


def _tx(exclude):
  return optaxtra.adamax_clipped(
    _learning_rate(),
    weight_decay=WEIGHT_DECAY,
    weight_decay_mask=masks.path_mask(exclude=exclude),
    track_clip_fraction=True,
  )


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits, labels):
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def _check_what_the_last_update_used(seen):
  """``optaxtra.inspect`` of the trained state: what update NUM_STEPS used."""
  last_lr = _learning_rate()(NUM_STEPS - 1)
  assert int(seen["count"]) == NUM_STEPS
  np.testing.assert_allclose(seen["learning_rate"], last_lr, rtol=1e-6)
  np.testing.assert_allclose(seen["decay_rate"], WEIGHT_DECAY * last_lr, rtol=1e-6)
  # No bias correction: the effective learning rate is the learning rate.
  np.testing.assert_allclose(seen["effective_learning_rate"], last_lr, rtol=1e-6)
  assert 0.0 <= float(seen["clip_fraction"]) <= 1.0


def _check_one_decay_step(before, after, decay_rate, decayed_paths):
  """After a zero-gradient step, named leaves shrank by ``decay_rate``, others not.

  From a fresh state (zero moments) and zero gradients clipped Adamax proposes
  exactly 0, so the whole change of a parameter is the decoupled decay
  ``-decay_rate * p``.
  """
  flat_before = dict(jax.tree_util.tree_flatten_with_path(before)[0])
  flat_after = dict(jax.tree_util.tree_flatten_with_path(after)[0])
  assert flat_before.keys() == flat_after.keys()
  seen = set()
  rate = np.float32(decay_rate)
  for key, p in flat_before.items():
    path = path_str(key)
    p, q = np.asarray(p), np.asarray(flat_after[key])
    if path in decayed_paths:
      seen.add(path)
      assert not np.array_equal(p, q), f"{path} should have decayed"
      np.testing.assert_allclose(q, p - rate * p, rtol=1e-6, atol=0, err_msg=path)
    else:
      np.testing.assert_array_equal(q, p, err_msg=f"{path} must not decay")
  assert seen == set(decayed_paths), (seen, decayed_paths)


# ---------------------------------------------------------------- flax.nnx


class _NnxMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(_digits.NUM_FEATURES, HIDDEN, rngs=rngs)
    self.norm = nnx.LayerNorm(HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, _digits.NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def test_flax_nnx_optimizer_trains_digits():
  x, y, x_test, y_test = _digits.load()
  model = _NnxMLP(nnx.Rngs(0))
  # nnx.Optimizer inits the transformation on an nnx.State of Param variables
  # and updates it on plain arrays: the mask must work on both.
  optimizer = nnx.Optimizer(model, _tx(exclude=["bias$", "norm"]), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, xb, yb):
    loss, grads = nnx.value_and_grad(lambda m: _loss(m(xb), yb))(model)
    optimizer.update(model, grads)
    return loss

  # cached_partial skips re-walking the object graph at every call (Flax's
  # advice for fast nnx loops); the results are those of train_step itself.
  cached_step = nnx.cached_partial(train_step, model, optimizer)
  for idx in _digits.batches(NUM_STEPS, BATCH_SIZE):
    cached_step(x[idx], y[idx])

  assert int(optimizer.step[...]) == NUM_STEPS
  acc = _accuracy(model(jnp.asarray(x_test)), y_test)
  assert acc >= MIN_TEST_ACCURACY, acc

  _check_what_the_last_update_used(optaxtra.inspect(optimizer.opt_state))

  fresh = nnx.Optimizer(model, _tx(exclude=["bias$", "norm"]), wrt=nnx.Param)
  before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  fresh.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  rate = optaxtra.inspect(fresh.opt_state)["decay_rate"]
  np.testing.assert_allclose(rate, WEIGHT_DECAY * PEAK_LR, rtol=1e-6)
  _check_one_decay_step(before, after, rate, {"hidden/kernel", "out/kernel"})


# ---------------------------------------------------------------- flax.linen


class _LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    x = linen.Dense(HIDDEN)(x)
    x = linen.relu(linen.LayerNorm()(x))
    return linen.Dense(_digits.NUM_CLASSES)(x)


def test_flax_linen_train_state_trains_digits():
  x, y, x_test, y_test = _digits.load()
  model = _LinenMLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, _digits.NUM_FEATURES)))["params"]
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=_tx(exclude=["bias$", "LayerNorm"])
  )

  @jax.jit
  def train_step(state, xb, yb):
    def loss_fn(params):
      return _loss(state.apply_fn({"params": params}, xb), yb)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  for idx in _digits.batches(NUM_STEPS, BATCH_SIZE):
    state, _ = train_step(state, x[idx], y[idx])

  assert int(state.step) == NUM_STEPS
  acc = _accuracy(state.apply_fn({"params": state.params}, x_test), y_test)
  assert acc >= MIN_TEST_ACCURACY, acc
  _check_what_the_last_update_used(optaxtra.inspect(state.opt_state))

  fresh = train_state.TrainState.create(
    apply_fn=model.apply, params=state.params, tx=state.tx
  )
  zeros = jax.tree.map(jnp.zeros_like, state.params)
  new_state = jax.jit(lambda s, g: s.apply_gradients(grads=g))(fresh, zeros)
  rate = optaxtra.inspect(new_state.opt_state)["decay_rate"]
  np.testing.assert_allclose(rate, WEIGHT_DECAY * PEAK_LR, rtol=1e-6)
  _check_one_decay_step(
    state.params, new_state.params, rate, {"Dense_0/kernel", "Dense_1/kernel"}
  )


# ---------------------------------------------------------------- Haiku


class _HaikuClassifier(hk.Module):
  def __init__(self):
    super().__init__(name="classifier")
    # Submodules built in __init__ get Haiku's "classifier/~/..." names.
    self.hidden = hk.Linear(HIDDEN, name="hidden")
    self.norm = hk.LayerNorm(
      axis=-1, create_scale=True, create_offset=True, name="layer_norm"
    )
    self.out = hk.Linear(_digits.NUM_CLASSES, name="out")

  def __call__(self, x):
    return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def test_haiku_trains_digits():
  x, y, x_test, y_test = _digits.load()
  net = hk.without_apply_rng(hk.transform(lambda x: _HaikuClassifier()(x)))
  params = net.init(jax.random.key(0), jnp.zeros((1, _digits.NUM_FEATURES)))
  # Haiku's names: classifier/~/hidden/{w,b}, classifier/~/layer_norm/{scale,
  # offset}, classifier/~/out/{w,b}.
  tx = _tx(exclude=["/b$", "layer_norm"])
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, xb, yb):
    loss, grads = jax.value_and_grad(lambda p: _loss(net.apply(p, xb), yb))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for idx in _digits.batches(NUM_STEPS, BATCH_SIZE):
    params, opt_state, _ = train_step(params, opt_state, x[idx], y[idx])

  acc = _accuracy(net.apply(params, x_test), y_test)
  assert acc >= MIN_TEST_ACCURACY, acc
  _check_what_the_last_update_used(optaxtra.inspect(opt_state))

  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, new_state = jax.jit(tx.update)(zeros, tx.init(params), params)
  new_params = optax.apply_updates(params, updates)
  rate = optaxtra.inspect(new_state)["decay_rate"]
  np.testing.assert_allclose(rate, WEIGHT_DECAY * PEAK_LR, rtol=1e-6)
  _check_one_decay_step(
    params,
    new_params,
    rate,
    {"classifier/~/hidden/w", "classifier/~/out/w"},
  )


@pytest.mark.parametrize(
  "exclude", [["no_such_layer"], ["bias$", "no_such_layer"]], ids=["one", "two"]
)
def test_nnx_optimizer_names_a_pattern_that_matches_nothing(exclude):
  # A typo in an exclusion pattern would silently decay everything; with the
  # strict default it fails when the optimizer is built, naming the pattern.
  model = _NnxMLP(nnx.Rngs(0))
  with pytest.raises(ValueError, match="no_such_layer"):
    nnx.Optimizer(model, _tx(exclude=exclude), wrt=nnx.Param)
