"""scale_by_adam against the float64 reference and against optax.scale_by_adam."""

from __future__ import annotations

import _harness
import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra

SHAPES = ref.SHAPES
STEPS = 12
# Inexact in float32, so that a detour through float32 shows in float64.
HYPER = {"b1": 0.9, "b2": 0.99, "eps": 1e-7, "eps_root": 1e-9}
RTOL = {"float32": 2e-6, "bfloat16": 2**-8, "float64": 1e-13}


def _grads(dtype, steps=STEPS):
  return _harness.grads(dtype, 1, steps)


def _params(dtype):
  return {k: jnp.zeros(s, dtype) for k, s in SHAPES.items()}


def _scale_step(g, mu, nu, t, **hyper):
  """Forward-error scale of one step: the same step on ``|g|`` and ``|mu|``."""
  return ref.adam_step(np.abs(ref.f64(g)), np.abs(ref.f64(mu)), nu, t, **hyper)


@pytest.mark.parametrize(
  ("jit", "bias_correction"),
  [(True, True), (True, False), (False, True)],  # eager: the bias-corrected case
  ids=["jit-bias_correction", "jit-no_bias_correction", "eager-bias_correction"],
)
@pytest.mark.sweep(
  quick=[
    "float32-eager-bias_correction",
    "bfloat16-jit-no_bias_correction",
    "float64-jit-bias_correction",
  ]
)
def test_each_step_matches_reference(float_dtype, jit, bias_correction):
  """Every update and moment, from the implementation's own state."""
  hyper = {**HYPER, "bias_correction": bias_correction}
  tx = optaxtra.scale_by_adam(**hyper)
  hyper = ref.held(hyper, float_dtype)
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(_params(float_dtype))
  rtol = RTOL[float_dtype.name]
  for t, g in enumerate(_grads(float_dtype), start=1):
    updates, new_state = update(g, state)
    for k in SHAPES:
      want_u, want_mu, want_nu = ref.adam_step(
        g[k], state.mu[k], state.nu[k], t, **hyper
      )
      scale_u, scale_mu, _ = _scale_step(g[k], state.mu[k], state.nu[k], t, **hyper)
      assert updates[k].dtype == new_state.mu[k].dtype == float_dtype
      _harness.assert_close(updates[k], want_u, rtol, scale_u, f"u {t} {k}")
      _harness.assert_close(new_state.mu[k], want_mu, rtol, scale_mu, f"mu {t} {k}")
      _harness.assert_close(new_state.nu[k], want_nu, rtol, None, f"nu {t} {k}")
    assert new_state.count.dtype == jnp.int32 and int(new_state.count) == t
    b1, b2 = hyper["b1"], hyper["b2"]
    factor = ref.adam_bias_correction(t, b1, b2) if bias_correction else 1.0
    assert new_state.bias_correction.dtype == jnp.result_type(float)
    np.testing.assert_allclose(float(new_state.bias_correction), factor, rtol=rtol)
    state = new_state


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trajectory_matches_reference(dtype, bias_correction, request):
  """Twelve steps run independently in the implementation and the reference."""
  if dtype == "float64":
    request.getfixturevalue("x64")
  hyper = {**HYPER, "bias_correction": bias_correction}
  grads = _grads(jnp.dtype(dtype))
  updates, states, _ = _harness.run(
    optaxtra.scale_by_adam(**hyper), _params(jnp.dtype(dtype)), grads, jit=True
  )
  hyper = ref.held(hyper, dtype)
  g64 = [ref.tree_f64(g) for g in grads]
  want = ref.adam(g64, **hyper)
  scale = ref.adam([{k: np.abs(v) for k, v in g.items()} for g in g64], **hyper)
  rtol = RTOL[dtype]
  for t, (u, s, w, a) in enumerate(
    zip(updates, states[1:], want, scale, strict=True), 1
  ):
    for k in SHAPES:
      _harness.assert_close(u[k], w["updates"][k], rtol, a["updates"][k], f"{t} {k}")
      _harness.assert_close(s.nu[k], w["nu"][k], rtol, None, f"nu {t} {k}")


