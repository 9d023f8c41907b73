"""optaxtra.adamw: PyTorch's param groups in one optimizer.

Checked against an independent float64 NumPy AdamW written from the update
rule, against ``torch.optim.AdamW`` with three param groups (each with its own
learning rate, weight decay, betas and eps) and a ``LambdaLR``, and against
``optax.adamw``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _harness import assert_max_ulp

import optaxtra

SHAPES = {"embed": (4, 3), "blocks": [{"w": (3, 3), "b": (3,)}], "head": (3, 2)}
# The three groups as a PyTorch user writes them, and as by_path rules.
GROUPS = [
  {
    "paths": ["head"],
    "lr": 1e-2,
    "weight_decay": 0.0,
    "betas": (0.8, 0.99),
    "eps": 1e-6,
  },
  {
    "paths": ["blocks/0/b"],
    "lr": 3e-3,
    "weight_decay": 0.0,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
  },
  {
    "paths": ["blocks/0/w", "embed"],
    "lr": 1e-3,
    "weight_decay": 0.1,
    "betas": (0.85, 0.995),
    "eps": 1e-7,
  },
]
RULES = ["^head$", "/b$", None]  # None: the default


def _factor(n):
  """LambdaLR's multiplier at scheduler step n: warmup, then linear decay."""
  return np.minimum((n + 1) / 5.0, (120.0 - n) / 115.0)


def _by_path(key, index=None):
  rules = {
    r: (g[key] if index is None else g[key][index])
    for r, g in zip(RULES, GROUPS, strict=False)
    if r
  }
  default = GROUPS[-1][key] if index is None else GROUPS[-1][key][index]
  return optaxtra.by_path(rules, default=default)


def _params(dtype, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(rng.normal(size=s), dtype),
    SHAPES,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _grads(dtype, steps, seed=1):
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s), dtype),
      SHAPES,
      is_leaf=lambda x: isinstance(x, tuple),
    )
    for _ in range(steps)
  ]


def _tx(schedules=True):
  def lr_of(group):
    base = group["lr"]
    return (
      (lambda n: base * jnp.minimum((n + 1) / 5.0, (120.0 - n) / 115.0))
      if schedules
      else base
    )

  lr = optaxtra.by_path(
    {r: lr_of(g) for r, g in zip(RULES, GROUPS, strict=False) if r},
    default=lr_of(GROUPS[-1]),
  )
  return optaxtra.adamw(
    lr,
    b1=_by_path("betas", 0),
    b2=_by_path("betas", 1),
    eps=_by_path("eps"),
    weight_decay=_by_path("weight_decay"),
  )


def _group_of(path):
  return next(i for i, g in enumerate(GROUPS) if path in g["paths"])


def _numpy_adamw(params, grads, steps):
  """The update rule in float64, written from the equations, per group."""
  flat = {
    p: np.asarray(x, np.float64)
    for p, x in zip(optaxtra.masks.paths(params), jax.tree.leaves(params), strict=True)
  }
  m = {p: np.zeros_like(x) for p, x in flat.items()}
  v = {p: np.zeros_like(x) for p, x in flat.items()}
  for t in range(1, steps + 1):
    g_flat = dict(
      zip(optaxtra.masks.paths(params), jax.tree.leaves(grads[t - 1]), strict=True)
    )
    for p in flat:
      grp = GROUPS[_group_of(p)]
      lr = grp["lr"] * _factor(t - 1)
      b1, b2 = grp["betas"]
      g = np.asarray(g_flat[p], np.float64)
      m[p] = b1 * m[p] + (1 - b1) * g
      v[p] = b2 * v[p] + (1 - b2) * g * g
      mhat, vhat = m[p] / (1 - b1**t), v[p] / (1 - b2**t)
      flat[p] = (
        flat[p]
        - lr * grp["weight_decay"] * flat[p]
        - lr * mhat / (np.sqrt(vhat) + grp["eps"])
      )
  return flat


def test_groups_against_the_equations_in_float64(x64):
  params, grads = _params(jnp.float64), _grads(jnp.float64, 30)
  tx = _tx()
  state = tx.init(params)
  update = jax.jit(tx.update)
  p = params
  for g in grads:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  want = _numpy_adamw(params, grads, 30)
  for path, x in zip(optaxtra.masks.paths(p), jax.tree.leaves(p), strict=True):
    np.testing.assert_allclose(np.asarray(x), want[path], rtol=1e-12, err_msg=path)
  assert update._cache_size() == 1


