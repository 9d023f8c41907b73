"""average_params: the formula step by step, TF, PyTorch and Keras live, in use.

The formula is checked against an independent float64 NumPy evaluation of
``a_t = d_t * a_{t-1} + (1 - d_t) * p_t`` over the iterates ``p_t`` that a
training run produced. TensorFlow's ``tf.train.ExponentialMovingAverage``
(with and without ``num_updates``), PyTorch's ``AveragedModel`` (EMA and the
uniform default) and Keras's ``use_ema`` run live on the same iterates.

Error bounds. A float32 average and the float64 formula with the same ``d``
differ by the roundings of each step: the difference ``p - a``, the product by
``1 - d`` (or ``d``) and the sum (TensorFlow's ``a - (a - p) * (1 - d)``,
PyTorch's ``lerp`` and Keras's ``d * a + (1 - d) * p`` all round at most three
terms, each of size at most ``|a_{t-1}|``, ``|a_t|`` or ``|p_t|``), and a
difference made earlier is carried on multiplied by ``d_t`` (the average of
``a + e`` is ``d * (a + e) + (1 - d) * p``). So after ``t`` steps the gap is
at most ``B_t = d_t * B_{t-1} + eps * (|a_{t-1}| + |a_t| + |p_t|)``, entry by
entry, plus ``eps * |p_t - a_{t-1}|`` for a ``d_t`` rounded differently (a
schedule computed in float32 in another order). Two float32 implementations
are then within ``2 * B_t`` of each other, plus the exact float64 effect of
their using different float32 weights (PyTorch's ``1 - d`` is rounded from
``1 - 0.999`` in double precision, optaxtra's and TensorFlow's is ``1 -
float32(0.999)``; PyTorch's uniform weight is ``float32(1 / (n + 1))``,
optaxtra's ``1 - float32(n / (n + 1))``). Every convention mistake (the wrong
start, a count off by one) moves the average by a good share of ``|p_t -
p_0|``, a thousand times more than ``B_t`` here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need
from test_sharding import NUM_DEVICES, collectives, run_case, xla_flags

import optaxtra
from optaxtra import masks

SHAPES = {"w": (4, 5), "s": ()}
EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-23, "float64": 2.0**-52}
LR = 0.1
# jax < 0.4.33: XLA lets some bfloat16 iterates reach the average unrounded
# under jax.jit (documented in average_params): within a bfloat16 ulp of the
# params, not the exact average of the stored params that these tests demand.
_OLD_JAX = tuple(int(x) for x in jax.__version__.split(".")[:3]) < (0, 4, 33)
_OLD_JAX_BF16 = "jax < 0.4.33 keeps some bfloat16 iterates unrounded under jit"


# --- The float64 reference ----------------------------------------------------


def reference(
  p0: np.ndarray,
  iterates: Sequence[np.ndarray],
  decays: Sequence[float],
  eps: float,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """``a_t = d_t * a_{t-1} + (1 - d_t) * p_t`` in float64, and the bound ``B_t``.

  ``a_0 = p0``; returns ``[a_1, ...]`` and the rounding bounds of the module
  docstring (zero at ``a_0``, a copy).
  """
  a = np.asarray(p0, np.float64)
  bound = np.zeros_like(a)
  averages, bounds = [], []
  for p, d in zip(iterates, decays, strict=True):
    p = np.asarray(p, np.float64)
    new = d * a + (1 - d) * p
    bound = d * bound + eps * (np.abs(a) + np.abs(new) + np.abs(p) + np.abs(p - a))
    a = new
    averages.append(a)
    bounds.append(bound)
  return averages, bounds


def _f64(x: Any) -> np.ndarray:
  return np.asarray(np.asarray(x).astype(np.float64))


def assert_within(actual: Any, desired: Any, bound: Any, what: str) -> None:
  a, d = _f64(actual), _f64(desired)
  assert a.shape == d.shape, f"{what}: shape {a.shape} != {d.shape}"
  gap = np.abs(a - d)
  bad = ~(gap <= bound)
  if np.any(bad):
    i = np.unravel_index(np.argmax(np.where(bad, gap - bound, -np.inf)), a.shape)
    raise AssertionError(
      f"{what}: {int(np.sum(bad))} of {a.size} entries off; worst at {i}: "
      f"{a[i]!r} vs {d[i]!r}, gap {gap[i]:.3g}, allowed "
      f"{np.broadcast_to(bound, a.shape)[i]:.3g}"
    )


def _grads(dtype: Any, steps: int, shapes: Any = None, seed: int = 1) -> list[Any]:
  rng = np.random.default_rng(seed)
  shapes = SHAPES if shapes is None else shapes
  return [
    {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
    for _ in range(steps)
  ]


def _params(dtype: Any, shapes: Any = None, seed: int = 0) -> dict[str, jax.Array]:
  return _harness.normal_params(dtype, seed, SHAPES if shapes is None else shapes)


def _train(
  decay: Any, params: Any, grads: Sequence[Any], *, jit: bool = True, **kwargs: Any
) -> tuple[list[Any], list[Any]]:
  """SGD followed by the average: the iterates ``p_1..p_T`` and the states."""
  tx = optax.chain(optax.sgd(LR), optaxtra.average_params(decay, **kwargs))
  _, states, trajectory = _harness.run(tx, params, grads, jit=jit, apply=True)
  return trajectory[1:], [s[1] for s in states]


# The decays of the step-by-step test: (decay given, the float64 formula of d_t).
DECAYS: dict[str, tuple[Any, Callable[[int], float]]] = {
  "float": (0.95, lambda n: 0.95),
  "schedule": (lambda n: 0.99 - 0.5 / (n + 1.0), lambda n: 0.99 - 0.5 / (n + 1.0)),
  "ema_warmup": (optaxtra.ema_warmup(0.999), lambda n: min(0.999, (2 + n) / (11 + n))),
  "from_first_update": (
    optaxtra.ema_from_first_update(0.9),
    lambda n: 0.0 if n == 0 else 0.9,
  ),
  "polyak": (optaxtra.polyak(), lambda n: n / (n + 1)),
}


def _rounded(d: float, dtype: Any) -> float:
  """``d`` as the average's precision holds it (float32 for narrower params)."""
  return float(np.asarray(d, np.promote_types(np.dtype(dtype), np.float32)))


# --- The formula, step by step -------------------------------------------------


