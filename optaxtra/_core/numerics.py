"""Numerically careful helpers shared by the adaptive transformations."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import optax


def one_minus_power(b: jax.Array, t: jax.Array) -> jax.Array:
  """``1 - b**t`` for ``b`` in [0, 1) and ``t >= 1``, to a few ulps.

  The bias corrections of Adam and Adamax divide by ``1 - b**t``. Computed as
  written it cancels when ``b**t`` is near 1: in float32 with ``b=0.999`` it
  is off by 7e-6 relative on the second step, and by 1e-4 with ``b=0.9999``.
  ``-expm1(t * log(b))`` has no cancellation (``log(b)`` of the exact input
  ``b`` is accurate, and so is ``expm1``), and gives 1 for ``b = 0``.

  Args:
    b: the decay rate, a floating scalar.
    t: the step, ``>= 1``, in ``b``'s dtype.

  Returns:
    ``1 - b**t`` in ``b``'s dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra._core.numerics import one_minus_power
    >>> b = jnp.float32(0.999)  # holds 0.99900001287..., so 1 - b**2 = 0.0019989742...
    >>> one_minus_power(b, jnp.float32(2.0))
    Array(0.00199897, dtype=float32)
    >>> 1 - b**2  # cancels: off in the sixth digit
    Array(0.00199896, dtype=float32)
  """
  return -jnp.expm1(t * jnp.log(b))


def bias_correction_factor(
  b1: Any, b2: Any | None, t: jax.Array, dtype: Any
) -> jax.Array:
  """The factor by which the bias correction multiplies a step at step ``t``.

  Adam's ``sqrt(1 - b2**t) / (1 - b1**t)`` (Kingma & Ba, Section 2), or, with
  ``b2=None``, Adamax's ``1 / (1 - b1**t)`` (Algorithm 2), in ``dtype``, from
  :func:`one_minus_power`. ``t >= 1``, in any numeric dtype.
  """
  t = jnp.asarray(t).astype(dtype)
  denominator = one_minus_power(jnp.asarray(b1, dtype), t)
  if b2 is None:
    return 1 / denominator
  return jnp.sqrt(one_minus_power(jnp.asarray(b2, dtype), t)) / denominator


def safe_increment(count: jax.Array) -> jax.Array:
  """:func:`optax.safe_increment` of a state's int32 count, typed as an array.

  Optax annotates it ``ArrayLike -> ArrayLike``, but given an array it returns
  one; this says so (a ``cast``, nothing more happens at run time).
  """
  return cast(jax.Array, optax.safe_increment(count))
