"""scale_by_learning_rate and scale_by_schedule: values applied and recorded."""

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
STEPS = 10


def _grads(dtype, steps=STEPS):
  return _harness.grads(dtype, 2, steps)


def _params(dtype):
  return {k: jnp.zeros(s, dtype) for k, s in SHAPES.items()}


def _decay(n):
  """A schedule written once for both NumPy ints and JAX int32 counts."""
  return 0.1 * 0.9**n / (1 + n / 7.0)  # n / 7 would be float32 for int32 n


# float32 (bfloat16 computes in float32): a few ulps of the schedule's own
# float32 arithmetic, then one rounding of the product.
RTOL = {"float32": 1e-6, "bfloat16": 2**-8, "float64": 1e-15}


@pytest.mark.sweep(
  quick=[
    "float32-jit-constant-False",
    "float32-jit-constant-True",
    "float32-jit-schedule-False",
    "float32-jit-schedule-True",
    "bfloat16-jit-schedule-True",
    "float64-jit-constant-False",
    "float32-eager-schedule-False",
    "bfloat16-eager-constant-True",
    "float64-eager-schedule-True",
  ]
)
@pytest.mark.parametrize("flip_sign", [True, False])
@pytest.mark.parametrize("learning_rate", [0.1, _decay], ids=["constant", "schedule"])
def test_updates_and_recorded_value(float_dtype, maybe_jit, learning_rate, flip_sign):
  """The n-th update is -lr(n) * g; the state holds the value last used."""
  tx = optaxtra.scale_by_learning_rate(learning_rate, flip_sign=flip_sign)
  grads = _grads(float_dtype)
  state = maybe_jit(tx.init)(_params(float_dtype))
  lr = lambda n: ref.value(learning_rate, n)  # noqa: E731
  fdt = jnp.result_type(float)
  # Before the first update: the value the first update will use.
  assert state.learning_rate.dtype == fdt
  np.testing.assert_allclose(float(state.learning_rate), lr(0), rtol=RTOL[fdt.name])
  update = maybe_jit(tx.update)
  sign = -1.0 if flip_sign else 1.0
  for n, g in enumerate(grads):
    updates, state = update(g, state)
    for k in SHAPES:
      assert updates[k].dtype == float_dtype
      want = sign * lr(n) * ref.f64(g[k])
      _harness.assert_close(updates[k], want, RTOL[float_dtype.name], None, f"{n} {k}")
    assert state.count.dtype == jnp.int32 and int(state.count) == n + 1
    assert state.learning_rate.dtype == fdt
    np.testing.assert_allclose(float(state.learning_rate), lr(n), rtol=RTOL[fdt.name])


def test_float64_values_are_float64(x64):
  """lr=0.1 and a schedule's float64 values reach the updates unrounded."""
  for learning_rate in (0.1, _decay):
    tx = optaxtra.scale_by_learning_rate(learning_rate)
    grads = _grads(jnp.float64)
    updates, states, _ = _harness.run(tx, _params(jnp.float64), grads, jit=True)
    for n, (u, s, g) in enumerate(zip(updates, states[1:], grads, strict=True)):
      lr = ref.value(learning_rate, n)
      assert s.learning_rate.dtype == jnp.float64
      np.testing.assert_allclose(float(s.learning_rate), lr, rtol=1e-15)
      assert float(s.learning_rate) != float(np.float32(lr))
      _harness.assert_close(u["w"], -lr * ref.f64(g["w"]), 1e-15)


@pytest.mark.sweep(quick=["float32-constant", "bfloat16-schedule", "float64-schedule"])
@pytest.mark.parametrize("learning_rate", [0.1, _decay], ids=["constant", "schedule"])
def test_matches_optax(float_dtype, learning_rate):
  """Optax's scale_by_learning_rate gives the same updates."""
  grads, params = _grads(float_dtype), _params(float_dtype)
  ours, _, _ = _harness.run(
    optaxtra.scale_by_learning_rate(learning_rate), params, grads, jit=True
  )
  theirs, _, _ = _harness.run(
    optax.scale_by_learning_rate(learning_rate), params, grads, jit=True
  )
  # Optax multiplies a bfloat16 gradient by the learning rate in bfloat16
  # (rounding 0.1 to 0.10009765625 first); optaxtra rounds once, from float32.
  rtol = 2**-7 if float_dtype == jnp.bfloat16 else RTOL[float_dtype.name]
  for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
    for k in SHAPES:
      _harness.assert_close(a[k], b[k], rtol, None, f"{n} {k}")


