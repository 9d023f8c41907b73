"""Skipping the updates of bad steps: :func:`skip_bad_steps`."""

from __future__ import annotations

import inspect as _pyinspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core import hyper
from optaxtra._core.numerics import safe_increment
from optaxtra._introspect.declare import inspectable
from optaxtra._record_norm import _global_norm, _norm_dtype

_FN = "skip_bad_steps"

#: ``last_skip_reason`` of an update that was applied.
APPLIED = 0
#: ``last_skip_reason`` of an update skipped for a non-finite gradient or value.
NON_FINITE = 1
#: ``last_skip_reason`` of an update skipped for a gradient-norm spike.
SPIKE = 2

#: Accepted steps in the statistics before the spike test starts.
WARMUP = 10
#: The floor of the standard deviation of the log norm (about a 1% spread).
MIN_LOG_STD = 0.01


@inspectable(
  values=[
    "skipped_steps",
    "consecutive_skipped_steps",
    "last_skip_reason",
    "gave_up",
  ],
  trees=["log_norms"],
  # A skipped step leaves the inner counts as they are while stages outside
  # the wrapper advance: they count applied updates, apart.
  counts_apart=["inner_state"],
)
class SkipBadStepsState(NamedTuple):
  """State of :func:`optaxtra.skip_bad_steps`.

  :func:`optaxtra.inspect` reports the four counters under their own names,
  and the inner state's values as it reports them without the wrapper
  (``count`` is the inner optimizer's: the number of updates applied).

  Attributes:
    inner_state: the state of the wrapped transformation; a skipped step
      leaves it bit for bit as it was.
    skipped_steps: int32 number of updates skipped since ``init``
      (saturates at 2**31 - 1).
    consecutive_skipped_steps: int32 number of updates skipped in a row up
      to the most recent one; 0 when the most recent update was applied.
    last_skip_reason: int32 code of why the most recent update was skipped:
      0 it was applied, 1 a gradient entry or the value was not finite, 2 the
      gradient norm was a spike.
    gave_up: bool, sticky: True once ``max_consecutive`` skips in a row were
      followed by one more bad step, which was applied; from then on every
      step is applied.
    log_norms: the ring buffer of the logarithms of the gradient norms of
      the last ``window`` accepted steps, in the params' real dtype (float32
      at least); None without ``spike_sigma``.
    num_norms: int32 number of entries of ``log_norms`` in use, from 0 to
      ``window``; None without ``spike_sigma``.
    next_norm: int32 position in ``log_norms`` the next accepted norm is
      written to; None without ``spike_sigma``.
  """

  inner_state: optax.OptState
  skipped_steps: jax.Array
  consecutive_skipped_steps: jax.Array
  last_skip_reason: jax.Array
  gave_up: jax.Array
  log_norms: jax.Array | None
  num_norms: jax.Array | None
  next_norm: jax.Array | None


def _inner_functions(inner: Any) -> tuple[Callable, Callable, bool]:
  """``(init, update, takes_extra_args)`` of the wrapped transformation."""
  if isinstance(inner, optax.MultiSteps):
    return inner.init, inner.update, True
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f"{_FN}: inner must be an optax.GradientTransformation (e.g. "
      f"optax.adam(1e-3)) or an optax.MultiSteps, got {inner!r}."
    )
  if isinstance(inner, optax.GradientTransformationExtraArgs):
    return inner.init, inner.update, True
  # A plain GradientTransformation whose update takes keyword arguments all the
  # same (MultiSteps(...).gradient_transformation()) is given them.
  try:
    parameters = _pyinspect.signature(inner.update).parameters.values()
  except (TypeError, ValueError):
    parameters = ()
  takes = any(p.kind is _pyinspect.Parameter.VAR_KEYWORD for p in parameters)
  return inner.init, inner.update, takes


def _all_finite(tree: Any) -> jax.Array:
  """Whether every entry of every leaf of ``tree`` is finite (a bool scalar).

  As ``isfinite(sum(x * 0))``: ``x * 0`` is 0 for a finite entry and NaN for
  an infinite or NaN one, so the sum is NaN exactly when an entry is not
  finite, and it never overflows. XLA keeps ``x * 0`` for floats (it would
  change NaN semantics to fold it), and a sum is one fused reduction, where
  ``all(isfinite(x))`` on CPU writes a boolean array and reduces it in
  several passes.
  """
  ok = jnp.ones([], bool)
  for x in jax.tree.leaves(tree):
    x = jnp.asarray(x)
    ok = ok & jnp.isfinite(jnp.sum(x * jnp.zeros([], x.dtype)))
  return ok


def _value_finite(value: Any) -> jax.Array:
  """Whether every entry of the monitored value is finite, or a clear error."""
  return jnp.all(jnp.isfinite(_checks.loss_value(_FN, value, complex_ok=True)))


