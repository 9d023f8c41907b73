"""Learning-rate stages whose state records the value each update used."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper
from optaxtra._core import paths as _paths
from optaxtra._core.dtypes import compute_dtype
from optaxtra._core.numerics import safe_increment
from optaxtra._introspect.declare import inspectable

# A hyperparameter: a float or array, or a schedule of the int32 step count.
ScalarOrSchedule = ArrayLike | optax.Schedule


@inspectable(values=["count", "step_size"])
class ScaleByScheduleState(NamedTuple):
  """State of :func:`optaxtra.scale_by_schedule`.

  Named, by Optax's convention, after the function whose state it is, like
  :class:`optax.ScaleByScheduleState`, but not that class: it also records the
  step size, and ``isinstance`` tells the two apart.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    step_size: the step size the most recent update multiplied by; before the
      first update, the one the first update will use.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  step_size: jax.Array


@inspectable(
  values={
    "count": "count",
    "learning_rate": "learning_rate",
    "scale": "learning_rate_scale",
  }
)
class ScaleByLearningRateState(NamedTuple):
  """State of :func:`optaxtra.scale_by_learning_rate`.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    learning_rate: the (positive) learning rate the most recent update used,
      ``scale * learning_rate(t)``; before the first update, the one the first
      update will use.
    scale: float32 multiplier of the learning rate, 1.0 at init; set it with
      :func:`optaxtra.set_learning_rate_scale` (no recompilation).
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  learning_rate: jax.Array
  scale: jax.Array


def _scalar(fn: str, name: str, value: ArrayLike) -> jax.Array:
  """A schedule's value as a scalar array in its own floating precision."""
  v = _checks.schedule_output(fn, name, value)
  if not jnp.issubdtype(v.dtype, jnp.floating):
    v = v.astype(_checks.default_float())
  return v


def _scale(updates, step_size: jax.Array):
  def leaf(g):
    dt = compute_dtype(g, step_size)
    return (g.astype(dt) * step_size.astype(dt)).astype(g.dtype)

  return jax.tree.map(leaf, updates)


def _per_leaf(updates: Any, factors: list[jax.Array], index: list[int]) -> Any:
  """Each leaf of ``updates`` times its group's factor; ``index`` has one
  entry per parameter the stage sees (``MaskedNode`` entries, hidden by an
  enclosing ``optax.masked`` or partition, have none and stay as they are)."""
  entries, treedef = _paths.walk(updates)

  def leaf(g, f):
    dt = compute_dtype(g, f)
    return (g.astype(dt) * f.astype(dt)).astype(g.dtype)

  rules = iter(index)
  out = [None if e.masked else leaf(e.value, factors[next(rules)]) for e in entries]
  return _paths.rebuild(entries, treedef, out)


def effective_learning_rate(
  state: Any, *, unknown_factor: bool = False
) -> dict[str, Any]:
  """The ``derive`` of an optimizer's state that records a learning rate and
  a bias-correction factor: Adam's alpha_t, ``learning_rate * factor``.

  A factor of None means none is applied (the effective rate is the learning
  rate), or, with ``unknown_factor``, that it differs by group (then nothing
  is derived). A learning rate by group (a dict) is left to
  :func:`optaxtra.inspect`, which pairs each group's rate with the factor.
  """
  bc, lr = state.bias_correction, state.learning_rate
  if isinstance(lr, dict) or (bc is None and unknown_factor):
    return {}
  return {"effective_learning_rate": lr if bc is None else lr * bc}


class LearningRate:
  """The learning-rate kernel: values by step (and by path), a scale, a sign.

  Shared by :func:`scale_by_learning_rate`, :func:`scale_by_schedule` and the
  ready-made optimizers, so that they check and compute the same way. For a
  value by path (:func:`optaxtra.by_path`) the recorded value and the scale
  are dicts keyed by rule (``"[<pattern>]"``, ``"[default]"``), and each leaf
  is multiplied by its rule's value.
  """

  def __init__(
    self,
    fn: str,
    value: Any,
    *,
    name: str = "learning_rate",
    sign: float = -1.0,
    low: float | None = 0.0,
    fix: str = "To follow the gradient upwards use flip_sign=False instead.",
  ):
    # A learning rate held in bfloat16 (optax.inject_hyperparams with narrow
    # params) is only rounded, never 0 or 1 where it should not be: allowed.
    self.value = _hyper.resolve_by_path(
      fn, name, value, low=low, fix=fix, min_float32=False
    )
    self.sign = sign
    self.keys = [label[len(name) :] for label in self.value.labels]

  def record(self, vals: list[jax.Array]) -> Any:
    """The values as the state holds them: a scalar, or a dict by rule."""
    fdt = _checks.default_float()
    # A copy: under inject_hyperparams a value may be the hyperparams' own
    # array, and two state leaves sharing one buffer cannot both be donated.
    rec = [jnp.array(v, fdt, copy=True) for v in vals]
    return dict(zip(self.keys, rec, strict=True)) if self.value.by_path else rec[0]

  def init_value(self, params: Any) -> Any:
    """The recorded value before the first update (a by_path checked here)."""
    self.value.assign(_paths.paths(params))
    return self.record(self.value.values(jnp.zeros([], jnp.int32)))

  def init_scale(self) -> Any:
    ones = [jnp.ones([], jnp.float32) for _ in self.keys]
    return dict(zip(self.keys, ones, strict=True)) if self.value.by_path else ones[0]

  def apply(self, updates: Any, count: Any, scale: Any = None) -> tuple[Any, Any]:
    """``updates`` times ``sign * scale * value(count)``, and the value used."""
    vals = self.value.values(count)
    if scale is not None:
      # By key, never by position: JAX sorts a dict's keys.
      scales = [scale[k] for k in self.keys] if self.value.by_path else [scale]
      # 1.0 * x is x to the bit: with the scale at 1 nothing changes.
      vals = [v * s.astype(v.dtype) for v, s in zip(vals, scales, strict=True)]
    factors = vals if self.sign == 1 else [-v for v in vals]
    if self.value.by_path:
      index = self.value.assign(_paths.paths(updates))  # what the stage sees
      updates = _per_leaf(updates, factors, index)
    else:
      updates = _scale(updates, factors[0])
    return updates, self.record([v.astype(_checks.default_float()) for v in vals])


