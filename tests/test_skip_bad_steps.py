"""skip_bad_steps: bad steps are skipped, the inner state is untouched, one program.

Bit-for-bit comparisons are made only between runs of one compiled program
(the same jitted train step fed the bad steps or not); against the plain
optimizer, another program, the bound is the contract's cross-program ulps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra
from optaxtra._skip_bad_steps import APPLIED, NON_FINITE, SPIKE, WARMUP

SHAPES = {"w": (4, 3), "b": (3,)}
KEYS = {
  "count",
  "skipped_steps",
  "consecutive_skipped_steps",
  "last_skip_reason",
  "gave_up",
}


def _params(dtype=jnp.float32):
  return _harness.normal_params(dtype, 0, SHAPES)


def _grads(n, seed=1, dtype=jnp.float32, scale=1.0):
  rng = np.random.default_rng(seed)
  return [
    {k: jnp.asarray(scale * rng.normal(size=s), dtype) for k, s in SHAPES.items()}
    for _ in range(n)
  ]


def _poison(g, x, key="w"):
  """``g`` with one entry of ``g[key]`` set to ``x`` (NaN or inf)."""
  return {**g, key: g[key].at[(0,) * g[key].ndim].set(x)}


def _bits(tree):
  """Every leaf's bytes: equality is equality bit for bit (NaNs included)."""
  return [(np.asarray(x).dtype, np.asarray(x).tobytes()) for x in jax.tree.leaves(tree)]


def _assert_same_bits(a, b, what=""):
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  assert _bits(a) == _bits(b), what


def _inner():
  """Clipping (which turns an inf gradient into a finite update), then Adam
  with a schedule (so a count that moved would show in the updates)."""
  return optax.chain(
    optax.clip(1.0),
    optax.inject_hyperparams(optax.adam)(
      learning_rate=optax.linear_schedule(1e-2, 1e-3, 30)
    ),
  )


def _train_step(tx):
  def step(params, state, g, value):
    updates, state = tx.update(g, state, params, value=value)
    return optax.apply_updates(params, updates), state, updates

  return jax.jit(step)


# --- the run ------------------------------------------------------------------


def test_thirty_steps_with_three_bad_ones_equal_the_27_good_steps():
  # Steps 5 (a NaN gradient entry), 12 (an inf one: clipping would make its
  # update finite) and 21 (finite gradients, a NaN loss) are bad.
  params0 = _params()
  grads = _grads(30)
  values = [jnp.float32(1.0 / (i + 1)) for i in range(30)]
  grads[5] = _poison(grads[5], jnp.nan)
  grads[12] = _poison(grads[12], jnp.inf, key="b")
  values[21] = jnp.float32(jnp.nan)
  bad = {5: NON_FINITE, 12: NON_FINITE, 21: NON_FINITE}

  tx = optaxtra.skip_bad_steps(_inner())
  step = _train_step(tx)
  p, s = params0, tx.init(params0)
  for i, (g, v) in enumerate(zip(grads, values, strict=True)):
    p_before, inner_before = p, s.inner_state
    p, s, u = step(p, s, g, v)
    if i in bad:
      _assert_same_bits(u, jax.tree.map(jnp.zeros_like, u), f"step {i}")
      _assert_same_bits(p, p_before, f"step {i}")
      _assert_same_bits(s.inner_state, inner_before, f"step {i}")
      assert int(s.last_skip_reason) == bad[i]
    else:
      assert int(s.last_skip_reason) == APPLIED
  assert int(s.skipped_steps) == 3
  assert step._cache_size() == 1

  # The same compiled step fed only the 27 good steps: the same bits. Each
  # good step computes the same expression from the same inputs as in the
  # full run, and a skipped step returns the inner state's own bits (a
  # select), so nothing differs by even a rounding.
  good = [i for i in range(30) if i not in bad]
  q, t = params0, tx.init(params0)
  for i in good:
    q, t, _ = step(q, t, grads[i], values[i])
  _assert_same_bits(q, p, "params")
  _assert_same_bits(t.inner_state, s.inner_state, "inner state")
  assert int(t.skipped_steps) == 0 and step._cache_size() == 1

  # The plain optimizer on the good steps is another program (the selects
  # fuse differently): equal within the contract's cross-program ulps.
  plain = _inner()
  plain_step = jax.jit(
    lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *plain.update(g, s, p)
    )
  )
  r, rs = params0, plain.init(params0)
  for i in good:
    r, rs = plain_step(r, rs, grads[i])
  assert optaxtra.inspect(rs)["count"] == optaxtra.inspect(s)["count"] == 27
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(r), strict=True):
    _harness.assert_max_ulp(a, b, _harness.cross_program_ulps(27))


