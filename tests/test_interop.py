"""Carrying a run across frameworks: optaxtra.interop against live PyTorch, Keras, TF1.

Each continuation test trains a small two-layer perceptron for ``STEPS`` steps
in one framework, moves the optimizer state, trains ``STEPS`` more on both
sides (each framework computing its own gradients from its own parameters)
and compares the parameters:

* PyTorch, float64 (``x64``): the two runs compute the same formulas in
  double precision, so they agree to ``1e-12`` relative (measured: a few
  1e-16), both ways (``from_torch`` and ``to_torch``).
* Keras 3 and TF1, float32: see ``_float32_bound`` for the ulp bound.

The refusals are checked on synthetic state dicts as well (NumPy arrays in
torch's format), so the core suite runs them without PyTorch.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra
from optaxtra import interop

STEPS = 20
LR = 1e-2
RTOL64 = 1e-12
PATHS = ["l1/kernel", "l1/bias", "l2/kernel", "l2/bias"]
KERNELS_FIRST = ["l1/kernel", "l2/kernel", "l1/bias", "l2/bias"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --- The problem, in every framework -------------------------------------------------


def _data(dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return rng.normal(size=(16, 4)).astype(dtype), rng.normal(size=(16, 2)).astype(dtype)


def _init(dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Initial params in the Dense layout (kernel ``(in, out)``)."""
  rng = np.random.default_rng(1)
  return {
    "l1/kernel": (0.5 * rng.normal(size=(4, 3))).astype(dtype),
    "l1/bias": (0.1 * rng.normal(size=3)).astype(dtype),
    "l2/kernel": (0.5 * rng.normal(size=(3, 2))).astype(dtype),
    "l2/bias": (0.1 * rng.normal(size=2)).astype(dtype),
  }


def _tree(flat: dict[str, Any]) -> dict[str, dict[str, jax.Array]]:
  out: dict[str, dict[str, jax.Array]] = {}
  for path, x in flat.items():
    layer, name = path.split("/")
    out.setdefault(layer, {})[name] = jnp.asarray(x)
  return out


def _flat(tree: Any) -> dict[str, np.ndarray]:
  return {f"{k}/{n}": np.asarray(v) for k, d in tree.items() for n, v in d.items()}


def _loss(p, x, y):
  h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
  return jnp.mean((h @ p["l2"]["kernel"] + p["l2"]["bias"] - y) ** 2)


def _jax_train(tx, state, params, steps, dtype=np.float32):
  x, y = (jnp.asarray(a) for a in _data(dtype))

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(_loss)(p, x, y), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


class TorchNet:
  """The perceptron in PyTorch: ``named`` maps our paths to torch parameters."""

  def __init__(self, torch, dtype, start: dict[str, np.ndarray] | None = None):
    self.torch = torch
    start = _init(np.float64) if start is None else start
    self.named = {
      p: torch.nn.Parameter(torch.tensor(interop.transpose_linear(p, v)).to(dtype))
      for p, v in start.items()
    }
    x, y = _data(np.float64)
    self.x, self.y = torch.tensor(x).to(dtype), torch.tensor(y).to(dtype)

  def loss(self):
    n = self.named
    h = self.torch.tanh(self.x @ n["l1/kernel"].T + n["l1/bias"])
    return ((h @ n["l2/kernel"].T + n["l2/bias"] - self.y) ** 2).mean()

  def train(self, opt, steps, scheduler=None):
    for _ in range(steps):
      opt.zero_grad()
      self.loss().backward()
      opt.step()
      if scheduler is not None:
        scheduler.step()

  def params(self):
    flat = {
      p: interop.transpose_linear(p, v.detach().numpy()) for p, v in self.named.items()
    }
    return _tree(flat)


def _assert_rel(got: Any, want: Any, rtol: float) -> float:
  """Max over leaves of ``max|got - want| / max|want|``; asserted below rtol."""
  worst = 0.0
  for path, w in _flat(want).items():
    g = _flat(got)[path]
    rel = float(np.max(np.abs(g.astype(np.float64) - w)) / np.max(np.abs(w)))
    assert rel <= rtol, f"{path}: relative difference {rel:.3g} > {rtol:g}"
    worst = max(worst, rel)
  return worst


def _counts(state) -> list[int]:
  out = []

  def leaf(path, x):
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name in (
      "count",
      "gradient_step",
    ):
      out.append(int(x))
    return x

  jax.tree_util.tree_map_with_path(leaf, state)
  return out


# --- PyTorch: the cases ---------------------------------------------------------------


def _is_kernel(params):
  return jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key == "kernel", params)


def _is_bias(params):
  return jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key == "bias", params)


def _adamw_groups(torch, named, lr=LR):
  groups = [
    {"params": [named[p] for p in KERNELS_FIRST[:2]], "weight_decay": 0.1},
    {"params": [named[p] for p in KERNELS_FIRST[2:]], "weight_decay": 0.01},
  ]
  return torch.optim.AdamW(groups, lr=lr), KERNELS_FIRST


def _exponential(torch, opt):
  return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)


def _exponential_decay(lr):
  """torch's ExponentialLR(gamma=0.95), in float64 under x64.

  (optax.exponential_decay computes in float32 even under x64: 3e-7 off.)
  """
  return lambda count: lr * 0.95 ** jnp.asarray(count, jnp.result_type(float))