def _stage(
  fn: str, lr: LearningRate, state_cls: type, *, scaled: bool = False
) -> optax.GradientTransformation:
  """A stage that applies ``lr`` and records the value it used;
  ``scaled`` keeps a learning-rate scale in the state."""

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    recorded = lr.init_value(params)
    if scaled:
      return state_cls(count, recorded, lr.init_scale())
    return state_cls(count, recorded)

  def update_fn(updates, state, params=None):
    del params
    _checks.check_state(fn, state, state_cls)
    _checks.check_float_updates(fn, updates, complex_ok=True)
    scale = state.scale if scaled else None
    updates, used = lr.apply(updates, state.count, scale)
    extra = (state.scale,) if scaled else ()
    return updates, state_cls(safe_increment(state.count), used, *extra)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_schedule(
  step_size_fn: optax.Schedule,
) -> optax.GradientTransformation:
  """Scales updates by a schedule's value at the update count.

  As :func:`optax.scale_by_schedule`: the ``n``-th update (counting from 0) is
  multiplied by ``step_size_fn(n)``. The state also records that value as
  ``step_size``, so that the step size the last update used can be read back
  (see :func:`optaxtra.inspect`).

  Args:
    step_size_fn: a function from the int32 update count to a scalar.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.ScaleByScheduleState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optaxtra
    >>> tx = optaxtra.scale_by_schedule(lambda n: 0.5**n)
    >>> state = tx.init(jnp.zeros(2))
    >>> for _ in range(3):
    ...   updates, state = tx.update(jnp.ones(2), state)
    >>> updates, state.step_size  # the third update used 0.5**2
    (Array([0.25, 0.25], dtype=float32), Array(0.25, dtype=float32))

  References:
    Optax, :func:`optax.scale_by_schedule`.
  """
  if not callable(step_size_fn):
    raise TypeError(
      "scale_by_schedule: step_size_fn must be a function of the step count, "
      f"got {step_size_fn!r}. For a constant use optax.scale or "
      "optaxtra.scale_by_learning_rate."
    )
  fn = "scale_by_schedule"
  lr = LearningRate(fn, step_size_fn, name="step_size_fn", sign=1.0, low=None, fix="")
  return _stage(fn, lr, ScaleByScheduleState)


def scale_by_learning_rate(
  learning_rate: ScalarOrSchedule,
  *,
  flip_sign: bool = True,
) -> optax.GradientTransformation:
  """Scales updates by the (negative) learning rate, a constant or a schedule.

  As :func:`optax.scale_by_learning_rate`: the ``n``-th update (counting from 0)
  is multiplied by ``-scale * learning_rate(n)`` (``+`` with
  ``flip_sign=False``), where ``scale`` is a float32 in the state, 1.0 unless
  set with :func:`optaxtra.set_learning_rate_scale`, which changes the learning
  rate mid-run without recompiling the step. The state records the learning
  rate the last update used, positive and scale included, as
  ``learning_rate``; before the first update it holds the one the first update
  will use. A float learning rate works under :func:`optax.inject_hyperparams`,
  traced or not.

  Args:
    learning_rate: a non-negative float, or a schedule from the int32 update
      count to a non-negative scalar.
    flip_sign: multiply by ``-learning_rate`` (descent); False multiplies by
      ``+learning_rate``.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.ScaleByLearningRateState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optaxtra
    >>> tx = optaxtra.scale_by_learning_rate(lambda n: 0.1 / (n + 1))
    >>> state = tx.init(jnp.zeros(2))
    >>> state.learning_rate  # what the first update will use
    Array(0.1, dtype=float32)
    >>> updates, state = tx.update(jnp.ones(2), state)
    >>> updates, state.learning_rate  # what the first update used
    (Array([-0.1, -0.1], dtype=float32), Array(0.1, dtype=float32))
    >>> updates, state = tx.update(jnp.ones(2), state)
    >>> updates, state.learning_rate
    (Array([-0.05, -0.05], dtype=float32), Array(0.05, dtype=float32))

  References:
    Optax, :func:`optax.scale_by_learning_rate`.
  """
  fn = "scale_by_learning_rate"
  _checks.check_flag(fn, "flip_sign", flip_sign)
  sign = -1.0 if flip_sign else 1.0
  return _stage(
    fn,
    LearningRate(fn, learning_rate, sign=sign),
    ScaleByLearningRateState,
    scaled=True,
  )