def _spike_run(spike_sigma, *, at=20, factor=1000.0):
  params = _params()
  grads = _grads(at + 2)
  grads[at] = jax.tree.map(lambda x: factor * x, grads[at])
  tx = optaxtra.skip_bad_steps(optax.adam(1e-2), spike_sigma=spike_sigma, window=50)
  step = jax.jit(tx.update)
  state, states, updates = tx.init(params), [], []
  for g in grads:
    u, state = step(g, state, params)
    states.append(state)
    updates.append(u)
  assert step._cache_size() == 1
  return states, updates


def test_a_thousandfold_spike_is_skipped_with_spike_sigma_and_applied_without():
  states, updates = _spike_run(6.0)
  before, at, after = states[19], states[20], states[21]
  assert int(at.last_skip_reason) == SPIKE
  _assert_same_bits(updates[20], jax.tree.map(jnp.zeros_like, updates[20]))
  _assert_same_bits(at.inner_state, before.inner_state)
  # The spike's norm did not enter the statistics.
  _assert_same_bits(
    (at.log_norms, at.num_norms, at.next_norm),
    (before.log_norms, before.num_norms, before.next_norm),
  )
  assert int(after.last_skip_reason) == APPLIED
  assert int(after.num_norms) == 21
  assert int(after.skipped_steps) == 1

  plain_states, plain_updates = _spike_run(None)
  assert int(plain_states[20].last_skip_reason) == APPLIED
  assert plain_states[20].log_norms is None  # no statistics kept without it
  assert optaxtra.inspect(plain_states[20])["count"] == 21
  assert all(bool(jnp.any(u != 0)) for u in jax.tree.leaves(plain_updates[20]))


def test_no_spike_test_during_the_warm_up():
  # With fewer than 10 accepted norms the spike is applied, and then counts.
  states, _ = _spike_run(6.0, at=WARMUP - 1)
  assert int(states[WARMUP - 1].last_skip_reason) == APPLIED
  assert int(states[WARMUP - 1].num_norms) == WARMUP


# --- the contract ------------------------------------------------------------------


def test_contract_one_compilation_scan_and_saturating_counts():
  params = _params()
  grads = _grads(10)
  grads[3] = _poison(grads[3], jnp.nan)
  lr = optax.linear_schedule(0.1, 0.01, 10)
  tx = optaxtra.skip_bad_steps(optax.sgd(lr, 0.9), spike_sigma=6.0, window=4)
  # One trace in ten jitted steps (one of them skipped), lax.scan = the loop.
  _harness.check_contract(tx, params, grads)
  _harness.check_count_saturates(tx, params, _grads(2))


def test_check_transformation_passes():
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  optaxtra.testing.check_transformation(
    optaxtra.skip_bad_steps(
      optax.chain(optax.adam(1e-3), optaxtra.reduce_on_plateau()),
      spike_sigma=6.0,
      max_consecutive=3,
    ),
    params,
    extra_args={"value": 1.0},
  )


