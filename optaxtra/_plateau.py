"""A scale that drops when a monitored value stops improving (PyTorch's
``ReduceLROnPlateau``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core.dtypes import compute_dtype
from optaxtra._core.numerics import safe_increment
from optaxtra._introspect.declare import inspectable

_FN = "reduce_on_plateau"
_INT32_MAX = 2**31 - 1


@inspectable(
  values={
    "count": "count",
    "scale": "plateau_scale",
    "next_scale": "plateau_next_scale",
    "best": "plateau_best",
    "num_bad_epochs": "plateau_bad_epochs",
    "cooldown_counter": "plateau_cooldown",
  }
)
class ReduceOnPlateauState(NamedTuple):
  """State of :func:`optaxtra.reduce_on_plateau`.

  Every field is a scalar of a fixed dtype: int32 counters, floats of the
  default float dtype (float32; float64 under ``jax_enable_x64``).
  :func:`optaxtra.inspect` reports the names in brackets.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1)
      [``count``].
    scale: the scale the most recent update multiplied by; 1 before the
      first update, the scale the first update will use [``plateau_scale``].
    next_scale: the scale the next update will multiply by, as decided from
      the values given so far: PyTorch's learning rate (relative to the
      initial one) after ``scheduler.step(metric)`` [``plateau_next_scale``].
    best: the best value seen by the plateau logic, PyTorch's ``best``: inf
      (``mode="min"``) or -inf (``mode="max"``) until the first one
      [``plateau_best``].
    num_bad_epochs: int32, PyTorch's ``num_bad_epochs``: plateau steps since
      ``best`` last improved, not counting those in cooldown
      [``plateau_bad_epochs``].
    cooldown_counter: int32, PyTorch's ``cooldown_counter``: plateau steps of
      cooldown left [``plateau_cooldown``].
    value_sum: the sum of the values given since the last plateau step.
    value_count: int32 number of values in ``value_sum``, from 0 to
      ``accumulation_steps - 1``.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  scale: jax.Array
  next_scale: jax.Array
  best: jax.Array
  num_bad_epochs: jax.Array
  cooldown_counter: jax.Array
  value_sum: jax.Array
  value_count: jax.Array


def _value(value: Any, dtype: Any) -> jax.Array:
  """The monitored value as a scalar of ``dtype``, or a clear error."""
  if value is None:
    raise TypeError(
      f"{_FN}: update needs the monitored value (the loss): call "
      "tx.update(updates, state, params, value=loss). In optax.chain pass "
      "value=loss to the chain's update: it reaches every stage."
    )
  v = _checks.loss_value(_FN, value)
  if v.ndim != 0:
    raise ValueError(
      f"{_FN}: value must be a scalar (the loss), got shape {v.shape}. Pass "
      "the mean of per-example losses, as the gradients are of it."
    )
  return v.astype(dtype)


