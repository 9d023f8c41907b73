"""An average of the parameters along training: EMA, TF's warmup, Polyak."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core import paths as _paths
from optaxtra._core.dtypes import canonical_float_dtype, real_dtype
from optaxtra._core.masking import resolve_mask
from optaxtra._core.numerics import safe_increment
from optaxtra._core.paths import quote
from optaxtra._introspect.declare import inspectable

_FN = "average_params"
_READ = "averaged_params"


@inspectable(values={"count": "count", "decay": "average_decay"}, trees=["average"])
class AverageParamsState(NamedTuple):
  """State of :func:`optaxtra.average_params`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    decay: the decay ``d_t`` the most recent update used (before the first
      update, the one the first update will use), reported by
      :func:`optaxtra.inspect` as ``average_decay``.
    average: the average, a tree with the params' structure: each averaged
      leaf in the average's dtype, :class:`optax.MaskedNode` for the leaves
      outside the mask. Read it with :func:`optaxtra.averaged_params`.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  decay: jax.Array
  average: optax.Params


# --- Decay schedules ----------------------------------------------------------


def _initial(path: str, p: Any, dtype: Any | None) -> jax.Array:
  """A copy of parameter ``p`` in the average's dtype."""
  if isinstance(p, jax.ShapeDtypeStruct):
    raise TypeError(
      f"{_FN}: init needs the params' values, since the average starts at "
      f"them; {quote(path)} is abstract ({p}). To describe the state (e.g. as "
      "an Orbax restore target), use jax.eval_shape(tx.init, params)."
    )
  pdt = jnp.dtype(jnp.result_type(p))
  complex_p = jnp.issubdtype(pdt, jnp.complexfloating)
  if not (jnp.issubdtype(pdt, jnp.floating) or complex_p):
    raise TypeError(
      f"{_FN}: the parameter {quote(path)} has dtype {pdt}; integer and "
      "boolean leaves (step counters, flags) have no average of their own "
      "dtype. Leave it out of the average with mask=..., e.g. "
      f"mask=optaxtra.masks.path_mask(exclude=[{path!r}]), or give it a "
      "floating dtype."
    )
  if dtype is None:
    dt = jnp.promote_types(pdt, jnp.float32)
  else:
    dt = jnp.dtype(dtype)
    if jnp.issubdtype(dt, jnp.complexfloating) != complex_p:
      raise TypeError(
        f"{_FN}: dtype={dt} for the parameter {quote(path)} of dtype {pdt}: a "
        "complex average needs complex params and the reverse. Pass dtype=None "
        "(float32 or wider, complex for complex params) or mask that leaf out."
      )
  # A copy, never the param's own buffer (which donating the params deletes);
  # placed like the param, eagerly and under jax.jit.
  return jnp.array(p, dtype=dt, copy=True)


def _stored(p: jax.Array) -> jax.Array:
  """``p``, a narrow float computed under :func:`jax.jit`, as it is stored.

  XLA may skip the rounding of a bfloat16 or float16 intermediate (its
  ``xla_allow_excess_precision`` default): the bfloat16 ``p + u`` then reaches
  the average unrounded, in float32, and the average is not one of the
  params that training produced. For bfloat16 (float32's exponent range)
  ``reduce_precision`` rounds exactly as the cast does and fuses; other
  narrow floats are held at their own precision by a barrier (by
  ``reduce_precision`` too on jax < 0.4.33, which has no public barrier). On
  jax < 0.4.33 XLA still lets some bfloat16 iterates through unrounded under
  ``jax.jit``: the average is then off by a fraction of a bfloat16 ulp of the
  params, not exactly the average of the stored params.
  """
  dt = jnp.dtype(p.dtype)
  if not jnp.issubdtype(dt, jnp.floating) or jnp.finfo(dt).bits >= 32:
    return p
  barrier = getattr(jax.lax, "optimization_barrier", None)  # jax >= 0.4.33
  if dt == jnp.bfloat16 or barrier is None:
    fi = jnp.finfo(dt)
    return jax.lax.reduce_precision(
      p.astype(jnp.float32), exponent_bits=fi.nexp, mantissa_bits=fi.nmant
    )
  return barrier(p)


