# %% [markdown]
# # How do I go on training in JAX from a PyTorch run?
#
# A model has trained for a while in PyTorch, with `AdamW` and a learning rate
# that decays exponentially. The rest of the run is to happen in JAX. Copying
# the weights is not enough: `AdamW` remembers two moving averages of the
# gradient for every weight and the number of steps taken, which its bias
# correction and the schedule read. A fresh `tx.init(params)` forgets both,
# and the run does not continue: it restarts, at the first step's learning
# rate and with moments of zero.
#
# `optaxtra.interop.from_torch` builds the Optax state that continues the
# torch run: torch's moments in place of the zeros, and every count set to
# torch's step. Here a small network fits a noisy curve; the run moves to JAX
# halfway, and both continuations are drawn on one chart, with a restarted
# run for comparison.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch

import optaxtra
from optaxtra import interop

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (7, 3.5)})

rng = np.random.default_rng(0)
x = np.linspace(-3, 3, 256, dtype=np.float32)[:, None]
y = (np.sin(2 * x) + 0.1 * rng.normal(size=x.shape)).astype(np.float32)

TOTAL, MOVE, PEAK, DECAY = 400, 200, 2e-2, 0.99  # lr = PEAK * DECAY**step


# %% [markdown]
# ## The first half, in PyTorch
#
# A two-layer perceptron; the biases in a param group without weight decay,
# the learning rate from an `ExponentialLR` stepped after every step.

# %%
torch.manual_seed(0)
model = torch.nn.Sequential(
  torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
)
weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
opt = torch.optim.AdamW(
  [{"params": weights, "weight_decay": 1e-2}, {"params": biases, "weight_decay": 0.0}],
  lr=PEAK,
)
sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=DECAY)
xt, yt = torch.from_numpy(x), torch.from_numpy(y)


def torch_step():
  opt.zero_grad()
  loss = ((model(xt) - yt) ** 2).mean()
  loss.backward()
  opt.step()
  sched.step()
  return loss.item()


first_half = [torch_step() for _ in range(MOVE)]
print(f"step {MOVE}: loss {first_half[-1]:.4f}, next lr {sched.get_last_lr()[0]:.5f}")

# %% [markdown]
# ## Moving the run
#
# The JAX model names its parameters as torch does (`0.weight` becomes the
# path `0/weight`) and multiplies `x @ w`, so each `nn.Linear` weight, stored
# `(out, in)`, is transposed; `convert=interop.transpose_linear` transposes
# the moments the same way. `paths[i]` names the `i`-th parameter in the order
# the param groups list them: the weights, then the biases.
#
# The optimizer is the same one written in Optax: `optax.adamw` with the
# decay masked to the weights and the schedule as a function of the count
# (`ExponentialLR` multiplies by `gamma` after each step: `PEAK * DECAY**count`
# for the update after `count` steps).
# `from_torch` first runs it on stand-ins and compares what it does with
# torch's param groups (betas, eps, the decay of each group, the learning rate
# at this step), so a mistake there is an error, not a drifting run.


# %%
def to_jax(model):
  out = {}
  for name, p in model.named_parameters():
    layer, kind = name.split(".")
    out.setdefault(layer, {})[kind] = jnp.asarray(
      interop.transpose_linear(name, p.detach().numpy())
    )
  return out


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["0"]["weight"] + params["0"]["bias"])
  return jnp.mean((h @ params["2"]["weight"] + params["2"]["bias"] - y) ** 2)


params = to_jax(model)
paths = ["0/weight", "2/weight", "0/bias", "2/bias"]
tx = optax.adamw(
  optax.exponential_decay(PEAK, transition_steps=1, decay_rate=DECAY),
  weight_decay=1e-2,
  mask=optaxtra.masks.path_mask(include=["weight$"]),
)
state = interop.from_torch(
  tx, params, opt.state_dict(), paths=paths, convert=interop.transpose_linear
)
print(optaxtra.inspect(state))

# %% [markdown]
# ## Both halves, and a restart
#
# The torch run goes on, the JAX run goes on from the moved state, and a
# third run starts JAX afresh from the same weights with `tx.init(params)`.


# %%
@jax.jit
def jax_step(params, state):
  loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


def run(params, state, steps):
  losses = []
  for _ in range(steps):
    params, state, loss = jax_step(params, state)
    losses.append(float(loss))
  return params, losses


moved_params, moved = run(params, state, TOTAL - MOVE)
_, restarted = run(params, tx.init(params), TOTAL - MOVE)
torch_half = [torch_step() for _ in range(TOTAL - MOVE)]

final = to_jax(model)
worst = max(
  float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
  for a, b in zip(jax.tree.leaves(moved_params), jax.tree.leaves(final), strict=True)
)
print(
  f"final loss: torch {torch_half[-1]:.5f}, moved {moved[-1]:.5f}, "
  f"restarted {restarted[-1]:.5f}"
)
print(f"largest relative difference of the weights, torch vs moved: {worst:.1e}")

# %%
steps = np.arange(1, TOTAL + 1)
fig, ax = plt.subplots()
ax.plot(steps[:MOVE], first_half, color="k", lw=1, label="PyTorch, first half")
ax.plot(steps[MOVE:], torch_half, color="C0", lw=4, alpha=0.5, label="PyTorch goes on")
ax.plot(steps[MOVE:], moved, color="C1", lw=1.5, ls="--", label="JAX, state moved")
ax.plot(steps[MOVE:], restarted, color="C3", lw=1, label="JAX, tx.init: restarted")
ax.axvline(MOVE, color="gray", lw=0.5)
ax.set(xlabel="step", ylabel="training loss", yscale="log")
ax.legend(fontsize=8)
ax.set_title("the run moved to JAX at step 200", fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# The moved run lies on the torch run (the weights differ by float32
# rounding, a few parts in a million). The restarted one jumps: its schedule
# is back at the first step's learning rate, seven times the one the run had
# reached, and Adam's first step from zero moments moves every weight by the
# full learning rate, whatever its gradient's history. It then goes another
# way: seven times the learning rate trains faster on this small problem,
# whose schedule decays early, but it is another run, not the one planned,
# measured or compared.
#
# In float64 the moved run matches torch to `1e-12`, which the test suite
# checks for `AdamW`, `Adam`, `Adamax` and `SGD`; the guide *Bringing a run
# from PyTorch, Keras or TensorFlow* covers Keras and TF1 checkpoints and
# going back with `interop.to_torch`.