def test_a_skipped_step_leaves_the_inner_state_bit_identical():
  # One inner optimizer holding every kind of state a skip must not touch:
  # moments and counts (Adam), a schedule's hyperparameters
  # (inject_hyperparams), a frozen group (with_frozen), plateau counters and
  # the values they were given (reduce_on_plateau), an average of the weights
  # (average_params). MultiSteps' state: see the accumulation tests.
  inner = optax.chain(
    optaxtra.with_frozen(
      optax.inject_hyperparams(optax.adam)(
        learning_rate=optax.linear_schedule(1e-2, 0.0, 10)
      ),
      frozen="^b$",
    ),
    optaxtra.reduce_on_plateau(patience=0, accumulation_steps=2),
    optaxtra.average_params(0.9),
  )
  tx = optaxtra.skip_bad_steps(inner, spike_sigma=6.0)
  params = _params()
  step = jax.jit(tx.update)
  g1, g2, g3 = _grads(3)
  state = tx.init(params)
  for g, v in ((g1, 3.0), (g2, 2.0), (g3, 2.5)):
    _, state = step(g, state, params, value=jnp.float32(v))
  for bad_g, v in ((_poison(g1, jnp.nan), 1.0), (g1, jnp.nan)):
    u, after = step(bad_g, state, params, value=jnp.float32(v))
    _assert_same_bits(after.inner_state, state.inner_state)
    _assert_same_bits(u, jax.tree.map(jnp.zeros_like, u))
  info = optaxtra.inspect(after)
  assert info["count"] == 3 and info["skipped_steps"] == 1
  assert float(info["learning_rate"]) == pytest.approx(1e-2 * (1 - 2 / 10))
  assert int(info["plateau_bad_epochs"]) == 0
  np.testing.assert_array_equal(
    optaxtra.averaged_params(after)["w"], optaxtra.averaged_params(state)["w"]
  )


# float64 params hold float64, bfloat16 and float32 leaves: every dtype at once.
@pytest.mark.sweep(quick=["float64"])
def test_zero_updates_in_the_params_dtypes(float_dtype):
  params = {
    "w": jnp.ones((2, 3), float_dtype),
    "b": jnp.ones(3, jnp.bfloat16),
    "s": jnp.ones((), jnp.float32),
  }
  tx = optaxtra.skip_bad_steps(optax.sgd(0.1, 0.9), spike_sigma=6.0)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  u, new = jax.jit(tx.update)(grads, state, params)
  for k in params:
    assert u[k].dtype == params[k].dtype and u[k].shape == params[k].shape
    assert not np.signbit(np.asarray(u[k], np.float64)).any()  # +0, not -0
    np.testing.assert_array_equal(np.asarray(u[k], np.float64), 0.0)
  _harness.assert_same_avals(state, new, "state")
  # The statistics are kept in the params' widest real dtype, float32 at least.
  assert state.log_norms is not None
  assert state.log_norms.dtype == jnp.promote_types(float_dtype, jnp.float32)


# --- what is checked ---------------------------------------------------------------


def test_the_incoming_gradients_are_checked_not_the_inner_output():
  # optax.clip turns an inf gradient entry into a finite update of 1 (where
  # clip_by_global_norm would give NaN): the wrapper skips the step all the
  # same, as it looks at the gradients.
  params = _params()
  g = _poison(_grads(1)[0], jnp.inf)
  inner = optax.chain(optax.clip(1.0), optax.sgd(0.1))
  u_inner, _ = inner.update(g, inner.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u_inner))
  tx = optaxtra.skip_bad_steps(inner)
  u, state = tx.update(g, tx.init(params), params)
  assert int(state.last_skip_reason) == NON_FINITE
  _assert_same_bits(u, jax.tree.map(jnp.zeros_like, u))


