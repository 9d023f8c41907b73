"""Adam with the bias correction optional (BERT's optimizer has none)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core import paths as _paths
from optaxtra._core.dtypes import (
  canonical_float_dtype,
  check_trainable_params,
  compute_dtype,
  real_dtype,
  second_moment_dtype,
  zeros_like,
)
from optaxtra._core.hyper import constants_by_path
from optaxtra._core.moments import map_moments
from optaxtra._core.numerics import (
  bias_correction_factor,
  one_minus_power,
  safe_increment,
)
from optaxtra._introspect.declare import inspectable

_FN = "scale_by_adam"


@inspectable(values=["count", "bias_correction"], trees=["mu", "nu"])
class ScaleByAdamState(NamedTuple):
  """State of :func:`optaxtra.scale_by_adam`.

  Named, by Optax's convention, after the function whose state it is, like
  :class:`optax.ScaleByAdamState`, but not that class: it also records the
  bias-correction factor, and ``isinstance`` tells the two apart.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    mu: first moment, moving average of the gradients.
    nu: second moment, moving average of the squared gradients.
    bias_correction: scalar factor ``sqrt(1 - b2**t) / (1 - b1**t)`` that the
      bias correction multiplied the last step by (1 with
      ``bias_correction=False``, and before the first update). A learning rate
      times this factor is Adam's effective step size alpha_t (Kingma & Ba,
      Section 2), reported by :func:`optaxtra.inspect`. None where ``b1`` or
      ``b2`` are given by path: each group then has its own factor.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  mu: optax.Updates
  nu: optax.Updates
  bias_correction: jax.Array | None


