"""A schedule's output as one floating value per step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optaxtra._core import checks as _checks


class ScheduleShapeError(TypeError, ValueError):
  """A schedule returned an array that is not one value per step.

  Both a ``TypeError`` (a wrong kind of return value, like ``None`` or a
  string) and, as before, a ``ValueError``.
  """


def _returned(out: Any) -> str:
  """What a schedule returned, for a message (no tracer's repr)."""
  if out is None or isinstance(out, str | bytes | bool | int | float | complex):
    return repr(out)
  if isinstance(out, list | tuple | dict):
    return f"a {type(out).__name__} of {len(out)} entries"
  dtype, shape = getattr(out, "dtype", None), getattr(out, "shape", None)
  if dtype is not None and shape is not None:
    return f"an array of dtype {dtype} and shape {tuple(shape)}"
  text = repr(out)
  return f"{type(out).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def as_values(
  fn: str, name: str, schedule: Any, out: Any, shape: tuple[int, ...]
) -> jax.Array:
  """``schedule``'s output as a floating array of the step's shape.

  Checked at trace time, where the dtype and the shape are known: the output
  must be a real number (float, or int, which becomes the default float) per
  step, that is of shape ``()`` (broadcast) or of the step's shape. None,
  strings, bools, complex numbers and other shapes raise ``TypeError`` naming
  the schedule and what it returned. The values themselves (a NaN, a negative
  learning rate) are not checked: under ``jax.jit`` they are not known.
  """

  def what(returned: str) -> str:
    return f"{fn}: {name} ({schedule!r}) returned {returned}"

  fix = (
    "; a schedule must return a real number per step: a float (or int) "
    "scalar, or an array of the step's shape"
  )
  # None inside: older JAX (0.4.30) reads it as a NaN, with a FutureWarning.
  leaves = jax.tree_util.tree_leaves(out, is_leaf=lambda x: x is None)
  try:
    bad = any(x is None or isinstance(x, str | bytes) for x in leaves)
    arr = None if bad or not leaves else jnp.asarray(out)
  except (TypeError, ValueError):
    arr = None
  if arr is None:
    raise TypeError(what(_returned(out)) + fix + ".")
  dt = arr.dtype
  if jnp.issubdtype(dt, jnp.bool_) or not (
    jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)
  ):
    raise TypeError(what(_returned(out)) + fix + ".")
  if arr.shape not in ((), tuple(shape)):
    raise ScheduleShapeError(
      what(_returned(out))
      + f" for steps of shape {tuple(shape)}"
      + fix
      + " (write it with jnp operations so that it works on arrays of steps)."
    )
  if not jnp.issubdtype(dt, jnp.floating):
    arr = arr.astype(_checks.default_float())
  return jnp.broadcast_to(arr, shape)