@pytest.mark.sweep(  # each decay once, each dtype and eager/jit at least once
  quick=[
    "float32-jit-ema_warmup",
    "bfloat16-jit-schedule",
    "float32-eager-polyak",
    "bfloat16-eager-float",
    "float64-jit-from_first_update",
  ]
)
@pytest.mark.parametrize("name", sorted(DECAYS))
def test_each_step_matches_the_float64_reference(name, float_dtype, maybe_jit):
  if _OLD_JAX and float_dtype == jnp.bfloat16 and maybe_jit is jax.jit:
    pytest.xfail(_OLD_JAX_BF16)
  decay, formula = DECAYS[name]
  steps = 20
  params = _params(float_dtype)
  grads = _grads(float_dtype, steps)
  tx = optax.chain(optax.sgd(LR), optaxtra.average_params(decay))
  state = maybe_jit(tx.init)(params)
  update = maybe_jit(tx.update)
  p0 = {k: _f64(v) for k, v in params.items()}
  fdt = jnp.result_type(float)
  assert state[1].decay.dtype == fdt and state[1].count.dtype == jnp.int32
  np.testing.assert_allclose(float(state[1].decay), formula(0), rtol=1e-6)
  for k in SHAPES:  # a_0: the params, copied (float32 for bfloat16)
    avg = state[1].average[k]
    assert avg.dtype == jnp.promote_types(float_dtype, jnp.float32)
    np.testing.assert_array_equal(_f64(avg), p0[k])
  # The iterates are the params as stored: for bfloat16 under jax.jit this
  # needs the average to round p + u itself (XLA may keep it in float32).
  iterates, decays = [], []
  eps = EPS[float_dtype.name]
  sgd = optax.sgd(LR)
  sgd_state = sgd.init(params)
  for n, g in enumerate(grads):
    updates, state = update(g, state, params)
    sgd_updates, sgd_state = sgd.update(g, sgd_state, params)
    for k in SHAPES:  # the updates pass unchanged: SGD's own
      np.testing.assert_array_equal(updates[k], sgd_updates[k])
    params = optax.apply_updates(params, updates)
    iterates.append(params)
    decays.append(_rounded(formula(n), float_dtype))
    assert int(state[1].count) == n + 1
    rtol = 1e-14 if fdt == jnp.float64 else 1e-6
    np.testing.assert_allclose(float(state[1].decay), formula(n), rtol=rtol)
    for k in SHAPES:
      want, bound = reference(p0[k], [_f64(p[k]) for p in iterates], decays, eps)
      assert_within(state[1].average[k], want[-1], bound[-1], f"{name} {n} {k}")
  # The trajectory moved, so the check above is not of a constant.
  assert np.max(np.abs(_f64(params["w"]) - p0["w"])) > 0.5


@pytest.mark.xfail(_OLD_JAX, reason=_OLD_JAX_BF16, strict=True)
def test_bfloat16_params_are_averaged_within_bfloat16_rounding():
  """The float32 average of bfloat16 iterates, read back as bfloat16, is the
  float64 average rounded once; a bfloat16 average (dtype=jnp.bfloat16) stalls:
  ``0.01 * (p - a)`` is below half a bfloat16 ulp of ``a`` for most steps."""
  steps, decay = 300, 0.99
  shapes = {"w": (64,)}
  params = _params(jnp.bfloat16, shapes)
  grads = [
    jax.tree.map(lambda g: 0.1 * g, g) for g in _grads(jnp.bfloat16, steps, shapes)
  ]
  # A drift, so that the average has somewhere to go.
  grads = [{"w": g["w"] - jnp.bfloat16(0.05)} for g in grads]
  iterates, states = _train(decay, params, grads)
  want, bound = reference(
    _f64(params["w"]),
    [_f64(p["w"]) for p in iterates],
    [_rounded(decay, "bfloat16")] * steps,
    EPS["bfloat16"],
  )
  half_ulp = np.abs(want[-1]) * 2.0**-8  # 8 significant bits: unit roundoff 2**-8
  got = optaxtra.averaged_params(states[-1], iterates[-1])["w"]
  assert got.dtype == jnp.bfloat16
  assert_within(got, want[-1], half_ulp + bound[-1], "bfloat16 read back")
  assert_within(states[-1].average["w"], want[-1], bound[-1], "float32 average")
  # The same in bfloat16 storage goes wrong by many bfloat16 ulps.
  _, narrow = _train(decay, params, grads, dtype=jnp.bfloat16)
  off = np.max(np.abs(_f64(narrow[-1].average["w"]) - want[-1]) / (2 * half_ulp))
  assert off > 10, off


def test_float16_params_are_averaged_in_float32():
  params = _params(jnp.float16, {"w": (8,)})
  grads = _grads(jnp.float16, 10, {"w": (8,)})
  iterates, states = _train(0.9, params, grads)
  assert states[-1].average["w"].dtype == jnp.float32
  want, bound = reference(
    _f64(params["w"]),
    [_f64(p["w"]) for p in iterates],
    [_rounded(0.9, "float16")] * 10,
    EPS["float32"],
  )
  assert_within(states[-1].average["w"], want[-1], bound[-1], "float16")


def test_float64_params_are_averaged_in_float64(x64):
  params = _params(jnp.float64)
  iterates, states = _train(0.999, params, _grads(jnp.float64, 5))
  assert states[-1].average["w"].dtype == jnp.float64
  assert states[-1].decay.dtype == jnp.float64 and float(states[-1].decay) == 0.999
  want, bound = reference(
    _f64(params["w"]), [_f64(p["w"]) for p in iterates], [0.999] * 5, EPS["float64"]
  )
  assert_within(states[-1].average["w"], want[-1], bound[-1], "float64")


def test_complex_params_get_a_complex_average():
  params = {"z": jnp.asarray([1 + 2j, -1j], jnp.complex64)}
  grads = [{"z": jnp.asarray([1 - 1j, 2 + 0j], jnp.complex64)}] * 3
  iterates, states = _train(0.5, params, grads)
  a = np.asarray(params["z"], np.complex128)
  for p in iterates:
    a = 0.5 * a + 0.5 * np.asarray(p["z"], np.complex128)
  assert states[-1].average["z"].dtype == jnp.complex64
  np.testing.assert_allclose(states[-1].average["z"], a, rtol=1e-6)
  with pytest.raises(TypeError, match=r"'z'.*complex"):
    optaxtra.average_params(dtype=jnp.float32).init(params)


def test_decay_zero_copies_the_params_exactly():
  # lerp's p - d * (p - a) gives p itself for d = 0, whatever a is.
  params = {"w": jnp.asarray([1e30, -3.0, 7.25e-20])}
  iterates, states = _train(0.0, params, _grads(jnp.float32, 3, {"w": (3,)}))
  for p, s in zip(iterates, states[1:], strict=True):
    np.testing.assert_array_equal(s.average["w"], p["w"])


# --- TensorFlow, PyTorch, Keras, live -------------------------------------------