def test_float64_bias_correction_factor_is_float64(x64):
  """The recorded alpha_t factor has float64 accuracy (0.9, 0.99 inexact in f32)."""
  tx = optaxtra.scale_by_adam(0.9, 0.99)
  _, states, _ = _harness.run(tx, _params(jnp.float64), _grads(jnp.float64), jit=True)
  for t, s in enumerate(states[1:], start=1):
    assert s.bias_correction.dtype == jnp.float64
    want = ref.adam_bias_correction(t, 0.9, 0.99)
    np.testing.assert_allclose(float(s.bias_correction), want, rtol=1e-14)
    b1, b2 = float(np.float32(0.9)), float(np.float32(0.99))
    assert abs(float(s.bias_correction) - ref.adam_bias_correction(t, b1, b2)) > 1e-10


@pytest.mark.parametrize(
  ("dtype", "jit", "rtol"),
  [("float32", False, 5e-5), ("float32", True, 5e-5), ("float64", True, 1e-14)],
)
@pytest.mark.sweep(quick=["float32-False-5e-05", "float64-True-1e-14"])
def test_matches_optax_scale_by_adam(dtype, jit, rtol, request):
  """bias_correction=True is Optax's Adam, eps_root included.

  In float32 Optax takes ``1 - b2`` in Python's double but ``1 - b2**t`` in
  float32, where it cancels: its early steps carry a relative error of about
  ``2**-24 / (1 - b2)`` (7e-6 on the first step with ``b2=0.999``). optaxtra
  uses the same float32 ``b2`` in both places, so the two cancel, and stays
  within 2e-6 of the float64 reference (checked above and here). In float64
  both agree to rounding.
  """
  if dtype == "float64":
    request.getfixturevalue("x64")
  grads, params = _grads(jnp.dtype(dtype)), _params(jnp.dtype(dtype))
  for kwargs in ({}, HYPER):
    ours, s_ours, _ = _harness.run(
      optaxtra.scale_by_adam(**kwargs), params, grads, jit=jit
    )
    theirs, s_theirs, _ = _harness.run(
      optax.scale_by_adam(**kwargs), params, grads, jit=jit
    )
    hyper = ref.held({**ref.DEFAULT_ADAM, **kwargs}, dtype)
    g64 = [ref.tree_f64(g) for g in grads]
    want = ref.adam(g64, **hyper)
    scale = ref.adam([{k: np.abs(v) for k, v in g.items()} for g in g64], **hyper)
    for t, (a, b, w, sc) in enumerate(zip(ours, theirs, want, scale, strict=True)):
      for k in SHAPES:
        msg = f"{kwargs} step {t} {k}"
        _harness.assert_close(a[k], b[k], rtol, sc["updates"][k], msg)
        _harness.assert_close(a[k], w["updates"][k], RTOL[dtype], sc["updates"][k], msg)
    for a, b in zip(s_ours, s_theirs, strict=True):
      assert int(a.count) == int(b.count)
      for k in SHAPES:
        _harness.assert_close(a.nu[k], b.nu[k], rtol, None, f"{kwargs} nu {k}")


