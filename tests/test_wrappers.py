"""Every optaxtra transformation under Optax's wrappers and JAX's loop tools.

``optax.MultiSteps`` (gradient accumulation), ``optax.apply_if_finite``
(skipping bad steps), ``jax.lax.scan`` training loops and buffer donation all
put requirements on a transformation's state: a fixed structure, shapes and
dtypes from step to step, and no buffer shared with the params. Each test here
compares against an independent computation (the bare transformation fed the
equivalent gradients, or an un-scanned, un-donated run): bit for bit where one
compiled program is compared with itself (donation), within a few ulps where
another program computes the same arithmetic (MultiSteps' and
apply_if_finite's ``cond``, the body of a ``lax.scan``).
"""

from __future__ import annotations

import functools
import warnings

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra

NUM_STEPS = 6


def _lr(count):
  return 0.1 / (1.0 + count.astype(jnp.float32))


_MASK = {"w": True, "b": False, "emb": True, "layers": [{"kernel": True}]}

# Every public transformation, with options that make its state non-trivial
# (schedules, masks, bias correction). The two chains hold every stage, and
# are the ones also run under the wrappers in the scan and donation tests.
TRANSFORMS = {
  "scale_by_adamax_clipped": lambda: optaxtra.scale_by_adamax_clipped(),
  "scale_by_adam": lambda: optaxtra.scale_by_adam(),
  "scale_by_learning_rate": lambda: optaxtra.scale_by_learning_rate(_lr),
  "scale_by_schedule": lambda: optaxtra.scale_by_schedule(
    optax.linear_schedule(1.0, 0.1, 4)
  ),
  "add_decayed_weights_decoupled": lambda: optaxtra.add_decayed_weights_decoupled(
    0.05, schedule=_lr, mask=_MASK
  ),
  "adamax_clipped": lambda: optaxtra.adamax_clipped(
    _lr,
    bias_correction=True,
    weight_decay=1e-2,
    weight_decay_mask=lambda p: _MASK,
  ),
  "chain_adam": lambda: optax.chain(
    optaxtra.scale_by_adam(bias_correction=False, eps_root=1e-12),
    optaxtra.scale_by_schedule(optax.linear_schedule(1.0, 0.5, 3)),
    optaxtra.scale_by_learning_rate(0.01),
    optaxtra.add_decayed_weights_decoupled(1e-2, schedule=_lr),
  ),
}
transform_names = pytest.mark.parametrize("name", sorted(TRANSFORMS))
wrapped_transforms = pytest.mark.parametrize(
  ("wrapper", "name"),
  [("bare", name) for name in sorted(TRANSFORMS)]
  + [
    (wrapper, name)
    for wrapper in ("multisteps", "apply_if_finite")
    for name in ("adamax_clipped", "chain_adam")
  ],
)
# The quick loop runs each check on the two chains, which hold every
# transformation between them, and under a wrapper each wrapper with one chain;
# the full suite runs every case (each transformation's own contract test
# already runs it bare under lax.scan).
on_the_chains = pytest.mark.sweep(quick=["adamax_clipped", "chain_adam"])
wrapped_chains = pytest.mark.sweep(
  quick=["multisteps-chain_adam", "apply_if_finite-adamax_clipped"]
)


def _wrap(tx, wrapper):
  if wrapper == "multisteps":
    return optax.MultiSteps(tx, every_k_schedule=2)
  if wrapper == "apply_if_finite":
    return optax.apply_if_finite(tx, max_consecutive_errors=2)
  assert wrapper == "bare"
  return tx


def _params():
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
    "b": jnp.asarray(rng.standard_normal(3), jnp.float32),
    "emb": jnp.asarray(rng.standard_normal((5, 2)), jnp.bfloat16),
    "layers": [{"kernel": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)}],
  }


def _grads(num, seed=1):
  """``num`` gradient trees of multiples of 1/32 in (-2, 2).

  Such values, and the mean of two of them, are exact in float32 and bfloat16,
  so averaging over micro-batches introduces no rounding.
  """
  rng = np.random.default_rng(seed)
  params = _params()
  out = []
  for _ in range(num):
    out.append(
      jax.tree.map(
        lambda p: jnp.asarray(rng.integers(-63, 64, p.shape) / 32.0, p.dtype),
        params,
      )
    )
  return out


def _assert_trees_equal(a, b, what="", *, maxulp=0):
  """Same structure and dtypes; values bit for bit, or within ``maxulp``.

  Bit for bit compares one compiled program with itself (donated against
  undonated); ``maxulp`` is for two different programs (see
  ``_harness.CROSS_PROGRAM_ULPS``).
  """
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(
    jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
  ):
    where = f"{what}{jax.tree_util.keystr(path)}"
    assert jnp.asarray(x).dtype == jnp.asarray(y).dtype, where
    if maxulp:
      _harness.assert_max_ulp(x, y, maxulp, err_msg=where)
    else:
      np.testing.assert_array_equal(
        np.asarray(x, np.float64), np.asarray(y, np.float64), err_msg=where
      )


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@functools.cache
def _bare(name):
  """The bare transformation and its jitted update: the reference every test
  below compares a wrapper with, compiled once per test process."""
  tx = TRANSFORMS[name]()
  return tx, jax.jit(tx.update)