LIVE_STEPS = 150
# B_t bounds each gap rigorously but grows with the steps (to ~300 ulps here:
# worst cases that never line up); the roundings of different steps have
# unrelated signs, and the gaps measured stay below 4 ulps of the largest
# |p_t|, once the weights' own float64 effect is taken out. Held to 8.
MEASURED_ULPS = 8


def _live_run(decay, steps=LIVE_STEPS, seed=0):
  """p_0, the iterates, optaxtra's averages and the decays its state recorded."""
  params = _params(jnp.float32, {"w": (4, 5)}, seed=seed)
  iterates, states = _train(decay, params, _grads(jnp.float32, steps, {"w": (4, 5)}))
  return (
    _f64(params["w"]),
    [np.asarray(p["w"]) for p in iterates],
    [np.asarray(s.average["w"]) for s in states[1:]],
    [float(s.decay) for s in states[1:]],
  )


def _check_live(ours, theirs, p0, iterates, d_ours, d_theirs, what):
  """Each against the float64 formula with its own weights; one against the
  other within both bounds and the weights' exact float64 effect.

  Returns the largest gap between the two and the largest part of it that
  the weights do not explain, in float32 ulps of the largest ``|p_t|``.
  """
  want_ours, bound = reference(p0, iterates, d_ours, EPS["float32"])
  want_theirs, bound_theirs = reference(p0, iterates, d_theirs, EPS["float32"])
  gap = rounding = 0.0
  for n in range(len(iterates)):
    assert_within(ours[n], want_ours[n], bound[n], f"{what}: optaxtra, step {n}")
    assert_within(
      theirs[n], want_theirs[n], bound_theirs[n], f"{what}: theirs, step {n}"
    )
    weights = np.abs(want_ours[n] - want_theirs[n])
    assert_within(
      ours[n], theirs[n], bound[n] + bound_theirs[n] + weights, f"{what}, step {n}"
    )
    diff = np.abs(_f64(ours[n]) - _f64(theirs[n]))
    gap = max(gap, float(np.max(diff)))
    rounding = max(rounding, float(np.max(diff - weights)))
  ulp = EPS["float32"] * max(float(np.max(np.abs(p))) for p in iterates)
  return gap / ulp, rounding / ulp


@pytest.mark.parametrize("num_updates", [False, True], ids=["plain", "num_updates"])
def test_tf_exponential_moving_average(num_updates, tf):
  decay = 0.999 if num_updates else 0.99
  given = optaxtra.ema_warmup(decay) if num_updates else decay
  p0, iterates, ours, ours_d = _live_run(given)
  var = tf.Variable(p0.astype(np.float32))
  step = tf.Variable(0, dtype=tf.int64)
  ema = tf.train.ExponentialMovingAverage(
    decay, num_updates=step if num_updates else None
  )
  ema.apply([var])  # at init, as TF's documentation does: the shadow starts at var
  theirs, d_tf = [], []
  for n, p in enumerate(iterates):
    var.assign(p)
    step.assign_add(1)  # the optimizer's step counter, after its step
    ema.apply([var])
    theirs.append(ema.average(var).numpy())
    d = np.float32(decay)
    if num_updates:  # TF's float32 min(decay, (1 + n) / (10 + n))
      k = np.float32(n + 1)
      d = min(d, (np.float32(1) + k) / (np.float32(10) + k))
    d_tf.append(float(d))
  assert ours_d == d_tf  # the same float32 decays, step by step
  gap, rounding = _check_live(ours, theirs, p0, iterates, ours_d, d_tf, "tf")
  assert gap == rounding < MEASURED_ULPS, gap


@pytest.mark.parametrize("kind", ["ema_0.99", "ema_0.999", "uniform"])
def test_torch_averaged_model(kind, torch):
  swa_utils = torch.optim.swa_utils
  if kind == "uniform":
    given, kwargs = optaxtra.polyak(), {}
  else:
    decay = float(kind.split("_")[1])
    given = optaxtra.ema_from_first_update(decay)
    kwargs = {"multi_avg_fn": swa_utils.get_ema_multi_avg_fn(decay)}
  p0, iterates, ours, d_ours = _live_run(given)
  model = torch.nn.Linear(5, 4, bias=False)
  with torch.no_grad():
    model.weight.copy_(torch.tensor(p0.astype(np.float32)))
  averaged = swa_utils.AveragedModel(model, **kwargs)
  theirs = []
  for p in iterates:
    with torch.no_grad():
      model.weight.copy_(torch.tensor(p))
    averaged.update_parameters(model)
    theirs.append(averaged.module.weight.detach().numpy().copy())
  assert int(averaged.n_averaged) == LIVE_STEPS
  # The weights of the newest params: PyTorch's (its first call copies).
  if kind == "uniform":
    w_torch = [1.0] + [float(1 / (torch.tensor(n) + 1)) for n in range(1, LIVE_STEPS)]
    formula = [n / (n + 1) for n in range(LIVE_STEPS)]
  else:
    w_torch = [1.0] + [float(np.float32(1 - decay))] * (LIVE_STEPS - 1)
    formula = [0.0] + [decay] * (LIVE_STEPS - 1)
  assert d_ours == [_rounded(d, "float32") for d in formula]
  d_torch = [1 - w for w in w_torch]
  gap, rounding = _check_live(
    ours, theirs, p0, iterates, d_ours, d_torch, f"torch {kind}"
  )
  assert rounding < MEASURED_ULPS, (gap, rounding)


@pytest.mark.parametrize("overwrite", [None, 5])
def test_keras_use_ema(overwrite, keras):
  """Keras's SGD with use_ema (and ema_overwrite_frequency: the loop writes the
  average into the params after every 5th step)."""
  momentum, steps = 0.99, LIVE_STEPS
  params = _params(jnp.float32, {"w": (4, 5)})
  grads = _grads(jnp.float32, steps, {"w": (4, 5)})
  opt = keras.optimizers.SGD(
    learning_rate=LR,
    use_ema=True,
    ema_momentum=momentum,
    ema_overwrite_frequency=overwrite,
  )
  var = keras.Variable(np.asarray(params["w"]), name="w")
  tx = optax.chain(
    optax.sgd(LR), optaxtra.average_params(optaxtra.ema_from_first_update(momentum))
  )
  state = tx.init(params)
  update = jax.jit(tx.update)
  p0 = _f64(params["w"])
  ours, theirs, iterates = [], [], []
  for n, g in enumerate(grads):
    opt.apply_gradients([(np.asarray(g["w"]), var)])
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    iterates.append(np.asarray(params["w"]))
    if overwrite and (n + 1) % overwrite == 0:
      params = optaxtra.averaged_params(state, params)
    ours.append(np.asarray(state[1].average["w"]))
    theirs.append(keras.ops.convert_to_numpy(opt._model_variables_moving_average[0]))
    if not overwrite:  # the same SGD: p - g * lr, bit for bit
      np.testing.assert_array_equal(keras.ops.convert_to_numpy(var), params["w"])
  d = [0.0] + [_rounded(momentum, "float32")] * (steps - 1)
  if not overwrite:
    gap, rounding = _check_live(ours, theirs, p0, iterates, d, d, "keras")
    assert gap == rounding < MEASURED_ULPS, gap
  else:  # the overwrites feed each one's rounding into the params: compare directly
    scale = max(float(np.max(np.abs(p))) for p in iterates)
    for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
      np.testing.assert_allclose(
        a, b, rtol=0, atol=16 * EPS["float32"] * scale, err_msg=str(n)
      )
    np.testing.assert_allclose(
      keras.ops.convert_to_numpy(var),
      params["w"],
      rtol=0,
      atol=16 * EPS["float32"] * scale,
    )


