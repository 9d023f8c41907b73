"""A stage that passes the updates through and records their global norm."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxtra._core import checks as _checks
from optaxtra._core.dtypes import real_dtype
from optaxtra._core.numerics import safe_increment
from optaxtra._introspect.declare import inspectable
from optaxtra._introspect.optax_states import CONVENTION

_FN = "record_norm"

# Names optaxtra.inspect gives a meaning of its own.
_RESERVED = frozenset((*CONVENTION, "effective_learning_rate"))


@inspectable(values=["count", "norm"])
class RecordNormState(NamedTuple):
  """State of :func:`optaxtra.record_norm`.

  ``record_norm(name)`` returns a state of a subclass of this one, made once
  per ``name`` (``type(state).name`` holds it), whose only difference is the
  name :func:`optaxtra.inspect` reports ``norm`` under. The leaves are the
  same for every name, so ``isinstance(state, optaxtra.RecordNormState)``
  holds for all of them.

  Attributes:
    count: int32 number of updates done so far (saturates at 2**31 - 1).
    norm: the global L2 norm of the updates the most recent update passed
      through; 0 before the first update.
  """

  # A NamedTuple field named like tuple.count, as in Optax's states.
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  norm: jax.Array


def _rebuild(name: str, count: Any, norm: Any) -> RecordNormState:
  """Unpickles a state of ``record_norm(name)``."""
  return state_class(name)(count, norm)


def _reduce(self: RecordNormState) -> tuple[Any, ...]:
  return _rebuild, (type(self).name, *self)  # pyright: ignore[reportAttributeAccessIssue]


@functools.cache
def state_class(name: str) -> type[RecordNormState]:
  """The state class of ``record_norm(name)``: one per name, declared to
  report ``norm`` under ``name``."""
  cls = type(
    "RecordNormState",
    (RecordNormState,),
    {
      "__slots__": (),
      "__module__": __name__,
      "__qualname__": f"RecordNormState[{name!r}]",
      "__doc__": f"State of ``optaxtra.record_norm({name!r})``.",
      "__reduce__": _reduce,
      "name": name,
    },
  )
  return inspectable(values={"count": "count", "norm": name})(cls)


def _check_name(name: Any) -> None:
  if not isinstance(name, str) or not name:
    raise TypeError(
      f"{_FN}: name must be a non-empty string, the name optaxtra.inspect "
      f"reports the norm under (e.g. 'grad_norm'), got {name!r}."
    )
  if "/" in name:
    raise ValueError(
      f"{_FN}: name must not contain '/' (optaxtra.inspect joins paths with "
      f"it), got {name!r}."
    )
  if name in _RESERVED:
    raise ValueError(
      f"{_FN}: name {name!r} is one that optaxtra.inspect gives a meaning of "
      "its own; choose another, e.g. 'grad_norm' or 'update_norm'."
    )


def _norm_dtype(tree: Any) -> Any:
  """The widest real dtype of ``tree``'s leaves, float32 at least."""
  dt = jnp.dtype(jnp.float32)
  for x in jax.tree.leaves(tree):
    leaf = jnp.result_type(x)
    if jnp.issubdtype(leaf, jnp.inexact):
      dt = jnp.promote_types(dt, real_dtype(leaf))
  return dt


def _global_norm(updates: Any, dtype: Any) -> jax.Array:
  """``sqrt(sum |u|**2)`` over every entry, summed in ``dtype`` or wider."""
  total = jnp.zeros([], dtype)
  for u in jax.tree.leaves(updates):
    u = jnp.asarray(u)
    dt = jnp.promote_types(dtype, real_dtype(u.dtype))
    if jnp.iscomplexobj(u):
      sq = jnp.square(u.real.astype(dt)) + jnp.square(u.imag.astype(dt))
    else:
      sq = jnp.square(u.astype(dt))
    total = total.astype(jnp.promote_types(total.dtype, dt)) + jnp.sum(sq)
  return jnp.sqrt(total).astype(dtype)


def record_norm(name: str = "grad_norm") -> optax.GradientTransformation:
  """Passes the updates through unchanged and records their global L2 norm.

  The norm is ``sqrt(sum(|u|**2))`` over every entry of every leaf (for
  complex updates, of ``|z|``), computed in float32 at least: in float64 where
  the updates or the params given to ``init`` are float64 (under
  ``jax_enable_x64``), and stored in the dtype fixed by ``init``'s params,
  so the state never changes dtype. :func:`optaxtra.inspect` reports it under
  ``name``. What it measures depends on where it sits in a chain: first, the
  gradients; after an optimizer, the updates it returns.

  The cost is opt-in and small: one reduction over every entry per update
  (no copy; the updates are returned as they came). Inside
  :class:`optax.MultiSteps` it sees each mini-step's gradients.

  How the name reaches :func:`optaxtra.inspect`: a state class declares its
  report names (:func:`optaxtra.inspectable`), and the name here is chosen
  per instance, so ``record_norm(name)`` uses a subclass of
  :class:`optaxtra.RecordNormState` made once per name and declared to report
  ``norm`` under ``name``. The leaves are ``(count, norm)`` whatever the
  name, so checkpoints restored against ``tx.init``'s state work as for any
  NamedTuple state; the name itself lives in the tree's structure, not in an
  array. Two ``record_norm`` stages with different names in one chain are
  both reported under their names; two with the same name are reported under
  their paths in the state (see :func:`optaxtra.inspect`).

  Args:
    name: what :func:`optaxtra.inspect` reports the norm under, a non-empty
      string without ``/`` and not one of the names it gives a meaning of its
      own (``count``, ``learning_rate``, ...).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`optaxtra.RecordNormState` (of the subclass for ``name``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optax.chain(
    ...     optaxtra.record_norm("grad_norm"),
    ...     optax.sgd(0.1),
    ...     optaxtra.record_norm("update_norm"),
    ... )
    >>> state = tx.init({"w": jnp.zeros(2), "b": jnp.zeros(())})
    >>> grads = {"w": jnp.array([3.0, 0.0]), "b": jnp.array(4.0)}
    >>> updates, state = tx.update(grads, state)
    >>> info = optaxtra.inspect(state)
    >>> info["grad_norm"], info["update_norm"]
    (Array(5., dtype=float32), Array(0.5, dtype=float32))

  References:
    Pascanu, Mikolov & Bengio, `On the difficulty of training recurrent
    neural networks <https://arxiv.org/abs/1211.5063>`_, ICML 2013 (the
    gradient norm as a training diagnostic).
  """
  _check_name(name)
  cls = state_class(name)

  def init_fn(params):
    dtype = _norm_dtype(params)
    return cls(jnp.zeros([], jnp.int32), jnp.zeros([], dtype))

  def update_fn(updates, state, params=None):
    del params
    _checks.check_state(_FN, state, cls)
    _checks.check_float_updates(_FN, updates, complex_ok=True)
    norm = _global_norm(updates, state.norm.dtype)
    return updates, cls(safe_increment(state.count), norm)

  return optax.GradientTransformation(init_fn, update_fn)
