"""add_decayed_weights_decoupled: the reference, every coupling, real systems.

The systems that use each coupling of the decay to the learning rate run
here: PyTorch ``AdamW`` with a ``LambdaLR`` schedule and a no-decay bias group,
Keras 3 ``AdamW``, ``optax.adamw`` and BERT's ``AdamWeightDecayOptimizer``
(google-research/bert's ``optimization.py``, ported to TF2 eager ops) for
``schedule=learning_rate``; Composer's ``DecoupledAdamW``
and Loshchilov & Hutter's Algorithm 2 (from their equations) for
``schedule=lr / peak``; TF-Addons' (decay alone) for ``schedule=None``.
"""

from __future__ import annotations

import re

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
RTOL = {"float32": 1e-6, "bfloat16": 2**-8, "float64": 1e-14}


def _grads(dtype, shapes=SHAPES, steps=STEPS, seed=3):
  return _harness.grads(dtype, seed, steps, shapes)


def _params(dtype, shapes=SHAPES, seed=4):
  return _harness.normal_params(dtype, seed, shapes)


def _lr(n):
  """Warmup for 3 steps, linear decay to 0 at step 12, then 0 (NumPy or JAX n)."""
  return 0.01 * jnp.maximum(jnp.minimum((n + 1) / 3.0, (12.0 - n) / 9.0), 0.0)


def _wd(n):
  return 0.05 / (1.0 + n / 4.0)


def _np(schedule):
  """A JAX schedule as the reference sees it: a float of a Python int."""
  if schedule is None or not callable(schedule):
    return schedule
  return lambda n: float(schedule(n))


# --- The equation, step by step ----------------------------------------------


@pytest.mark.sweep(
  quick=[
    "float32-jit-both_schedules",
    "float32-jit-constant_coupling",
    "float32-jit-independent",
    "float32-jit-lr_coupling",
    "float32-jit-wd_schedule",
    "bfloat16-jit-both_schedules",
    "float64-jit-lr_coupling",
    "float32-eager-wd_schedule",
    "bfloat16-eager-independent",
    "float64-eager-constant_coupling",
  ]
)
@pytest.mark.parametrize(
  ("weight_decay", "schedule"),
  [(0.01, None), (0.01, 0.1), (_wd, _lr), (0.1, _lr), (_wd, None)],
  ids=[
    "independent",
    "constant_coupling",
    "both_schedules",
    "lr_coupling",
    "wd_schedule",
  ],
)
def test_each_step_matches_reference(float_dtype, maybe_jit, weight_decay, schedule):
  """u - weight_decay(n) * schedule(n) * p, and the rate recorded."""
  mask = {"w": True, "s": False}
  tx = optaxtra.add_decayed_weights_decoupled(
    weight_decay, schedule=schedule, mask=mask
  )
  params = _params(float_dtype)
  state = maybe_jit(tx.init)(params)
  fdt = jnp.result_type(float)
  rate = lambda n: ref.value(_np(weight_decay), n) * ref.value(_np(schedule), n)  # noqa: E731
  rtol_state = 1e-15 if fdt == jnp.float64 else 1e-6
  assert state.decay_rate.dtype == fdt
  np.testing.assert_allclose(float(state.decay_rate), rate(0), rtol=rtol_state)
  update = maybe_jit(tx.update)
  rtol = RTOL[float_dtype.name]
  for n, g in enumerate(_grads(float_dtype)):
    updates, state = update(g, state, params)
    want = ref.decoupled_decay(ref.tree_f64(g), ref.tree_f64(params), rate(n), mask)
    scale = ref.decoupled_decay(
      {k: np.abs(ref.f64(v)) for k, v in g.items()},
      {k: -np.abs(ref.f64(v)) for k, v in params.items()},
      rate(n),
      mask,
    )
    for k in SHAPES:
      assert updates[k].dtype == float_dtype
      _harness.assert_close(updates[k], want[k], rtol, scale[k], f"{n} {k}")
    np.testing.assert_array_equal(updates["s"], g["s"])  # unmasked: untouched
    assert int(state.count) == n + 1 and state.count.dtype == jnp.int32
    np.testing.assert_allclose(float(state.decay_rate), rate(n), rtol=rtol_state)
    params = optax.apply_updates(params, updates)


