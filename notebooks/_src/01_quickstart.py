# %% [markdown]
# # Quickstart: `optaxtra.adamax_clipped` with Flax on real data
#
# A small network learns scikit-learn's bundled handwritten digits (1797 images
# of 8x8 pixels, shipped inside the scikit-learn wheel: no download) with the
# Neural-GPU clipped Adamax of Freivalds & Liepins (2017), the optimizer of
# their TensorFlow code, plus decoupled weight decay on the weight matrices
# only, chosen by parameter name. The optimizer is an ordinary
# `optax.GradientTransformation`, so `flax.nnx.Optimizer` takes it as it takes
# `optax.adam`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optaxtra
from optaxtra import masks

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
x_train, x_test, y_train, y_test = train_test_split(
  x, y, test_size=0.25, random_state=0, stratify=y
)
print(f"{len(x_train)} training and {len(x_test)} test images, 10 classes")

# %% [markdown]
# The model: one hidden layer. `nnx.Optimizer(..., wrt=nnx.Param)` hands the
# optimizer the model's parameters as a tree whose paths are the attribute
# names, so a mask can pick parameters by name: here every `kernel` decays,
# no `bias` does. `masks.paths` lists the paths the patterns are matched
# against.


# %%
class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


model = MLP(nnx.Rngs(0))
params = nnx.state(model, nnx.Param)
decay_mask = masks.path_mask(exclude=["bias"])
for path, decays in zip(
  masks.paths(params), jax.tree.leaves(decay_mask(params)), strict=True
):
  print(f"{path:<20} decays: {decays}")

tx = optaxtra.adamax_clipped(
  learning_rate=1e-2,
  weight_decay=1e-2,  # scaled by the learning rate, as torch.optim.AdamW
  weight_decay_mask=decay_mask,
)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

# %% [markdown]
# A training step is the usual Flax one: `optimizer.update` calls `tx.update`
# and `optax.apply_updates`.


# %%
def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


epochs, batch_size = 20, 64
steps_per_epoch = len(x_train) // batch_size
rng = np.random.default_rng(0)
losses, train_acc, test_acc = [], [], []
for _ in range(epochs):
  order = rng.permutation(len(x_train))
  for i in range(steps_per_epoch):
    idx = order[i * batch_size : (i + 1) * batch_size]
    losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
  train_acc.append(float(accuracy(model, x_train, y_train)))
  test_acc.append(float(accuracy(model, x_test, y_test)))

print(
  f"{epochs} epochs of {steps_per_epoch} steps: "
  f"test accuracy {test_acc[-1]:.3f} (train {train_acc[-1]:.3f})"
)

# %% [markdown]
# What the optimizer did at its last step, read back from its state with
# `optaxtra.inspect`: the learning rate, the per-step decay it applied, and
# the share of gradient entries the Neural-GPU rule clipped.

# %%
for name, value in optaxtra.inspect(optimizer.opt_state).items():
  print(f"{name:24} {float(value):.4g}")

# %%
steps = np.arange(1, len(losses) + 1)
epoch_end = steps_per_epoch * np.arange(1, epochs + 1)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.2))
ax1.plot(steps, losses, lw=0.6, alpha=0.5, label="each minibatch")
ax1.plot(
  epoch_end, np.reshape(losses, (epochs, -1)).mean(1), "o-", ms=3, label="epoch mean"
)
ax1.set(
  xlabel="training step",
  ylabel="cross-entropy loss",
  yscale="log",
  title="training loss",
)
ax1.legend()
ax2.plot(np.arange(1, epochs + 1), train_acc, "o-", ms=3, label="train")
ax2.plot(np.arange(1, epochs + 1), test_acc, "s-", ms=3, label="test")
ax2.set(
  xlabel="epoch",
  ylabel="accuracy",
  title="accuracy after each epoch",
  xticks=range(0, epochs + 1, 5),
)
ax2.legend(loc="lower right")
fig.tight_layout()

# %% [markdown]
# The other notebooks take one question each:
#
# * [02: watching the learning rate](02_watching_the_learning_rate.ipynb):
#   the learning rate and Adam's `alpha_t` during training, and changing it
#   mid-run;
# * [03: steps vs epochs](03_steps_vs_epochs.ipynb): a schedule counts
#   updates, not epochs;
# * [04: weight decay](04_weight_decay.ipynb): L2 in the gradient vs decoupled
#   decay vs BERT's optimizer;
# * [05: custom transformations and freezing](05_custom_and_freezing.ipynb):
#   writing a transformation; freezing and per-group learning rates by name;
# * [06: fine-tuning by layer](06_fine_tuning_by_layer.ipynb): layer-wise
#   learning rates, a frozen layer and an average of the weights;
# * [07: bringing a run from PyTorch](07_bringing_a_run.ipynb): a PyTorch run
#   continued in JAX, moments and step count included.
