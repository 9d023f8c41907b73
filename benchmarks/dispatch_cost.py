"""What one more scalar in an optimizer's state costs per step.

Usage (from the repository root)::

  python benchmarks/dispatch_cost.py

A jitted step on 16 floats carries N extra int32 scalars in its donated
state, either incremented (one scalar kernel each) or returned unchanged (no
kernel). Interleaved, medians of 21 samples of 1,000 steps. If both columns
grow alike with N, the cost is JAX's dispatch of one more donated buffer, not
XLA's work: that is the fixed cost behind the state values ``optaxtra.inspect``
reads (see RESULTS.md, "Fixed cost per step").
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

COUNTS = (0, 1, 2, 4, 8)


def make(n_scalars: int, increment: bool):
  def step(x, scalars):
    if increment:
      scalars = [jnp.where(c < 2**31 - 1, c + 1, c) for c in scalars]
    return x * 2.0, scalars

  step = jax.jit(step, donate_argnums=(0, 1))
  box = [jnp.ones(16), [jnp.zeros([], jnp.int32) for _ in range(n_scalars)]]

  def run(k: int) -> float:
    x, s = box
    t0 = time.perf_counter()
    for _ in range(k):
      x, s = step(x, s)
    jax.block_until_ready((x, s))
    box[:] = [x, s]
    return (time.perf_counter() - t0) / k

  return run


def main(reps: int = 21, steps: int = 1000) -> dict:
  runs = {(n, inc): make(n, inc) for n in COUNTS for inc in (True, False)}
  for run in runs.values():
    run(50)
  times = {key: [] for key in runs}
  keys = list(runs)
  for r in range(reps):
    for j in range(len(keys)):
      key = keys[(j + r) % len(keys)]
      times[key].append(runs[key](steps))
  med = {key: statistics.median(ts) for key, ts in times.items()}
  print("extra scalars | incremented (us/step) | returned unchanged (us/step)")
  for n in COUNTS:
    print(f"{n:13d} | {med[n, True] * 1e6:21.2f} | {med[n, False] * 1e6:28.2f}")
  return med


if __name__ == "__main__":
  main()
