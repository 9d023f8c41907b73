"""Helpers of the phased schedules: options, fractions, boundaries, weights.

A schedule whose phases end at floating-point steps (PyTorch's ``OneCycleLR``
computes them as ``pct_start * total_steps - 1``) still compares them with the
integer step exactly, and takes the step's distance to them from the integer
step (:func:`offset`). Within a phase the value is its start and end values
weighted by :func:`weights`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from optaxtra._core import checks as _checks
from optaxtra._core import hyper as _hyper


def check_choice(fn: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
  """``value`` if it is one of the strings ``choices``, else a named error."""
  wanted = " or ".join(repr(c) for c in choices)
  if not isinstance(value, str):
    raise TypeError(f"{fn}: {name} must be {wanted}, got {value!r}.")
  if value not in choices:
    raise ValueError(f"{fn}: {name} must be {wanted}, got {value!r}.")
  return value


def check_fraction(fn: str, name: str, value: Any, what: str) -> float:
  """``value`` as a Python float in ``[0, 1]``, concrete (it sets ``what``)."""
  if _checks.is_traced(value):
    raise TypeError(
      f"{fn}: {name} must be a concrete number, got a traced value. It sets "
      f"{what}, fixed when the schedule is built; build the schedule outside "
      "jax.jit (with optax.inject_hyperparams, list it in static_args)."
    )
  _hyper.real(fn, name, value, low=0.0, high=1.0, high_open=False)
  return float(value)


def offset(step: jax.Array, x: float, cdt: Any) -> tuple[jax.Array, jax.Array]:
  """``(step - x, x - step)`` in ``cdt`` for a Python float ``x``.

  For an integer step the differences are taken from ``b``, ``floor(x)`` held
  to the step's range: ``step - b`` is exact, so they are accurate where the
  step is close to ``x``, even where neither is representable in ``cdt``.
  """
  if not jnp.issubdtype(step.dtype, jnp.integer):
    return step - x, x - step
  b = min(max(math.floor(x), 0), int(jnp.iinfo(step.dtype).max))
  d = (step - b).astype(cdt)
  return d + float(b - x), -d + float(x - b)


def weights(
  left: jax.Array, done: jax.Array, cosine: bool
) -> tuple[jax.Array, jax.Array]:
  """The weights of a phase's start and end values, adding up to 1 exactly.

  ``left`` and ``done`` are the fractions of the phase left and done (adding
  up to 1). Linear: ``(left, done)``; cosine: ``(sin^2(pi/2 left), sin^2(pi/2
  done))``, that is ``(1 + cos(pi done)) / 2`` and its complement. The smaller
  weight is computed from its own fraction, the larger as 1 minus it: the
  value is then exactly the start value at the start and the end value at the
  end, and accurate relative to the value in between.
  """
  first = left <= done
  small = jnp.minimum(left, done)
  if cosine:
    small = jnp.square(jnp.sin(jnp.asarray(math.pi / 2, small.dtype) * small))
  return jnp.where(first, small, 1 - small), jnp.where(first, 1 - small, small)
