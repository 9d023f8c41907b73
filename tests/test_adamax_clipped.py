"""scale_by_adamax_clipped against the float64 reference of its equations."""

from __future__ import annotations

import functools

import _harness
import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra

# clip_fraction is opt-in (it costs a reduction); these tests read it.
_tracked_scale_by_adamax_clipped = functools.partial(
  optaxtra.scale_by_adamax_clipped, track_clip_fraction=True
)

SHAPES = ref.SHAPES
STEPS = 12
HYPER = ref.ADAMAX_HYPER

# Tolerances per params dtype. float64 must agree to rounding: a hyperparameter
# or factor that passed through float32 would be off by ~1e-8 relative.
RTOL = {"float32": 2e-6, "bfloat16": 2**-8, "float64": 1e-13}


def _grads(dtype, seed=0, steps=STEPS):
  return _harness.grads(dtype, seed, steps)


def _params(dtype):
  return {k: jnp.zeros(s, dtype) for k, s in SHAPES.items()}


def _reference(grads, **hyper):
  """The reference run and its error scale: the same run on ``|g|``."""
  g64 = [ref.tree_f64(g) for g in grads]
  want = ref.adamax_clipped(g64, **hyper)
  scale = ref.adamax_clipped(
    [{k: np.abs(v) for k, v in g.items()} for g in g64], **hyper
  )
  return want, scale


_OPTIONS = {
  "neural_gpu": {},
  "bias_correction": {"bias_correction": True},
  "no_clip": {"clip": False},
  "no_clip_bias_correction": {"clip": False, "bias_correction": True},
}
# Eager runs (slow, op by op) cover the Neural-GPU defaults and the Optax variant.
_EAGER = ("neural_gpu", "no_clip_bias_correction")


@pytest.mark.sweep(
  quick=[
    "float32-jit-neural_gpu",
    "float32-jit-bias_correction",
    "float32-jit-no_clip",
    "float32-jit-no_clip_bias_correction",
    "bfloat16-jit-neural_gpu",
    "float64-jit-no_clip_bias_correction",
    "float32-eager-neural_gpu",
    "float64-eager-no_clip_bias_correction",
  ]
)
@pytest.mark.parametrize(
  ("jit", "options"),
  [pytest.param(True, o, id=f"jit-{k}") for k, o in _OPTIONS.items()]
  + [pytest.param(False, _OPTIONS[k], id=f"eager-{k}") for k in _EAGER],
)
def test_each_step_matches_reference(float_dtype, jit, options):
  """Every update, moment and clip share, from the implementation's own state.

  Feeding the reference the state the implementation holds (in its storage
  dtype) isolates one step's arithmetic, so bfloat16 is held to its rounding.
  """
  tx = _tracked_scale_by_adamax_clipped(**HYPER, **options)
  hyper = ref.held({**HYPER, **options}, float_dtype)
  update = jax.jit(tx.update) if jit else tx.update
  grads = _grads(float_dtype)
  state = tx.init(_params(float_dtype))
  rtol = RTOL[float_dtype.name]
  clipped_any_later = False
  for t, g in enumerate(grads, start=1):
    updates, new_state = update(g, state, None)
    clipped, total = 0, 0
    for k in SHAPES:
      want_u, want_mu, want_nu, c = ref.adamax_clipped_step(
        g[k], state.mu[k], state.nu[k], t, **hyper
      )
      scale_u, scale_mu, _, _ = ref.adamax_clipped_step(
        np.abs(ref.f64(g[k])),
        np.abs(ref.f64(state.mu[k])),
        state.nu[k],
        t,
        **hyper,
      )
      clipped, total = clipped + c, total + np.size(g[k])
      assert updates[k].dtype == float_dtype
      # nu is kept in float32 at least (in bfloat16 it would never decay).
      nu_dtype = jnp.promote_types(float_dtype, jnp.float32)
      assert new_state.mu[k].dtype == float_dtype
      assert new_state.nu[k].dtype == nu_dtype
      nu_rtol = RTOL[nu_dtype.name]
      _harness.assert_close(updates[k], want_u, rtol, scale_u, f"step {t} {k}")
      _harness.assert_close(new_state.mu[k], want_mu, rtol, scale_mu, f"mu {t} {k}")
      _harness.assert_close(new_state.nu[k], want_nu, nu_rtol, None, f"nu {t} {k}")
    assert new_state.count.dtype == jnp.int32 and int(new_state.count) == t
    assert new_state.clip_fraction.dtype == jnp.float32
    np.testing.assert_allclose(
      float(new_state.clip_fraction), clipped / total, rtol=1e-7
    )
    clipped_any_later |= t > 1 and clipped > 0
    state = new_state
  # The data exercise the clipping beyond the first step.
  assert clipped_any_later == options.get("clip", True)