# ------------------------------------------------------------- MultiSteps


@on_the_chains
@transform_names
def test_multisteps_of_two_equals_one_step_on_the_mean_gradient(name):
  k, windows = 2, 3
  multi = optax.MultiSteps(TRANSFORMS[name](), every_k_schedule=k)
  ref, ref_update = _bare(name)
  grads = _grads(k * windows)
  p_multi = p_ref = _params()
  s_multi, s_ref = multi.init(p_multi), ref.init(p_ref)
  multi_update = jax.jit(multi.update)
  for w in range(windows):
    for j in range(k):
      u, s_multi = multi_update(grads[w * k + j], s_multi, p_multi)
      if j < k - 1:  # a micro-step: nothing moves, the inner state waits
        _assert_trees_equal(u, jax.tree.map(jnp.zeros_like, u), "micro-step")
        _assert_trees_equal(
          s_multi.inner_opt_state,
          s_ref,
          "inner state",
          maxulp=_harness.CROSS_PROGRAM_ULPS,
        )
      p_multi = optax.apply_updates(p_multi, u)
    mean = jax.tree.map(lambda *g: sum(g) / k, *grads[w * k : (w + 1) * k])
    u_ref, s_ref = ref_update(mean, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u_ref)
    _assert_trees_equal(
      u, u_ref, f"window {w} updates", maxulp=_harness.CROSS_PROGRAM_ULPS
    )
    _assert_trees_equal(
      p_multi, p_ref, f"window {w} params", maxulp=_harness.CROSS_PROGRAM_ULPS
    )
    _assert_trees_equal(
      s_multi.inner_opt_state,
      s_ref,
      f"window {w} state",
      maxulp=_harness.CROSS_PROGRAM_ULPS,
    )


@pytest.mark.sweep(quick=["chain_adam"])
@pytest.mark.parametrize("name", ["adamax_clipped", "chain_adam"])
def test_multisteps_of_three_matches_the_mean_gradient(name):
  # The running mean over three micro-batches rounds (division by 3), so the
  # comparison is to float32 precision rather than bit for bit.
  k = 3
  multi = optax.MultiSteps(TRANSFORMS[name](), every_k_schedule=k)
  ref, ref_update = _bare(name)
  grads = _grads(2 * k, seed=2)
  p_multi = p_ref = _params()
  s_multi, s_ref = multi.init(p_multi), ref.init(p_ref)
  multi_update = jax.jit(multi.update)
  for w in range(2):
    for g in grads[w * k : (w + 1) * k]:
      u, s_multi = multi_update(g, s_multi, p_multi)
      p_multi = optax.apply_updates(p_multi, u)
    mean = jax.tree.map(
      lambda *g: (sum(x.astype(jnp.float32) for x in g) / k).astype(g[0].dtype),
      *grads[w * k : (w + 1) * k],
    )
    u_ref, s_ref = ref_update(mean, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u_ref)
  for a, b in zip(jax.tree.leaves(p_multi), jax.tree.leaves(p_ref), strict=True):
    tol = 1e-2 if a.dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol
    )
  inner = s_multi.inner_opt_state
  stages = (
    [inner] if hasattr(inner, "_fields") else list(inner)
  )  # one state or a chain's
  assert [int(s.count) for s in stages if hasattr(s, "count")] == [2] * len(stages)


# ---------------------------------------------------------- apply_if_finite


@on_the_chains
@transform_names
def test_apply_if_finite_skips_a_bad_step_and_leaves_state_unchanged(name):
  guarded = optax.apply_if_finite(TRANSFORMS[name](), max_consecutive_errors=5)
  ref, ref_update = _bare(name)
  good = _grads(3)
  nan = jax.tree.map(lambda g: g.at[0].set(jnp.nan), good[0])
  inf = jax.tree.map(lambda g: g.at[-1].set(-jnp.inf), good[1])
  sequence = [good[0], nan, good[1], inf, nan, good[2]]
  p_guard = p_ref = _params()
  s_guard, s_ref = guarded.init(p_guard), ref.init(p_ref)
  guarded_update = jax.jit(guarded.update)
  skipped = 0
  for g in sequence:
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    before = s_guard.inner_state
    u, s_guard = guarded_update(g, s_guard, p_guard)
    if finite:
      u_ref, s_ref = ref_update(g, s_ref, p_ref)
      _assert_trees_equal(u, u_ref, "updates", maxulp=_harness.CROSS_PROGRAM_ULPS)
      p_ref = optax.apply_updates(p_ref, u_ref)
    else:
      skipped += 1
      _assert_trees_equal(u, jax.tree.map(jnp.zeros_like, u), "skipped updates")
      _assert_trees_equal(s_guard.inner_state, before, "skipped state")
    p_guard = optax.apply_updates(p_guard, u)
    _assert_trees_equal(
      s_guard.inner_state, s_ref, "inner state", maxulp=_harness.CROSS_PROGRAM_ULPS
    )
    _assert_trees_equal(p_guard, p_ref, "params", maxulp=_harness.CROSS_PROGRAM_ULPS)
    assert bool(s_guard.last_finite) == finite
  assert int(s_guard.total_notfinite) == skipped == 3