def _spike_sigma(value: Any) -> Any:
  if value is None:
    return None
  checked = hyper.real(
    _FN,
    "spike_sigma",
    value,
    low=0.0,
    low_open=True,
    fix="It is how many standard deviations above its running mean the log "
    "gradient norm must be to count as a spike (e.g. 6.0); pass None for no "
    "spike test.",
  )
  return value if checked is None else checked  # a tracer: used as it is


def _log_stats(log_norms: jax.Array, num: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation (floored) of the first ``num`` entries."""
  dt = log_norms.dtype
  used = jnp.arange(log_norms.shape[0]) < num
  n = num.astype(dt)
  mean = jnp.sum(jnp.where(used, log_norms, 0)) / jnp.maximum(n, 1)
  dev = jnp.where(used, log_norms - mean, 0)
  var = jnp.sum(dev * dev) / jnp.maximum(n - 1, 1)
  return mean, jnp.maximum(jnp.sqrt(var), jnp.asarray(MIN_LOG_STD, dt))


def skip_bad_steps(
  inner: optax.GradientTransformation | optax.MultiSteps,
  *,
  spike_sigma: float | None = None,
  window: int = 100,
  max_consecutive: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Skips the updates of steps whose gradients or loss are bad.

  A step is *bad* when

  * any entry of the incoming gradients is NaN or infinite, or the ``value``
    given with them (the loss, optional) is; the gradients are checked as
    they come in, not as ``inner`` returns them, since a clipping optimizer
    turns an infinite gradient into a finite update; or
  * with ``spike_sigma``, the global L2 norm of the gradients is a spike:

    .. math::

      \log \|g_t\| > \mu + \sigma_{\text{spike}} \max(s, 0.01)

    where :math:`\mu` and :math:`s` are the mean and sample standard
    deviation of :math:`\log \|g\|` over the last ``window`` *accepted* steps
    (a ring buffer in the state). The test starts once ``min(window, 10)``
    steps are in the buffer.

  A bad step is skipped: the updates are all zeros, in the dtypes ``inner``
  gives them (the gradients'), and ``inner``'s state is returned bit for bit
  as it was, its ``count`` included, so schedules do not advance, and
  moments, averages (:func:`optaxtra.average_params`) and plateau counters
  (:func:`optaxtra.reduce_on_plateau`) are untouched. The choice is made with
  ``jnp.where`` on a traced flag: one compiled program for every step,
  working under :func:`jax.jit` and :func:`jax.lax.scan`, never recompiling.
  ``inner`` is computed on every step and its result dropped on a skipped one
  (under ``jax_debug_nans`` the NaN computed and dropped is reported).

  The cost: one more reduction over the gradients (two with
  ``spike_sigma``), and, on XLA's CPU backend, a copy of the moments that the
  inner update reads: XLA fuses the selection into the inner optimizer's
  elementwise kernels and recomputes the new moments in both the selected
  state and the update, so each donated moment is read by two kernels, one
  writing it in place. On the benchmark's CPU the step of a memory-bound
  optimizer took 1.5x to 3.6x as long (1e5 to 1e7 parameters), as it does
  under :func:`optax.apply_if_finite`, which chooses with ``lax.cond``
  (``benchmarks/RESULTS.md``).

  The statistic. Gradient norms are positive and vary by factors, not by
  amounts: over training they fall by orders of magnitude, and a bad batch
  multiplies them. So the test is on the logarithm, where a spike is a
  *ratio* to the recent typical norm, the same at every scale, and a steady
  exponential rise or fall (a straight line in the log) never triggers it:
  over a window, a linear trend's last value sits about 1.7 standard
  deviations above its mean. The norm of a skipped step never enters the
  statistics (a spike would otherwise widen them and hide the next one), nor
  does a zero norm (its logarithm is -inf). The warm-up is 10 accepted steps,
  not ``window``: the first steps of training are where spikes are most
  likely, and 10 samples already give a standard deviation to within about a
  quarter, which decides a thousandfold spike (7 in the log) as well as 100
  would. The floor of 0.01 on the standard deviation (a 1% spread) keeps a
  history of identical norms (a toy problem, a deterministic batch) from
  calling a rounding-size rise a spike. A legitimate level shift (the norm
  rising tenfold for good after a data or architecture change) is skipped
  step after step, since the statistics only learn from accepted steps: set
  ``max_consecutive`` to bound it.

  After ``max_consecutive`` skips in a row the wrapper gives up: the next bad
  step is applied (a NaN then reaches the params, where a NaN check or the
  loss curve sees it), ``gave_up`` is set in the state for good, and from
  then on every step is applied. A wrapper that kept skipping would stall
  the run silently (weights frozen while the loss looks fine); one that
  re-armed after an applied NaN would find NaN params, skip again and
  flicker; a run that needed that many skips in a row needs a person, and a
  sticky flag is one thing to alert on. To re-arm it, set the flag back:
  ``state._replace(gave_up=jnp.zeros([], bool))``. With
  ``max_consecutive=None`` (the default) it never gives up: watch
  ``consecutive_skipped_steps``.

  ``value`` and any other keyword arguments are passed on to ``inner`` when
  it takes them (an :class:`optax.GradientTransformationExtraArgs` such as
  :func:`optaxtra.reduce_on_plateau`, or an :class:`optax.MultiSteps`), so a
  skipped step's loss never reaches the plateau logic.

  Gradient accumulation: put the wrapper around :class:`optax.MultiSteps`,
  ``skip_bad_steps(optax.MultiSteps(inner, k))`` (or its
  ``.gradient_transformation()``). Each micro-batch is then a step of its
  own: a bad one is dropped (the accumulator and the mini-step counter stay
  as they were), and the update is made once ``k`` good ones are in, those
  before the bad one included. The other way
  round, ``optax.MultiSteps(skip_bad_steps(inner), k)``, the NaN enters the
  accumulator, so the whole accumulated step is skipped, and Optax's
  ``MultiSteps`` clears its accumulator by multiplying it by 0, which keeps
  the NaN: every later step is skipped too.

  The norm is the one :func:`optaxtra.record_norm` computes, by the same
  function, so with ``record_norm()`` first in ``inner`` both see the same
  gradients and, under :func:`jax.jit`, XLA computes the sum of squares once
  (its common-subexpression pass merges the two identical reductions; the
  benchmark counts them). With sharded params the checks and the norm are
  scalar all-reductions; nothing parameter-sized moves between devices.

  Compared with :func:`optax.apply_if_finite` (which checks the same
  gradients and keeps ``inner``'s state as it was on a skip): it does not
  look at the loss, has no spike test, and after ``max_consecutive_errors``
  it applies bad steps only while they come in a row, re-arming at the next
  finite one (its ``max_consecutive_errors`` is required). Levanter's (and
  Marin's) ``SkipStepConfig`` and OLMo-core's ``SkipStepOptimizer`` test the
  raw loss and gradient norm (mean plus 6 standard deviations over 128
  steps, after a warm-up of 64) and record skipped steps in their
  statistics. In the versions we read, Levanter zeroes the update by
  multiplying it by 0 (which keeps a NaN), and one NaN in its window makes
  every later comparison false, so the next 128 steps are skipped (OLMo-core
  has since excluded non-finite values from its window).

  Args:
    inner: the transformation whose bad steps to skip: any
      :class:`optax.GradientTransformation`, or an :class:`optax.MultiSteps`.
    spike_sigma: how many standard deviations above its running mean the
      log gradient norm must be to make the step a spike, a positive finite
      number (6 is Levanter's and OLMo-core's choice); None (the default)
      tests finiteness only.
    window: how many accepted steps the statistics cover, an int >= 2; the
      state holds that many scalars. Used only with ``spike_sigma``.
    max_consecutive: how many bad steps in a row are skipped before the
      wrapper gives up and applies the next one, an int >= 1, or None never
      to give up.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose ``update`` is
    ``update(updates, state, params=None, *, value=None, **extra_args)`` and
    whose state is a :class:`optaxtra.SkipBadStepsState`.
    :func:`optaxtra.inspect` reports ``skipped_steps``,
    ``consecutive_skipped_steps``, ``last_skip_reason`` (0 applied, 1 not
    finite, 2 spike) and ``gave_up``, next to ``inner``'s own values.

  Raises:
    TypeError: ``inner`` is not a transformation, an argument is not a number
      of the right kind, or ``value`` is not a number.
    ValueError: an argument is out of range.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optaxtra.skip_bad_steps(optax.adam(0.1), max_consecutive=10)
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> bad = {"w": jnp.array([1.0, jnp.nan])}
    >>> updates, state = tx.update(bad, state, params)
    >>> updates["w"]
    Array([0., 0.], dtype=float32)
    >>> info = optaxtra.inspect(state)
    >>> info["count"], info["skipped_steps"], info["last_skip_reason"]
    (Array(0, dtype=int32), Array(1, dtype=int32), Array(1, dtype=int32))
    >>> good = {"w": jnp.array([1.0, -1.0])}
    >>> updates, state = tx.update(good, state, params, value=jnp.float32(0.5))
    >>> updates["w"]
    Array([-0.1...,  0.1...], dtype=float32)
    >>> int(optaxtra.inspect(state)["consecutive_skipped_steps"])
    0

  References:
    Optax, :func:`optax.apply_if_finite`
    (``optax/transforms/_conditionality.py``).

    Levanter, ``SkipStepConfig`` (``levanter/optim/skipstep.py``), and
    OLMo-core, ``SkipStepOptimizer``
    (``olmo_core/optim/skip_step_optimizer.py``).

    Chowdhery et al., `PaLM: Scaling Language Modeling with Pathways
    <https://arxiv.org/abs/2204.02311>`_, 2022, Section 5.1 (loss spikes,
    handled by restarting before them and skipping 200 to 500 batches).
  """
  inner_init, inner_update, takes_extra = _inner_functions(inner)
  sigma = _spike_sigma(spike_sigma)
  window = hyper.integer(
    _FN,
    "window",
    window,
    low=2,
    fix="It is how many accepted steps the spike statistics cover (e.g. 100).",
  )
  if max_consecutive is not None:
    max_consecutive = hyper.integer(
      _FN,
      "max_consecutive",
      max_consecutive,
      low=1,
      fix="Pass None never to give up skipping.",
    )
  warmup = min(window, WARMUP)

  def init_fn(params):
    log_norms = num_norms = next_norm = None
    if sigma is not None:
      log_norms = jnp.zeros([window], _norm_dtype(params))
      num_norms = jnp.zeros([], jnp.int32)
      next_norm = jnp.zeros([], jnp.int32)
    return SkipBadStepsState(
      inner_state=inner_init(params),
      skipped_steps=jnp.zeros([], jnp.int32),
      consecutive_skipped_steps=jnp.zeros([], jnp.int32),
      last_skip_reason=jnp.zeros([], jnp.int32),
      gave_up=jnp.zeros([], bool),
      log_norms=log_norms,
      num_norms=num_norms,
      next_norm=next_norm,
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    _checks.check_state(_FN, state, SkipBadStepsState)
    _checks.check_float_updates(_FN, updates, complex_ok=True)
    finite = _all_finite(updates)
    if value is not None:
      finite = finite & _value_finite(value)

    spike = jnp.zeros([], bool)
    log_norm = None
    if sigma is not None:
      assert state.log_norms is not None and state.num_norms is not None
      log_norm = jnp.log(_global_norm(updates, state.log_norms.dtype))
      mean, std = _log_stats(state.log_norms, state.num_norms)
      threshold = mean + jnp.asarray(sigma, mean.dtype) * std
      spike = (state.num_norms >= warmup) & (log_norm > threshold)

    reason = jnp.where(finite, jnp.where(spike, SPIKE, APPLIED), NON_FINITE).astype(
      jnp.int32
    )
    bad = reason != APPLIED
    gave_up = state.gave_up
    if max_consecutive is not None:
      gave_up = gave_up | (bad & (state.consecutive_skipped_steps >= max_consecutive))
    skip = bad & ~gave_up

    kwargs = dict(extra_args) if takes_extra else {}
    if value is not None and takes_extra:
      kwargs["value"] = value
    new_updates, new_inner = inner_update(updates, state.inner_state, params, **kwargs)
    new_updates = jax.tree.map(
      lambda u: jnp.where(skip, jnp.zeros([], jnp.result_type(u)), u), new_updates
    )
    new_inner = jax.tree.map(
      lambda old, new: jnp.where(skip, old, new), state.inner_state, new_inner
    )

    log_norms, num_norms, next_norm = state.log_norms, state.num_norms, state.next_norm
    if log_norm is not None:
      assert log_norms is not None and num_norms is not None and next_norm is not None
      enter = ~skip & jnp.isfinite(log_norm)  # a zero norm's log is -inf
      written = log_norms.at[next_norm].set(log_norm.astype(log_norms.dtype))
      log_norms = jnp.where(enter, written, log_norms)
      num_norms = jnp.where(enter, jnp.minimum(num_norms + 1, window), num_norms)
      next_norm = jnp.where(enter, (next_norm + 1) % window, next_norm)

    return new_updates, SkipBadStepsState(
      inner_state=new_inner,
      skipped_steps=jnp.where(
        skip, safe_increment(state.skipped_steps), state.skipped_steps
      ),
      consecutive_skipped_steps=jnp.where(
        skip,
        safe_increment(state.consecutive_skipped_steps),
        jnp.zeros([], jnp.int32),
      ),
      last_skip_reason=jnp.where(skip, reason, APPLIED).astype(jnp.int32),
      gave_up=gave_up,
      log_norms=log_norms,
      num_norms=None if num_norms is None else num_norms.astype(jnp.int32),
      next_norm=None if next_norm is None else next_norm.astype(jnp.int32),
    )

  # optax.OptState (an ArrayTree) has no None, which JAX takes as an empty
  # subtree: the fields unused without spike_sigma are None.
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
