"""optaxtra's main demonstration: a small MLP on scikit-learn's digits.

Trains with the Neural-GPU clipped Adamax (Freivalds & Liepins 2017), a warmup +
cosine learning-rate schedule counted in epochs (not in steps, which a Keras
schedule counts), decoupled weight decay that skips biases by name (as BERT's
optimizer does), and prints, each epoch, what the optimizer did as read back
from its state (which TensorFlow kept in private attributes): the learning rate
it used, the decay rate it applied and the share of gradient entries it clipped.
Before training it prints ``optaxtra.describe``'s table of what the optimizer
will do to each parameter; it times compiling and training apart.

Run:  python examples/demo.py [--epochs N]
The data ship with scikit-learn: no download.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optaxtra
from optaxtra import masks, schedules


def init_mlp(key, sizes):
  params = {}
  for i, (m, n) in enumerate(itertools.pairwise(sizes)):
    key, sub = jax.random.split(key)
    params[f"dense_{i}"] = {
      "kernel": jax.random.normal(sub, (m, n)) * jnp.sqrt(2.0 / m),
      "bias": jnp.zeros(n),
    }
  return params


def apply_mlp(params, x):
  *hidden, last = params.values()
  for layer in hidden:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ last["kernel"] + last["bias"]


def loss_fn(params, x, y):
  logits = apply_mlp(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params, x, y):
  return float(jnp.mean(jnp.argmax(apply_mlp(params, x), -1) == y))


def main(epochs: int = 30, batch_size: int = 64, seed: int = 0) -> float:
  print("loading scikit-learn's digits and building the optimizer ...", flush=True)
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
  )
  steps_per_epoch = len(x_train) // batch_size
  print(
    f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8; "
    f"{steps_per_epoch} steps per epoch of {batch_size}"
  )

  # The learning rate, stated in epochs and turned into a function of the step
  # count with exact integer boundaries: 2 epochs of linear warmup, then a
  # cosine decay over the remaining epochs.
  peak = 3e-3
  total_steps = epochs * steps_per_epoch
  warmup_steps = 2 * steps_per_epoch
  learning_rate = schedules.linear_warmup(
    schedules.cosine_decay(peak, total_steps, alpha=0.05),
    warmup_steps,
    peak_value=peak,
  )

  # Decay every weight matrix, no bias: decided by parameter path.
  decay_mask = masks.path_mask(exclude=["bias"])
  tx = optaxtra.adamax_clipped(
    learning_rate,
    weight_decay=1e-2,
    weight_decay_mask=decay_mask,
    track_clip_fraction=True,  # record the clip share (costs one reduction)
  )

  params = init_mlp(jax.random.PRNGKey(seed), [64, 128, 64, 10])
  # What the optimizer will do to each parameter, before any training step.
  print("\nwhat the optimizer will do to each parameter:")
  print(optaxtra.describe(tx, params))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    # What the update used, read back from the state, inside jit.
    seen = optaxtra.inspect(opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, seen

  rng = np.random.default_rng(seed)
  # Compile the step once, before training, so that the timings below are
  # apart: tracing and compiling, then the training itself.
  print("\ncompiling the training step ...", flush=True)
  start = time.perf_counter()
  x0, y0 = x_train[:batch_size], y_train[:batch_size]
  train_step = train_step.lower(params, opt_state, x0, y0).compile()
  compile_s = time.perf_counter() - start
  print(f"compiled in {compile_s:.1f} s. Training; every 5 epochs:")
  print(
    "  lr:         the learning rate the epoch's last update used (schedule in "
    "epochs)\n"
    "  decay/step: the share of each weight matrix's value the decoupled decay "
    "removed at that update (1e-2 * lr)\n"
    "  clipped:    the share of gradient entries the clipped Adamax clipped, "
    "over the epoch"
  )
  start = time.perf_counter()
  print(
    f"{'epoch':>5} {'loss':>8} {'test acc':>8} {'lr':>10} {'decay/step':>11} "
    f"{'clipped':>8}"
  )
  for epoch in range(1, epochs + 1):
    order = rng.permutation(len(x_train))
    losses, clipped = [], []
    for i in range(steps_per_epoch):
      idx = order[i * batch_size : (i + 1) * batch_size]
      params, opt_state, loss, seen = train_step(
        params, opt_state, x_train[idx], y_train[idx]
      )
      losses.append(loss)
      clipped.append(seen["clip_fraction"])
    if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
      print(
        f"{epoch:5d} {np.mean(losses):8.4f} {accuracy(params, x_test, y_test):8.3f} "
        f"{float(seen['learning_rate']):10.2e} {float(seen['decay_rate']):11.2e} "
        f"{np.mean(clipped):8.2%}"
      )
  acc = accuracy(params, x_test, y_test)
  print(
    f"trained {total_steps} steps in {time.perf_counter() - start:.1f} s "
    f"(after {compile_s:.1f} s of compiling); the optimizer's state says it did "
    f"{int(seen['count'])} updates."
  )
  print(f"final test accuracy: {acc:.3f}")
  return acc


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  main(args.epochs, args.batch_size, args.seed)
