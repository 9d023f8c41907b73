"""The contenders the benchmark times against optaxtra, and prototypes.

Everything here is benchmark code, not library code:

* ``hand_fused_step``: the default ``adamax_clipped`` step (clipping, moments,
  schedule, decoupled decay, apply) written as one ``jnp`` expression per leaf,
  the "no library overhead" reference. ``diagnostics=True`` also counts the
  clipped entries, as optaxtra's state does.
* ``optaxtra_chain_0_1``: ``optaxtra_tx()`` as optaxtra 0.1 built it, the
  chain of ``scale_by_adamax_clipped``, ``scale_by_learning_rate`` and
  ``add_decayed_weights_decoupled`` (three states, three counts).
* ``optax_chain``: Optax's nearest chain, ``scale_by_adamax`` +
  ``add_decayed_weights`` + ``scale_by_learning_rate``.
* ``fused_adamax_clipped`` (``--packing``): a prototype of
  ``optaxtra.adamax_clipped`` as ONE transformation computing the three stages
  in a single pass per leaf, whose state has exactly the 0.1 chain's structure.
  Options: ``diagnostics`` (count clipped entries or not) and ``pack_below``
  (concatenate the leaves with fewer entries than this into one buffer and
  update them together).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import optaxtra

B1, B2, EPS = 0.9, 0.999, 1e-8
CLIP_MULTIPLIER, CLIP_EPSILON = 1.2, 1e-4
PEAK_LR, WEIGHT_DECAY = 1e-3, 1e-2


def schedule(count):
  """The learning-rate schedule every JAX contender uses (warmup + cosine)."""
  return optax.warmup_cosine_decay_schedule(0.0, PEAK_LR, 100, 100_000)(count)


def optaxtra_tx(*, clip=True, bias_correction=False, track=False):
  """optaxtra's optimizer as a user writes it, with PyTorch's decay coupling."""
  return optaxtra.adamax_clipped(
    schedule,
    B1,
    B2,
    EPS,
    clip=clip,
    bias_correction=bias_correction,
    track_clip_fraction=track,
    weight_decay=WEIGHT_DECAY,
  )


def optaxtra_norm_tx():
  """``optaxtra_tx()`` with ``record_norm()`` first: the gradient norm logged."""
  return optax.chain(optaxtra.record_norm(), optaxtra_tx())


def optaxtra_average_tx():
  """``optaxtra_tx()`` with ``average_params(0.999)`` last: an EMA of the weights."""
  return optax.chain(optaxtra_tx(), optaxtra.average_params(0.999))


def optaxtra_chain_0_1(*, clip=True, bias_correction=False, track=False):
  """``optaxtra_tx()`` as optaxtra 0.1 built it: a chain of its three stages.

  ``optaxtra.adamax_clipped`` returned exactly this chain up to 0.1 (the
  ``"learning_rate"`` coupling passes the schedule itself to the decay stage):
  three states, each with its own count. Kept as a contender so that a fused
  ``adamax_clipped`` is timed against it in the same run.
  """
  return optax.chain(
    optaxtra.scale_by_adamax_clipped(
      B1,
      B2,
      EPS,
      clip=clip,
      bias_correction=bias_correction,
      track_clip_fraction=track,
    ),
    optaxtra.scale_by_learning_rate(schedule),
    optaxtra.add_decayed_weights_decoupled(WEIGHT_DECAY, schedule=schedule),
  )


def optax_chain():
  """Optax's nearest equivalent of ``optaxtra_tx(clip=False, bias_correction=True)``.

  ``add_decayed_weights`` before ``scale_by_learning_rate`` gives
  ``-lr(t) * (adamax + wd * p)``: the same decoupled decay, scaled by the full
  learning rate, as optaxtra's default coupling (optax.adamw's construction).
  Optax keeps ``eps`` inside the running maximum; optaxtra adds it outside.
  """
  return optax.chain(
    optax.scale_by_adamax(B1, B2, EPS),
    optax.add_decayed_weights(WEIGHT_DECAY),
    optax.scale_by_learning_rate(schedule),
  )


def tx_step(tx):
  """The full training-step tail: update, then ``optax.apply_updates``."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


# --- the hand-fused reference -------------------------------------------------


def hand_fused_init(params):
  zeros = jax.tree.map(jnp.zeros_like, params)
  return (jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))