# --- Masks ----------------------------------------------------------------------


def _bn_params():
  """A dense layer, batch statistics kept in the params, and an int counter."""
  return {
    "dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), -1.0)},
    "bn": {"mean": jnp.full((2,), 5.0), "var": jnp.full((2,), 3.0)},
    "steps": jnp.zeros((), jnp.int32),
  }


def _bn_grads(params):
  # Integer leaves get integer "gradients" here (float0 with jax.grad's
  # allow_int): outside the mask, their updates are passed unchanged.
  return jax.tree.map(
    lambda p: jnp.ones_like(p) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
  )


@pytest.mark.sweep(quick=["jit-path_mask", "eager-prefix", "jit-callable"])
@pytest.mark.parametrize(
  "mask",
  [
    masks.path_mask(include=["^dense/"]),
    {"dense": True, "bn": False, "steps": False},  # a prefix
    lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path).startswith("['dense']"), p
    ),
  ],
  ids=["path_mask", "prefix", "callable"],
)
def test_mask_leaves_integer_leaves_and_batch_statistics_out(mask, maybe_jit):
  params = _bn_params()
  tx = optax.chain(
    optax.masked(optax.sgd(0.5), masks.path_mask(include=["^dense/"])),
    optaxtra.average_params(0.75, mask=mask),
  )
  state = maybe_jit(tx.init)(params)
  average = state[1].average
  # Nothing is stored outside the mask.
  for path in (("bn", "mean"), ("bn", "var"), ("steps",)):
    node = average
    for k in path:
      node = node[k]
    assert isinstance(node, optax.MaskedNode), path
  assert jax.tree.structure(average) != jax.tree.structure(params)
  updates, state = maybe_jit(tx.update)(_bn_grads(params), state, params)
  new_params = optax.apply_updates(params, updates)
  new_params = {
    **new_params,
    "bn": {"mean": jnp.full((2,), 6.0), "var": params["bn"]["var"]},
  }
  got = optaxtra.averaged_params(state, new_params)
  # dense: 0.75 * p_0 + 0.25 * p_1, p_1 = p_0 - 0.5
  np.testing.assert_allclose(got["dense"]["kernel"], 0.75 * 2.0 + 0.25 * 1.5)
  np.testing.assert_allclose(got["dense"]["bias"], 0.75 * -1.0 + 0.25 * -1.5)
  # The rest are the params given, as they are (batch statistics included).
  assert got["bn"]["mean"] is new_params["bn"]["mean"]
  assert got["steps"] is new_params["steps"] and got["steps"].dtype == jnp.int32
  with pytest.raises(ValueError, match=r"3 parameters are outside.*'bn/mean'.*'steps'"):
    optaxtra.averaged_params(state)


def test_an_integer_leaf_inside_the_mask_is_refused_at_init():
  params = _bn_params()
  with pytest.raises(
    TypeError,
    match=r"'steps' has dtype int32.*masks.path_mask\(exclude=\['steps'\]\)",
  ):
    optaxtra.average_params().init(params)
  with pytest.raises(TypeError, match=r"'flag' has dtype bool"):
    optaxtra.average_params().init({"flag": jnp.ones(2, bool)})


def test_an_averaged_leaf_needs_float_updates():
  params = {"w": jnp.ones(2)}
  tx = optaxtra.average_params()
  with pytest.raises(TypeError, match=r"update for 'w' has dtype int32"):
    tx.update({"w": jnp.ones(2, jnp.int32)}, tx.init(params), params)


def test_a_mask_that_does_not_fit_is_refused():
  with pytest.raises(ValueError, match=r"average_params: mask does not fit"):
    optaxtra.average_params(mask={"nope": True}).init({"w": jnp.ones(2)})
  with pytest.raises(ValueError, match=r"no_such_layer"):
    optaxtra.average_params(mask=masks.path_mask(exclude=["no_such_layer"])).init(
      {"w": jnp.ones(2)}
    )


# --- Finding the average in any state -------------------------------------------


def _wrapped():
  """Optimizers holding one average deep inside, and what one update gives."""
  avg = lambda: optaxtra.average_params(0.5, mask={"w": True, "b": False})  # noqa: E731
  return {
    "chain": optax.chain(optax.sgd(1.0), avg()),
    "masked": optax.masked(
      optax.chain(optax.sgd(1.0), optaxtra.average_params(0.5)), {"w": True, "b": False}
    ),
    "partition": optax.transforms.partition(
      {
        "a": optax.chain(optax.sgd(1.0), optaxtra.average_params(0.5)),
        "z": optax.set_to_zero(),
      },
      {"w": "a", "b": "z"},
    ),
    "multisteps": optax.MultiSteps(
      optax.chain(optax.sgd(1.0), avg()), every_k_schedule=2
    ),
    "inject": optax.inject_hyperparams(
      lambda learning_rate: optax.chain(optax.sgd(learning_rate), avg())
    )(learning_rate=1.0),
    "inject_average": optax.chain(
      optax.sgd(1.0),
      optax.inject_hyperparams(optaxtra.average_params, static_args=("mask",))(
        decay=0.5, mask={"w": True, "b": False}
      ),
    ),
    "apply_if_finite": optax.apply_if_finite(optax.chain(optax.sgd(1.0), avg()), 3),
  }


@pytest.mark.parametrize("name", sorted(_wrapped()))
def test_averaged_params_finds_the_average_in_any_state(name):
  tx = _wrapped()[name]
  params = {"w": jnp.full((2,), 4.0), "b": jnp.full((), 7.0)}
  grads = {"w": jnp.ones(2), "b": jnp.ones(())}
  state = tx.init(params)
  update = jax.jit(tx.update)
  steps = 2 if name == "multisteps" else 1  # MultiSteps updates every 2nd call
  for _ in range(steps):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  got = optaxtra.averaged_params(state, params)
  # w: 0.5 * 4 + 0.5 * (4 - 1) (MultiSteps averages its 2 gradients: also 1)
  np.testing.assert_allclose(got["w"], [3.5, 3.5])
  assert got["b"] is params["b"]  # outside the mask (or the group): the params'
  assert optaxtra.inspect(state)["average_decay"] == 0.5