def reduce_on_plateau(
  factor: float = 0.1,
  patience: int = 10,
  *,
  mode: str = "min",
  threshold: float = 1e-4,
  threshold_mode: str = "rel",
  cooldown: int = 0,
  min_scale: float = 0.0,
  eps: float = 1e-8,
  accumulation_steps: int = 1,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales updates by a factor that drops when a monitored value plateaus.

  PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau`` as a
  transformation: it multiplies the updates by its own scale, 1 at first,
  multiplied by ``factor`` (never below ``min_scale``) when the value given
  with the updates, ``tx.update(updates, state, params, value=loss)``, has
  not improved for more than ``patience`` plateau steps. Place it after the
  learning-rate stage (or after an optimizer such as :func:`optax.adam`): the
  effective learning rate is then the learning rate times the scale, as
  PyTorch's is its initial learning rate times the product of the reductions.

  Every ``accumulation_steps`` updates, the mean of the values given with them
  goes through one *plateau step*, PyTorch's ``scheduler.step(mean)``:

  * it is *better* when, with ``mode="min"``, it is below
    ``best - threshold * |best|`` (``threshold_mode="rel"``) or
    ``best - threshold`` (``"abs"``); with ``mode="max"``, above
    ``best + threshold * |best|`` or ``best + threshold``. A better value
    becomes ``best`` and sets ``num_bad_epochs`` to 0; any other value,
    NaN included (NaN compares false), adds 1 to ``num_bad_epochs``;
  * in cooldown (``cooldown_counter > 0``) the counter drops by 1 and
    ``num_bad_epochs`` is set to 0;
  * when ``num_bad_epochs > patience``, the scale becomes
    ``max(scale * factor, min_scale)``, unless that lowers it by ``eps`` or
    less (then it stays), and in either case ``cooldown_counter`` becomes
    ``cooldown`` and ``num_bad_epochs`` 0.

  With ``accumulation_steps=1`` a plateau step is taken at every update, as
  ``scheduler.step(loss)`` after every ``optimizer.step()``; with
  ``accumulation_steps`` the number of steps per epoch it is the per-epoch
  scheduler, fed the epoch's mean loss.

  Timing, as in a PyTorch loop (``loss.backward(); optimizer.step();
  scheduler.step(loss)``): the ``k``-th update (``k = 1, 2, ...``) multiplies
  by the scale decided from the values of updates ``1 .. k - 1``; the value
  given with update ``k`` changes the scale from update ``k + 1`` on, never
  that of update ``k``. With ``accumulation_steps=A`` a reduction decided at
  update ``e * A`` (the end of epoch ``e``) applies from the first update of
  epoch ``e + 1``. After update ``k`` the state's ``scale`` is the scale
  update ``k`` used and ``next_scale`` the one update ``k + 1`` will use.

  One difference from PyTorch: the relative threshold uses ``|best|``. PyTorch
  tests ``current < best * (1 - threshold)`` (``mode="min"``), which for a
  negative ``best`` lies *above* ``best``: a loss stuck at -1.0 improves on
  -1.0 at every step and the learning rate is never reduced (pytorch issue
  #47513; likewise ``mode="max"`` for a negative metric). Here a flat negative
  value is a plateau, as a flat positive one is in both. For ``best >= 0``,
  and with ``threshold_mode="abs"``, the two are the same; the arithmetic is
  PyTorch's, in the state's float dtype (bit for bit under
  ``jax_enable_x64``).

  Args:
    factor: what a reduction multiplies the scale by, in [0, 1).
    patience: the number of plateau steps without improvement tolerated, an
      int >= 0; the next one reduces the scale. With 0, every plateau step
      that is not better (after the first) reduces it.
    mode: ``"min"`` (the value should decrease, e.g. a loss) or ``"max"``
      (it should increase, e.g. an accuracy).
    threshold: how much better than ``best`` a value must be to count as
      better: a share of ``|best|`` in [0, 1) with ``threshold_mode="rel"``,
      an amount >= 0 with ``"abs"``.
    threshold_mode: ``"rel"`` or ``"abs"``, as above.
    cooldown: the number of plateau steps after a reduction during which bad
      ones are not counted, an int >= 0.
    min_scale: the scale never goes below it, in [0, 1]; PyTorch's
      ``min_lr`` divided by the initial learning rate.
    eps: a reduction that lowers the scale by ``eps`` or less is skipped;
      >= 0. PyTorch applies it to the learning rate itself, so its ``eps`` is
      this one times the initial learning rate.
    accumulation_steps: the number of updates whose values are averaged into
      one plateau step, an int >= 1.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`optaxtra.ReduceOnPlateauState`. Its ``update`` needs
    ``value=...``, a real scalar (concrete or traced; NaN and infinities are
    taken as PyTorch takes them), and raises ``TypeError`` without it.
    :func:`optaxtra.inspect` reports ``plateau_scale`` (the scale the last
    update used), ``plateau_next_scale``, ``plateau_best``,
    ``plateau_bad_epochs`` and ``plateau_cooldown``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optax.chain(
    ...     optax.sgd(0.1), optaxtra.reduce_on_plateau(factor=0.5, patience=1))
    >>> state = tx.init(jnp.zeros(2))
    >>> for loss in [3.0, 2.0, 2.0, 2.0, 2.0]:
    ...   updates, state = tx.update(jnp.ones(2), state, value=loss)
    ...   print(updates[0], optaxtra.inspect(state)["plateau_next_scale"])
    -0.1 1.0
    -0.1 1.0
    -0.1 1.0
    -0.1 0.5
    -0.05 0.5

    The third 2.0 is the second without improvement (more than
    ``patience=1``): it halves the scale, which the next update uses.

  References:
    PyTorch, ``torch.optim.lr_scheduler.ReduceLROnPlateau``; its relative
    threshold with negative metrics: https://github.com/pytorch/pytorch/issues/47513.
  """
  _hyper.real(
    _FN,
    "factor",
    factor,
    low=0.0,
    high=1.0,
    fix="It multiplies the scale at each reduction.",
  )
  _hyper.integer_or_traced(_FN, "patience", patience, low=0)
  _hyper.choice(_FN, "mode", mode, ("min", "max"))
  _hyper.choice(_FN, "threshold_mode", threshold_mode, ("rel", "abs"))
  if threshold_mode == "rel":
    _hyper.real(
      _FN,
      "threshold",
      threshold,
      low=0.0,
      high=1.0,
      fix="With threshold_mode='rel' it is a share of |best|; for an amount "
      "use threshold_mode='abs'.",
    )
  else:
    _hyper.real(_FN, "threshold", threshold, low=0.0, high=None)
  _hyper.integer_or_traced(_FN, "cooldown", cooldown, low=0)
  _hyper.real(
    _FN,
    "min_scale",
    min_scale,
    low=0.0,
    high=1.0,
    high_open=False,
    fix="The scale starts at 1 and only decreases; for PyTorch's min_lr pass "
    "min_lr / initial learning rate.",
  )
  _hyper.real(_FN, "eps", eps, low=0.0, high=None)
  _hyper.integer_or_traced(_FN, "accumulation_steps", accumulation_steps, low=1)
  fdt = _checks.default_float()
  minimize = mode == "min"

  def is_better(current: jax.Array, best: jax.Array) -> jax.Array:
    if threshold_mode == "abs":
      return current < best - threshold if minimize else current > best + threshold
    # best -/+ threshold * |best|, written as PyTorch's product (the same bits
    # for best >= 0), so that an infinite best gives no inf - inf.
    below, above = 1 - threshold, 1 + threshold
    if minimize:
      return current < best * jnp.where(best >= 0, below, above).astype(fdt)
    return current > best * jnp.where(best >= 0, above, below).astype(fdt)

  def plateau_step(state: ReduceOnPlateauState, current: jax.Array):
    better = is_better(current, state.best)
    best = jnp.where(better, current, state.best)
    bad = jnp.where(better, 0, safe_increment(state.num_bad_epochs))
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(
      in_cooldown, state.cooldown_counter - 1, state.cooldown_counter
    )
    bad = jnp.where(in_cooldown, 0, bad)
    reduce = bad > patience
    old = state.next_scale
    new = jnp.maximum(old * jnp.asarray(factor, fdt), jnp.asarray(min_scale, fdt))
    next_scale = jnp.where(reduce & (old - new > jnp.asarray(eps, fdt)), new, old)
    cooldown_counter = jnp.where(
      reduce, jnp.asarray(cooldown, jnp.int32), cooldown_counter
    )
    bad = jnp.where(reduce, 0, bad)
    return (
      next_scale.astype(fdt),
      best.astype(fdt),
      bad.astype(jnp.int32),
      cooldown_counter.astype(jnp.int32),
    )

  def init_fn(params):
    del params
    worst = jnp.inf if minimize else -jnp.inf
    # One array per leaf: two leaves sharing a buffer cannot both be donated.
    return ReduceOnPlateauState(
      count=jnp.zeros([], jnp.int32),
      scale=jnp.ones([], fdt),
      next_scale=jnp.ones([], fdt),
      best=jnp.full([], worst, fdt),
      num_bad_epochs=jnp.zeros([], jnp.int32),
      cooldown_counter=jnp.zeros([], jnp.int32),
      value_sum=jnp.zeros([], fdt),
      value_count=jnp.zeros([], jnp.int32),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    _checks.check_state(_FN, state, ReduceOnPlateauState)
    _checks.check_float_updates(_FN, updates, complex_ok=True)
    current = _value(value, fdt)
    applied = state.next_scale

    def leaf(g):
      dt = compute_dtype(g, applied)
      return (g.astype(dt) * applied.astype(dt)).astype(g.dtype)

    total = state.value_sum + current
    n = state.value_count + 1
    ready = n >= accumulation_steps
    mean = total / n.astype(fdt)
    stepped = plateau_step(state, mean)
    kept = (state.next_scale, state.best, state.num_bad_epochs, state.cooldown_counter)
    next_scale, best, bad, cooldown_counter = (
      jnp.where(ready, s, k) for s, k in zip(stepped, kept, strict=True)
    )
    new_state = ReduceOnPlateauState(
      count=safe_increment(state.count),
      scale=applied,
      next_scale=next_scale,
      best=best,
      num_bad_epochs=bad,
      cooldown_counter=cooldown_counter,
      value_sum=jnp.where(ready, jnp.zeros([], fdt), total),
      value_count=jnp.where(ready, 0, n).astype(jnp.int32),
    )
    return jax.tree.map(leaf, updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
