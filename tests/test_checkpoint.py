"""Saving and restoring optaxtra states with Orbax.

Training that is stopped, checkpointed and resumed must continue exactly as if
it had never stopped: 20 steps, save, restore into fresh arrays, 20 more steps
give the same params and optimizer state, bit for bit, as 40 steps straight.

The restore target matters. ``StandardCheckpointer.restore(path, target)``
with ``target = jax.eval_shape(...)`` of the state gives back the state's own
types (optaxtra's NamedTuples, Optax's chain tuple). Without a target Orbax
only knows the saved tree's *shape*: NamedTuples come back as dicts keyed by
field name and tuples as lists, which optaxtra's updates cannot use, and
flattening that tree into the right structure puts values in the wrong fields
(dict keys flatten in sorted order, not in field order). The tests below pin
both behaviours down.
"""

from __future__ import annotations

import _digits
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optaxtra
from optaxtra import masks, schedules

pytestmark = pytest.mark.heavy

STEPS = 20
BATCH_SIZE = 32


def _lr():
  return schedules.linear_warmup(schedules.cosine_decay(1e-2, 2 * STEPS), 8)


OPTIMIZERS = {
  "adamax_clipped": lambda: optaxtra.adamax_clipped(
    _lr(),
    weight_decay=1e-2,
    weight_decay_mask=masks.path_mask(exclude=["bias"]),
  ),
  "chain_scale_by_adam": lambda: optax.chain(
    optax.clip_by_global_norm(1.0),
    optaxtra.scale_by_adam(bias_correction=False),
    optaxtra.scale_by_learning_rate(_lr()),
    optaxtra.add_decayed_weights_decoupled(
      1e-2, schedule=_lr(), mask=masks.path_mask(include=["kernel"])
    ),
  ),
  "multisteps_adamax_clipped": lambda: optax.MultiSteps(
    optaxtra.adamax_clipped(_lr(), bias_correction=True, weight_decay=1e-3),
    every_k_schedule=3,
  ),
}


def _init_params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
    "hidden": {
      "kernel": jax.random.normal(k1, (_digits.NUM_FEATURES, 32)) * 0.2,
      "bias": jnp.zeros(32),
    },
    "out": {
      "kernel": jax.random.normal(k2, (32, _digits.NUM_CLASSES)) * 0.2,
      "bias": jnp.zeros(_digits.NUM_CLASSES),
    },
  }


def _loss(params, x, y):
  h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _make_step(tx):
  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def _run(step, params, opt_state, batches):
  x, y = _digits.load()[:2]
  for idx in batches:
    params, opt_state = step(params, opt_state, x[idx], y[idx])
  return params, opt_state


def _assert_identical(a, b):
  """Same tree (NamedTuple types included), dtypes and values, bit for bit."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(
    jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
  ):
    where = jax.tree_util.keystr(path)
    assert x.dtype == y.dtype and x.shape == y.shape, where
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)


def _save(path, tree):
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree)
    ckptr.wait_until_finished()


def _restore(path, target=None):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target) if target is not None else ckptr.restore(path)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_from_checkpoint_is_bit_for_bit(name, tmp_path):
  tx = OPTIMIZERS[name]()
  step = _make_step(tx)
  batches = _digits.batches(2 * STEPS, BATCH_SIZE)
  params = _init_params()

  straight = _run(step, params, tx.init(params), batches)

  first = _run(step, params, tx.init(params), batches[:STEPS])
  _save(tmp_path / "ckpt", {"params": first[0], "opt_state": first[1]})
  # A new process would rebuild the optimizer and know only the shapes.
  tx_again = OPTIMIZERS[name]()
  target = jax.eval_shape(
    lambda: {"params": _init_params(), "opt_state": tx_again.init(_init_params())}
  )
  restored = _restore(tmp_path / "ckpt", target)
  _assert_identical(restored, {"params": first[0], "opt_state": first[1]})
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(first), strict=True):
    assert a is not b  # fresh arrays read from disk, not the saved ones
  resumed = _run(
    _make_step(tx_again), restored["params"], restored["opt_state"], batches[STEPS:]
  )

  _assert_identical(resumed, straight)
  # The run did train: the second half moved the params.
  assert not np.array_equal(
    resumed[0]["hidden"]["kernel"], first[0]["hidden"]["kernel"]
  )


def _adamax_state(steps=3):
  tx = OPTIMIZERS["adamax_clipped"]()
  params = _init_params()
  params, state = _run(
    _make_step(tx), params, tx.init(params), _digits.batches(steps, BATCH_SIZE)
  )
  return tx, params, state


def test_restore_without_target_gives_dicts_and_lists(tmp_path):
  tx, params, state = _adamax_state()
  _save(tmp_path / "ckpt", {"opt_state": state, "chain": (state, state)})
  raw = _restore(tmp_path / "ckpt")

  # A tuple comes back as a list, a NamedTuple as a dict keyed by field name.
  assert isinstance(raw["chain"], list) and len(raw["chain"]) == 2
  for loaded in [raw["opt_state"], *raw["chain"]]:
    assert isinstance(loaded, dict)
    fields = {f for f in state._fields if getattr(state, f) is not None}
    assert fields <= set(loaded) <= set(state._fields)
    for field in fields:
      _assert_identical(loaded[field], getattr(state, field))

  # That tree is not an optaxtra state: the update says so and how to fix it.
  grads = jax.tree.map(jnp.ones_like, params)
  with pytest.raises(TypeError, match=r"got dict.*restore against"):
    tx.update(grads, raw["opt_state"], params)

  # And forcing it into the state's structure by flattening scrambles it: dict
  # keys flatten sorted, so the moment mu gets the scalar decay_rate, ...
  treedef = jax.tree.structure(state)
  scrambled = jax.tree.unflatten(treedef, jax.tree.leaves(raw["opt_state"]))
  first_mu = jax.tree.leaves(scrambled.mu)[0]
  assert first_mu.shape == () != jax.tree.leaves(state.mu)[0].shape
  assert float(first_mu) == float(state.decay_rate)


def test_restore_against_eval_shape_target_gives_the_state_back(tmp_path):
  tx, params, state = _adamax_state()
  _save(tmp_path / "ckpt", state)
  # The right way: describe the state with jax.eval_shape (no arrays are
  # allocated) and restore against it.
  restored = _restore(tmp_path / "ckpt", jax.eval_shape(tx.init, params))
  assert type(restored) is type(state)
  _assert_identical(restored, state)
  grads = jax.tree.map(jnp.ones_like, params)
  _assert_identical(
    jax.jit(tx.update)(grads, restored, params),
    jax.jit(tx.update)(grads, state, params),
  )


def test_restore_into_a_different_optimizer_is_refused(tmp_path):
  _, params, state = _adamax_state(steps=1)
  _save(tmp_path / "ckpt", state)
  other = OPTIMIZERS["chain_scale_by_adam"]()
  with pytest.raises(ValueError, match=r"(?i)mismatch"):
    _restore(tmp_path / "ckpt", jax.eval_shape(other.init, params))