@pytest.mark.parametrize(
  ("params_dtype", "mu_dtype"),
  [(jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.float32)],
)
def test_mu_dtype(params_dtype, mu_dtype):
  """mu_dtype sets mu's storage; the arithmetic stays float32.

  (Optax's own ``scale_by_adam(mu_dtype=jnp.bfloat16)`` computes ``b1 * mu``
  in bfloat16, with ``b1=0.9`` rounded to 0.8984375, a 0.2% error; here each
  step is held to the float64 reference from the stored state.)
  """
  tx = optaxtra.scale_by_adam(mu_dtype=mu_dtype)
  grads = _grads(params_dtype)
  state = tx.init(_params(params_dtype))
  # nu: at least float32 (in bfloat16 0.999 * nu rounds back to nu).
  nu_dtype = jnp.promote_types(params_dtype, jnp.float32)
  assert state.mu["w"].dtype == mu_dtype and state.nu["w"].dtype == nu_dtype
  tol = {jnp.dtype(jnp.float32): 2e-6, jnp.dtype(jnp.bfloat16): 2**-8}
  for t, g in enumerate(grads, start=1):
    updates, new_state = jax.jit(tx.update)(g, state)
    for k in SHAPES:
      hyper = ref.held(ref.DEFAULT_ADAM, jnp.float32)
      want_u, want_mu, want_nu = ref.adam_step(
        g[k], state.mu[k], state.nu[k], t, **hyper
      )
      scale_u, scale_mu, _ = _scale_step(g[k], state.mu[k], state.nu[k], t, **hyper)
      assert updates[k].dtype == params_dtype and new_state.mu[k].dtype == mu_dtype
      rtol_u = max(tol[jnp.dtype(params_dtype)], tol[jnp.dtype(mu_dtype)])
      _harness.assert_close(updates[k], want_u, rtol_u, scale_u, f"u {t} {k}")
      rtol_mu = tol[jnp.dtype(mu_dtype)]
      _harness.assert_close(new_state.mu[k], want_mu, rtol_mu, scale_mu, f"mu {t} {k}")
      rtol_nu = tol[jnp.dtype(params_dtype)]
      _harness.assert_close(new_state.nu[k], want_nu, rtol_nu, None, f"nu {t} {k}")
    state = new_state


@pytest.mark.sweep(quick=["bfloat16"])  # the dtypes' values: each step above
def test_contract(float_dtype):
  tx = optaxtra.scale_by_adam(**HYPER)
  _harness.check_contract(tx, _params(float_dtype), _grads(float_dtype))


def test_contract_without_bias_correction():
  tx = optaxtra.scale_by_adam(bias_correction=False, mu_dtype=jnp.bfloat16)
  _harness.check_contract(tx, _params(jnp.float32), _grads(jnp.float32))


def test_count_saturates():
  tx = optaxtra.scale_by_adam()
  _harness.check_count_saturates(tx, _params(jnp.float32), _grads(jnp.float32))


def test_inject_hyperparams():
  _harness.check_inject(
    optaxtra.scale_by_adam,
    dict(HYPER),
    _params(jnp.float32),
    _grads(jnp.float32, steps=3),
    changed={"b2": 0.9, "eps": 1e-3},
  )


def test_inject_hyperparams_float64(x64):
  _harness.check_inject(
    optaxtra.scale_by_adam,
    {**HYPER, "bias_correction": False},
    _params(jnp.float64),
    _grads(jnp.float64, steps=3),
  )


def test_inject_hyperparams_bfloat16():
  params = _params(jnp.bfloat16)
  _harness.check_inject(
    optaxtra.scale_by_adam,
    dict(HYPER),
    params,
    _grads(jnp.bfloat16, steps=3),
    hyperparam_dtype=jnp.float32,
  )
  # Optax's own Adam gives NaN here: b2=0.999 arrives as bfloat16 1.0.
  tx = optax.inject_hyperparams(optaxtra.scale_by_adam)(b2=0.999)
  with pytest.raises(TypeError, match=r"b1 arrived as bfloat16.*hyperparam_dtype"):
    tx.init(params)


def _bad(**kwargs):
  return lambda: optaxtra.scale_by_adam(**kwargs)


