# %% [markdown]
# # Writing a transformation, and choosing what trains
#
# **Updates are changes.** A TensorFlow user copies an Adamax optimizer with the
# Neural-GPU gradient clipping (Freivalds & Liepins, 2017) and, to test their
# understanding, makes its update return `tf.ones(...)`, expecting the weights
# to become ones. They don't: they stop changing at all. In TensorFlow 1 the
# method returns the ops to run, the assignment to the weights was no longer
# among them, and the tensor of ones was computed and thrown away. In Optax
# the question has a plain answer: `update` returns **updates**, the *change*
# that `optax.apply_updates(params, updates)` *adds* to the parameters.
# Returning ones moves every weight by +1 at every step; returning the new
# weights doubles them.

# %%
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import optaxtra
from optaxtra import masks

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})


def show_error(fn):
  """Runs fn and prints the error it raises, wrapped for reading."""
  try:
    fn()
  except (AssertionError, ValueError) as e:
    print(textwrap.fill(f"{type(e).__name__}: {e}", 88), "\n")
  else:
    print("no error")


# %% [markdown]
# The user's optimizer as an Optax transformation: a state (the moments `m`
# and `v`), an `init` that builds it, and an `update` that turns gradients into
# updates. The line that matters is the `return`: `-lr * m / (v + eps)`, the
# TensorFlow code's `var -= lr * m / (v + eps)` without the `var -=`.


# %%
class AdamaxState(NamedTuple):
  m: optax.Updates
  v: optax.Updates


def neural_gpu_adamax(
  lr=1e-3,
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  clip_multiplier=1.2,
  clip_epsilon=1e-4,
  mistake=None,
):
  def init(params):
    return AdamaxState(
      m=jax.tree.map(jnp.zeros_like, params), v=jax.tree.map(jnp.zeros_like, params)
    )

  def update(grads, state, params=None):
    def leaf(g, m, v, p):
      c = v * clip_multiplier + clip_epsilon  # grow at most 1.2x per step
      g = jnp.clip(g, -c, c)
      m = b1 * m + (1 - b1) * g
      v = jnp.maximum(b2 * v, jnp.abs(g))
      if mistake == "ones":  # the user's experiment
        return jnp.ones_like(p), m, v
      if mistake == "new weights":  # what "the optimizer returns" suggests
        return p - lr * m / (v + eps), m, v
      return -lr * m / (v + eps), m, v  # right: the change

    out = jax.tree.map(leaf, grads, state.m, state.v, params)

    def pick(i):
      return jax.tree.map(lambda _, o: o[i], grads, out)

    return pick(0), AdamaxState(m=pick(1), v=pick(2))

  return optax.GradientTransformation(init, update)


# %% [markdown]
# Three steps of each on the same weights and gradients, next to
# `optaxtra.adamax_clipped`, the library's version of the same algorithm:

# %%
params = {"kernel": jnp.array([[0.5, -0.3], [0.1, 0.2]]), "bias": jnp.zeros(2)}
grads = [
  jax.tree.map(lambda p, k=k: jax.random.normal(jax.random.key(k), p.shape), params)
  for k in range(3)
]


def run(tx):
  p, state = params, tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)  # p + updates
  return p


kernels = {
  name: np.asarray(run(tx)["kernel"]).ravel()
  for name, tx in (
    ("optaxtra.adamax_clipped", optaxtra.adamax_clipped(1e-3)),
    ("ours", neural_gpu_adamax()),
    ("ours, returning ones", neural_gpu_adamax(mistake="ones")),
    ("ours, returning new weights", neural_gpu_adamax(mistake="new weights")),
  )
}
print(f"{'kernel at the start':28} {np.asarray(params['kernel']).ravel()}")
for name, k in kernels.items():
  print(f"{name:28} {k.round(4)}")
diff = np.abs(kernels["ours"] - kernels["optaxtra.adamax_clipped"]).max()
print(f"largest difference, ours vs optaxtra's: {diff:.2g}")

# %% [markdown]
# Ours agrees with the library's. The two mistakes train nothing, yet raise no
# error: the weights just drift. `optaxtra.testing.check_transformation` runs a
# transformation a few steps (eagerly and under `jax.jit`) and fails with a
# message saying what is wrong, for this and for the other usual mistakes
# (updates of the wrong shape or dtype, state that changes type between steps
# and makes `jax.jit` recompile, non-finite updates, state sharing the params'
# buffers):