def test_a_bad_value_skips_and_a_good_one_reaches_reduce_on_plateau():
  tx = optaxtra.skip_bad_steps(
    optax.chain(optax.sgd(1.0), optaxtra.reduce_on_plateau(accumulation_steps=4))
  )
  params = _params()
  step = jax.jit(tx.update)
  g = _grads(1)[0]
  state = tx.init(params)
  _, state = step(g, state, params, value=jnp.float32(2.0))
  _, state = step(g, state, params, value=jnp.float32(3.0))
  plateau = state.inner_state[1]
  assert float(plateau.value_sum) == 5.0 and int(plateau.value_count) == 2
  # A skipped step's value never reaches the plateau logic.
  for bad_g, v in ((_poison(g, jnp.nan), 7.0), (g, jnp.inf)):
    _, after = step(bad_g, state, params, value=jnp.float32(v))
    assert float(after.inner_state[1].value_sum) == 5.0
  # Without a value the plateau stage says what it needs.
  with pytest.raises(TypeError, match="reduce_on_plateau: update needs the"):
    tx.update(g, state, params)
  # An inner optimizer that takes no value is given none; the value is still
  # checked.
  plain = optaxtra.skip_bad_steps(optax.sgd(0.1))
  _, s = plain.update(g, plain.init(params), params, value=jnp.float32(jnp.nan))
  assert int(s.skipped_steps) == 1
  with pytest.raises(
    TypeError, match=r"skip_bad_steps: value must be a (real )?number"
  ):
    plain.update(g, s, params, value="loss")
  with pytest.raises(
    TypeError, match=r"skip_bad_steps: value must be a (real )?number"
  ):
    plain.update(g, s, params, value=jnp.array(True))


def test_extra_args_are_passed_on():
  seen = {}

  def update(updates, state, params=None, **extra):
    seen.update(extra)
    return updates, state

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  tx = optaxtra.skip_bad_steps(inner)
  params = _params()
  tx.update(_grads(1)[0], tx.init(params), params, value=1.0, key=3)
  assert seen == {"value": 1.0, "key": 3}


# --- gradient accumulation ------------------------------------------------------


def test_around_multisteps_a_bad_micro_batch_is_dropped():
  params = _params()
  g1, g2, g3 = _grads(3)
  multi = optax.MultiSteps(optax.adam(1e-2), 3)
  tx = optaxtra.skip_bad_steps(multi)
  step = jax.jit(tx.update)

  state = tx.init(params)
  _, state = step(g1, state, params)
  u, after = step(_poison(g2, jnp.nan), state, params)
  _assert_same_bits(after.inner_state, state.inner_state)  # accumulator, counters
  _assert_same_bits(u, jax.tree.map(jnp.zeros_like, u))
  _, after = step(g2, after, params)
  u_with_bad, after = step(g3, after, params)
  assert int(after.inner_state.gradient_step) == 1
  assert int(after.skipped_steps) == 1

  # The same compiled step without the bad micro-batch: the same bits.
  state = tx.init(params)
  for g in (g1, g2):
    _, state = step(g, state, params)
  u_clean, clean = step(g3, state, params)
  _assert_same_bits(u_with_bad, u_clean)
  _assert_same_bits(after.inner_state, clean.inner_state)
  # MultiSteps alone (another program): within cross-program ulps.
  multi_step = jax.jit(multi.update)
  s = multi.init(params)
  for g in (g1, g2, g3):
    u_multi, s = multi_step(g, s, params)
  for a, b in zip(jax.tree.leaves(u_with_bad), jax.tree.leaves(u_multi), strict=True):
    _harness.assert_max_ulp(a, b, _harness.cross_program_ulps(0))


def test_around_multisteps_gradient_transformation_the_value_reaches_inner():
  # MultiSteps(...).gradient_transformation() is a plain GradientTransformation
  # whose update takes keyword arguments: it is given the value.
  inner = optax.chain(optax.sgd(0.1), optaxtra.reduce_on_plateau(accumulation_steps=5))
  tx = optaxtra.skip_bad_steps(optax.MultiSteps(inner, 2).gradient_transformation())
  params = _params()
  step = jax.jit(tx.update)
  g = _grads(1)[0]
  state = tx.init(params)
  for gi, v in ((g, 1.0), (_poison(g, jnp.nan), 9.0), (g, 2.0)):
    _, state = step(gi, state, params, value=jnp.float32(v))
  assert int(state.skipped_steps) == 1
  assert int(state.inner_state.gradient_step) == 1
  assert float(state.inner_state.inner_opt_state[1].value_sum) == 2.0


