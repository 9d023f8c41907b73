"""optaxtra.inspect against float64 NumPy computations of what each update used."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import struct
from typing import Any, NamedTuple

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
STEPS = 30
# What inspect reports for adamax_clipped with the clip share tracked and a
# decay: one count, the decay's coefficient and applied rate under two names,
# no bias correction (off by default).
ALIAS_KEYS = [
  "clip_fraction",
  "count",
  "decay_rate",
  "effective_learning_rate",
  "learning_rate",
  "learning_rate_scale",
  "weight_decay",
]
# Without decay there is no decay to report.
ALIAS_KEYS_NO_DECAY = [k for k in ALIAS_KEYS if k not in ("decay_rate", "weight_decay")]


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(1)
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def _run(tx, params, grads, *, jit=True):
  """Trains ``len(grads)`` steps; returns the params and inspect(state) per step."""

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, optaxtra.inspect(s)

  step = jax.jit(step) if jit else step
  state = tx.init(params)
  infos, params_seen = [], []
  for g in grads:
    g = jax.tree.map(lambda x, p: jnp.asarray(x, p.dtype), g, params)
    params, state, info = step(params, state, g)
    infos.append({k: np.asarray(v) for k, v in info.items()})
    params_seen.append(params)
  return params_seen, infos, state


def _warmup_cosine_np(n, peak=1e-2, warmup=5, total=30, end=1e-4):
  """Linear warmup from 0 then cosine decay to ``end``, from its equations."""
  if n < warmup:
    return peak * n / warmup
  k = min(n - warmup, total - warmup)
  return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * k / (total - warmup)))


def _warmup_cosine_jnp(n, peak=1e-2, warmup=5, total=30, end=1e-4):
  """The same schedule in JAX, in the default float precision (float64 with x64)."""
  n = jnp.asarray(n)
  k = jnp.clip(n - warmup, 0, total - warmup)
  cosine = end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * k / (total - warmup)))
  return jnp.where(n < warmup, peak * n / warmup, cosine)


# --- Adam's alpha_t through optax.inject_hyperparams ----------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inject_adam_reports_schedule_and_alpha_t_each_step(dtype, request):
  if dtype == "float64":
    request.getfixturevalue("x64")
  b1, b2 = 0.9, 0.99
  sched = _warmup_cosine_jnp
  # eps = 0 so that the update is exactly -alpha_t * m_t / sqrt(v_t).
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=sched, b1=b1, b2=b2, eps=0.0)
  params = _params(dtype)
  grads = ref.spiky_grads(0, SHAPES, STEPS, spike=3.0)
  seen, infos, _ = _run(tx, params, grads)
  rtol = 1e-12 if dtype == "float64" else 2e-6
  b1, b2 = float(np.asarray(b1, dtype)), float(np.asarray(b2, dtype))  # as stored

  m = {k: np.zeros(s) for k, s in SHAPES.items()}
  v = {k: np.zeros(s) for k, s in SHAPES.items()}
  p = ref.tree_f64(params)
  for t, (g, info, got) in enumerate(zip(grads, infos, seen, strict=True), start=1):
    lr = _warmup_cosine_np(t - 1)  # the t-th update uses the schedule at t - 1
    alpha_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    assert int(info["count"]) == t  # inject's and Adam's count: one count
    assert "inner_state/0/count" not in info
    np.testing.assert_allclose(info["learning_rate"], lr, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(info["effective_learning_rate"], alpha_t, rtol=rtol)
    np.testing.assert_allclose(
      info["bias_correction"], np.sqrt(1 - b2**t) / (1 - b1**t), rtol=rtol
    )
    np.testing.assert_allclose(info["b1"], b1, rtol=rtol)
    np.testing.assert_allclose(info["b2"], b2, rtol=rtol)
    # alpha_t is the step the update took: p -= alpha_t * m_t / sqrt(v_t).
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      p[k] = p[k] - alpha_t * m[k] / np.sqrt(v[k])
      scale = np.abs(ref.f64(params[k])) + alpha_t * t
      np.testing.assert_allclose(ref.f64(got[k]), p[k], rtol=0, atol=rtol * scale.max())


def test_inject_adam_keys_are_documented_and_eager_equals_jit():
  sched = optax.linear_schedule(1e-3, 1e-4, 20)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=sched)
  grads = ref.spiky_grads(2, SHAPES, 4)
  _, eager, _ = _run(tx, _params(), grads, jit=False)
  _, jitted, _ = _run(tx, _params(), grads, jit=True)
  assert sorted(eager[-1]) == [
    "b1",
    "b2",
    "bias_correction",
    "count",
    "effective_learning_rate",
    "eps",
    "eps_root",
    "learning_rate",
  ]
  for e, j in zip(eager, jitted, strict=True):
    assert sorted(e) == sorted(j)
    for k in e:
      np.testing.assert_allclose(e[k], j[k], rtol=1e-6)


def test_before_the_first_update():
  sched = optax.linear_schedule(0.3, 0.0, 10)
  info = optaxtra.inspect(
    optax.inject_hyperparams(optax.adam)(learning_rate=sched).init(_params())
  )
  assert int(info["count"]) == 0
  np.testing.assert_allclose(info["learning_rate"], 0.3)  # what update 1 will use
  assert float(info["bias_correction"]) == 1.0
  np.testing.assert_allclose(info["effective_learning_rate"], 0.3)

  tx = _tracked_adamax_clipped(sched, weight_decay=0.5, bias_correction=True)
  info = optaxtra.inspect(tx.init(_params()))
  np.testing.assert_allclose(info["learning_rate"], 0.3)
  np.testing.assert_allclose(info["decay_rate"], 0.15)
  np.testing.assert_allclose(info["weight_decay"], 0.5)
  assert float(info["clip_fraction"]) == 0.0
  assert float(info["bias_correction"]) == 1.0
  assert int(info["count"]) == 0


# --- an optaxtra chain: learning rate, applied decay rate, clip share -------


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adamax_clipped_chain_reports_what_each_update_used(x64, bias_correction):
  b1 = 0.9
  sched = _warmup_cosine_jnp  # float64 (Optax's schedules round through float32)

  def wd(n):
    return 0.1 + (0.02 - 0.1) * jnp.minimum(n, 30) / 30

  mask = {"w": True, "s": False}
  tx = _tracked_adamax_clipped(
    sched,
    b1=b1,
    weight_decay=wd,
    weight_decay_mask=mask,
    bias_correction=bias_correction,
  )
  params = _params(jnp.float64)
  grads = ref.spiky_grads(3, SHAPES, STEPS)
  seen, infos, _ = _run(tx, params, grads)
  want = ref.adamax_clipped_optimizer(
    ref.tree_f64(params),
    grads,
    learning_rate=lambda n: _warmup_cosine_np(n),
    weight_decay=lambda n: 0.1 + (0.02 - 0.1) * min(n, 30) / 30,
    decay_schedule=lambda n: _warmup_cosine_np(n),
    decay_mask=mask,
    b1=b1,
    bias_correction=bias_correction,
  )
  fractions = [w["clip_fraction"] for w in want]
  assert 0 < min(fractions[1:]) and max(fractions) <= 1  # clipping does happen
  for t, (info, w, got) in enumerate(zip(infos, want, seen, strict=True), start=1):
    assert int(info["count"]) == t
    np.testing.assert_allclose(info["learning_rate"], w["learning_rate"], rtol=1e-13)
    np.testing.assert_allclose(info["decay_rate"], w["rate"], rtol=1e-13)
    np.testing.assert_allclose(info["weight_decay"], wd(t - 1), rtol=1e-13)
    assert float(info["clip_fraction"]) == pytest.approx(w["clip_fraction"], rel=1e-6)
    factor = 1 / (1 - b1**t) if bias_correction else 1.0
    if bias_correction:
      np.testing.assert_allclose(info["bias_correction"], factor, rtol=1e-13)
    else:  # off: nothing to report
      assert "bias_correction" not in info
    np.testing.assert_allclose(
      info["effective_learning_rate"], w["learning_rate"] * factor, rtol=1e-13
    )
    for k in got:
      np.testing.assert_allclose(
        ref.f64(got[k]), w["params"][k], rtol=1e-10, atol=1e-12
      )


def test_adamax_clipped_chain_float32_eager():
  sched = optax.linear_schedule(1e-2, 1e-3, 10)
  tx = _tracked_adamax_clipped(sched, weight_decay=0.1)
  grads = ref.spiky_grads(4, SHAPES, 6)
  _, infos, _ = _run(tx, _params(), grads, jit=False)
  want = ref.adamax_clipped_optimizer(
    ref.tree_f64(_params()),
    grads,
    learning_rate=lambda n: 1e-2 + (1e-3 - 1e-2) * min(n, 10) / 10,
    weight_decay=0.1,
    decay_schedule=lambda n: 1e-2 + (1e-3 - 1e-2) * min(n, 10) / 10,
  )
  assert sorted(infos[0]) == ALIAS_KEYS
  for info, w in zip(infos, want, strict=True):
    np.testing.assert_allclose(info["learning_rate"], w["learning_rate"], rtol=1e-6)
    np.testing.assert_allclose(info["decay_rate"], w["rate"], rtol=1e-6)
    np.testing.assert_allclose(info["weight_decay"], 0.1)
    np.testing.assert_allclose(info["clip_fraction"], w["clip_fraction"], atol=1 / 21)


def test_optaxtra_adam_bias_correction_with_a_learning_rate_stage():
  b1, b2 = 0.8, 0.95
  tx = optax.chain(
    optaxtra.scale_by_adam(b1, b2),
    optaxtra.scale_by_learning_rate(lambda n: 0.1 / (n + 1)),
  )
  _, infos, _ = _run(tx, _params(), ref.spiky_grads(5, SHAPES, 5))
  for t, info in enumerate(infos, start=1):
    lr = 0.1 / t
    np.testing.assert_allclose(info["learning_rate"], lr, rtol=1e-6)
    np.testing.assert_allclose(
      info["effective_learning_rate"],
      lr * ref.adam_bias_correction(t, b1, b2),
      rtol=1e-6,
    )


# --- names: duplicates get their path, count is the outermost ---------------


def test_partition_prefixes_every_duplicate_and_pairs_within_groups():
  params = _params()
  tx = optax.transforms.partition(
    {
      "adam": optax.inject_hyperparams(optax.adam)(learning_rate=0.1, b1=0.5, b2=0.75),
      "clip": _tracked_adamax_clipped(0.2, weight_decay=0.3),
    },
    {"w": "adam", "s": "clip"},
  )
  _, infos, state = _run(tx, params, ref.spiky_grads(6, SHAPES, 2))
  info = infos[-1]
  assert "learning_rate" not in info and "effective_learning_rate" not in info
  np.testing.assert_allclose(
    info["inner_states/adam/inner_state/hyperparams/learning_rate"], 0.1
  )
  np.testing.assert_allclose(info["inner_states/clip/inner_state/learning_rate"], 0.2)
  np.testing.assert_allclose(
    info["inner_states/adam/inner_state/effective_learning_rate"],
    0.1 * ref.adam_bias_correction(2, 0.5, 0.75),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    info["inner_states/clip/inner_state/effective_learning_rate"], 0.2
  )
  np.testing.assert_allclose(info["decay_rate"], 0.3 * 0.2, rtol=1e-6)  # only one
  # The key is the value's own path in the state.
  assert float(state.inner_states["clip"].inner_state.learning_rate) == pytest.approx(
    0.2
  )
  # count: every group's stages advance at every update, and agree: one count.
  assert int(info["count"]) == 2
  assert sorted(k for k in info if k.endswith("count")) == ["count"]


def test_hyperparameter_and_stage_both_named_learning_rate():
  tx = optax.inject_hyperparams(optaxtra.adamax_clipped)(learning_rate=0.25)
  _, infos, _ = _run(tx, _params(), ref.spiky_grads(7, SHAPES, 2))
  info = infos[-1]
  assert "learning_rate" not in info
  np.testing.assert_allclose(info["hyperparams/learning_rate"], 0.25)
  np.testing.assert_allclose(info["inner_state/learning_rate"], 0.25)
  # hyperparams' weight_decay and the optimizer's (both the coefficient) are
  # both kept, each under its path; the applied rate has its own name.
  assert "hyperparams/weight_decay" in info and "inner_state/weight_decay" in info
  assert "decay_rate" in info
  # The product is formed by the optimizer's state, which knows its factor.
  np.testing.assert_allclose(info["effective_learning_rate"], 0.25)


def test_ambiguous_pairing_forms_no_product():
  tx = optax.chain(
    optaxtra.scale_by_adam(),
    optaxtra.scale_by_adam(b1=0.5),
    optaxtra.scale_by_learning_rate(0.1),
  )
  _, infos, _ = _run(tx, _params(), ref.spiky_grads(8, SHAPES, 3))
  info = infos[-1]
  assert "effective_learning_rate" not in info
  assert {"0/bias_correction", "1/bias_correction", "learning_rate"} <= set(info)


# --- wrappers ----------------------------------------------------------------


def test_masked_multisteps_and_apply_if_finite():
  b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))  # as stored
  sched = lambda n: 0.1 / (1.0 + n)  # noqa: E731
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=sched)
  tx = optax.apply_if_finite(
    optax.MultiSteps(optax.masked(inner, {"w": True, "s": False}), every_k_schedule=2),
    max_consecutive_errors=5,
  )
  params = _params()
  grads = ref.spiky_grads(9, SHAPES, 5)
  grads[4] = {k: np.full(s, np.nan) for k, s in SHAPES.items()}
  _, infos, _ = _run(tx, params, grads)
  # Steps 1..4 make two inner updates (after mini-steps 2 and 4), step 5 is
  # skipped for its NaN.
  for i, info in enumerate(infos[:4], start=1):
    k = i // 2  # inner updates done
    assert int(info["mini_step"]) == i % 2
    assert int(info["gradient_step"]) == k
    assert int(info["count"]) == k
    if k:
      np.testing.assert_allclose(info["learning_rate"], 0.1 / k, rtol=1e-6)
      np.testing.assert_allclose(
        info["effective_learning_rate"],
        0.1 / k * ref.adam_bias_correction(k, b1, b2),
        rtol=4e-7 / (1 - b2**k),  # float32's 1 - b2**k cancels, as in the update
      )
  last = infos[4]
  assert not bool(last["last_finite"])
  assert int(last["total_notfinite"]) == 1 and int(last["notfinite_count"]) == 1
  assert int(last["gradient_step"]) == 2


@pytest.mark.heavy
def test_nnx_optimizer_state():
  nnx = need("flax.nnx")
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  sched = optax.linear_schedule(0.1, 0.0, 10)
  opt = nnx.Optimizer(
    model, optax.inject_hyperparams(optax.adam)(learning_rate=sched), wrt=nnx.Param
  )

  @nnx.jit
  def step(model, opt, x):
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    opt.update(model, grads)
    return optaxtra.inspect(opt.opt_state)

  for t in range(1, 4):
    info = step(model, opt, jnp.ones((1, 3)))
    np.testing.assert_allclose(info["learning_rate"], 0.1 - 0.01 * (t - 1), rtol=1e-6)
    assert int(info["count"]) == t
  assert int(optaxtra.inspect(opt.opt_state)["count"]) == 3


def test_states_with_nothing_or_only_counts():
  params = _params()
  assert optaxtra.inspect(optax.sgd(0.1).init(params)) == {}
  assert optaxtra.inspect(()) == {}
  info = optaxtra.inspect(optax.adam(1e-3).init(params))
  assert sorted(info) == ["count"]  # Optax's lr stage records no learning rate
  info = optaxtra.inspect(optax.adam(optax.linear_schedule(1.0, 0.0, 5)).init(params))
  assert sorted(info) == ["count"]  # Adam's and the schedule's, which agree


def test_params_shaped_namedtuples_are_not_read():
  from typing import NamedTuple

  class Params(NamedTuple):
    count: jax.Array
    learning_rate: jax.Array

  params = Params(jnp.ones(()), jnp.ones(()))
  info = optaxtra.inspect(_tracked_adamax_clipped(0.1).init(params))
  assert sorted(info) == ALIAS_KEYS_NO_DECAY


def test_traced_hyperparameters_under_jit():
  tx = optax.inject_hyperparams(optaxtra.adamax_clipped)(learning_rate=0.1, b1=0.5)
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(state, lr):
    state.hyperparams["learning_rate"] = lr
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    return optaxtra.inspect(state)

  info = step(state, jnp.float32(0.05))
  np.testing.assert_allclose(info["inner_state/learning_rate"], 0.05)
  np.testing.assert_allclose(info["b1"], 0.5)


def test_rejects_a_transformation():
  with pytest.raises(TypeError, match=r"tx.init\(params\)"):
    optaxtra.inspect(optax.adam(1e-3))


# --- only a transformation's own scalars are values --------------------------


class _NTParams(NamedTuple):
  """Params that are a NamedTuple with a field named like a reported value."""

  count: jax.Array
  w: jax.Array


class _UserState(NamedTuple):
  count: jax.Array
  momentum: Any  # params-shaped


class _LrTreeState(NamedTuple):
  count: jax.Array
  learning_rate: Any  # a per-parameter learning rate: a params-shaped tree


class _TreeCountState(NamedTuple):
  count: Any  # a tree with one scalar leaf, not a counter


def _user_tx(make_state):
  """A user's transformation with the state ``make_state(params)``."""

  def update(updates, state, params=None):
    del params
    return updates, state

  return optax.GradientTransformation(make_state, update)


