# %% [markdown]
# # How do I fine-tune with slower lower layers, a frozen layer and an EMA?
#
# A network pretrained on one task is fine-tuned on another with three usual
# tricks: the lower layers, which hold the general features, learn more slowly
# than the upper ones (layer-wise learning-rate decay, as in BEiT and
# ELECTRA); the first layer does not learn at all (frozen); and the weights
# evaluated are an exponential moving average (EMA) of the weights along
# training, not the last ones. Each is one `optaxtra` transformation, chained
# with `optax.chain`, and `optaxtra.describe` shows what the chain will do to
# each parameter before any training step.
#
# The tasks: scikit-learn's bundled handwritten digits (8x8 pixels, no
# download). Pretrain on the digits 0-4, fine-tune on the digits 5-9 with only
# 200 labelled images.

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optaxtra
from optaxtra import masks

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
old, new = y < 5, y >= 5
xa_train, xa_test, ya_train, ya_test = train_test_split(
  x[old], y[old], test_size=0.25, random_state=0, stratify=y[old]
)
xb_train, xb_test, yb_train, yb_test = train_test_split(
  x[new], y[new] - 5, train_size=200, random_state=0, stratify=y[new]
)
print(f"pretraining (digits 0-4): {len(xa_train)} training, {len(xa_test)} test")
print(f"fine-tuning (digits 5-9): {len(xb_train)} training, {len(xb_test)} test")

# %% [markdown]
# The model: three hidden layers named `layer_0`, `layer_1`, `layer_2` and a
# `head` with one output per class. The names matter: the optimizer below
# picks parameters by their paths, such as `layer_0/kernel`.


# %%
class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(3):
      x = nn.relu(nn.Dense(64, name=f"layer_{i}")(x))
    return nn.Dense(5, name="head")(x)


model = MLP()


