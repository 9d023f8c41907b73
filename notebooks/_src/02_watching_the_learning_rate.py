# %% [markdown]
# # Watching the learning rate, and Adam's effective step size
#
# A TensorFlow 1 user prints `optimizer._lr_t` at every step of
# `AdamOptimizer(1e-3)` and always gets `1e-3`. The learning rate does not
# change; what changes is Adam's *effective* step size (Kingma & Ba, Section 2)
#
# $$\alpha_t = \mathrm{lr}\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t},$$
#
# the learning rate times the bias correction, which the answer in the thread
# rebuilds by hand from private attributes (`_beta1_power`, `_beta2_power`).
#
# With Optax the whole optimizer state is an ordinary value, and
# `optaxtra.inspect(state)` reads from it every scalar the last update used:
# the learning rate, the bias correction, `effective_learning_rate`
# (`alpha_t`), the decay rate, the step count. It works inside `jax.jit`, so
# a training step can return the values to log.

# %%
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import optaxtra
from optaxtra import schedules

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})

x, y = load_digits(return_X_y=True)
x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
key0, key1 = jax.random.split(jax.random.key(0))
params0 = {
  "hidden": {"kernel": jax.random.normal(key0, (64, 64)) / 8, "bias": jnp.zeros(64)},
  "out": {"kernel": jax.random.normal(key1, (64, 10)) / 8, "bias": jnp.zeros(10)},
}


def loss_fn(params, x, y):
  h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


steps, batch_size = 2000, 64
batches = jax.random.randint(jax.random.key(1), (steps, batch_size), 0, len(x))


def train(tx):
  """Trains for `steps` steps; returns what inspect read at each, as NumPy."""

  def step(carry, idx):
    params, state = carry
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    seen = optaxtra.inspect(state)  # traced values: returned, then logged
    return (optax.apply_updates(params, updates), state), seen

  @jax.jit
  def run(params):
    return jax.lax.scan(step, (params, tx.init(params)), batches)[1]

  return {k: np.asarray(v) for k, v in run(params0).items()}


# %% [markdown]
# First the user's optimizer, Adam with a constant `1e-3`. Optax's `adam`
# keeps no learning rate in its state; `optax.inject_hyperparams` makes it
# keep its hyperparameters there, and `inspect` then also derives `alpha_t`
# from the hyperparameters and the step count:

# %%
adam_tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
seen = train(adam_tx)
print("inspect reports:", ", ".join(seen))
t = seen["count"]
alpha = 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)  # the formula, by hand
err = np.max(np.abs(seen["effective_learning_rate"] / alpha - 1))
print(f"effective_learning_rate vs the formula: largest relative difference {err:.1g}")
for i in (0, 9, 99, 999, steps - 1):
  print(
    f"step {t[i]:5}: learning_rate {seen['learning_rate'][i]:.3g}, "
    f"alpha_t {seen['effective_learning_rate'][i]:.3g}"
  )

# %% [markdown]
# Then optaxtra's own chain, with a schedule: BERT-style warmup over 200
# steps and a cosine decay. `optaxtra.scale_by_learning_rate` records the
# learning rate each update used, `optaxtra.scale_by_adam` the bias-correction
# factor, and `inspect` multiplies the two.

# %%
lr = schedules.linear_warmup(schedules.cosine_decay(1e-3, steps), 200)
chain_tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(lr))
seen_chain = train(chain_tx)
print("inspect reports:", ", ".join(seen_chain))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.6))
for ax, s in ((ax1, seen), (ax2, seen_chain)):
  ax.plot(s["count"], s["learning_rate"], lw=2, label="learning_rate")
  ax.plot(
    s["count"],
    s["effective_learning_rate"],
    lw=2,
    label=r"effective_learning_rate (Adam's $\alpha_t$)",
  )
ax1.plot(t, alpha, "k:", lw=1.5, label=r"$\alpha_t$ by the formula")
ax1.set(
  xscale="log",
  yscale="log",
  xlabel="step (log scale)",
  ylabel="value",
  ylim=(1e-4, 1.5e-3),
  yticks=[1e-4, 2e-4, 5e-4, 1e-3],
)
ax1.yaxis.set_minor_formatter(plt.NullFormatter())
ax1.set_title("inject_hyperparams(optax.adam)(1e-3)", fontsize=10)
ax2.set(xlabel="step", ylim=(0, None))
ax2.set_title("optaxtra chain, warmup + cosine", fontsize=10)
for ax in (ax1, ax2):
  ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
fig.legend(
  *ax1.get_legend_handles_labels(),
  loc="lower center",
  ncol=3,
  fontsize=8,
  frameon=False,
)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# On the left the learning rate is the flat line the user kept printing,
# while `alpha_t` starts at `0.32 * lr`, dips to about `0.15 * lr` around step
# 10 and climbs back towards `lr` over the first few thousand steps, as
# `sqrt(1 - 0.999**t)` approaches 1. It is the factor that multiplies the
# *uncorrected* moments, `alpha_t * m_t / sqrt(v_t)`, as TensorFlow 1
# computed the step. On the right both follow the schedule, `alpha_t` lagging
# behind the learning rate at first. Each value is one scalar per step: to
# watch them in TensorBoard, hand them to a summary writer
# (`writer.add_scalar(name, value, step)` for each item of the dict), as
# `examples/tensorboard_logging.py` does.