def test_float64_rate_is_float64(x64):
  """0.01 * 0.1 and the schedules' values are not rounded through float32."""
  for weight_decay, schedule in ((0.01, 0.1), (_wd, _lr)):
    tx = optaxtra.add_decayed_weights_decoupled(weight_decay, schedule=schedule)
    params = _params(jnp.float64)
    _, states, _ = _harness.run(tx, params, _grads(jnp.float64), jit=True)
    for n, s in enumerate(states[1:]):
      want = ref.value(_np(weight_decay), n) * ref.value(_np(schedule), n)
      assert s.decay_rate.dtype == jnp.float64
      np.testing.assert_allclose(float(s.decay_rate), want, rtol=1e-15)
      assert abs(float(s.decay_rate) - float(np.float32(want))) > 1e-12 * want


@pytest.mark.parametrize(
  "mask",
  [
    None,
    {"dense": {"kernel": True, "bias": False}, "norm": False},  # a prefix
    {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}},
    lambda p: jax.tree_util.tree_map_with_path(
      lambda path, x: "kernel" in jax.tree_util.keystr(path), p
    ),
  ],
  ids=["all", "prefix", "full", "callable"],
)
def test_masks(mask, maybe_jit):
  """Optax-style masks: a bool tree, a prefix of one, or a function of params."""
  params = {
    "dense": {"kernel": jnp.full((4, 5), 2.0), "bias": jnp.full((), 3.0)},
    "norm": {"scale": jnp.full((), 4.0)},
  }
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = optaxtra.add_decayed_weights_decoupled(0.5, mask=mask, schedule=None)
  updates, _ = maybe_jit(tx.update)(grads, tx.init(params), params)
  decayed = (
    {"dense/kernel"}
    if mask is not None
    else {"dense/kernel", "dense/bias", "norm/scale"}
  )
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    name = "/".join(str(k.key) for k in path)
    p = np.asarray(params[path[0].key][path[1].key])
    np.testing.assert_array_equal(u, -0.5 * p if name in decayed else 0 * p)


def test_zero_weight_decay_is_the_identity():
  params = _params(jnp.float32)
  tx = optaxtra.add_decayed_weights_decoupled(0.0, schedule=None)
  g = _grads(jnp.float32)[0]
  updates, state = tx.update(g, tx.init(params), params)
  for k in SHAPES:
    np.testing.assert_array_equal(updates[k], g[k])
  assert float(state.decay_rate) == 0.0


# --- Real systems: schedule=learning_rate -------------------------------------

TORCH_SHAPES = {"w": (4, 5), "b": (5,)}


# In float32, PyTorch, Keras and TF take ``1 - b2`` in Python's double (0.001)
# and optaxtra from float32 ``b2`` (1 - 0.99900001287 = 0.00099998713), as it
# must to give the same results under optax.inject_hyperparams, where ``b2``
# arrives as a float32 array: ``v`` differs by 1.3e-5 relative, a step by less
# than 1e-5 (Optax's and Keras' float32 ``1 - b2**t`` add as much), and the
# gaps add up along a trajectory. After n steps, float32 trajectories are held
# to 1e-6 of the params plus n * 2e-5 of a step (a step is ~lr).
STEP_RTOL32 = 2e-5


def _adamw_chain(lr, weight_decay, mask, *, schedule, **adam):
  return optax.chain(
    optaxtra.scale_by_adam(**adam),
    optaxtra.scale_by_learning_rate(lr),
    optaxtra.add_decayed_weights_decoupled(weight_decay, schedule=schedule, mask=mask),
  )