@pytest.mark.sweep(quick=["float32-True", "float64-False"])
@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trajectory_matches_reference(dtype, bias_correction, request):
  """Twelve steps run independently in the implementation and the reference.

  (bfloat16 moments are rounded at every step, so bfloat16 is checked step by
  step above.)
  """
  if dtype == "float64":
    request.getfixturevalue("x64")
  float_dtype = jnp.dtype(dtype)
  tx = _tracked_scale_by_adamax_clipped(**HYPER, bias_correction=bias_correction)
  grads = _grads(float_dtype)
  updates, states, _ = _harness.run(tx, _params(float_dtype), grads, jit=True)
  want, scale = _reference(
    grads, **ref.held(HYPER, float_dtype), bias_correction=bias_correction
  )
  rtol = RTOL[float_dtype.name]
  for t, (u, s, w, a) in enumerate(
    zip(updates, states[1:], want, scale, strict=True), 1
  ):
    for k in SHAPES:
      _harness.assert_close(u[k], w["updates"][k], rtol, a["updates"][k], f"{t} {k}")
      _harness.assert_close(s.mu[k], w["mu"][k], rtol, a["mu"][k], f"mu {t} {k}")
      _harness.assert_close(s.nu[k], w["nu"][k], rtol, None, f"nu {t} {k}")
    np.testing.assert_allclose(float(s.clip_fraction), w["clip_fraction"], rtol=1e-7)
    if not bias_correction:  # no factor recorded where there is none
      assert s.bias_correction is None
      continue
    b1 = ref.held(HYPER, float_dtype)["b1"]
    factor = 1 / (1 - b1**t)
    assert s.bias_correction.dtype == jnp.result_type(float)
    np.testing.assert_allclose(float(s.bias_correction), factor, rtol=rtol)


def test_float64_nothing_passes_through_float32(x64):
  """In float64 the result differs from one computed with float32 constants."""
  tx = _tracked_scale_by_adamax_clipped(**HYPER, bias_correction=True)
  grads = _grads(jnp.float64)
  updates, _, _ = _harness.run(tx, _params(jnp.float64), grads, jit=True)
  hyper32 = {k: float(np.float32(v)) for k, v in HYPER.items()}
  want, scale = _reference(grads, **HYPER, bias_correction=True)
  want32, _ = _reference(grads, **hyper32, bias_correction=True)
  for t in range(STEPS):
    got, w, a = updates[t]["w"], want[t]["updates"]["w"], scale[t]["updates"]["w"]
    _harness.assert_close(got, w, 1e-13, a, f"step {t}")
    # The same check fails against float32-rounded hyperparameters.
    with pytest.raises(AssertionError):
      _harness.assert_close(got, want32[t]["updates"]["w"], 1e-13, a)


