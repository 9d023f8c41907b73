"""``check_transformation``: the driver that runs the probes of ``_probes``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from optaxtra.testing._context import Context, When
from optaxtra.testing._inputs import check_inputs
from optaxtra.testing._probes import PROBES


def check_transformation(
  tx: optax.GradientTransformation,
  params: optax.Params,
  *,
  grads: optax.Updates | None = None,
  num_steps: int = 3,
  zero_grad_rtol: float | None = 0.5,
  check_grad_dependence: bool = True,
  extra_args: Mapping[str, Any] | None = None,
) -> None:
  r"""Runs a gradient transformation a few steps and fails on common mistakes.

  ``tx`` is initialised on ``params`` and updated ``num_steps`` times under
  :func:`jax.jit`, as a training loop does (the params passed to every update).
  It fails with an ``AssertionError`` naming the problem, the step and the leaf
  path when:

  * the updates do not have the params' tree, or a leaf's shape or dtype
    differs from its parameter's;
  * finite gradients give a non-finite update;
  * the state's tree, or a leaf's shape or dtype, after a step differs from
    what ``init`` returned (this breaks :func:`jax.lax.scan` and makes
    :func:`jax.jit` recompile every step);
  * the second jitted update traces (so compiles) again: the message names the
    state leaves whose type changed, in practice one that ``init`` left weakly
    typed (``count=0`` or ``jnp.asarray(1.0)`` instead of
    ``jnp.zeros([], jnp.int32)``) and the update made strong. ``lax.scan``
    accepts that, but every jitted training step after the first is compiled
    anew;
  * a leaf of the state ``init`` returns *is* one of the params' buffers
    (donating the params to :func:`jax.jit`, as Flax and most training loops
    do, deletes it), or two of its leaves that the update reads share one
    buffer (donating the state fails);
  * ``tx.init`` raises, or ``tx.update`` raises under ``jax.jit`` (it must be
    traceable: no Python ``if`` on traced values, no ``float(x)``).

  Each check is a probe, a function of its own; they run in this order, once
  after ``init``, after every jitted update, or once after the run (``tx.init``
  or ``tx.update`` raising is reported by the run itself):

  * ``probe_init_state_is_arrays`` (init): every state leaf is an array;
  * ``probe_state_buffers`` (step 1): no leaf of init's state is a params buffer,
    nor shares one with another leaf the update reads;
  * ``probe_no_recompilation`` (each step): the jitted update traced just once;
  * ``probe_updates_match_params`` (each step): the updates' tree, shapes,
    dtypes, and finite values;
  * ``probe_state_structure_stable`` (each step): the state's tree, shapes and
    dtypes are init's;
  * ``probe_zero_gradient`` (end): ``zero_grad_rtol``, below;
  * ``probe_gradient_dependence`` (end): ``check_grad_dependence``, below;
  * ``probe_declared_values`` (end): every state declared with
    :func:`optaxtra.inspectable` holds what it declares (its values numeric
    scalars or None, its ``derive`` a mapping of them), in init's state and
    after the last update, and :func:`optaxtra.inspect` reads the state with
    the same names eagerly and under :func:`jax.jit`.

  Two probes look for updates that are not *deltas*. Optax adds updates to the
  parameters (``optax.apply_updates(params, updates) = params + updates``), so
  a transformation that returns the new parameter values, or some fixed value
  such as ones (a mistake easily made when porting a TensorFlow
  optimizer, whose ``apply`` assigns new values), silently breaks training:

  * ``zero_grad_rtol``: on a fresh state, all-zero gradients must give, for
    each leaf, an update whose root-mean-square is at most ``zero_grad_rtol``
    times the parameter's (or times 1e-3, if larger: a parameter of zeros).
    Returning ``params - lr * g`` gives ratio 1 and fails, returning ones fails
    for parameters of root-mean-square below ``1 / zero_grad_rtol``; Optax's
    and optaxtra's optimizers give 0, or ``lr * weight_decay`` (far below 0.5)
    with decay. Its limits: it cannot tell new parameter values from a change
    for parameters of zeros (``0 - lr * 0 = 0``), and a transformation whose
    first update is legitimately large for zero gradients (heavy noise, a decay
    of half the weights per step) fails: pass None to skip it.
  * ``check_grad_dependence``: on a fresh state, gradients ``g`` and ``-g``
    must not give the same non-zero update for any leaf. An update that
    ignores the gradient (a constant, the parameters) fails. Zero updates
    (a frozen leaf, ``optax.set_to_zero()``) pass.

  What it cannot see: whether the numbers are *right*. Test those against a
  reference computed from the algorithm's equations.

  Args:
    tx: the transformation to check.
    params: a tree of floating arrays to initialise and update with; include
      every dtype and rank the transformation is meant to handle.
    grads: the gradients fed at every step, a tree like ``params``; by default
      a different standard-normal draw per step (fixed seed, so reproducible).
    num_steps: how many updates to run each way, at least 2.
    zero_grad_rtol: the bound of the zero-gradient probe, or None to skip it.
    check_grad_dependence: whether to run the ``g`` / ``-g`` probe.
    extra_args: keyword arguments passed to every ``tx.update`` call (for
      transformations taking e.g. ``value=loss``).

  Returns:
    None; every check passed.

  Raises:
    AssertionError: a check failed; the message says which, where and why.
    TypeError, ValueError: the arguments themselves are unusable.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> optaxtra.testing.check_transformation(optaxtra.adamax_clipped(1e-3), params)
    >>> def sgd_returning_new_params(lr):  # the mistake: returning new params
    ...   def update(grads, state, params):
    ...     return jax.tree.map(lambda p, g: p - lr * g, params, grads), state
    ...   return optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    >>> optaxtra.testing.check_transformation(sgd_returning_new_params(0.1), params)
    Traceback (most recent call last):
    ...
    AssertionError: check_transformation: on a fresh state, zero gradients gave
    an update for 'w' of root-mean-square 1, 1 times that of the parameter ...
  """
  check_inputs(tx, params, grads, num_steps, zero_grad_rtol, check_grad_dependence)
  ctx = Context.start(
    tx,
    params,
    grads=grads,
    num_steps=num_steps,
    zero_grad_rtol=zero_grad_rtol,
    check_grad_dependence=check_grad_dependence,
    extra_args=extra_args,
  )
  _run_probes(ctx, "init")
  for _ in range(num_steps):
    ctx.advance()
    _run_probes(ctx, "step")
  _run_probes(ctx, "end")


def _run_probes(ctx: Context, when: When) -> None:
  """Runs the probes of ``PROBES`` that run ``when``, in their order."""
  for probe in PROBES:
    if probe.when == when:
      probe.check(ctx)