@pytest.mark.parametrize(
  ("dtype", "rtol", "step_rtol"),
  [("float32", 1e-6, STEP_RTOL32), ("float64", 1e-13, 1e-13)],
)
def test_torch_adamw_lambdalr_with_a_no_decay_group(
  dtype, rtol, step_rtol, request, torch
):
  """torch.optim.AdamW + LambdaLR, biases in a weight_decay=0 group."""
  if dtype == "float64":
    request.getfixturevalue("x64")
  base_lr, weight_decay = 0.01, 0.1

  def factor(n):  # LambdaLR's multiplier: warmup, then linear decay
    return jnp.minimum((n + 1) / 3.0, (12.0 - n) / 9.0)

  params = _params(jnp.dtype(dtype), TORCH_SHAPES)
  grads = _grads(jnp.dtype(dtype), TORCH_SHAPES)
  tdtype = getattr(torch, dtype)
  w = torch.tensor(np.asarray(params["w"]), dtype=tdtype)
  b = torch.tensor(np.asarray(params["b"]), dtype=tdtype)
  opt = torch.optim.AdamW(
    [
      {"params": [w], "weight_decay": weight_decay},
      {"params": [b], "weight_decay": 0.0},
    ],
    lr=base_lr,
    betas=(0.9, 0.999),
    eps=1e-8,
  )
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: float(factor(n)))

  lr = lambda n: base_lr * factor(n)  # noqa: E731
  tx = _adamw_chain(lr, weight_decay, {"w": True, "b": False}, schedule=lr)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for n, g in enumerate(grads):
    w.grad = torch.tensor(np.asarray(g["w"]), dtype=tdtype)
    b.grad = torch.tensor(np.asarray(g["b"]), dtype=tdtype)
    opt.step()
    sched.step()
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    atol = step_rtol * base_lr * (n + 1)
    _harness.assert_close(params["w"], w.numpy(), rtol, None, f"w {n}", atol=atol)
    _harness.assert_close(params["b"], b.numpy(), rtol, None, f"b {n}", atol=atol)
  assert not np.allclose(
    w.numpy(), np.asarray(_params(jnp.dtype(dtype), TORCH_SHAPES)["w"])
  )


def test_optax_adamw():
  """optax.adamw (decay added before the lr stage) is schedule=learning_rate."""
  lr = lambda n: 0.01 * jnp.minimum((n + 1) / 3.0, 1.0)  # noqa: E731
  mask = {"w": True, "s": False}
  params, grads = _params(jnp.float32), _grads(jnp.float32)
  _, _, p_ours = _harness.run(
    _adamw_chain(lr, 0.1, mask, schedule=lr), params, grads, jit=True, apply=True
  )
  _, _, p_theirs = _harness.run(
    optax.adamw(lr, weight_decay=0.1, mask=mask), params, grads, jit=True, apply=True
  )
  for n, (a, b) in enumerate(zip(p_ours, p_theirs, strict=True)):
    for k in SHAPES:
      # Optax's Adam carries float32 bias-correction noise of ~1e-5 of the
      # step (see test_adam), a step being ~lr.
      _harness.assert_close(
        a[k], b[k], 1e-6, None, f"{n} {k}", atol=STEP_RTOL32 * 0.01 * (n + 1)
      )


def test_keras_adamw(keras):
  """Keras 3 AdamW: decay lr(n) * wd * p, a PolynomialDecay schedule, an exclusion."""
  shapes = {"kernel": (4, 5), "bias": (5,)}
  params, grads = _params(jnp.float32, shapes), _grads(jnp.float32, shapes)
  schedule = keras.optimizers.schedules.PolynomialDecay(0.01, 10, 0.001)
  # Keras adds epsilon to the uncorrected sqrt(v); with epsilon=0 the two agree.
  opt = keras.optimizers.AdamW(
    learning_rate=schedule, weight_decay=0.1, beta_1=0.9, beta_2=0.999, epsilon=0.0
  )
  opt.exclude_from_weight_decay(var_names=["bias"])
  variables = {k: keras.Variable(np.asarray(v), name=k) for k, v in params.items()}

  def lr(n):
    return (0.01 - 0.001) * (1 - jnp.minimum(n, 10) / 10.0) + 0.001

  tx = _adamw_chain(lr, 0.1, {"kernel": True, "bias": False}, schedule=lr, eps=0.0)
  state = tx.init(params)
  for n, g in enumerate(grads):
    opt.apply_gradients([(np.asarray(g[k]), variables[k]) for k in shapes])
    updates, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, updates)
    for k in shapes:
      theirs = keras.ops.convert_to_numpy(variables[k])
      _harness.assert_close(
        params[k], theirs, 1e-6, None, f"{n} {k}", atol=STEP_RTOL32 * 0.01 * (n + 1)
      )