@pytest.mark.parametrize(
  ("params_dtype", "mu_dtype", "nu_dtype"),
  [
    (jnp.float32, jnp.bfloat16, None),
    (jnp.float32, None, jnp.bfloat16),
    (jnp.bfloat16, jnp.float32, jnp.float32),
  ],
)
def test_moment_dtypes(params_dtype, mu_dtype, nu_dtype):
  """mu_dtype / nu_dtype set the storage; each step matches from that state."""
  tx = _tracked_scale_by_adamax_clipped(**HYPER, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  grads = _grads(params_dtype)
  state = tx.init(_params(params_dtype))
  mu_dtype, nu_dtype = mu_dtype or params_dtype, nu_dtype or params_dtype
  assert state.mu["w"].dtype == mu_dtype and state.nu["w"].dtype == nu_dtype
  update = jax.jit(tx.update)
  tol = {jnp.dtype(jnp.float32): 2e-6, jnp.dtype(jnp.bfloat16): 2**-8}
  for t, g in enumerate(grads, start=1):
    updates, new_state = update(g, state)
    for k in SHAPES:
      want_u, want_mu, want_nu, _ = ref.adamax_clipped_step(
        g[k], state.mu[k], state.nu[k], t, **ref.held(HYPER, jnp.float32)
      )
      scale_u, scale_mu, _, _ = ref.adamax_clipped_step(
        np.abs(ref.f64(g[k])),
        np.abs(ref.f64(state.mu[k])),
        state.nu[k],
        t,
        **ref.held(HYPER, jnp.float32),
      )
      assert updates[k].dtype == params_dtype
      assert new_state.mu[k].dtype == mu_dtype and new_state.nu[k].dtype == nu_dtype
      # Arithmetic is float32; each result is rounded once to its storage, and
      # the update inherits the rounding of the moments it was computed from.
      rtol_u = max(tol[jnp.dtype(d)] for d in (params_dtype, mu_dtype, nu_dtype))
      _harness.assert_close(updates[k], want_u, rtol_u, scale_u, f"u {t} {k}")
      rtol_m = tol[jnp.dtype(mu_dtype)]
      _harness.assert_close(new_state.mu[k], want_mu, rtol_m, scale_mu, f"mu {t} {k}")
      rtol_n = tol[jnp.dtype(nu_dtype)]
      _harness.assert_close(new_state.nu[k], want_nu, rtol_n, None, f"nu {t} {k}")
    state = new_state


def test_first_step_is_clipped_to_clip_epsilon():
  """With nu = 0 the first step's bound is clip_epsilon (the Neural-GPU code's)."""
  tx = _tracked_scale_by_adamax_clipped()
  g = jnp.array([3.0, -1e-3, 5e-5, -5e-5, 0.0])
  updates, state = tx.update(g, tx.init(jnp.zeros(5)))
  clipped = np.clip(np.asarray(g, np.float64), -1e-4, 1e-4)
  want = 0.1 * clipped / (np.abs(clipped) + 1e-8)
  np.testing.assert_allclose(np.asarray(updates, np.float64), want, rtol=1e-6)
  np.testing.assert_allclose(float(state.clip_fraction), 2 / 5, rtol=1e-7)


@pytest.mark.sweep(quick=["float32-False-2e-06", "float64-True-1e-14"])
@pytest.mark.parametrize(
  ("dtype", "jit", "rtol"),
  [("float32", False, 2e-6), ("float32", True, 2e-6), ("float64", True, 1e-14)],
)
def test_optax_adamax_exact_for_eps_zero(dtype, jit, rtol, request):
  """clip=False, bias_correction=True, eps=0 is optax.scale_by_adamax(eps=0)."""
  if dtype == "float64":
    request.getfixturevalue("x64")
  grads = _grads(jnp.dtype(dtype))
  params = _params(jnp.dtype(dtype))
  ours, _, _ = _harness.run(
    _tracked_scale_by_adamax_clipped(0.9, 0.99, 0.0, clip=False, bias_correction=True),
    params,
    grads,
    jit=jit,
  )
  theirs, _, _ = _harness.run(
    optax.scale_by_adamax(0.9, 0.99, 0.0), params, grads, jit=jit
  )
  _, scale = _reference(
    grads, b1=0.9, b2=0.99, eps=0.0, clip=False, bias_correction=True
  )
  for t, (a, b, sc) in enumerate(zip(ours, theirs, scale, strict=True)):
    for k in SHAPES:
      _harness.assert_close(a[k], b[k], rtol, sc["updates"][k], f"step {t} {k}")


def test_optax_adamax_within_documented_eps_bound(x64):
  """With eps > 0 the two differ only by where eps sits, by at most eps / nu.

  Optax keeps ``nu' = max(b2 nu', |g| + eps)`` and divides by it; optaxtra
  divides by ``nu + eps`` with ``nu = max(b2 nu, |g|)``. By induction
  ``nu <= nu' <= nu + eps``, so the relative gap is at most ``eps / nu``, and
  ``nu >= |g|`` gives the docstring's ``eps / |g|``.
  """
  eps = 1e-3
  grads = _grads(jnp.float64)
  params = _params(jnp.float64)
  tx = _tracked_scale_by_adamax_clipped(
    0.9, 0.99, eps, clip=False, bias_correction=True
  )
  ours, states, _ = _harness.run(tx, params, grads, jit=True)
  theirs, _, _ = _harness.run(
    optax.scale_by_adamax(0.9, 0.99, eps), params, grads, jit=True
  )
  hyper = {"b1": 0.9, "b2": 0.99, "eps": 0.0, "clip": False, "bias_correction": True}
  _, scale = _reference(grads, **hyper)
  # The reference of Optax's placement reproduces Optax itself...
  mu = {k: np.zeros(s) for k, s in SHAPES.items()}
  nu = {k: np.zeros(s) for k, s in SHAPES.items()}
  gap_seen = 0.0
  for t, (a, b, s, g) in enumerate(
    zip(ours, theirs, states[1:], grads, strict=True), 1
  ):
    for k in SHAPES:
      want_b, mu[k], nu[k] = ref.optax_adamax_step(
        g[k], mu[k], nu[k], t, b1=0.9, b2=0.99, eps=eps
      )
      sc = scale[t - 1]["updates"][k]
      _harness.assert_close(b[k], want_b, 1e-13, sc, f"{t} {k}")
      # ...and the gap to optaxtra stays within the bound.
      ua, ub, n = ref.f64(a[k]), ref.f64(b[k]), ref.f64(s.nu[k])
      gap = np.abs(ua - ub)
      assert np.all(gap <= np.abs(ua) * eps / n * (1 + 1e-12) + 1e-300)
      assert np.all(
        gap <= np.abs(ua) * eps / np.abs(ref.f64(g[k])) * (1 + 1e-12) + 1e-300
      )
      gap_seen = max(gap_seen, float(np.max(gap / np.maximum(np.abs(ua), 1e-300))))
  assert gap_seen > 1e-6  # the bound is not vacuous: eps does matter here


def test_clip_fraction_state():
  tx = _tracked_scale_by_adamax_clipped()
  state = tx.init({"a": jnp.zeros(3), "b": jnp.zeros(())})
  assert state.clip_fraction.dtype == jnp.float32 and state.clip_fraction.shape == ()
  assert float(state.clip_fraction) == 0.0
  _, state = tx.update({"a": jnp.array([1.0, 0.0, -1.0]), "b": jnp.array(1e-6)}, state)
  np.testing.assert_allclose(float(state.clip_fraction), 0.5)
  tx = _tracked_scale_by_adamax_clipped(clip=False)
  _, state = tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))
  assert float(state.clip_fraction) == 0.0


