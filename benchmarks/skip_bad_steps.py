"""What ``optaxtra.skip_bad_steps`` costs per step.

Usage (from the repository root)::

  python benchmarks/skip_bad_steps.py                 # 1e5, 1e6, 1e7 (~1 minute)
  python benchmarks/skip_bad_steps.py --sizes 1e5 --reps 5

The suite's default optimizer (``optaxtra.adamax_clipped`` with a schedule and
decay, one leaf of float32, params and state donated, ``apply_updates`` in the
step) timed bare and wrapped, contenders interleaved (``timing.py``), medians:

* ``optaxtra``: the optimizer alone;
* ``skip``: ``skip_bad_steps(optimizer)`` (the finiteness check only);
* ``skip+spike``: ``skip_bad_steps(optimizer, spike_sigma=6)`` (the norm and
  its statistics over a window of 100 too);
* ``norm``: ``chain(record_norm(), optimizer)``;
* ``skip+spike+norm``: ``skip_bad_steps(chain(record_norm(), optimizer),
  spike_sigma=6)``: two stages asking for the same norm;
* ``apply_if_finite``: ``optax.apply_if_finite(optimizer, 10)``, Optax's
  wrapper, which chooses with ``lax.cond`` where ``skip_bad_steps`` selects
  with ``jnp.where``.

For each it also counts, in the compiled step, the array kernels (fusions and
copies, as ``run.py`` does) and the ``reduce`` operations: with ``record_norm``
inside, the wrapper's sum of squares is the same expression on the same
gradients, and XLA's common-subexpression pass merges the two.

Results go to ``benchmarks/results/<backend>-skip.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as C
import variants as V
from machine import machine_info
from timing import side_header, step_rows

import optaxtra

BASE = "optaxtra"


def makers() -> dict:
  def tx(make_tx):
    def make():
      t = make_tx()
      return V.tx_step(t), t.init

    return make

  sigma = 6.0
  return {
    BASE: tx(V.optaxtra_tx),
    "skip": tx(lambda: optaxtra.skip_bad_steps(V.optaxtra_tx())),
    "skip+spike": tx(
      lambda: optaxtra.skip_bad_steps(V.optaxtra_tx(), spike_sigma=sigma)
    ),
    "norm": tx(V.optaxtra_norm_tx),
    "skip+spike+norm": tx(
      lambda: optaxtra.skip_bad_steps(V.optaxtra_norm_tx(), spike_sigma=sigma)
    ),
    "apply_if_finite": tx(lambda: optax.apply_if_finite(V.optaxtra_tx(), 10)),
  }


def reduce_ops(contender) -> int:
  text = contender.fn.as_text()
  return len(re.findall(r"\breduce\(", text))


def markdown(res) -> str:
  sizes = list(res["sizes"])
  names = list(res["sizes"][sizes[0]]["rows"])
  out = [
    side_header(res),
    "",
    "### Time per step (ms), and ratio to the optimizer alone",
    "",
    "| contender | " + " | ".join(f"{float(s):.0e}" for s in sizes) + " |",
    "| --- |" + " ---: |" * len(sizes),
  ]
  for name in names:
    cells = []
    for s in sizes:
      rows = res["sizes"][s]["rows"]
      r = rows[name]
      ratio = r["step_s"] / rows[BASE]["step_s"]
      cells.append(f"{r['step_s'] * 1e3:.3g} ({ratio:.2f}x)")
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  out += [
    "",
    "### Compiled step: array kernels (fusions + copies) and reduce operations",
    "",
    "| contender | " + " | ".join(f"{float(s):.0e}" for s in sizes) + " |",
    "| --- |" + " ---: |" * len(sizes),
  ]
  for name in names:
    cells = []
    for s in sizes:
      r = res["sizes"][s]["rows"][name]
      k = r.get("kernels", {})
      cells.append(
        f"{k.get('array_fusions', '?')}+{k.get('array_copies', '?')}, "
        f"{r['reduce_ops']} reduce"
      )
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
  ap.add_argument("--reps", type=int, default=9)
  ap.add_argument("--target-s", type=float, default=0.05)
  ap.add_argument("--out", default=None, help="output stem")
  args = ap.parse_args(argv)
  stem = (
    Path(args.out)
    if args.out
    else (Path(__file__).resolve().parent / "results" / f"{jax.default_backend()}-skip")
  )
  stem.parent.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  res = {
    "machine": machine_info(),
    "reps": args.reps,
    "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    "sizes": {},
  }
  rng = np.random.default_rng(0)
  for size in args.sizes:
    n = int(size)
    params_np, grads_np = C.one_leaf(n, rng)
    grads = jax.tree.map(jax.device_put, grads_np)
    cs = [
      C.JaxContender(name, make, params_np, grads) for name, make in makers().items()
    ]
    reps = 3 * args.reps if n < 1_000_000 else args.reps
    rows = step_rows(cs, reps, args.target_s)
    for c in cs:
      rows[c.name]["reduce_ops"] = reduce_ops(c)
    res["sizes"][str(n)] = {"rows": rows}
    base = rows[BASE]["step_s"]
    print(f"== one leaf, n={n:.0e}", flush=True)
    for name, r in rows.items():
      print(
        f"  {name:16s} {r['step_s'] * 1e3:9.3f} ms  {r['step_s'] / base:5.2f}x  "
        f"kernels {r['kernels'].get('array_fusions')}+"
        f"{r['kernels'].get('array_copies')}  reduce {r['reduce_ops']}",
        flush=True,
      )
    del cs
  res["wall_s"] = time.perf_counter() - t0
  Path(f"{stem}.json").write_text(json.dumps(res, indent=1))
  Path(f"{stem}.md").write_text(markdown(res))
  print(f"wrote {stem}.json and {stem}.md in {res['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
