"""The learning-rate scale: set mid-run, never recompiling, exact at 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need
from _harness import assert_max_ulp, cross_program_ulps

import optaxtra
from optaxtra import masks

SHAPES = {"w": (3, 2), "b": (2,)}


def _params():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


def _grads(n, seed=1):
  rng = np.random.default_rng(seed)
  return [
    {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    for _ in range(n)
  ]


SCHED = optax.linear_schedule(1e-2, 1e-3, 10)


def test_setting_the_scale_never_recompiles_and_the_next_update_uses_it():
  tx = optaxtra.adamax_clipped(SCHED, weight_decay=1e-2)
  params = _params()
  traces = []

  @jax.jit
  def step(p, s, g):
    traces.append(None)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for n, g in enumerate(_grads(6)):
    scale = [1.0, 0.5, 0.5, 0.1, 2.0, 1.0][n]
    state = optaxtra.set_learning_rate_scale(state, scale)
    params, state = step(params, state, g)
    info = optaxtra.inspect(state)
    np.testing.assert_allclose(info["learning_rate"], scale * SCHED(n), rtol=1e-6)
    np.testing.assert_allclose(info["learning_rate_scale"], scale)
    # The default coupling follows the scaled learning rate, as PyTorch's AdamW.
    np.testing.assert_allclose(info["decay_rate"], 1e-2 * scale * SCHED(n), rtol=1e-6)
    np.testing.assert_allclose(info["weight_decay"], 1e-2)
  assert len(traces) == 1


def test_an_independent_decay_does_not_follow_the_scale():
  tx = optaxtra.adamax_clipped(
    0.1, weight_decay=1e-3, weight_decay_coupling="independent"
  )
  params = _params()
  state = optaxtra.set_learning_rate_scale(tx.init(params), 0.5)
  _, state = tx.update(_grads(1)[0], state, params)
  np.testing.assert_allclose(optaxtra.inspect(state)["decay_rate"], 1e-3, rtol=1e-6)


def _chains():
  ours = optax.chain(optax.scale_by_adam(), optaxtra.scale_by_learning_rate(SCHED))
  theirs = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(SCHED))
  return ours, theirs


def test_at_scale_one_it_is_the_optimizer_without_it():
  ours, theirs = _chains()
  params, grads = _params(), _grads(8)

  # In one compiled program: the same bits (1.0 * x is x).
  @jax.jit
  def both(so, st, g):
    uo, so = ours.update(g, so, params)
    ut, st = theirs.update(g, st, params)
    return uo, ut, so, st

  so, st = ours.init(params), theirs.init(params)
  for g in grads:
    uo, ut, so, st = both(so, st, g)
    for a, b in zip(jax.tree.leaves(uo), jax.tree.leaves(ut), strict=True):
      np.testing.assert_array_equal(a, b)

  # Against Optax's own program, where the learning rate is folded into the
  # step: two programs round differently (multiply-adds contracted or not), so
  # within the library's cross-program bound.
  so, st = ours.init(params), theirs.init(params)
  step_o, step_t = jax.jit(ours.update), jax.jit(theirs.update)
  for n, g in enumerate(grads, start=1):
    uo, so = step_o(g, so, params)
    ut, st = step_t(g, st, params)
    for a, b in zip(jax.tree.leaves(uo), jax.tree.leaves(ut), strict=True):
      assert_max_ulp(a, b, cross_program_ulps(n))


def _find_scales(state):
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return [float(x) for k, x in leaves if jax.tree_util.keystr(k).endswith("scale")]


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax.chain(optax.adam(1.0), optaxtra.scale_by_learning_rate(0.1)),
    lambda: optax.masked(optaxtra.adamax_clipped(0.1), {"w": True, "b": False}),
    lambda: optax.transforms.partition(
      {"a": optaxtra.adamax_clipped(0.1), "b": optaxtra.scale_by_learning_rate(0.2)},
      {"w": "a", "b": "b"},
    ),
    lambda: optax.MultiSteps(optaxtra.adamax_clipped(0.1), 2),
    lambda: optax.inject_hyperparams(optaxtra.adamax_clipped)(learning_rate=0.1),
    lambda: optaxtra.with_frozen(optaxtra.adamax_clipped(0.1), frozen="^b$"),
  ],
  ids=["chain", "masked", "partition", "multisteps", "inject", "with_frozen"],
)
def test_every_stage_in_any_state_is_set_eagerly_and_under_jit(make):
  tx = make()
  state = tx.init(_params())
  n = len(_find_scales(state))
  assert n >= 1 and set(_find_scales(state)) == {1.0}
  assert set(_find_scales(optaxtra.set_learning_rate_scale(state, 0.25))) == {0.25}
  traced = jax.jit(optaxtra.set_learning_rate_scale)(state, jnp.float32(0.5))
  assert jax.tree.structure(traced) == jax.tree.structure(state)
  assert set(_find_scales(traced)) == {0.5}
  assert len(_find_scales(traced)) == n


def test_refusals_name_the_fix():
  with pytest.raises(ValueError, match="no optaxtra learning-rate stage"):
    optaxtra.set_learning_rate_scale(optax.adam(1e-3).init(_params()), 0.5)
  state = optaxtra.adamax_clipped(0.1).init(_params())
  for bad in (-1.0, float("nan"), float("inf"), 1e39):  # 1e39 is inf in float32
    with pytest.raises(ValueError, match=r"scale.* in \[0, inf\)"):
      optaxtra.set_learning_rate_scale(state, bad)
  with pytest.raises(TypeError, match=r"must be a real scalar.*not a scalar"):
    optaxtra.set_learning_rate_scale(state, jnp.ones(2))
  with pytest.raises(TypeError, match="not a string"):
    optaxtra.set_learning_rate_scale(state, "0.5")
  with pytest.raises(TypeError, match="must be a number"):
    optaxtra.set_learning_rate_scale(state, True)
  # The state of optax.inject_hyperparams: the fix is its own hyperparams.
  inject = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  with pytest.raises(ValueError, match=r"state.hyperparams\['learning_rate'\]"):
    optaxtra.set_learning_rate_scale(inject.init(_params()), 0.5)


def test_scale_of_one_group_of_a_learning_rate_by_path():
  params = {"head": jnp.ones(2), "body": jnp.ones(2)}
  tx = optaxtra.scale_by_learning_rate(optaxtra.by_path({"^head": 0.1}, default=0.01))
  state = tx.init(params)
  step = jax.jit(tx.update)
  state = optaxtra.set_learning_rate_scale(state, 0.5, group="^head")
  updates, state = step(params, state)
  assert float(updates["head"][0]) == np.float32(-0.1) * np.float32(0.5)
  assert float(updates["body"][0]) == np.float32(-0.01)
  state = optaxtra.set_learning_rate_scale(state, 2.0, group="default")
  updates, state = step(params, state)
  assert float(updates["body"][0]) == np.float32(-0.01) * np.float32(2.0)
  assert step._cache_size() == 1  # setting a group's scale never recompiles
  info = optaxtra.inspect(state)
  assert float(info["learning_rate[^head]"]) == np.float32(0.05)
  assert float(info["learning_rate[default]"]) == np.float32(0.02)
  with pytest.raises(ValueError, match=r"names no by_path rule.*'\^head', 'default'"):
    optaxtra.set_learning_rate_scale(state, 1.0, group="^tail")


@pytest.mark.heavy
def test_nnx_optimizer_state():
  need("flax")
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  tx = optaxtra.adamax_clipped(0.1, weight_decay=1e-2)
  try:
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  except TypeError:  # flax < 0.11 has no wrt
    optimizer = nnx.Optimizer(model, tx)
  new = optaxtra.set_learning_rate_scale(optimizer.opt_state, 0.5)
  assert jax.tree.structure(new) == jax.tree.structure(optimizer.opt_state)
  assert float(optaxtra.inspect(new)["learning_rate_scale"]) == 0.5


# --- accumulation: k micro-batches are one batch k times as large -------------


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax.chain(
      optaxtra.scale_by_adam(),
      optaxtra.scale_by_learning_rate(SCHED),
      optaxtra.scale_by_path({"^b$": 0.5}, default=1.0),
    ),
    lambda: optax.chain(
      optaxtra.adamax_clipped(SCHED, weight_decay=1e-2),
      optaxtra.scale_by_path({"^b$": lambda n: 1.0 / (1 + n)}, default=1.0),
    ),
    lambda: optax.chain(
      optaxtra.scale_by_adamax_clipped(),
      optaxtra.scale_by_schedule(lambda n: -0.01 * (n + 1)),
      optaxtra.add_decayed_weights_decoupled(
        1e-3, mask=masks.path_mask(include=["w"]), schedule=None
      ),
    ),
  ],
  ids=["adam_path", "alias_path_schedule", "stages"],
)
def test_multisteps_counts_real_updates(make):
  k, rounds = 3, 3
  multi, one = optax.MultiSteps(make(), every_k_schedule=k), make()
  grads = _grads(k * rounds, seed=4)
  pm = po = _params()
  sm, so = multi.init(pm), one.init(po)
  multi_update, one_update = jax.jit(multi.update), jax.jit(one.update)
  for r in range(rounds):
    for g in grads[r * k : (r + 1) * k]:
      u, sm = multi_update(g, sm, pm)
      pm = optax.apply_updates(pm, u)
    mean = jax.tree.map(lambda *g: sum(g) / k, *grads[r * k : (r + 1) * k])
    u, so = one_update(mean, so, po)
    po = optax.apply_updates(po, u)
  for a, b in zip(jax.tree.leaves(pm), jax.tree.leaves(po), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the mean rounds
  inner = optaxtra.inspect(sm.inner_opt_state)
  outer = optaxtra.inspect(so)
  assert {k: int(v) for k, v in inner.items() if k.endswith("count")} == {
    k: int(v) for k, v in outer.items() if k.endswith("count")
  }
  assert int(outer["count"]) == rounds
  for name in ("learning_rate", "decay_rate"):
    if name in outer:
      np.testing.assert_allclose(inner[name], outer[name], rtol=1e-7)


def test_extra_args_reach_a_plateau_stage_after_the_ready_made_optimizer():
  tx = optax.chain(
    optaxtra.record_norm(),
    optaxtra.adamax_clipped(0.1, weight_decay=1e-2),
    optaxtra.reduce_on_plateau(factor=0.5, patience=0),
  )
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for loss in (1.0, 2.0, 3.0):
    _, state = update(_grads(1)[0], state, params, value=loss)
  # Two updates without improvement after the first: two halvings decided.
  assert float(optaxtra.inspect(state)["plateau_next_scale"]) == 0.25