@pytest.mark.sweep(quick=["bfloat16"])  # every dtype's values: each step above
def test_contract(float_dtype):
  tx = _tracked_scale_by_adamax_clipped(**HYPER)
  _harness.check_contract(tx, _params(float_dtype), _grads(float_dtype))


def test_contract_optax_variant():
  tx = _tracked_scale_by_adamax_clipped(bias_correction=True, clip=False)
  _harness.check_contract(tx, _params(jnp.float32), _grads(jnp.float32))


def test_count_saturates():
  tx = _tracked_scale_by_adamax_clipped(bias_correction=True)
  _harness.check_count_saturates(tx, _params(jnp.float32), _grads(jnp.float32))


def test_inject_hyperparams():
  params, grads = _params(jnp.float32), _grads(jnp.float32, steps=3)
  _harness.check_inject(
    optaxtra.scale_by_adamax_clipped,
    {**HYPER, "bias_correction": True},
    params,
    grads,
    changed={"b1": 0.5, "clip_multiplier": 2.0, "eps": 1e-3},
  )


def test_inject_hyperparams_float64(x64):
  params, grads = _params(jnp.float64), _grads(jnp.float64, steps=3)
  _harness.check_inject(optaxtra.scale_by_adamax_clipped, HYPER, params, grads)


def test_inject_hyperparams_bfloat16_needs_float32_hyperparams():
  """Optax casts hyperparameters to bfloat16 params' dtype (0.999 -> 1.0)."""
  params, grads = _params(jnp.bfloat16), _grads(jnp.bfloat16, steps=3)
  _harness.check_inject(
    optaxtra.scale_by_adamax_clipped,
    HYPER,
    params,
    grads,
    hyperparam_dtype=jnp.float32,
  )
  tx = optax.inject_hyperparams(optaxtra.scale_by_adamax_clipped)()
  for init in (tx.init, jax.jit(tx.init)):
    with pytest.raises(TypeError, match=r"b1 arrived as bfloat16.*hyperparam_dtype"):
      init(params)


def _bad(**kwargs):
  return lambda: _tracked_scale_by_adamax_clipped(**kwargs)


