"""optaxtra's speed suite: one process, contenders interleaved, medians.

Usage (from the repository root)::

  python benchmarks/run.py --quick          # < 2 minutes: 1e5..1e7, 10 and 100 leaves
  python benchmarks/run.py --leaves 10 100 1000   # the recorded run, ~7.5 minutes
  python benchmarks/run.py --sizes --leaves 10000 --reps 5 --compile-reps 0
  python benchmarks/run.py --sizes 1e6 --leaves --only optaxtra optax-chain

It writes ``benchmarks/results/<backend>[-quick].json`` and ``.md``. It starts
with the fixed cost per step (one leaf of 16 entries: dispatch and scalar work
only), then one-leaf sizes, then trees. Each
repetition runs every contender once, in a rotated order, so that load from
other processes spreads over all of them; the tables give medians and ratios
taken within this one run. Bytes per step are counted as 28 per float32
parameter (read params, grads, mu, nu; write params, mu, nu) for every
contender, and compared with the copy bandwidth measured at the start.

Device-agnostic: on a GPU it uses the default JAX device, PyTorch's ``cuda``
(with fused AdamW) and synchronises before reading the clock.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optaxtra  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import variants as V  # noqa: E402

BYTES_PER_PARAM = 28  # read p, g, mu, nu; write p, mu, nu (float32)
PACK_BELOW = 1 << 16


# --- machine ----------------------------------------------------------------


def machine_info() -> dict:
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  mem_gib = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal"):
          mem_gib = round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  info = {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "memory_gib": mem_gib,
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": getattr(jax.lib, "__version__", None) or _version("jaxlib"),
    "optax": optax.__version__,
    "optaxtra": optaxtra.__version__,
    "numpy": np.__version__,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "affinity": len(os.sched_getaffinity(0)),
  }
  torch = _torch()
  if torch is not None:
    info["torch"] = torch.__version__
    if "OMP_NUM_THREADS" in os.environ:
      torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    info["torch_threads"] = torch.get_num_threads()
    info["torch_device"] = _torch_device()
  return info


def _version(pkg):
  try:
    from importlib.metadata import version

    return version(pkg)
  except Exception:
    return None


def _mem_available() -> float:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return float("inf")


_TORCH = None


def _torch():
  global _TORCH
  if _TORCH is None:
    try:
      import torch

      _TORCH = torch
    except ImportError:
      _TORCH = False
  return _TORCH or None


def _torch_device():
  torch = _torch()
  return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def _sync_torch():
  torch = _torch()
  if torch is not None and torch.cuda.is_available():
    torch.cuda.synchronize()


def _median_time(fn, reps):
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_bandwidth(n: int, reps: int) -> dict:
  """Copy bandwidth (bytes read + written per second) of the device and NumPy."""
  out = {"n": n}
  x = jax.device_put(np.ones(n, np.float32))
  neg = jax.jit(lambda a: a * -1.0, donate_argnums=0)
  copy = jax.jit(lambda a: a * -1.0)
  box = [neg(x)]
  box[0].block_until_ready()

  def run_neg():
    box[0] = neg(box[0])
    box[0].block_until_ready()

  y = copy(box[0])
  y.block_until_ready()
  del y

  def run_copy():
    copy(box[0]).block_until_ready()

  a = np.ones(n, np.float32)
  b = np.empty_like(a)
  np.copyto(b, a)
  tests = {
    "jax_inplace_scale": (run_neg, 8 * n),  # x = -x in a donated buffer
    "jax_scale_new_buffer": (run_copy, 8 * n),  # y = -x, fresh output
    "numpy_copyto": (lambda: np.copyto(b, a), 8 * n),
    "numpy_inplace_scale": (lambda: np.multiply(a, -1.0, out=a), 8 * n),
  }
  torch = _torch()
  if torch is not None:
    dev = _torch_device()
    ta = torch.ones(n, dtype=torch.float32, device=dev)
    tb = torch.empty_like(ta)
    tb.copy_(ta)

    def run_torch():
      tb.copy_(ta)
      _sync_torch()

    tests["torch_copy"] = (run_torch, 8 * n)
  times = {k: [] for k in tests}
  for _ in range(reps):  # interleaved
    for k, (fn, _) in tests.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  for k, (_, nbytes) in tests.items():
    out[k + "_gbs"] = nbytes / statistics.median(times[k]) / 1e9
  out["roofline_gbs"] = out["jax_inplace_scale_gbs"]
  return out


# --- contenders -------------------------------------------------------------


class JaxContender:
  """A jitted step (params and state donated) with its own buffers."""

  kind = "jax"

  def __init__(self, name, make, params_np, grads):
    """``make()`` returns ``(step, init)``; called again for each compile."""
    self.name, self.make = name, make
    self.grads = grads
    self.params = jax.tree.map(jax.device_put, params_np)
    step, init = make()
    self.state = init(self.params)
    self.fn, self.trace_s, self.compile_s = self._compile(step)
    self.trace_times, self.compile_times = [self.trace_s], [self.compile_s]

  def _compile(self, step):
    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(
      self.params, self.state, self.grads
    )
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    if not hasattr(self, "kernels"):
      self.kernels = hlo_kernels(compiled)
    return compiled, t1 - t0, t2 - t1

  def recompile(self):
    """Trace, lower and compile a fresh copy (no cache hit: a new function)."""
    step, _ = self.make()
    _, tr, co = self._compile(step)
    self.trace_times.append(tr)
    self.compile_times.append(co)

  def run(self, k):
    p, s, g, fn = self.params, self.state, self.grads, self.fn
    t0 = time.perf_counter()
    for _ in range(k):
      p, s = fn(p, s, g)
    jax.block_until_ready((p, s))
    t = time.perf_counter() - t0
    self.params, self.state = p, s
    return t / k


def hlo_kernels(compiled) -> dict:
  """What the compiled step launches: fusions and copies, and of parameter size.

  Deterministic, so it explains timings that load from other processes blurs.
  """
  try:
    text = compiled.as_text()
  except Exception:
    return {}
  entry = text[text.index("ENTRY") :] if "ENTRY" in text else text
  lines = [ln for ln in entry.splitlines() if " = " in ln]
  out = {"fusions": 0, "copies": 0, "array_fusions": 0, "array_copies": 0}
  for ln in lines:
    op = ln.split(" = ", 1)[1]
    is_scalar = op.split(" ", 1)[0].endswith("[]")
    for key, tag in (("fusions", " fusion("), ("copies", " copy(")):
      if tag in op:
        out[key] += 1
        if not is_scalar:
          out["array_" + key] += 1
  return out


class TorchContender:
  kind = "torch"

  def __init__(self, name, cls, kwargs, params_np, grads_t):
    torch = _torch()
    dev = _torch_device()
    self.name = name
    self.params = [
      torch.nn.Parameter(torch.tensor(p, device=dev))
      for p in jax.tree.leaves(params_np)
    ]
    for p, g in zip(self.params, grads_t, strict=True):
      p.grad = g
    self.opt = cls(self.params, **kwargs)
    self.trace_times = self.compile_times = []

  def recompile(self):
    pass

  def run(self, k):
    step = self.opt.step
    t0 = time.perf_counter()
    for _ in range(k):
      step()
    _sync_torch()
    return (time.perf_counter() - t0) / k


def jax_makers(include):
  """name -> make() for the JAX contenders in ``include``."""

  def tx(t):
    return lambda: (V.tx_step(t), t.init)

  makers = {
    "optaxtra": lambda: tx(V.optaxtra_tx())(),
    "optaxtra+track": lambda: tx(V.optaxtra_tx(track=True))(),
    "hand-fused": lambda: (V.hand_fused_step(False), V.hand_fused_init),
    "hand-fused+count": lambda: (V.hand_fused_step(True), V.hand_fused_init_diag),
    "hand-fused-naive": lambda: (
      V.hand_fused_step(False, naive=True),
      V.hand_fused_init,
    ),
    "proto-fused": lambda: tx(V.fused_adamax_clipped())(),
    "proto-fused-nodiag": lambda: tx(V.fused_adamax_clipped(diagnostics=False))(),
    "proto-packed": lambda: tx(V.fused_adamax_clipped(pack_below=PACK_BELOW))(),
    "optaxtra-noclip-bc": lambda: tx(V.optaxtra_tx(clip=False, bias_correction=True))(),
    "optax-chain": lambda: tx(V.optax_chain())(),
  }
  return {k: makers[k] for k in include if k in makers}


def torch_specs():
  torch = _torch()
  if torch is None:
    return {}
  lr, wd = V.PEAK_LR, V.WEIGHT_DECAY
  betas = (V.B1, V.B2)
  specs = {
    "torch-Adamax": (
      torch.optim.Adamax,
      dict(lr=lr, betas=betas, eps=V.EPS, weight_decay=wd, foreach=True),
    ),
    "torch-AdamW": (
      torch.optim.AdamW,
      dict(lr=lr, betas=betas, eps=V.EPS, weight_decay=wd, foreach=True),
    ),
  }
  if _torch_device() == "cuda":
    specs["torch-AdamW-fused"] = (
      torch.optim.AdamW,
      dict(lr=lr, betas=betas, eps=V.EPS, weight_decay=wd, fused=True),
    )
  return specs


def build(names, params_np, grads_np, total):
  """The contenders, leaving out the last ones when memory would run short."""
  budget = 0.6 * _mem_available()
  per = 3 * 4 * total  # params + two moments
  grads = jax.tree.map(jax.device_put, grads_np)
  used = 4 * total
  out, skipped = [], []
  makers, tspecs = jax_makers([*names, "hand-fused"]), torch_specs()
  grads_t = None
  for name in names:
    need = per + (2 * 4 * total if name.startswith("torch") else 0)
    if used + need > budget:
      skipped.append(name)
      continue
    if name == "hand-fused-flat":  # the lower bound: all leaves in one buffer
      flat = {"w": np.concatenate([x.ravel() for x in jax.tree.leaves(params_np)])}
      gflat = jax.device_put(
        np.concatenate([x.ravel() for x in jax.tree.leaves(grads_np)])
      )
      out.append(JaxContender(name, makers["hand-fused"], flat, {"w": gflat}))
    elif name in makers:
      t0 = time.perf_counter()
      out.append(JaxContender(name, makers[name], params_np, grads))
      took = time.perf_counter() - t0
      if took > 10:  # progress on the slow compiles of big trees
        print(f"  built {name} in {took:.0f} s", flush=True)
    elif name in tspecs:
      if grads_t is None:
        torch = _torch()
        grads_t = [
          torch.tensor(g, device=_torch_device()) for g in jax.tree.leaves(grads_np)
        ]
        used += 4 * total
      cls, kw = tspecs[name]
      out.append(TorchContender(name, cls, kw, params_np, grads_t))
    else:
      continue
    used += per
  return out, skipped


def time_interleaved(contenders, reps, target_s, compile_reps=0):
  for c in contenders:  # warm up: first touches, allocator, dispatch caches
    c.run(2)
  t = min(c.run(1) for c in contenders)
  k = max(1, min(2000, math.ceil(target_s / max(t, 1e-7))))
  times = {c.name: [] for c in contenders}
  n = len(contenders)
  for r in range(reps):
    for j in range(n):
      c = contenders[(j + r) % n]
      times[c.name].append(c.run(k))
  for r in range(compile_reps):
    for j in range(n):
      contenders[(j + r) % n].recompile()
  return times, k


def summarize(contenders, times, k, total):
  rows = {}
  for c in contenders:
    ts = times[c.name]
    med = statistics.median(ts)
    row = {
      "kind": c.kind,
      "step_s": med,
      "step_s_min": min(ts),
      "step_s_all": ts,
      "steps_per_sample": k,
      "gbs": BYTES_PER_PARAM * total / med / 1e9,
    }
    if getattr(c, "kernels", None):
      row["kernels"] = c.kernels
    if c.kind == "jax":
      row["state_leaves"] = len(jax.tree.leaves(c.state))
    if c.compile_times:
      row["trace_s"] = statistics.median(c.trace_times)
      row["compile_s"] = statistics.median(c.compile_times)
      row["compile_total_s"] = row["trace_s"] + row["compile_s"]
    rows[c.name] = row
  return rows


def random_tree(n_leaves, total, rng):
  """``n_leaves`` arrays of about ``total / n_leaves`` entries, 2-D and 1-D mixed."""
  per = max(1, total // n_leaves)
  params, grads = {}, {}
  for i in range(n_leaves):
    if i % 2 == 0 and per >= 16:
      rows = 2 ** max(0, int(math.log2(per) / 2))
      shape = (rows, per // rows)
    else:
      shape = (per,)
    params[f"layer_{i:05d}"] = rng.standard_normal(shape, dtype=np.float32)
    grads[f"layer_{i:05d}"] = 1e-2 * rng.standard_normal(shape, dtype=np.float32)
  return params, grads


# --- correctness of the contenders --------------------------------------------


def check_equivalence():
  """The contenders compute what they claim to (small tree, 20 steps)."""
  rng = np.random.default_rng(1)
  params_np, _ = random_tree(5, 3000, rng)
  params_np["tiny"] = rng.standard_normal((3,), dtype=np.float32)
  grads_seq = [
    jax.tree.map(lambda p: 1e-2 * rng.standard_normal(p.shape, np.float32), params_np)
    for _ in range(20)
  ]

  def run(step, init):
    p = jax.tree.map(jnp.asarray, params_np)
    s = init(p)
    step = jax.jit(step)
    for g in grads_seq:
      p, s = step(p, s, g)
    return p, s

  ref_p, _ = run(V.tx_step(V.optaxtra_tx()), V.optaxtra_tx().init)
  tr_tx = V.optaxtra_tx(track=True)
  tr_p, tr_s = run(V.tx_step(tr_tx), tr_tx.init)
  _within_ulps("optaxtra with and without the clip share", tr_p, ref_p)
  hf_p, hf_s = run(V.hand_fused_step(True), V.hand_fused_init_diag)
  _allclose("hand-fused vs optaxtra", hf_p, ref_p, 1e-6)
  nv_p, _ = run(V.hand_fused_step(False, naive=True), V.hand_fused_init)
  _within_ulps("hand-fused-naive vs hand-fused", nv_p, hf_p)
  for pack, tx in {
    "proto-fused": V.fused_adamax_clipped(),
    "proto-packed": V.fused_adamax_clipped(pack_below=PACK_BELOW),
  }.items():
    p, s = run(V.tx_step(tx), tx.init)
    _allclose(f"{pack} vs optaxtra", p, ref_p, 1e-6)
    _allclose(f"{pack} state", s, tr_s, 1e-6)
  n_total = sum(x.size for x in jax.tree.leaves(params_np))
  frac = float(tr_s[0].clip_fraction)
  if not math.isclose(frac, int(hf_s[3]) / n_total, rel_tol=1e-6):
    raise AssertionError(f"clip fraction {frac} vs count {int(hf_s[3])}")
  nc_p, _ = run(
    V.tx_step(V.optaxtra_tx(clip=False, bias_correction=True)),
    V.optaxtra_tx(clip=False, bias_correction=True).init,
  )
  ox_p, _ = run(V.tx_step(V.optax_chain()), V.optax_chain().init)
  _allclose("optaxtra(clip=False, bc) vs optax chain", nc_p, ox_p, 1e-5)


def _within_ulps(what, a, b, maxulp=4):
  """The same arithmetic as two compiled programs: equal up to the roundings
  that FMA contraction may change (a few ulps; tests/_harness.py,
  CROSS_PROGRAM_ULPS, says why 4)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    try:
      np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp)
    except AssertionError as e:
      raise AssertionError(f"{what}: {e}") from None