# ------------------------------------------------------------------ lax.scan


def _train_step(tx):
  def step(carry, grads):
    params, state = carry
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), updates

  return step


def _loop_grads(wrapper):
  grads = _grads(NUM_STEPS)
  if wrapper == "apply_if_finite":  # exercise the branch that skips a step
    grads[2] = jax.tree.map(lambda g: g * jnp.nan, grads[2])
  return grads


@functools.cache
def _python_loop(wrapper, name):
  """The jitted step called from Python over ``_loop_grads(wrapper)``: the
  carries after each step and the updates of each, the reference of the
  scan and donation tests (computed once per test process)."""
  tx = _wrap(TRANSFORMS[name](), wrapper)
  params = _params()
  carry = (params, tx.init(params))
  jitted = jax.jit(_train_step(tx))
  carries, updates = [], []
  for g in _loop_grads(wrapper):
    carry, u = jitted(carry, g)
    carries.append(carry)
    updates.append(u)
  return carries, updates


@pytest.mark.sweep(quick=["multisteps-chain_adam"])  # each transform's own scan too
@wrapped_transforms
def test_scan_equals_a_python_loop(name, wrapper):
  # The scan body is compiled inside a while loop: another program than the
  # jitted step. On jax 0.12 with AVX2, MultiSteps' moments differ by 1 ulp
  # between the two, so the bound is cross_program_ulps, not bit for bit.
  tx = _wrap(TRANSFORMS[name](), wrapper)
  step = _train_step(tx)
  params = _params()
  carries, loop_updates = _python_loop(wrapper, name)

  scanned = jax.jit(lambda c, gs: jax.lax.scan(step, c, gs))
  scan_carry, scan_updates = scanned(
    (params, tx.init(params)), _stack(_loop_grads(wrapper))
  )

  ulps = _harness.cross_program_ulps(NUM_STEPS)
  _assert_trees_equal(scan_carry, carries[-1], "carry", maxulp=ulps)
  _assert_trees_equal(scan_updates, _stack(loop_updates), "updates", maxulp=ulps)


# ---------------------------------------------------------------- donation


@wrapped_chains
@wrapped_transforms
def test_donated_params_and_state_are_reused_without_warning(name, wrapper):
  tx = _wrap(TRANSFORMS[name](), wrapper)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  grads = _grads(3)
  # The reference: the same steps without donation.
  ref_params = _params()
  ref_state = tx.init(ref_params)
  plain = jax.jit(step)
  for g in grads:
    ref_params, ref_state = plain(ref_params, ref_state, g)

  donating = jax.jit(step, donate_argnums=(0, 1))
  params = _params()
  state = tx.init(params)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for g in grads:
      old = (params, state)
      params, state = donating(params, state, g)
      jax.block_until_ready((params, state))
      # Every parameter-sized buffer was handed over: the old params, moments
      # and accumulators are gone. (A scalar that the update only writes, such
      # as the recorded learning rate, is pruned from the inputs by jit and
      # so is neither used nor deleted.)
      for path, leaf in jax.tree_util.tree_flatten_with_path(old)[0]:
        if leaf.ndim:
          assert leaf.is_deleted(), jax.tree_util.keystr(path)
  messages = [str(w.message) for w in caught]
  assert not [m for m in messages if "donat" in m], messages
  _assert_trees_equal(params, ref_params, "params")
  _assert_trees_equal(state, ref_state, "state")


@transform_names  # cheap: every one, in the quick loop too
def test_init_state_shares_no_buffer_with_params(name):
  # A state leaf that *is* a params buffer would be donated twice.
  params = _params()
  state = TRANSFORMS[name]().init(params)
  param_ids = {id(x) for x in jax.tree.leaves(params)}
  assert not [x for x in jax.tree.leaves(state) if id(x) in param_ids]
  donating = jax.jit(lambda p, s: (p, s), donate_argnums=(0, 1))
  jax.block_until_ready(donating(params, state))
