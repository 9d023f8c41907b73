"""Independent float64 NumPy references of the equations optaxtra implements.

Written from the papers and the original code, never by calling optaxtra (nor
JAX): Kingma & Ba 2015 (Adam, Algorithm 1; Adamax, Algorithm 2), Freivalds &
Liepins 2017 and its TensorFlow ``AdamaxOptimizer._apply_dense``, Loshchilov &
Hutter 2019 (AdamW, Algorithm 2) and Composer's ``DecoupledAdamW.adamw``.

Arrays are float64; a tree is a flat ``dict`` name -> array. ``t`` is the
1-based step of the papers; the 0-based update count that schedules receive is
``n = t - 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Tree = dict[str, np.ndarray]

# The params the core tests use: a matrix and a scalar (shared, so that JAX's
# eager-op caches are reused across test files).
SHAPES = {"w": (4, 5), "s": ()}


def f64(x: Any) -> np.ndarray:
  """``x`` (NumPy, JAX, any float dtype incl. bfloat16) as float64 NumPy."""
  return np.asarray(np.asarray(x).astype(np.float64), dtype=np.float64)


def tree_f64(tree: Mapping[str, Any]) -> Tree:
  return {k: f64(v) for k, v in tree.items()}


def value(v: float | Callable[[int], float] | None, n: int) -> float:
  """A float or a schedule at the 0-based count ``n``; None means 1."""
  if v is None:
    return 1.0
  return float(v(n)) if callable(v) else float(v)


def spiky_grads(
  seed: int,
  shapes: Mapping[str, tuple[int, ...]],
  steps: int,
  *,
  spike: float = 50.0,
) -> list[Tree]:
  """Random gradients: most entries N(0, 1), some tiny, some spikes.

  A fifth of the entries are scaled by 1e-5 (below the default
  ``clip_epsilon=1e-4``, so that not everything clips on the first step) and
  about one in seven by ``spike`` (far beyond ``1.2 * nu``, so that clipping
  also happens after the first step).
  """
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    g = {}
    for k, shape in shapes.items():
      x = rng.normal(size=shape)
      x[rng.random(shape) < 0.2] *= 1e-5
      x[rng.random(shape) < 0.15] *= spike
      g[k] = x
    out.append(g)
  return out


# --- Adamax with the Neural-GPU clipping (Freivalds & Liepins 2017) ---------


def adamax_clipped_step(
  g: np.ndarray,
  mu: np.ndarray,
  nu: np.ndarray,
  t: int,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  clip_multiplier: float = 1.2,
  clip_epsilon: float = 1e-4,
  clip: bool = True,
  bias_correction: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """One step on one array: ``(update, mu, nu, number of entries clipped)``.

  The Neural-GPU code: ``clipVal = v * clip_multiplier + clip_epsilon``, ``grad =
  clip_by_value(grad, -clipVal, clipVal)``, ``m = b1 m + (1 - b1) grad``,
  ``v = max(b2 v, |grad|)``, step ``m / (v + eps)`` (no bias correction).
  """
  g, mu, nu = f64(g), f64(mu), f64(nu)
  n_clipped = 0
  if clip:
    bound = nu * clip_multiplier + clip_epsilon
    n_clipped = int(np.sum(np.abs(g) > bound))
    g = np.minimum(np.maximum(g, -bound), bound)
  mu = b1 * mu + (1.0 - b1) * g
  nu = np.maximum(b2 * nu, np.abs(g))
  mu_hat = mu / (1.0 - b1**t) if bias_correction else mu
  return mu_hat / (nu + eps), mu, nu, n_clipped


def adamax_clipped(grads: list[Tree], **hyper: Any) -> list[dict[str, Any]]:
  """Runs :func:`adamax_clipped_step` over a gradient sequence.

  Returns one record per step: ``updates``, ``mu``, ``nu`` (trees) and
  ``clip_fraction`` (clipped entries / all entries of the step).
  """
  mu = {k: np.zeros_like(f64(v)) for k, v in grads[0].items()}
  nu = {k: np.zeros_like(f64(v)) for k, v in grads[0].items()}
  records = []
  for t, g in enumerate(grads, start=1):
    updates, clipped, total = {}, 0, 0
    for k in g:
      updates[k], mu[k], nu[k], c = adamax_clipped_step(g[k], mu[k], nu[k], t, **hyper)
      clipped += c
      total += np.size(g[k])
    records.append(
      {
        "updates": updates,
        "mu": dict(mu),
        "nu": dict(nu),
        "clip_fraction": clipped / total,
      }
    )
  return records


def optax_adamax_step(
  g: np.ndarray,
  mu: np.ndarray,
  nu: np.ndarray,
  t: int,
  *,
  b1: float,
  b2: float,
  eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Adamax (Kingma & Ba, Algorithm 2) with eps where Optax puts it.

  ``u = max(b2 u, |g| + eps)`` (eps inside the running maximum), step
  ``m / (1 - b1**t) / u``.
  """
  g, mu, nu = f64(g), f64(mu), f64(nu)
  mu = b1 * mu + (1.0 - b1) * g
  nu = np.maximum(b2 * nu, np.abs(g) + eps)
  return mu / (1.0 - b1**t) / nu, mu, nu


