"""adamax_clipped: the whole optimizer against its reference and the original code.

The TensorFlow ``AdamaxOptimizer._apply_dense`` of the Neural GPU (Freivalds &
Liepins' clipped Adamax) is ported below, operation for operation, to TF2 eager
ops on ``tf.Variable``s, and run side by side with ``optaxtra.adamax_clipped``
on the same gradients, and on a real model (softmax regression on
scikit-learn's digits) where each framework computes its own gradients.
"""

from __future__ import annotations

import functools

import _harness
import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need

import optaxtra

# clip_fraction is opt-in (it costs a reduction); these tests read it.
_tracked_adamax_clipped = functools.partial(
  optaxtra.adamax_clipped, track_clip_fraction=True
)

SHAPES = ref.SHAPES
STEPS = 12
MASK = {"w": True, "s": False}
HYPER = ref.ADAMAX_HYPER


def _grads(dtype, shapes=SHAPES, steps=STEPS, seed=5):
  return _harness.grads(dtype, seed, steps, shapes)


def _params(dtype, shapes=SHAPES, seed=6):
  return _harness.normal_params(dtype, seed, shapes)


def _lr(n):
  """Warmup for 3 steps to 0.01, linear decay to 0 at step 15, then 0."""
  return 0.01 * jnp.maximum(jnp.minimum((n + 1) / 3.0, (15.0 - n) / 12.0), 0.0)


def _np(schedule):
  return (lambda n: float(schedule(n))) if callable(schedule) else schedule


# (optimizer kwargs, reference decay schedule) for each coupling.
CASES = {
  "neural_gpu": ({}, None),
  "learning_rate": ({"weight_decay": 0.05, "weight_decay_mask": MASK}, _lr),
  "normalized": (
    {
      "weight_decay": 0.05,
      "weight_decay_coupling": "normalized",
      "peak_learning_rate": 0.01,
      "weight_decay_mask": MASK,
    },
    lambda n: _lr(n) / 0.01,
  ),
  "independent": (
    {
      "weight_decay": 1e-3,
      "weight_decay_coupling": "independent",
      "bias_correction": True,
    },
    None,
  ),
  "plain_adamax": ({"clip": False, "bias_correction": True, "weight_decay": 0.05}, _lr),
}


def _reference(params, grads, dtype, kwargs, decay_schedule):
  hyper = {k: kwargs[k] for k in ("clip", "bias_correction") if k in kwargs}
  return ref.adamax_clipped_optimizer(
    ref.tree_f64(params),
    [ref.tree_f64(g) for g in grads],
    learning_rate=_np(_lr),
    weight_decay=kwargs.get("weight_decay", 0.0),
    decay_schedule=_np(decay_schedule),
    decay_mask=kwargs.get("weight_decay_mask"),
    **ref.held(HYPER, dtype),
    **hyper,
  )


@pytest.mark.sweep(
  quick=[
    "float32-2e-06-neural_gpu",
    "float32-2e-06-learning_rate",
    "float32-2e-06-normalized",
    "float32-2e-06-independent",
    "float32-2e-06-plain_adamax",
    "float64-1e-13-normalized",
    "float64-1e-13-independent",
  ]
)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 2e-6), ("float64", 1e-13)])
def test_trajectory_matches_reference(case, dtype, rtol, request):
  """Twelve steps of params, learning rate, decay rate and clip share."""
  if dtype == "float64":
    request.getfixturevalue("x64")
  kwargs, decay_schedule = CASES[case]
  tx = _tracked_adamax_clipped(_lr, **HYPER, **kwargs)
  params, grads = _params(jnp.dtype(dtype)), _grads(jnp.dtype(dtype))
  _, states, trajectory = _harness.run(tx, params, grads, jit=True, apply=True)
  want = _reference(params, grads, dtype, kwargs, decay_schedule)
  fdt = jnp.result_type(float)
  for n, (p, s, w) in enumerate(zip(trajectory[1:], states[1:], want, strict=True)):
    for k in SHAPES:
      assert p[k].dtype == jnp.dtype(dtype)
      # A step moves params by about lr: errors are relative to params and steps.
      _harness.assert_close(
        p[k], w["params"][k], rtol, None, f"{n} {k}", atol=rtol * 0.01 * (n + 1)
      )
    assert s.clip_fraction.dtype == jnp.float32
    np.testing.assert_allclose(float(s.clip_fraction), w["clip_fraction"], rtol=1e-7)
    assert s.learning_rate.dtype == fdt
    rtol_value = 1e-15 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(
      float(s.learning_rate), w["learning_rate"], rtol=rtol_value
    )
    if "weight_decay" not in kwargs:  # no decay: nothing recorded, none applied
      assert s.decay_rate is None and s.weight_decay is None and w["rate"] == 0
      continue
    assert s.decay_rate.dtype == s.weight_decay.dtype == fdt
    np.testing.assert_allclose(float(s.decay_rate), w["rate"], rtol=rtol_value)
    np.testing.assert_allclose(float(s.weight_decay), kwargs["weight_decay"])
  if kwargs.get("clip", True):
    assert any(w["clip_fraction"] > 0 for w in want[1:])