def _optaxtra_adamw():
  adamw = getattr(optaxtra, "adamw", None)
  if adamw is None:
    pytest.skip("optaxtra.adamw is not there yet")
  return adamw(LR, weight_decay=optaxtra.by_path({"kernel$": 0.1, "bias$": 0.01}))


# name -> (torch optimizer (torch, named) -> (opt, order), scheduler or None,
#          tx factory, whether from_torch needs count=)
TORCH_CASES: dict[str, tuple[Callable, Callable | None, Callable, bool]] = {
  "adamw-groups-optax": (
    _adamw_groups,
    None,
    lambda: optax.chain(
      optax.scale_by_adam(),
      optax.add_decayed_weights(0.1, _is_kernel),
      optax.add_decayed_weights(0.01, _is_bias),
      optax.scale_by_learning_rate(LR),
    ),
    False,
  ),
  "adamw-groups-optaxtra": (
    _adamw_groups,
    None,
    lambda: optax.chain(  # the decoupled decay goes after the learning rate
      optaxtra.scale_by_adam(),
      optaxtra.scale_by_learning_rate(LR),
      optaxtra.add_decayed_weights_decoupled(
        optaxtra.by_path({"kernel$": 0.1, "bias$": 0.01}), schedule=LR
      ),
    ),
    False,
  ),
  "adamw-groups-optaxtra.adamw": (_adamw_groups, None, _optaxtra_adamw, False),
  "adam-optax": (
    lambda torch, n: (torch.optim.Adam([n[p] for p in PATHS], lr=LR), PATHS),
    None,
    lambda: optax.adam(LR),
    False,
  ),
  "adam-optaxtra": (
    lambda torch, n: (torch.optim.Adam([n[p] for p in PATHS], lr=LR), PATHS),
    None,
    lambda: optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(LR)),
    False,
  ),
  "adam-l2": (
    lambda torch, n: (
      torch.optim.Adam([n[p] for p in PATHS], lr=LR, weight_decay=1e-2),
      PATHS,
    ),
    None,
    lambda: optax.chain(optax.add_decayed_weights(1e-2), optax.adam(LR)),
    False,
  ),
  "adam-schedule": (
    lambda torch, n: (torch.optim.Adam([n[p] for p in PATHS], lr=LR), PATHS),
    _exponential,
    lambda: optax.adam(_exponential_decay(LR)),
    False,
  ),
  "adamax": (
    lambda torch, n: (torch.optim.Adamax([n[p] for p in PATHS], lr=LR), PATHS),
    None,
    lambda: optax.adamax(LR),
    False,
  ),
  "sgd-momentum": (
    lambda torch, n: (
      torch.optim.SGD([n[p] for p in PATHS], lr=0.1, momentum=0.9),
      PATHS,
    ),
    None,
    lambda: optax.sgd(0.1, momentum=0.9),
    False,
  ),
  "sgd-nesterov": (
    lambda torch, n: (
      torch.optim.SGD([n[p] for p in PATHS], lr=0.1, momentum=0.9, nesterov=True),
      PATHS,
    ),
    None,
    lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    False,
  ),
  "sgd-schedule": (
    lambda torch, n: (
      torch.optim.SGD([n[p] for p in PATHS], lr=0.1, momentum=0.9),
      PATHS,
    ),
    _exponential,
    lambda: optax.sgd(_exponential_decay(0.1), momentum=0.9),
    True,
  ),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_from_torch_continues_the_run(torch, x64, case):
  """20 torch steps, the state moved, 20 more on both sides: equal to 1e-12."""
  make_opt, make_sched, make_tx, needs_count = TORCH_CASES[case]
  tx = make_tx()
  net = TorchNet(torch, torch.float64)
  opt, order = make_opt(torch, net.named)
  sched = make_sched(torch, opt) if make_sched else None
  net.train(opt, STEPS, sched)
  params = net.params()
  state = interop.from_torch(
    tx,
    params,
    opt.state_dict(),
    paths=order,
    convert=interop.transpose_linear,
    count=STEPS if needs_count else None,
  )
  assert all(c == STEPS for c in _counts(state))
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
  # The moments are torch's, exactly (float64 both sides).
  held = interop._common.read_slots(state)
  names = {
    "exp_avg": "m1",
    "exp_avg_sq": "m2",
    "exp_inf": "m2",
    "momentum_buffer": "trace",
  }
  for path, p in net.named.items():
    for key, value in opt.state[p].items():
      if key in names:
        want = interop.transpose_linear(path, value.numpy())
        np.testing.assert_array_equal(np.asarray(held[path][names[key]][0][1]), want)
  net.train(opt, STEPS, sched)
  params, _ = _jax_train(tx, state, params, STEPS, np.float64)
  _assert_rel(params, net.params(), RTOL64)


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_to_torch_continues_the_run(torch, x64, case):
  """20 steps in optax, the state moved into torch, 20 more: equal to 1e-12."""
  make_opt, make_sched, make_tx, _ = TORCH_CASES[case]
  tx = make_tx()
  params = _tree(_init(np.float64))
  params, state = _jax_train(tx, tx.init(params), params, STEPS, np.float64)
  net = TorchNet(torch, torch.float64, start=_flat(params))
  opt, order = make_opt(torch, net.named)
  sched = None
  if make_sched is not None:  # torch resumes its schedule at step 20 too
    for g in opt.param_groups:
      g["lr"] *= 0.95**STEPS
    sched = make_sched(torch, opt)
  interop.to_torch(tx, state, opt, paths=order, convert=interop.transpose_linear)
  net.train(opt, STEPS, sched)
  params, _ = _jax_train(tx, state, params, STEPS, np.float64)
  _assert_rel(params, net.params(), RTOL64)