def test_averaged_params_without_params_when_everything_is_averaged():
  params = {"w": jnp.ones(2, jnp.bfloat16)}
  tx = optax.chain(optax.sgd(1.0), optaxtra.average_params(0.5))
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(2, jnp.bfloat16)}, state, params)
  got = optaxtra.averaged_params(state)
  assert got["w"].dtype == jnp.float32  # the average's own dtype
  np.testing.assert_array_equal(got["w"], [0.5, 0.5])
  assert optaxtra.averaged_params(state, params)["w"].dtype == jnp.bfloat16


def test_averaged_params_finds_none_or_several():
  params = {"w": jnp.ones(2)}
  with pytest.raises(
    ValueError, match=r"found no AverageParamsState.*ScaleByAdamState"
  ):
    optaxtra.averaged_params(optax.scale_by_adam().init(params), params)
  with pytest.raises(
    ValueError, match=r"found no AverageParamsState in the given tuple"
  ):
    optaxtra.averaged_params(optax.adam(1e-3).init(params), params)
  two = optax.chain(
    optaxtra.average_params(), optax.sgd(0.1), optaxtra.average_params(0.9)
  ).init(params)
  with pytest.raises(
    ValueError, match=r"found 2 AverageParamsState in the state, at '0', '2'"
  ):
    optaxtra.averaged_params(two, params)
  # Each part alone is fine.
  np.testing.assert_array_equal(optaxtra.averaged_params(two[2], params)["w"], [1, 1])
  # A checkpoint restored without a target: dicts, no state object.
  as_dicts = {
    "count": two[0].count,
    "decay": two[0].decay,
    "average": {"w": params["w"]},
  }
  with pytest.raises(ValueError, match=r"restore against jax.eval_shape"):
    optaxtra.averaged_params(as_dicts, params)


def test_averaged_params_checks_the_params_fit():
  params = {"w": jnp.ones(2), "b": jnp.ones(3)}
  state = optaxtra.average_params().init(params)
  with pytest.raises(ValueError, match=r"only in the average: 'b'"):
    optaxtra.averaged_params(state, {"w": jnp.ones(2)})
  # Same shapes, other names: matched by path, never by position.
  with pytest.raises(ValueError, match=r"Only in params: 'v'.*average: 'w'"):
    optaxtra.averaged_params(state, {"v": jnp.ones(2), "b": jnp.ones(3)})
  with pytest.raises(
    ValueError, match=r"'w' has shape \(2,\) but the parameter has shape \(5,\)"
  ):
    optaxtra.averaged_params(state, {"w": jnp.ones(5), "b": jnp.ones(3)})


# --- Arguments and errors ---------------------------------------------------------


@pytest.mark.parametrize(
  ("decay", "error", "match"),
  [
    (1.0, ValueError, r"decay must be in \[0, 1\), got 1.0"),
    (-0.1, ValueError, r"decay must be in \[0, 1\)"),
    (float("nan"), ValueError, r"got nan"),
    (float("inf"), ValueError, r"got inf"),
    ("0.9", TypeError, r"string"),
    (True, TypeError, r"must be a number"),
    (None, TypeError, r"must be a number"),
    (jnp.asarray(0.9, jnp.bfloat16), TypeError, r"arrived as bfloat16"),
    (jnp.ones(2) * 0.9, TypeError, r"shape \(2,\), not a scalar"),
  ],
)
def test_bad_decays_are_refused_at_construction(decay, error, match):
  with pytest.raises(error, match=match):
    optaxtra.average_params(decay)


@pytest.mark.parametrize(
  "helper", [optaxtra.ema_warmup, optaxtra.ema_from_first_update]
)
def test_the_helpers_check_their_decay(helper):
  for bad in (1.0, -0.5, float("nan")):
    with pytest.raises(ValueError, match=rf"{helper.__name__}: decay must be in"):
      helper(bad)
  with pytest.raises(TypeError, match=r"must be a number in \[0, 1\)"):
    helper(optaxtra.polyak())


def test_a_schedule_is_checked_at_init_and_at_every_concrete_step():
  params = {"w": jnp.ones(2)}
  with pytest.raises(
    ValueError, match=r"decay is 1.0 at step 0; it must be in \[0, 1\)"
  ):
    optaxtra.average_params(lambda n: 1.0).init(params)
  tx = optaxtra.average_params(lambda n: jnp.where(n < 2, 0.5, 1.5))
  state = tx.init(params)
  grads = {"w": jnp.ones(2)}
  for _ in range(2):
    _, state = tx.update(grads, state, params)
  with pytest.raises(ValueError, match=r"decay is 1.5 at step 2"):
    tx.update(grads, state, params)
  # Under jit the value is traced: a NaN, in the state and in the average
  # (never an extrapolating average that looks fine).
  _, jitted = jax.jit(tx.update)(grads, state, params)
  assert np.isnan(float(jitted.decay))
  assert np.isnan(np.asarray(jitted.average["w"])).all()


def test_a_decay_that_rounds_to_one_is_refused():
  # 0.99999999 is 1.0 in float32: the average would never move (optax.ema
  # moves, since it computes 1 - d in double precision before rounding).
  with pytest.raises(ValueError, match=r"decay=0.99999999 is 1.0 in float32"):
    optaxtra.average_params(0.99999999)


def test_with_average_places_the_average_last():
  params = {"w": jnp.array([1.0, 2.0])}
  grads = {"w": jnp.array([2.0, 2.0])}
  wrapped = optaxtra.with_average(optax.sgd(0.5), 0.9)
  chained = optax.chain(optax.sgd(0.5), optaxtra.average_params(0.9))
  sw, sc = wrapped.init(params), chained.init(params)
  uw, sw = wrapped.update(grads, sw, params)
  uc, sc = chained.update(grads, sc, params)
  np.testing.assert_array_equal(uw["w"], uc["w"])
  p = optax.apply_updates(params, uw)
  np.testing.assert_array_equal(
    optaxtra.averaged_params(sw, p)["w"], optaxtra.averaged_params(sc, p)["w"]
  )
  with pytest.raises(TypeError, match=r"a function: call it"):
    optaxtra.with_average(optax.adam, 0.9)
  with pytest.raises(TypeError, match=r"decay returned None"):
    optaxtra.average_params(lambda n: None).init(params)
  with pytest.raises(TypeError, match=r"dtype bool"):
    jax.jit(optaxtra.average_params(lambda n: n > 3).init)(params)


