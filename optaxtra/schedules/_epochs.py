"""Epochs of a fractional length: ``floor(step / steps_per_epoch)``, exactly.

An epoch of ``steps_per_epoch = 1281167 / 1024`` steps (ImageNet in batches of
1024, as Haiku's example computes it) has no integer length, and dividing the
step by it in float32 puts some epoch boundaries a step early or late: above
2**24 the step itself is not representable, and below it the quotient is
rounded before it is floored. Here the length is taken as the exact fraction
the float holds (``fractions.Fraction``) and the epoch is computed in the
step's own integers, exactly for every step the integer dtype holds.

The method. With ``x = 1 / steps_per_epoch = u / v`` (``x <= 1``), write a
non-negative step ``m`` in binary, ``m = sum(b_i 2**i)``. On the host, once,
``2**i * u = a_i * v + c_i`` with ``0 <= c_i < v``. Then ``m * u = (sum b_i
a_i) * v + sum b_i c_i``, and ``floor(m * u / v)`` is ``sum b_i a_i`` plus the
carries of adding the ``c_i`` modulo ``v``, one bit at a time, each carry
taken when the running remainder ``r`` reaches ``v - c_i`` (then ``r`` becomes
``r - (v - c_i)``, else ``r + c_i``): every quantity stays in ``[0, v]`` and
``[0, m]``, so nothing overflows the step's dtype, and the remainder ``r`` of
``m * u`` modulo ``v`` comes out exactly too.

That needs ``v`` to fit the dtype. A float's fraction may have a larger
denominator (``1 / 1281.167`` is ``2199023255552 / 2817316027245789``); it is then
replaced by ``L``, the largest fraction not above ``x`` whose denominator fits:
``floor(m * y)`` only changes where ``y`` crosses a fraction ``k / m``, and by
construction no such fraction with ``m`` up to the dtype's largest value lies
in ``(L, x]``, so ``floor(m * L) = floor(m * x)`` for every such ``m``. (Then
``m * x`` is never a whole number, since ``x``'s own denominator exceeds every
such ``m``.) A negative step ``s = -m`` has ``floor(s * x) = -floor(m * x)``,
less one where ``m * x`` is not whole; the most negative step, whose ``m`` does
not fit, is a constant computed on the host.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp


def lower_neighbour(x: Fraction, n: int) -> Fraction:
  """The largest fraction ``<= x`` whose denominator is at most ``n``.

  For ``x >= 0`` and ``n >= 1``: ``x`` itself when its denominator fits, else
  the lower of its two neighbours in the Farey sequence of order ``n``, found
  from the continued fraction of ``x`` as :meth:`fractions.Fraction.limit_denominator`
  finds them (which returns the closer of the two).
  """
  if x.denominator <= n:
    return x
  p0, q0, p1, q1 = 0, 1, 1, 0
  num, den = x.numerator, x.denominator
  while True:
    a = num // den
    q2 = q0 + a * q1
    if q2 > n:
      break
    p0, q0, p1, q1 = p1, q1, p0 + a * p1, q2
    num, den = den, num - a * den
  k = (n - q0) // q1
  below = Fraction(p0 + k * p1, q0 + k * q1)
  above = Fraction(p1, q1)
  return below if below <= x else above


class _Table:
  """What :func:`floor_times` needs for one ``x`` and one integer width."""

  def __init__(self, x: Fraction, bits: int):
    top = 2**bits - 1
    low = lower_neighbour(x, top)
    self.u, self.v = low.numerator, low.denominator
    self.exact = low == x  # else m * x is never a whole number
    self.terms = [divmod(self.u << i, self.v) for i in range(bits)]
    self.top = top
    self.least = math.floor(-(2**bits) * x)  # the epoch of the most negative step


@functools.lru_cache(maxsize=32)
def _table(x: Fraction, bits: int) -> _Table:
  return _Table(x, bits)


def _magnitude(step: jax.Array, t: _Table) -> jax.Array:
  """``|step|``, held at the dtype's largest value for the most negative step."""
  return jnp.where(step < 0, -jnp.maximum(step, -t.top), step)


def _divide(m: jax.Array, t: _Table) -> tuple[jax.Array, jax.Array]:
  """``(floor(m * u / v), m * u mod v)`` for ``m >= 0``, in ``m``'s dtype.

  One ``fori_loop`` over the bits of ``m``; its callers are jitted, so that an
  eager call compiles once per step shape instead of dispatching every
  operation of every iteration.
  """
  dt = m.dtype
  v = t.v
  a = jnp.asarray([a for a, _ in t.terms], dt)
  gap = jnp.asarray([v - c for _, c in t.terms], dt)  # in [1, v]

  def body(i, carry):
    q, r = carry
    bit = (jnp.right_shift(m, i.astype(dt)) & 1) == 1
    over = r >= gap[i]  # adding c reaches v: a carry, and r + c - v >= 0
    q = q + jnp.where(bit, a[i] + over.astype(dt), 0)
    r = jnp.where(bit, r - gap[i] + jnp.where(over, 0, v), r)
    return q, r

  zero = jnp.zeros_like(m)
  return jax.lax.fori_loop(0, len(t.terms), body, (zero, zero))


@functools.partial(jax.jit, static_argnums=1)
def floor_times(step: jax.Array, x: Fraction) -> jax.Array:
  """``floor(step * x)`` for an integer ``step`` array and ``0 < x <= 1``, exactly.

  The result has the step's dtype and shape; it is exact for every value the
  dtype holds (see the module's docstring for the method).
  """
  dt = step.dtype
  t = _table(x, jnp.iinfo(dt).bits - 1)
  q, r = _divide(_magnitude(step, t), t)
  whole = r == 0 if t.exact else jnp.zeros(q.shape, bool)
  epoch = jnp.where(step < 0, -q - jnp.where(whole, 0, 1).astype(dt), q)
  return jnp.where(step == -t.top - 1, jnp.asarray(t.least, dt), epoch)


@functools.partial(jax.jit, static_argnums=(1, 2))
def times(step: jax.Array, x: Fraction, dtype: Any) -> jax.Array:
  """``step * x`` in the floating ``dtype``, for an integer ``step`` array.

  Where ``x``'s denominator fits the step's dtype this is ``q + r / v`` from
  the exact integer part ``q`` and remainder ``r`` of :func:`floor_times`'s
  loop, rounded to ``dtype`` and added: within two roundings of the exact
  product, also for steps beyond 2**24 that float32 cannot hold. Otherwise
  it is the step divided by ``1 / x`` in ``dtype``, within two roundings too
  below 2**24 in float32.
  """
  t = _table(x, jnp.iinfo(step.dtype).bits - 1)
  if not t.exact:
    return step.astype(dtype) / jnp.asarray(float(1 / x), dtype)
  q, r = _divide(_magnitude(step, t), t)
  value = q.astype(dtype) + r.astype(dtype) / jnp.asarray(float(t.v), dtype)
  value = jnp.where(step < 0, -value, value)
  least = jnp.asarray(float(-(t.top + 1) * x), dtype)
  return jnp.where(step == -t.top - 1, least, value)