def test_round_trip_is_exact(torch):
  """from_torch(to_torch(state)) gives the same arrays, bit for bit (float32)."""
  tx = optax.adamw(LR, weight_decay=1e-2)
  params = _tree(_init())
  params, state = _jax_train(tx, tx.init(params), params, 5)
  net = TorchNet(torch, torch.float32, start=_flat(params))
  opt = torch.optim.AdamW([net.named[p] for p in PATHS], lr=LR, weight_decay=1e-2)
  interop.to_torch(tx, state, opt, paths=PATHS, convert=interop.transpose_linear)
  again = interop.from_torch(
    tx, params, opt.state_dict(), paths=PATHS, convert=interop.transpose_linear
  )
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_to_torch_refusals(torch):
  tx = optax.adamw(LR, weight_decay=1e-2)
  params = _tree(_init())
  params, state = _jax_train(tx, tx.init(params), params, 3)
  net = TorchNet(torch, torch.float32, start=_flat(params))
  opt = torch.optim.AdamW([net.named[p] for p in PATHS], lr=2 * LR, weight_decay=1e-2)
  kw = {"paths": PATHS, "convert": interop.transpose_linear}
  with pytest.raises(ValueError, match=r"to_torch: torch.optim.AdamW's lr is 0.02"):
    interop.to_torch(tx, state, opt, **kw)
  opt = torch.optim.AdamW([net.named[p] for p in PATHS], lr=LR, weight_decay=1e-2)
  with pytest.raises(ValueError, match=r"opt_state is not a state of tx"):
    interop.to_torch(optax.sgd(LR), state, opt, **kw)
  with pytest.raises(ValueError, match=r"has shape \(4, 3\) \(after convert\)"):
    interop.to_torch(tx, state, opt, paths=PATHS)
  with pytest.raises(ValueError, match=r"paths names 3 parameters"):
    interop.to_torch(tx, state, opt, paths=PATHS[:3])
  with pytest.raises(ValueError, match=r"'l9/kernel'.* but opt_state's moments are"):
    interop.to_torch(tx, state, opt, paths=["l9/kernel", *PATHS[1:]], convert=None)
  with pytest.raises(TypeError, match=r"torch.optim.Optimizer"):
    interop.to_torch(tx, state, object(), **kw)
  assert not opt.state_dict()["state"]  # nothing loaded by a refused call


def test_to_torch_before_any_step(torch):
  """A fresh state leaves torch's state empty, as torch starts it lazily."""
  tx = optax.adam(LR)
  params = _tree(_init())
  net = TorchNet(torch, torch.float32, start=_flat(params))
  opt = torch.optim.Adam([net.named[p] for p in PATHS], lr=LR)
  interop.to_torch(
    tx, tx.init(params), opt, paths=PATHS, convert=interop.transpose_linear
  )
  assert not opt.state_dict()["state"]


def test_inject_hyperparams_and_multisteps(torch, x64):
  """Counts inside inject_hyperparams and MultiSteps are set; the run continues."""
  tx = optax.MultiSteps(
    optax.inject_hyperparams(optax.adam)(learning_rate=_exponential_decay(LR)),
    every_k_schedule=1,
  )
  net = TorchNet(torch, torch.float64)
  opt = torch.optim.Adam([net.named[p] for p in PATHS], lr=LR)
  sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)
  net.train(opt, STEPS, sched)
  params = net.params()
  state = interop.from_torch(
    tx, params, opt.state_dict(), paths=PATHS, convert=interop.transpose_linear
  )
  # MultiSteps' gradient_step, inject_hyperparams', Adam's, the schedule's.
  assert _counts(state) == [STEPS] * 4
  assert int(state.mini_step) == 0
  # The recorded learning rate is the one torch's last step used.
  lr = float(state.inner_opt_state.hyperparams["learning_rate"])
  np.testing.assert_allclose(lr, LR * 0.95 ** (STEPS - 1), rtol=1e-12)
  net.train(opt, STEPS, sched)
  params, _ = _jax_train(tx, state, params, STEPS, np.float64)
  _assert_rel(params, net.params(), RTOL64)


def test_recorded_values_describe_the_last_step(torch):
  """inspect after from_torch reports torch's last step (count, lr, alpha_t)."""
  net = TorchNet(torch, torch.float32)
  opt = torch.optim.Adam([net.named[p] for p in PATHS], lr=LR)
  net.train(opt, STEPS)
  tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(LR))
  state = interop.from_torch(
    tx, net.params(), opt.state_dict(), paths=PATHS, convert=interop.transpose_linear
  )
  info = optaxtra.inspect(state)
  assert int(info["count"]) == STEPS
  alpha = math.sqrt(1 - 0.999**STEPS) / (1 - 0.9**STEPS)
  # float32: 1 - b2**t from the float32 b2 (0.99900001...) is 6e-6 off at t = 20.
  np.testing.assert_allclose(float(info["bias_correction"]), alpha, rtol=2e-5)
  np.testing.assert_allclose(float(info["learning_rate"]), LR, rtol=1e-6)


# --- Refusals, named ------------------------------------------------------------------