def test_torch_adamw_three_param_groups_lambdalr(x64, torch):
  """100 steps, float64: parameters equal to 1e-12 relative."""
  steps = 100
  params, grads = _params(jnp.float64), _grads(jnp.float64, steps)
  paths = optaxtra.masks.paths(params)
  flat = dict(zip(paths, jax.tree.leaves(params), strict=True))
  tensors = {
    p: torch.tensor(np.asarray(x), dtype=torch.float64) for p, x in flat.items()
  }
  opt = torch.optim.AdamW(
    [
      {
        "params": [tensors[p] for p in g["paths"]],
        "lr": g["lr"],
        "weight_decay": g["weight_decay"],
        "betas": g["betas"],
        "eps": g["eps"],
      }
      for g in GROUPS
    ]
  )
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: float(_factor(n)))
  tx = _tx()
  state = tx.init(params)
  update = jax.jit(tx.update)
  p = params
  for n, g in enumerate(grads):
    g_flat = dict(zip(paths, jax.tree.leaves(g), strict=True))
    for path, t in tensors.items():
      t.grad = torch.tensor(np.asarray(g_flat[path]), dtype=torch.float64)
    opt.step()
    sched.step()
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    if n in (0, 9, 49, 99):
      # What inspect reports is what the param groups held for this step.
      info = optaxtra.inspect(state)
      for i, (rule, group) in enumerate(
        zip([*RULES[:-1], "default"], GROUPS, strict=True)
      ):
        lr = info[f"learning_rate[{rule}]"]
        np.testing.assert_allclose(float(lr), group["lr"] * _factor(n), rtol=1e-15)
        # torch's group has moved on to the next step (sched.step() ran).
        torch_lr = opt.param_groups[i]["lr"]
        np.testing.assert_allclose(torch_lr, group["lr"] * _factor(n + 1), rtol=1e-15)
    if n in (0, 49):
      # describe(step=n): the update after n updates, as torch's groups make it.
      for row in optaxtra.describe(tx, params, step=n).rows:
        group = GROUPS[_group_of(row["path"])]
        lr = group["lr"] * _factor(n)
        np.testing.assert_allclose(row["learning_rate"], lr, rtol=1e-12)
        wd = lr * group["weight_decay"]
        np.testing.assert_allclose(row["decay_rate"], wd, rtol=1e-9, atol=1e-300)
  for path, x in zip(paths, jax.tree.leaves(p), strict=True):
    np.testing.assert_allclose(
      np.asarray(x), tensors[path].detach().numpy(), rtol=1e-12, atol=0, err_msg=path
    )


def test_optax_adamw_in_float32():
  """One group: optax.adamw's numbers within a few ulps per step carried.

  Both compute m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd*p, times -lr; they
  differ in where the learning rate multiplies (optaxtra: -lr*adam - (wd*lr)*p;
  Optax: -lr*(adam + wd*p)) and in how 1 - b**t is rounded (optaxtra uses
  -expm1(t log b), exact to an ulp; Optax 1 - b**t, which cancels). Each
  costs an ulp or two of the update per step, and a parameter carries them:
  the bound grows with the step, measured at most 2 + step/2 ulps of the
  parameter here.
  """
  params, grads = _params(jnp.float32), _grads(jnp.float32, 20)
  ours, theirs = optaxtra.adamw(1e-3, weight_decay=1e-4), optax.adamw(1e-3)
  so, st = ours.init(params), theirs.init(params)
  po = pt = params
  for n, g in enumerate(grads):
    uo, so = ours.update(g, so, po)
    ut, st = theirs.update(g, st, pt)
    po, pt = optax.apply_updates(po, uo), optax.apply_updates(pt, ut)
    for a, b in zip(jax.tree.leaves(po), jax.tree.leaves(pt), strict=True):
      assert_max_ulp(a, b, maxulp=4 + n, err_msg=f"step {n}")


