"""Draws docs/_static/bad_steps.png: a run with bad batches, with and without
:func:`optaxtra.skip_bad_steps`.

Usage (from the repository root)::

  python docs/_static/bad_steps.py

A linear regression (20 weights, batches of 32) trained with Adam for 600
steps. Three batches are corrupted: at steps 150 and 300 the targets are
multiplied by 1000 (a finite gradient a thousand times too large), at step
450 one input is NaN. The loss plotted is that of a fixed clean evaluation
set, after each step. The three runs see the same batches:

* Adam alone: the spikes inflate Adam's second moment, which then shrinks
  every step for hundreds of steps; the NaN batch makes every weight NaN;
* ``skip_bad_steps(adam)``: the NaN batch is skipped, the spikes are not;
* ``skip_bad_steps(adam, spike_sigma=6)``: all three are skipped.

The lower panel shows the gradient norm of each batch and the threshold
``exp(mean + 6 std)`` of the log norms of the last 100 accepted steps.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax

import optaxtra
from optaxtra._skip_bad_steps import MIN_LOG_STD, WARMUP

STEPS, DIM, BATCH = 600, 20, 32
SPIKES, NAN = (150, 300), 450
SIGMA, WINDOW = 6.0, 100
OUT = Path(__file__).with_suffix(".png")


def data():
  rng = np.random.default_rng(0)
  w_true = rng.normal(size=DIM).astype(np.float32)
  xs = rng.normal(size=(STEPS, BATCH, DIM)).astype(np.float32)
  ys = xs @ w_true + 0.1 * rng.normal(size=(STEPS, BATCH)).astype(np.float32)
  for s in SPIKES:
    ys[s] *= 1000.0
  xs[NAN, 0, 0] = np.nan
  x_eval = rng.normal(size=(512, DIM)).astype(np.float32)
  y_eval = x_eval @ w_true
  return xs, ys, x_eval, y_eval


def loss(w, x, y):
  return jnp.mean((x @ w - y) ** 2)


def run(tx, xs, ys, x_eval, y_eval):
  @jax.jit
  def step(w, state, x, y):
    value, g = jax.value_and_grad(loss)(w, x, y)
    updates, state = tx.update(g, state, w, value=value)
    w = optax.apply_updates(w, updates)
    return w, state, loss(w, x_eval, y_eval), optax.global_norm(g)

  w = jnp.zeros(DIM)
  state = tx.init(w)
  losses, norms, thresholds, skipped = [], [], [], []
  for x, y in zip(xs, ys, strict=True):
    if getattr(state, "log_norms", None) is not None:
      n = int(state.num_norms)
      logs = np.asarray(state.log_norms[:n], np.float64)
      std = max(logs.std(ddof=1), MIN_LOG_STD) if n > 1 else np.nan
      ok = n >= WARMUP
      thresholds.append(np.exp(logs.mean() + SIGMA * std) if ok else np.nan)
    w, state, ev, gn = step(w, state, x, y)
    losses.append(float(ev))
    norms.append(float(gn))
    reason = getattr(state, "last_skip_reason", None)
    skipped.append(reason is not None and int(reason) != 0)
  return np.array(losses), np.array(norms), np.array(thresholds), np.array(skipped)


def main():
  xs, ys, x_eval, y_eval = data()
  adam = optax.adam(1e-2)
  runs = {
    "Adam": run(adam, xs, ys, x_eval, y_eval),
    "skip_bad_steps(Adam)": run(optaxtra.skip_bad_steps(adam), xs, ys, x_eval, y_eval),
    f"skip_bad_steps(Adam, spike_sigma={SIGMA:g})": run(
      optaxtra.skip_bad_steps(adam, spike_sigma=SIGMA, window=WINDOW),
      xs,
      ys,
      x_eval,
      y_eval,
    ),
  }
  fig, (top, bottom) = plt.subplots(
    2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
  )
  steps = np.arange(1, STEPS + 1)
  # Adam alone and the finite-only wrapper coincide until the NaN batch: the
  # wider line under the dashed one shows both.
  styles = [("tab:red", "-", 3.0), ("tab:orange", "--", 1.4), ("tab:blue", "-", 1.4)]
  for (name, (losses, _, _, _)), (color, ls, lw) in zip(
    runs.items(), styles, strict=True
  ):
    top.semilogy(steps, losses, color=color, ls=ls, lw=lw, label=name)
    dead = np.flatnonzero(~np.isfinite(losses))
    if dead.size:
      first = dead[0]
      top.plot(steps[first - 1], losses[first - 1], "x", color=color, ms=9, mew=2)
      top.annotate(
        "NaN from here on",
        (steps[first - 1], losses[first - 1]),
        xytext=(8, 12),
        textcoords="offset points",
        color=color,
      )
  for s in SPIKES:
    for ax in (top, bottom):
      ax.axvline(s + 1, color="0.6", lw=0.8, ls=":")
  for ax in (top, bottom):
    ax.axvline(NAN + 1, color="0.3", lw=0.8, ls=":")
  for s in SPIKES:
    top.text(s + 4, 3e1, "targets x1000", color="0.4", fontsize=8)
  top.text(NAN + 4, 3e1, "a NaN input", color="0.2", fontsize=8)
  top.set_ylabel("evaluation loss (clean data)")
  top.set_ylim(1e-4, 1e2)
  top.legend(loc="lower left", fontsize=9)
  top.set_title("Three bad batches, with and without skip_bad_steps")

  _, norms, thresholds, skipped = list(runs.values())[2]
  bottom.semilogy(
    steps, norms, color="0.35", lw=1.0, label="gradient norm of the batch"
  )
  bottom.semilogy(
    steps,
    thresholds,
    color="tab:blue",
    lw=1.2,
    label=f"threshold: exp(mean + {SIGMA:g} std) of log norms, last {WINDOW} accepted",
  )
  marked = np.flatnonzero(skipped & np.isfinite(norms))
  bottom.plot(steps[marked], norms[marked], "o", mfc="none", color="tab:blue", ms=8)
  bottom.set_ylim(None, 1e6)
  bottom.set_xlabel("step")
  bottom.set_ylabel("gradient norm")
  bottom.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  fig.savefig(OUT, dpi=110)
  for name, (losses, _, _, skip) in runs.items():
    print(f"{name}: final loss {losses[-1]:.3g}, skipped steps {np.flatnonzero(skip)}")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