def _adam_state_dict(step=3.0, **group):
  """A torch Adam/AdamW state dict, written out with NumPy arrays."""
  rng = np.random.default_rng(2)
  flat = _init()
  state = {
    i: {
      "step": step,
      "exp_avg": interop.transpose_linear(p, 0.1 * rng.normal(size=flat[p].shape)),
      "exp_avg_sq": interop.transpose_linear(p, 0.01 * rng.random(flat[p].shape)),
    }
    for i, p in enumerate(PATHS)
  }
  g = {
    "lr": LR,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.01,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": True,
    "params": [0, 1, 2, 3],
  }
  g.update(group)
  return {"state": state, "param_groups": [g]}


def _from(tx, sd, **kw):
  kw.setdefault("convert", interop.transpose_linear)
  kw.setdefault("paths", PATHS)
  return interop.from_torch(tx, _tree(_init()), sd, **kw)


def test_synthetic_state_dict_is_read():
  state = _from(optax.adamw(LR, weight_decay=0.01), _adam_state_dict())
  assert int(state[0].count) == 3
  sd = _adam_state_dict()
  np.testing.assert_allclose(
    state[0].mu["l1"]["kernel"], sd["state"][0]["exp_avg"].T, rtol=1e-7
  )


@pytest.mark.parametrize(
  ("tx", "group", "match"),
  [
    (
      optax.adamw(LR, b1=0.8, weight_decay=0.01),
      {},
      r"betas\[0\] is 0.9 in param group 0 \(4 parameters\), but for 'l1/kernel' tx "
      r"uses b1=0.8",
    ),
    (optax.adamw(LR, b2=0.99, weight_decay=0.01), {}, r"betas\[1\] is 0.999.*b2=0.99"),
    (optax.adamw(LR, eps=1e-6, weight_decay=0.01), {}, r"eps is 1e-08.*eps=1e-06"),
    (
      optax.adamw(LR, weight_decay=0.1),
      {},
      r"weight_decay is 0.01 .* decays it by lr \* 0.1 \* p \(decoupled\)",
    ),
    (
      optax.chain(optax.add_decayed_weights(0.01), optax.adam(LR)),
      {},
      r"weight_decay is 0.01 .*0.01 added to the gradient \(coupled\)",
    ),
    (
      optax.adamw(2 * LR, weight_decay=0.01),
      {},
      r"'s lr is 0.01 .*learning rate 0.0199",
    ),
    (optax.adamw(LR, weight_decay=0.01), {"amsgrad": True}, r"amsgrad is True"),
    (
      optax.adamw(LR, weight_decay=0.01),
      {"maximize": True},
      r"maximize is True.*moves the other way",
    ),
    (
      optax.chain(
        optaxtra.scale_by_adam(epsilon_hat=True),
        optax.add_decayed_weights(0.01),
        optaxtra.scale_by_learning_rate(LR),
      ),
      {},
      r"eps is 1e-08.*outside the bias correction.*epsilon_hat=False",
    ),
    (optax.sgd(LR), {}, r"keeps no first moment \(mu\) for 'l1/kernel'"),
    (
      optax.chain(optax.scale_by_amsgrad(), optax.scale_by_learning_rate(LR)),
      {},
      r"ScaleByAmsgradState",
    ),
  ],
  ids=[
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "coupled",
    "lr",
    "amsgrad",
    "maximize",
    "epsilon_hat",
    "no-moments",
    "other-moments",
  ],
)
def test_refuses_a_disagreeing_hyperparameter(tx, group, match):
  with pytest.raises(ValueError, match=match):
    _from(tx, _adam_state_dict(**group))


def test_refuses_per_group_disagreement():
  sd = _adam_state_dict()
  g0 = dict(sd["param_groups"][0], params=[0, 2])
  g1 = dict(sd["param_groups"][0], params=[1, 3], weight_decay=0.0)
  sd["param_groups"] = [g0, g1]
  order = ["l1/kernel", "l2/kernel", "l1/bias", "l2/bias"]
  with pytest.raises(
    ValueError, match=r"weight_decay is 0.0 in param group 1.*'l1/bias'"
  ):
    _from(optax.adamw(LR, weight_decay=0.01), sd, paths=order)
  tx = optax.adamw(LR, weight_decay=0.01, mask=_is_kernel)
  state = _from(tx, sd, paths=order)
  assert int(state[0].count) == 3


def test_refuses_shape_and_paths():
  tx = optax.adamw(LR, weight_decay=0.01)
  with pytest.raises(
    ValueError, match=r"exp_avg of 'l1/kernel' has shape \(3, 4\).*convert="
  ):
    _from(tx, _adam_state_dict(), convert=None)
  with pytest.raises(ValueError, match=r"paths names 3 parameters but .* has 4"):
    _from(tx, _adam_state_dict(), paths=PATHS[:3])
  with pytest.raises(ValueError, match=r"'l9/kernel', not a path of params"):
    _from(tx, _adam_state_dict(), paths=["l9/kernel", *PATHS[1:]])
  with pytest.raises(ValueError, match=r"more than once"):
    _from(tx, _adam_state_dict(), paths=[PATHS[0], *PATHS[:3]])
  with pytest.raises(TypeError, match=r"paths must be a list"):
    _from(tx, _adam_state_dict(), paths="l1/kernel")


def test_refuses_parameters_at_different_steps():
  sd = _adam_state_dict()
  sd["state"][2]["step"] = 2.0
  with pytest.raises(
    ValueError, match=r"different steps \(step 2: 'l2/kernel'; step 3"
  ):
    _from(optax.adamw(LR, weight_decay=0.01), sd)
  del sd["state"][2]
  with pytest.raises(ValueError, match=r"no state for 'l2/kernel'"):
    _from(optax.adamw(LR, weight_decay=0.01), sd)