@pytest.mark.sweep(quick=["learning_rate"])
@pytest.mark.parametrize("case", ["neural_gpu", "learning_rate"])
def test_eager_matches_jit(case):
  kwargs, _ = CASES[case]
  tx = _tracked_adamax_clipped(_lr, **HYPER, **kwargs)
  params, grads = _params(jnp.float32), _grads(jnp.float32)
  eager, _, _ = _harness.run(tx, params, grads, jit=False, apply=True)
  jitted, _, _ = _harness.run(tx, params, grads, jit=True, apply=True)
  for n, (a, b) in enumerate(zip(eager, jitted, strict=True)):
    for k in SHAPES:
      _harness.assert_close(a[k], b[k], 1e-6, None, f"{n} {k}", atol=1e-8)


@pytest.mark.parametrize("case", ["neural_gpu", "learning_rate", "normalized"])
def test_bfloat16_each_step(case):
  """bfloat16 params and moments: each step from the optimizer's own state."""
  kwargs, decay_schedule = CASES[case]
  tx = _tracked_adamax_clipped(_lr, **HYPER, **kwargs)
  params, grads = _params(jnp.bfloat16), _grads(jnp.bfloat16)
  state = tx.init(params)
  update = jax.jit(tx.update)
  hyper = ref.held(HYPER, jnp.bfloat16)
  mask = kwargs.get("weight_decay_mask", dict.fromkeys(SHAPES, True))
  for n, g in enumerate(grads):
    updates, new_state = update(g, state, params)
    rate = kwargs.get("weight_decay", 0.0) * ref.value(_np(decay_schedule), n)
    for k in SHAPES:
      u, _, _, _ = ref.adamax_clipped_step(
        g[k], state.mu[k], state.nu[k], n + 1, **hyper
      )
      want = -float(_lr(n)) * u - (rate * ref.f64(params[k]) if mask[k] else 0.0)
      assert updates[k].dtype == jnp.bfloat16
      scale = float(_lr(n)) * np.abs(u) + rate * np.abs(ref.f64(params[k]))
      # Each of the three stages hands on bfloat16 updates: three roundings,
      # each within bfloat16's unit roundoff 2**-8 of its value (2**-7, the
      # bound before, covers two: it held only while nu, stored in bfloat16,
      # never decayed and the steps stayed away from the binades' bottoms).
      _harness.assert_close(updates[k], want, 3 * 2**-8, scale, f"{n} {k}")
    params = optax.apply_updates(params, updates)
    assert params["w"].dtype == jnp.bfloat16
    state = new_state


# --- The Neural-GPU TensorFlow AdamaxOptimizer ------------------------------