def loss_fn(params, x, y):
  logits = model.apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train_step(tx):
  @jax.jit
  def train_step(params, state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return train_step


@jax.jit
def accuracy(params, x, y):
  return jnp.mean(jnp.argmax(model.apply({"params": params}, x), axis=-1) == y)


def batches(n, batch_size, steps, seed):
  """Minibatch indices for `steps` steps, reshuffling after each pass."""
  rng = np.random.default_rng(seed)
  passes = -(-steps * batch_size // n)
  order = np.concatenate([rng.permutation(n) for _ in range(passes)])
  return order[: steps * batch_size].reshape(steps, batch_size)


# %% [markdown]
# Pretraining: plain Adam, 400 steps of 32 images.

# %%
pretrained = model.init(jax.random.key(0), x[:1])["params"]
tx = optax.adam(1e-3)
train_step, state = make_train_step(tx), tx.init(pretrained)
for idx in batches(len(xa_train), 32, 400, seed=0):
  pretrained, state = train_step(pretrained, state, xa_train[idx], ya_train[idx])
print(f"test accuracy on 0-4: {accuracy(pretrained, xa_test, ya_test):.3f}")

# %% [markdown]
# For the new task the head is replaced by a freshly initialised one (its five
# outputs now mean 5-9); the three hidden layers keep their pretrained weights.
# The fine-tuning optimizer, stage by stage:
#
# * `with_frozen(..., frozen="^layer_0/")`: the parameters whose path starts
#   with `layer_0/` get zero updates, and the optimizer inside keeps no
#   moments for them;
# * inside it, `adamax_clipped` with decoupled weight decay on the kernels
#   only (`path_mask(exclude=["bias"])`);
# * `layerwise_lr_decay(0.5, num_layers=3)` multiplies the update of layer
#   `i` by `0.5 ** (3 - i)` and leaves the head's alone;
# * `with_average(..., ema_from_first_update(0.99))` around all of it keeps
#   the EMA of the weights after each update, placed after every stage, where
#   it must be (an average placed earlier would average the params plus an
#   unfinished update); training itself is unchanged.

# %%
params = {**pretrained, "head": model.init(jax.random.key(1), x[:1])["params"]["head"]}
tx = optaxtra.with_average(
  optax.chain(
    optaxtra.with_frozen(
      optaxtra.adamax_clipped(
        learning_rate=0.1,
        weight_decay=1e-2,
        weight_decay_mask=masks.path_mask(exclude=["bias"]),
      ),
      frozen="^layer_0/",
    ),
    optaxtra.layerwise_lr_decay(0.5, num_layers=3),
  ),
  optaxtra.ema_from_first_update(0.99),
)
print(optaxtra.describe(tx, params))

# %% [markdown]
# One row per parameter, found without a training step on the real weights:
#
# * **trainable**: whether the optimizer moves it; `FROZEN` for `layer_0`.
# * **lr**: the learning rate its update uses, every multiplier included:
#   0.1 for the head, `0.1 * 0.5` for `layer_2`, `0.1 * 0.25` for `layer_1`.
# * **decay**: the share of the weight that weight decay removes per step
#   (`1e-2` times that learning rate): the kernels, not the biases (`-`).
# * **lr_mult**: the factor on its update from `layerwise_lr_decay`. The
#   0.125 of `layer_0` multiplies a zero update.
# * **group**: the part of `with_frozen` it belongs to; **averaged**: whether
#   the EMA covers it.
# * **state_bytes**: the optimizer's memory for it. A trainable float32 entry
#   costs 12 bytes (Adamax's two moments and the average), a frozen one 4
#   (the average only): `64x64x4 = 16,384` for `layer_0/kernel`.
#
# Fine-tuning: 600 steps of 8 images at a constant learning rate of 0.1, on
# the high side on purpose, so that the weights after each step are noisy:
# that is where an average helps. Every 5 steps, the test accuracy of the
# weights and of their EMA (`averaged_params` reads it from the state).

# %%
train_step = make_train_step(tx)


@jax.jit
def evaluate(params, state):
  ema = optaxtra.averaged_params(state, params)
  return accuracy(params, xb_test, yb_test), accuracy(ema, xb_test, yb_test)


state = tx.init(params)
print(f"test accuracy on 5-9 before fine-tuning: {evaluate(params, state)[0]:.3f}")
every = 5
history = []
for step, idx in enumerate(batches(len(xb_train), 8, 600, seed=1), 1):
  params, state = train_step(params, state, xb_train[idx], yb_train[idx])
  if step % every == 0:
    history.append(evaluate(params, state))
raw_acc, ema_acc = np.asarray(history).T
steps = every * np.arange(1, len(history) + 1)

# %%
last = steps > 300
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
for ax, start in ((ax1, 0), (ax2, 150)):
  s = steps >= start
  ax.plot(steps[s], raw_acc[s], lw=1, color="C0", label="weights after each step")
  ax.plot(steps[s], ema_acc[s], lw=2, color="C1", label="EMA of the weights (0.99)")
  ax.set(xlabel="fine-tuning step", xlim=(start, steps[-1]))
ax1.set(ylabel="test accuracy on digits 5-9", ylim=(0, 1), title="the whole run")
ax2.set(ylabel="test accuracy", ylim=(0.84, 0.97), title="zoomed: from step 150")
ax1.legend(loc="lower right")
fig.tight_layout()
plt.show()
for name, acc in (("weights", raw_acc), ("EMA", ema_acc)):
  print(
    f"{name:8} final {acc[-1]:.3f}; over the last 300 steps "
    f"{acc[last].min():.3f} to {acc[last].max():.3f}, mean {acc[last].mean():.3f}"
  )

# %% [markdown]
# What to notice:
#
# * In the first ~100 steps the EMA lags behind: with decay 0.99 it averages
#   over roughly the last 100 steps, and it starts from the weights after the
#   first update (`ema_from_first_update`), at chance level.
# * After that the weights' accuracy jumps by several points from one
#   evaluation to the next (down to about 0.91 even in the last 300 steps),
#   while the EMA's curve is smooth and, from about step 150 on, at or above
#   it nearly everywhere (never more than about half a point below).
# * Both end near 0.95: in the last ~100 steps the weights settle too and the
#   curves meet. Over the last 300 steps the EMA's mean is higher and its
#   range much narrower, so its result depends little on the step you stop
#   at. (With a learning rate of 0.05 the weights are calmer and the gap
#   smaller.)
#
# The frozen layer did not move at all, and the others moved in the order of
# their learning rates (the change of each kernel relative to its pretrained
# value):

# %%
for name in ("layer_0", "layer_1", "layer_2"):
  w0, w = pretrained[name]["kernel"], params[name]["kernel"]
  change = float(jnp.linalg.norm(w - w0) / jnp.linalg.norm(w0))
  print(f"{name}/kernel  relative change {change:.3f}")
assert (params["layer_0"]["kernel"] == pretrained["layer_0"]["kernel"]).all()

# %% [markdown]
# What the last update used, read from the state with `optaxtra.inspect`:
# the base learning rate, which is the head's (a lower layer's is that times
# its `lr_mult`; `learning_rate_scale` is a multiplier one can change during
# training, 1 here), the weight decay and the share of each head kernel entry
# it removed per step (`decay_rate = 0.1 * 1e-2`; in the lower layers times
# their `lr_mult` too), the EMA's decay, and the number of updates. Every
# stage counts its updates: the outermost count is `count`, the others are
# named by where they sit in the chain.

# %%
for name, value in optaxtra.inspect(state).items():
  print(f"{name:42} {float(value):.4g}")