def _zeros(p):
  return jax.tree.map(jnp.zeros_like, p)


_STEP = jnp.zeros([], jnp.int32)
_USER = _user_tx(lambda p: _UserState(_STEP, _zeros(p)))
_LR_TREE = _user_tx(lambda p: _LrTreeState(_STEP, _zeros(p)))
_TREE_COUNT = _user_tx(lambda p: _TreeCountState({"w": jnp.zeros(())}))
_VEC = _NTParams(jnp.ones(3), jnp.ones(3))  # a vector named count
_SCALAR = _NTParams(jnp.ones(()), jnp.ones(3))  # a scalar named count
_NT_A = _NTParams("a", "a")  # partition labels: one group


@pytest.mark.parametrize(
  "make, params, keys",
  [
    (lambda: _USER, _VEC, ["count"]),
    (lambda: optax.masked(_USER, _NTParams(True, True)), _VEC, ["count"]),
    (lambda: optax.masked(_USER, _NTParams(False, True)), _VEC, ["count"]),
    (lambda: optax.chain(_USER, optax.adam(0.1)), _VEC, ["count"]),
    (lambda: _LR_TREE, _VEC, ["count"]),
    (lambda: _LR_TREE, {"w": jnp.ones(())}, ["count"]),  # a one-leaf tree
    (lambda: _TREE_COUNT, _VEC, []),
    (lambda: optax.rmsprop(0.1), _VEC, []),
    (lambda: optax.rmsprop(0.1), _SCALAR, []),  # nu is never looked into
    (lambda: optax.lion(0.1), _SCALAR, ["count"]),
    (lambda: optax.amsgrad(0.1), _SCALAR, ["count"]),
    (lambda: optax.sgd(0.1, momentum=0.9), _SCALAR, []),
    (lambda: optax.transforms.partition({"a": _USER}, _NT_A), _VEC, ["count"]),
  ],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_params_shaped_fields_are_not_values(make, params, keys, jit):
  inspect = jax.jit(optaxtra.inspect) if jit else optaxtra.inspect
  info = inspect(make().init(params))
  assert sorted(info) == keys
  assert all(np.shape(v) == () for v in info.values())


# What inspect reports for Optax's and optaxtra's own states besides the rule
# above: nothing is dropped, and the counts of stages that advance together
# (which agree) are one count.
_INNER = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
_HYPER = ["b1", "b2", "bias_correction", "count", "effective_learning_rate"]
_HYPER += ["eps", "eps_root", "learning_rate"]
_INJECT = _IN_MASK = _IN_GROUP = _HYPER
_IN_STEPS = [*_HYPER, "gradient_step", "mini_step"]
_IN_FINITE = [*_HYPER, "last_finite", "notfinite_count", "total_notfinite"]
_LINEAR = optax.linear_schedule(1.0, 0.0, 5)
_ALL_A = {k: "a" for k in SHAPES}  # partition labels: one group


@pytest.mark.parametrize(
  "make, keys",
  [
    (lambda: optax.adamw(_LINEAR), ["count"]),
    (lambda: _tracked_adamax_clipped(0.1, weight_decay=0.2), ALIAS_KEYS),
    (lambda: _INNER, _INJECT),
    (lambda: optax.masked(_INNER, {"w": True, "s": False}), _IN_MASK),
    (lambda: optax.transforms.partition({"a": _INNER}, _ALL_A), _IN_GROUP),
    (lambda: optax.multi_transform({"a": _INNER}, _ALL_A), _IN_GROUP),
    (lambda: optax.MultiSteps(_INNER, 2), _IN_STEPS),
    (lambda: optax.apply_if_finite(_INNER, 2), _IN_FINITE),
  ],
  ids=[
    "adamw",
    "adamax_clipped",
    "inject",
    "masked",
    "partition",
    "multi_transform",
    "multisteps",
    "apply_if_finite",
  ],
)
# Quick: each wrapper kind once (every wrapper holds the injected inner one).
@pytest.mark.sweep(
  quick=["adamax_clipped", "masked", "multi_transform", "multisteps", "apply_if_finite"]
)
def test_own_states_report_as_before(make, keys):
  tx = make()
  _, infos, _ = _run(tx, _params(), ref.spiky_grads(10, SHAPES, 2))
  assert sorted(infos[-1]) == sorted(keys)
  # A state stacked by jax.vmap(tx.init): Optax's and optaxtra's fields are
  # still read, with the stacking axis; mapping inspect gives the same keys.
  stacked = jax.vmap(lambda _: tx.init(_params()))(jnp.arange(2))
  assert sorted(optaxtra.inspect(stacked)) == sorted(keys)
  assert sorted(jax.vmap(optaxtra.inspect)(stacked)) == sorted(keys)
  assert all(np.shape(v) == (2,) for v in optaxtra.inspect(stacked).values())


def test_a_stacked_user_state_is_read_by_mapping_inspect():
  stacked = jax.vmap(lambda _: _USER.init(_VEC))(jnp.arange(2))
  assert optaxtra.inspect(stacked) == {}  # a (2,) count of a user's class
  assert sorted(jax.vmap(optaxtra.inspect)(stacked)) == ["count"]


# --- what is not a state ---------------------------------------------------


def _as_restored(tree):
  """What Orbax restores without a target, built by hand: a NamedTuple becomes
  a dict keyed by field name (an empty one, e.g. EmptyState, None), a tuple a
  list."""
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    if not tree._fields:
      return None
    return {f: _as_restored(getattr(tree, f)) for f in tree._fields}
  if isinstance(tree, tuple | list):
    return [_as_restored(x) for x in tree]
  if isinstance(tree, dict):
    return {k: _as_restored(v) for k, v in tree.items()}
  return tree


_RESTORE_HINT = r"ckptr\.restore\(path, jax\.eval_shape\(lambda: tx\.init\(params\)\)\)"


@pytest.mark.parametrize(
  "make, where",
  [
    (lambda: optax.adam(1e-3), r"'0' has the fields .*\(count, mu, nu\)"),
    (
      lambda: _tracked_adamax_clipped(0.1, weight_decay=0.1),
      "the state itself.*AdamaxClippedState",
    ),
    (lambda: optax.inject_hyperparams(optax.adam)(0.1), "state itself.*Inject"),
    (lambda: optax.masked(optax.adam(0.1), {"w": True, "s": False}), "MaskedState"),
    (lambda: optax.transforms.partition({"a": optax.adam(0.1)}, _ALL_A), "inner_st"),
    (lambda: optax.MultiSteps(optax.adam(0.1), 2), "state itself.*MultiStepsState"),
    (lambda: optax.apply_if_finite(optax.sgd(0.1), 2), "ApplyIfFiniteState"),
    (lambda: optax.sgd(0.1, momentum=0.9), "'0'.*optax.TraceState"),
    (lambda: optaxtra.scale_by_learning_rate(0.1), "ScaleByLearningRateState"),
  ],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_state_restored_without_target_is_refused_with_the_fix(make, where, jit):
  tx = make()
  raw = _as_restored(tx.init(_params()))
  inspect = jax.jit(optaxtra.inspect) if jit else optaxtra.inspect
  for tree in (raw, {"params": _params(), "opt_state": raw}):
    with pytest.raises(ValueError, match=f"without a target.*{_RESTORE_HINT}"):
      inspect(tree)
  with pytest.raises(ValueError, match=where):
    inspect(raw)
  # Restored against a target it is the state again, and inspect reads it.
  target = jax.eval_shape(lambda: tx.init(_params()))
  treedef = jax.tree.structure(target)
  state = jax.tree.unflatten(treedef, jax.tree.leaves(tx.init(_params())))
  assert optaxtra.inspect(state) == optaxtra.inspect(tx.init(_params()))


@pytest.mark.parametrize(
  "state, match",
  [
    (optax.adam, "got the callable 'adam'"),
    (optax.adam(1e-3).init, "got the callable 'chain.<locals>.init_fn'"),
    (optax.adam(1e-3), r"got a GradientTransformation.*tx\.init\(params\)"),
    (jnp.ones(3), r"a single array \(shape \(3,\), dtype float32\)"),
    (jnp.int32(3), r"a single array \(shape \(\), dtype int32\)"),
    ("adam", "got a single str"),
    ({"dense": {"kernel": jnp.ones(2)}}, "no optimizer state in it.*'dense/kernel'"),
    ([jnp.ones(2), {"mu": jnp.ones(2)}], "no optimizer state in it"),  # one field
    ({"w": jnp.ones(2), "s": [jnp.ones(())]}, r"params or the gradients"),
  ],
)
def test_what_is_not_a_state_is_refused(state, match):
  with pytest.raises(TypeError, match=match):
    optaxtra.inspect(state)


@pytest.mark.parametrize(
  "state, want",
  [
    ((), {}),
    (None, {}),
    ({}, {}),
    ([None, {}], {}),  # Orbax's optax.sgd(0.1) state: nothing to read
    ((optax.EmptyState(), optax.EmptyState()), {}),
    ({"opt_state": optax.adam(0.1).init({"w": jnp.ones(2)})}, ["count"]),
    ((optax.EmptyState(), {"w": jnp.ones(2)}), {}),  # a state and the params
  ],
)
def test_empty_and_wrapped_states_compute_right(state, want):
  info = optaxtra.inspect(state)
  assert (sorted(info) if isinstance(want, list) else info) == want


@pytest.mark.heavy
def test_nnx_params_are_not_a_state():
  nnx = need("flax.nnx")
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"no optimizer state in it.*'bias', 'kernel'"):
    optaxtra.inspect(nnx.state(model, nnx.Param))


# --- the TensorBoard example ------------------------------------------------------


def _read_events(directory):
  """(tag, step, value) of every scalar in a directory's TensorBoard event files.

  Event files are TFRecords (length, crc, payload, crc) of ``Event`` protos.
  """
  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.append((v.tag, event.step, v.simple_value))
  return out


@pytest.mark.heavy
def test_tensorboard_example_writes_what_inspect_read(tmp_path):
  for name in ("tensorboardX", "matplotlib", "sklearn"):
    need(name)
  path = pathlib.Path(__file__).parent.parent / "examples" / "tensorboard_logging.py"
  spec = importlib.util.spec_from_file_location("tensorboard_logging", path)
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)

  png = tmp_path / "values.png"
  steps = 12
  histories = example.main(
    ["--steps", str(steps), "--logdir", str(tmp_path / "runs"), "--png", str(png)]
  )
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

  # The schedule the example uses, from its definition (warmup 1 step, cosine).
  def lr(n, peak=3e-3, end=1e-5, warmup=1, total=steps):
    if n < warmup:
      return peak * n / warmup
    return end + (peak - end) * 0.5 * (
      1 + np.cos(np.pi * (n - warmup) / (total - warmup))
    )

  b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
  adam, clipped = histories["adam"], histories["adamax_clipped"]
  for t in range(1, steps + 1):
    np.testing.assert_allclose(
      adam["learning_rate"][t - 1], lr(t - 1), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(
      adam["effective_learning_rate"][t - 1],
      lr(t - 1) * np.sqrt(1 - b2**t) / (1 - b1**t),
      rtol=4e-7 / (1 - b2**t),
      atol=1e-9,
    )
    np.testing.assert_allclose(
      clipped["decay_rate"][t - 1], 1e-2 * lr(t - 1), rtol=1e-5, atol=1e-11
    )
  assert 0 < clipped["clip_fraction"][0] <= 1

  # The plateau run: warmup to a constant, the scale set by hand from step 9
  # (two thirds of 12, plus 1); no epoch (29 steps) is over, so no plateau step.
  plateau = histories["adamax_plateau"]
  for t in range(1, steps + 1):
    scale = 0.5 if t >= 9 else 1.0
    assert plateau["learning_rate_scale"][t - 1] == scale
    np.testing.assert_allclose(
      plateau["learning_rate"][t - 1], scale * 3e-3 * min(t - 1, 1), rtol=1e-6
    )
  assert np.all(plateau["plateau_scale"] == 1)
  assert np.all(np.isfinite(plateau["grad_norm"]) & (plateau["grad_norm"] > 0))

  # Every value was written to TensorBoard, every step, under its name.
  for run, history in histories.items():
    events = _read_events(tmp_path / "runs" / run)
    assert len(events) == steps * len(history)
    for tag, step, value in events:
      key = tag.removeprefix("optimizer/")
      assert history[key][step - 1] == pytest.approx(value, rel=1e-6, abs=1e-12)
  tags = {tag for tag, _, _ in _read_events(tmp_path / "runs" / "adamax_plateau")}
  new = ("learning_rate", "learning_rate_scale", "plateau_scale", "grad_norm")
  assert {f"optimizer/{k}" for k in new} <= tags


# --- a user's state declares what inspect reads --------------------------------


@optaxtra.inspectable(
  values={"count": "count", "gain": "gain"},
  trees=["trace"],
  derive=lambda s: {"gain_per_step": s.gain / jnp.maximum(s.count, 1)},
)
class _DeclaredState(NamedTuple):
  count: jax.Array
  gain: jax.Array
  trace: Any  # params-shaped: its NamedTuple params' "count" is not a counter


def _declared_tx(gain=2.0):
  """A user's transformation: scales by ``gain`` and keeps a trace."""

  def init(params):
    zero = jax.tree.map(jnp.zeros_like, params)
    return _DeclaredState(
      jnp.zeros([], jnp.int32), jnp.asarray(gain, jnp.float32), zero
    )

  def update(updates, state, params=None):
    del params
    trace = jax.tree.map(lambda t, u: 0.5 * t + u, state.trace, updates)
    new = _DeclaredState(optax.safe_increment(state.count), state.gain, trace)
    return jax.tree.map(lambda u: state.gain * u, updates), new

  return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_declared_user_state_reports_its_values_and_derived_ones(jit):
  params = _SCALAR  # NamedTuple params with a scalar field named count
  tx = optax.chain(_declared_tx(), optaxtra.scale_by_learning_rate(0.1))
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  info = (jax.jit(optaxtra.inspect) if jit else optaxtra.inspect)(state)
  assert sorted(info) == [
    "count",
    "gain",
    "gain_per_step",
    "learning_rate",
    "learning_rate_scale",
  ]
  assert int(info["count"]) == 3
  np.testing.assert_allclose(info["gain"], 2.0)
  np.testing.assert_allclose(info["gain_per_step"], 2.0 / 3)
  # Undeclared, the same state would be read by convention: count only, and
  # the trace's params' scalar "count" too (it cannot be told from a counter).
  assert optaxtra.testing.check_transformation(_declared_tx(), _params()) is None


def test_a_declared_stacked_state_reads_with_the_stacking_axis():
  stacked = jax.vmap(lambda _: _declared_tx().init(_params()))(jnp.arange(3))
  info = optaxtra.inspect(stacked)
  assert sorted(info) == ["count", "gain", "gain_per_step"]
  assert all(np.shape(v) == (3,) for v in info.values())


def test_a_declaration_is_checked_when_made():
  class S(NamedTuple):
    count: jax.Array
    mu: Any

  with pytest.raises(ValueError, match=r"S has no field 'nu'.*\['count', 'mu'\]"):
    optaxtra.inspectable(values=["count"], trees=["nu"])(S)
  with pytest.raises(ValueError, match=r"'mu' of S is listed twice"):
    optaxtra.inspectable(values=["mu"], trees=["mu"])(S)
  with pytest.raises(TypeError, match=r"write values=\['count'\]"):
    optaxtra.inspectable(values="count")
  with pytest.raises(TypeError, match="not a NamedTuple or dataclass"):
    optaxtra.inspectable(values=["count"])(dict)
  with pytest.raises(TypeError, match="derive must be a function"):
    optaxtra.inspectable(derive=3)


def test_check_transformation_checks_what_a_state_declares():
  @optaxtra.inspectable(values=["count", "trace"])  # trace is params-shaped
  class Wrong(NamedTuple):
    count: jax.Array
    trace: Any

  def init(params):
    return Wrong(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    return updates, Wrong(optax.safe_increment(state.count), state.trace)

  tx = optax.GradientTransformation(init, update)
  with pytest.raises(
    AssertionError, match=r"declares 'trace' a value.*float32\[2\].*trees=\[\.\.\.\]"
  ):
    optaxtra.testing.check_transformation(tx, {"w": jnp.ones(2)})

  @optaxtra.inspectable(values=["count"], derive=lambda s: {"half": s.trace})
  class BadDerive(NamedTuple):
    count: jax.Array
    trace: Any

  def init2(params):
    return BadDerive(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update2(updates, state, params=None):
    del params
    return updates, BadDerive(optax.safe_increment(state.count), state.trace)

  tx = optax.GradientTransformation(init2, update2)
  with pytest.raises(AssertionError, match=r"derive returned 'half'"):
    optaxtra.testing.check_transformation(tx, {"w": jnp.ones(2)})


# --- one count, the building blocks read as the alias, values by path -----------


def _blocks_and_alias(bias_correction):
  sched = optax.linear_schedule(1e-2, 1e-3, 10)
  chain = optax.chain(
    optaxtra.scale_by_adamax_clipped(bias_correction=bias_correction),
    optaxtra.scale_by_learning_rate(sched),
    optaxtra.add_decayed_weights_decoupled(0.05, schedule=sched),
  )
  alias = optaxtra.adamax_clipped(
    sched, weight_decay=0.05, bias_correction=bias_correction
  )
  return chain, alias


@pytest.mark.parametrize("bias_correction", [False, True], ids=["plain", "corrected"])
def test_the_chain_of_building_blocks_reads_as_the_alias(bias_correction):
  params = {"w": jnp.array([1.0, -2.0]), "s": jnp.array(0.5)}
  chain, alias = _blocks_and_alias(bias_correction)
  states = [chain.init(params), alias.init(params)]
  for k in range(3):
    if k:  # before the first update, then after each of two
      g = jax.tree.map(lambda p, k=k: k * p, params)
      pairs = zip((chain, alias), states, strict=True)
      states = [tx.update(g, s, params)[1] for tx, s in pairs]
    got, want = (optaxtra.inspect(s) for s in states)
    assert sorted(got) == sorted(want)  # key for key: one count, no 1/count
    for key in want:  # value for value: the same kernels, to the bit
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert sorted(jax.jit(optaxtra.inspect)(states[0])) == sorted(want)
  assert ("bias_correction" in want) == bias_correction  # none while it is off
  assert {"count", "weight_decay", "decay_rate", "effective_learning_rate"} <= set(got)
  np.testing.assert_allclose(got["weight_decay"], 0.05)  # the coefficient
  np.testing.assert_allclose(got["decay_rate"], 0.05 * got["learning_rate"])
  assert int(got["count"]) == 2


def _chain_with_a_skipping_wrapper():
  """record_norm outside optax.apply_if_finite: its count goes on when the
  wrapped stages skip a step."""
  inner = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(0.1))
  return optax.chain(
    optax.apply_if_finite(inner, max_consecutive_errors=3), optaxtra.record_norm()
  )


def test_counts_that_advance_apart_keep_their_paths():
  tx = _chain_with_a_skipping_wrapper()
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in (jnp.ones(2), jnp.array([1.0, jnp.nan])):
    _, state = step({"w": g}, state, params)
  for info in (optaxtra.inspect(state), jax.jit(optaxtra.inspect)(state)):
    # The outermost count (record_norm's) is "count"; the wrapped chain's two
    # counts advance together and are reported once, under the wrapper's field.
    counts = sorted(k for k in info if k.endswith("count"))
    assert counts == ["0/inner_state/count", "count", "notfinite_count"]
    assert int(info["count"]) == 2 and int(info["0/inner_state/count"]) == 1


def test_counts_that_disagree_are_never_merged():
  tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(0.1))
  state = tx.init({"w": jnp.ones(2)})
  # As a state carried from another run with one stage new can be.
  state = (state[0]._replace(count=jnp.int32(7)), state[1])
  info = optaxtra.inspect(state)  # concrete: each under its path
  assert int(info["count"]) == 7 and int(info["1/count"]) == 0
  traced = jax.jit(optaxtra.inspect)(state)  # traced: one count, and it says so
  assert "1/count" not in traced
  assert int(traced["count"]) == optaxtra._introspect.inspect.DISAGREE == -1
  agreeing = (state[0], state[1]._replace(count=jnp.int32(7)))
  assert int(jax.jit(optaxtra.inspect)(agreeing)["count"]) == 7


@optaxtra.inspectable(values=["count", "learning_rate", "bias_correction"])
class _ByRuleState(NamedTuple):
  count: jax.Array
  learning_rate: Any  # {"[<pattern>]": value, "[default]": value}
  bias_correction: Any


@optaxtra.inspectable(values=["count"], counts_apart=["count"])
class _CycleState(NamedTuple):
  count: jax.Array  # counts something else than updates


def test_values_by_path_are_one_key_per_rule_under_jit():
  lr = {"[^head/]": jnp.float32(0.1), "[default]": jnp.float32(0.01)}
  state = (_ByRuleState(jnp.int32(3), lr, jnp.float32(2.0)), _CycleState(jnp.int32(1)))

  def keys_and_values(state):
    return optaxtra.inspect(state)

  info = jax.jit(keys_and_values)(state)
  assert sorted(info) == [
    "1/count",  # counts_apart: never merged into the optimizer's count
    "bias_correction",
    "count",
    "effective_learning_rate[^head/]",
    "effective_learning_rate[default]",
    "learning_rate[^head/]",
    "learning_rate[default]",
  ]
  np.testing.assert_allclose(info["learning_rate[^head/]"], 0.1)
  np.testing.assert_allclose(info["effective_learning_rate[default]"], 0.02)
  # A correction that is off (None) is no key, and leaves the rates as they are.
  off = optaxtra.inspect(_ByRuleState(jnp.int32(3), lr, None))
  assert "bias_correction" not in off
  assert off["effective_learning_rate[^head/]"] is off["learning_rate[^head/]"]
  # Built by optaxtra's own stage: the same keys.
  tx = optax.chain(
    optaxtra.scale_by_adam(),
    optaxtra.scale_by_learning_rate(optaxtra.by_path({"^head/": 1e-2}, default=1e-3)),
  )
  params = {"head": {"w": jnp.ones(2)}, "body": {"w": jnp.ones(2)}}
  state = tx.init(params)
  _, state = jax.jit(tx.update)(params, state, params)
  info = jax.jit(optaxtra.inspect)(state)
  np.testing.assert_allclose(info["learning_rate[^head/]"], 1e-2)
  np.testing.assert_allclose(info["learning_rate[default]"], 1e-3)
  assert "effective_learning_rate[^head/]" in info and "learning_rate" not in info


def test_a_derive_that_returns_no_mapping_is_named():
  @optaxtra.inspectable(values=["count"], derive=lambda s: [s.count])
  class ListDerive(NamedTuple):
    count: jax.Array

  with pytest.raises(TypeError, match=r"derive function .* declared for .*ListDerive"):
    optaxtra.inspect(ListDerive(jnp.int32(0)))

  @optaxtra.inspectable(values=["count"], derive=lambda s: {"x": "text"})
  class TextDerive(NamedTuple):
    count: jax.Array

  with pytest.raises(TypeError, match=r"TextDerive.* returned 'x': str"):
    optaxtra.inspect(TextDerive(jnp.int32(0)))
  with pytest.raises(ValueError, match=r"has no field 'inner' \(in counts_apart\)"):
    optaxtra.inspectable(counts_apart=["inner"])(TextDerive)
