"""scale_by_path: multipliers by path, step by step (layer-wise: test_layerwise)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
      r"multipliers has no rule for 1 parameter\(s\): 'head/kernel'.*default=",
    ),
    ({"^nope/": 0.5}, {"default": 1.0}, ValueError, r"rule '\^nope/' matches no"),
    (
      {"encoder": 0.5, "encoder/bias": 2.0},
      {"default": 1.0},
      ValueError,
      r"rule 'encoder/bias' never applies.*earlier rule 'encoder'",
    ),
    (
      {"bias": -0.5},
      {"default": 1.0},
      ValueError,
      r"multipliers\[bias\] must be in \[0, inf\), got -0.5",
    ),
    ({"bias": float("nan")}, {"default": 1.0}, ValueError, r"multipliers\[bias\]"),
    # inf in float32, the precision the multiplier is used in
    (
      {"bias": 1e39},
      {"default": 1.0},
      ValueError,
      r"multipliers\[bias\]=1e\+39 overflows",
    ),
    ({"bias": 0.5}, {"default": -1.0}, ValueError, r"multipliers\[default\]"),
    (
      {"bias": lambda n: -1.0},
      {"default": 1.0},
      ValueError,
      r"multipliers\[bias\] is -1.0 at step 0",
    ),
    # A schedule that is not finite at step 0 is refused at init.
    (
      {"bias": lambda n: jnp.inf},
      {"default": 1.0},
      ValueError,
      r"multipliers\[bias\] is inf at step 0",
    ),
    (
      {"bias": lambda n: jnp.float32(jnp.nan)},
      {"default": 1.0},
      ValueError,
      r"multipliers\[bias\] is nan at step 0",
    ),
    ({"bias": lambda n: "x"}, {"default": 1.0}, TypeError, "bias"),
    ({"bias": True}, {"default": 1.0}, TypeError, r"multipliers\[bias\]"),
    ({}, {}, ValueError, "multipliers is empty"),
    ({"(": 1.0}, {"default": 1.0}, ValueError, "multipliers"),
  ],
)
def test_bad_tables_are_refused_with_the_fix(multipliers, kwargs, error, match):
  with pytest.raises(error, match=match):
    optaxtra.scale_by_path(multipliers, **kwargs).init(_params())


def test_a_schedule_going_negative_raises_at_its_step_or_becomes_nan_under_jit():
  tx = optaxtra.scale_by_path({"^head/": lambda n: 1.0 - n}, default=1.0)
  params = _params()
  g = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(2):  # steps 0 and 1: multipliers 1 and 0
    _, state = tx.update(g, state)
  with pytest.raises(ValueError, match=r"multipliers\[\^head/\] is -1.0 at step 2"):
    tx.update(g, state)
  # Traced, the value cannot be checked: it becomes NaN, and so do its updates.
  updates, new = jax.jit(tx.update)(g, state)
  assert np.isnan(updates["head"]["kernel"]).all()
  assert np.array_equal(updates["encoder"]["kernel"], np.ones((3, 2), np.float32))
  assert np.isnan(new.multipliers[2]) and new.multipliers[0] == 1.0


def test_pairs_and_by_path_are_the_same_table():
  params = _params()
  g = jax.tree.map(jnp.ones_like, params)
  txs = [
    optaxtra.scale_by_path({"bias": 0.5, "^head/": 3.0}, default=2.0),
    optaxtra.scale_by_path([("bias", 0.5), ("^head/", 3.0)], default=2.0),
    optaxtra.scale_by_path(optaxtra.by_path({"bias": 0.5, "^head/": 3.0}, default=2.0)),
  ]
  for tx in txs:
    state = tx.init(params)
    np.testing.assert_array_equal(state.multipliers, [0.5, 2.0, 3.0])
    updates, _ = tx.update(g, state)
    assert float(updates["head"]["kernel"][0, 0]) == 3.0
  with pytest.raises(TypeError, match="carries its own default"):
    optaxtra.scale_by_path(optaxtra.by_path({"bias": 0.5}), default=1.0)
  with pytest.raises(ValueError, match="compiled with flags"):
    optaxtra.scale_by_path({re.compile("BIAS", re.I): 0.5}, default=1.0)
  for pattern in ("(?i)BIAS", re.compile("(?i)BIAS")):  # inline flags are kept
    tx = optaxtra.scale_by_path({pattern: 0.5}, default=1.0)
    np.testing.assert_array_equal(tx.init(params).multipliers, [0.5, 1.0, 1.0])


def test_strict_false_lets_rules_match_nothing():
  tx = optaxtra.scale_by_path(
    {"^nope/": 0.5, "encoder": 0.25, "encoder/bias": 9.0}, default=1.0, strict=False
  )
  state = tx.init(_params())
  np.testing.assert_array_equal(state.multipliers, [0.25, 0.25, 1.0])


def _labels(params):
  return {"encoder": {"kernel": "a", "bias": "b"}, "head": {"kernel": "a"}}


@pytest.mark.parametrize("where", ["with_frozen", "masked", "partition"])
def test_inside_masked_partition_and_with_frozen(where):
  # One table for the whole model: the rules see every path, hidden or not,
  # and only the parameters the stage sees get a multiplier.
  stage = optaxtra.scale_by_path({"bias": 0.5, "^head/": 3.0}, default=2.0)
  inner = optax.chain(optax.sgd(1.0), stage)
  if where == "with_frozen":
    tx = optaxtra.with_frozen(inner, frozen="bias")
  elif where == "masked":
    tx = optax.masked(inner, lambda p: jax.tree.map(lambda x: x.ndim == 2, p))
  else:
    tx = optax.transforms.partition({"a": inner, "b": optax.set_to_zero()}, _labels)
  params = _params()
  g = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(g, state, params)
  assert float(updates["encoder"]["kernel"][0, 0]) == -2.0
  assert float(updates["head"]["kernel"][0, 0]) == -3.0
  # bias: frozen (with_frozen, partition) or passed through by optax.masked
  assert float(updates["encoder"]["bias"][0]) == (1.0 if where == "masked" else 0.0)
  (inner_state,) = [
    s
    for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, optaxtra.ScaleByPathState)
    )
    if isinstance(s, optaxtra.ScaleByPathState)
  ]
  np.testing.assert_array_equal(inner_state.multipliers, [2.0, 3.0])


def test_a_rule_for_hidden_parameters_only_is_still_checked():
  stage = optaxtra.scale_by_path({"^nope/": 0.5}, default=1.0)
  tx = optaxtra.with_frozen(stage, frozen="bias")
  with pytest.raises(ValueError, match=r"rule '\^nope/' matches no"):
    tx.init(_params())
  # A rule whose paths are all hidden is fine: the table describes the model.
  tx = optaxtra.with_frozen(
    optaxtra.scale_by_path({"bias": 0.5}, default=1.0), frozen="bias"
  )
  tx.update(jax.tree.map(jnp.ones_like, _params()), tx.init(_params()))
  # Only the parameters the stage sees need a rule.
  tx = optaxtra.with_frozen(optaxtra.scale_by_path({"kernel": 0.5}), frozen="bias")
  tx.update(jax.tree.map(jnp.ones_like, _params()), tx.init(_params()))


def test_a_tree_of_multipliers_is_refused():
  with pytest.raises(TypeError, match="multipliers"):
    optaxtra.scale_by_path({"encoder": {"kernel": 0.5}}, default=1.0)  # type: ignore[dict-item]
  with pytest.raises(TypeError, match="mapping pattern -> multiplier"):
    optaxtra.scale_by_path(0.5)  # type: ignore[arg-type]