def _bert_optimizer(tf, variables, *, learning_rate, weight_decay_rate, exclude):
  """BERT's AdamWeightDecayOptimizer.apply_gradients, in TF2 eager ops."""
  slots = {
    name: (tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
    for name, v in variables.items()
  }
  beta_1, beta_2, epsilon = 0.9, 0.999, 1e-6

  def do_use_weight_decay(param_name):
    if not weight_decay_rate:
      return False
    for r in exclude:
      if re.search(r, param_name) is not None:
        return False
    return True

  def apply_gradients(grads_and_names):
    lr = learning_rate()
    for grad, param_name in grads_and_names:
      param = variables[param_name]
      m, v = slots[param_name]
      next_m = tf.multiply(beta_1, m) + tf.multiply(1.0 - beta_1, grad)
      next_v = tf.multiply(beta_2, v) + tf.multiply(1.0 - beta_2, tf.square(grad))
      update = next_m / (tf.sqrt(next_v) + epsilon)
      if do_use_weight_decay(param_name):
        update += weight_decay_rate * param
      update_with_lr = lr * update
      next_param = param - update_with_lr
      param.assign(next_param)
      m.assign(next_m)
      v.assign(next_v)

  return apply_gradients


def test_bert_adam_weight_decay_optimizer(tf):
  """BERT's optimizer: Adam without bias correction, decay lr * wd * p, its schedule."""
  shapes = {
    "layer_0/dense/kernel": (4, 5),
    "layer_0/dense/bias": (5,),
    "layer_0/LayerNorm/gamma": (5,),
    "layer_0/LayerNorm/beta": (5,),
  }
  exclude = ["LayerNorm", "layer_norm", "bias"]
  init_lr, num_train_steps, num_warmup_steps = 0.01, 12, 3
  params, grads = _params(jnp.float32, shapes), _grads(jnp.float32, shapes)

  # create_optimizer's learning rate, on a global step advanced after each update.
  global_step = tf.Variable(0, dtype=tf.int64)
  decayed = tf.compat.v1.train.polynomial_decay(
    tf.constant(init_lr), global_step, num_train_steps, end_learning_rate=0.0, power=1.0
  )

  def learning_rate():
    global_steps_float = tf.cast(tf.cast(global_step, tf.int32), tf.float32)
    warmup_percent_done = global_steps_float / float(num_warmup_steps)
    is_warmup = tf.cast(tf.cast(global_step, tf.int32) < num_warmup_steps, tf.float32)
    warm = init_lr * warmup_percent_done
    return (1.0 - is_warmup) * decayed() + is_warmup * warm

  variables = {k: tf.Variable(np.asarray(v)) for k, v in params.items()}
  apply_gradients = _bert_optimizer(
    tf, variables, learning_rate=learning_rate, weight_decay_rate=0.01, exclude=exclude
  )

  def lr(n):
    decay = init_lr * (1 - jnp.minimum(n, num_train_steps) / float(num_train_steps))
    return jnp.where(n < num_warmup_steps, init_lr * n / float(num_warmup_steps), decay)

  mask = {k: not any(re.search(r, k) for r in exclude) for k in shapes}
  tx = optax.chain(
    optaxtra.scale_by_adam(0.9, 0.999, 1e-6, bias_correction=False),
    optaxtra.scale_by_learning_rate(lr),
    optaxtra.add_decayed_weights_decoupled(0.01, schedule=lr, mask=mask),
  )
  state = tx.init(params)
  for n, g in enumerate(grads):
    lr_used = float(learning_rate())
    apply_gradients([(tf.constant(np.asarray(g[k])), k) for k in shapes])
    global_step.assign_add(1)
    updates, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, updates)
    for k in shapes:
      theirs = variables[k].numpy()
      # Without bias correction a step is up to (1 - b1) / sqrt(1 - b2) = 3.2 lr.
      atol = STEP_RTOL32 * 3.2 * init_lr * (n + 1)
      _harness.assert_close(params[k], theirs, 1e-6, None, f"{n} {k}", atol=atol)
    np.testing.assert_allclose(float(state[1].learning_rate), lr_used, rtol=1e-6)
    assert float(state[2].decay_rate) == pytest.approx(0.01 * lr_used, rel=1e-6)


# --- Real systems from their equations: schedule=lr/peak and schedule=None ---