@pytest.mark.parametrize(
  ("make", "error", "match"),
  [
    (_bad(b1=1.0), ValueError, r"scale_by_adam: b1 must be in \[0, 1\), got 1.0"),
    (_bad(b1=-1e-3), ValueError, r"b1 must be in \[0, 1\)"),
    (_bad(b2=1.5), ValueError, r"b2 must be in \[0, 1\)"),
    (_bad(eps=-1.0), ValueError, r"eps must be in \[0, inf\)"),
    (_bad(eps_root=-1e-12), ValueError, r"eps_root must be in \[0, inf\)"),
    (_bad(b1="0.9"), TypeError, "b1 must be a real scalar; got the string"),
    (_bad(b2=[0.9]), TypeError, "b2 must be a real scalar"),
    (_bad(bias_correction=None), TypeError, "bias_correction must be True or False"),
    (_bad(mu_dtype=jnp.int8), TypeError, "mu_dtype must be a floating dtype"),
    (_bad(eps=np.float16(1e-8)), TypeError, "eps arrived as float16"),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("jit", [False, True])
def test_bad_gradients(jit):
  tx = optaxtra.scale_by_adam()
  state = tx.init({"w": jnp.zeros((3,)), "b": jnp.zeros(())})
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(ValueError, match=r"update for 'b' has shape \(3,\)"):
    update({"w": jnp.ones(3), "b": jnp.ones(3)}, state)
  with pytest.raises(ValueError, match=r"Only in the updates: \['c'\]"):
    update({"w": jnp.ones(3), "c": jnp.ones(())}, state)
  with pytest.raises(TypeError, match="'w' has dtype int32"):
    update({"w": jnp.ones(3, jnp.int32), "b": jnp.ones(())}, state)
  with pytest.raises(
    TypeError, match="'w' has dtype complex64 but init was given a real"
  ):
    update({"w": jnp.ones(3, jnp.complex64), "b": jnp.ones(())}, state)


# --- epsilon_hat: epsilon outside the bias correction (Keras, TF1) ----------------


def _eps_hat_step(g, mu, nu, t, *, b1, b2, eps, eps_root=0.0, nesterov=False, **_):
  """One step of Adam with epsilon outside the bias correction, float64.

  Kingma & Ba's "epsilon hat" (end of Section 2), as TF1's ``AdamOptimizer``
  and Keras' ``Adam`` compute it: ``sqrt(1 - b2**t) / (1 - b1**t) * m /
  (sqrt(v) + eps)``; with Nesterov, Optax's looked-ahead ``m_hat`` times
  ``sqrt(1 - b2**t)``.
  """
  g, mu, nu = ref.f64(g), ref.f64(mu), ref.f64(nu)
  mu = b1 * mu + (1.0 - b1) * g
  nu = b2 * nu + (1.0 - b2) * g * g
  c1, c2 = 1.0 - b1**t, 1.0 - b2**t
  if nesterov:
    m_hat = b1 * mu / (1.0 - b1 ** (t + 1)) + (1.0 - b1) * g / c1
  else:
    m_hat = mu / c1
  return np.sqrt(c2) * m_hat / (np.sqrt(nu + eps_root) + eps), mu, nu


@pytest.mark.parametrize("nesterov", [False, True])
def test_epsilon_hat_matches_reference(float_dtype, nesterov):
  """Every update and moment, from the implementation's own state, under jit."""
  hyper = {**HYPER, "nesterov": nesterov}
  tx = optaxtra.scale_by_adam(**hyper, epsilon_hat=True)
  held = ref.held(hyper, float_dtype)
  update = jax.jit(tx.update)
  state = tx.init(_params(float_dtype))
  rtol = RTOL[float_dtype.name]
  for t, g in enumerate(_grads(float_dtype), start=1):
    updates, new_state = update(g, state)
    for k in SHAPES:
      want_u, want_mu, want_nu = _eps_hat_step(
        g[k], state.mu[k], state.nu[k], t, **held
      )
      scale_u, scale_mu, _ = _eps_hat_step(
        np.abs(ref.f64(g[k])), np.abs(ref.f64(state.mu[k])), state.nu[k], t, **held
      )
      assert updates[k].dtype == float_dtype
      _harness.assert_close(updates[k], want_u, rtol, scale_u, f"u {t} {k}")
      _harness.assert_close(new_state.mu[k], want_mu, rtol, scale_mu, f"mu {t} {k}")
      _harness.assert_close(new_state.nu[k], want_nu, rtol, None, f"nu {t} {k}")
    # The recorded factor is the same as without the flag: alpha_t / lr.
    want = ref.adam_bias_correction(t, held["b1"], held["b2"])
    np.testing.assert_allclose(float(new_state.bias_correction), want, rtol=rtol)
    state = new_state


def test_epsilon_hat_is_adam_with_eps_over_sqrt_of_the_correction(x64):
  """In exact arithmetic, epsilon hat is Adam with eps / sqrt(1 - b2**t).

  (Without eps_root, which sits inside the square root on both sides.)
  """
  hyper = {**HYPER, "eps_root": 0.0}
  grads, params = _grads(jnp.float64), _params(jnp.float64)
  hat, s_hat, _ = _harness.run(
    optaxtra.scale_by_adam(**hyper, epsilon_hat=True), params, grads, jit=True
  )
  for t, (g, u) in enumerate(zip(grads, hat, strict=True), start=1):
    eps_t = hyper["eps"] / np.sqrt(1 - hyper["b2"] ** t)
    tx = optaxtra.scale_by_adam(**{**hyper, "eps": eps_t})
    want, _ = tx.update(g, s_hat[t - 1])
    for k in SHAPES:
      np.testing.assert_allclose(u[k], want[k], rtol=1e-13, atol=0)


def test_epsilon_hat_without_bias_correction_changes_nothing():
  grads, params = _grads(jnp.float32), _params(jnp.float32)
  a, _, _ = _harness.run(
    optaxtra.scale_by_adam(bias_correction=False, epsilon_hat=True),
    params,
    grads,
    jit=True,
  )
  b, _, _ = _harness.run(
    optaxtra.scale_by_adam(bias_correction=False), params, grads, jit=True
  )
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_epsilon_hat_contract_and_flag():
  tx = optaxtra.scale_by_adam(**HYPER, epsilon_hat=True)
  _harness.check_contract(tx, _params(jnp.float32), _grads(jnp.float32))
  with pytest.raises(TypeError, match="epsilon_hat"):
    optaxtra.scale_by_adam(epsilon_hat=1)  # pyright: ignore[reportArgumentType]


def test_epsilon_hat_matches_keras_adam(keras):
  """Keras 3's Adam, live, twenty steps from zero on one gradient sequence.

  Both compute in float32 from the same float32 ``b1``, ``b2``. They differ
  by rounding, bounded per step: Keras takes ``1 - b2**t`` from a float32
  power, which cancels (``2**-24 / (1 - b2**t)`` relative, half of it after
  the square root: 7e-6 at ``t = 2`` with ``b2 = 0.999``), and both round the
  few operations of the step (8 ulps together), of an update at most
  ``|u_t|``; the parameters then differ by at most the sum of these over the
  steps, plus one ulp of the parameter per step for the two roundings of
  ``p + u``.
  """
  lr, steps = 1e-2, 20
  params = _harness.normal_params(jnp.float32, 3, SHAPES)
  grads = _grads(jnp.float32, steps=steps)
  var = {k: keras.Variable(np.asarray(v), name=f"w{k}") for k, v in params.items()}
  opt = keras.optimizers.Adam(lr, beta_1=HYPER["b1"], beta_2=HYPER["b2"], epsilon=1e-7)
  tx = optax.chain(
    optaxtra.scale_by_adam(b1=HYPER["b1"], b2=HYPER["b2"], eps=1e-7, epsilon_hat=True),
    optaxtra.scale_by_learning_rate(lr),
  )
  state = tx.init(params)
  update = jax.jit(tx.update)
  b2 = float(np.float32(HYPER["b2"]))
  allowed = {k: 0.0 for k in SHAPES}
  for t, g in enumerate(grads, start=1):
    opt.apply_gradients([(np.asarray(g[k]), var[k]) for k in SHAPES])
    updates, state = update(g, state)
    params = optax.apply_updates(params, updates)
    rel = 8 * 2.0**-24 + 2.0**-24 / (2 * (1 - b2**t))
    for k in SHAPES:
      ulp = float(np.max(np.spacing(np.abs(np.asarray(params[k], np.float32)))))
      allowed[k] += float(np.max(np.abs(updates[k]))) * rel + ulp
      diff = np.max(np.abs(np.asarray(var[k].numpy(), np.float64) - params[k]))
      assert diff <= allowed[k], f"step {t} {k}: {diff:.3g} > {allowed[k]:.3g}"
