"""Logging what the optimizer used at every step to TensorBoard.

A TensorFlow user wanted to see the learning rate change during training, and
Adam's effective step size alpha_t = lr * sqrt(1 - b2**t) / (1 - b1**t), which
TensorFlow kept in private attributes. With optaxtra every value an update used
is in the optimizer state, and :func:`optaxtra.inspect` reads it, inside the
jitted step. This example trains a small MLP on scikit-learn's digits with three
optimizers and logs, every step:

* ``adam``: ``optax.inject_hyperparams(optax.adam)`` with a warmup + cosine
  schedule: its ``learning_rate`` and ``effective_learning_rate`` (alpha_t);
* ``adamax_clipped``: :func:`optaxtra.adamax_clipped` with the same schedule
  and decoupled weight decay: its ``learning_rate``, the decay rate it applied
  (``decay_rate``) and the share of gradient entries it clipped
  (``clip_fraction``);
* ``adamax_plateau``: the same optimizer between
  :func:`optaxtra.record_norm` (the gradient norm, ``grad_norm``) and
  :func:`optaxtra.reduce_on_plateau`, which halves its scale (``plateau_scale``)
  when the epoch's mean loss stops improving. At ``--scale-at`` the learning
  rate is also cut by hand with :func:`optaxtra.set_learning_rate_scale`
  (``learning_rate_scale``), as PyTorch's ``param_group["lr"] = ...``: the
  scale is an array of the state, so the jitted step is not recompiled. The
  step size is ``learning_rate * plateau_scale`` (``learning_rate`` already
  includes ``learning_rate_scale``).

Each run is written to its own TensorBoard directory (``<logdir>/adam``,
``<logdir>/adamax_clipped``, ``<logdir>/adamax_plateau``), through tensorboardX
(``pip install tensorboardX``, no TensorFlow needed), and the curves are also
drawn with matplotlib into a PNG.

Run:  python examples/tensorboard_logging.py --steps 1000 --logdir runs --png lr.png
      tensorboard --logdir runs
Without ``--logdir`` the events go to a new temporary directory (printed).
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence

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


PLATEAU_RUN = "adamax_plateau"


def steps_per_epoch(batch_size: int = 64) -> int:
  """Updates per pass over the data: what one plateau step averages."""
  return math.ceil(len(load_data()[1]) / batch_size)


def make_optimizers(
  num_steps: int, *, patience: int = 2, batch_size: int = 64
) -> dict[str, optax.GradientTransformation]:
  """The three optimizers.

  The first two share one warmup + cosine schedule; the third warms up to a
  constant learning rate and leaves its decay to
  :func:`optaxtra.reduce_on_plateau` and :func:`optaxtra.set_learning_rate_scale`.
  """
  warmup_steps = max(num_steps // 10, 1)
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=3e-3,
    warmup_steps=warmup_steps,
    decay_steps=num_steps,
    end_value=1e-5,
  )
  constant = optax.warmup_constant_schedule(
    init_value=0.0, peak_value=3e-3, warmup_steps=warmup_steps
  )

  def adamax_clipped(learning_rate):
    return optaxtra.adamax_clipped(
      learning_rate,
      weight_decay=1e-2,
      weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
      track_clip_fraction=True,
    )

  return {
    "adam": optax.inject_hyperparams(optax.adam)(learning_rate=schedule),
    "adamax_clipped": adamax_clipped(schedule),
    PLATEAU_RUN: optax.chain(
      optaxtra.record_norm("grad_norm"),  # first: the norm of the gradients
      adamax_clipped(constant),
      # Halves the step when the epoch's mean loss has not improved by 1% for
      # more than `patience` epochs.
      optaxtra.reduce_on_plateau(
        factor=0.5,
        patience=patience,
        threshold=0.01,
        accumulation_steps=steps_per_epoch(batch_size),
      ),
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
  pass_loss: bool = False,
  set_scale: Mapping[int, float] | None = None,
) -> dict[str, np.ndarray]:
  """Trains the MLP; returns each logged value per step (step 1 first).

  ``log(step, values)`` is called after every update with the loss and
  everything :func:`optaxtra.inspect` reads from the state, but the per-stage
  counts of a chain (``count`` is the step) and ``plateau_best`` (infinite
  until the first plateau step: TensorBoard takes no infinities). With
  ``pass_loss`` the loss goes to the update as ``value=loss`` (for
  :func:`optaxtra.reduce_on_plateau`). ``set_scale`` maps a step to the
  learning-rate scale set, with :func:`optaxtra.set_learning_rate_scale`,
  before that step's update; the step is compiled once all the same.
  """
  x, y = load_data(seed)
  params = init_mlp(jax.random.PRNGKey(seed), [64, 32, 10])
  state = tx.init(params)
  set_scale = dict(set_scale or {})

  @jax.jit
  def step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    extra = {"value": loss} if pass_loss else {}
    updates, state = tx.update(grads, state, params, **extra)
    # inspect runs inside jit: its values come back with the step's outputs.
    return optax.apply_updates(params, updates), state, loss, optaxtra.inspect(state)

  history: dict[str, list[float]] = {}
  rng = np.random.default_rng(seed)
  for t in range(1, num_steps + 1):
    if t in set_scale:  # a new array in the state: the same compiled step
      state = optaxtra.set_learning_rate_scale(state, set_scale[t])
    idx = rng.choice(len(y), batch_size, replace=False)
    params, state, loss, info = step(params, state, x[idx], y[idx])
    values = {"loss": float(loss)}
    for k, v in info.items():
      if not (k.endswith("/count") or k == "plateau_best"):
        values[k] = float(v)
    for k, v in values.items():
      history.setdefault(k, []).append(v)
    if log is not None:
      log(t, values)
  # Setting the scale gave the state a new array, not a new structure or dtype:
  # the jitted step was traced and compiled once.
  compiled = step._cache_size()  # pyright: ignore[reportFunctionMemberAccess]
  assert compiled == 1, f"the step was compiled {compiled} times"
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
      (PLATEAU_RUN, "learning_rate"),
      (PLATEAU_RUN, "learning_rate*plateau_scale"),
    ],
    False,
  ),
  (
    f"learning-rate scales of {PLATEAU_RUN}",
    [(PLATEAU_RUN, "learning_rate_scale"), (PLATEAU_RUN, "plateau_scale")],
    False,
  ),
  ("decay rate applied per step", [("adamax_clipped", "decay_rate")], False),
  ("share of gradient entries clipped", [("adamax_clipped", "clip_fraction")], False),
  (
    "training loss",
    [("adam", "loss"), ("adamax_clipped", "loss"), (PLATEAU_RUN, "loss")],
    True,
  ),
  ("gradient norm", [(PLATEAU_RUN, "grad_norm")], True),
]


def plot(histories: dict[str, dict[str, np.ndarray]], png: str | pathlib.Path) -> None:
  """Draws the logged values of every run into ``png``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 3, figsize=(15, 7), constrained_layout=True)
  for ax, (title, curves, log_scale) in zip(axes.flat, PANELS, strict=True):
    for (run, key), style in zip(
      curves, ["-", "--", ":", "-.", (0, (1, 3))], strict=False
    ):
      # "a*b": the product of two logged values, e.g. the plateau run's step size.
      values = np.prod([histories[run][k] for k in key.split("*")], axis=0)
      steps = np.arange(1, len(values) + 1)
      ax.plot(steps, values, linestyle=style, label=f"{run}: {key}")
    ax.set_title(title)
    ax.set_xlabel("step")
    if log_scale:
      ax.set_yscale("log")
    ax.legend(fontsize=7)
  fig.suptitle("What the optimizers used, read with optaxtra.inspect")
  fig.savefig(png, dpi=90)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--logdir", default=None, help="default: a new temporary dir")
  parser.add_argument("--png", default="optimizer_values.png")
  parser.add_argument(
    "--scale-at",
    type=int,
    default=None,
    help=f"the step from which {PLATEAU_RUN}'s learning rate is scaled by "
    "--scale (default: two thirds of --steps)",
  )
  parser.add_argument("--scale", type=float, default=0.5)
  parser.add_argument(
    "--patience",
    type=int,
    default=2,
    help="epochs without improvement before reduce_on_plateau halves the step",
  )
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error("--steps must be at least 1")
  scale_at = args.scale_at if args.scale_at is not None else 2 * args.steps // 3 + 1
  logdir = pathlib.Path(args.logdir or tempfile.mkdtemp(prefix="optaxtra_tb_"))

  histories = {}
  optimizers = make_optimizers(args.steps, patience=args.patience)
  for name, tx in optimizers.items():
    plateau = name == PLATEAU_RUN
    writer, log = tensorboard_logger(logdir / name)
    with writer:
      histories[name] = train(
        tx,
        args.steps,
        log=log,
        pass_loss=plateau,
        set_scale={scale_at: args.scale} if plateau else None,
      )
    last = histories[name]
    print(
      f"{name:>15}: final loss {last['loss'][-1]:.3f}, "
      f"last learning rate {last['learning_rate'][-1]:.2e}"
    )
    if plateau:
      cuts = np.flatnonzero(np.diff(last["plateau_scale"]) < 0) + 2
      print(
        f"{'':>15}  learning-rate scale {args.scale:g} from step {scale_at} "
        f"(no recompilation); plateau_scale {last['plateau_scale'][-1]:g}, "
        f"halved at step(s) {', '.join(map(str, cuts)) or 'none'}"
      )
  plot(histories, args.png)
  print(f"TensorBoard events in {logdir} (tensorboard --logdir {logdir})")
  print(f"plot in {args.png}")
  return histories


if __name__ == "__main__":
  main()
