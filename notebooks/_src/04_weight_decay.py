# %% [markdown]
# # Adam with L2 in the gradient vs decoupled weight decay vs BERT
#
# Adding `wd * w` to the gradient (L2 regularisation) and subtracting
# `lr * wd * w` from the weights (weight decay) are the same thing for plain
# SGD, and different things for Adam: the L2 term goes through Adam's moments
# and is divided by `sqrt(v)` like the rest of the gradient, so weights with
# small gradients are pulled to zero fast and weights with large gradients
# hardly at all (Loshchilov & Hutter, *Decoupled Weight Decay
# Regularization*). Decoupled decay, `optaxtra.add_decayed_weights_decoupled`
# placed after the learning rate, shrinks every selected weight by the same
# fraction per step. How that fraction follows the learning rate is the
# *coupling*, and the field uses three:
#
# | coupling | per-step decay | used by |
# | --- | --- | --- |
# | `learning_rate` | `wd * lr(t)` | PyTorch / Keras `AdamW`, `optax.adamw`, BERT |
# | `normalized` | `wd * lr(t) / peak_lr` | the paper, Composer, big_vision |
# | `independent` | `wd` | TF-Addons `AdamW` |
#
# All of them on one task: a one-hidden-layer network with a LayerNorm on
# scikit-learn's digits, trained for 600 steps with BERT's learning rate
# (linear warmup over the first 10%, then linear decay to 0).

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optaxtra
from optaxtra import masks, schedules

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})

x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = map(
  jnp.asarray,
  train_test_split(
    (x / 16.0).astype(np.float32), y, test_size=0.25, random_state=0, stratify=y
  ),
)


def init(key, hidden=256):
  k0, k1 = jax.random.split(key)
  return {
    "dense_0": {
      "kernel": jax.random.normal(k0, (64, hidden)) * np.sqrt(2 / 64),
      "bias": jnp.zeros(hidden),
    },
    "layer_norm": {"scale": jnp.ones(hidden), "bias": jnp.zeros(hidden)},
    "dense_1": {
      "kernel": jax.random.normal(k1, (hidden, 10)) / np.sqrt(hidden),
      "bias": jnp.zeros(10),
    },
  }


def predict(params, x):
  h = x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
  h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-6)
  h = h * params["layer_norm"]["scale"] + params["layer_norm"]["bias"]
  return jax.nn.relu(h) @ params["dense_1"]["kernel"] + params["dense_1"]["bias"]


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(predict(params, x), y).mean()


params0 = init(jax.random.key(0))
print(masks.paths(params0))

# %% [markdown]
# BERT's `exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]`,
# as a path mask: only the two kernels decay. The list is shared between
# models, so one of its names matches nothing here: `strict=False` says that
# is expected (by default a pattern that matches nothing is an error, to catch
# typos).
#
# The coefficients: with the `learning_rate` coupling, the decay alone
# multiplies the weights by `exp(-wd * sum_t lr(t))` over a run. `wd = 0.5`
# makes that about what BERT's `wd = 0.01` does over its million steps at a
# peak `lr = 1e-4` (both are computed below). The other two
# couplings get the coefficient with the same per-step decay at the peak,
# `0.5 * peak_lr`, and L2 gets the same `0.5`, which for SGD would be the same
# as the `learning_rate` coupling.

# %%
steps, batch_size, peak_lr, wd = 600, 64, 3e-3, 0.5
lr = schedules.linear_warmup(
  schedules.polynomial_decay(peak_lr, 0.0, steps), steps // 10
)
decay_mask = masks.path_mask(exclude=["LayerNorm", "layer_norm", "bias"], strict=False)

bert_lr = schedules.linear_warmup(schedules.polynomial_decay(1e-4, 0.0, 10**6), 10**4)
bert_sum = schedules.sample(bert_lr, 10**6).astype(np.float64).sum()
lr_sum = schedules.sample(lr, steps).sum()
print(
  f"decay alone multiplies the weights by {np.exp(-wd * lr_sum):.2f}"
  f" here, by {np.exp(-0.01 * bert_sum):.2f} in BERT's pre-training"
)


def coupled(learning_rate, coupling, peak):
  """The ``schedule=`` of the decoupled decay for a coupling."""
  if coupling == "normalized":
    return optaxtra.decay_schedule(learning_rate, coupling, peak_learning_rate=peak)
  return optaxtra.decay_schedule(learning_rate, coupling)


def adam_decoupled(coupling, weight_decay):
  return optax.chain(
    optaxtra.scale_by_adam(),
    optaxtra.scale_by_learning_rate(lr),
    optaxtra.add_decayed_weights_decoupled(
      weight_decay, schedule=coupled(lr, coupling, peak_lr), mask=decay_mask
    ),
  )


optimizers = {
  "Adam, no decay": optax.chain(
    optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(lr)
  ),
  "Adam + L2 in the gradient": optax.chain(
    optax.add_decayed_weights(wd, mask=decay_mask),  # before Adam: L2
    optaxtra.scale_by_adam(),
    optaxtra.scale_by_learning_rate(lr),
  ),
  "decoupled, learning_rate": adam_decoupled("learning_rate", wd),
  "decoupled, normalized": adam_decoupled("normalized", wd * peak_lr),
  "decoupled, independent": adam_decoupled("independent", wd * peak_lr),
  "BERT (no bias correction)": optax.chain(
    optaxtra.scale_by_adam(eps=1e-6, bias_correction=False),
    optaxtra.scale_by_learning_rate(lr),
    optaxtra.add_decayed_weights_decoupled(wd, schedule=lr, mask=decay_mask),
  ),
}

