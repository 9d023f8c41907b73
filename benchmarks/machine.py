"""The machine the benchmark runs on: versions, memory, PyTorch, copy bandwidth.

``machine_info()`` is recorded with every result; ``measure_bandwidth()`` gives
the roofline the bandwidth tables compare against. PyTorch is optional: the
``torch_*`` helpers answer None / "cpu" without it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import numpy as np
import optax

import optaxtra


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
  torch = torch_module()
  if torch is not None:
    info["torch"] = torch.__version__
    if "OMP_NUM_THREADS" in os.environ:
      torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    info["torch_threads"] = torch.get_num_threads()
    info["torch_device"] = torch_device()
  return info


def _version(pkg):
  try:
    from importlib.metadata import version

    return version(pkg)
  except Exception:
    return None


def mem_available() -> float:
  """Bytes of memory available now (inf where /proc/meminfo is missing)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return float("inf")


_TORCH = None


def torch_module():
  """The ``torch`` module, or None where PyTorch is not installed."""
  global _TORCH
  if _TORCH is None:
    try:
      import torch

      _TORCH = torch
    except ImportError:
      _TORCH = False
  return _TORCH or None


def torch_device():
  torch = torch_module()
  return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def sync_torch():
  torch = torch_module()
  if torch is not None and torch.cuda.is_available():
    torch.cuda.synchronize()


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
  torch = torch_module()
  if torch is not None:
    dev = torch_device()
    ta = torch.ones(n, dtype=torch.float32, device=dev)
    tb = torch.empty_like(ta)
    tb.copy_(ta)

    def run_torch():
      tb.copy_(ta)
      sync_torch()

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