class NeuralGpuAdamaxOptimizer:
  """The Neural-GPU ``AdamaxOptimizer``: ``_prepare``, ``_apply_dense``, in TF2 eager.

  As in the original, hyperparameters go through ``ops.convert_to_tensor``
  (float32 for Python floats) and are then cast to the variable's dtype.
  """

  def __init__(
    self,
    tf,
    learning_rate=0.001,
    beta1=0.9,
    beta2=0.999,
    epsilon=1e-8,
    clip_gradients=True,
    clip_multiplier=1.2,
    clip_epsilon=1e-4,
  ):
    self.tf = tf
    self._lr_t = tf.convert_to_tensor(learning_rate, name="learning_rate")
    self._beta1_t = tf.convert_to_tensor(beta1, name="beta1")
    self._beta2_t = tf.convert_to_tensor(beta2, name="beta2")
    self._epsilon_t = tf.convert_to_tensor(epsilon, name="epsilon")
    self.clip_multiplier_t = tf.convert_to_tensor(
      clip_multiplier, name="clip_multiplier"
    )
    self.clip_epsilon_t = tf.convert_to_tensor(clip_epsilon, name="clip_epsilon")
    self.clip_gradients = clip_gradients
    self._slots = {}

  def get_slot(self, var, name):
    key = (var.ref(), name)
    if key not in self._slots:  # _create_slots: zeros "m" and "v"
      self._slots[key] = self.tf.Variable(self.tf.zeros_like(var))
    return self._slots[key]

  def _apply_dense(self, grad, var):
    tf = self.tf
    lr_t = tf.cast(self._lr_t, var.dtype.base_dtype)
    beta1_t = tf.cast(self._beta1_t, var.dtype.base_dtype)
    beta2_t = tf.cast(self._beta2_t, var.dtype.base_dtype)
    epsilon_t = tf.cast(self._epsilon_t, var.dtype.base_dtype)
    clip_multiplier_t = tf.cast(self.clip_multiplier_t, var.dtype.base_dtype)
    clip_epsilon_t = tf.cast(self.clip_epsilon_t, var.dtype.base_dtype)

    v = self.get_slot(var, "v")
    # clip gradient so that each value exceeds its previous maximum by no more
    # than clip_multiplier
    if self.clip_gradients:
      clipVal = v * clip_multiplier_t + clip_epsilon_t
      grad = tf.clip_by_value(grad, -clipVal, clipVal)

    # m := beta1 * m + (1 - beta1) * g_t
    m = self.get_slot(var, "m")
    m_t = m.assign(beta1_t * m + (1.0 - beta1_t) * grad)
    # v := max(beta2 * v , abs(grad))
    v_t = v.assign(tf.maximum(beta2_t * v, tf.abs(grad)))
    # variable -= learning_rate * m_t / (epsilon_t + v_t)
    # we do not use bias-correction term for the first moment
    var.assign_sub(lr_t * m_t / (v_t + epsilon_t))

  def apply_gradients(self, grads_and_vars):
    for grad, var in grads_and_vars:
      self._apply_dense(grad, var)


# float32-exact hyperparameters: the TF code rounds every hyperparameter through
# float32 (convert_to_tensor) even for float64 variables.
EXACT32 = {
  "learning_rate": 2**-7,
  "b1": 0.875,
  "b2": 1 - 2**-9,
  "eps": 2**-20,
  "clip_multiplier": 1.25,
  "clip_epsilon": 2**-13,
}


@pytest.mark.parametrize(
  ("dtype", "hyper", "rtol"),
  [
    ("float32", {}, 1e-6),
    ("float32", EXACT32, 1e-6),
    ("float64", EXACT32, 1e-13),
  ],
  ids=["float32-defaults", "float32-exact", "float64-exact"],
)
def test_neural_gpu_tensorflow_optimizer(dtype, hyper, rtol, request, tf):
  """Whole parameter trajectories on the same gradients, 20 steps."""
  if dtype == "float64":
    request.getfixturevalue("x64")
  shapes = {"kernel": (4, 5), "bias": (5,)}
  params, grads = (
    _params(jnp.dtype(dtype), shapes),
    _grads(jnp.dtype(dtype), shapes, 20),
  )
  tf_hyper = {
    "learning_rate": hyper.get("learning_rate", 0.001),
    "beta1": hyper.get("b1", 0.9),
    "beta2": hyper.get("b2", 0.999),
    "epsilon": hyper.get("eps", 1e-8),
    "clip_multiplier": hyper.get("clip_multiplier", 1.2),
    "clip_epsilon": hyper.get("clip_epsilon", 1e-4),
  }
  tf_opt = NeuralGpuAdamaxOptimizer(tf, **tf_hyper)
  variables = {k: tf.Variable(np.asarray(v)) for k, v in params.items()}
  tx = _tracked_adamax_clipped(**{"learning_rate": 0.001, **hyper})
  state = tx.init(params)
  update = jax.jit(tx.update)
  lr = tf_hyper["learning_rate"]
  clipped_later = False
  for n, g in enumerate(grads):
    tf_opt.apply_gradients(
      [(tf.constant(np.asarray(g[k])), variables[k]) for k in shapes]
    )
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    clipped_later |= n > 0 and float(state.clip_fraction) > 0
    for k in shapes:
      theirs = variables[k].numpy()
      assert theirs.dtype == params[k].dtype
      _harness.assert_close(
        params[k], theirs, rtol, None, f"{n} {k}", atol=rtol * lr * (n + 1)
      )
      mu_tf = tf_opt.get_slot(variables[k], "m").numpy()
      nu_tf = tf_opt.get_slot(variables[k], "v").numpy()
      # m = b1 m + (1 - b1) g cancels; its terms are bounded by v >= |g|.
      _harness.assert_close(state.mu[k], mu_tf, rtol, nu_tf, f"m {n} {k}")
      _harness.assert_close(state.nu[k], nu_tf, rtol, None, f"v {n} {k}")
  assert clipped_later