def test_update_needs_the_params_and_its_own_state():
  params = {"w": jnp.ones(2)}
  tx = optaxtra.average_params()
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"average_params needs the params"):
    tx.update(params, state)
  with pytest.raises(TypeError, match=r"expected the AverageParamsState made by init"):
    tx.update(params, state._asdict(), params)
  with pytest.raises(
    ValueError, match=r"Only in the params: .v.; only in the state.s average: .w."
  ):
    tx.update({"v": jnp.ones(2)}, state, {"v": jnp.ones(2)})


def test_dtype_and_abstract_params():
  with pytest.raises(TypeError, match=r"dtype must be a floating dtype, got int32"):
    optaxtra.average_params(dtype=jnp.int32)
  with pytest.raises(TypeError, match=r"'w' is abstract.*jax.eval_shape"):
    optaxtra.average_params().init({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  params = {"w": jnp.ones(2, jnp.float32)}
  state = optaxtra.average_params(dtype=jnp.bfloat16).init(params)
  assert state.average["w"].dtype == jnp.bfloat16  # a narrower dtype, if asked
  # jax.eval_shape, e.g. for a restore target, describes the state.
  abstract = jax.eval_shape(optaxtra.average_params().init, params)
  assert (
    abstract.average["w"].shape == (2,) and abstract.average["w"].dtype == jnp.float32
  )


def test_inject_hyperparams_gives_the_same_average():
  params, grads = _params(jnp.float32), _grads(jnp.float32, 10)
  _, plain = _train(0.9, params, grads)
  tx = optax.chain(
    optax.sgd(LR), optax.inject_hyperparams(optaxtra.average_params)(decay=0.9)
  )
  _, states, _ = _harness.run(tx, params, grads, jit=True, apply=True)
  for i, (a, b) in enumerate(zip(plain[1:], states[1:], strict=True)):
    for k in SHAPES:  # another compiled program: see _harness.CROSS_PROGRAM_ULPS
      _harness.assert_max_ulp(
        b[1].inner_state.average[k],
        a.average[k],
        _harness.cross_program_ulps(i),
        f"{i} {k}",
      )
  # bfloat16 params: inject_hyperparams would hand decay over as bfloat16.
  bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  with pytest.raises(TypeError, match=r"hyperparam_dtype=jnp.float32"):
    optax.inject_hyperparams(optaxtra.average_params)(decay=0.999).init(bf16)


# --- The contract: jit, scan, check_transformation, inspect -----------------------


def test_contract_and_lax_scan():
  params = {**_params(jnp.float32), "h": jnp.ones((3,), jnp.bfloat16)}
  grads = [
    {**g, "h": g["w"][0, :3].astype(jnp.bfloat16)} for g in _grads(jnp.float32, 10)
  ]
  tx = optaxtra.average_params(optaxtra.ema_warmup(0.99))
  _harness.check_contract(tx, params, grads)
  _harness.check_count_saturates(tx, params, grads)
  # The average after a lax.scan of SGD steps is the loop's.
  chain = optax.chain(optax.sgd(LR), tx)

  def body(carry, g):
    p, s = carry
    u, s = chain.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
  (_, scanned), _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))(
    (params, chain.init(params)), stacked
  )
  _, states, _ = _harness.run(chain, params, grads, jit=True, apply=True)
  for k in params:
    _harness.assert_max_ulp(
      scanned[1].average[k], states[-1][1].average[k], _harness.cross_program_ulps(9), k
    )


@pytest.mark.parametrize(
  "make",
  [
    lambda: optaxtra.average_params(),
    lambda: optaxtra.average_params(
      optaxtra.polyak(), mask=masks.path_mask(exclude=["b"])
    ),
    lambda: optax.chain(optaxtra.scale_by_adam(), optaxtra.average_params(0.9)),
  ],
  ids=["default", "polyak_masked", "chain"],
)
def test_check_transformation_passes(make):
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3), "h": jnp.ones(4, jnp.bfloat16)}
  optaxtra.testing.check_transformation(make(), params)


def test_inspect_reports_the_decay_the_last_update_used():
  params, grads = _params(jnp.float32), _grads(jnp.float32, 3)
  tx = optax.chain(
    optaxtra.scale_by_adam(),
    optaxtra.scale_by_learning_rate(1e-3),
    optaxtra.average_params(optaxtra.ema_warmup(0.999)),
  )
  state = tx.init(params)
  info = optaxtra.inspect(state)
  np.testing.assert_allclose(info["average_decay"], 2 / 11, rtol=1e-6)  # the first's
  for n, g in enumerate(grads):
    _, state = jax.jit(tx.update)(g, state, params)
    info = optaxtra.inspect(state)
    np.testing.assert_allclose(info["average_decay"], (2 + n) / (11 + n), rtol=1e-6)
  assert "average" not in str(sorted(k for k in info if k != "average_decay"))
  assert int(info["count"]) == 3 and info["learning_rate"] == np.float32(1e-3)
  # Under jit too, with the same names.
  assert sorted(jax.jit(optaxtra.inspect)(state)) == sorted(info)


# --- Checkpoints ------------------------------------------------------------------


@pytest.mark.heavy  # Orbax
def test_orbax_resume_is_bit_for_bit(tmp_path):
  ocp = need("orbax.checkpoint")
  shapes = {"kernel": (6, 3), "bias": (3,)}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(40, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)

  def make():
    return optax.chain(
      optaxtra.scale_by_adam(),
      optaxtra.scale_by_learning_rate(1e-2),
      optaxtra.average_params(
        optaxtra.ema_warmup(0.999), mask=masks.path_mask(exclude=["bias"])
      ),
    )

  def init_params():
    return {**_params(jnp.float32, shapes), "emb": jnp.ones((4, 2), jnp.bfloat16)}

  def loss(p, i):
    xb = jax.lax.dynamic_slice_in_dim(x, i, 8)
    yb = jax.lax.dynamic_slice_in_dim(y, i, 8)
    pred = xb @ p["kernel"] + p["bias"] + jnp.sum(p["emb"].astype(jnp.float32))
    return jnp.mean((pred - yb) ** 2)

  def run(tx, params, state, steps):
    @jax.jit
    def step(params, state, i):
      g = jax.grad(loss)(params, i)
      u, state = tx.update(g, state, params)
      return optax.apply_updates(params, u), state

    for i in steps:
      params, state = step(params, state, (i * 8) % 32)
    return params, state

  tx = make()
  straight = run(tx, init_params(), tx.init(init_params()), range(40))
  first = run(tx, init_params(), tx.init(init_params()), range(20))
  path = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {"params": first[0], "opt_state": first[1]})
    ckptr.wait_until_finished()
  again = make()  # a new process knows only the shapes
  target = jax.eval_shape(
    lambda: {"params": init_params(), "opt_state": again.init(init_params())}
  )
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path, target)
  assert isinstance(restored["opt_state"][2].average["bias"], optax.MaskedNode)
  resumed = run(again, restored["params"], restored["opt_state"], range(20, 40))
  assert jax.tree.structure(resumed) == jax.tree.structure(straight)
  for (where, a), b in zip(
    jax.tree_util.tree_flatten_with_path(resumed)[0],
    jax.tree.leaves(straight),
    strict=True,
  ):
    assert a.dtype == b.dtype, where
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(where))
  averaged = optaxtra.averaged_params(resumed[1], resumed[0])
  assert not np.array_equal(averaged["kernel"], resumed[0]["kernel"])
  assert averaged["emb"].dtype == jnp.bfloat16