@pytest.mark.heavy  # slow for the quick loop; optax.adamw's numbers are checked there
def test_nesterov_is_optax_adamw_nesterov(x64):
  params, grads = _params(jnp.float64), _grads(jnp.float64, 10)
  ours = optaxtra.adamw(1e-2, weight_decay=0.05, nesterov=True)
  theirs = optax.adamw(1e-2, weight_decay=0.05, nesterov=True)
  so, st = ours.init(params), theirs.init(params)
  po = pt = params
  for g in grads:
    uo, so = ours.update(g, so, po)
    ut, st = theirs.update(g, st, pt)
    po, pt = optax.apply_updates(po, uo), optax.apply_updates(pt, ut)
  for a, b in zip(jax.tree.leaves(po), jax.tree.leaves(pt), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)


def test_a_group_learning_rate_changes_mid_run_without_recompiling():
  """PyTorch's param_groups[i]["lr"] = x: one group's scale, no recompilation."""
  params, grads = _params(jnp.float32), _grads(jnp.float32, 4)
  tx = _tx(schedules=False)
  state = tx.init(params)
  update = jax.jit(tx.update)
  p = params
  for n, g in enumerate(grads):
    if n == 2:
      state = optaxtra.set_learning_rate_scale(state, 0.5, group="^head$")
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  assert update._cache_size() == 1
  info = optaxtra.inspect(state)
  assert float(info["learning_rate[^head$]"]) == np.float32(1e-2) * np.float32(0.5)
  assert float(info["learning_rate[default]"]) == np.float32(1e-3)
  # The head's decay follows its own learning rate (0 here), the default's its.
  assert float(info["decay_rate[default]"]) == np.float32(0.1) * np.float32(1e-3)


def test_defaults_and_state():
  tx = optaxtra.adamw(1e-3)
  state = tx.init(_params(jnp.float32))
  info = optaxtra.inspect(state)
  assert float(info["weight_decay"]) == np.float32(1e-2)  # PyTorch's default
  assert sorted(info) == [
    "bias_correction",
    "count",
    "decay_rate",
    "effective_learning_rate",
    "learning_rate",
    "learning_rate_scale",
    "weight_decay",
  ]
  optaxtra.testing.check_transformation(tx, _params(jnp.float32))
  optaxtra.testing.check_transformation(_tx(), _params(jnp.float32))


@pytest.mark.parametrize(
  ("make", "error", "match"),
  [
    (
      lambda: optaxtra.adamw(-1e-3),
      ValueError,
      r"adamw: learning_rate must be in \[0, inf\)",
    ),
    (
      lambda: optaxtra.adamw(1e-3, b2=0.99999999),
      ValueError,
      r"b2=0.99999999 is 1.0 in float32",
    ),
    (
      lambda: optaxtra.adamw(1e-3, b1=lambda n: 0.9),
      TypeError,
      r"b1 must be a number, not a schedule",
    ),
    (lambda: optaxtra.adamw(1e-3, weight_decay=1e39), ValueError, "overflows float32"),
    (
      lambda: optaxtra.adamw(optaxtra.by_path({"^nothing": 1e-3}, default=1e-4)).init(
        _params(jnp.float32)
      ),
      ValueError,
      r"adamw: learning_rate rule '\^nothing' matches no parameter path",
    ),
    (
      lambda: optaxtra.adamw(
        optaxtra.by_path({"^blocks": 1e-3, "^blocks/0/w": 1e-2})
      ).init(_params(jnp.float32)),
      ValueError,
      r"rule '\^blocks/0/w' never applies.*earlier rule '\^blocks'",
    ),
    (
      lambda: optaxtra.adamw(optaxtra.by_path({"^head": 1e-3})).init(
        _params(jnp.float32)
      ),
      ValueError,
      r"learning_rate has no rule for 3 parameters.*default=",
    ),
    (
      lambda: optaxtra.adamw(
        optaxtra.by_path({"^head": lambda n: -1e-3}, default=1e-3)
      ).init(_params(jnp.float32)),
      ValueError,
      r"learning_rate\[\^head\] is -0.001 at step 0",
    ),
  ],
)
def test_misuse_is_named(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_update_needs_the_params():
  params = _params(jnp.float32)
  tx = optaxtra.adamw(1e-3)
  with pytest.raises(ValueError, match="adamw needs the params"):
    tx.update(params, tx.init(params))