def test_neural_gpu_on_digits_with_own_gradients(x64, tf):
  """Softmax regression on scikit-learn's digits, each side taking its own gradients."""
  datasets = need("sklearn.datasets")
  x, y = datasets.load_digits(return_X_y=True)
  x, y = x[:256] / 16.0, y[:256]
  onehot = np.eye(10)[y]
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(64, 10)) * 0.01, "bias": np.zeros(10)}

  def loss(p):
    logits = x @ p["kernel"] + p["bias"]
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))

  tx = _tracked_adamax_clipped(**EXACT32)
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  tf_opt = NeuralGpuAdamaxOptimizer(
    tf,
    learning_rate=EXACT32["learning_rate"],
    beta1=EXACT32["b1"],
    beta2=EXACT32["b2"],
    epsilon=EXACT32["eps"],
    clip_multiplier=EXACT32["clip_multiplier"],
    clip_epsilon=EXACT32["clip_epsilon"],
  )
  variables = {k: tf.Variable(np.asarray(v)) for k, v in params.items()}
  xt, yt = tf.constant(x), tf.constant(onehot)
  first_loss = float(loss(params))
  for n in range(30):
    with tf.GradientTape() as tape:
      logits = xt @ variables["kernel"] + variables["bias"]
      tf_loss = -tf.reduce_mean(tf.reduce_sum(yt * tf.nn.log_softmax(logits), axis=-1))
    tf_grads = tape.gradient(tf_loss, [variables["kernel"], variables["bias"]])
    tf_opt.apply_gradients(
      zip(tf_grads, [variables["kernel"], variables["bias"]], strict=True)
    )
    params, state = step(params, state)
    for k in params:
      theirs = variables[k].numpy()
      _harness.assert_close(params[k], theirs, 1e-12, None, f"{n} {k}", atol=1e-14)
  assert float(loss(params)) < 0.75 * first_loss  # it did train


@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 2e-6), ("float64", 1e-14)])
def test_optax_adamax_with_eps_zero(dtype, rtol, request):
  """clip=False, bias_correction=True, eps=0 is optax.adamax(eps=0), lr schedule too."""
  if dtype == "float64":
    request.getfixturevalue("x64")
  params, grads = _params(jnp.dtype(dtype)), _grads(jnp.dtype(dtype))
  ours = _tracked_adamax_clipped(_lr, 0.9, 0.99, 0.0, clip=False, bias_correction=True)
  theirs = optax.adamax(_lr, 0.9, 0.99, 0.0)
  _, _, p_ours = _harness.run(ours, params, grads, jit=True, apply=True)
  _, _, p_theirs = _harness.run(theirs, params, grads, jit=True, apply=True)
  for n, (a, b) in enumerate(zip(p_ours, p_theirs, strict=True)):
    for k in SHAPES:
      _harness.assert_close(
        a[k], b[k], rtol, None, f"{n} {k}", atol=rtol * 0.01 * (n + 1)
      )


# --- decay_schedule ----------------------------------------------------------


def test_decay_schedule_couplings(x64):
  lr = lambda n: 0.01 / (1.0 + n)  # noqa: E731
  assert optaxtra.decay_schedule(lr, "learning_rate") is lr
  assert optaxtra.decay_schedule(0.1, "learning_rate") == 0.1
  assert optaxtra.decay_schedule(lr, "independent") is None
  assert optaxtra.decay_schedule(0.1, "normalized") is None  # 0.1 / 0.1
  assert optaxtra.decay_schedule(0.1, "normalized", 0.4) == 0.25
  normalized = optaxtra.decay_schedule(lr, "normalized", peak_learning_rate=0.01)
  for n in range(5):
    assert float(normalized(jnp.asarray(n, jnp.int32))) == pytest.approx(
      1 / (1 + n), rel=1e-15
    )