def test_inside_multisteps_a_nan_stays_in_the_accumulator():
  # What the docs warn about: the other way round, Optax's MultiSteps keeps
  # the NaN (it clears its accumulator by multiplying it by 0), so every later
  # accumulated step is skipped.
  params = _params()
  multi = optax.MultiSteps(optaxtra.skip_bad_steps(optax.sgd(1.0)), 2)
  step = jax.jit(multi.update)
  g = _grads(1)[0]
  state = multi.init(params)
  for i, gi in enumerate([g, _poison(g, jnp.nan), g, g, g, g]):
    _, state = step(gi, state, params)
    if i >= 1:
      assert bool(jnp.isnan(state.acc_grads["w"]).any())
  assert int(state.inner_opt_state.skipped_steps) == 3  # every step after it
  assert int(optaxtra.inspect(state)["gradient_step"]) == 3


# --- giving up ----------------------------------------------------------------------


def test_max_consecutive_gives_up_applies_the_step_and_says_so():
  params = _params()
  g = _grads(1)[0]
  nan = _poison(g, jnp.nan)
  tx = optaxtra.skip_bad_steps(optax.sgd(0.1), max_consecutive=2)
  step = jax.jit(tx.update)
  state = tx.init(params)
  # A good step between bad ones resets the streak.
  for gi in (nan, nan, g, nan, nan):
    u, state = step(gi, state, params)
  info = optaxtra.inspect(state)
  assert int(info["consecutive_skipped_steps"]) == 2
  assert int(info["skipped_steps"]) == 4 and not bool(info["gave_up"])
  # The third bad step in a row is applied: the NaN reaches the update.
  u, state = step(nan, state, params)
  info = optaxtra.inspect(state)
  assert bool(info["gave_up"]) and int(info["last_skip_reason"]) == APPLIED
  assert int(info["consecutive_skipped_steps"]) == 0
  assert bool(jnp.isnan(u["w"]).any())
  # Sticky: from then on every step is applied, good or bad.
  for gi in (g, nan):
    u, state = step(gi, state, params)
    assert bool(state.gave_up) and int(state.skipped_steps) == 4
  assert bool(jnp.isnan(u["w"]).any())
  assert step._cache_size() == 1


def test_without_max_consecutive_it_never_gives_up():
  params = _params()
  tx = optaxtra.skip_bad_steps(optax.sgd(0.1))
  step = jax.jit(tx.update)
  state = tx.init(params)
  nan = _poison(_grads(1)[0], jnp.nan)
  for _ in range(30):
    _, state = step(nan, state, params)
  info = optaxtra.inspect(state)
  assert int(info["consecutive_skipped_steps"]) == 30 and not bool(info["gave_up"])


# --- compared with optax.apply_if_finite ---------------------------------------


def test_compared_with_optax_apply_if_finite():
  params = _params()
  g = _grads(8)
  nan = _poison(g[0], jnp.nan)
  # good, NaN gradient, good, NaN loss (finite gradients), good, NaN x3,
  # good, NaN
  seq = [
    (g[1], 1.0),
    (nan, 1.0),
    (g[2], 1.0),
    (g[3], jnp.nan),
    (g[5], 1.0),
    (nan, 1.0),
    (nan, 1.0),
    (nan, 1.0),
    (g[4], 1.0),
    (nan, 1.0),
  ]
  ours = optaxtra.skip_bad_steps(optax.adam(1e-2), max_consecutive=2)
  theirs = optax.apply_if_finite(optax.adam(1e-2), max_consecutive_errors=2)
  ours_step, theirs_step = jax.jit(ours.update), jax.jit(theirs.update)
  so, st = ours.init(params), theirs.init(params)
  applied_o, applied_t = [], []
  for gi, v in seq:
    uo, so = ours_step(gi, so, params, value=jnp.float32(v))
    ut, st = theirs_step(gi, st, params, value=jnp.float32(v))
    applied_o.append(int(so.last_skip_reason) == APPLIED)
    applied_t.append(bool(st.last_finite) or int(st.notfinite_count) > 2)
  # Step 1: both skip a NaN gradient. Step 3: only skip_bad_steps looks at
  # the loss. Steps 5-7: both skip two in a row and apply the third. Step 9:
  # apply_if_finite re-armed at the good step 8 and skips; skip_bad_steps
  # gave up for good and applies.
  t, f = True, False
  assert applied_o == [t, f, t, f, t, f, f, t, t, t]
  assert applied_t == [t, f, t, t, t, f, f, t, t, f]
  assert bool(so.gave_up) and int(so.skipped_steps) == 4
  assert int(st.total_notfinite) == 5
  # Before they part ways (step 3), the two compute the same updates.
  so, st = ours.init(params), theirs.init(params)
  for gi, _ in seq[:3]:
    uo, so = ours_step(gi, so, params, value=jnp.float32(1.0))
    ut, st = theirs_step(gi, st, params, value=jnp.float32(1.0))
    for a, b in zip(jax.tree.leaves(uo), jax.tree.leaves(ut), strict=True):
      _harness.assert_max_ulp(a, b, _harness.cross_program_ulps(0))


