# %% [markdown]
# # Seed 000: watching the learning rate, and Adam's effective step size
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
# First the seed's optimizer, Adam with a constant `1e-3`. Optax's `adam`
# keeps no learning rate in its state; `optax.inject_hyperparams` makes it
# keep its hyperparameters there, and `inspect` then also derives `alpha_t`
# from the hyperparameters and the step count:

# %%
seed_tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
seen = train(seed_tx)
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
# (`writer.add_scalar(name, value, step)` for each item of the dict).
