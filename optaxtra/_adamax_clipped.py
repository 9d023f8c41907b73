"""Adamax with the Neural-GPU gradient clipping (Freivalds & Liepins, 2017)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core.dtypes import (
  canonical_float_dtype,
  check_trainable_params,
  compute_dtype,
  real_dtype,
  second_moment_dtype,
  zeros_like,
)
from optaxtra._core.moments import map_moments
from optaxtra._core.numerics import (
  bias_correction_factor,
  one_minus_power,
  safe_increment,
)
from optaxtra._introspect.declare import inspectable

_FN = "scale_by_adamax_clipped"


@inspectable(values=["count", "clip_fraction", "bias_correction"], trees=["mu", "nu"])
class ScaleByAdamaxClippedState(NamedTuple):
  """State of :func:`scale_by_adamax_clipped`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    mu: first moment, an exponential moving average of the clipped gradients.
    nu: running infinity norm ``max(b2 * nu, |g|)`` of the clipped gradients.
    clip_fraction: with ``track_clip_fraction=True``, a float32 scalar, the
      share of gradient entries the last update clipped (0 before the first
      update and when ``clip=False``); None otherwise, so that it is neither
      computed nor reported by :func:`optaxtra.inspect`.
    bias_correction: with ``bias_correction=True``, the scalar factor the last
      update multiplied ``mu`` by, ``1 / (1 - b1**count)``; None otherwise
      (0.2 kept a 1.0 there). Read by :func:`optaxtra.inspect` for the
      effective learning rate.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  mu: optax.Updates
  nu: optax.Updates
  clip_fraction: jax.Array | None
  bias_correction: jax.Array | None


