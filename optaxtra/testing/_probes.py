"""The probes of ``check_transformation``, one concern each, and ``PROBES``.

A probe is a function of the :class:`Context` that returns None when its check
passes and raises the ``AssertionError`` naming the problem (through
:func:`fail`) when it does not. ``PROBES`` lists them in the order they run,
each with when:

* ``"init"``: once, after ``tx.init`` (``ctx.state0``, ``ctx.first``);
* ``"step"``: after each jitted update of the run (``ctx.last``: its number,
  grads, updates and the new state);
* ``"end"``: once, after the run; ``ctx.update`` runs more jitted updates
  (compiled once already, for a state with init's types).

To add a probe, write its function here and append ``Probe(when, function)``
to ``PROBES``, and give it a line in ``check_transformation``'s docstring.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra._core.paths import quote
from optaxtra.testing._context import Context, Probe
from optaxtra.testing._declared import probe_declared_values
from optaxtra.testing._trees import (
  Signature,
  aval,
  buffers,
  describe,
  fail,
  float64,
  host_tree,
  leaves,
  rms,
  signature,
  tree_diff,
)

# The zero-gradient probe compares an update's size with its parameter's, or
# with this when the parameter is smaller (a bias of zeros).
ZERO_GRAD_FLOOR = 1e-3


def probe_init_state_is_arrays(ctx: Context) -> None:
  """Every leaf of the state ``init`` returns is an array."""
  for path, a in ctx.first[1]:
    if a is None:
      fail(
        f"state leaf {quote(path)} returned by init is not an array; jax.jit "
        "cannot take it."
      )


def probe_state_buffers(ctx: Context) -> None:
  """No leaf of init's state is a params buffer, nor shares one with another.

  Two state leaves may share a buffer when at most one of them is read by the
  update: ``jax.jit`` drops unread arguments, so only one is donated. Runs
  after the first jitted update, so that an update that cannot be traced is
  reported as such.
  """
  if ctx.last.number != 1:
    return
  read = _state_leaves_read(ctx)
  owner: dict[Any, str] = {}
  for path, p in leaves(ctx.params):
    for b in buffers(p):
      owner.setdefault(b, path)
  param_ids = {id(p): path for path, p in leaves(ctx.params) if buffers(p)}
  seen: dict[Any, str] = {}
  for (path, x), used in zip(leaves(ctx.state0), read, strict=True):
    bufs = buffers(x)
    hit = param_ids.get(id(x)) or next((owner[b] for b in bufs if b in owner), None)
    if hit is not None:
      fail(
        f"state leaf {quote(path)} returned by init holds the buffer of parameter "
        f"{quote(hit)} itself. Donating the params to jax.jit (donate_argnums, as "
        "Flax and most training loops do) deletes it, and the next update fails; "
        "donating both donates one buffer twice. Keep a copy "
        "(jnp.array(p, copy=True)) or jnp.zeros_like(p)."
      )
    if not used:
      continue
    for b in bufs:
      if b in seen:
        fail(
          f"state leaves {quote(seen[b])} and {quote(path)} returned by init share "
          "one buffer, and the update reads both: donating the state to jax.jit "
          "fails with 'Attempt to donate the same buffer twice'. Create each "
          "leaf separately (one jnp.zeros_like call each)."
        )
      seen[b] = path


def _state_leaves_read(ctx: Context) -> list[bool]:
  """Which leaves of init's state the traced update reads or returns."""
  grads = ctx.last.grads
  closed = jax.make_jaxpr(ctx.eager_update)(grads, ctx.state0, ctx.params)
  used = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars}
  used |= {id(v) for v in closed.jaxpr.outvars}
  start = len(jax.tree.leaves(grads))
  n = len(jax.tree.leaves(ctx.state0))
  return [id(v) in used for v in closed.jaxpr.invars[start : start + n]]


def probe_no_recompilation(ctx: Context) -> None:
  """The jitted update was traced (so compiled) once, at the first step."""
  if len(ctx.traces) > 1:
    changed = [
      f"{quote(path)}: {describe(a)} -> {describe(b)}"
      for (path, a), (_, b) in zip(ctx.traces[0], ctx.traces[-1], strict=False)
      if a != b
    ]
    fail(
      f"the jitted update was traced and compiled again {ctx.last.when}: the "
      "state passed in has other types than init's: "
      f"{'; '.join(changed) or 'none found'}. Give every state leaf its final "
      "dtype in init (jnp.zeros([], jnp.int32), jnp.asarray(x, jnp.float32)) so "
      "that one compilation serves every step."
    )


def probe_updates_match_params(ctx: Context) -> None:
  """The step's updates are like the params, leaf for leaf, and finite."""
  _check_updates(ctx.last.updates, ctx.params, ctx.last.when)


