"""Unusual and bad inputs to the transformations, one line per case.

Every input either computes the right thing or is refused with a
``TypeError`` / ``ValueError`` that names the argument and the fix; where a
value is traced and cannot be checked, what happens is documented and visible
(recorded in the state). Each table says, per case, what Optax does with the
same input, run live where Optax has the same transformation.

Categories: hyperparameters at construction; what a schedule returns; the
trees given to init and update (Python scalars, abstract params, integer
leaves, complex numbers); narrow dtypes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra

INF = float("inf")

# --------------------------------------------------------------------------
# Hyperparameters: (build, error, message). Optax accepts every one of these
# and computes infinite, zero or sign-flipped updates.

HYPERPARAMETERS = [
  # clip_epsilon=0: nu starts at 0, so the first gradient is clipped to 0,
  # nu stays 0 and so does every later update (the original code does so).
  (
    lambda: optaxtra.scale_by_adamax_clipped(clip_epsilon=0.0),
    ValueError,
    r"clip_epsilon must be in \(0, inf\), got 0.0.*never moves",
  ),
  (
    lambda: optaxtra.scale_by_adamax_clipped(clip_epsilon=INF),
    ValueError,
    "clip_epsilon",
  ),
  (
    lambda: optaxtra.scale_by_adamax_clipped(clip_multiplier=INF),
    ValueError,
    "clip_mul",
  ),
  (lambda: optaxtra.scale_by_adamax_clipped(eps=INF), ValueError, "eps must be in"),
  (lambda: optaxtra.scale_by_adamax_clipped(b1=-INF), ValueError, "b1 must be in"),
  (lambda: optaxtra.scale_by_adam(eps=INF), ValueError, "eps must be in"),
  (lambda: optaxtra.scale_by_adam(eps_root=INF), ValueError, "eps_root must be in"),
  (lambda: optaxtra.scale_by_adam(nesterov=1), TypeError, "nesterov must be True"),
  (lambda: optaxtra.scale_by_learning_rate(INF), ValueError, "learning_rate"),
  (lambda: optaxtra.scale_by_learning_rate(math.nan), ValueError, "learning_rate"),
  (
    lambda: optaxtra.add_decayed_weights_decoupled(INF, schedule=None),
    ValueError,
    "weight_decay",
  ),
  (lambda: optaxtra.adamax_clipped(INF), ValueError, "learning_rate"),
  (lambda: optaxtra.adamax_clipped(1e-3, weight_decay=INF), ValueError, "weight_decay"),
  # A per-step decay rate of 1 zeroes the weights, above 1 flips them.
  (
    lambda: optaxtra.add_decayed_weights_decoupled(1.0, schedule=None).init(
      {"w": jnp.ones(2)}
    ),
    ValueError,
    r"weight_decay \* schedule is 1.0 at step 0; it must be in \[0, 1\)",
  ),
  (
    lambda: optaxtra.add_decayed_weights_decoupled(0.5, schedule=lambda n: 3.0).init(
      {"w": jnp.ones(2)}
    ),
    ValueError,
    r"is 1.5 at step 0",
  ),
]


@pytest.mark.parametrize(("build", "error", "match"), HYPERPARAMETERS)
def test_hyperparameters_are_refused_by_name(build, error, match):
  with pytest.raises(error, match=match):
    build()


def test_clip_epsilon_zero_is_fine_without_clipping():
  tx = optaxtra.scale_by_adamax_clipped(clip_epsilon=0.0, clip=False)
  updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
  assert np.all(np.asarray(updates["w"]) > 0)


# --------------------------------------------------------------------------
# What a schedule returns: checked at trace time (type, dtype, shape), so the
# error is the same eagerly and under jax.jit. Optax uses a bool as 0/1, drops
# a complex number's imaginary part with a warning, and fails on None or a
# string inside jnp with a message that names nothing.

BAD_OUTPUTS = [
  (None, TypeError, r"learning_rate returned None; a schedule must return a number"),
  ("1e-3", TypeError, r"returned '1e-3'"),
  (True, TypeError, r"dtype bool; it must be a real number"),
  (1e-3 + 1j, TypeError, r"dtype complex64; it must be a real number"),
  (np.ones(2), ValueError, r"must give a scalar, got shape \(2,\)"),
]


def _constant(value):
  return lambda count: value


@pytest.mark.parametrize(("value", "error", "match"), BAD_OUTPUTS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_learning_rate_schedule_outputs(value, error, match, jit):
  tx = optaxtra.scale_by_learning_rate(_constant(value))
  params = {"w": jnp.ones(2)}
  init = jax.jit(tx.init) if jit else tx.init
  with pytest.raises(error, match=match):
    init(params)


@pytest.mark.parametrize(("value", "error", "match"), BAD_OUTPUTS)
def test_weight_decay_schedule_outputs(value, error, match):
  match = match.replace("learning_rate", "weight_decay")
  tx = optaxtra.add_decayed_weights_decoupled(_constant(value), schedule=None)
  with pytest.raises(error, match=match):
    tx.init({"w": jnp.ones(2)})


def test_integer_schedule_values_are_numbers():
  tx = optaxtra.scale_by_learning_rate(lambda n: 2)
  updates, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
  np.testing.assert_array_equal(updates["w"], -2.0)
  assert state.learning_rate.dtype == jnp.float32


def test_traced_negative_learning_rate_is_a_visible_nan_never_ascent():
  # A traced value's number cannot be checked when the update is traced: a
  # learning rate that goes negative under jit becomes NaN, in the updates
  # and in the state (inspect), never a silent change of sign (ascent).
  tx = optaxtra.scale_by_learning_rate(lambda n: 0.1 - 0.2 * n)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, state = update({"w": jnp.ones(2)}, state)
  np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-6)
  updates, state = update({"w": jnp.ones(2)}, state)
  assert np.isnan(float(optaxtra.inspect(state)["learning_rate"]))
  assert np.isnan(np.asarray(updates["w"])).all()
  # Eagerly, the same schedule is refused at the step where it goes bad.
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(2)}, state)
  with pytest.raises(ValueError, match=r"learning_rate is -0.1 at step 1"):
    tx.update({"w": jnp.ones(2)}, state)


# --------------------------------------------------------------------------
# The trees given to init and update.

ADAPTIVE = {
  "scale_by_adam": (optaxtra.scale_by_adam, optax.scale_by_adam),
  "scale_by_adamax_clipped(clip=False, bc)": (
    lambda: optaxtra.scale_by_adamax_clipped(clip=False, bias_correction=True, eps=0.0),
    lambda: optax.scale_by_adamax(eps=0.0),
  ),
}


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_python_scalar_gradient_leaves_compute_as_optax(name):
  ours, theirs = (make() for make in ADAPTIVE[name])
  params = {"w": jnp.ones(2), "s": 1.0}
  grads = {"w": jnp.array([0.5, -1.0]), "s": 0.25}
  u, _ = ours.update(grads, ours.init(params))
  v, _ = theirs.update(grads, theirs.init(params))
  for k in params:
    assert jnp.asarray(u[k]).dtype == jnp.float32
    np.testing.assert_allclose(u[k], v[k], rtol=2e-5)


@pytest.mark.parametrize(
  "make",
  [
    optaxtra.scale_by_adam,
    optaxtra.scale_by_adamax_clipped,
    lambda: optaxtra.adamax_clipped(1e-3, weight_decay=1e-2),
  ],
  ids=["adam", "adamax_clipped", "alias"],
)
def test_abstract_params_at_init_give_real_zeros(make):
  # What jax.eval_shape produces; Optax's init accepts it too.
  params = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}
  state = make().init(params)
  concrete = make().init({"w": jnp.zeros((3, 2))})
  assert jax.tree.structure(state) == jax.tree.structure(concrete)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(concrete), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


UNTRAINABLE = [
  # Optax gives int32 params int32 moments, truncated every step.
  (optaxtra.scale_by_adam, {"w": jnp.ones(2), "n": jnp.zeros(2, jnp.int32)}, "'n'"),
  (optaxtra.scale_by_adamax_clipped, {"w": jnp.ones(2), "b": jnp.ones(2, bool)}, "'b'"),
  # Clipping a complex gradient has no agreed meaning: refused, not guessed.
  (
    optaxtra.scale_by_adamax_clipped,
    {"z": jnp.ones(2, jnp.complex64)},
    "'z' has dtype complex64; complex parameters are not supported",
  ),
]


@pytest.mark.parametrize(("make", "params", "match"), UNTRAINABLE)
def test_untrainable_param_leaves_are_refused_at_init(make, params, match):
  with pytest.raises(TypeError, match=match + ".*optax.masked"):
    make().init(params)


def test_complex_gradient_into_real_moments_is_refused():
  tx = optaxtra.scale_by_adam()
  state = tx.init({"w": jnp.ones(2)})
  with pytest.raises(TypeError, match="imaginary part would be dropped"):
    tx.update({"w": jnp.ones(2, jnp.complex64)}, state)


# --------------------------------------------------------------------------
# Complex parameters, as Optax's own tests use them.


def _complex(seed, shape=(3, 4)):
  rng = np.random.default_rng(seed)
  return jnp.asarray(
    rng.normal(size=shape) + 1j * rng.normal(size=shape), jnp.complex64
  )


COMPLEX = {
  "adam": (optaxtra.scale_by_adam, optax.scale_by_adam),
  "nadam": (
    lambda: optaxtra.scale_by_adam(nesterov=True),
    lambda: optax.scale_by_adam(nesterov=True),
  ),
  "adam eps_root": (
    lambda: optaxtra.scale_by_adam(eps_root=1e-8),
    lambda: optax.scale_by_adam(eps_root=1e-8),
  ),
  "adamax (clip=False, eps=0)": ADAPTIVE["scale_by_adamax_clipped(clip=False, bc)"],
  "adamw chain": (
    lambda: optax.chain(
      optaxtra.scale_by_adam(),
      optaxtra.scale_by_learning_rate(1e-2),
      optaxtra.add_decayed_weights_decoupled(1e-3, schedule=None),
    ),
    lambda: optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(1e-2),
      optax.add_decayed_weights(-1e-3),
    ),
  ),
}


@pytest.mark.sweep(quick=["nadam", "adamax (clip=False, eps=0)", "adamw chain"])
@pytest.mark.parametrize("name", sorted(COMPLEX))
def test_complex_params_follow_optax(name):
  ours, theirs = (make() for make in COMPLEX[name])
  params = {"z": _complex(0), "x": jnp.ones(3)}
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  for t in range(5):
    grads = {"z": _complex(t + 1), "x": jnp.linspace(-1.0, 1.0, 3) * (t + 1)}
    u, s_ours = jax.jit(ours.update)(grads, s_ours, params)
    v, s_theirs = jax.jit(theirs.update)(grads, s_theirs, params)
    for k in params:
      assert u[k].dtype == params[k].dtype
      # Optax's bias correction 1 - b2**t cancels (1e-5 relative at t=1);
      # optaxtra's -expm1(t log b2) does not.
      np.testing.assert_allclose(u[k], v[k], rtol=2e-5, atol=1e-7, err_msg=f"{t} {k}")


def test_complex_second_moment_is_real():
  state = optaxtra.scale_by_adam().init({"z": jnp.ones(2, jnp.complex64)})
  assert state.mu["z"].dtype == jnp.complex64 and state.nu["z"].dtype == jnp.float32


# --------------------------------------------------------------------------
# Narrow dtypes and Optax's signature.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_params_keep_a_float32_infinity_norm_that_decays(dtype):
  # In bfloat16 0.999 * nu rounds back to nu: Optax's nu never decays.
  params = {"w": jnp.zeros(4, dtype)}
  big, zero = {"w": jnp.full(4, 1.0, dtype)}, {"w": jnp.zeros(4, dtype)}

  def nu_after(tx, field):
    state = tx.init(params)
    _, state = tx.update(big, state)
    for _ in range(20):
      _, state = tx.update(zero, state)
    nu = state.nu if field else state[0].nu
    return np.asarray(nu["w"], np.float64)

  ours = nu_after(optaxtra.scale_by_adamax_clipped(clip=False), True)
  np.testing.assert_allclose(ours, 0.999**20, rtol=1e-6)
  if dtype == jnp.bfloat16:
    theirs = np.asarray(optax.scale_by_adamax().init(params)[1]["w"])
    assert theirs.dtype == jnp.bfloat16  # and so its decay rounds away:
    state = optax.scale_by_adamax().init(params)
    _, state = optax.scale_by_adamax().update(big, state)
    for _ in range(20):
      _, state = optax.scale_by_adamax().update(zero, state)
    np.testing.assert_array_equal(np.asarray(state.nu["w"], np.float64), 1.0)


def test_scale_by_adam_takes_optaxs_positional_arguments():
  ours = optaxtra.scale_by_adam(0.8, 0.99, 1e-6, 1e-9, jnp.bfloat16)
  theirs = optax.scale_by_adam(0.8, 0.99, 1e-6, 1e-9, jnp.bfloat16)
  params = {"w": jnp.ones(3)}
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  assert s_ours.mu["w"].dtype == s_theirs.mu["w"].dtype == jnp.bfloat16
  g = {"w": jnp.array([0.5, -1.0, 2.0])}
  u, _ = ours.update(g, s_ours)
  v, _ = theirs.update(g, s_theirs)
  np.testing.assert_allclose(u["w"], v["w"], rtol=1e-2)  # Optax's mu in bfloat16


def test_decay_rate_reaching_one_later_is_refused_eagerly_and_recorded_under_jit():
  tx = optaxtra.add_decayed_weights_decoupled(
    lambda n: 0.5 * n, schedule=None
  )  # 1.0 at step 2
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update({"w": jnp.zeros(2)}, state, params)
  with pytest.raises(ValueError, match=r"is 1.0 at step 2; it must be in \[0, 1\)"):
    tx.update({"w": jnp.zeros(2)}, state, params)
  # Traced: a NaN, in the decayed weights' updates and in the state.
  updates, state = jax.jit(tx.update)({"w": jnp.zeros(2)}, state, params)
  assert np.isnan(float(optaxtra.inspect(state)["decay_rate"]))
  assert np.isnan(np.asarray(updates["w"])).all()