def scale_by_adamax_clipped(
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  *,
  clip_multiplier: ArrayLike = 1.2,
  clip_epsilon: ArrayLike = 1e-4,
  clip: bool = True,
  bias_correction: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  track_clip_fraction: bool = False,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adamax, clipping each gradient to its running maximum.

  The Adamax of the Neural GPU (Freivalds & Liepins, 2017), exactly as in their
  ``AdamaxOptimizer``: each gradient entry is first clipped so that it exceeds
  the previous step's infinity norm by no more than ``clip_multiplier`` (plus
  ``clip_epsilon``), then Adamax runs on the clipped gradient. Per leaf, with
  ``nu`` from the previous step:

  .. math::

    c_t &= \nu_{t-1} \cdot \text{clip_multiplier} + \text{clip_epsilon}
      \quad\text{(only with clip=True)} \\
    g_t &\leftarrow \operatorname{clip}(g_t, -c_t, c_t) \\
    \mu_t &= b_1 \mu_{t-1} + (1 - b_1) g_t \\
    \nu_t &= \max(b_2 \nu_{t-1}, |g_t|) \\
    u_t &= \hat\mu_t / (\nu_t + \epsilon), \quad
      \hat\mu_t = \mu_t / (1 - b_1^t) \text{ if bias_correction else } \mu_t

  The defaults reproduce the original: no bias correction of the first moment,
  ``eps`` added outside the maximum, and, since ``nu`` starts at zero, a first
  step clipped to ``±clip_epsilon``.

  With ``clip=False, bias_correction=True`` this is :func:`optax.scale_by_adamax`
  up to where ``eps`` sits: Optax keeps it inside the running maximum,
  ``nu = max(b2 * nu, |g| + eps)`` and ``u = mu_hat / nu``, while here it is
  added to the maximum at the output, ``u = mu_hat / (max(b2 * nu, |g|) + eps)``.
  The two agree exactly for ``eps=0`` and to a relative ``eps / |g|`` otherwise.

  The output is the rescaled gradient, not a parameter change: chain it with a
  learning rate stage (or use :func:`optaxtra.adamax_clipped`), and apply it
  with :func:`optax.apply_updates`.

  The float hyperparameters must be float32 or wider (Python floats are):
  :func:`optax.inject_hyperparams` casts them to the params' dtype, and in
  bfloat16 ``b2=0.999`` becomes 1.0, so with bfloat16 or float16 params pass
  ``hyperparam_dtype=jnp.float32`` to it; a narrower value raises ``TypeError``.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the running infinity norm, in [0, 1).
    eps: non-negative term added to the denominator.
    clip_multiplier: positive multiplier of the previous infinity norm in the
      clipping bound; larger values clip less. The paper uses values > 1.
    clip_epsilon: positive floor of the clipping bound; gradients smaller
      than this are never clipped. It also bounds the first step, so 0 (which
      the original code allows) would freeze the optimizer and is refused;
      a traced value cannot be checked. Any non-negative value with
      ``clip=False``, where it is unused.
    clip: whether to clip (False gives plain Adamax with this ``eps``, and
      accepts complex parameters: ``nu`` is the running maximum of ``|g|``,
      real). With ``clip=True`` complex parameters raise ``TypeError``.
    bias_correction: whether to divide the first moment by ``1 - b1**t``.
    mu_dtype: dtype of the first moment; defaults to the params' dtype.
    nu_dtype: dtype of the infinity norm; by default the params' real dtype,
      but at least float32: in bfloat16 ``0.999 * nu`` rounds back to ``nu``,
      so the norm would never decay (Optax keeps it in the params' dtype).
    track_clip_fraction: whether to count the clipped entries into the state's
      ``clip_fraction``. Off by default because the count is a reduction over
      every gradient entry that XLA on CPU does not fuse with the update: it
      made the step 1.6x slower in ``benchmarks/`` (see RESULTS.md).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`ScaleByAdamaxClippedState`. Arithmetic is done in float32 at least
    (float64 for float64 params), updates keep the gradients' dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optaxtra
    >>> tx = optaxtra.scale_by_adamax_clipped(track_clip_fraction=True)
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0, -1e-5, 0.0])}, state)
    >>> updates["w"]  # 1.0 is clipped to clip_epsilon=1e-4, -1e-5 is not
    Array([ 0.0999..., -0.0999...,  0. ], dtype=float32)
    >>> state.clip_fraction  # one of the three entries was clipped
    Array(0.333..., dtype=float32)

  References:
    Freivalds & Liepins, `Improving the Neural GPU Architecture for Algorithm
    Learning <https://arxiv.org/abs/1702.08727>`_, 2017; their implementation
    LUMII-Syslab/DNGPU ``adamax.py``.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015 (Adamax, Algorithm 2).
  """
  _hyper.real(_FN, "b1", b1, low=0.0, high=1.0)
  _hyper.real(_FN, "b2", b2, low=0.0, high=1.0)
  _hyper.real(_FN, "eps", eps, low=0.0, high=None)
  _hyper.real(
    _FN,
    "clip_multiplier",
    clip_multiplier,
    low=0.0,
    low_open=True,
    high=None,
    fix="Use a value > 1 (1.2 in the paper); use clip=False to turn clipping off.",
  )
  _checks.check_flag(_FN, "clip", clip)
  _hyper.real(
    _FN,
    "clip_epsilon",
    clip_epsilon,
    low=0.0,
    low_open=bool(clip),
    high=None,
    fix=(
      "nu starts at 0, so with clip_epsilon=0 the first gradient is clipped to "
      "0, nu stays 0 and every later gradient too: the optimizer never moves. "
      "Use a small positive floor (1e-4 in the paper), or clip=False."
    )
    if clip
    else "",
  )
  _checks.check_flag(_FN, "bias_correction", bias_correction)
  mu_dtype = canonical_float_dtype(_FN, "mu_dtype", mu_dtype, complex_ok=not clip)
  nu_dtype = canonical_float_dtype(_FN, "nu_dtype", nu_dtype)

  _checks.check_flag(_FN, "track_clip_fraction", track_clip_fraction)
  track = bool(track_clip_fraction)
  # Clipping to nu_new = max(b2 * nu, min(|g|, c)) instead of to c gives the
  # same bits whenever c >= b2 * nu, i.e. clip_multiplier >= b2 (an entry is
  # clipped exactly when nu_new is the bound c), and lets XLA update nu in
  # place: the old nu is then read only where the new one is written.
  cm_c, b2_c = _checks.concrete_scalar(clip_multiplier), _checks.concrete_scalar(b2)
  clip_to_nu = cm_c is not None and b2_c is not None and cm_c >= b2_c

  def init_fn(params):
    # Clipping a complex gradient has no agreed meaning (per part, or by
    # modulus?): refused with clip=True, plain complex Adamax without it.
    check_trainable_params(_FN, params, complex_ok=not clip)
    mu = jax.tree.map(lambda p: zeros_like(p, mu_dtype), params)
    nu = jax.tree.map(lambda p: zeros_like(p, second_moment_dtype(p, nu_dtype)), params)
    return ScaleByAdamaxClippedState(
      count=jnp.zeros([], jnp.int32),
      mu=mu,
      nu=nu,
      clip_fraction=jnp.zeros([], jnp.float32) if track else None,
      bias_correction=(
        jnp.ones([], _checks.default_float()) if bias_correction else None
      ),
    )

  def update_fn(updates, state, params=None):
    del params
    _checks.check_update_call(
      _FN,
      updates,
      state,
      ScaleByAdamaxClippedState,
      reference=state.mu,
      what=_checks.MU,
      complex_ok=not clip,
    )
    count = safe_increment(state.count)
    consts = {}

    def constants(dt):  # once per dtype, not per leaf: less to trace for big trees
      if dt not in consts:
        b1_ = jnp.asarray(b1, dt)
        consts[dt] = (
          b1_,
          1 - b1_,
          jnp.asarray(b2, dt),
          jnp.asarray(eps, dt),
          jnp.asarray(clip_multiplier, dt),
          jnp.asarray(clip_epsilon, dt),
          one_minus_power(b1_, count.astype(dt)) if bias_correction else None,
        )
      return consts[dt]

    def cast(x, dt):  # a no-op astype still adds an equation per leaf
      return x if x.dtype == dt else x.astype(dt)

    def leaf(g, mu, nu):
      g = jnp.asarray(g)  # a Python scalar leaf
      dt = compute_dtype(g, mu, nu)  # complex only with clip=False
      rdt = real_dtype(dt)
      b1_, one_minus_b1, b2_, eps_, cm_, ce_, bc_ = constants(rdt)
      gc, mu_c, nu_c = cast(g, dt), cast(mu, dt), cast(nu, rdt)
      n_clipped = None
      if clip and clip_to_nu:
        bound = nu_c * cm_ + ce_
        nu_new = jnp.maximum(b2_ * nu_c, jnp.minimum(jnp.abs(gc), bound))
        if track:
          n_clipped = jnp.sum(jnp.abs(gc) > nu_new, dtype=jnp.int32)
        gc = jnp.clip(gc, -nu_new, nu_new)
      else:
        if clip:
          bound = nu_c * cm_ + ce_
          if track:
            n_clipped = jnp.sum(jnp.abs(gc) > bound, dtype=jnp.int32)
          gc = jnp.clip(gc, -bound, bound)
        nu_new = jnp.maximum(b2_ * nu_c, jnp.abs(gc))
      mu_new = b1_ * mu_c + one_minus_b1 * gc
      mu_hat = mu_new / bc_ if bias_correction else mu_new
      out = mu_hat / (nu_new + eps_)
      return (
        cast(out, g.dtype),
        cast(mu_new, mu.dtype),
        cast(nu_new, nu.dtype),
        n_clipped,
      )

    new_updates, mu, nu, extras = map_moments(leaf, updates, state.mu, state.nu)
    clip_fraction = None
    if track:
      total = sum(int(jnp.size(g)) for g in jax.tree.leaves(updates))
      n_clipped = sum(
        (n.astype(jnp.float32) for (n,) in extras if n is not None),
        jnp.zeros([], jnp.float32),
      )
      clip_fraction = (n_clipped / max(total, 1)).astype(jnp.float32)
    fdt = _checks.default_float()
    bc = bias_correction_factor(b1, None, count, fdt) if bias_correction else None
    return new_updates, ScaleByAdamaxClippedState(
      count=count,
      mu=mu,
      nu=nu,
      clip_fraction=clip_fraction,
      bias_correction=None if bc is None else bc.astype(fdt),
    )

  # optax.OptState (an ArrayTree) has no None, which JAX takes as an empty
  # subtree: the state's clip_fraction is None without track_clip_fraction.
  return optax.GradientTransformation(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
