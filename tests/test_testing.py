"""optaxtra.testing.check_transformation: what passes, and one broken tx per check."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra
from optaxtra.testing import check_transformation


def _params():
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
    "b": jnp.zeros(5, jnp.float32),
    "s": jnp.asarray(0.5, jnp.float32),
  }


def _mixed_params():
  return {**_params(), "h": jnp.ones((2, 3), jnp.bfloat16)}


def _sgd_like(update_leaf, init_state=None, update_state=None):
  """A transformation from per-leaf ``update_leaf(g, p)`` and state functions."""

  def init(params):
    return optax.EmptyState() if init_state is None else init_state(params)

  def update(grads, state, params=None):
    updates = jax.tree.map(update_leaf, grads, params)
    if update_state is not None:
      state = update_state(state, grads)
    return updates, state

  return optax.GradientTransformation(init, update)


def _descend(g, p):
  del p
  return -0.1 * g


# --- what passes ---------------------------------------------------------------

_sched = optax.linear_schedule(1e-2, 1e-3, 10)

OPTAXTRA = {
  "scale_by_adamax_clipped": lambda: optaxtra.scale_by_adamax_clipped(),
  "scale_by_adamax_clipped_bc_noclip": lambda: optaxtra.scale_by_adamax_clipped(
    clip=False, bias_correction=True
  ),
  "scale_by_adam": lambda: optaxtra.scale_by_adam(),
  "scale_by_adam_no_bc": lambda: optaxtra.scale_by_adam(bias_correction=False),
  "scale_by_learning_rate": lambda: optaxtra.scale_by_learning_rate(0.1),
  "scale_by_learning_rate_schedule": lambda: optaxtra.scale_by_learning_rate(_sched),
  "scale_by_schedule": lambda: optaxtra.scale_by_schedule(lambda n: 0.5 / (n + 1)),
  "add_decayed_weights_decoupled": lambda: optaxtra.add_decayed_weights_decoupled(
    0.1, schedule=_sched, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  ),
  "adamax_clipped": lambda: optaxtra.adamax_clipped(
    _sched, weight_decay=0.1, bias_correction=True
  ),
  "inject_adamax_clipped": lambda: optax.inject_hyperparams(optaxtra.adamax_clipped)(
    learning_rate=_sched, b1=0.8
  ),
}


# Quick: each of optaxtra's transformations once, each with its options.
@pytest.mark.sweep(
  quick=[
    "add_decayed_weights_decoupled",
    "inject_adamax_clipped",
    "scale_by_adam_no_bc",
    "scale_by_adamax_clipped_bc_noclip",
    "scale_by_learning_rate_schedule",
    "scale_by_schedule",
  ]
)
@pytest.mark.parametrize("name", sorted(OPTAXTRA))
def test_optaxtra_transformations_pass(name):
  # inject_hyperparams gives bfloat16 leaves float32 updates (see below).
  params = _params() if name.startswith("inject") else _mixed_params()
  check_transformation(OPTAXTRA[name](), params)


def test_optaxtra_passes_in_float64(x64):
  params = jax.tree.map(lambda x: x.astype(jnp.float64), _params())
  check_transformation(optaxtra.adamax_clipped(_sched, weight_decay=0.1), params)


OPTAX = {
  "adam": lambda: optax.adam(1e-3),
  "adamw": lambda: optax.adamw(_sched, weight_decay=1e-2),
  "sgd": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
  "adamax": lambda: optax.adamax(1e-3),
  "lion": lambda: optax.lion(1e-4),
  "adagrad": lambda: optax.adagrad(0.1),
  "rmsprop": lambda: optax.rmsprop(1e-3),
  "nadam": lambda: optax.nadam(1e-3),
  "lamb": lambda: optax.lamb(1e-3),
  "adafactor": lambda: optax.adafactor(1e-3),
  "amsgrad": lambda: optax.amsgrad(1e-3),
  "radam": lambda: optax.radam(1e-3),
  "adabelief": lambda: optax.adabelief(1e-3),
  "inject_adam": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=_sched),
  "multisteps": lambda: optax.MultiSteps(optax.adam(1e-3), every_k_schedule=2),
  "apply_if_finite": lambda: optax.apply_if_finite(optax.adam(1e-3), 3),
  "masked_clip_chain": lambda: optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.masked(optax.adam(1e-3), {"w": True, "b": False, "s": True}),
  ),
}


# Quick: a factored state, injected hyperparameters, a masked chain and the
# two wrappers that count.
@pytest.mark.sweep(
  quick=[
    "adafactor",
    "apply_if_finite",
    "inject_adam",
    "masked_clip_chain",
    "multisteps",
  ]
)
@pytest.mark.parametrize("name", sorted(OPTAX))
def test_optax_aliases_pass(name):
  check_transformation(OPTAX[name](), _params())


def test_complex_params():
  params = {"z": jnp.asarray(np.arange(6).reshape(2, 3) * (1 + 1j), jnp.complex64)}
  check_transformation(optax.adam(1e-3), params)
  check_transformation(optaxtra.scale_by_learning_rate(0.1), params)


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _scale_by_value():
  """Multiplies the updates by the ``value`` keyword, as a loss-aware stage."""

  def update(updates, state, params=None, *, value):
    del params
    return jax.tree.map(lambda u: u * value, updates), state

  return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def test_given_grads_and_extra_args():
  # A stage of our own rather than optax.contrib.reduce_on_plateau: before
  # optax 0.2.5 that one's init state is weakly typed, which the checker
  # rightly reports as a recompile.
  tx = optax.chain(optax.adam(1e-2), _scale_by_value())
  grads = jax.tree.map(jnp.ones_like, _params())
  check_transformation(
    tx, _params(), grads=grads, num_steps=2, extra_args={"value": jnp.float32(1.0)}
  )


def test_inject_hyperparams_with_mixed_precision_params_is_caught():
  # A real finding: inject_hyperparams casts the learning rate to the params'
  # widest dtype, so bfloat16 leaves get float32 updates.
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  with pytest.raises(
    AssertionError, match=r"update for 'h' has dtype float32.*bfloat16"
  ):
    check_transformation(tx, _mixed_params())
  check_transformation(optax.adam(1e-3), _mixed_params())  # the plain alias is fine


# --- one broken transformation per check ------------------------------------------


def test_updates_tree_mismatch():
  def update(grads, state, params=None):
    return {k: v for k, v in grads.items() if k != "b"}, state

  tx = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
  with pytest.raises(
    AssertionError, match=r"updates' tree is not the params' tree.*'b'"
  ):
    check_transformation(tx, _params())


def test_updates_shape_mismatch():
  tx = _sgd_like(lambda g, p: jnp.sum(g, axis=0) if g.ndim == 2 else g)
  with pytest.raises(
    AssertionError, match=r"update for 'w' has shape \(5,\).*\(4, 5\)"
  ):
    check_transformation(tx, _params())


def test_updates_dtype_mismatch():
  lr = jnp.float32(0.1)  # promotes bfloat16 gradients to float32
  tx = _sgd_like(lambda g, p: -lr * g)
  with pytest.raises(
    AssertionError, match=r"update for 'h' has dtype float32.*bfloat16"
  ):
    check_transformation(tx, _mixed_params())


def test_non_finite_updates_from_finite_grads():
  class State(NamedTuple):
    nu: Any

  # Adam without eps: the zero-initialised bias leaf divides 0 by 0.
  def update(grads, state, params=None):
    nu = jax.tree.map(lambda v, g: 0.9 * v + 0.1 * g * g, state.nu, grads)
    updates = jax.tree.map(lambda g, v: -g / jnp.sqrt(v), grads, nu)
    return updates, State(nu)

  tx = optax.GradientTransformation(
    lambda p: State(jax.tree.map(jnp.zeros_like, p)), update
  )
  grads = {**jax.tree.map(jnp.ones_like, _params()), "b": jnp.zeros(5)}
  with pytest.raises(AssertionError, match=r"non-finite updates for 'b' \(5 of 5"):
    check_transformation(tx, _params(), grads=grads)


def test_state_tree_changes():
  def update(grads, state, params=None):
    return grads, (*state, jnp.zeros([], jnp.int32))  # grows every step

  tx = optax.GradientTransformation(lambda p: (), update)
  with pytest.raises(AssertionError, match=r"state's tree after step 1 differs.*'0'"):
    check_transformation(tx, _params())


def test_state_shape_changes():
  class State(NamedTuple):
    history: jax.Array

  def update(grads, state, params=None):
    norm = _norm(grads)
    return jax.tree.map(_descend, grads, grads), State(
      jnp.concatenate([state.history, norm[None]])
    )

  tx = optax.GradientTransformation(lambda p: State(jnp.zeros((0,))), update)
  with pytest.raises(
    AssertionError,
    match=r"state leaf 'history' is float32\[0\].*float32\[1\] after step 1",
  ):
    check_transformation(tx, _params())


def test_state_dtype_changes():
  class State(NamedTuple):
    count: jax.Array

  tx = _sgd_like(
    _descend,
    init_state=lambda p: State(jnp.zeros([], jnp.int32)),
    update_state=lambda s, g: State(s.count + 1.0),  # int32 + float -> float32
  )
  with pytest.raises(
    AssertionError, match=r"state leaf 'count' is int32\[\].*float32\[\]"
  ):
    check_transformation(tx, _params())


def test_second_jitted_update_recompiles_for_a_weakly_typed_count():
  class State(NamedTuple):
    count: jax.Array

  tx = _sgd_like(
    _descend,
    init_state=lambda p: State(jnp.asarray(0)),  # weakly typed int32
    update_state=lambda s, g: State(s.count + jnp.int32(1)),  # strong int32
  )
  with pytest.raises(
    AssertionError,
    match=r"traced and compiled again at step 2.*'count': int32\[\] \(weakly typed\) "
    r"-> int32\[\]",
  ):
    check_transformation(tx, _params())
  # lax.scan accepts it, which is why only the recompilation shows it.
  p = _params()
  jax.lax.scan(lambda s, _: (tx.update(p, s, p)[1], None), tx.init(p), None, length=2)


def test_state_holds_the_params_buffers():
  class State(NamedTuple):
    previous: Any

  tx = _sgd_like(_descend, init_state=lambda p: State(p))  # not a copy
  with pytest.raises(
    AssertionError,
    match=r"state leaf 'previous/b' returned by init holds the buffer of parameter 'b'",
  ):
    check_transformation(tx, _params())
  # What the message says would happen does happen, in a donating train step.
  params = _params()
  state = tx.init(params)

  def train(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  with pytest.raises(Exception, match="donate the same buffer twice"):
    jax.jit(train, donate_argnums=(0, 1))(params, state, _params())
  # A copy is fine.
  tx = _sgd_like(
    _descend,
    init_state=lambda p: State(jax.tree.map(lambda x: jnp.array(x, copy=True), p)),
  )
  check_transformation(tx, _params())


def test_state_leaves_share_one_buffer():
  class State(NamedTuple):
    mu: Any
    nu: Any

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return State(zeros, zeros)

  tx = _sgd_like(_descend, init_state=init)
  with pytest.raises(
    AssertionError, match=r"state leaves 'mu/b' and 'nu/b' returned by init share one"
  ):
    check_transformation(tx, _params())
  # What the message says would happen does happen.
  state = tx.init(_params())
  step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  with pytest.raises(Exception, match="donate the same buffer twice"):
    step(state)


def test_shared_buffer_that_the_update_does_not_read_passes():
  # One buffer, two state leaves, but the update reads neither (jax.jit drops
  # unread arguments), so donating the state works and the check passes.
  def init(params):
    del params
    shared = jnp.zeros([], jnp.float32)
    return {"a": shared, "b": shared}

  def update(grads, state, params=None):
    del state, params
    fresh = {"a": jnp.zeros([], jnp.float32), "b": jnp.zeros([], jnp.float32)}
    return jax.tree.map(lambda g: -0.1 * g, grads), fresh

  tx = optax.GradientTransformation(init, update)
  params = _params()
  state = tx.init(params)
  assert state["a"] is state["b"]
  check_transformation(tx, params)
  jax.jit(lambda s: tx.update(params, s, params), donate_argnums=0)(state)


def test_inject_hyperparams_state_shares_no_buffer():
  # inject_hyperparams hands its learning-rate array to optaxtra's stage, which
  # records a copy of it, not the array itself.
  tx = optax.inject_hyperparams(optaxtra.adamax_clipped)(learning_rate=_sched)
  params = _params()
  state = tx.init(params)
  assert state.hyperparams["learning_rate"] is not state.inner_state.learning_rate
  assert state.hyperparams["weight_decay"] is not state.inner_state.weight_decay
  check_transformation(tx, params)
  jax.jit(lambda s: tx.update(params, s, params), donate_argnums=0)(state)


def test_update_that_cannot_be_traced():
  def update(grads, state, params=None):
    if _norm(grads) > 1e6:  # a Python branch on a traced value
      grads = jax.tree.map(jnp.zeros_like, grads)
    return grads, state

  tx = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
  with pytest.raises(AssertionError, match=r"fails under jax.jit at step 1.*Tracer"):
    check_transformation(tx, _params())


def test_init_that_raises():
  def init(params):
    raise RuntimeError("boom")

  tx = optax.GradientTransformation(init, lambda g, s, p=None: (g, s))
  with pytest.raises(
    AssertionError, match=r"tx.init\(params\) raised RuntimeError: boom"
  ):
    check_transformation(tx, _params())


# --- updates that are not deltas -------------------------------------------------


def test_returning_new_params_instead_of_deltas():
  tx = _sgd_like(lambda g, p: p - 0.1 * g)  # the new values, not the change
  with pytest.raises(
    AssertionError,
    match=r"zero gradients gave an update for 's' of root-mean-square .* 1 times "
    r"that of the parameter.*not the new params",
  ):
    check_transformation(tx, _params())


def test_returning_ones():
  # A TensorFlow user's experiment: the update replaced by ones, "to see the
  # weights become 1". In Optax that adds 1 to every weight, whatever the gradient.
  tx = _sgd_like(lambda g, p: jnp.ones_like(g))
  with pytest.raises(AssertionError, match=r"zero gradients gave an update for 'b'"):
    check_transformation(tx, _params())
  # Without the zero-gradient probe, the g / -g probe still sees it.
  with pytest.raises(AssertionError, match=r"g and -g gave the same non-zero update"):
    check_transformation(tx, _params(), zero_grad_rtol=None)


def test_zero_grad_probe_limits_are_the_documented_ones():
  # Large parameters hide a constant update of ones from the zero-gradient
  # probe (root-mean-square 10 > 1 / 0.5); the dependence probe catches it.
  big = {"w": jnp.full((3, 3), 10.0, jnp.float32)}
  ones = _sgd_like(lambda g, p: jnp.ones_like(g))
  with pytest.raises(AssertionError, match=r"does not depend on the gradient"):
    check_transformation(ones, big)
  # Noise is a legitimate update for zero gradients: it fails the probe unless
  # the probe is turned off, as the docstring says.
  noisy = optax.chain(optax.add_noise(1.0, 0.0, 0), optax.sgd(1.0))
  with pytest.raises(AssertionError, match=r"zero_grad_rtol=None"):
    check_transformation(noisy, _params())
  check_transformation(noisy, _params(), zero_grad_rtol=None)
  # Strong but ordinary decoupled weight decay passes (lr * wd = 1e-3).
  check_transformation(optax.adamw(1e-2, weight_decay=0.1), _params())


def test_frozen_leaves_pass_the_dependence_probe():
  tx = optax.transforms.partition(
    {"train": optax.adam(1e-3), "freeze": optax.set_to_zero()},
    {"w": "train", "b": "freeze", "s": "freeze"},
  )
  check_transformation(tx, _params())


# --- bad arguments -------------------------------------------------------------


def test_bad_arguments():
  p = _params()
  with pytest.raises(TypeError, match=r"not optax.adam"):
    check_transformation(optax.adam, p)
  with pytest.raises(ValueError, match="no array leaves"):
    check_transformation(optax.sgd(0.1), {})
  with pytest.raises(TypeError, match=r"parameter 'i' .* int32"):
    check_transformation(optax.sgd(0.1), {**p, "i": jnp.zeros(2, jnp.int32)})
  with pytest.raises(ValueError, match=r"parameter 'x' is weakly typed"):
    check_transformation(optax.sgd(0.1), {**p, "x": jnp.array(0.5)})
  with pytest.raises(ValueError, match=r"grads for 'w' has shape \(5, 4\)"):
    check_transformation(optax.sgd(0.1), p, grads={**p, "w": jnp.zeros((5, 4))})
  with pytest.raises(ValueError, match=r"grads for 'b' has dtype bfloat16"):
    check_transformation(
      optax.sgd(0.1), p, grads={**p, "b": jnp.zeros(5, jnp.bfloat16)}
    )
  with pytest.raises(ValueError, match=r"grads for 'b' is not finite"):
    check_transformation(optax.sgd(0.1), p, grads={**p, "b": jnp.full(5, jnp.nan)})
  with pytest.raises(ValueError, match="num_steps must be >= 2"):
    check_transformation(optax.sgd(0.1), p, num_steps=1)
  with pytest.raises(TypeError, match="num_steps must be an int"):
    check_transformation(optax.sgd(0.1), p, num_steps=2.0)
  with pytest.raises(ValueError, match="zero_grad_rtol"):
    check_transformation(optax.sgd(0.1), p, zero_grad_rtol=-1.0)
  with pytest.raises(TypeError, match="check_grad_dependence"):
    check_transformation(optax.sgd(0.1), p, check_grad_dependence="yes")


def test_values_by_path_pass_and_two_classes_of_one_name_are_told_apart():
  # A learning rate by path keeps a dict by rule in its state: a declared value.
  lr = optaxtra.by_path({"^w$": 0.1}, default=0.01)
  assert check_transformation(optaxtra.scale_by_learning_rate(lr), _params()) is None
  # record_norm's states are one class per name, all called RecordNormState.
  grads, norm = _params(), optaxtra.record_norm("update_norm")
  with pytest.raises(TypeError, match=r"RecordNormState\['update_norm'\], got another"):
    norm.update(grads, optaxtra.record_norm("grad_norm").init(grads))


def test_a_count_that_does_not_advance_is_named():
  @optaxtra.inspectable(values=["count"])
  class Stuck(NamedTuple):
    count: jax.Array

  def init(params):
    del params
    return Stuck(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    return updates, state  # forgets to count the update

  tx = optax.chain(
    optax.GradientTransformation(init, update), optaxtra.scale_by_learning_rate(0.1)
  )
  with pytest.raises(
    AssertionError, match=r"counts in the state .* disagree.*counts_apart"
  ):
    check_transformation(tx, _params())