def scale_by_adam(
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  eps_root: ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  *,
  nesterov: bool = False,
  bias_correction: bool = True,
  nu_dtype: Any | None = None,
  epsilon_hat: bool = False,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam, with the bias correction optional.

  With the default ``bias_correction=True`` this is :func:`optax.scale_by_adam`:

  .. math::

    \mu_t = b_1 \mu_{t-1} + (1 - b_1) g_t, \quad
    \nu_t = b_2 \nu_{t-1} + (1 - b_2) g_t^2, \quad
    u_t = \frac{\mu_t / (1 - b_1^t)}{\sqrt{\nu_t / (1 - b_2^t) + \epsilon_{root}}
      + \epsilon}

  Its positional arguments are Optax's (``mu_dtype`` fifth), and ``nesterov``
  is Optax's: with it the first moment is looked ahead,
  ``mu_hat = b1 * mu_t / (1 - b1**(t+1)) + (1 - b1) * g_t / (1 - b1**t)``
  (Dozat, 2016), so an ``optax.scale_by_adam(...)`` call ports by changing the
  import.

  Complex gradients work as in Optax: ``mu`` is complex, ``nu`` averages
  ``|g|**2`` and is real (of the matching real precision).

  With ``bias_correction=False`` the moments are used as they are,
  ``u_t = mu_t / (sqrt(nu_t + eps_root) + eps)``: the update of BERT's
  ``AdamWeightDecayOptimizer``.

  With ``epsilon_hat=True`` epsilon sits outside the bias correction, as in
  TensorFlow 1's ``AdamOptimizer`` and Keras' ``Adam`` (the "epsilon hat" of
  Kingma & Ba, end of Section 2): the whole step is multiplied by the bias
  correction factor,

  .. math::

    u_t = \frac{\sqrt{1 - b_2^t}}{1 - b_1^t}
      \frac{\mu_t}{\sqrt{\nu_t + \epsilon_{root}} + \epsilon},

  which is the default update with ``eps`` replaced by
  ``eps / sqrt(1 - b2**t)`` (larger early in training). With ``nesterov`` the
  looked-ahead ``mu_hat`` is multiplied by ``sqrt(1 - b2**t)`` instead. With
  ``bias_correction=False`` there is nothing to move epsilon out of, and the
  flag changes nothing.

  The state also records the factor by which the bias correction scaled the
  step, so that :func:`optaxtra.inspect` can report Adam's effective step size
  ``alpha_t = lr * sqrt(1 - b2**t) / (1 - b1**t)``.

  The float hyperparameters must be float32 or wider (Python floats are):
  :func:`optax.inject_hyperparams` casts them to the params' dtype, and in
  bfloat16 ``b2=0.999`` becomes 1.0, so with bfloat16 or float16 params pass
  ``hyperparam_dtype=jnp.float32`` to it; a narrower value raises ``TypeError``.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: non-negative term added to the denominator outside the square root.
    eps_root: non-negative term added inside the square root.
    mu_dtype: dtype of the first moment; defaults to the params' dtype.
    nesterov: whether to use Nesterov momentum (NAdam), as in Optax.
    bias_correction: whether to divide the moments by ``1 - b**t``.
    nu_dtype: dtype of the second moment; by default the params' real dtype,
      but at least float32: in bfloat16, ``0.999 * nu`` rounds back to ``nu``
      and the average stops moving (Optax keeps ``nu`` in the params' dtype).
    epsilon_hat: whether ``eps`` is added outside the bias correction (the
      whole step is multiplied by ``sqrt(1 - b2**t) / (1 - b1**t)``), as
      TensorFlow 1's and Keras' Adam do.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.ScaleByAdamState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optaxtra
    >>> tx = optaxtra.scale_by_adam(bias_correction=False)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> updates, state = tx.update({"w": jnp.array([0.5, -2.0])}, state)
    >>> updates["w"]  # 0.1 * g / sqrt(0.001 * g**2): uncorrected moments
    Array([ 3.16..., -3.16...], dtype=float32)

    Keras' and TensorFlow 1's Adam, epsilon outside the bias correction:

    >>> tx = optaxtra.scale_by_adam(eps=1e-3, epsilon_hat=True)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> updates, state = tx.update({"w": jnp.array([1e-3, -2.0])}, state)
    >>> updates["w"]  # sqrt(0.001) * g / (sqrt(0.001) * |g| + eps)
    Array([ 0.0306..., -0.9844...], dtype=float32)

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.

    Devlin et al., `BERT <https://arxiv.org/abs/1810.04805>`_, 2019, and its
    ``optimization.py`` (``AdamWeightDecayOptimizer``).
  """
  # b1, b2 and eps may differ by parameter path (optaxtra.by_path); each value,
  # and eps_root, is checked by the one resolver, in the dtype it is used in.
  hb1 = constants_by_path(_FN, "b1", b1, low=0.0, high=1.0)
  hb2 = constants_by_path(_FN, "b2", b2, low=0.0, high=1.0)
  heps = constants_by_path(_FN, "eps", eps, low=0.0)
  h_eps_root = _hyper.resolve(_FN, "eps_root", eps_root, low=0.0)
  if callable(eps_root):
    raise TypeError(f"{_FN}: eps_root must be a number, not a schedule.")
  by_path = hb1.by_path or hb2.by_path or heps.by_path
  _checks.check_flag(_FN, "bias_correction", bias_correction)
  _checks.check_flag(_FN, "nesterov", nesterov)
  _checks.check_flag(_FN, "epsilon_hat", epsilon_hat)
  # Epsilon outside the bias correction: the step times sqrt(1 - b2**t) / (1 - b1**t).
  hat = bool(epsilon_hat) and bool(bias_correction)
  mu_dtype = canonical_float_dtype(_FN, "mu_dtype", mu_dtype, complex_ok=True)
  nu_dtype = canonical_float_dtype(_FN, "nu_dtype", nu_dtype)

  def groups(tree):
    """Each leaf's (b1, b2, eps) rule indices; all 0 without by_path."""
    paths = _paths.paths(tree)
    return list(
      zip(hb1.assign(paths), hb2.assign(paths), heps.assign(paths), strict=True)
    )

  # With b1 or b2 by path the bias correction differs by group: no one factor.
  one_factor = not (hb1.by_path or hb2.by_path)

  def init_fn(params):
    check_trainable_params(_FN, params, complex_ok=True)
    if by_path:
      groups(params)  # the rules checked against the params' paths
    return ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(lambda p: zeros_like(p, mu_dtype), params),
      nu=jax.tree.map(
        lambda p: zeros_like(p, second_moment_dtype(p, nu_dtype)), params
      ),
      bias_correction=jnp.ones([], _checks.default_float()) if one_factor else None,
    )

  def update_fn(updates, state, params=None):
    del params
    _checks.check_update_call(
      _FN,
      updates,
      state,
      ScaleByAdamState,
      reference=state.mu,
      what=_checks.MU,
      complex_ok=True,
    )
    count = safe_increment(state.count)

    consts = {}
    b1s, b2s, epss = (h.values(state.count) for h in (hb1, hb2, heps))
    eps_root_v = h_eps_root(state.count)
    leaf_groups = iter(groups(state.mu) if by_path else [])

    def constants(dt, group):  # once per dtype and group, not per leaf
      key = (dt, group)
      if key not in consts:
        i1, i2, ie = group
        b1_, b2_ = b1s[i1].astype(dt), b2s[i2].astype(dt)
        t = count.astype(dt)
        consts[key] = (
          b1_,
          1 - b1_,
          b2_,
          1 - b2_,
          eps_root_v.astype(dt),
          epss[ie].astype(dt),
          (
            one_minus_power(b1_, t),
            one_minus_power(b2_, t),
            one_minus_power(b1_, t + 1) if nesterov else None,
          )
          if bias_correction
          else None,
        )
      return consts[key]

    def leaf(g, mu, nu):
      g = jnp.asarray(g)  # a Python scalar leaf
      dt = compute_dtype(g, mu, nu)  # complex for complex gradients
      rdt = real_dtype(dt)
      group = next(leaf_groups) if by_path else (0, 0, 0)
      b1_, one_minus_b1, b2_, one_minus_b2, eps_root_, eps_, bc = constants(rdt, group)
      gc = g.astype(dt)
      if jnp.issubdtype(dt, jnp.complexfloating):
        g2 = jnp.square(gc.real) + jnp.square(gc.imag)
      else:
        g2 = gc * gc
      mu_new = b1_ * mu.astype(dt) + one_minus_b1 * gc
      nu_new = b2_ * nu.astype(rdt) + one_minus_b2 * g2
      if nesterov:  # Optax's look-ahead of the first moment
        if bias_correction:
          mu_hat = b1_ * (mu_new / bc[2]) + one_minus_b1 * (gc / bc[0])
        else:
          mu_hat = b1_ * mu_new + one_minus_b1 * gc
      elif hat:  # Keras' and TF1's form: sqrt(1 - b2**t) / (1 - b1**t) * mu
        mu_hat = (jnp.sqrt(bc[1]) / bc[0]) * mu_new
      else:
        mu_hat = mu_new / bc[0] if bias_correction else mu_new
      if hat:  # eps outside the bias correction: nu as it is, the factor on top
        if nesterov:
          mu_hat = jnp.sqrt(bc[1]) * mu_hat
        nu_hat = nu_new
      else:
        nu_hat = nu_new / bc[1] if bias_correction else nu_new
      out = mu_hat / (jnp.sqrt(nu_hat + eps_root_) + eps_)
      return out.astype(g.dtype), mu_new.astype(mu.dtype), nu_new.astype(nu.dtype)

    new_updates, mu, nu, _ = map_moments(leaf, updates, state.mu, state.nu)
    fdt = _checks.default_float()
    if not one_factor:
      bc = None
    elif bias_correction:
      bc = bias_correction_factor(b1s[0], b2s[0], count, fdt).astype(fdt)
    else:
      bc = jnp.ones([], fdt)
    return new_updates, ScaleByAdamState(count=count, mu=mu, nu=nu, bias_correction=bc)

  # optax.OptState (an ArrayTree) has no None, which JAX takes as an empty
  # subtree: bias_correction is None where b1 or b2 differ by path.
  return optax.GradientTransformation(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