def hand_fused_step(diagnostics=False, naive=False):
  """One ``jnp`` expression per leaf: clip, moments, lr, decoupled decay, apply.

  By default the clip is written as optaxtra computes it, clipping to the new
  infinity norm (the same bits; XLA then updates ``nu`` in place). ``naive``
  transcribes the paper (clip to ``nu * clip_multiplier + clip_epsilon``,
  then update ``nu``), for which XLA copies ``nu`` every step.
  """

  def step(params, state, grads):
    count, mu, nu = state[:3]
    lr = jnp.asarray(schedule(count), jnp.float32)
    rate = WEIGHT_DECAY * lr

    def leaf(p, g, m, v):
      bound = v * CLIP_MULTIPLIER + CLIP_EPSILON
      if naive:
        n = jnp.sum(jnp.abs(g) > bound, dtype=jnp.int32) if diagnostics else 0
        gc = jnp.clip(g, -bound, bound)
        v = jnp.maximum(B2 * v, jnp.abs(gc))
      else:
        v = jnp.maximum(B2 * v, jnp.minimum(jnp.abs(g), bound))
        n = jnp.sum(jnp.abs(g) > v, dtype=jnp.int32) if diagnostics else 0
        gc = jnp.clip(g, -v, v)
      m = B1 * m + (1 - B1) * gc
      u = -lr * (m / (v + EPS))
      p = p + (u - rate * p)
      return p, m, v, n

    out = jax.tree.map(leaf, params, grads, mu, nu)
    treedef = jax.tree.structure(params)
    parts = [
      treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(out), strict=True)
    ]
    new_count = optax.safe_increment(count)
    if diagnostics:
      n = sum(jax.tree.leaves(parts[3]))
      return parts[0], (new_count, parts[1], parts[2], n)
    return parts[0], (new_count, parts[1], parts[2])

  return step


def hand_fused_init_diag(params):
  return (*hand_fused_init(params), jnp.zeros([], jnp.int32))


# --- prototype: optaxtra.adamax_clipped as one transformation ------------------


def fused_adamax_clipped(*, diagnostics=True, pack_below=0):
  """``optaxtra_tx()`` computed in one pass, with the 0.1 chain's state structure.

  Args:
    diagnostics: count the clipped entries into ``clip_fraction`` (else 0).
    pack_below: leaves with fewer entries than this are raveled, concatenated
      and updated as one buffer (0: no packing).
  """
  reference = optaxtra_chain_0_1(track=diagnostics)
  s1_cls = optaxtra.ScaleByAdamaxClippedState
  s2_cls = optaxtra.ScaleByLearningRateState
  s3_cls = optaxtra.AddDecayedWeightsDecoupledState

  def core(p, g, m, v, lr, rate):
    bound = v * CLIP_MULTIPLIER + CLIP_EPSILON
    v = jnp.maximum(B2 * v, jnp.minimum(jnp.abs(g), bound))
    n = jnp.sum(jnp.abs(g) > v, dtype=jnp.int32) if diagnostics else None
    gc = jnp.clip(g, -v, v)
    m = B1 * m + (1 - B1) * gc
    u = (-lr) * (m / (v + EPS))
    u = u - rate * p
    return u, m, v, n

  def update_fn(updates, state, params=None):
    s1, s2, s3 = state
    lr = jnp.asarray(schedule(s2.count), jnp.float32)
    rate = jnp.asarray(WEIGHT_DECAY, jnp.float32) * lr
    gs, treedef = jax.tree.flatten(updates)
    ms, vs = jax.tree.leaves(s1.mu), jax.tree.leaves(s1.nu)
    ps = jax.tree.leaves(params)
    out_u, out_m, out_v = [None] * len(gs), [None] * len(gs), [None] * len(gs)
    counts = []
    small = [i for i, g in enumerate(gs) if g.size < pack_below]
    big = [i for i, g in enumerate(gs) if g.size >= pack_below]
    if len(small) == 1:
      big, small = big + small, []
    for i in big:
      out_u[i], out_m[i], out_v[i], n = core(ps[i], gs[i], ms[i], vs[i], lr, rate)
      counts.append(n)
    if small:

      def cat(xs):
        return jnp.concatenate([xs[i].reshape(-1) for i in small])

      # The barriers keep XLA from fusing the concatenation into every
      # slice's consumer, which makes the compile time quadratic in the
      # number of leaves (minutes for 100 leaves on CPU).
      packed = jax.lax.optimization_barrier((cat(ps), cat(gs), cat(ms), cat(vs)))
      u, m, v, n = core(*packed, lr, rate)
      u, m, v = jax.lax.optimization_barrier((u, m, v))
      counts.append(n)
      off = 0
      for i in small:
        size, shape = gs[i].size, gs[i].shape
        out_u[i] = u[off : off + size].reshape(shape)
        out_m[i] = m[off : off + size].reshape(shape)
        out_v[i] = v[off : off + size].reshape(shape)
        off += size
    total = sum(g.size for g in gs)
    if diagnostics:
      n_clipped = sum(c.astype(jnp.float32) for c in counts)
      clip_fraction = n_clipped / max(total, 1)
    else:
      clip_fraction = None
    count = optax.safe_increment(s1.count)
    new_state = (
      s1_cls(
        count=count,
        mu=treedef.unflatten(out_m),
        nu=treedef.unflatten(out_v),
        clip_fraction=clip_fraction,
        bias_correction=None,  # off, as in the reference: none recorded
      ),
      s2_cls(optax.safe_increment(s2.count), lr, s2.scale),
      s3_cls(optax.safe_increment(s3.count), rate, s3.weight_decay),
    )
    return treedef.unflatten(out_u), new_state

  return optax.GradientTransformation(reference.init, update_fn)