# --- The transformation --------------------------------------------------------


def average_params(
  decay: float | Callable[[jax.Array], Any] = 0.999,
  *,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""Keeps an average of the params after each update; updates pass unchanged.

  Place it *last* in the optimizer's chain, or let
  :func:`optaxtra.with_average` place it: it averages the params each update
  makes, :math:`p_t = \text{params} + \text{updates}` (exactly what
  :func:`optax.apply_updates` computes, in the params' dtype), into

  .. math::

    a_0 = \text{params at init}, \qquad
    a_t = d_t\, a_{t-1} + (1 - d_t)\, p_t, \qquad
    d_t = \text{decay}(\text{count}) \text{ or } \text{decay},

  where ``count`` is the number of updates before this one (0 for the first),
  as for every Optax schedule. Evaluate or save the average with
  :func:`optaxtra.averaged_params`; training itself is unchanged.

  One formula covers the usual averages:

  * ``decay=d``: ``tf.train.ExponentialMovingAverage(d)``, whose shadow
    variables start at the variables' initial values and move by
    ``shadow -= (1 - d) * (shadow - value)`` after each step;
  * ``decay=optaxtra.ema_warmup(d)``: the same with ``num_updates`` (the
    decay ``min(d, (1 + n) / (10 + n))``);
  * ``decay=optaxtra.ema_from_first_update(d)``: PyTorch's
    ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))`` and Keras's
    ``use_ema=True, ema_momentum=d``, whose average starts at the params after
    the first update. (Keras's ``ema_overwrite_frequency=k`` also replaces
    the model's weights by the average after every ``k``-th step, which
    changes the training: do it in the loop, ``params =
    optaxtra.averaged_params(state, params)`` when ``step % k == 0``.)
  * ``decay=optaxtra.polyak()``: the uniform average of the params after each
    update, PyTorch's ``AveragedModel(model)`` (stochastic weight averaging).

  It is computed as PyTorch's ``lerp`` is, :math:`a + (1 - d)(p - a)` for
  :math:`d > 1/2` and :math:`p - d\,(p - a)` otherwise, so that ``d = 0``
  gives ``p`` exactly, with ``d`` rounded to the average's precision and
  ``1 - d`` taken from the rounded value, as TensorFlow and Keras do (and as
  a float32 ``decay`` from :func:`optax.inject_hyperparams` must be): for
  ``decay=0.999`` in float32, ``1 - d`` is ``0.00099998713``, where PyTorch,
  rounding ``1 - 0.999`` computed in double precision, uses ``0.001``.

  Precision: by default the average of a bfloat16 or float16 param is kept in
  float32 (a float32 or float64 param's in its own dtype): in bfloat16 (8
  significant bits) ``0.999 * a + 0.001 * p`` rounds back to ``a`` unless
  ``p`` is far from it, so a bfloat16 average barely moves. A narrower
  ``dtype`` saves memory at that cost.

  Args:
    decay: the decay ``d_t`` in [0, 1): a float, values by parameter path
      (:func:`optaxtra.by_path`; the state's ``decay`` is then a dict by
      rule), or a schedule ``count -> d`` (such as
      :func:`optaxtra.ema_warmup`), whose values must be real scalars in
      [0, 1) (checked at init and at every step whose value is concrete; a
      traced value outside [0, 1) becomes NaN, in the average and in the
      state, where :func:`optaxtra.inspect` shows it). 1 would never
      move the average; so would ``0.99999999``, which is 1.0 in float32,
      and is refused.
    mask: which parameters to average: a tree of bools with the params'
      structure (or a prefix of it), or a function params -> such a tree, as
      :func:`optaxtra.masks.path_mask` returns. None averages every parameter.
      The others (integer counters, batch statistics kept in the params) are
      not stored: :func:`optaxtra.averaged_params` takes them from the params.
      An integer or boolean parameter inside the mask raises ``TypeError`` at
      init.
    dtype: the dtype of the average; None for the params' dtype but at least
      float32 (complex params get a complex average).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.AverageParamsState`; its ``update`` needs the params and
    raises ``ValueError`` without them. Each average lives where its param
    lives (the same sharding, under :func:`jax.jit` too) and an update moves
    no data between devices. With a mask, the state holds
    :class:`optax.MaskedNode` for the leaves left out: give
    :func:`optax.tree_map_params` ``is_leaf=lambda x: isinstance(x,
    optax.MaskedNode)``, as for :func:`optax.masked`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optax.chain(optax.sgd(0.5), optaxtra.average_params(0.9))
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([2.0, 2.0])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> params["w"]  # the params after the update: p_1 = [0, 1]
    Array([0., 1.], dtype=float32)
    >>> optaxtra.averaged_params(state, params)["w"]  # 0.9 * [1, 2] + 0.1 * p_1
    Array([0.9, 1.9], dtype=float32)
    >>> optaxtra.inspect(state)["average_decay"]
    Array(0.9, dtype=float32)

  References:
    Polyak & Juditsky, `Acceleration of Stochastic Approximation by Averaging
    <https://doi.org/10.1137/0330046>`_, SIAM J. Control Optim., 1992.

    Izmailov et al., `Averaging Weights Leads to Wider Optima and Better
    Generalization <https://arxiv.org/abs/1803.05407>`_, UAI 2018.
  """
  # The one resolver: a number is checked now, in the precision it is used
  # in (0.99999999 is 1.0 in float32, where the average would never move); a
  # schedule's values at every step (traced ones out of range become NaN).
  hdecay = _hyper.resolve_by_path(
    _FN,
    "decay",
    decay,
    low=0.0,
    high=1.0,
    fix="It is the weight of the old average, e.g. 0.999; 1 never moves it.",
  )
  dtype = canonical_float_dtype(_FN, "dtype", dtype, complex_ok=True)
  fdt = _checks.default_float()
  keys = [label[len("decay") :] for label in hdecay.labels]

  def decay_at(count: jax.Array) -> list[Any]:
    """``d`` by rule at ``count``: a number as given (rounded where it is
    used), or the checked value of a schedule or a traced value."""
    return [h.value if h.constant is not None else h(count) for h in hdecay.hypers]

  def record(ds: list[Any]) -> Any:
    out = [jnp.asarray(d).astype(fdt) for d in ds]
    return dict(zip(keys, out, strict=True)) if hdecay.by_path else out[0]

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    d = decay_at(count)
    leaves, treedef = jax.tree.flatten(params)
    # optax.tree_map_params calls init with a leafless placeholder: the
    # average is then that placeholder, which marks it as params-shaped.
    if mask is not None and leaves:
      flags = resolve_mask(_FN, mask, params)
    else:
      flags = [True] * len(leaves)
    # Params from an enclosing optax.masked hold MaskedNodes, which the
    # average keeps.
    paths = _paths.paths(params)
    hdecay.assign(paths)  # a by_path's rules checked here
    average = treedef.unflatten(
      [
        _initial(path, p, dtype) if f else optax.MaskedNode()
        for path, p, f in zip(paths, leaves, flags, strict=True)
      ]
    )
    return AverageParamsState(count, record(d), average)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        f"{_FN} needs the params, since it averages params + updates: call "
        "tx.update(grads, state, params)."
      )
    _checks.check_state(_FN, state, AverageParamsState)
    _checks.check_updates_match(_FN, updates, params, "params")
    d = decay_at(state.count)
    # Matched by path, never by position: params whose names differ from the
    # ones init saw are refused by name, even where the shapes agree.
    pairs = _paths.match(
      _FN, params, state.average, a_is="the params", b_is="the state's average"
    )
    u_entries, _ = _paths.walk(updates)
    a_entries, treedef = _paths.walk(state.average)
    consts: dict[Any, tuple[jax.Array, jax.Array]] = {}
    live = [p.path for p, a in pairs if not (p.masked or a.masked)]
    rule = dict(zip(live, hdecay.assign(live), strict=True))

    def constants(rdt, i):  # once per dtype and rule, not per leaf
      if (rdt, i) not in consts:
        # d rounded to the average's precision, and 1 - d from that (exact
        # for d >= 1/2): the same numbers whether d is a float, a float32
        # array from optax.inject_hyperparams or a schedule's value, as
        # TensorFlow and Keras compute them.
        dc = jnp.asarray(d[i], rdt)
        consts[(rdt, i)] = (dc, 1 - dc)
      return consts[(rdt, i)]

    def leaf(path, a, p, u):
      if jnp.shape(a) != jnp.shape(p):
        raise ValueError(
          f"{_FN}: the average of {quote(path)} has shape {jnp.shape(a)} but the "
          f"parameter has shape {jnp.shape(p)}; init the optimizer on these params."
        )
      udt = jnp.result_type(u)
      if not jnp.issubdtype(udt, jnp.inexact):
        # Leaves outside the mask may have any updates (integer counters).
        raise TypeError(
          f"{_FN}: the update for {quote(path)} has dtype {udt}; an averaged "
          "parameter needs floating updates. Leave integer leaves out of the "
          "average with mask=..."
        )
      p = jnp.asarray(p)
      p_new = jnp.asarray(p + u).astype(p.dtype)  # as optax.apply_updates does
      cdt = jnp.result_type(jnp.float32, a.dtype, p_new.dtype)
      dc, wc = constants(real_dtype(cdt), rule[path])
      ac, pc = a.astype(cdt), _stored(p_new).astype(cdt)
      diff = pc - ac
      out = jnp.where(wc < 0.5, ac + wc * diff, pc - dc * diff)
      return out.astype(a.dtype)

    new = [
      None if a.masked or p.masked else leaf(p.path, a.value, p.value, u.value)
      for (p, a), u in zip(pairs, u_entries, strict=True)
    ]
    # Rebuilt from the average's own entries: Flax boxes around it are kept.
    average = _paths.rebuild(a_entries, treedef, new)
    return updates, AverageParamsState(safe_increment(state.count), record(d), average)

  return optax.GradientTransformation(init_fn, update_fn)


# --- Reading the average back ---------------------------------------------------


def with_average(
  inner: optax.GradientTransformation,
  decay: float | Callable[[jax.Array], Any] = 0.999,
  *,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``inner``, keeping an average of the params it makes: cannot be misplaced.

  The same as ``optax.chain(inner, optaxtra.average_params(decay, mask=mask,
  dtype=dtype))``, the average placed after every stage of ``inner``, where it
  must be: an ``average_params`` placed earlier in a chain would average the
  params plus raw gradients, or plus an update not yet scaled by the learning
  rate, and nothing could tell. Read the average with
  :func:`optaxtra.averaged_params`; :func:`optaxtra.describe` shows which
  parameters it covers.

  Args:
    inner: the optimizer, e.g. ``optaxtra.adamw(1e-3)``.
    decay: as for :func:`optaxtra.average_params`.
    mask: as for :func:`optaxtra.average_params`.
    dtype: as for :func:`optaxtra.average_params`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is the
    chain's ``(inner_state, AverageParamsState)``: checkpoints of the chain
    written out by hand restore into it, and extra arguments (``value=``)
    reach ``inner``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optaxtra.with_average(optax.sgd(0.5), 0.9)
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([2.0, 2.0])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> optaxtra.averaged_params(state, params)["w"]  # 0.9 * [1, 2] + 0.1 * [0, 1]
    Array([0.9, 1.9], dtype=float32)
  """
  if not isinstance(inner, optax.GradientTransformation):
    hint = " (a function: call it, e.g. optax.adam(1e-3))" if callable(inner) else ""
    raise TypeError(
      "with_average: inner must be an optax.GradientTransformation, got "
      f"{inner!r}{hint}."
    )
  return optax.chain(inner, average_params(decay, mask=mask, dtype=dtype))