# --- Sharding ---------------------------------------------------------------------
# As in test_sharding.py: 8 simulated CPU devices, in a subprocess, so that the
# rest of the suite keeps its single device. Run this file as a script with a
# case name to run one case directly.

SHARDED_SPECS = {
  "embed": ("P", ("data", "fsdp"), None),
  "dense": {"kernel": ("P", "fsdp", None), "bias": ("P",)},
  "norm": {"scale": ("P",)},
}
SHARDED_SHAPES = {
  "embed": ((32, 8), "bfloat16"),
  "dense": {"kernel": ((64, 24), "float32"), "bias": ((24,), "float32")},
  "norm": {"scale": ((24,), "float32")},
}


def _is_spec(x):
  return isinstance(x, tuple) and x[:1] == ("P",)


def _is_shape(x):
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def _sharded_tx():
  return optax.chain(
    optaxtra.scale_by_adam(),
    optaxtra.scale_by_learning_rate(1e-2),
    optaxtra.average_params(
      optaxtra.ema_warmup(0.999), mask=masks.path_mask(exclude=["norm"])
    ),
  )


def _host_tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda sd: (rng.standard_normal(sd[0]) * scale).astype(jnp.dtype(sd[1])),
    SHARDED_SHAPES,
    is_leaf=_is_shape,
  )


def _mesh(explicit):
  from jax.sharding import AxisType

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  kind = AxisType.Explicit if explicit else AxisType.Auto
  return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(kind, kind))


def _place(mesh, tree):
  from jax.sharding import NamedSharding, PartitionSpec

  return jax.tree.map(
    lambda x, spec: jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec[1:]))),
    tree,
    SHARDED_SPECS,
    is_leaf=lambda x: _is_spec(x),
  )


def _check_average_sharding(state, params, how):
  """Each average where its param is (float32 for the bfloat16 embedding)."""
  average = state[2].average
  seen = 0
  for (path, p), a in zip(
    jax.tree_util.tree_flatten_with_path(params)[0],
    jax.tree.leaves(average, is_leaf=lambda x: isinstance(x, optax.MaskedNode)),
    strict=True,
  ):
    where = f"{how} {jax.tree_util.keystr(path)}"
    if "norm" in where:
      assert isinstance(a, optax.MaskedNode), where
      continue
    seen += 1
    assert a.shape == p.shape and a.dtype == jnp.promote_types(p.dtype, jnp.float32)
    assert a.sharding.is_equivalent_to(p.sharding, p.ndim), (
      f"{where}: average {a.sharding} != param {p.sharding}"
    )
  assert seen == 3, seen


def _worker_init():
  from jax.sharding import NamedSharding, PartitionSpec

  tx = _sharded_tx()
  mesh = _mesh(explicit=False)
  params = _place(mesh, _host_tree(0))
  _check_average_sharding(tx.init(params), params, "eager")
  _check_average_sharding(jax.jit(tx.init)(params), params, "plain jit")
  # out_shardings from optax.tree_map_params, as for every Optax optimizer;
  # the average's MaskedNodes are passed over with is_leaf, as for optax.masked.
  shardings = optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    jax.eval_shape(tx.init, params),
    jax.tree.map(lambda p: p.sharding, params),
    transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  _check_average_sharding(state, params, "out_shardings")
  for s in jax.tree.leaves(state):
    if s.ndim == 0:
      assert s.sharding.is_fully_replicated, s.sharding
  mesh = _mesh(explicit=True)
  with jax.set_mesh(mesh):
    params = _place(mesh, _host_tree(0))
    _check_average_sharding(jax.jit(tx.init)(params), params, "explicit mesh")


def _worker_update():

  tx = _sharded_tx()
  host_params = _host_tree(0)
  host_grads = [_host_tree(seed, scale=0.1) for seed in (1, 2, 3)]

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  cpu0 = jax.devices()[0]
  ref_p = jax.device_put(host_params, cpu0)
  # Committed like the params, so that the step compiles once, not again for
  # the committed state it returns.
  ref_s = jax.device_put(tx.init(ref_p), cpu0)
  ref_step = jax.jit(step)
  for g in host_grads:
    ref_p, ref_s = ref_step(ref_p, ref_s, jax.device_put(g, cpu0))

  for explicit in (False, True):
    mesh = _mesh(explicit)
    with jax.set_mesh(mesh):
      params = _place(mesh, host_params)
      state = tx.init(params)
      grads = [_place(mesh, g) for g in host_grads]
      jitted = jax.jit(step, donate_argnums=(0, 1))
      hlo = jitted.lower(params, state, grads[0]).compile().as_text()
      for g in grads:
        params, state = jitted(params, state, g)
    found = collectives(hlo)
    assert not found, f"the update moves data between devices: {found}"
    _check_average_sharding(state, params, f"after updates, explicit={explicit}")
    # Sharding changes where the arithmetic runs, not its result (up to the
    # rounding of differently fused programs; bfloat16 params round it up).
    for a, b in zip(
      jax.tree.leaves(state[2].average), jax.tree.leaves(ref_s[2].average), strict=True
    ):
      np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-2, atol=1e-6
      )


def _run_worker(case: str) -> None:
  os.environ["XLA_FLAGS"] = xla_flags()
  os.environ["JAX_PLATFORMS"] = "cpu"
  globals()[f"_worker_{case}"]()
  print(f'{{"case": "{case}", "ok": true}}')


needs_axis_types = pytest.mark.skipif(
  not (hasattr(jax.sharding, "AxisType") and hasattr(jax, "set_mesh")),
  reason=f"explicit-axis meshes need jax.sharding.AxisType (jax {jax.__version__})",
)


def _in_subprocess(case: str) -> None:
  run_case(__file__, case)


