"""optaxtra's speed suite: one process, contenders interleaved, medians.

Usage (from the repository root)::

  python benchmarks/run.py --quick          # < 2 minutes: 1e5..1e7, 10 and 100 leaves
  python benchmarks/run.py --leaves 10 100 1000   # the recorded run, ~7.5 minutes
  python benchmarks/run.py --sizes --leaves 10000 --reps 5 --compile-reps 0
  python benchmarks/run.py --sizes 1e6 --leaves --only optaxtra optax-chain
  python benchmarks/run.py --fixed-cost     # only the fixed cost per step (n=16)

It writes ``benchmarks/results/<backend>[-fixed][-quick].json`` and ``.md``. It
starts with the fixed cost per step (one leaf of 16 entries: dispatch and scalar
work only), then one-leaf sizes, then trees. Each
repetition runs every contender once, in a rotated order, so that load from
other processes spreads over all of them; the tables give medians and ratios
taken within this one run. Bytes per step are counted as 28 per float32
parameter (read params, grads, mu, nu; write params, mu, nu) for every
contender, and compared with the copy bandwidth measured at the start.

Device-agnostic: on a GPU it uses the default JAX device, PyTorch's ``cuda``
(with fused AdamW) and synchronises before reading the clock.

The pieces: ``machine.py`` (versions, bandwidth), ``variants.py`` (the step
functions), ``contenders.py`` (which contenders each table times, and how each
is built), ``equivalence.py`` (the check that they compute what they claim),
``timing.py`` (warm-up, interleaved repetitions, medians) and ``report.py``
(console lines, .json and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _early_threads():
  """``--threads N``: pin this process to N cores before JAX and torch start.

  Their thread pools size themselves from the CPU affinity at start-up. On a
  loaded machine one thread per library gives steadier medians than thread
  pools waiting on each other; ``--threads`` is recorded with the results.
  """
  if "--threads" in sys.argv:
    n = int(sys.argv[sys.argv.index("--threads") + 1])
    cpus = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cpus)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


_early_threads()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as C  # noqa: E402
from equivalence import check_equivalence  # noqa: E402
from machine import machine_info, measure_bandwidth  # noqa: E402
from report import markdown, print_rows, save  # noqa: E402
from timing import BYTES_PER_PARAM, time_table  # noqa: E402


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="small sizes, few reps")
  ap.add_argument("--sizes", type=float, nargs="*", help="one-leaf sizes")
  ap.add_argument("--leaves", type=int, nargs="*", help="leaf counts of the trees")
  ap.add_argument("--tree-total", type=float, default=1e6, help="entries per tree")
  ap.add_argument("--reps", type=int, help="interleaved repetitions (medians)")
  ap.add_argument(
    "--small-reps",
    type=int,
    help="repetitions for steps under 1 ms and the fixed cost (default 3x --reps)",
  )
  ap.add_argument(
    "--no-fixed", action="store_true", help="skip the fixed cost per step (n=16)"
  )
  ap.add_argument(
    "--fixed-cost",
    action="store_true",
    help="only the fixed cost per step (n=16; no sizes or trees unless given), "
    "written to results/<backend>-fixed",
  )
  ap.add_argument("--compile-reps", type=int, help="fresh compiles per contender")
  ap.add_argument("--out", default=None, help="output stem (default results/<backend>)")
  ap.add_argument(
    "--only", nargs="+", help="time only these contenders (names as in the tables)"
  )
  ap.add_argument("--skip-check", action="store_true")
  ap.add_argument("--threads", type=int, help="pin to this many cores (see above)")
  ap.add_argument("--packing", action="store_true", help="time the packing prototype")
  ap.add_argument("--report", help="only rewrite the .md of this results .json")
  return ap


def main(argv=None):
  ap = parser()
  args = ap.parse_args(argv)
  if args.report:
    with open(args.report) as f:
      res = json.load(f)
    Path(args.report).with_suffix(".md").write_text(markdown(res))
    return
  if args.fixed_cost and args.no_fixed:
    ap.error("--fixed-cost and --no-fixed exclude each other")

  quick, fixed_only = args.quick, args.fixed_cost
  default_sizes = [1e5, 1e6, 1e7] if quick else [1e5, 1e6, 1e7, 1e8]
  default_leaves = [10, 100] if quick else [10, 100, 1000, 10000]
  if fixed_only:
    default_sizes, default_leaves = [], []
  sizes = [int(s) for s in (default_sizes if args.sizes is None else args.sizes)]
  leaves = default_leaves if args.leaves is None else args.leaves
  reps = args.reps or (5 if quick else 11)
  # Sub-millisecond steps are cheap to repeat and the most exposed to load
  # from other processes: they get more repetitions.
  small_reps = args.small_reps or 3 * reps
  compile_reps = (
    args.compile_reps if args.compile_reps is not None else (0 if quick else 1)
  )
  target_s = 0.03 if quick else 0.15
  total = int(args.tree_total)
  backend = jax.default_backend()
  name = backend + ("-fixed" if fixed_only else "") + ("-quick" if quick else "")
  stem = (
    Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / name
  )
  stem.parent.mkdir(parents=True, exist_ok=True)

  t_start = time.perf_counter()
  info = machine_info()
  print(json.dumps(info), flush=True)
  if not args.skip_check:
    check_equivalence()
    print("contenders agree with optaxtra", flush=True)
  big = 25_000_000 if quick else 100_000_000
  smallest = 10_000_000
  bw_n = max(min(max(sizes, default=smallest if fixed_only else big), big), smallest)
  bw = measure_bandwidth(bw_n, reps)
  print("bandwidth", json.dumps(bw), flush=True)
  results = {
    "machine": info,
    "bandwidth": bw,
    "one_leaf": {},
    "trees": {},
    "config": {
      "reps": reps,
      "small_reps": small_reps,
      "compile_reps": compile_reps,
      "tree_total": total,
      "pack_below": C.PACK_BELOW,
      "bytes_per_param": BYTES_PER_PARAM,
      "fixed_cost_only": fixed_only,
    },
  }
  rng = np.random.default_rng(0)

  if not args.no_fixed:
    # A step on 16 entries costs only dispatch and scalar work: the fixed cost
    # per step, which is what separates contenders on small models.
    n = C.FIXED_N
    rows, _, _ = time_table(
      C.only(C.FIXED, args.only), lambda: C.one_leaf(n, rng), small_reps, target_s
    )
    results["fixed"] = {"n": n, "rows": rows}
    print_rows(f"fixed cost, one leaf of n={n}", rows, micro=True)
    save(results, stem)

  for n in sizes:
    names = C.only(C.ONE_LEAF_BIG if n >= 50_000_000 else C.ONE_LEAF, args.only)
    rows, skipped, _ = time_table(
      names,
      lambda n=n: C.one_leaf(n, rng),
      small_reps if n < 1_000_000 else reps,
      target_s,
    )
    results["one_leaf"][str(n)] = {"rows": rows, "skipped": skipped}
    print_rows(f"one leaf, n={n:.0e}", rows)
    save(results, stem)

  for nl in leaves:
    cr = compile_reps if nl < 10_000 else min(compile_reps, 1)
    names = C.TREE if nl < 10_000 else C.TREE_HUGE
    if args.packing and nl <= C.PACKED_MAX_LEAVES:
      names = [*names, *C.PACKING]
    rows, skipped, n = time_table(
      C.only(names, args.only),
      lambda nl=nl: C.random_tree(nl, total, rng),
      reps,
      target_s,
      compile_reps=cr,
    )
    results["trees"][str(nl)] = {"rows": rows, "skipped": skipped, "total": n}
    print_rows(f"{nl} leaves, {n:.1e} entries", rows)
    save(results, stem)

  results["wall_s"] = time.perf_counter() - t_start
  save(results, stem)
  print(f"wrote {stem}.json and {stem}.md in {results['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