def test_refuses_an_old_state_dict_that_does_not_say_decoupled():
  sd = _adam_state_dict()
  del sd["param_groups"][0]["decoupled_weight_decay"]
  with pytest.raises(ValueError, match=r"does not say whether the decay is decoupled"):
    _from(optax.adamw(LR, weight_decay=0.01), sd)


def _sgd_state_dict(momentum=0.9, **group):
  rng = np.random.default_rng(3)
  flat = _init()
  g = {
    "lr": 0.1,
    "momentum": momentum,
    "dampening": 0,
    "weight_decay": 0,
    "nesterov": False,
    "maximize": False,
    "foreach": None,
    "differentiable": False,
    "fused": None,
    "params": [0, 1, 2, 3],
  }
  g.update(group)
  state = {
    i: {"momentum_buffer": interop.transpose_linear(p, rng.normal(size=flat[p].shape))}
    for i, p in enumerate(PATHS)
  }
  return {"state": state if momentum else {}, "param_groups": [g]}


@pytest.mark.parametrize(
  ("tx", "group", "match"),
  [
    (optax.sgd(0.1, 0.9, nesterov=True), {}, r"nesterov is False.*Nesterov momentum"),
    (optax.sgd(0.1, 0.9), {"nesterov": True}, r"nesterov is True.*plain momentum"),
    (optax.sgd(0.1, 0.8), {}, r"momentum is 0.9.*momentum 0.8"),
    (optax.sgd(0.1, 0.9), {"dampening": 0.1}, r"dampening is 0.1"),
    (optax.sgd(0.1, 0.9), {"maximize": True}, r"maximize is True"),
    (optax.sgd(0.1, 0.9), {"weight_decay": 1e-3}, r"weight_decay is 0.001"),
    (optax.sgd(0.2, 0.9), {}, r"lr is 0.1.*learning rate 0.2"),
    (optax.adam(0.1), {}, r"keeps a first moment \(mu\) for 'l1/bias'.*does not have"),
  ],
  ids=[
    "nesterov",
    "not-nesterov",
    "momentum",
    "dampening",
    "maximize",
    "wd",
    "lr",
    "adam",
  ],
)
def test_sgd_refusals(tx, group, match):
  with pytest.raises(ValueError, match=match):
    _from(tx, _sgd_state_dict(**group))


def test_sgd_count():
  """torch's SGD records no step: a tx with a schedule asks for count=."""
  tx = optax.sgd(optax.exponential_decay(0.1, 1, 0.95), 0.9)
  with pytest.raises(ValueError, match=r"pass count="):
    _from(tx, _sgd_state_dict())
  sd = _sgd_state_dict(lr=0.1 * 0.95**7)
  assert _counts(_from(tx, sd, count=7)) == [7]
  with pytest.raises(ValueError, match=r"learning rate"):
    _from(tx, sd, count=8)  # the schedule says 0.1 * 0.95**8 at count 8
  # Without momentum torch keeps nothing; optax.sgd keeps nothing either.
  state = _from(optax.sgd(0.1), _sgd_state_dict(momentum=0))
  assert not jax.tree.leaves(state)


def test_adamax_refuses_epsilon_in_the_denominator():
  """torch's Adamax puts eps inside the max, as optax.adamax; optaxtra's not."""
  sd = _adam_state_dict()
  for s in sd["state"].values():
    s["exp_inf"] = np.abs(s.pop("exp_avg_sq")) + 1e-3
  g = sd["param_groups"][0]
  for k in ("amsgrad", "decoupled_weight_decay", "fused"):
    del g[k]
  g["weight_decay"] = 0
  _from(optax.adamax(LR), sd)
  tx = optax.chain(
    optaxtra.scale_by_adamax_clipped(clip=False, bias_correction=True),
    optaxtra.scale_by_learning_rate(LR),
  )
  with pytest.raises(ValueError, match=r"eps is 1e-08.*inside the running max.*optax"):
    _from(tx, sd)


def test_refuses_another_optimizer():
  sd = _adam_state_dict()
  sd["param_groups"][0]["momentum_decay"] = 4e-3  # NAdam's
  with pytest.raises(TypeError, match=r"not one of torch.optim.Adam, AdamW"):
    _from(optax.adam(LR), sd)
  with pytest.raises(TypeError, match=r"state_dict must be"):
    _from(optax.adam(LR), {"state": {}})


def test_the_frameworks_are_imported_only_inside_the_functions():
  """No module of optaxtra.interop imports torch, TensorFlow or Keras at its top."""
  heavy = {"torch", "tensorflow", "keras"}
  for path in Path(interop.__file__).parent.glob("*.py"):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:  # module level only
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
      for name in names:
        assert name.split(".")[0] not in heavy, f"{path.name} imports {name}"


# --- Keras 3 and TF1 (float32) --------------------------------------------------------


