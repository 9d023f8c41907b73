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

Decays: :func:`constant`, :func:`piecewise_constant`,
:func:`exponential_decay`, :func:`polynomial_decay`, :func:`cosine_decay`.
Cycles: :func:`cosine_restarts` (PyTorch's ``CosineAnnealingWarmRestarts``,
timm's ``cycle_decay``) and :func:`one_cycle` (PyTorch's ``OneCycleLR``).
Warmups: :func:`linear_warmup`, :func:`warmup_stable_decay` (WSD) and
:func:`inverse_sqrt` (fairseq's ``inverse_sqrt``). Combinators:
:func:`join`, :func:`per_epoch`. Each one copied from another system gives
that system's values, step for step.

Steps beyond int32 are never wrapped to a negative step (which would give the
step-0 value). Without ``jax_enable_x64`` a concrete step (a Python int, a
NumPy integer or array) outside int32 raises ``ValueError`` naming the step and
the int32 limit, and a traced uint32 step raises ``TypeError`` (its dtype can
hold such steps); under x64, int64 steps, concrete or traced, are computed
exactly in int64. Out of a schedule's reach: under ``jax.jit`` without x64,
JAX itself converts a NumPy int64 *argument* to int32, wrapping it, before the
schedule sees it. Lengths and boundaries (``decay_steps``,
``transition_steps``, ``boundaries``, ``warmup_steps``, ``stable_steps``,
``period``, ``total_steps``, ``steps_per_epoch``) may exceed int32, up to
``2**63 - 1``: an int32 step never reaches them (such a decay is simply never
finished), and every int32 step is still exact. ``steps_per_epoch`` may also be
fractional (``1281167 / 1024``): :func:`per_epoch` takes it as the exact
fraction it holds and still computes every epoch in integers.

Bad arguments raise ``ValueError`` naming the argument when the schedule is
built, non-finite values (``nan``, ``inf``, ``-inf``) included; nothing is
silently replaced by a constant. A schedule given to :func:`join`,
:func:`linear_warmup`, :func:`per_epoch` or :func:`sample` is checked when it
is traced: one returning None, a string, a bool, a complex number or anything
but one value per step raises ``TypeError`` naming it and what it returned.
The *values* it returns are its own and are passed on unchecked (under
``jax.jit`` they are not known): a NaN or a negative learning rate from it is
not caught here; look at a schedule with :func:`sample` before training.

Steps count *updates*: for a schedule in epochs use :func:`per_epoch`, and look
at a schedule before training with :func:`sample` or :func:`plot`.
"""

from optaxtra.schedules._combine import join, linear_warmup, per_epoch
from optaxtra.schedules._constant import constant, piecewise_constant
from optaxtra.schedules._cyclic import cosine_restarts, one_cycle
from optaxtra.schedules._decay import cosine_decay, exponential_decay, polynomial_decay
from optaxtra.schedules._view import plot, sample
from optaxtra.schedules._warmup import inverse_sqrt, warmup_stable_decay

__all__ = [
  "constant",
  "cosine_decay",
  "cosine_restarts",
  "exponential_decay",
  "inverse_sqrt",
  "join",
  "linear_warmup",
  "one_cycle",
  "per_epoch",
  "piecewise_constant",
  "plot",
  "polynomial_decay",
  "sample",
  "warmup_stable_decay",
]
