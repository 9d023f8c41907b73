"""The contenders the benchmark times against optaxtra, and prototypes.

Everything here is benchmark code, not library code:

* ``hand_fused_step``: the default ``adamax_clipped`` step (clipping, moments,
  schedule, decoupled decay, apply) written as one ``jnp`` expression per leaf,
  the "no library overhead" reference. ``diagnostics=True`` also counts the
  clipped entries, as optaxtra's state does.
* ``optax_chain``: Optax's nearest chain, ``scale_by_adamax`` +
  ``add_decayed_weights`` + ``scale_by_learning_rate``.
* ``fused_adamax_clipped``: a prototype of ``optaxtra.adamax_clipped`` as ONE
  transformation computing the three stages in a single pass per leaf, whose
  state has exactly the chain's structure (so ``optaxtra.inspect``,
  checkpoints and the tests see no difference). Options: ``diagnostics``
  (count clipped entries or not) and ``pack_below`` (concatenate the leaves
  with fewer entries than this into one buffer and update them together).
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


def optaxtra_tx(*, clip=True, bias_correction=False):
  """optaxtra's optimizer as a user writes it, with PyTorch's decay coupling."""
  return optaxtra.adamax_clipped(
    schedule,
    B1,
    B2,
    EPS,
    clip=clip,
    bias_correction=bias_correction,
    weight_decay=WEIGHT_DECAY,
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


def hand_fused_step(diagnostics=False):
  """One pass per leaf: clip, moments, lr, decoupled decay, apply."""

  def step(params, state, grads):
    count, mu, nu = state[:3]
    lr = jnp.asarray(schedule(count), jnp.float32)
    rate = WEIGHT_DECAY * lr

    def leaf(p, g, m, v):
      bound = v * CLIP_MULTIPLIER + CLIP_EPSILON
      gc = jnp.clip(g, -bound, bound)
      m = B1 * m + (1 - B1) * gc
      v = jnp.maximum(B2 * v, jnp.abs(gc))
      u = -lr * (m / (v + EPS))
      p = p + (u - rate * p)
      n = jnp.sum(jnp.abs(g) > bound, dtype=jnp.int32) if diagnostics else 0
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
  """``optaxtra_tx()`` computed in one pass, with the chain's state structure.

  Args:
    diagnostics: count the clipped entries into ``clip_fraction`` (else 0).
    pack_below: leaves with fewer entries than this are raveled, concatenated
      and updated as one buffer (0: no packing).
  """
  reference = optaxtra_tx()
  s1_cls = optaxtra.ScaleByAdamaxClippedState
  s2_cls = optaxtra.ScaleByLearningRateState
  s3_cls = optaxtra.AddDecayedWeightsDecoupledState

  def core(p, g, m, v, lr, rate):
    bound = v * CLIP_MULTIPLIER + CLIP_EPSILON
    gc = jnp.clip(g, -bound, bound)
    m = B1 * m + (1 - B1) * gc
    v = jnp.maximum(B2 * v, jnp.abs(gc))
    u = (-lr) * (m / (v + EPS))
    u = u - rate * p
    n = jnp.sum(jnp.abs(g) > bound, dtype=jnp.int32) if diagnostics else None
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
      clip_fraction = jnp.zeros([], jnp.float32)
    count = optax.safe_increment(s1.count)
    new_state = (
      s1_cls(
        count=count,
        mu=treedef.unflatten(out_m),
        nu=treedef.unflatten(out_v),
        clip_fraction=clip_fraction,
        bias_correction=jnp.ones([], jnp.float32),
      ),
      s2_cls(optax.safe_increment(s2.count), lr),
      s3_cls(optax.safe_increment(s3.count), rate),
    )
    return treedef.unflatten(out_u), new_state

  return optax.GradientTransformation(reference.init, update_fn)


# --- prototype: optaxtra's chain with lean per-leaf tracing ---------------------


def _cast(x, dt):
  """``x.astype(dt)`` only when that changes something (a no-op cast still
  costs a traced equation per leaf)."""
  return x if x.dtype == dt else x.astype(dt)


def lean_adamax_clipped(*, diagnostics=True, reform=False):
  """``optaxtra_tx()`` with the same three stages and states, traced leanly.

  optaxtra's per-leaf code, bit for bit the same arithmetic, changed only in
  what it asks the tracer to record: the hyperparameters are converted to
  arrays once per step and dtype instead of once per leaf, arrays are not cast
  to the dtype they already have, and the clip count is made only with
  ``diagnostics``.

  ``reform=True`` also reorders the clipped update so that the old ``nu`` is
  read only where ``nu`` itself is updated, which saves XLA a copy of ``nu``
  (a fresh buffer every step): with ``|clip(g, ±c)| = min(|g|, c)``,

      nu_new = max(b2 * nu, min(|g|, c)),   g_clipped = clip(g, -nu_new, nu_new)

  which is the same value bit for bit whenever ``c >= b2 * nu`` for every
  ``nu >= 0``, i.e. ``clip_multiplier >= b2`` (1.2 >= 0.999 by default): an
  entry is clipped exactly when ``nu_new`` is the bound ``c``. The clipped
  entries are then those with ``|g| > nu_new``.
  """
  reference = optaxtra_tx()
  reform = reform and CLIP_MULTIPLIER >= B2
  s1_cls = optaxtra.ScaleByAdamaxClippedState
  s2_cls = optaxtra.ScaleByLearningRateState
  s3_cls = optaxtra.AddDecayedWeightsDecoupledState
  from optaxtra._dtypes import compute_dtype

  def constants(cache, dt):
    if dt not in cache:
      b1 = jnp.asarray(B1, dt)
      cache[dt] = (
        b1,
        1 - b1,
        jnp.asarray(B2, dt),
        jnp.asarray(EPS, dt),
        jnp.asarray(CLIP_MULTIPLIER, dt),
        jnp.asarray(CLIP_EPSILON, dt),
      )
    return cache[dt]

  def adamax_leaf(g, mu, nu, cache):
    dt = compute_dtype(g, mu, nu)
    b1, one_minus_b1, b2, eps, cm, ce = constants(cache, dt)
    gc, mu_c, nu_c = _cast(g, dt), _cast(mu, dt), _cast(nu, dt)
    bound = nu_c * cm + ce
    if reform:
      nu_new = jnp.maximum(b2 * nu_c, jnp.minimum(jnp.abs(gc), bound))
      n = jnp.sum(jnp.abs(gc) > nu_new, dtype=jnp.int32) if diagnostics else None
      gc = jnp.clip(gc, -nu_new, nu_new)
      mu_new = b1 * mu_c + one_minus_b1 * gc
    else:
      n = jnp.sum(jnp.abs(gc) > bound, dtype=jnp.int32) if diagnostics else None
      gc = jnp.clip(gc, -bound, bound)
      mu_new = b1 * mu_c + one_minus_b1 * gc
      nu_new = jnp.maximum(b2 * nu_c, jnp.abs(gc))
    out = mu_new / (nu_new + eps)
    return _cast(out, g.dtype), _cast(mu_new, mu.dtype), _cast(nu_new, nu.dtype), n

  def stage1(updates, state):
    gs, treedef = jax.tree.flatten(updates)
    cache = {}
    outs = [
      adamax_leaf(g, m, v, cache)
      for g, m, v in zip(
        gs, jax.tree.leaves(state.mu), jax.tree.leaves(state.nu), strict=True
      )
    ]
    u, mu, nu = (treedef.unflatten([o[i] for o in outs]) for i in range(3))
    if diagnostics:
      n = sum((o[3].astype(jnp.float32) for o in outs), jnp.zeros([], jnp.float32))
      frac = n / max(sum(g.size for g in gs), 1)
    else:
      frac = jnp.zeros([], jnp.float32)
    return u, s1_cls(
      optax.safe_increment(state.count), mu, nu, frac, jnp.ones([], jnp.float32)
    )

  def scale(u, factor):
    dt = compute_dtype(u, factor)
    return _cast(_cast(u, dt) * _cast(factor, dt), u.dtype)

  def decay(u, p, rate):
    dt = compute_dtype(u, p, rate)
    return _cast(_cast(u, dt) - _cast(rate, dt) * _cast(p, dt), u.dtype)

  def update_fn(updates, state, params=None):
    s1, s2, s3 = state
    u, s1 = stage1(updates, s1)
    lr = jnp.asarray(schedule(s2.count), jnp.float32)
    u = jax.tree.map(lambda x: scale(x, -lr), u)
    rate = WEIGHT_DECAY * jnp.asarray(schedule(s3.count), jnp.float32)
    u = jax.tree.map(lambda x, p: decay(x, p, rate), u, params)
    return u, (
      s1,
      s2_cls(optax.safe_increment(s2.count), lr),
      s3_cls(optax.safe_increment(s3.count), rate),
    )

  return optax.GradientTransformation(reference.init, update_fn)
