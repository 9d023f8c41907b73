"""What values by parameter path (``optaxtra.by_path``) cost per step.

Usage (from the repository root)::

  python benchmarks/by_path.py                     # 1e6 entries in 10 and 100 leaves
  python benchmarks/by_path.py --leaves 100 --reps 5

AdamW with a warmup-cosine schedule and weight decay, params and state
donated, ``apply_updates`` in the step, contenders interleaved
(``timing.py``), medians:

* ``hand-fused``: one ``jnp`` expression per leaf, the same math;
* ``optax.adamw``: Optax's chain;
* ``optaxtra.adamw``: scalar hyperparameters;
* ``by_path``: ``optaxtra.adamw`` with the learning rate, ``b2``, ``eps`` and
  the weight decay each given by path (three groups: a third of the leaves
  each, PyTorch's param groups in one optimizer).

Per-group values are Python constants or schedule values per rule: each leaf
reads its rule's scalar, so nothing per element is added (the compiled step's
array kernels are counted, as ``run.py`` does).

Results go to ``benchmarks/results/<backend>-by-path.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as C
import variants as V
from machine import machine_info
from timing import side_header, step_rows

import optaxtra

BASE = "optaxtra.adamw"
B1, B2, EPS, WD = 0.9, 0.999, 1e-8, 1e-2


def _groups():
  """Three groups by path: leaves ending in 0-2, 3-5, the rest."""
  by = optaxtra.by_path
  return {
    "learning_rate": by(
      {"[0-2]$": lambda n: 2.0 * V.schedule(n), "[3-5]$": V.schedule},
      default=lambda n: 0.5 * V.schedule(n),
    ),
    "b2": by({"[0-2]$": 0.99, "[3-5]$": 0.995}, default=B2),
    "eps": by({"[0-2]$": 1e-6, "[3-5]$": 1e-7}, default=EPS),
    "weight_decay": by({"[0-2]$": 0.0, "[3-5]$": 0.05}, default=WD),
  }


def _hand_fused_init(params):
  z = jax.tree.map(jnp.zeros_like, params)
  return (jnp.zeros([], jnp.int32), z, jax.tree.map(jnp.zeros_like, params))


def _hand_fused_step(params, state, grads):
  count, mu, nu = state
  t = count + 1
  lr = V.schedule(count)
  c1 = 1 - B1 ** t.astype(jnp.float32)
  c2 = 1 - B2 ** t.astype(jnp.float32)

  def leaf(p, g, m, v):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    p = p - lr * WD * p - lr * (m / c1) / (jnp.sqrt(v / c2) + EPS)
    return p, m, v

  out = jax.tree.map(leaf, params, grads, mu, nu)
  pick = lambda i: jax.tree.map(  # noqa: E731
    lambda o: o[i], out, is_leaf=lambda x: isinstance(x, tuple)
  )
  return pick(0), (t, pick(1), pick(2))


def makers() -> dict:
  def tx(make_tx):
    def make():
      t = make_tx()
      return V.tx_step(t), t.init

    return make

  return {
    "hand-fused": lambda: (_hand_fused_step, _hand_fused_init),
    "optax.adamw": tx(lambda: optax.adamw(V.schedule, B1, B2, EPS, weight_decay=WD)),
    BASE: tx(lambda: optaxtra.adamw(V.schedule, B1, B2, EPS, weight_decay=WD)),
    "by_path": tx(lambda: optaxtra.adamw(b1=B1, **_groups())),
  }


def markdown(res) -> str:
  out = [
    side_header(res),
    "",
    "### Time per step (ms), ratio to optaxtra.adamw, array kernels (fusions+copies)",
    "",
    "| contender | " + " | ".join(res["cases"]) + " |",
    "| --- |" + " ---: |" * len(res["cases"]),
  ]
  names = list(next(iter(res["cases"].values()))["rows"])
  for name in names:
    cells = []
    for case in res["cases"].values():
      rows = case["rows"]
      r = rows[name]
      k = r.get("kernels", {})
      cells.append(
        f"{r['step_s'] * 1e3:.3g} ({r['step_s'] / rows[BASE]['step_s']:.2f}x, "
        f"{k.get('array_fusions', '?')}+{k.get('array_copies', '?')})"
      )
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--size", type=float, default=1e6)
  ap.add_argument("--leaves", type=int, nargs="+", default=[10, 100])
  ap.add_argument("--reps", type=int, default=9)
  ap.add_argument("--target-s", type=float, default=0.05)
  ap.add_argument("--out", default=None, help="output stem")
  args = ap.parse_args(argv)
  here = Path(__file__).resolve().parent
  stem = (
    Path(args.out)
    if args.out
    else here / "results" / (f"{jax.default_backend()}-by-path")
  )
  stem.parent.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  res = {
    "machine": machine_info(),
    "reps": args.reps,
    "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    "cases": {},
  }
  rng = np.random.default_rng(0)
  for n_leaves in args.leaves:
    n = int(args.size)
    if n_leaves < 6:
      ap.error("--leaves: at least 6, so that every group has a leaf")
    params_np, grads_np = C.random_tree(n_leaves, n, rng)
    grads = jax.tree.map(jax.device_put, grads_np)
    cs = [
      C.JaxContender(name, make, params_np, grads) for name, make in makers().items()
    ]
    rows = step_rows(cs, args.reps, args.target_s)
    label = f"{n:.0e} in {n_leaves} leaves"
    res["cases"][label] = {"rows": rows}
    print(f"== {label}", flush=True)
    for name, r in rows.items():
      print(
        f"  {name:16s} {r['step_s'] * 1e3:9.3f} ms  "
        f"{r['step_s'] / rows[BASE]['step_s']:5.2f}x",
        flush=True,
      )
  res["wall_s"] = time.perf_counter() - t0
  Path(f"{stem}.json").write_text(json.dumps(res, indent=1))
  Path(f"{stem}.md").write_text(markdown(res))
  print(f"wrote {stem}.json and {stem}.md in {res['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