# --- where it sits ---------------------------------------------------------------


def test_around_with_frozen_every_gradient_is_checked_inside_only_the_trained():
  params = _params()
  bad_frozen = _poison(_grads(1)[0], jnp.nan, key="b")
  outside = optaxtra.skip_bad_steps(optaxtra.with_frozen(optax.sgd(0.1), frozen="^b$"))
  _, s = jax.jit(outside.update)(bad_frozen, outside.init(params), params)
  assert int(s.skipped_steps) == 1
  inside = optaxtra.with_frozen(optaxtra.skip_bad_steps(optax.sgd(0.1)), frozen="^b$")
  u, s = jax.jit(inside.update)(bad_frozen, inside.init(params), params)
  assert int(optaxtra.inspect(s)["skipped_steps"]) == 0
  np.testing.assert_array_equal(u["b"], 0.0)
  assert bool(jnp.all(u["w"] != 0))


def test_inspect_reports_the_counters_and_one_count():
  params = _params()
  for tx in (
    optaxtra.skip_bad_steps(optax.adam(1e-2)),
    optaxtra.skip_bad_steps(optax.adam(1e-2), spike_sigma=6.0),
  ):
    state = tx.init(params)
    assert set(optaxtra.inspect(state)) == KEYS
    _, state = tx.update(_poison(_grads(1)[0], jnp.nan), state, params)
    info = jax.jit(optaxtra.inspect)(state)
    assert set(info) == KEYS
    assert info["count"] == 0 and info["skipped_steps"] == 1
    assert info["last_skip_reason"] == NON_FINITE
  injected = optaxtra.skip_bad_steps(
    optax.inject_hyperparams(optax.sgd)(learning_rate=0.5)
  )
  info = optaxtra.inspect(injected.init(params))
  assert set(info) == KEYS | {"learning_rate"}
  assert float(info["learning_rate"]) == 0.5


# --- bad arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"inner": optax.adam}, TypeError, "inner must be an optax.GradientTransformation"),
    ({"inner": None}, TypeError, "inner must be an optax.GradientTransformation"),
    ({"spike_sigma": 0.0}, ValueError, r"spike_sigma must be in \(0, inf\)"),
    ({"spike_sigma": -1.0}, ValueError, "spike_sigma must be in"),
    ({"spike_sigma": float("inf")}, ValueError, r"spike_sigma must be .*got inf"),
    ({"spike_sigma": float("nan")}, ValueError, r"spike_sigma must be .*got nan"),
    ({"spike_sigma": "6"}, TypeError, "spike_sigma must be a"),
    ({"spike_sigma": True}, TypeError, "spike_sigma must be a number"),
    ({"spike_sigma": lambda n: 6.0}, TypeError, "spike_sigma must be a number"),
    ({"window": 1}, ValueError, r"window must be an int in \[2, "),
    ({"window": 10.0}, TypeError, "window must be an int"),
    ({"window": True}, TypeError, "window must be an int"),
    ({"max_consecutive": 0}, ValueError, r"max_consecutive must be an int in \[1, "),
    ({"max_consecutive": 2.5}, TypeError, "max_consecutive must be an int"),
  ],
)
def test_bad_arguments(kwargs, error, match):
  kwargs = {"inner": optax.sgd(0.1), **kwargs}
  inner = kwargs.pop("inner")
  with pytest.raises(error, match=f"^skip_bad_steps: {match}"):
    optaxtra.skip_bad_steps(inner, **kwargs)