def _float32_bound(params_start: Any, updates_scale: float, steps: int) -> float:
  """The difference allowed between two float32 continuations, per leaf.

  Two frameworks computing the same optimizer in float32 from the same state
  differ, at each continued step, by (a) the rounding of ``p + u``: at most
  one ulp of the params' largest entry between the two; (b) the update itself:
  Keras and TF1 take ``1 - b2**t`` from a float32 power, which cancels (at
  ``t`` of 21 to 40 with ``b2 = 0.999``, ``1 - b2**t`` is 0.02 to 0.04, so the
  rounding of ``b2**t`` is 3e-6 of it, and 1.5e-6 after the square root);
  their moments are ``m + (g - m) * (1 - b1)`` where optaxtra writes
  ``b1 * m + (1 - b1) * g``, and their gradients come from another program
  (a few ulps each). Together under ``2**-17`` (7.6e-6) of the update, whose
  size is at most ``updates_scale``. Over ``steps`` steps these add up; the
  feedback through the gradients is of second order.
  """
  largest = max(float(np.max(np.abs(v))) for v in jax.tree.leaves(params_start))
  ulp = float(np.spacing(np.float32(largest)))  # of the params' largest entry
  return steps * (ulp + updates_scale * 2.0**-17)


def _assert_within(got: Any, want: Any, bound: float, what: str) -> float:
  worst = 0.0
  for path, w in _flat(want).items():
    g = _flat(got)[path]
    diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
    assert diff <= bound, f"{what} {path}: {diff:.3g} > {bound:.3g}"
    worst = max(worst, diff / bound)
  return worst


class KerasNet:
  def __init__(self, keras, tf):
    self.tf = tf
    keras.utils.set_random_seed(0)
    start = _init()
    self.vars = [keras.Variable(start[p], name=p.replace("/", "_")) for p in PATHS]
    self.x, self.y = (tf.constant(a) for a in _data())

  def loss(self):
    tf = self.tf
    k1, b1, k2, b2 = self.vars
    h = tf.tanh(tf.matmul(self.x, k1) + b1)
    return tf.reduce_mean(tf.square(tf.matmul(h, k2) + b2 - self.y))

  def train(self, opt, steps):
    for _ in range(steps):
      with self.tf.GradientTape() as tape:
        loss = self.loss()
      grads = tape.gradient(loss, self.vars)
      opt.apply_gradients(zip(grads, self.vars, strict=True))

  def params(self):
    return _tree(
      {p: np.asarray(v.numpy()) for p, v in zip(PATHS, self.vars, strict=True)}
    )


KERAS_CASES = {
  "adam": (
    lambda keras: keras.optimizers.Adam(LR),
    lambda: optax.chain(
      optaxtra.scale_by_adam(eps=1e-7, epsilon_hat=True),
      optaxtra.scale_by_learning_rate(LR),
    ),
  ),
  "adam-alpha_t-schedule": (
    lambda keras: keras.optimizers.Adam(LR),
    lambda: optax.chain(
      optaxtra.scale_by_adam(eps=1e-7, bias_correction=False),
      optaxtra.scale_by_learning_rate(
        lambda t: LR * jnp.sqrt(1 - 0.999 ** (t + 1)) / (1 - 0.9 ** (t + 1))
      ),
    ),
  ),
  "adamw": (
    lambda keras: _keras_adamw(keras),
    lambda: optax.chain(
      optaxtra.scale_by_adam(eps=1e-7, epsilon_hat=True),
      optaxtra.scale_by_learning_rate(LR),
      optaxtra.add_decayed_weights_decoupled(0.004, schedule=LR, mask=_is_kernel),
    ),
  ),
  "adamax": (
    lambda keras: keras.optimizers.Adamax(LR),
    lambda: optax.chain(
      optaxtra.scale_by_adamax_clipped(eps=1e-7, clip=False, bias_correction=True),
      optaxtra.scale_by_learning_rate(LR),
    ),
  ),
}


def _keras_adamw(keras):
  opt = keras.optimizers.AdamW(LR)  # weight_decay=0.004, Keras' default
  opt.exclude_from_weight_decay(var_names=["bias"])
  return opt


@pytest.mark.parametrize("case", list(KERAS_CASES))
def test_from_keras_continues_the_run(keras, tf, case):
  make_opt, make_tx = KERAS_CASES[case]
  net = KerasNet(keras, tf)
  opt = make_opt(keras)
  net.train(opt, STEPS)
  params = net.params()
  tx = make_tx()
  state = interop.from_keras(tx, params, opt, paths=PATHS)
  assert all(c == STEPS for c in _counts(state))
  net.train(opt, STEPS)
  params, _ = _jax_train(tx, state, params, STEPS)
  bound = _float32_bound(params, LR, STEPS)
  _assert_within(params, net.params(), bound, case)


def test_from_keras_refusals(keras, tf):
  net = KerasNet(keras, tf)
  opt = keras.optimizers.Adam(LR)
  with pytest.raises(ValueError, match=r"not built yet"):
    interop.from_keras(optax.adam(LR), net.params(), opt, paths=PATHS)
  net.train(opt, 3)
  params = net.params()
  with pytest.raises(ValueError, match=r"epsilon is 1e-07.*epsilon_hat=True"):
    interop.from_keras(optax.adam(LR, eps=1e-7), params, opt, paths=PATHS)
  tx = optax.chain(
    optaxtra.scale_by_adam(b1=0.8, eps=1e-7, epsilon_hat=True),
    optaxtra.scale_by_learning_rate(LR),
  )
  with pytest.raises(ValueError, match=r"beta_1 is 0.9, but .* b1=0.8"):
    interop.from_keras(tx, params, opt, paths=PATHS)
  opt = keras.optimizers.Adamax(LR)
  net.train(opt, 3)
  with pytest.raises(ValueError, match=r"epsilon is 1e-07.*scale_by_adamax_clipped"):
    interop.from_keras(optax.adamax(LR, eps=1e-7), params, opt, paths=PATHS)
  with pytest.raises(TypeError, match=r"keras.optimizers.Adam, AdamW and Adamax"):
    interop.from_keras(optax.sgd(LR), params, keras.optimizers.SGD(LR), paths=PATHS)