@pytest.mark.parametrize(
  ("call", "match"),
  [
    (
      lambda: optaxtra.decay_schedule(0.1, "torch"),
      "weight_decay_coupling must be one of",
    ),
    (
      lambda: optaxtra.decay_schedule(lambda n: 0.1, "normalized"),
      "with a learning-rate schedule needs peak_learning_rate",
    ),
    (
      lambda: optaxtra.decay_schedule(jnp.asarray(0.1), "normalized"),
      "with an array learning rate needs peak_learning_rate.*inject_hyperparams",
    ),
    (
      lambda: optaxtra.decay_schedule(0.1, "learning_rate", 0.1),
      "peak_learning_rate is only used with weight_decay_coupling='normalized'",
    ),
    (
      lambda: optaxtra.decay_schedule(0.1, "normalized", 0.0),
      r"peak_learning_rate must be in \(0, inf\)",
    ),
    (
      lambda: _tracked_adamax_clipped(0.1, weight_decay_coupling="pytorch"),
      "adamax_clipped: weight_decay_coupling must be one of",
    ),
    (
      lambda: _tracked_adamax_clipped(0.1, weight_decay=-1.0),
      r"weight_decay must be in \[0",
    ),
    (lambda: _tracked_adamax_clipped(-0.1), r"learning_rate must be in \[0, inf\)"),
    (lambda: _tracked_adamax_clipped(0.1, b2=1.0), r"b2 must be in \[0, 1\)"),
    (lambda: _tracked_adamax_clipped(0.1, clip_multiplier=0.0), "clip_multiplier"),
    (lambda: _tracked_adamax_clipped(0.1, clip_epsilon=-1.0), "clip_epsilon"),
  ],
)
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_needs_params_for_weight_decay():
  tx = _tracked_adamax_clipped(0.1, weight_decay=1e-4)
  params = _params(jnp.float32)
  with pytest.raises(ValueError, match="needs the params to decay them"):
    tx.update(_grads(jnp.float32)[0], tx.init(params))


@pytest.mark.parametrize("jit", [False, True])
def test_bad_gradients(jit):
  tx = _tracked_adamax_clipped(0.1)
  params = _params(jnp.float32)
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(ValueError, match=r"update for 'w' has shape \(5,\)"):
    update({"w": jnp.ones(5), "s": jnp.ones(())}, tx.init(params), params)


# --- Contract, saturation, inject_hyperparams --------------------------------


@pytest.mark.sweep(quick=["bfloat16-neural_gpu", "float64-normalized"])
@pytest.mark.parametrize("case", ["neural_gpu", "normalized"])
def test_contract(float_dtype, case):
  kwargs, _ = CASES[case]
  tx = _tracked_adamax_clipped(_lr, **HYPER, **kwargs)
  _harness.check_contract(tx, _params(float_dtype), _grads(float_dtype))


def test_count_saturates():
  tx = _tracked_adamax_clipped(_lr, **CASES["normalized"][0], bias_correction=True)
  _harness.check_count_saturates(tx, _params(jnp.float32), _grads(jnp.float32))


def test_inject_hyperparams():
  """Numeric arguments traced under jit; flags, coupling and mask dict static."""
  params, grads = _params(jnp.float32), _grads(jnp.float32, steps=3)
  _harness.check_inject(
    optaxtra.adamax_clipped,
    {"learning_rate": 0.01, **HYPER, **CASES["normalized"][0]},
    params,
    grads,
    changed={"learning_rate": 0.005, "weight_decay": 0.5, "clip_epsilon": 1e-3},
  )
  # A learning-rate schedule evaluated by inject_hyperparams.
  _harness.check_inject(
    optaxtra.adamax_clipped,
    {"learning_rate": _lr, "weight_decay": 0.05, "weight_decay_mask": MASK},
    params,
    grads,
  )


def test_inject_hyperparams_bfloat16_and_float64(x64):
  _harness.check_inject(
    optaxtra.adamax_clipped,
    {"learning_rate": 0.01, **HYPER, "weight_decay": 0.05},
    _params(jnp.float64),
    _grads(jnp.float64, steps=3),
  )
  _harness.check_inject(
    optaxtra.adamax_clipped,
    {"learning_rate": 0.01, **HYPER, "weight_decay": 0.05},
    _params(jnp.bfloat16),
    _grads(jnp.bfloat16, steps=3),
    hyperparam_dtype=jnp.float32,
  )


def test_inject_hyperparams_normalized_needs_the_peak():
  """Inside inject_hyperparams a schedule arrives as a value: no silent lr/lr."""
  tx = optax.inject_hyperparams(optaxtra.adamax_clipped)(
    _lr, weight_decay=0.05, weight_decay_coupling="normalized"
  )
  with pytest.raises(ValueError, match="needs peak_learning_rate"):
    tx.init(_params(jnp.float32))