@pytest.mark.parametrize("jit", [False, True])
def test_composer_and_loshchilov_hutter(x64, jit):
  """schedule=lr(t)/peak is Composer's DecoupledAdamW and L&H's Algorithm 2."""
  peak, weight_decay = 0.01, 0.05
  mask = {"w": True, "s": False}
  lr = lambda n: peak * jnp.minimum((n + 1) / 3.0, (12.0 - n) / 9.0)  # noqa: E731
  params, grads = _params(jnp.float64), _grads(jnp.float64)
  tx = _adamw_chain(lr, weight_decay, mask, schedule=lambda n: lr(n) / peak)
  _, states, trajectory = _harness.run(tx, params, grads, jit=jit, apply=True)
  p0, g64 = ref.tree_f64(params), [ref.tree_f64(g) for g in grads]
  composer = ref.composer_decoupled_adamw(
    p0, g64, lr=_np(lr), initial_lr=peak, weight_decay=weight_decay, decay_mask=mask
  )
  paper = ref.loshchilov_hutter_adamw(
    p0,
    g64,
    alpha=peak,
    eta=lambda n: float(lr(n)) / peak,
    weight_decay=weight_decay,
    decay_mask=mask,
  )
  for n, (p, c, h, s) in enumerate(
    zip(trajectory[1:], composer, paper, states[1:], strict=True)
  ):
    for k in SHAPES:
      _harness.assert_close(p[k], c[k], 1e-13, np.abs(c[k]) + peak, f"composer {n} {k}")
      _harness.assert_close(p[k], h[k], 1e-13, np.abs(h[k]) + peak, f"paper {n} {k}")
    rate = weight_decay * float(lr(n)) / peak
    np.testing.assert_allclose(float(s[2].decay_rate), rate, rtol=1e-15)


def test_tf_addons_independent_coupling(x64):
  """schedule=None: p <- p - lr(n) * adam - wd * p (TF-Addons' AdamW)."""
  lr = lambda n: 0.01 / (1.0 + n)  # noqa: E731
  params, grads = _params(jnp.float64), _grads(jnp.float64)
  tx = _adamw_chain(lr, 1e-3, None, schedule=None)
  _, _, trajectory = _harness.run(tx, params, grads, jit=True, apply=True)
  p = ref.tree_f64(params)
  for n, rec in enumerate(ref.adam([ref.tree_f64(g) for g in grads])):
    p = {k: p[k] - float(lr(n)) * rec["updates"][k] - 1e-3 * p[k] for k in p}
    for k in SHAPES:
      _harness.assert_close(
        trajectory[n + 1][k], p[k], 1e-13, np.abs(p[k]) + 0.01, f"{n} {k}"
      )


# --- Contract, saturation, inject_hyperparams --------------------------------


def test_contract(float_dtype):
  tx = optaxtra.add_decayed_weights_decoupled(
    _wd, schedule=_lr, mask={"w": True, "s": False}
  )
  _harness.check_contract(tx, _params(float_dtype), _grads(float_dtype))


def test_count_saturates():
  tx = optaxtra.add_decayed_weights_decoupled(_wd, schedule=_lr)
  _harness.check_count_saturates(tx, _params(jnp.float32), _grads(jnp.float32))


def test_inject_hyperparams():
  params, grads = _params(jnp.float32), _grads(jnp.float32, steps=3)
  mask = {"w": True, "s": False}
  _harness.check_inject(
    optaxtra.add_decayed_weights_decoupled,
    {"weight_decay": 0.01, "schedule": 0.5, "mask": mask},
    params,
    grads,
    changed={"weight_decay": 0.2, "schedule": 0.25},
  )
  # Schedules are evaluated by inject_hyperparams itself; a mask function
  # is not a schedule, so it is named in static_args.
  _harness.check_inject(
    optaxtra.add_decayed_weights_decoupled,
    {"weight_decay": _wd, "schedule": _lr, "mask": lambda p: mask},
    params,
    grads,
    static_args="mask",
  )


def test_inject_hyperparams_float64(x64):
  _harness.check_inject(
    optaxtra.add_decayed_weights_decoupled,
    {"weight_decay": 0.01, "schedule": 0.1},
    _params(jnp.float64),
    _grads(jnp.float64, steps=3),
  )


# --- Errors ------------------------------------------------------------------


def _make(*args, **kwargs):
  kwargs.setdefault("schedule", None)
  return lambda: optaxtra.add_decayed_weights_decoupled(*args, **kwargs)