# The Neural GPU's AdamaxOptimizer (Freivalds & Liepins 2017, LUMII-Syslab/DNGPU
# adamax.py, as users copy it), ported to tf.compat.v1 graph mode: the slots
# "m" and "v" of each variable, the gradient clipped to v * clip_multiplier +
# clip_epsilon, no bias correction, epsilon in the denominator.
def _neural_gpu_adamax(tf):
  v1 = tf.compat.v1

  class AdamaxOptimizer(v1.train.Optimizer):
    def __init__(
      self,
      learning_rate=0.001,
      beta1=0.9,
      beta2=0.999,
      epsilon=1e-8,
      clip_gradients=True,
      clip_multiplier=1.2,
      clip_epsilon=1e-4,
      use_locking=False,
      name="Adamax",
    ):
      super().__init__(use_locking, name)
      self._lr = learning_rate
      self._beta1 = beta1
      self._beta2 = beta2
      self._epsilon = epsilon
      self.clip_multiplier = clip_multiplier
      self.clip_epsilon = clip_epsilon
      self.clip_gradients = clip_gradients

    def _prepare(self):
      self._lr_t = tf.convert_to_tensor(self._lr, name="learning_rate")
      self._beta1_t = tf.convert_to_tensor(self._beta1, name="beta1")
      self._beta2_t = tf.convert_to_tensor(self._beta2, name="beta2")
      self._epsilon_t = tf.convert_to_tensor(self._epsilon, name="epsilon")
      self.clip_multiplier_t = tf.convert_to_tensor(self.clip_multiplier)
      self.clip_epsilon_t = tf.convert_to_tensor(self.clip_epsilon)

    def _create_slots(self, var_list):
      for v in var_list:
        self._zeros_slot(v, "m", self._name)
        self._zeros_slot(v, "v", self._name)

    def _apply_dense(self, grad, var):
      dtype = var.dtype.base_dtype
      lr_t = tf.cast(self._lr_t, dtype)
      beta1_t = tf.cast(self._beta1_t, dtype)
      beta2_t = tf.cast(self._beta2_t, dtype)
      epsilon_t = tf.cast(self._epsilon_t, dtype)
      clip_multiplier_t = tf.cast(self.clip_multiplier_t, dtype)
      clip_epsilon_t = tf.cast(self.clip_epsilon_t, dtype)
      v = self.get_slot(var, "v")
      if self.clip_gradients:
        clip_val = v * clip_multiplier_t + clip_epsilon_t
        grad = tf.clip_by_value(grad, -clip_val, clip_val)
      m = self.get_slot(var, "m")
      m_t = v1.assign(m, beta1_t * m + (1.0 - beta1_t) * grad)
      v_t = v1.assign(v, tf.maximum(beta2_t * v, tf.abs(grad)))
      var_update = v1.assign_sub(var, lr_t * m_t / (v_t + epsilon_t))
      return tf.group(var_update, m_t, v_t)

    def _resource_apply_dense(self, grad, var):
      return self._apply_dense(grad, var)

  return AdamaxOptimizer


class TF1Net:
  """The perceptron in a TF1 graph, trained by a tf.compat.v1 optimizer."""

  def __init__(self, tf, make_opt, *, global_step: bool):
    v1 = tf.compat.v1
    self.graph = tf.Graph()
    start = _init()
    x, y = _data()
    with self.graph.as_default():
      self.vars = [v1.get_variable(p, initializer=tf.constant(start[p])) for p in PATHS]
      k1, b1, k2, b2 = self.vars
      h = tf.tanh(tf.matmul(tf.constant(x), k1) + b1)
      loss = tf.reduce_mean(tf.square(tf.matmul(h, k2) + b2 - y))
      step = v1.train.get_or_create_global_step() if global_step else None
      self.train_op = make_opt().minimize(loss, global_step=step)
      self.saver = v1.train.Saver()
      self.sess = v1.Session(graph=self.graph)
      self.sess.run(v1.global_variables_initializer())

  def train(self, steps):
    for _ in range(steps):
      self.sess.run(self.train_op)

  def save(self, prefix):
    with self.graph.as_default():
      return self.saver.save(self.sess, prefix)

  def params(self):
    return _tree(dict(zip(PATHS, self.sess.run(self.vars), strict=True)))


def _tf1_case(tf, case):
  v1 = tf.compat.v1
  if case.startswith("adam"):
    return (
      lambda: v1.train.AdamOptimizer(LR),
      optax.chain(
        optaxtra.scale_by_adam(epsilon_hat=True), optaxtra.scale_by_learning_rate(LR)
      ),
    )
  adamax = _neural_gpu_adamax(tf)
  return (
    lambda: adamax(LR),
    optax.chain(
      optaxtra.scale_by_adamax_clipped(), optaxtra.scale_by_learning_rate(LR)
    ),
  )


