"""Writes the Orbax checkpoints of optaxtra 0.2's states kept in checkpoints_0.2/.

Run once against optaxtra 0.2 (the tree at the commit before the one that moved
the internals into optaxtra/_core), never against a later version: the
checkpoints are what 0.2 wrote, and tests/test_migrate.py checks that every
later version restores them and continues each run as 0.2 did.

    git worktree add /tmp/optaxtra-0.2 82c6e21~1
    PYTHONPATH=/tmp/optaxtra-0.2 python tests/data/make_checkpoints_0.2.py
    git worktree remove /tmp/optaxtra-0.2

It was run so with jax 0.10.2, optax 0.2.8, orbax-checkpoint 0.12.8, float32
(jax_enable_x64 off) on CPU. It refuses to run against another optaxtra.

For each public transformation of 0.2 (and the 0.1-style chain that
``adamax_clipped`` fuses) it builds the transformation on a tiny params tree,
runs three updates with fixed gradients and saves, in
``checkpoints_0.2/<name>/``, one tree:

* ``params``, ``grads`` (and ``value``, the loss that reduce_on_plateau
  reads): the inputs of the third update;
* ``state``: the state after two updates, the one the third update starts from;
* ``updates``, ``next_state``: what the third update returned.

The transformations are written here as 0.2 spells them; the test builds the
same ones with today's spelling.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import optaxtra
from optaxtra import masks

OUT = Path(__file__).resolve().parent / "checkpoints_0.2"
STEPS = 3


def params0():
  """A tiny model: an embedding, two layers and a head (5 leaves, 18 floats)."""
  rng = np.random.default_rng(0)

  def a(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  return {
    "embed": {"embedding": a(3, 2)},
    "layers": {"0": {"kernel": a(2, 2)}, "1": {"kernel": a(2, 2)}},
    "head": {"kernel": a(2), "bias": a()},
  }


def grads(step):
  """The gradients of update ``step`` (0-based): fixed, some large, some tiny."""
  rng = np.random.default_rng(100 + step)

  def g(p):
    x = rng.normal(size=p.shape) * rng.choice([1e-5, 1.0, 30.0], size=p.shape)
    return jnp.asarray(x, jnp.float32)

  return jax.tree.map(g, params0())


VALUES = [2.0, 2.0, 2.0]  # a flat loss: reduce_on_plateau(patience=0) reduces

LR = optax.linear_schedule(1e-2, 1e-3, 10)
WD = 1e-2
NO_BIAS = masks.path_mask(exclude=["bias"])


def optimizers():
  return {
    "scale_by_adamax_clipped": optaxtra.scale_by_adamax_clipped(
      b1=0.8, track_clip_fraction=True
    ),
    "scale_by_adam": optaxtra.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6),
    "scale_by_learning_rate": optaxtra.scale_by_learning_rate(LR),
    "scale_by_schedule": optaxtra.scale_by_schedule(lambda n: -0.01 * 0.9**n),
    "add_decayed_weights_decoupled": optaxtra.add_decayed_weights_decoupled(
      WD, schedule=LR, mask=NO_BIAS
    ),
    "adamax_clipped": optaxtra.adamax_clipped(
      LR, weight_decay=WD, bias_correction=True, weight_decay_mask=NO_BIAS
    ),
    # 0.1's way to write adamax_clipped(LR, weight_decay=WD): continued as it.
    "adamax_clipped_chain": optax.chain(
      optaxtra.scale_by_adamax_clipped(),
      optaxtra.scale_by_learning_rate(LR),
      optaxtra.add_decayed_weights_decoupled(WD, schedule=LR),
    ),
    "average_params": optaxtra.average_params(
      optaxtra.ema_warmup(0.9), mask=masks.path_mask(exclude=["^embed/"])
    ),
    "reduce_on_plateau": optaxtra.reduce_on_plateau(0.5, 0),
    "record_norm": optaxtra.record_norm("grad_norm"),
    "scale_by_path": optaxtra.scale_by_path(
      {"^head/": 0.1, "kernel": lambda n: 0.5 + 0.1 * n}, default=1.0
    ),
    "layerwise_lr_decay": optaxtra.layerwise_lr_decay(0.5, 2),
    "with_frozen": optaxtra.with_frozen(
      optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-2)),
      frozen="^embed/",
    ),
  }


def main():
  # 0.2 is the last version without optaxtra/_core (an editable install of a
  # later one may still resolve optaxtra._core elsewhere: look at the tree).
  root = Path(optaxtra.__file__).parent
  if (root / "_core").exists() or not (root / "_average.py").exists():
    sys.exit(f"run against optaxtra 0.2 (see the docstring), not {root}")
  OUT.mkdir(exist_ok=True)
  for name, tx in optimizers().items():
    saved = run(name, tx)
    path = OUT / name
    if path.exists():
      shutil.rmtree(path)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(path, saved)
      ckptr.wait_until_finished()
    print(name, jax.tree.structure(saved["state"]))
  # Every optaxtra module used came from that tree.
  for mod in list(sys.modules.values()):
    if mod.__name__.startswith("optaxtra") and getattr(mod, "__file__", None):
      assert Path(mod.__file__).is_relative_to(root), mod.__file__


def run(name, tx):
  """Three updates of ``tx``; what the third started from and returned."""
  params = params0()
  state = tx.init(params)
  update = jax.jit(tx.update)
  extra = name == "reduce_on_plateau"
  saved = {}
  for step in range(STEPS):
    g = grads(step)
    value = jnp.float32(VALUES[step])
    if step == STEPS - 1:
      saved = {"params": params, "grads": g, "value": value, "state": state}
    if extra:
      updates, state = update(g, state, params, value=value)
    else:
      updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  saved["updates"] = updates
  saved["next_state"] = state
  return saved


if __name__ == "__main__":
  main()