@needs_axis_types
def test_the_average_is_placed_like_its_param():
  """Eager, plain jax.jit (Auto mesh), out_shardings, and an Explicit mesh."""
  _in_subprocess("init")


@needs_axis_types
def test_a_sharded_update_moves_no_data_between_devices():
  _in_subprocess("update")


# --- Frameworks -------------------------------------------------------------------

FW_STEPS = 150
FW_DECAY = 0.9


def _digits_reference(initial, trajectory, decay, steps):
  """The float64 average of recorded params (flat dicts path -> array)."""
  out = {}
  for k in initial:
    want, bound = reference(
      _f64(initial[k]),
      [_f64(t[k]) for t in trajectory],
      [_rounded(decay, "float32")] * steps,
      EPS["float32"],
    )
    out[k] = (want[-1], bound[-1])
  return out


def _flat(tree):
  from optaxtra._core.paths import path_str

  boxes = optaxtra._core.paths.box_types()
  flat = jax.tree_util.tree_flatten_with_path(
    tree, is_leaf=lambda x: bool(boxes) and isinstance(x, boxes)
  )[0]
  return {path_str(p): np.asarray(jax.tree.leaves(x)[0]) for p, x in flat}


def _accuracy(logits, labels):
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


@pytest.mark.heavy
def test_flax_nnx_optimizer():
  nnx = need("flax.nnx")
  import _digits

  x, y, x_test, y_test = _digits.load()

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(_digits.NUM_FEATURES, 32, rngs=rngs)
      self.norm = nnx.LayerNorm(32, rngs=rngs)
      self.out = nnx.Linear(32, _digits.NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
      return self.out(jax.nn.relu(self.norm(self.hidden(x))))

  model = MLP(nnx.Rngs(0))
  tx = optax.chain(
    optax.adam(1e-2),
    optaxtra.average_params(FW_DECAY, mask=masks.path_mask(exclude=["norm"])),
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, xb, yb):
    def loss(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

    optimizer.update(model, nnx.grad(loss)(model))

  initial = _flat(nnx.state(model, nnx.Param))
  trajectory = []
  for idx in _digits.batches(FW_STEPS, 64):
    train_step(model, optimizer, x[idx], y[idx])
    trajectory.append(_flat(nnx.state(model, nnx.Param)))

  params = nnx.state(model, nnx.Param)
  averaged = optaxtra.averaged_params(optimizer.opt_state, params)
  got = _flat(averaged)
  for k, (want, bound) in _digits_reference(
    initial, trajectory, FW_DECAY, FW_STEPS
  ).items():
    if k.startswith("norm/"):  # outside the mask: the params' own
      np.testing.assert_array_equal(got[k], trajectory[-1][k])
    else:
      assert_within(got[k], want, bound, k)
  assert optaxtra.inspect(optimizer.opt_state)["average_decay"] == np.float32(FW_DECAY)
  # Evaluate the averaged model: a copy of the model holding the average.
  averaged_model = nnx.clone(model)
  nnx.update(averaged_model, averaged)
  assert _accuracy(averaged_model(jnp.asarray(x_test)), y_test) >= 0.9
  assert not np.array_equal(got["out/kernel"], trajectory[-1]["out/kernel"])


@pytest.mark.heavy
def test_flax_linen_train_state():
  linen = need("flax.linen")
  train_state = need("flax.training.train_state")
  import _digits

  x, y, x_test, y_test = _digits.load()

  class MLP(linen.Module):
    @linen.compact
    def __call__(self, x):
      x = linen.relu(linen.Dense(32)(x))
      return linen.Dense(_digits.NUM_CLASSES)(x)

  model = MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, _digits.NUM_FEATURES)))["params"]
  tx = optax.chain(optax.adam(1e-2), optaxtra.average_params(FW_DECAY))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def train_step(state, xb, yb):
    def loss(p):
      logits = state.apply_fn({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  initial, trajectory = _flat(params), []
  for idx in _digits.batches(FW_STEPS, 64):
    state = train_step(state, x[idx], y[idx])
    trajectory.append(_flat(state.params))
  averaged = optaxtra.averaged_params(state.opt_state, state.params)
  got = _flat(averaged)
  for k, (want, bound) in _digits_reference(
    initial, trajectory, FW_DECAY, FW_STEPS
  ).items():
    assert_within(got[k], want, bound, k)
  acc = _accuracy(state.apply_fn({"params": averaged}, x_test), y_test)
  assert acc >= 0.9, acc


@pytest.mark.heavy
def test_haiku():
  hk = need("haiku")
  import _digits

  x, y, x_test, y_test = _digits.load()
  net = hk.without_apply_rng(
    hk.transform(lambda x: hk.nets.MLP([32, _digits.NUM_CLASSES])(x))
  )
  params = net.init(jax.random.key(0), jnp.zeros((1, _digits.NUM_FEATURES)))
  # Haiku's names: mlp/~/linear_0/{w,b}, mlp/~/linear_1/{w,b}; biases not averaged.
  tx = optax.chain(
    optax.adam(1e-2),
    optaxtra.average_params(FW_DECAY, mask=masks.path_mask(exclude=["/b$"])),
  )
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, xb, yb):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(
        net.apply(p, xb), yb
      ).mean()

    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  initial, trajectory = _flat(params), []
  for idx in _digits.batches(FW_STEPS, 64):
    params, opt_state = train_step(params, opt_state, x[idx], y[idx])
    trajectory.append(_flat(params))
  averaged = optaxtra.averaged_params(opt_state, params)
  got = _flat(averaged)
  for k, (want, bound) in _digits_reference(
    initial, trajectory, FW_DECAY, FW_STEPS
  ).items():
    if k.endswith("/b"):
      assert got[k] is not None and np.array_equal(got[k], trajectory[-1][k])
    else:
      assert_within(got[k], want, bound, k)
  assert _accuracy(net.apply(averaged, x_test), y_test) >= 0.9


if __name__ == "__main__":
  _run_worker(sys.argv[1])


@pytest.mark.heavy
def test_the_average_keeps_flax_boxes_through_updates():
  # A linen Partitioned box around a parameter stays around its average after
  # an update: the state keeps init's structure (lax.scan, sharding names).
  need("flax")
  from flax import linen as nn

  params = {"w": nn.Partitioned(jnp.ones(2), names=("x",))}
  tx = optaxtra.average_params(0.9)
  state = tx.init(params)
  grads = {"w": nn.Partitioned(jnp.ones(2), names=("x",))}
  _, new = jax.jit(tx.update)(grads, state, params)
  assert isinstance(new.average["w"], nn.Partitioned)
  assert jax.tree.structure(new) == jax.tree.structure(state)