@pytest.mark.parametrize(
  ("case", "global_step"),
  [("adam", True), ("adam", False), ("neural-gpu-adamax", True)],
  ids=["adam-global_step", "adam-beta1_power", "neural-gpu-adamax"],
)
def test_from_tf1_checkpoint_continues_the_run(tf, tmp_path, case, global_step):
  make_opt, tx = _tf1_case(tf, case)
  net = TF1Net(tf, make_opt, global_step=global_step)
  net.train(STEPS)
  prefix = net.save(str(tmp_path / "model"))
  params = net.params()
  names = {p: p for p in PATHS}
  state = interop.from_tf1_checkpoint(tx, params, prefix, names=names)
  assert all(c == STEPS for c in _counts(state))
  net.train(STEPS)
  params, _ = _jax_train(tx, state, params, STEPS)
  _assert_within(params, net.params(), _float32_bound(params, LR, STEPS), case)


def test_from_tf1_checkpoint_count_and_refusals(tf, tmp_path):
  make_opt, tx = _tf1_case(tf, "adam")
  net = TF1Net(tf, make_opt, global_step=False)
  net.train(STEPS)
  prefix = net.save(str(tmp_path / "model"))
  params = net.params()
  names = {p: p for p in PATHS}
  assert _counts(
    interop.from_tf1_checkpoint(tx, params, prefix, names=names, count=STEPS)
  ) == [STEPS, STEPS]
  with pytest.raises(ValueError, match=r"count is 21, but .*beta1_power.*step 20"):
    interop.from_tf1_checkpoint(tx, params, prefix, names=names, count=21)
  wrong_b1 = optax.chain(
    optaxtra.scale_by_adam(b1=0.8, epsilon_hat=True),
    optaxtra.scale_by_learning_rate(LR),
  )
  with pytest.raises(ValueError, match=r"beta1_power is .* not a power of tx's b1=0.8"):
    interop.from_tf1_checkpoint(wrong_b1, params, prefix, names=names)
  with pytest.raises(ValueError, match=r"epsilon outside the bias correction"):
    interop.from_tf1_checkpoint(optax.adam(LR), params, prefix, names=names)
  adamax = optax.chain(
    optaxtra.scale_by_adamax_clipped(), optaxtra.scale_by_learning_rate(LR)
  )
  with pytest.raises(ValueError, match=r"moving average of g\*\*2 \(Adam's\)"):
    interop.from_tf1_checkpoint(adamax, params, prefix, names=names)
  with pytest.raises(ValueError, match=r"no variable 'nope'"):
    interop.from_tf1_checkpoint(tx, params, prefix, names={**names, "l1/bias": "nope"})
  with pytest.raises(ValueError, match=r"could not read a checkpoint"):
    interop.from_tf1_checkpoint(tx, params, str(tmp_path / "missing"), names=names)


def _synthetic_tf1_checkpoint(tf, prefix, steps, *, b1=0.9, b2=0.999):
  """A checkpoint as TF1's AdamOptimizer leaves it after ``steps`` steps.

  The beta powers are the float32 products TF1 keeps (``b`` times itself,
  ``steps + 1`` factors), computed the same way.
  """
  v1 = tf.compat.v1
  rng = np.random.default_rng(4)
  powers = {}
  for name, b in (("beta1_power", b1), ("beta2_power", b2)):
    x, f = np.float32(b), np.float32(b)
    for _ in range(steps):
      x = np.float32(x * f)
    powers[name] = x
  graph = tf.Graph()
  with graph.as_default():
    for p, v in _init().items():
      v1.get_variable(p, initializer=tf.constant(v))
      v1.get_variable(p + "/Adam", initializer=tf.constant(0.1 * v))
      v1.get_variable(p + "/Adam_1", initializer=tf.constant(rng.random(v.shape, "f4")))
    for name, x in powers.items():
      v1.get_variable(name, initializer=tf.constant(x))
    saver = v1.train.Saver()
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      return saver.save(sess, prefix), powers


def test_from_tf1_checkpoint_reads_the_count_from_either_power(tf, tmp_path):
  """beta1_power underflows after about 830 float32 steps; beta2_power says."""
  _, tx = _tf1_case(tf, "adam")
  names = {p: p for p in PATHS}
  params = _tree(_init())
  prefix, powers = _synthetic_tf1_checkpoint(tf, str(tmp_path / "a"), 2000)
  assert powers["beta1_power"] < np.finfo(np.float32).tiny  # underflowed
  state = interop.from_tf1_checkpoint(tx, params, prefix, names=names)
  assert _counts(state) == [2000, 2000]
  # After 10000 steps neither power can say for sure: count= is asked for.
  prefix, _ = _synthetic_tf1_checkpoint(tf, str(tmp_path / "b"), 10000)
  with pytest.raises(ValueError, match=r"does not say how many updates.*count="):
    interop.from_tf1_checkpoint(tx, params, prefix, names=names)
  state = interop.from_tf1_checkpoint(tx, params, prefix, names=names, count=10000)
  assert _counts(state) == [10000, 10000]


def test_from_tf1_neural_gpu_adamax_without_global_step_asks_for_count(tf, tmp_path):
  make_opt, tx = _tf1_case(tf, "neural-gpu-adamax")
  net = TF1Net(tf, make_opt, global_step=False)
  net.train(3)
  prefix = net.save(str(tmp_path / "model"))
  names = {p: p for p in PATHS}
  with pytest.raises(ValueError, match=r"Pass count="):
    interop.from_tf1_checkpoint(tx, net.params(), prefix, names=names)
  state = interop.from_tf1_checkpoint(tx, net.params(), prefix, names=names, count=3)
  assert _counts(state) == [3, 3]
