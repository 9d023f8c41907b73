"""One process of tests/test_multihost.py: trains examples/multihost.py's model.

Run by the test, once per process (2 processes of 4 CPU devices, or 1 of 8),
never by pytest itself::

  python tests/_multihost_worker.py OUT --phase train --num-processes 2 \\
      --process-id 0 --coordinator 127.0.0.1:PORT --steps 8 \\
      [--save-at 4 --checkpoint DIR]
  python tests/_multihost_worker.py OUT --phase resume --checkpoint DIR ...

``train`` initializes the params and optimizer state sharded (checking where
``tx.init`` under ``jax.jit`` puts each state leaf), with ``--hlo`` compiles the
update alone and writes its HLO, trains ``--steps`` steps with the example's
jitted step (``optaxtra.inspect`` inside it), and with ``--save-at`` writes an
Orbax checkpoint after that many steps. ``resume`` restores that checkpoint onto
this run's mesh and trains to ``--steps``.

Everything goes into OUT, one file per process and kind, suffixed ``.pI``:
``result.pI.json`` (facts and the problems found), ``history.pI.npz`` (the
loss and the inspected values of every step), ``update.pI.hlo``, and, as the
pieces this process holds (``*.pI.npz``, see ``save_pieces``), the ``final``
params and state, the ``saved`` ones and the ``restored`` ones. No process
ever gathers another's data: the test assembles the arrays from the pieces.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import re
import sys
import time
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optaxtra

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "multihost.py"


def load_example():
  spec = importlib.util.spec_from_file_location("multihost_example", EXAMPLE)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def leaf_name(path) -> str:
  """A file-safe name for a leaf: ``opt_state.mu.dense_0.kernel``."""
  return ".".join(filter(None, re.split(r"[^A-Za-z0-9_]+", jax.tree_util.keystr(path))))


def save_pieces(file: pathlib.Path, tree: Any) -> None:
  """The pieces of ``tree`` this process holds, one copy of each.

  For each leaf ``NAME``: ``NAME@shape``, and for each shard this process
  holds that is the first copy (``replica_id == 0``, so that a replicated leaf
  is written once, by one process): ``NAME@K`` its values and ``NAME@K@index``
  its ``[start, stop)`` along each dimension.
  """
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = leaf_name(path)
    out[f"{name}@shape"] = np.asarray(x.shape, np.int64)
    for k, shard in enumerate(x.addressable_shards):
      if shard.replica_id != 0:
        continue
      bounds = [s.indices(n)[:2] for s, n in zip(shard.index, x.shape, strict=True)]
      out[f"{name}@{k}"] = np.asarray(shard.data)
      out[f"{name}@{k}@index"] = np.asarray(bounds, np.int64).reshape(-1, 2)
  np.savez(file, **out)


def sharding_problems(tx, params, state, *, scalars: bool) -> list[str]:
  """Each param-shaped state leaf must have its param's sharding (scalars too,
  replicated, with ``scalars=True``)."""
  problems = []

  def param_leaf(s, p):
    if s.shape != p.shape or not s.sharding.is_equivalent_to(p.sharding, p.ndim):
      problems.append(f"{s.shape} {s.sharding} where its param is {p.sharding}")
    return s

  def other_leaf(s):
    if scalars and isinstance(s, jax.Array) and not s.sharding.is_fully_replicated:
      problems.append(f"scalar {s.shape} not replicated: {s.sharding}")
    return s

  optax.tree_map_params(tx, param_leaf, state, params, transform_non_params=other_leaf)
  return problems


def target_problems(tree, shardings) -> list[str]:
  problems = []
  for (path, x), s in zip(
    jax.tree_util.tree_flatten_with_path(tree)[0],
    jax.tree.leaves(shardings),
    strict=True,
  ):
    if not x.sharding.is_equivalent_to(s, x.ndim):
      problems.append(f"{leaf_name(path)}: {x.sharding} != {s}")
  return problems


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("out", type=pathlib.Path)
  parser.add_argument("--phase", choices=["train", "resume"], required=True)
  parser.add_argument("--coordinator")
  parser.add_argument("--num-processes", type=int, required=True)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--save-at", type=int)
  parser.add_argument("--checkpoint")
  parser.add_argument("--hlo", action="store_true", help="write the update's HLO")
  args = parser.parse_args(argv)

  seconds: dict[str, float] = {}
  clock = time.perf_counter()

  def lap(what: str) -> None:
    nonlocal clock
    seconds[what] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()

  ex = load_example()
  ex.initialize(args.coordinator, args.num_processes, args.process_id)
  lap("initialize")
  me = jax.process_index()
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert me == args.process_id, (me, args.process_id)

  mesh = ex.make_mesh()
  tx = ex.make_optimizer(args.steps)
  result: dict[str, Any] = {
    "jax": jax.__version__,
    "process_index": me,
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "local_device_count": jax.local_device_count(),
    "local_rows": list(ex.local_rows(mesh)),
  }

  def write(kind: str, tree: Any) -> None:
    save_pieces(args.out / f"{kind}.p{me}.npz", tree)

  if args.phase == "train":
    params, opt_state = ex.init(tx, mesh)
    lap("init")
    # tx.init under a plain jax.jit: the moments follow the params' sharding
    # by propagation alone (the scalars are XLA's choice: not checked here).
    plain = jax.jit(tx.init)(params)
    result["init_plain_jit_problems"] = sharding_problems(
      tx, params, plain, scalars=False
    )
    # With out_shardings from the params (the example's init): every leaf.
    result["init_out_shardings_problems"] = sharding_problems(
      tx, params, opt_state, scalars=True
    )

    if args.hlo:
      # The update alone, as compiled for these shardings (grads are placed
      # like the params, as the step's backward pass leaves them).
      def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      hlo = jax.jit(update).lower(params, opt_state, params).compile().as_text()
      (args.out / f"update.p{me}.hlo").write_text(hlo)
      lap("compile update")
  else:
    params, opt_state = ex.restore(args.checkpoint, tx, mesh)
    p_shardings = ex.param_shardings(mesh)
    result["restored_problems"] = target_problems(
      {"params": params, "opt_state": opt_state},
      {"params": p_shardings, "opt_state": ex.state_shardings(tx, params)},
    )
    write("restored", {"params": params, "opt_state": opt_state})
    lap("restore")

  first = int(opt_state.count)  # a replicated scalar: readable on every process
  result["first_step"] = first
  step_fn = ex.make_train_step(tx, params, opt_state)
  history: dict[str, list] = {"loss": []}
  for step in range(first, args.steps):
    x, y = ex.global_batch(step, mesh)
    params, opt_state, loss, info = step_fn(params, opt_state, x, y)
    history["loss"].append(np.asarray(loss))
    for key, value in info.items():
      history.setdefault(f"info.{key}", []).append(np.asarray(value))
    if args.save_at is not None and step + 1 == args.save_at:
      ex.save(args.checkpoint, params, opt_state)
      write("saved", {"params": params, "opt_state": opt_state})
      lap("train and save")
  lap("train")
  result["final_problems"] = sharding_problems(tx, params, opt_state, scalars=True)
  result["replicated_info"] = all(
    NamedSharding(mesh, P()).is_equivalent_to(v.sharding, 0) for v in info.values()
  )
  write("final", {"params": params, "opt_state": opt_state})
  np.savez(
    args.out / f"history.p{me}.npz", **{k: np.stack(v) for k, v in history.items()}
  )
  lap("write")
  result["seconds"] = seconds
  (args.out / f"result.p{me}.json").write_text(json.dumps(result, indent=1))
  print(f"process {me}: done, optaxtra {optaxtra.__version__}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