# --- Adam (Kingma & Ba 2015, Algorithm 1) ------------------------------------


def adam_step(
  g: np.ndarray,
  mu: np.ndarray,
  nu: np.ndarray,
  t: int,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  bias_correction: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One Adam step on one array: ``(update, mu, nu)``.

  ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``, step
  ``m_hat / (sqrt(v_hat + eps_root) + eps)`` with ``m_hat = m / (1 - b1**t)``
  and ``v_hat = v / (1 - b2**t)``, or the raw moments without bias correction
  (BERT's ``AdamWeightDecayOptimizer``).
  """
  g, mu, nu = f64(g), f64(mu), f64(nu)
  mu = b1 * mu + (1.0 - b1) * g
  nu = b2 * nu + (1.0 - b2) * g * g
  if bias_correction:
    mu_hat, nu_hat = mu / (1.0 - b1**t), nu / (1.0 - b2**t)
  else:
    mu_hat, nu_hat = mu, nu
  return mu_hat / (np.sqrt(nu_hat + eps_root) + eps), mu, nu


def adam(grads: list[Tree], **hyper: Any) -> list[dict[str, Any]]:
  """Runs :func:`adam_step` over a gradient sequence (records as above)."""
  mu = {k: np.zeros_like(f64(v)) for k, v in grads[0].items()}
  nu = {k: np.zeros_like(f64(v)) for k, v in grads[0].items()}
  records = []
  for t, g in enumerate(grads, start=1):
    updates = {}
    for k in g:
      updates[k], mu[k], nu[k] = adam_step(g[k], mu[k], nu[k], t, **hyper)
    records.append({"updates": updates, "mu": dict(mu), "nu": dict(nu)})
  return records


def adam_bias_correction(t: int, b1: float, b2: float) -> float:
  """Adam's step-size factor ``sqrt(1 - b2**t) / (1 - b1**t)`` (Section 2)."""
  return float(np.sqrt(1.0 - b2**t) / (1.0 - b1**t))


# --- Learning rate and decoupled weight decay --------------------------------


def decoupled_decay(
  updates: Tree, params: Tree, rate: float, mask: Mapping[str, bool]
) -> Tree:
  """``u - rate * p`` on the masked leaves (Loshchilov & Hutter, line 12)."""
  return {
    k: f64(u) - rate * f64(params[k]) if mask[k] else f64(u) for k, u in updates.items()
  }


def adamax_clipped_optimizer(
  params: Tree,
  grads: list[Tree],
  *,
  learning_rate: float | Callable[[int], float],
  weight_decay: float | Callable[[int], float] = 0.0,
  decay_schedule: float | Callable[[int], float] | None = None,
  decay_mask: Mapping[str, bool] | None = None,
  **hyper: Any,
) -> list[dict[str, Any]]:
  """The whole optimizer: clipped Adamax, ``-lr(n)``, decoupled decay.

  ``p <- p - lr(n) * adamax_t - weight_decay(n) * decay_schedule(n) * p`` on
  the masked leaves, with ``n = t - 1``. Returns per step the new ``params``,
  the ``learning_rate`` and decay ``rate`` used, and the ``clip_fraction``.
  """
  p = tree_f64(params)
  mask = decay_mask if decay_mask is not None else dict.fromkeys(p, True)
  adamax = adamax_clipped(grads, **hyper)
  records = []
  for n, rec in enumerate(adamax):
    lr = value(learning_rate, n)
    rate = value(weight_decay, n) * value(decay_schedule, n)
    scaled = {k: -lr * u for k, u in rec["updates"].items()}
    updates = decoupled_decay(scaled, p, rate, mask)
    p = {k: p[k] + updates[k] for k in p}
    records.append(
      {
        "params": p,
        "updates": updates,
        "learning_rate": lr,
        "rate": rate,
        "clip_fraction": rec["clip_fraction"],
      }
    )
  return records


def loshchilov_hutter_adamw(
  params: Tree,
  grads: list[Tree],
  *,
  alpha: float,
  eta: Callable[[int], float],
  weight_decay: float,
  decay_mask: Mapping[str, bool],
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
) -> list[Tree]:
  """AdamW, Algorithm 2 of Loshchilov & Hutter (2019), params per step.

  ``theta_t = theta_{t-1} - eta_t (alpha m_hat_t / (sqrt(v_hat_t) + eps) +
  lambda theta_{t-1})``: the schedule multiplier ``eta_t`` scales both the
  Adam step and the decay, the base rate ``alpha`` only the Adam step.
  """
  p = tree_f64(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t, g in enumerate(grads, start=1):
    eta_t = float(eta(t - 1))
    new = {}
    for k in p:
      gk = f64(g[k])
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk * gk
      m_hat = m[k] / (1 - b1**t)
      v_hat = v[k] / (1 - b2**t)
      lam = weight_decay if decay_mask[k] else 0.0
      new[k] = p[k] - eta_t * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * p[k])
    p = new
    out.append(dict(p))
  return out


def composer_decoupled_adamw(
  params: Tree,
  grads: list[Tree],
  *,
  lr: Callable[[int], float],
  initial_lr: float,
  weight_decay: float,
  decay_mask: Mapping[str, bool],
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
) -> list[Tree]:
  """Composer's ``DecoupledAdamW.adamw`` step, in its order of operations.

  ``param *= 1 - (lr / initial_lr) * weight_decay``, then the moments, then
  ``denom = sqrt(exp_avg_sq) / sqrt(1 - b2**t) + eps`` and
  ``param -= lr / (1 - b1**t) * exp_avg / denom``.
  """
  p = tree_f64(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t, g in enumerate(grads, start=1):
    lr_t = float(lr(t - 1))
    new = {}
    for k in p:
      gk = f64(g[k])
      wd = weight_decay if decay_mask[k] else 0.0
      q = p[k] * (1 - (lr_t / initial_lr) * wd) if wd != 0 else p[k]
      m[k] = m[k] * b1 + gk * (1 - b1)
      v[k] = v[k] * b2 + gk * gk * (1 - b2)
      denom = np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps
      new[k] = q - (lr_t / (1 - b1**t)) * (m[k] / denom)
    p = new
    out.append(dict(p))
  return out


def held(hyper: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
  """The float hyperparameters as a program computing in ``dtype`` holds them.

  optaxtra computes in float32 for float32, bfloat16 and float16 params (in
  float64 for float64 ones), with each hyperparameter rounded once to that
  precision: float32 ``b2=0.999`` is 0.99900001287..., so ``1 - b2`` differs
  from 0.001 by 1.3e-5 relative. The reference evaluates the same equations
  in float64 on the values the program actually holds.
  """
  if np.dtype(dtype) == np.float64:
    return dict(hyper)
  return {
    k: float(np.float32(v)) if isinstance(v, float) else v for k, v in hyper.items()
  }


DEFAULT_ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}
# Adamax hyperparameters that are inexact in float32, so that a detour through
# float32 shows.
ADAMAX_HYPER = {
  "b1": 0.9,
  "b2": 0.99,
  "eps": 1e-7,
  "clip_multiplier": 1.3,
  "clip_epsilon": 1e-4,
}