def _check_updates(updates: Any, params: Any, when: str) -> None:
  """Updates must be a tree like the params, leaf for leaf, and finite."""
  if jax.tree.structure(updates) != jax.tree.structure(params):
    fail(
      f"{when}, the updates' tree is not the params' tree: "
      f"{tree_diff(updates, params)}. tx.update must return one update per "
      "parameter, in the params' structure."
    )
  for (path, u), (_, p) in zip(leaves(updates), leaves(params), strict=True):
    ua, pa = aval(u), aval(p)
    if ua is None:
      fail(
        f"{when}, the update for {quote(path)} is a {type(u).__name__}, not an array."
      )
    if ua.shape != pa.shape:
      fail(
        f"{when}, the update for {quote(path)} has shape {ua.shape} but the "
        f"parameter has shape {pa.shape}; optax.apply_updates would broadcast or "
        "fail."
      )
    if ua.dtype != pa.dtype:
      fail(
        f"{when}, the update for {quote(path)} has dtype {ua.dtype} but the "
        f"parameter has dtype {pa.dtype}. Cast the update back (u.astype(g.dtype)), "
        "or the params change dtype when the update is applied."
      )
    bad = int(np.size(u) - np.count_nonzero(np.isfinite(float64(u))))
    if bad:
      fail(
        f"{when}, finite gradients gave non-finite updates for {quote(path)} ({bad} "
        f"of {np.size(u)} entries are nan or inf)."
      )


def probe_state_structure_stable(ctx: Context) -> None:
  """The state after the step has init's tree, and each leaf its shape and dtype."""
  _check_state_like(ctx.first, ctx.last.state, f"step {ctx.last.number}")


def _check_state_like(first: Signature, state: Any, when: str) -> None:
  """The state after a step must have the init state's tree, shapes, dtypes."""
  treedef, avals = signature(state)
  hint = (
    "A state that changes between steps makes jax.jit recompile the update "
    "every step and lax.scan reject it: create every state leaf in init with "
    "its final shape and dtype."
  )
  if treedef != first[0]:
    fail(
      f"the state's tree after {when} differs from the one init returned: "
      f"{tree_diff(first[0].unflatten([0] * first[0].num_leaves), state)}. {hint}"
    )
  for (path, a0), (_, a1) in zip(first[1], avals, strict=True):
    if a1 is None or a0 is None:
      fail(
        f"state leaf {quote(path)} is not an array after init or {when} (got "
        f"{describe(a0)} and {describe(a1)}); jax.jit cannot take it."
      )
    if a0.shape != a1.shape or a0.dtype != a1.dtype:
      fail(
        f"state leaf {quote(path)} is {describe(a0)} after init but "
        f"{describe(a1)} after {when}. {hint}"
      )


def probe_zero_gradient(ctx: Context) -> None:
  """Zero gradients on a fresh state give updates small next to the params."""
  rtol = ctx.zero_grad_rtol
  if rtol is None:
    return
  when = "on a fresh state with zero gradients"
  zeros = host_tree(lambda shape, dtype: np.zeros(shape), ctx.params)
  updates, _ = ctx.update(zeros, ctx.tx.init(ctx.params), when)
  _check_updates(updates, ctx.params, when)
  for (path, u), (_, p) in zip(leaves(updates), leaves(ctx.params), strict=True):
    ur, pr = rms(u), rms(p)
    if ur > rtol * max(pr, ZERO_GRAD_FLOOR):
      fail(
        f"on a fresh state, zero gradients gave an update for {quote(path)} of "
        f"root-mean-square {ur:.4g}, {ur / max(pr, ZERO_GRAD_FLOOR):.3g} times "
        f"that of the parameter ({pr:.4g}, floored at {ZERO_GRAD_FLOOR:g}; the "
        f"bound is zero_grad_rtol={rtol:g}). Updates are changes that "
        "optax.apply_updates adds to the params, not the new params: return "
        "-lr * direction, not params - lr * direction (nor a constant). If such "
        "an update is intended (noise, a strong decay), pass zero_grad_rtol=None."
      )


def probe_gradient_dependence(ctx: Context) -> None:
  """Gradients ``g`` and ``-g`` on a fresh state give different updates."""
  if not ctx.check_grad_dependence:
    return
  g = ctx.grads_at(1)
  when = "on a fresh state"
  u_pos, _ = ctx.update(g, ctx.tx.init(ctx.params), when)
  neg = jax.tree.map(lambda x: jnp.asarray(-np.asarray(x)), g)
  u_neg, _ = ctx.update(neg, ctx.tx.init(ctx.params), when)
  for (path, a), (_, b), (_, gl) in zip(
    leaves(u_pos), leaves(u_neg), leaves(g), strict=True
  ):
    a, b = float64(a), float64(b)
    if np.any(np.asarray(gl) != 0) and np.any(a != 0) and np.array_equal(a, b):
      fail(
        "on a fresh state, gradients g and -g gave the same non-zero update for "
        f"{quote(path)}: the update does not depend on the gradient. Return the "
        "change computed from the gradients, not a constant or the params. "
        "Pass check_grad_dependence=False if this is intended."
      )


# The probes in the order they run (within each `when`, and "init" before the
# steps, "end" after them). Add one here; document it in check_transformation.
PROBES: tuple[Probe, ...] = (
  Probe("init", probe_init_state_is_arrays),
  Probe("step", probe_state_buffers),
  Probe("step", probe_no_recompilation),
  Probe("step", probe_updates_match_params),
  Probe("step", probe_state_structure_stable),
  Probe("end", probe_zero_gradient),
  Probe("end", probe_gradient_dependence),
  Probe("end", probe_declared_values),
)