def _init(*args, **kwargs):
  kwargs.setdefault("schedule", None)
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  return lambda: optaxtra.add_decayed_weights_decoupled(*args, **kwargs).init(params)


def test_the_coupling_is_never_implicit():
  # The natural port of optax.adamw(weight_decay=0.1) that forgets schedule=
  # would remove 10% of every weight per step: refused, with the table.
  with pytest.raises(TypeError, match=r"pass schedule=.*schedule=learning_rate"):
    optaxtra.add_decayed_weights_decoupled(0.1)
  with pytest.raises(TypeError, match=r"schedule=None for TF-Addons"):
    optaxtra.add_decayed_weights_decoupled(0.1, mask=None)


def test_weight_decay_by_path():
  params = {"w": jnp.ones(2), "b": jnp.ones(2)}
  tx = optaxtra.add_decayed_weights_decoupled(
    optaxtra.by_path({"^b$": 0.0}, default=0.1), schedule=0.5
  )
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  np.testing.assert_array_equal(updates["b"], 0.0)
  np.testing.assert_array_equal(updates["w"], -np.float32(0.1) * np.float32(0.5))
  assert set(state.decay_rate) == {"[^b$]", "[default]"}
  assert float(state.weight_decay["[default]"]) == np.float32(0.1)
  with pytest.raises(ValueError, match=r"weight_decay rule '\^x' matches no"):
    optaxtra.add_decayed_weights_decoupled(
      optaxtra.by_path({"^x": 0.0}, default=0.1), schedule=None
    ).init(params)


@pytest.mark.parametrize(
  ("make", "error", "match"),
  [
    (_make(-0.01), ValueError, r"weight_decay must be in \[0, inf\), got -0.01"),
    (_make(0.01, schedule=-1.0), ValueError, r"schedule must be in \[0, inf\)"),
    (_make("0.01"), TypeError, "weight_decay must be a real scalar; got the string"),
    (_make(None), TypeError, "weight_decay must be a number"),
    (_make(0.01, schedule=jnp.ones(3)), TypeError, "schedule must be a real scalar"),
    (
      _init(lambda n: -0.1),
      ValueError,
      r"weight_decay is -0.1 at step 0; it must be in \[0, inf\)",
    ),
    (
      _init(0.1, schedule=lambda n: jnp.ones(2)),
      ValueError,
      r"must give a scalar, got shape \(2,\)",
    ),
    (_init(0.1, mask={"w": True}), ValueError, "mask does not fit the params' tree"),
    (_init(0.1, mask={"w": True, "x": False}), ValueError, "mask does not fit"),
    (_init(0.1, mask={"w": 1, "b": 0}), TypeError, "mask leaves must be True or False"),
    (
      _init(0.1, mask={"w": jnp.ones((2, 3), bool), "b": True}),
      TypeError,
      "A per-entry mask is not supported",
    ),
    (_init(0.1, mask=lambda p: {"w": True}), ValueError, "mask does not fit"),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("jit", [False, True])
def test_bad_updates(jit):
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  tx = optaxtra.add_decayed_weights_decoupled(0.1, schedule=None)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  grads = jax.tree.map(jnp.zeros_like, params)
  with pytest.raises(
    ValueError, match=r"needs the params to decay them.*tx.update\(grads"
  ):
    update(grads, state)
  with pytest.raises(
    ValueError, match=r"update for 'b' has shape \(1,\) but 'b' in the params"
  ):
    update({"w": grads["w"], "b": jnp.zeros(1)}, state, params)
  with pytest.raises(ValueError, match=r"tree does not match the params"):
    update({"w": grads["w"]}, state, params)
  with pytest.raises(TypeError, match="'b' has dtype int32"):
    update({"w": grads["w"], "b": jnp.zeros(3, jnp.int32)}, state, params)


def test_traced_mask_is_refused():
  """A mask computed from the params' values cannot be known at trace time."""
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  tx = optaxtra.add_decayed_weights_decoupled(
    0.1,
    mask=lambda p: jax.tree.map(lambda x: jnp.all(x > 0), p),
    schedule=None,
  )
  state = tx.init(params)  # concrete params: fine
  grads = jax.tree.map(jnp.zeros_like, params)
  with pytest.raises(TypeError, match="mask leaves must be known at trace time"):
    jax.jit(tx.update)(grads, state, params)