def _allclose(what, a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    same = np.allclose(x, y, rtol, rtol * 1e-2)
    if not same:
      err = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
      raise AssertionError(f"{what}: max abs difference {err}")


# --- main -------------------------------------------------------------------

ONE_LEAF = [
  "optaxtra",
  "optaxtra+track",
  "hand-fused",
  "hand-fused+count",
  "hand-fused-naive",
  "optaxtra-noclip-bc",
  "optax-chain",
  "torch-Adamax",
  "torch-AdamW",
  "torch-AdamW-fused",
]
# At 1e8 every contender holds 1.2 GB: keep the ones the targets need.
ONE_LEAF_BIG = [n for n in ONE_LEAF if n != "hand-fused+count"]
# The fixed cost per step: one leaf of FIXED_N entries.
FIXED_N = 16
FIXED = [
  "optaxtra",
  "hand-fused",
  "optaxtra-noclip-bc",
  "optax-chain",
  "torch-Adamax",
  "torch-AdamW",
]
TREE = [
  "optaxtra",
  "optaxtra+track",
  "hand-fused",
  "hand-fused-flat",
  "optaxtra-noclip-bc",
  "optax-chain",
  "torch-Adamax",
  "torch-AdamW",
  "torch-AdamW-fused",
]
# --packing adds these; packing inside the step compiles in minutes beyond
# ~100 leaves on CPU (the concatenations and slices), so only up to that.
PACKING = ["proto-fused-nodiag", "proto-packed"]
PACKED_MAX_LEAVES = 100
# At 10,000 leaves XLA on CPU takes minutes and ~8 GB of memory per compiled
# step: two per-leaf steps (optaxtra, Optax's chain) and the flat floor.
TREE_HUGE = [
  "optaxtra",
  "hand-fused-flat",
  "optax-chain",
  "torch-Adamax",
  "torch-AdamW",
  "torch-AdamW-fused",
]


def main(argv=None):
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
  ap.add_argument("--compile-reps", type=int, help="fresh compiles per contender")
  ap.add_argument("--out", default=None, help="output stem (default results/<backend>)")
  ap.add_argument(
    "--only", nargs="+", help="time only these contenders (names as in the tables)"
  )
  ap.add_argument("--skip-check", action="store_true")
  ap.add_argument("--threads", type=int, help="pin to this many cores (see above)")
  ap.add_argument("--packing", action="store_true", help="time the packing prototype")
  ap.add_argument("--report", help="only rewrite the .md of this results .json")
  args = ap.parse_args(argv)
  if args.report:
    with open(args.report) as f:
      res = json.load(f)
    Path(args.report).with_suffix(".md").write_text(markdown(res))
    return

  quick = args.quick
  default_sizes = [1e5, 1e6, 1e7] if quick else [1e5, 1e6, 1e7, 1e8]
  sizes = [int(s) for s in (default_sizes if args.sizes is None else args.sizes)]
  default_leaves = [10, 100] if quick else [10, 100, 1000, 10000]
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
  stem = (
    Path(args.out)
    if args.out
    else Path(__file__).resolve().parent
    / "results"
    / (backend + ("-quick" if quick else ""))
  )
  stem.parent.mkdir(parents=True, exist_ok=True)

  t_start = time.perf_counter()
  info = machine_info()
  print(json.dumps(info), flush=True)
  if not args.skip_check:
    check_equivalence()
    print("contenders agree with optaxtra", flush=True)
  big = 25_000_000 if quick else 100_000_000
  bw = measure_bandwidth(max(min(max(sizes, default=big), big), 10_000_000), reps)
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
      "pack_below": PACK_BELOW,
      "bytes_per_param": BYTES_PER_PARAM,
    },
  }
  rng = np.random.default_rng(0)

  if not args.no_fixed:
    # A step on 16 entries costs only dispatch and scalar work: the fixed cost
    # per step, which is what separates contenders on small models.
    n = FIXED_N
    params_np = {"w": rng.standard_normal(n, dtype=np.float32)}
    grads_np = {"w": 1e-2 * rng.standard_normal(n, dtype=np.float32)}
    cs, _ = build(_only(FIXED, args.only), params_np, grads_np, n)
    times, k = time_interleaved(cs, small_reps, target_s)
    results["fixed"] = {"n": n, "rows": summarize(cs, times, k, n)}
    _print_rows(f"fixed cost, one leaf of n={n}", results["fixed"]["rows"])
    del cs
    _save(results, stem)

  for n in sizes:
    params_np = {"w": rng.standard_normal(n, dtype=np.float32)}
    grads_np = {"w": 1e-2 * rng.standard_normal(n, dtype=np.float32)}
    names = _only(ONE_LEAF_BIG if n >= 50_000_000 else ONE_LEAF, args.only)
    cs, skipped = build(names, params_np, grads_np, n)
    del params_np, grads_np
    times, k = time_interleaved(cs, small_reps if n < 1_000_000 else reps, target_s)
    rows = summarize(cs, times, k, n)
    results["one_leaf"][str(n)] = {"rows": rows, "skipped": skipped}
    _print_rows(f"one leaf, n={n:.0e}", rows)
    del cs
    gc.collect()
    _save(results, stem)

  for nl in leaves:
    params_np, grads_np = random_tree(nl, total, rng)
    n = sum(x.size for x in params_np.values())
    cr = compile_reps if nl < 10_000 else min(compile_reps, 1)
    names = TREE if nl < 10_000 else TREE_HUGE
    if args.packing and nl <= PACKED_MAX_LEAVES:
      names = [*names, *PACKING]
    names = _only(names, args.only)
    cs, skipped = build(names, params_np, grads_np, n)
    times, k = time_interleaved(cs, reps, target_s, compile_reps=cr)
    rows = summarize(cs, times, k, n)
    results["trees"][str(nl)] = {"rows": rows, "skipped": skipped, "total": n}
    _print_rows(f"{nl} leaves, {n:.1e} entries", rows)
    del cs
    gc.collect()
    _save(results, stem)

  results["wall_s"] = time.perf_counter() - t_start
  _save(results, stem)
  print(f"wrote {stem}.json and {stem}.md in {results['wall_s']:.0f} s")