def test_scale_by_schedule(float_dtype, maybe_jit):
  """As optax.scale_by_schedule (sign kept), and step_size records the value."""
  schedule = lambda n: 0.5 - 0.1 * n  # noqa: E731  (goes negative: allowed here)
  tx = optaxtra.scale_by_schedule(schedule)
  grads, params = _grads(float_dtype), _params(float_dtype)
  state = tx.init(params)
  assert state.step_size.dtype == jnp.result_type(float)
  np.testing.assert_allclose(float(state.step_size), 0.5, rtol=1e-7)
  update = maybe_jit(tx.update)
  theirs = optax.scale_by_schedule(schedule)
  their_state = theirs.init(params)
  for n, g in enumerate(grads):
    updates, state = update(g, state)
    their_updates, their_state = theirs.update(g, their_state)
    for k in SHAPES:
      assert updates[k].dtype == float_dtype
      want = (0.5 - 0.1 * n) * ref.f64(g[k])
      # 0.5 - 0.1 * n cancels at n = 5: errors scale with its terms.
      scale = (0.5 + 0.1 * n) * np.abs(ref.f64(g[k]))
      rtol = RTOL[float_dtype.name]
      _harness.assert_close(updates[k], want, rtol, scale, f"{n} {k}")
      rtol = 2**-7 if float_dtype == jnp.bfloat16 else rtol  # see test_matches_optax
      _harness.assert_close(updates[k], their_updates[k], rtol, scale, f"{n} {k}")
    np.testing.assert_allclose(
      float(state.step_size), 0.5 - 0.1 * n, rtol=1e-6, atol=1e-7
    )


def test_integer_schedule_values_become_floats():
  tx = optaxtra.scale_by_learning_rate(lambda n: 2)
  state = tx.init(jnp.zeros(2))
  assert state.learning_rate.dtype == jnp.float32
  updates, state = tx.update(jnp.array([0.5, 1.0]), state)
  np.testing.assert_array_equal(updates, [-1.0, -2.0])
  assert updates.dtype == jnp.float32 and state.learning_rate.dtype == jnp.float32


@pytest.mark.sweep(quick=["float32-schedule", "bfloat16-constant", "float64-schedule"])
@pytest.mark.parametrize("learning_rate", [0.1, _decay], ids=["constant", "schedule"])
def test_contract(float_dtype, learning_rate):
  tx = optaxtra.scale_by_learning_rate(learning_rate)
  _harness.check_contract(tx, _params(float_dtype), _grads(float_dtype))


def test_contract_scale_by_schedule():
  tx = optaxtra.scale_by_schedule(_decay)
  _harness.check_contract(tx, _params(jnp.float32), _grads(jnp.float32))


def test_count_saturates():
  for tx in (
    optaxtra.scale_by_learning_rate(_decay),
    optaxtra.scale_by_schedule(_decay),
  ):
    _harness.check_count_saturates(tx, _params(jnp.float32), _grads(jnp.float32))


def test_inject_hyperparams():
  """learning_rate traced under jit, or scheduled by inject_hyperparams itself."""
  params, grads = _params(jnp.float32), _grads(jnp.float32, steps=3)
  _harness.check_inject(
    optaxtra.scale_by_learning_rate,
    {"learning_rate": 0.1},
    params,
    grads,
    changed={"learning_rate": 0.02},
  )
  _harness.check_inject(
    optaxtra.scale_by_learning_rate, {"learning_rate": _decay}, params, grads
  )
  _harness.check_inject(
    optaxtra.scale_by_learning_rate,
    {"learning_rate": 0.1, "flip_sign": False},
    params,
    grads,
  )
  # A function argument that is not a hyperparameter schedule: static_args.
  _harness.check_inject(
    optaxtra.scale_by_schedule,
    {"step_size_fn": _decay},
    params,
    grads,
    static_args="step_size_fn",
  )


def test_inject_hyperparams_float64(x64):
  _harness.check_inject(
    optaxtra.scale_by_learning_rate,
    {"learning_rate": 0.1},
    _params(jnp.float64),
    _grads(jnp.float64, steps=3),
  )


@pytest.mark.parametrize(
  ("make", "error", "match"),
  [
    (
      lambda: optaxtra.scale_by_learning_rate(-0.1),
      ValueError,
      r"learning_rate must be in \[0, inf\), got -0.1.*flip_sign=False",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate("1e-3"),
      TypeError,
      "learning_rate must be a real scalar; got the string",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate(None),
      TypeError,
      "learning_rate must be a number",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate(jnp.ones(2)),
      TypeError,
      r"learning_rate must be a real scalar.*shape \(2,\)",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate(0.1, flip_sign=0),
      TypeError,
      "flip_sign must be True or False",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate(lambda n: -0.1).init(jnp.zeros(1)),
      ValueError,
      r"learning_rate is -0.1 at step 0; it must be in \[0, inf\)",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate(lambda n: jnp.ones(2)).init(jnp.zeros(1)),
      ValueError,
      r"learning_rate must give a scalar, got shape \(2,\)",
    ),
    (
      lambda: optaxtra.scale_by_schedule(0.1),
      TypeError,
      "step_size_fn must be a function of the step count",
    ),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("jit", [False, True])
def test_integer_updates_are_refused(jit):
  """An int gradient would be truncated to whole numbers after scaling."""
  for tx in (optaxtra.scale_by_learning_rate(0.1), optaxtra.scale_by_schedule(_decay)):
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(TypeError, match="'w' has dtype int32"):
      update({"w": jnp.ones(3, jnp.int32)}, tx.init(None))
