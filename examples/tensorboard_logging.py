"""Logging what the optimizer used at every step to TensorBoard (seed 000).

Seed 000 asked how to see the learning rate change during training, and Adam's
effective step size alpha_t = lr * sqrt(1 - b2**t) / (1 - b1**t), which
TensorFlow kept in private attributes. With optaxtra every value an update used
is in the optimizer state, and :func:`optaxtra.inspect` reads it, inside the
jitted step. This example trains a small MLP on scikit-learn's digits with two
optimizers and logs, every step:

* ``adam``: ``optax.inject_hyperparams(optax.adam)`` with a warmup + cosine
  schedule: its ``learning_rate`` and ``effective_learning_rate`` (alpha_t);
* ``adamax_clipped``: :func:`optaxtra.adamax_clipped` with the same schedule
  and decoupled weight decay: its ``learning_rate``, the decay rate it applied
  (``weight_decay``) and the share of gradient entries it clipped
  (``clip_fraction``).

Each run is written to its own TensorBoard directory (``<logdir>/adam``,
``<logdir>/adamax_clipped``), through tensorboardX (``pip install tensorboardX``,
no TensorFlow needed), and the curves are also drawn with matplotlib into a PNG.

Run:  python examples/tensorboard_logging.py --steps 300 --logdir runs --png lr.png
      tensorboard --logdir runs
Without ``--logdir`` the events go to a new temporary directory (printed).
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optaxtra


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The 8x8 digits of scikit-learn (shipped with it: no download), scaled."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(digits.target))
  return (digits.data[order] / 16.0).astype(np.float32), digits.target[order]


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> dict:
  params = {}
  for i, (m, n) in enumerate(itertools.pairwise(sizes)):
    key, sub = jax.random.split(key)
    params[f"dense_{i}"] = {
      "kernel": jax.random.normal(sub, (m, n)) * jnp.sqrt(2.0 / m),
      "bias": jnp.zeros(n),
    }
  return params


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  *hidden, last = params.values()
  for layer in hidden:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  logits = x @ last["kernel"] + last["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_optimizers(num_steps: int) -> dict[str, optax.GradientTransformation]:
  """The two optimizers, sharing one warmup + cosine schedule."""
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=3e-3,
    warmup_steps=max(num_steps // 10, 1),
    decay_steps=num_steps,
    end_value=1e-5,
  )
  return {
    "adam": optax.inject_hyperparams(optax.adam)(learning_rate=schedule),
    "adamax_clipped": optaxtra.adamax_clipped(
      schedule,
      weight_decay=1e-2,
      weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
      track_clip_fraction=True,
    ),
  }


Logger = Callable[[int, dict[str, float]], None]


def train(
  tx: optax.GradientTransformation,
  num_steps: int,
  *,
  batch_size: int = 64,
  seed: int = 0,
  log: Logger | None = None,
) -> dict[str, np.ndarray]:
  """Trains the MLP; returns each logged value per step (step 1 first).

  ``log(step, values)`` is called after every update with the loss and
  everything :func:`optaxtra.inspect` reads from the state.
  """
  x, y = load_data(seed)
  params = init_mlp(jax.random.PRNGKey(seed), [64, 32, 10])
  state = tx.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    updates, state = tx.update(grads, state, params)
    # inspect runs inside jit: its values come back with the step's outputs.
    return optax.apply_updates(params, updates), state, loss, optaxtra.inspect(state)

  history: dict[str, list[float]] = {}
  rng = np.random.default_rng(seed)
  for t in range(1, num_steps + 1):
    idx = rng.choice(len(y), batch_size, replace=False)
    params, state, loss, info = step(params, state, x[idx], y[idx])
    values = {"loss": float(loss), **{k: float(v) for k, v in info.items()}}
    for k, v in values.items():
      history.setdefault(k, []).append(v)
    if log is not None:
      log(t, values)
  return {k: np.asarray(v) for k, v in history.items()}


def tensorboard_logger(logdir: str | pathlib.Path):
  """A tensorboardX writer and a ``log(step, values)`` writing one scalar each."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    raise ImportError(
      "This example writes TensorBoard events with tensorboardX: "
      "pip install tensorboardX (TensorFlow is not needed)."
    ) from None
  writer = SummaryWriter(str(logdir))

  def log(step: int, values: dict[str, float]) -> None:
    for name, value in values.items():
      tag = "loss" if name == "loss" else f"optimizer/{name}"
      writer.add_scalar(tag, value, step)

  return writer, log


# Curves drawn per panel: (title, [(run, key)], log scale).
PANELS = [
  (
    "learning rate and Adam's alpha_t",
    [
      ("adam", "learning_rate"),
      ("adam", "effective_learning_rate"),
      ("adamax_clipped", "learning_rate"),
    ],
    False,
  ),
  ("decay rate applied per step", [("adamax_clipped", "weight_decay")], False),
  ("share of gradient entries clipped", [("adamax_clipped", "clip_fraction")], False),
  ("training loss", [("adam", "loss"), ("adamax_clipped", "loss")], True),
]


def plot(histories: dict[str, dict[str, np.ndarray]], png: str | pathlib.Path) -> None:
  """Draws the logged values of every run into ``png``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
  for ax, (title, curves, log_scale) in zip(axes.flat, PANELS, strict=True):
    for (run, key), style in zip(curves, ["-", "--", ":"], strict=False):
      values = histories[run][key]
      steps = np.arange(1, len(values) + 1)
      ax.plot(steps, values, style, label=f"{run}: {key}")
    ax.set_title(title)
    ax.set_xlabel("step")
    if log_scale:
      ax.set_yscale("log")
    ax.legend(fontsize=8)
  fig.suptitle("What the optimizers used, read with optaxtra.inspect")
  fig.savefig(png, dpi=90)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--logdir", default=None, help="default: a new temporary dir")
  parser.add_argument("--png", default="optimizer_values.png")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error("--steps must be at least 1")
  logdir = pathlib.Path(args.logdir or tempfile.mkdtemp(prefix="optaxtra_tb_"))

  histories = {}
  for name, tx in make_optimizers(args.steps).items():
    writer, log = tensorboard_logger(logdir / name)
    with writer:
      histories[name] = train(tx, args.steps, log=log)
    last = histories[name]
    print(
      f"{name:>15}: final loss {last['loss'][-1]:.3f}, "
      f"last learning rate {last['learning_rate'][-1]:.2e}"
    )
  plot(histories, args.png)
  print(f"TensorBoard events in {logdir} (tensorboard --logdir {logdir})")
  print(f"plot in {args.png}")
  return histories


if __name__ == "__main__":
  main()
