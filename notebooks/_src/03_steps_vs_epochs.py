# %% [markdown]
# # A schedule counts steps, not epochs
#
# A Keras user decays Adam's learning rate with
# `ExponentialDecay(1e-3, decay_steps=25, decay_rate=0.95, staircase=True)`,
# meaning "multiply by 0.95 every 25 *epochs*", and finds the training
# already differs from a constant learning rate in the first 25 epochs. The
# reason: an optimizer's schedule is a function of its update count. With
# 1000 examples in batches of 32 an epoch is 32 updates, so the staircase
# drops every 25 *batches*, before the first epoch is even over.
#
# In `optaxtra.schedules` every schedule is a pure function of the step count,
# and `per_epoch` turns a schedule written in epochs into one of the steps,
# with the epoch computed in integer arithmetic (`step // steps_per_epoch`).

# %%
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from optaxtra import schedules

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})

num_examples, batch_size, epochs = 1000, 32, 50
steps_per_epoch = math.ceil(num_examples / batch_size)  # the last batch holds 8
total_steps = epochs * steps_per_epoch

# What the user wrote: the staircase counts updates.
as_written = schedules.exponential_decay(1e-3, 25, 0.95, staircase=True)
# What the user meant: the same schedule, of the epoch number.
per_epoch = schedules.per_epoch(as_written, steps_per_epoch)

print(f"{steps_per_epoch} updates per epoch, {total_steps} in {epochs} epochs")
for epoch in (0, 1, 24, 25, 49):
  step = epoch * steps_per_epoch
  print(
    f"epoch {epoch:2} (step {step:4}): as written {float(as_written(step)):.3g}, "
    f"per epoch {float(per_epoch(step)):.3g}"
  )

# %% [markdown]
# `schedules.plot` draws a schedule against the step count and, given
# `steps_per_epoch`, marks where each epoch starts: the staircase as written
# falls between the epoch lines.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.5))
zoom = 4 * steps_per_epoch  # the first 4 epochs, with their boundaries
schedules.plot(as_written, zoom, steps_per_epoch=steps_per_epoch, ax=ax1)
schedules.plot(per_epoch, zoom, ax=ax1)
schedules.plot(as_written, total_steps, ax=ax2)  # the whole run
schedules.plot(per_epoch, total_steps, ax=ax2)
ax2.axvline(25 * steps_per_epoch, color="0.6", ls="--", lw=0.8)
ax2.text(25 * steps_per_epoch + 20, 3e-4, "epoch 25", color="0.4", fontsize=9)
ax2.set(yscale="log", xlabel=f"step ({steps_per_epoch} per epoch)")
for ax in (ax1, ax2):
  ax.set_ylabel("learning rate")
ax1.lines[0].set_label("as written: every 25 steps")
ax1.lines[-1].set_label("per_epoch: every 25 epochs")
fig.legend(loc="lower center", ncol=2, frameon=False)
fig.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()

# %% [markdown]
# The user's experiment, in JAX: fit `y = x**2 + noise` with a small tanh
# network and Adam for 50 epochs, with a constant learning rate of `1e-3` and
# with each schedule (any `step -> value` function is a valid Optax learning
# rate). Dropout is left out so that the runs are deterministic and the
# comparison exact.

# %%
rng = np.random.default_rng(0)
x_data = (2 * rng.random((num_examples, 1))).astype(np.float32)
y_data = rng.normal(x_data**2, 0.05).astype(np.float32)


def init(key):
  sizes = [1, 10, 10, 1]
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
    for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def predict(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def mse(params, x, y):
  return jnp.mean((predict(params, x) - y) ** 2)


def fit(learning_rate):
  tx = optax.adam(learning_rate)

  def step(carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(mse)(params, *batch)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss * len(batch[0])

  @jax.jit
  def epoch(carry, x, y):  # x, y: the epoch's examples, shuffled
    full = num_examples // batch_size * batch_size  # 31 batches of 32 ...
    batches = (x[:full].reshape(-1, batch_size, 1), y[:full].reshape(-1, batch_size, 1))
    carry, losses = jax.lax.scan(step, carry, batches)
    carry, last = step(carry, (x[full:], y[full:]))  # ... and one of 8
    return carry, (losses.sum() + last) / num_examples  # the mean, as Keras logs

  params = init(jax.random.key(0))
  carry = (params, tx.init(params))
  order_rng = np.random.default_rng(1)  # the same batches for every run
  history = []
  for _ in range(epochs):
    order = order_rng.permutation(num_examples)
    carry, loss = epoch(carry, x_data[order], y_data[order])
    history.append(float(loss))
  return np.array(history)


runs = {
  "constant 1e-3": fit(1e-3),
  "schedule as written (steps)": fit(as_written),
  "per_epoch schedule": fit(per_epoch),
}
same = np.array_equal(runs["constant 1e-3"][:25], runs["per_epoch schedule"][:25])
print(f"per_epoch run identical to the constant one for epochs 1-25: {same}")
diff = np.abs(runs["constant 1e-3"][:25] - runs["schedule as written (steps)"][:25])
print(f"largest loss difference of the as-written run by then: {diff.max():.2g}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
epoch_axis = np.arange(1, epochs + 1)
for (name, history), style in zip(runs.items(), ("-", "-", "--"), strict=True):
  ax.plot(epoch_axis, history, style, label=name)
ax.axvline(25.5, color="0.6", ls=":", lw=1)
ax.text(
  25.7, ax.get_ylim()[1], "first decay meant here", va="top", fontsize=9, color="0.4"
)
ax.set(
  xlabel="epoch",
  ylabel="training loss (MSE, epoch mean)",
  yscale="log",
  title="Adam with the three learning rates",
)
ax.legend()
plt.show()
