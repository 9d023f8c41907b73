"""Changing the learning rate mid-run without recompiling: set_learning_rate_scale."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxtra._alias import AdamaxClippedState
from optaxtra._core import checks as _checks
from optaxtra._core.paths import box_types
from optaxtra._learning_rate import ScaleByLearningRateState

_FN = "set_learning_rate_scale"
# The states holding a learning-rate scale, and the field that holds it.
_SCALED = {ScaleByLearningRateState: "scale", AdamaxClippedState: "learning_rate_scale"}


def _new_scale(scale: ArrayLike) -> jax.Array:
  if isinstance(scale, bool) or not isinstance(
    scale, int | float | np.generic | np.ndarray | jax.Array
  ):
    raise TypeError(
      f"{_FN}: scale must be a real number (a float or a scalar array), got "
      f"{type(scale).__name__}."
    )
  if np.ndim(scale) != 0:
    raise ValueError(
      f"{_FN}: scale must be a scalar, got shape {np.shape(scale)}; one scale "
      "applies to every learning-rate stage of the state."
    )
  dtype = jnp.result_type(scale)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"{_FN}: scale must be real, got dtype {dtype}.")
  if not _checks.is_traced(scale):
    value = float(scale)
    if not (np.isfinite(value) and value >= 0):
      raise ValueError(
        f"{_FN}: scale is {value!r}; it must be a finite number >= 0 (it "
        "multiplies the learning rate: 0.1 divides it by 10, 1 restores it)."
      )
  return jnp.asarray(scale, jnp.float32)


def set_learning_rate_scale(state: optax.OptState, scale: ArrayLike) -> Any:
  """The state with the learning-rate scale of every optaxtra stage set.

  optaxtra's learning-rate stages (:func:`optaxtra.scale_by_learning_rate`
  and :func:`optaxtra.adamax_clipped`) keep a float32 ``scale`` in their state,
  1.0 at init, and use ``scale * learning_rate(count)``: PyTorch's
  ``param_group["lr"] = ...`` or Keras' ``optimizer.learning_rate = ...``
  without building a new optimizer. The scale is an array of the state, so a
  jitted step keeps its compiled program: setting it never recompiles. It
  multiplies the schedule, which goes on from where it is; a decay coupled to
  the learning rate (``adamax_clipped``'s default) follows it.

  Works on any state holding such stages (chains, :func:`optax.masked`,
  ``optax.partition``, :class:`optax.MultiSteps`, ``inject_hyperparams``,
  ``nnx.Optimizer.opt_state``), concrete or inside :func:`jax.jit`.

  Args:
    state: an optimizer state, as ``tx.init`` or ``tx.update`` returned it.
    scale: the new scale, a non-negative float or scalar array (traced values
      are taken as they are).

  Returns:
    The state, of the same structure and dtypes, with every such scale set.

  Raises:
    ValueError: when the state holds no optaxtra learning-rate stage (Optax's
      own keep no learning rate in their state: use
      :func:`optax.inject_hyperparams` for those), or for a negative,
      non-finite or non-scalar scale.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optax.chain(optax.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-3))
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> state = optaxtra.set_learning_rate_scale(state, 0.1)
    >>> _, state = tx.update({"w": jnp.ones(2)}, state)
    >>> optaxtra.inspect(state)["learning_rate"]  # 0.1 * 1e-3
    Array(1.e-04, dtype=float32)
  """
  value = _new_scale(scale)
  boxes = box_types()
  found = 0

  def is_stage(x):
    return isinstance(x, tuple(_SCALED))

  def replace(node):
    nonlocal found
    if not is_stage(node):
      return node
    found += 1
    field = _SCALED[type(node)]
    old = getattr(node, field)
    if boxes and isinstance(old, boxes):  # nnx keeps each leaf in a Variable
      new = jax.tree.map(lambda x: value.astype(x.dtype), old)
    else:
      new = value.astype(jnp.result_type(old))
    return node._replace(**{field: new})

  out = jax.tree.map(replace, state, is_leaf=is_stage)
  if not found:
    raise ValueError(
      f"{_FN}: the state holds no optaxtra learning-rate stage "
      "(scale_by_learning_rate, adamax_clipped), so there is no scale to set. "
      "Optax's own stages keep no learning rate in their state: build the "
      "optimizer with optaxtra.scale_by_learning_rate(...), or wrap it in "
      "optax.inject_hyperparams and set state.hyperparams['learning_rate']."
    )
  return out
