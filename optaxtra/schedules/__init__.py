"""Learning-rate schedules: pure functions of the step count, exact at every step.

A schedule maps the int32 update count an Optax optimizer keeps to a value. The
schedules here accept Python ints and integer arrays of any shape (so
``schedule(jnp.arange(n))`` samples a whole run), are ``jax.jit`` and
``jax.vmap`` safe, and return float32 (float64 under ``jax_enable_x64`` when
their values are float64). Their boundaries (staircase steps, epochs, warmup
ends, joins, cycles) are computed on the integer step, exact for every int32
step. Floating steps (the fractional epochs :func:`per_epoch` passes on with
``staircase=False``) are accepted too, with floating-point boundaries. Where
Optax has a schedule of the same name the signature is Optax's.
Bad arguments raise ``ValueError`` naming the argument when the schedule is
built; nothing is silently replaced by a constant.

Steps count *updates*: for a schedule in epochs use :func:`per_epoch`, and look
at a schedule before training with :func:`sample` or :func:`plot`.
"""

from optaxtra.schedules._combine import join, linear_warmup, per_epoch
from optaxtra.schedules._constant import constant, piecewise_constant
from optaxtra.schedules._decay import cosine_decay, exponential_decay, polynomial_decay
from optaxtra.schedules._view import plot, sample

__all__ = [
  "constant",
  "cosine_decay",
  "exponential_decay",
  "join",
  "linear_warmup",
  "per_epoch",
  "piecewise_constant",
  "plot",
  "polynomial_decay",
  "sample",
]