# %% [markdown]
# Every optimizer sees the same minibatches; the whole run is one
# `jax.lax.scan`, recording the training loss, the test loss and the norm of
# the decayed weights at every step.

# %%
rng = np.random.default_rng(0)
per_epoch = len(x_train) // batch_size
orders = [rng.permutation(len(x_train)) for _ in range(-(-steps // per_epoch))]
batches = jnp.asarray(
  np.concatenate(
    [o[: per_epoch * batch_size].reshape(per_epoch, batch_size) for o in orders]
  )[:steps]
)


def decayed_norm(params):
  flags = jax.tree.leaves(decay_mask(params))
  return jnp.sqrt(
    sum(jnp.sum(w**2) for w, f in zip(jax.tree.leaves(params), flags, strict=True) if f)
  )


def train(tx):
  def step(carry, idx):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx], y_train[idx])
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (
      loss,
      loss_fn(params, x_test, y_test),
      decayed_norm(params),
    )

  @jax.jit
  def run(params):
    (params, _), curves = jax.lax.scan(step, (params, tx.init(params)), batches)
    accuracy = jnp.mean(jnp.argmax(predict(params, x_test), -1) == y_test)
    return curves, accuracy

  return run(params0)


results = {name: train(tx) for name, tx in optimizers.items()}
print(f"{'':27} test loss  test acc  |decayed weights|")
for name, ((_, test_loss, norm), acc) in results.items():
  print(
    f"{name:27} {float(test_loss[-1]):9.3f} {float(acc):9.3f} {float(norm[-1]):10.1f}"
  )

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.6))
styles = {"decoupled, normalized": dict(ls="--", lw=2.0)}
t = np.arange(1, steps + 1)
for name, ((_, test_loss, norm), _) in results.items():
  kw = styles.get(name, {})
  ax1.plot(t, test_loss, label=name, **kw)
  ax2.plot(t, norm, **kw)
ax1.set(xlabel="step", ylabel="test loss", yscale="log", ylim=(0.05, 3))
ax2.set(xlabel="step", ylabel="norm of the decayed kernels", ylim=(0, None))
fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
fig.tight_layout(rect=(0, 0.13, 1, 1))
plt.show()

# %% [markdown]
# L2 in the gradient, with the coefficient that would make it the same as
# weight decay for SGD, pulls the kernels to a small fraction of their norm
# and costs test loss: through Adam, the `wd * w` term is normalised like a
# gradient, so a weight whose loss gradient is small moves towards zero by
# about the learning rate at every step, whatever its size and whatever `wd`
# is. Decoupled decay shrinks the kernels
# steadily without that cost. BERT's Adam, without bias correction, takes
# larger first steps (`m / sqrt(v)` is `0.1 g / sqrt(0.001 g**2)`, about 3.2,
# at step 1), which its warmup keeps in check; its loss falls fastest here.
#
# With the coefficients set to agree at the peak, the `learning_rate` and
# `normalized` couplings coincide (the dashed line lies on the solid one).
# They part when the learning rate changes, as it does when it is tuned. The
# decay stage's state records the per-step rate it applied; below it is read
# with `optaxtra.inspect` at every step, for the three couplings at two peak
# learning rates. With the `learning_rate` coupling (PyTorch's) a lower
# learning rate also means less decay; with `normalized` the decay keeps its
# strength and follows the schedule's shape; `independent` ignores the
# schedule, decaying at full strength during the warmup and after the learning
# rate has reached zero.


# %%
def applied_decay(tx):
  """The per-step decay rate the optimizer applies, from its state."""

  def step(state, _):
    w = {"w": jnp.ones(())}
    _, state = tx.update(jax.tree.map(jnp.zeros_like, w), state, w)
    return state, optaxtra.inspect(state)["decay_rate"]

  return jax.lax.scan(step, tx.init({"w": jnp.ones(())}), length=steps)[1]


fig, axes = plt.subplots(1, 2, figsize=(7, 3.5), sharey=True)
for ax, peak in zip(axes, (3e-3, 1e-3), strict=True):
  lr_p = schedules.linear_warmup(
    schedules.polynomial_decay(peak, 0.0, steps), steps // 10
  )
  for coupling, coeff, kw in (
    ("learning_rate", wd, dict(color="C2")),
    ("normalized", wd * peak_lr, dict(color="C3", ls="--", lw=2)),
    ("independent", wd * peak_lr, dict(color="C4")),
  ):
    tx = optax.chain(
      optaxtra.scale_by_learning_rate(lr_p),
      optaxtra.add_decayed_weights_decoupled(
        coeff, schedule=coupled(lr_p, coupling, peak)
      ),
    )
    ax.plot(t, applied_decay(tx), label=coupling, **kw)
  ax.set_title(f"peak learning rate {peak:g}", fontsize=10)
  ax.set(xlabel="step")
axes[0].set_ylabel("decay per step (fraction of w)")
axes[0].legend(fontsize=8, loc="center right")
fig.suptitle("the decay the optimizer applied, read from its state", fontsize=11)
fig.tight_layout()
plt.show()