# %%
optaxtra.testing.check_transformation(neural_gpu_adamax(), params)
print("ours passes\n")
show_error(
  lambda: optaxtra.testing.check_transformation(
    neural_gpu_adamax(mistake="ones"), params
  )
)
show_error(
  lambda: optaxtra.testing.check_transformation(
    neural_gpu_adamax(mistake="new weights"), params
  )
)

# %% [markdown]
# **Choosing what trains.** TensorFlow decides what trains by `var_list=`,
# `trainable=False`, or making a value a `tf.constant`, and its `minimize()` is
# `compute_gradients()` followed by `apply_gradients()`. A classic example:
# `y = w1*x + w2*x + w3*x` with `x = 1`, target `y = 1`, every weight
# starting at 4. Trained together, the three weights share the correction;
# with `w3` frozen, `w1 + w2` goes to `-3`; with only `w2` trained, `w2` goes
# to `-7`.
#
# In JAX the split is explicit: `jax.grad` computes the gradients,
# `tx.update` turns them into updates and `optax.apply_updates` applies them.
# What trains is chosen by parameter name: `optaxtra.with_frozen` gives the frozen
# parameters zero updates (and keeps no optimizer state for them), and
# `masks.path_labels` with `optax.partition` gives each group its own
# optimizer, e.g. its own learning rate.

# %%
start = {"w1": jnp.array(4.0), "w2": jnp.array(4.0), "w3": jnp.array(4.0)}


def loss(params, x=1.0, y=1.0):
  return (y - (params["w1"] * x + params["w2"] * x + params["w3"] * x)) ** 2


def train(tx, steps=30):
  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)  # compute_gradients
    updates, state = tx.update(grads, state, params)  # apply_gradients:
    return optax.apply_updates(params, updates), state  #   the change, added

  params, state = start, tx.init(start)
  history = [params]
  for _ in range(steps):
    params, state = step(params, state)
    history.append(params)
  return {k: np.array([h[k] for h in history]) for k in start}


setups = {
  "all train": optax.sgd(0.1),
  "w3 frozen (a constant)": optaxtra.with_frozen(optax.sgd(0.1), frozen="w3"),
  "only w2 (var_list=[w2])": optaxtra.with_frozen(optax.sgd(0.1), frozen=["w1", "w3"]),
  "w1 at 10x the lr": optax.partition(
    {"fast": optax.sgd(0.1), "slow": optax.sgd(0.01)},
    masks.path_labels({"^w1$": "fast"}, default="slow"),
  ),
}
histories = {name: train(tx) for name, tx in setups.items()}
for name, h in histories.items():
  final = ", ".join(f"{k} = {v[-1]:.3f}" for k, v in h.items())
  print(f"{name:28} {final}")
assert histories["w3 frozen (a constant)"]["w3"][-1] == 4.0  # bit for bit

# %%
# Weights that move together overlap: the styles keep each one visible.
styles = {
  "w1": dict(color="C0", lw=4, alpha=0.5),
  "w2": dict(color="C1", lw=2, ls="--"),
  "w3": dict(color="C2", lw=1.5, ls=":"),
}
fig, axes = plt.subplots(1, 4, figsize=(8, 3.2), sharey=True)
for ax, (name, h) in zip(axes, histories.items(), strict=True):
  for k, values in h.items():
    ax.plot(values, label=k, **styles[k])
  ax.axhline(0, color="0.8", lw=0.8, zorder=0)
  ax.set_title(name, fontsize=9)
  ax.set_xlabel("step")
axes[0].set_ylabel("weight value")
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
fig.suptitle("y = w1·x + w2·x + w3·x trained towards y = 1 at x = 1", fontsize=10)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# Where TensorFlow would say "No variables to optimize", or quietly train a
# variable one meant to freeze, the masks refuse to guess: a pattern that
# matches nothing names itself and the paths there are, and freezing every
# parameter is an error.

# %%
show_error(lambda: optaxtra.with_frozen(optax.sgd(0.1), frozen="W3").init(start))
show_error(lambda: optaxtra.with_frozen(optax.sgd(0.1), frozen="w").init(start))
show_error(lambda: masks.path_labels({"^w1$": "fast"})(start))