def _only(names, only):
  return names if not only else [n for n in names if n in only]


def _print_rows(title, rows):
  print(f"== {title}", flush=True)
  for name, r in rows.items():
    extra = f"  compile {r['compile_total_s']:.2f} s" if "compile_s" in r else ""
    if "kernels" in r:
      k = r["kernels"]
      extra += f"  kernels {k['fusions']}+{k['copies']}"
      extra += f" (arrays {k['array_fusions']}+{k['array_copies']})"
    print(f"  {name:22s} {r['step_s'] * 1e3:10.3f} ms  {r['gbs']:6.2f} GB/s{extra}")


def _save(results, stem):
  with open(f"{stem}.json", "w") as f:
    json.dump(results, f, indent=1)
  with open(f"{stem}.md", "w") as f:
    f.write(markdown(results))


# --- report -----------------------------------------------------------------


def _ratio(rows, a, b, key="step_s"):
  if a in rows and b in rows and key in rows[a] and key in rows[b]:
    return rows[a][key] / rows[b][key]
  return None


def _fmt(x, spec=".2f"):
  return "–" if x is None else format(x, spec)


def _grid(title, group, label, cell, keep=None) -> list[str]:
  """A Markdown table: one row per contender, one column per key of ``group``.

  ``cell(rows, name)`` renders a contender present in a column's rows; absent
  ones get a dash. ``keep(name)`` filters the contenders.
  """
  keys = list(group)
  names = []
  for key in keys:
    names += [n for n in group[key]["rows"] if n not in names]
  if keep is not None:
    names = [n for n in names if keep(n)]
  lines = [
    title,
    "",
    "| contender | " + " | ".join(label(k) for k in keys) + " |",
    "| --- |" + " ---: |" * len(keys),
  ]
  for name in names:
    cells = [
      cell(group[k]["rows"], name) if name in group[k]["rows"] else "–" for k in keys
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  return lines


def markdown(res) -> str:
  m, bw = res["machine"], res["bandwidth"]
  gpu = m["backend"] != "cpu"
  out = [
    f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
    f"backend {m['backend']} ({m['device']}); jax {m['jax']}, optax {m['optax']}, "
    f"optaxtra {m['optaxtra']}, torch {m.get('torch', '–')} "
    f"({m.get('torch_device', '–')}, {m.get('torch_threads', '–')} threads), "
    f"numpy {m['numpy']}, Python {m['python']}."
    + (f" XLA_FLAGS={m['xla_flags']}" if m["xla_flags"] else ""),
    "",
    f"Copy bandwidth (bytes read + written per second, {bw['n']:.0e} float32): "
    + ", ".join(f"{k[:-4]} {v:.1f} GB/s" for k, v in bw.items() if k.endswith("_gbs"))
    + f". Roofline used below: jax_inplace_scale, {bw['roofline_gbs']:.1f} GB/s.",
    "",
  ]
  roof = bw["roofline_gbs"]
  one, trees = res["one_leaf"], res["trees"]

  def size(s):
    return f"{int(s):.0e}"

  if one:

    def time_cell(rows, name):
      r = _ratio(rows, name, "hand-fused")
      return f"{rows[name]['step_s'] * 1e3:.3g} ({_fmt(r)}x)"

    def bandwidth_cell(rows, name):
      g = rows[name]["gbs"]
      return f"{g:.1f} ({100 * g / roof:.0f}%)"

    out += _grid(
      "### One leaf: time per step (ms), and ratio to the hand-fused update",
      one,
      size,
      time_cell,
    )
    out += _grid(
      f"### One leaf: achieved bandwidth, {BYTES_PER_PARAM} B/param "
      f"(GB/s, and % of the {roof:.1f} GB/s roofline)",
      one,
      size,
      bandwidth_cell,
    )
  if trees:

    def tree_cell(rows, name):
      r = rows[name]
      cell = f"{r['step_s'] * 1e3:.3g} ({_fmt(_ratio(rows, name, 'optax-chain'))}x)"
      if "compile_s" in r:
        cell += f" \\| {r['trace_s']:.2f} \\| {r['compile_s']:.2f}"
      return cell

    total = next(iter(trees.values()))["total"]
    out += _grid(
      f"### Trees of about {total:.0e} entries: step (ms) | trace+lower s | "
      "XLA compile s, ratio of step to Optax's chain",
      trees,
      lambda c: f"{c} leaves",
      tree_cell,
    )

  def kernel_cell(rows, name):
    k = rows[name].get("kernels")
    return "–" if not k else f"{k['array_fusions']}+{k['array_copies']}"

  for title, group in (("one leaf, size", one), ("tree, leaves", trees)):
    if group:
      out += _grid(
        "### Compiled kernels: fusions + copies on arrays (scalars excluded), " + title,
        group,
        str,
        kernel_cell,
        keep=lambda name, group=group: any(
          "kernels" in d["rows"].get(name, {}) for d in group.values()
        ),
      )
  fixed = res.get("fixed")
  if fixed:
    rows = fixed["rows"]
    base = rows.get("optax-chain", {}).get("step_s")
    out += [
      f"### Fixed cost per step (one leaf of {fixed['n']} entries): dispatch "
      "and scalar work",
      "",
      "| contender | µs per step (median) | minimum | more than Optax's chain "
      "| state leaves | scalar kernels |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
      k = r.get("kernels")
      scal = (
        "–"
        if not k
        else str(k["fusions"] + k["copies"] - k["array_fusions"] - k["array_copies"])
      )
      more = "–" if base is None else f"{(r['step_s'] - base) * 1e6:+.1f}"
      out.append(
        f"| {name} | {r['step_s'] * 1e6:.1f} | {r['step_s_min'] * 1e6:.1f} | "
        f"{more} | {r.get('state_leaves', '–')} | {scal} |"
      )
    out.append("")
  out += [
    "### Targets (ratios within this run)",
    "",
    "Judged on the ratio of medians; the ratio of the fastest samples (less "
    "exposed to load from other processes) is shown beside it.",
    "",
    "| target | value | of minima | limit | met |",
    "| --- | ---: | ---: | ---: | :---: |",
  ]

  def target(label, value, limit, value_min=None):
    ok = "–" if value is None else ("yes" if value <= limit else "**no**")
    out.append(
      f"| {label} | {_fmt(value, '.3f')} | {_fmt(value_min, '.3f')} | {limit} | {ok} |"
    )

  def ratios(rows, a, b):
    return _ratio(rows, a, b), _ratio(rows, a, b, "step_s_min")

  for s, d in one.items():
    rows = d["rows"]
    med, low = ratios(rows, "optaxtra", "hand-fused")
    target(f"optaxtra / hand-fused, n={int(s):.0e}", med, 1.05 if gpu else 1.10, low)
    med, low = ratios(rows, "optaxtra-noclip-bc", "optax-chain")
    target(f"optaxtra(clip=False, bc) / optax chain, n={int(s):.0e}", med, 1.05, low)
    d_hf = _ratio(rows, "hand-fused+count", "hand-fused")
    target(
      f"clip count share of the hand-fused step, n={int(s):.0e}",
      None if d_hf is None else 1 - 1 / d_hf,
      0.05,
    )
    d_pr = _ratio(rows, "optaxtra+track", "optaxtra")
    if d_pr is not None:
      target(
        f"clip count share of the optaxtra+track step, n={int(s):.0e}",
        1 - 1 / d_pr,
        0.05,
      )
    if gpu and int(s) >= 100_000_000 and "optaxtra" in rows:
      target(
        f"1 - optaxtra bandwidth / roofline, n={int(s):.0e}",
        1 - rows["optaxtra"]["gbs"] / roof,
        0.15,
      )
  if "1000" in trees:
    rows = trees["1000"]["rows"]
    for name in ("optaxtra-noclip-bc", "optaxtra", "optaxtra+track"):
      med, low = ratios(rows, name, "optax-chain")
      target(f"1000 leaves: {name} step / optax chain", med, 1.05, low)
      target(
        f"1000 leaves: {name} trace+compile / optax chain",
        _ratio(rows, name, "optax-chain", "compile_total_s"),
        1.25,
      )
  out.append("")
  return "\n".join(out)


if __name__ == "__main__":
  main()