# %% [markdown]
# ## Changing the learning rate during training
#
# Watching the learning rate is half of it; the other half is changing it.
# PyTorch users write `param_group["lr"] = ...`, Keras users
# `optimizer.learning_rate = ...`, and PyTorch's `ReduceLROnPlateau` lowers
# it when the loss stops improving. optaxtra has both, and `inspect` reports
# what they did at every step:
#
# * `optaxtra.set_learning_rate_scale(state, 0.5)` returns the state with the
#   learning-rate scale of its optaxtra learning-rate stages set: the next
#   updates use `0.5 * lr(t)`, and `learning_rate` reports it, next to
#   `learning_rate_scale`. The scale is an array of the state, so the jitted
#   training loop is not recompiled;
# * `optaxtra.reduce_on_plateau(factor=0.5, patience=4, accumulation_steps=...)`,
#   last in the chain, is fed the loss with the gradients,
#   `tx.update(grads, state, params, value=loss)`, averages it over an epoch
#   and halves its own scale, `plateau_scale`, after more than 4 epochs
#   without improvement;
# * `optaxtra.record_norm()`, first in the chain, records the norm of the
#   gradients it passes on, `grad_norm`.
#
# The step size is then `learning_rate * plateau_scale` (times Adam's bias
# correction). Below, optaxtra's chain from above gets the two new stages and a
# learning rate that stays constant after the warmup; halfway, the scale is set
# to 0.5 by hand, between two calls of the same jitted loop.

# %%
steps_per_epoch = math.ceil(len(x) / batch_size)  # 29 batches: one plateau step
plateau_tx = optax.chain(
  optaxtra.record_norm(),  # "grad_norm"
  optaxtra.scale_by_adam(),
  optaxtra.scale_by_learning_rate(schedules.linear_warmup(1e-3, 200)),
  optaxtra.reduce_on_plateau(
    factor=0.5, patience=4, accumulation_steps=steps_per_epoch
  ),
)


def step(carry, idx):
  params, state = carry
  loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
  updates, state = plateau_tx.update(grads, state, params, value=loss)
  return (optax.apply_updates(params, updates), state), {
    "loss": loss,
    **optaxtra.inspect(state),
  }


@jax.jit
def run(params, state, batches):
  return jax.lax.scan(step, (params, state), batches)


half = steps // 2
carry, first = run(params0, plateau_tx.init(params0), batches[:half])
params, state = carry
state = optaxtra.set_learning_rate_scale(state, 0.5)  # by hand, from step 1001
carry, second = run(params, state, batches[half:])
print(f"the jitted loop was compiled {run._cache_size()} time(s)")
seen_plateau = {k: np.concatenate([first[k], second[k]]) for k in first}
t = seen_plateau["count"]
for name in ("learning_rate_scale", "plateau_scale"):
  scale = seen_plateau[name]
  changes = np.flatnonzero(np.diff(scale)) + 1
  print(
    f"{name}: 1 at first,",
    ", ".join(f"{scale[i]:g} from step {t[i]}" for i in changes),
  )

# %%
epochs = steps // steps_per_epoch
by_epoch = {
  k: seen_plateau[k][: epochs * steps_per_epoch].reshape(epochs, -1).mean(1)
  for k in ("loss", "grad_norm")
}
epoch_end = np.arange(1, epochs + 1) * steps_per_epoch
cuts = t[np.flatnonzero(np.diff(seen_plateau["plateau_scale"])) + 1]

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.6))
ax1.plot(t, seen_plateau["learning_rate"], lw=2, label="learning_rate")
ax1.plot(
  t,
  seen_plateau["learning_rate"] * seen_plateau["plateau_scale"],
  "--",
  lw=2,
  label="learning_rate * plateau_scale",
)
ax1.axvline(half + 1, color="k", ls=":", lw=1)
ax1.annotate(
  "set_learning_rate_\nscale(state, 0.5)",
  xy=(half + 1, 7.5e-4),
  xytext=(1120, 7.5e-4),
  fontsize=8,
  va="center",
  arrowprops={"arrowstyle": "->", "lw": 0.8},
)
ax1.set(xlabel="step", ylim=(0, 1.1e-3))
ax1.set_title("learning rate: by hand, then on plateau", fontsize=10)
ax1.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
ax1.legend(fontsize=8, loc="lower left")
ax2.plot(epoch_end, by_epoch["loss"], "o-", ms=3, label="loss")
ax2.plot(epoch_end, by_epoch["grad_norm"], "s-", ms=3, label="grad_norm")
for cut in cuts:
  ax2.axvline(cut, color="0.4", ls="--", lw=1)
ax2.set(xlabel="step", yscale="log")
ax2.set_title("epoch means; dashed: plateau reductions", fontsize=10)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The learning rate follows the warmup, stays at `1e-3`, and halves at step
# 1001, where the scale was set between the two calls of `run`: one program,
# compiled once, since the state kept its structure and dtypes. The plateau
# reductions come later, each after more than four epochs whose mean loss did
# not beat the best one: the epoch means of a loss on random batches go up and
# down once the loss is low, and `patience` is how much of that to tolerate.
# `learning_rate` alone does not show them: the plateau stage scales the
# updates after the learning-rate stage, and `plateau_scale` is where to read
# them.
