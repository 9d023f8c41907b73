"""Timing: warm-up, interleaved repetitions, medians.

Each repetition runs every contender once, in a rotated order, so that load
from other processes spreads over all of them; each sample is the mean over
``k`` steps, ``k`` chosen so that the fastest contender's sample takes about
``target_s``.
"""

from __future__ import annotations

import gc
import math
import statistics

import jax
from contenders import build

BYTES_PER_PARAM = 28  # read p, g, mu, nu; write p, mu, nu (float32)


def time_interleaved(contenders, reps, target_s, compile_reps=0):
  """``{name: [seconds per step, one per repetition]}`` and the steps per sample."""
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


def step_rows(contenders, reps, target_s):
  """Times ``contenders`` interleaved: ``{name: row}``, a row holding the
  median and fastest seconds per step, every sample, the steps per sample and
  the compiled step's kernel counts (what the side benchmarks report)."""
  times, k = time_interleaved(contenders, reps, target_s)
  return {
    c.name: {
      "step_s": statistics.median(times[c.name]),
      "step_s_min": min(times[c.name]),
      "step_s_all": times[c.name],
      "steps_per_sample": k,
      "kernels": getattr(c, "kernels", {}),
    }
    for c in contenders
  }


def side_header(res) -> str:
  """The first line of a side benchmark's report: machine, versions, load."""
  m = res["machine"]
  return (
    f"Machine: {m['cpu']}, {m['cores']} cores; backend {m['backend']}; "
    f"jax {m['jax']}, optax {m['optax']}, optaxtra {m['optaxtra']}, "
    f"numpy {m['numpy']}, Python {m['python']}. Medians of {res['reps']} "
    f"interleaved repetitions; load average {res['load']}."
  )


def summarize(contenders, times, k, total):
  """One row per contender: median and minimum step, bandwidth, kernels, state."""
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
      # The state's structure is the one init gave: the compiled step takes
      # and returns only that.
      row["state_leaves"] = len(jax.tree.leaves(c.state))
    if c.compile_times:
      row["trace_s"] = statistics.median(c.trace_times)
      row["compile_s"] = statistics.median(c.compile_times)
      row["compile_total_s"] = row["trace_s"] + row["compile_s"]
    rows[c.name] = row
  return rows


def time_table(names, make_inputs, reps, target_s, compile_reps=0):
  """Build ``names``, time them, and return ``(rows, skipped, total entries)``.

  ``make_inputs()`` returns the (NumPy) params and grads; they are dropped once
  the contenders hold their own copies, as at 1e8 entries they weigh 800 MB.
  """
  params_np, grads_np = make_inputs()
  total = sum(x.size for x in jax.tree.leaves(params_np))
  cs, skipped = build(names, params_np, grads_np, total)
  del params_np, grads_np
  times, k = time_interleaved(cs, reps, target_s, compile_reps=compile_reps)
  rows = summarize(cs, times, k, total)
  del cs
  gc.collect()
  return rows, skipped, total