def test_a_state_of_another_transformation_is_refused():
  tx = optaxtra.skip_bad_steps(optax.sgd(0.1))
  params = _params()
  with pytest.raises(TypeError, match="skip_bad_steps: expected the SkipBadStepsState"):
    tx.update(_grads(1)[0], optax.sgd(0.1).init(params), params)


# --- shared norm and sharded params ----------------------------------------------


def _reduce_ops(tx, params, grads):
  text = jax.jit(tx.update).lower(grads, tx.init(params), params).compile().as_text()
  return len(re.findall(r"\breduce\(", text))


def test_the_norm_is_computed_once_with_record_norm_inside():
  # record_norm and the wrapper call the same function on the same gradients:
  # under jit XLA merges the two sums of squares (common subexpressions).
  params, g = _params(), _grads(1)[0]
  alone = optaxtra.skip_bad_steps(optax.sgd(0.1), spike_sigma=6.0)
  shared = optaxtra.skip_bad_steps(
    optax.chain(optaxtra.record_norm(), optax.sgd(0.1)), spike_sigma=6.0
  )
  record = optax.chain(optaxtra.record_norm(), optax.sgd(0.1))
  assert _reduce_ops(record, params, g) >= 1
  assert _reduce_ops(shared, params, g) == _reduce_ops(alone, params, g)
  _, s = shared.update(g, shared.init(params), params)
  norm = optaxtra.inspect(s)["grad_norm"]
  assert float(s.log_norms[0]) == pytest.approx(float(jnp.log(norm)), rel=1e-6)


NUM_DEVICES = 8


def _worker_sharded():
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh((NUM_DEVICES,), ("fsdp",))
  params = {"w": jnp.ones((64, 16)), "b": jnp.ones(16)}
  specs = {"w": P("fsdp", None), "b": P()}
  place = lambda t: jax.tree.map(  # noqa: E731
    lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs
  )
  params = place(params)
  grads = place({"w": jnp.full((64, 16), 0.1), "b": jnp.full(16, 0.1)})
  tx = optaxtra.skip_bad_steps(optax.adam(1e-2), spike_sigma=6.0)
  state = tx.init(params)
  text = jax.jit(tx.update).lower(grads, state, params).compile().as_text()
  found = re.findall(
    r"=\s*(.+?)\s+(all-reduce|all-gather|all-to-all|"
    r"collective-permute|reduce-scatter)(?:-start)?\(",
    text,
  )
  assert found, "no collective: the checks were not sharded"
  for shape, op in found:
    assert op == "all-reduce", (op, shape)
    dims = re.findall(r"\[([0-9,]*)\]", shape)
    assert dims and all(d == "" for d in dims), shape  # scalars only
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert updates["w"].sharding.is_equivalent_to(params["w"].sharding, 2)


# A process of its own, too slow for the quick loop; test_sharding.py checks
# the same of every transformation's update there.
@pytest.mark.heavy
def test_sharded_params_only_scalars_are_reduced_across_devices():
  flags = os.environ.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
  env = dict(
    os.environ,
    XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={NUM_DEVICES}",
    JAX_PLATFORMS="cpu",
  )
  proc = subprocess.run(
    [sys.executable, __file__, "sharded"],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
  assert "ok" in proc.stdout


if __name__ == "__main__":
  globals()[f"_worker_{sys.argv[1]}"]()
  print("ok")
