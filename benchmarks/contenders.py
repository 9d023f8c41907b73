"""The contenders: which ones each table times, and how each is built.

The step functions themselves are in ``variants.py``; here they become
``JaxContender`` (one jitted step, params and state donated, its own buffers)
or, for PyTorch's optimizers, ``TorchContender``. ``build()`` makes a table's
contenders for one set of parameters.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np
import variants as V
from machine import mem_available, sync_torch, torch_device, torch_module

PACK_BELOW = 1 << 16

# --- which contenders each table times ------------------------------------------

ONE_LEAF = [
  "optaxtra",
  "optaxtra+track",
  "optaxtra+norm",
  "optaxtra+average",
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
  "optaxtra-chain-0.1",
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


def only(names, keep):
  """``names`` restricted to those in ``keep`` (all of them if it is empty)."""
  return names if not keep else [n for n in names if n in keep]


# --- how each is built ------------------------------------------------------------


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
    torch = torch_module()
    dev = torch_device()
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
    sync_torch()
    return (time.perf_counter() - t0) / k


def jax_makers(include):
  """name -> make() for the JAX contenders in ``include``."""

  def tx(t):
    return lambda: (V.tx_step(t), t.init)

  makers = {
    "optaxtra": lambda: tx(V.optaxtra_tx())(),
    "optaxtra-chain-0.1": lambda: tx(V.optaxtra_chain_0_1())(),
    "optaxtra+track": lambda: tx(V.optaxtra_tx(track=True))(),
    "optaxtra+norm": lambda: tx(V.optaxtra_norm_tx())(),
    "optaxtra+average": lambda: tx(V.optaxtra_average_tx())(),
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
  torch = torch_module()
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
  if torch_device() == "cuda":
    specs["torch-AdamW-fused"] = (
      torch.optim.AdamW,
      dict(lr=lr, betas=betas, eps=V.EPS, weight_decay=wd, fused=True),
    )
  return specs


def build(names, params_np, grads_np, total):
  """The contenders, leaving out the last ones when memory would run short."""
  budget = 0.6 * mem_available()
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
        torch = torch_module()
        grads_t = [
          torch.tensor(g, device=torch_device()) for g in jax.tree.leaves(grads_np)
        ]
        used += 4 * total
      cls, kw = tspecs[name]
      out.append(TorchContender(name, cls, kw, params_np, grads_t))
    else:
      continue
    used += per
  return out, skipped


# --- the parameters they update -------------------------------------------------


def one_leaf(n, rng):
  """Params and grads of one leaf ``"w"`` of ``n`` float32 entries."""
  params = {"w": rng.standard_normal(n, dtype=np.float32)}
  grads = {"w": 1e-2 * rng.standard_normal(n, dtype=np.float32)}
  return params, grads


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
