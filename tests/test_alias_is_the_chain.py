"""adamax_clipped is the chain its docstring names, to the bit.

The alias runs the building blocks' own kernels (the Adamax update, the
learning-rate kernel, the decay kernel) on one state. Run eagerly, both sides
dispatch the same primitives on the same inputs one at a time, so they agree
bit for bit on any CPU; under ``jax.jit`` they are two programs, compared
within the cross-program ulp bound of ``_harness``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _harness import assert_max_ulp, cross_program_ulps

import optaxtra

SHAPES = {"dense": {"kernel": (3, 4), "bias": (4,)}, "head": (4, 2)}


def _tree(seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
    SHAPES,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _lr(n):
  return 1e-2 * jnp.minimum((n + 1) / 3.0, 1.0)


CASES = {
  "defaults": ({"learning_rate": 1e-2}, None),
  "decay coupled to the lr": (
    {"learning_rate": _lr, "weight_decay": 0.05},
    {"schedule": _lr},
  ),
  "normalized decay, bias correction, clip fraction": (
    {
      "learning_rate": _lr,
      "weight_decay": 0.05,
      "weight_decay_coupling": "normalized",
      "peak_learning_rate": 1e-2,
      "bias_correction": True,
      "track_clip_fraction": True,
    },
    {"schedule": lambda n: _lr(n) / 1e-2},
  ),
  "independent decay with a mask": (
    {
      "learning_rate": 1e-2,
      "weight_decay": 1e-3,
      "weight_decay_coupling": "independent",
      "weight_decay_mask": optaxtra.masks.path_mask(exclude=["bias"]),
    },
    {"schedule": None, "mask": optaxtra.masks.path_mask(exclude=["bias"])},
  ),
  "learning rate and decay by path": (
    {
      "learning_rate": optaxtra.by_path({"^head": 1e-2}, default=1e-3),
      "weight_decay": optaxtra.by_path({"bias": 0.0}, default=0.1),
    },
    {"schedule": optaxtra.by_path({"^head": 1e-2}, default=1e-3)},
  ),
}
_ADAMAX = ("bias_correction", "track_clip_fraction")


def _pair(name):
  kwargs, decay = CASES[name]
  alias = optaxtra.adamax_clipped(**kwargs)
  stages = [
    optaxtra.scale_by_adamax_clipped(**{k: kwargs[k] for k in _ADAMAX if k in kwargs}),
    optaxtra.scale_by_learning_rate(kwargs["learning_rate"]),
  ]
  if decay is not None:
    stages.append(
      optaxtra.add_decayed_weights_decoupled(kwargs["weight_decay"], **decay)
    )
  return alias, optax.chain(*stages)


def _run(tx, steps, jit):
  params = _tree(0)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  out = []
  for n in range(steps):
    updates, state = update(_tree(n + 1), state, params)
    params = optax.apply_updates(params, updates)
    out.append((params, optaxtra.inspect(state)))
  return out


@pytest.mark.sweep(
  quick=[
    "learning rate and decay by path",
    "normalized decay, bias correction, clip fraction",
  ]
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_eagerly_bit_for_bit(name):
  alias, chain = _pair(name)
  for (pa, ia), (pc, ic) in zip(
    _run(alias, 4, False), _run(chain, 4, False), strict=True
  ):
    for a, c in zip(jax.tree.leaves(pa), jax.tree.leaves(pc), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # inspect reads the chain as plainly as the alias: the same keys, values.
    assert sorted(ia) == sorted(ic)
    for k in ia:
      np.testing.assert_array_equal(np.asarray(ia[k]), np.asarray(ic[k]), err_msg=k)


@pytest.mark.parametrize(
  "name", ["decay coupled to the lr", "learning rate and decay by path"]
)
def test_jitted_within_the_cross_program_bound(name):
  alias, chain = _pair(name)
  runs = zip(_run(alias, 4, True), _run(chain, 4, True), strict=True)
  for step, ((pa, _), (pc, _)) in enumerate(runs):
    for a, c in zip(jax.tree.leaves(pa), jax.tree.leaves(pc), strict=True):
      assert_max_ulp(a, c, cross_program_ulps(step), f"step {step}")