@pytest.mark.parametrize(
  ("make", "error", "match"),
  [
    (_bad(b1=1.0), ValueError, r"b1 must be in \[0, 1\), got 1.0"),
    (_bad(b1=-0.1), ValueError, r"b1 must be in \[0, 1\)"),
    (_bad(b2=1.0), ValueError, r"b2 must be in \[0, 1\)"),
    (_bad(b2=float("nan")), ValueError, "b2 must be in"),
    (_bad(eps=-1e-8), ValueError, r"eps must be in \[0, inf\)"),
    (
      _bad(clip_multiplier=0.0),
      ValueError,
      r"clip_multiplier must be in \(0, inf\).*clip=False",
    ),
    (_bad(clip_multiplier=-1.0), ValueError, "clip_multiplier"),
    (_bad(clip_epsilon=-1e-4), ValueError, r"clip_epsilon must be in \(0, inf\)"),
    (
      _bad(clip_epsilon=0.0),
      ValueError,
      r"clip_epsilon must be in \(0, inf\).*never moves",
    ),
    (
      _bad(clip_epsilon=-1.0, clip=False),
      ValueError,
      r"clip_epsilon must be in \[0, inf\)",
    ),
    (_bad(clip_multiplier=float("inf")), ValueError, r"clip_multiplier must be in"),
    (_bad(eps=float("inf")), ValueError, r"eps must be in \[0, inf\), got inf"),
    (_bad(b1="0.9"), TypeError, "b1 must be a real scalar; got the string"),
    (_bad(b2=None), TypeError, "b2 must be a number"),
    (_bad(eps=jnp.ones(2)), TypeError, r"eps must be a real scalar.*shape \(2,\)"),
    (_bad(b1=True), TypeError, "b1 must be a number"),
    (_bad(b1=1j), TypeError, "b1 must be a real scalar"),
    (_bad(clip=1), TypeError, "clip must be True or False"),
    (_bad(clip=jnp.array(True)), TypeError, "clip must be True or False"),
    (_bad(bias_correction="yes"), TypeError, "bias_correction must be True or False"),
    (_bad(mu_dtype=jnp.int32), TypeError, "mu_dtype must be a floating dtype"),
    (_bad(nu_dtype="floaty"), TypeError, "nu_dtype='floaty' is not a dtype"),
    (_bad(b2=jnp.asarray(0.999, jnp.bfloat16)), TypeError, "b2 arrived as bfloat16"),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("jit", [False, True])
def test_bad_gradients(jit):
  tx = _tracked_scale_by_adamax_clipped()
  state = tx.init({"w": jnp.zeros((2, 3))})
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(
    ValueError, match=r"'w' has shape \(3,\) but 'w' in the first moment"
  ):
    update({"w": jnp.ones(3)}, state)  # would broadcast
  with pytest.raises(ValueError, match=r"'w' has shape \(1, 3\)"):
    update({"w": jnp.ones((1, 3))}, state)  # would broadcast too
  with pytest.raises(
    ValueError, match=r"tree does not match.*Only in the updates: \['v'\]"
  ):
    update({"v": jnp.ones((2, 3))}, state)
  with pytest.raises(ValueError, match="tree does not match"):
    update({"w": jnp.ones((2, 3)), "v": jnp.ones(1)}, state)
  with pytest.raises(
    TypeError, match="'w' has dtype int32; updates must be real floating"
  ):
    update({"w": jnp.ones((2, 3), jnp.int32)}, state)


@pytest.mark.parametrize("clip_multiplier", [1.3, 0.5], ids=["cm>=b2", "cm<b2"])
def test_untracked_clip_fraction_changes_nothing_else(clip_multiplier):
  """The default keeps no clip share: None in the state, absent from inspect,
  and every update and moment those of the tracked run (within
  cross_program_ulps: the two are different compiled programs). Both
  clipping paths are covered: clipping to the new infinity norm (when
  clip_multiplier >= b2) and to the bound itself (otherwise)."""
  hyper = {**HYPER, "clip_multiplier": clip_multiplier}
  grads, params = _grads(jnp.float32), _params(jnp.float32)
  plain = optaxtra.scale_by_adamax_clipped(**hyper)
  tracked = _tracked_scale_by_adamax_clipped(**hyper)
  u_plain, s_plain, _ = _harness.run(plain, params, grads, jit=True)
  u_tracked, s_tracked, _ = _harness.run(tracked, params, grads, jit=True)
  for i, (a, b) in enumerate(zip(u_plain, u_tracked, strict=True)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      _harness.assert_max_ulp(x, y, _harness.cross_program_ulps(i), "updates")
  for i, (a, b) in enumerate(zip(s_plain, s_tracked, strict=True)):
    assert a.clip_fraction is None and b.clip_fraction is not None
    ulps = _harness.cross_program_ulps(i)
    _harness.assert_max_ulp(a.nu["w"], b.nu["w"], ulps, err_msg="nu")
    _harness.assert_max_ulp(a.mu["w"], b.mu["w"], ulps, err_msg="mu")
  assert "clip_fraction" not in optaxtra.inspect(s_plain[-1])
  assert "clip_fraction" in optaxtra.inspect(s_tracked[-1])
  # And the tracked run with the bound below b2 * nu still follows the
  # reference's clip share.
  want, _ = _reference(grads, **ref.held(hyper, jnp.float32))
  for s, w in zip(s_tracked[1:], want, strict=True):
    np.testing.assert_allclose(float(s.clip_fraction), w["clip_fraction"], rtol=1e-7)
    for k in SHAPES:
      _harness.assert_close(s.nu[k], w["nu"][k], RTOL["float32"], None, f"nu {k}")
