"""Changing the optimizer of a running training: migrate_state, and checkpoints.

A run continued with another optimizer keeps every value whose place (state
class, field, parameter path) exists in both, and the rest starts as
``new_tx.init`` makes it. The core tests below run a few jitted steps on a tiny
model; the heavy ones restore the Orbax checkpoints that optaxtra 0.2 wrote
(tests/data/checkpoints_0.2/, made by tests/data/make_checkpoints_0.2.py) and
continue each run as 0.2 did.

Bit-for-bit comparisons are of states carried unchanged and of params that two
runs computed with the same update arithmetic from bit-identical states, run
eagerly (the same primitives dispatched one at a time: the same bits on any
CPU, where two jitted programs may fuse, hence round, differently); the
continuation of a 0.2 checkpoint, which today's code computes, is compared
within the cross-program ulp bound of _harness.
"""

from __future__ import annotations

import re
from pathlib import Path

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need

import optaxtra
from optaxtra import masks

LR = optax.linear_schedule(1e-2, 1e-3, 10)
WD = 1e-2
STEPS = 4  # before the change, and again after it


def _params():
  rng = np.random.default_rng(0)

  def a(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  return {
    "embed": {"embedding": a(3, 2)},
    "layers": {"0": {"kernel": a(2, 2)}, "1": {"kernel": a(2, 2)}},
    "head": {"kernel": a(2), "bias": a()},
  }


def _small():
  """Params for the tests that compile: two leaves compile faster than five."""
  return {
    "kernel": jnp.asarray([[0.5, -1.0], [2.0, 0.25]]),
    "bias": jnp.asarray([0.1, -0.3]),
  }


def _grads(step, params=None):
  rng = np.random.default_rng(100 + step)
  params = _params() if params is None else params

  def g(p):
    x = rng.normal(size=np.shape(p)) * rng.choice([1e-5, 1.0, 30.0], size=np.shape(p))
    return jnp.asarray(x, jnp.float32)

  return jax.tree.map(g, params)


_JITTED: dict[int, tuple] = {}


def _step(tx, *, jit):
  """One training step of ``tx``; jitted once per transformation with ``jit``."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if not jit:
    return step
  if id(tx) not in _JITTED:
    _JITTED[id(tx)] = (tx, jax.jit(step))  # the tx kept alive with its id
  return _JITTED[id(tx)][1]


def _run(tx, params, state, first, steps=STEPS, *, jit=False):
  """``steps`` steps from step ``first``, eager (runs compared bit for bit)
  or as the one jitted program of ``tx``."""
  step = _step(tx, jit=jit)
  for i in range(first, first + steps):
    params, state = step(params, state, _grads(i, params))
  return params, state


def _trained(tx, params):
  """``tx.init(params)`` with every value made distinct and nonzero, as after
  some training (without running it: nothing to compile)."""
  leaves, treedef = jax.tree.flatten(tx.init(params))
  out = []
  for i, x in enumerate(leaves):
    x = np.asarray(x)
    fill = 3 if x.dtype.kind in "iu" else 0.25 * (i + 1)
    out.append(jnp.asarray(np.full(x.shape, fill, x.dtype)))
  return treedef.unflatten(out)


def _assert_identical(a, b, what=""):
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(
    jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
  ):
    where = f"{what}{jax.tree_util.keystr(path)}"
    assert np.dtype(x.dtype) == np.dtype(y.dtype) and np.shape(x) == np.shape(y), where
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)


def _alias():
  return optaxtra.adamax_clipped(
    LR, weight_decay=WD, weight_decay_mask=masks.path_mask(exclude=["bias"])
  )


def _chain():
  """0.1's way to write adamax_clipped(LR, weight_decay=WD)."""
  return optax.chain(
    optaxtra.scale_by_adamax_clipped(),
    optaxtra.scale_by_learning_rate(LR),
    optaxtra.add_decayed_weights_decoupled(WD, schedule=LR),
  )


# Built once, so that each is compiled once for the tests that jit them.
ALIAS = _alias()
AVERAGED = optax.chain(ALIAS, optaxtra.average_params(0.9))
CHAIN = _chain()
FUSED = optaxtra.adamax_clipped(LR, weight_decay=WD)


# --- Continuing a run ---------------------------------------------------------


def test_adding_average_params_continues_bit_for_bit():
  old_tx, new_tx = ALIAS, AVERAGED
  params, state = _run(old_tx, _small(), old_tx.init(_small()), 0, jit=False)
  straight = _run(old_tx, params, state, STEPS, jit=False)

  new_state, report = optaxtra.migrate_state(new_tx, params, state)

  # The running optimizer's state is carried as it is; the average is new.
  _assert_identical(new_state[0], state, "carried")
  assert int(new_state[1].count) == 0
  _assert_identical(new_state[1].average, params, "average")
  assert report.dropped == []
  assert all(p.startswith("0/AdamaxClippedState/") for p in report.carried)
  assert report.initialised == [
    "1/AverageParamsState/count",
    "1/AverageParamsState/decay",
    "1/AverageParamsState/average/bias",
    "1/AverageParamsState/average/kernel",
  ]

  # The same update arithmetic from bit-identical states: the same params.
  continued = _run(new_tx, params, new_state, STEPS, jit=False)
  _assert_identical(continued[0], straight[0], "params")
  _assert_identical(continued[1][0], straight[1], "state")
  # And the average did average what the run went through.
  assert not np.array_equal(continued[1][1].average["kernel"], params["kernel"])


@pytest.mark.parametrize("direction", ["chain_to_alias", "alias_to_chain"])
def test_the_0_1_chain_continues_as_adamax_clipped(direction):
  old_tx, new_tx = (CHAIN, FUSED) if direction == "chain_to_alias" else (FUSED, CHAIN)
  params, state = _run(old_tx, _small(), old_tx.init(_small()), 0, jit=False)
  straight = _run(old_tx, params, state, STEPS, jit=False)

  new_state, report = optaxtra.migrate_state(new_tx, params, state)
  assert _harness.avals(new_state) == _harness.avals(new_tx.init(params))
  if direction == "chain_to_alias":
    assert report.sources["AdamaxClippedState/mu/kernel"] == (
      "0/ScaleByAdamaxClippedState/mu/kernel"
    )
    assert report.sources["AdamaxClippedState/learning_rate_scale"] == (
      "1/ScaleByLearningRateState/scale"
    )
    assert report.sources["AdamaxClippedState/decay_rate"] == (
      "2/AddDecayedWeightsDecoupledState/decay_rate"
    )
    # The stages' own counts are the Adamax count: one count is enough.
    assert report.dropped == [
      "1/ScaleByLearningRateState/count",
      "2/AddDecayedWeightsDecoupledState/count",
    ]
  else:
    assert report.sources["1/ScaleByLearningRateState/count"] == (
      "AdamaxClippedState/count"
    )
    assert report.dropped == []
  assert report.initialised == []
  # One old buffer carried into three counts is copied, so the state can be
  # donated.
  buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(new_state)]
  assert len(set(buffers)) == len(buffers)

  continued = _run(new_tx, params, new_state, STEPS, jit=False)
  # The alias computes the chain's arithmetic, documented to the bit.
  _assert_identical(continued[0], straight[0], "params")


def test_optax_adamw_continues_as_optaxtra_adamw():
  params = _params()
  old_tx = optax.adamw(1e-2, weight_decay=1e-2)
  state = _trained(old_tx, params)
  new_state, report = optaxtra.migrate_state(
    optaxtra.adamw(1e-2, weight_decay=1e-2), params, state
  )
  _assert_identical(new_state.mu, state[0].mu)
  _assert_identical(new_state.nu, state[0].nu)
  assert int(new_state.count) == 3
  assert report.sources["AdamWState/nu/head/bias"] == "0/ScaleByAdamState/nu/head/bias"


def test_reset_reinitialises_only_what_it_names():
  tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-2))
  params = _params()
  state = _trained(tx, params)
  new_state, report = optaxtra.migrate_state(tx, params, state, reset="^head/")

  fresh = tx.init(params)
  for field in ("mu", "nu"):
    for name in ("head",):
      _assert_identical(
        getattr(new_state[0], field)[name], getattr(fresh[0], field)[name], field
      )
    for name in ("embed", "layers"):
      _assert_identical(
        getattr(new_state[0], field)[name], getattr(state[0], field)[name], field
      )
  # Counts are the stage's, not a parameter's: carried.
  assert int(new_state[0].count) == int(new_state[1].count) == 3
  reset = [p for p in report.initialised if report.reasons[p] == "reset"]
  assert (
    reset
    == report.initialised
    == [
      "0/ScaleByAdamState/mu/head/bias",
      "0/ScaleByAdamState/mu/head/kernel",
      "0/ScaleByAdamState/nu/head/bias",
      "0/ScaleByAdamState/nu/head/kernel",
    ]
  )
  assert report.dropped == report.initialised  # the old values went nowhere

  # A list of patterns; each must match a path, as in optaxtra.masks.
  _, report = optaxtra.migrate_state(tx, params, state, reset=["bias$", "^embed/"])
  assert len(report.initialised) == 4
  with pytest.raises(ValueError, match=r"migrate_state: reset pattern 'haed'.*head"):
    optaxtra.migrate_state(tx, params, state, reset="haed")


@pytest.mark.parametrize(
  "new_tx",
  [
    optax.rmsprop(1e-3),
    optax.adam(1e-3),
    optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-3)),
  ],
  ids=["optax.rmsprop", "optax.adam", "optaxtra.scale_by_adam"],
)
def test_adamax_nu_never_lands_in_another_nu(new_tx):
  params = _params()
  state = _trained(CHAIN, params)
  new_state, report = optaxtra.migrate_state(new_tx, params, state)
  fresh = new_tx.init(params)
  _assert_identical(new_state[0], fresh[0])  # nothing of Adamax in it
  assert not any("/nu/" in p or "/mu/" in p for p in report.carried)
  assert "0/ScaleByAdamaxClippedState/nu/head/kernel" in report.dropped


def test_a_parameter_of_another_shape_is_refused_by_name():
  tx = ALIAS
  params = _params()
  state = _trained(tx, params)
  params["head"]["kernel"] = jnp.zeros(3)
  with pytest.raises(
    ValueError,
    match=r"cannot carry 'AdamaxClippedState/mu/head/kernel' \(shape \(2,\).*"
    r"shape \(3,\).*reset=\['\^head/kernel\$'\]",
  ):
    optaxtra.migrate_state(tx, params, state)
  # Which the reset it names cures.
  new_state, report = optaxtra.migrate_state(tx, params, state, reset="^head/kernel$")
  assert new_state.mu["head"]["kernel"].shape == (3,)
  assert report.reasons["AdamaxClippedState/nu/head/kernel"] == "reset"


def test_a_moment_of_another_dtype_is_refused_by_name():
  old_tx = optaxtra.scale_by_adam()
  params = _params()
  state = old_tx.init(params)
  new_tx = optaxtra.scale_by_adam(mu_dtype=jnp.bfloat16)
  with pytest.raises(
    ValueError,
    match=r"'ScaleByAdamState/mu/embed/embedding'.*float32.*bfloat16.*mu_dtype",
  ):
    optaxtra.migrate_state(new_tx, params, state)


def test_a_new_layer_starts_afresh_and_a_removed_one_is_dropped():
  tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-2))
  params = _params()
  state = _trained(tx, params)
  grown = {**params, "extra": {"kernel": jnp.ones(2)}}
  del grown["embed"]
  new_state, report = optaxtra.migrate_state(tx, grown, state)
  _assert_identical(new_state[0].mu["extra"], {"kernel": jnp.zeros(2)})
  _assert_identical(new_state[0].mu["head"], state[0].mu["head"])
  assert report.reasons["0/ScaleByAdamState/mu/extra/kernel"] == "not in the old state"
  assert report.dropped == [
    "0/ScaleByAdamState/mu/embed/embedding",
    "0/ScaleByAdamState/nu/embed/embedding",
  ]
  # Params that name none of the old state's parameters are refused.
  with pytest.raises(ValueError, match=r"none of which is a path of params"):
    optaxtra.migrate_state(tx, {"w": jnp.zeros(2)}, state)


def test_several_states_of_one_class_match_in_order():
  a, b = optaxtra.scale_by_learning_rate(1e-2), optaxtra.scale_by_learning_rate(0.5)
  old_tx = optax.chain(optaxtra.scale_by_adam(), a, b)
  params = _params()
  state = old_tx.init(params)
  state = (
    state[0],
    state[1]._replace(scale=jnp.float32(0.25)),
    state[2]._replace(scale=jnp.float32(4.0)),
  )
  # Another position in the chain, a stage between them: the order decides.
  new_tx = optax.chain(a, optaxtra.record_norm(), b, optaxtra.scale_by_adam())
  new_state, report = optaxtra.migrate_state(new_tx, params, state)
  assert float(new_state[0].scale) == 0.25 and float(new_state[2].scale) == 4.0
  assert report.sources["2/ScaleByLearningRateState/scale"] == (
    "2/ScaleByLearningRateState/scale"
  )
  assert report.sources["3/ScaleByAdamState/count"] == "0/ScaleByAdamState/count"


def test_wrappers_are_not_part_of_a_place():
  old_tx = ALIAS
  params = _params()
  state = _trained(old_tx, params)
  frozen = optaxtra.with_frozen(old_tx, frozen="^embed/")
  new_state, report = optaxtra.migrate_state(frozen, params, state)
  inner = new_state.inner_states["trainable"].inner_state
  assert int(inner.count) == 3
  _assert_identical(inner.nu["head"], state.nu["head"])
  assert report.dropped == [
    "AdamaxClippedState/mu/embed/embedding",
    "AdamaxClippedState/nu/embed/embedding",
  ]
  multi = optax.MultiSteps(old_tx, every_k_schedule=2)
  new_state, report = optaxtra.migrate_state(multi, params, state)
  _assert_identical(new_state.inner_opt_state, state)
  assert "MultiStepsState/mini_step" in report.initialised
  # And back out of the wrapper.
  back, report = optaxtra.migrate_state(old_tx, params, new_state)
  _assert_identical(back, state)


def test_inject_hyperparams_takes_the_new_hyperparameters():
  old_tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
  params = _params()
  state = _trained(old_tx, params)
  new_tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-4)
  new_state, report = optaxtra.migrate_state(new_tx, params, state)
  assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(1e-4)
  assert int(new_state.count) == 3
  _assert_identical(new_state.inner_state, state.inner_state)
  # InjectStatefulHyperparamsState in recent Optax, InjectHyperparamsState before.
  (lr,) = [p for p in report.initialised if p.endswith("/hyperparams/learning_rate")]
  assert report.reasons[lr] == "a hyperparameter: new_tx's own"


def _as_restored_without_target(tree):
  """What Orbax gives back without a target: dicts for NamedTuples, lists."""
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return {
      k: _as_restored_without_target(v)
      for k, v in tree._asdict().items()
      if v is not None
    }
  if isinstance(tree, list | tuple):
    return [_as_restored_without_target(x) for x in tree]
  if isinstance(tree, dict):
    return {k: _as_restored_without_target(v) for k, v in tree.items()}
  return tree


def test_a_state_restored_without_target_is_refused_with_the_fix():
  tx = _chain()
  params = _params()
  raw = _as_restored_without_target(tx.init(params))
  with pytest.raises(
    TypeError, match=r"migrate_state: .*dicts.*eval_shape\(old_tx.init"
  ):
    optaxtra.migrate_state(_alias(), params, raw)
  # A dict with a state's fields inside a real state, too.
  mixed = (tx.init(params)[0], raw[1])
  with pytest.raises(TypeError, match=r"fields of .*ScaleByLearningRateState"):
    optaxtra.migrate_state(_alias(), params, mixed)
  with pytest.raises(TypeError, match=r"old_state is a GradientTransformation"):
    optaxtra.migrate_state(_alias(), params, tx)


def test_the_report_prints_a_table():
  tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-2))
  params = {"w": jnp.zeros(2), "b": jnp.zeros(())}
  state = tx.init(params)
  new_tx = optax.chain(optaxtra.scale_by_adam(), optaxtra.record_norm())
  _, report = optaxtra.migrate_state(new_tx, params, state, reset="^b$")
  lines = str(report).splitlines()
  # Whitespace aside (the columns are aligned, checked below):
  assert [" ".join(line.split()) for line in lines] == [
    "migrate_state: 4 carried, 4 initialised, 5 dropped",
    "new state old state what",
    " ".join(lines[2].split()),
    "0/ScaleByAdamState/count 0/ScaleByAdamState/count carried",
    "0/ScaleByAdamState/mu/b - initialised (reset)",
    "0/ScaleByAdamState/mu/w 0/ScaleByAdamState/mu/w carried",
    "0/ScaleByAdamState/nu/b - initialised (reset)",
    "0/ScaleByAdamState/nu/w 0/ScaleByAdamState/nu/w carried",
    "0/ScaleByAdamState/bias_correction 0/ScaleByAdamState/bias_correction carried",
    "1/RecordNormState/count - initialised (not in the old state)",
    "1/RecordNormState/norm - initialised (not in the old state)",
    "- 0/ScaleByAdamState/mu/b dropped (reset)",
    "- 0/ScaleByAdamState/nu/b dropped (reset)",
    "- 1/ScaleByLearningRateState/count dropped (no place in the new state)",
    "- 1/ScaleByLearningRateState/learning_rate dropped (no place in the new state)",
    "- 1/ScaleByLearningRateState/scale dropped (no place in the new state)",
  ]
  rule = [len(dashes) for dashes in lines[2].split("  ")]
  assert set(lines[2]) == {"-", " "} and len(rule) == 3
  second, third = rule[0] + 2, rule[0] + rule[1] + 4
  for line in lines[3:]:  # each column starts where its dashes do
    assert line[second - 2 : second] == "  " and line[second] != " "
    assert line[third - 2 : third] == "  " and line[third] != " "


def test_the_table_groups_the_parameters_of_a_big_model():
  tx = optaxtra.scale_by_adam()
  params = {f"layer_{i:02d}": jnp.zeros(2) for i in range(20)}
  _, report = optaxtra.migrate_state(tx, params, tx.init(params))
  text = str(report)
  assert (
    "ScaleByAdamState/mu/* (20 parameters)  ScaleByAdamState/mu/* (20 parameters)"
    in text
  )
  assert len(text.splitlines()) == 3 + 4  # heading, header, rule; 4 rows
  assert len(report.carried) == 42


def test_migrates_from_declares_a_rename():
  from typing import NamedTuple

  class Before(NamedTuple):
    count: jax.Array
    acc: dict

  @optaxtra.migrates_from((Before, {"acc": "trace"}))
  class After(NamedTuple):
    count: jax.Array
    trace: dict
    extra: jax.Array

  params = {"w": jnp.ones(2)}
  new_tx = optax.GradientTransformation(
    lambda p: After(jnp.int32(0), {"w": jnp.zeros(2)}, jnp.float32(1.0)), None
  )
  old = Before(jnp.int32(7), {"w": jnp.full(2, 0.5)})
  state, report = optaxtra.migrate_state(new_tx, params, old)
  assert int(state.count) == 7 and float(state.trace["w"][0]) == 0.5
  assert report.sources == {
    "After/count": "Before/count",
    "After/trace/w": "Before/acc/w",
  }
  assert report.initialised == ["After/extra"]

  with pytest.raises(ValueError, match=r"Before has no field 'nope'"):
    optaxtra.migrates_from((Before, {"nope": "trace"}))(After)
  with pytest.raises(TypeError, match=r"not a NamedTuple or dataclass"):
    optaxtra.migrates_from(int)


def test_checkpoint_target():
  params = _params()
  tx = _chain()
  _assert_identical(
    jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), optaxtra.checkpoint_target(tx, params)
    ),
    jax.tree.map(jnp.zeros_like, jax.eval_shape(tx.init, params)),
  )
  old = optaxtra.checkpoint_target(tx, params, version="0.2")
  assert [type(s).__name__ for s in old] == [
    "ScaleByAdamaxClippedState_0_2",
    "ScaleByLearningRateState",
    "AddDecayedWeightsDecoupledState_0_2",
  ]
  assert old[0].bias_correction == jax.ShapeDtypeStruct((), jnp.float32)
  with pytest.raises(ValueError, match=r"no layout is known for optaxtra '0.0'"):
    optaxtra.checkpoint_target(tx, params, version="0.0")


# --- Checkpoints of optaxtra 0.2 (Orbax, heavy) ---------------------------------

DATA = Path(__file__).resolve().parent / "data" / "checkpoints_0.2"
NO_BIAS = masks.path_mask(exclude=["bias"])

# Each public transformation of 0.2, as today's optaxtra spells it: the one
# that wrote the checkpoint, and the one that continues it (the same, or its
# successor through migrate_state). Keep in step with make_checkpoints_0.2.py.
WRITTEN_BY_0_2 = {
  "scale_by_adamax_clipped": lambda: optaxtra.scale_by_adamax_clipped(
    b1=0.8, track_clip_fraction=True
  ),
  "scale_by_adam": lambda: optaxtra.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6),
  "scale_by_learning_rate": lambda: optaxtra.scale_by_learning_rate(LR),
  "scale_by_schedule": lambda: optaxtra.scale_by_schedule(lambda n: -0.01 * 0.9**n),
  "add_decayed_weights_decoupled": lambda: optaxtra.add_decayed_weights_decoupled(
    WD, schedule=LR, mask=NO_BIAS
  ),
  "adamax_clipped": lambda: optaxtra.adamax_clipped(
    LR, weight_decay=WD, bias_correction=True, weight_decay_mask=NO_BIAS
  ),
  "adamax_clipped_chain": _chain,
  "average_params": lambda: optaxtra.average_params(
    optaxtra.ema_warmup(0.9), mask=masks.path_mask(exclude=["^embed/"])
  ),
  "reduce_on_plateau": lambda: optaxtra.reduce_on_plateau(0.5, 0),
  "record_norm": lambda: optaxtra.record_norm("grad_norm"),
  "scale_by_path": lambda: optaxtra.scale_by_path(
    {"^head/": 0.1, "kernel": lambda n: 0.5 + 0.1 * n}, default=1.0
  ),
  "layerwise_lr_decay": lambda: optaxtra.layerwise_lr_decay(0.5, 2),
  "with_frozen": lambda: optaxtra.with_frozen(
    optax.chain(optaxtra.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-2)),
    frozen="^embed/",
  ),
}
CONTINUED_AS = {
  "adamax_clipped_chain": lambda: optaxtra.adamax_clipped(LR, weight_decay=WD)
}
# 0.2's public transformations: each has its checkpoint.
PUBLIC_0_2 = [
  "scale_by_adamax_clipped",
  "scale_by_adam",
  "scale_by_learning_rate",
  "scale_by_schedule",
  "add_decayed_weights_decoupled",
  "adamax_clipped",
  "average_params",
  "reduce_on_plateau",
  "record_norm",
  "scale_by_path",
  "layerwise_lr_decay",
  "with_frozen",
]


def _restore(path, target):
  ocp = need("orbax.checkpoint")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target) if target is not None else ckptr.restore(path)


def test_every_public_transformation_of_0_2_has_a_checkpoint():
  assert sorted(p.name for p in DATA.iterdir() if p.is_dir()) == sorted(WRITTEN_BY_0_2)
  assert set(PUBLIC_0_2) <= set(WRITTEN_BY_0_2)


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(WRITTEN_BY_0_2))
def test_a_checkpoint_of_0_2_continues(name):
  written_by = WRITTEN_BY_0_2[name]()
  tx = CONTINUED_AS.get(name, WRITTEN_BY_0_2[name])()
  params = _params()
  spec = jax.eval_shape(_params)
  old = optaxtra.checkpoint_target(written_by, params, version="0.2")
  saved = _restore(
    DATA / name,
    {
      "params": spec,
      "grads": spec,
      "value": jax.ShapeDtypeStruct((), jnp.float32),
      "state": old,
      "updates": spec,
      "next_state": old,
    },
  )
  params, grads = saved["params"], saved["grads"]
  today = jax.eval_shape(tx.init, params)
  if jax.tree.structure(saved["state"]) == jax.tree.structure(today):
    state = saved["state"]  # restored directly into today's state
    _, report = optaxtra.migrate_state(tx, params, state)
    assert report.initialised == report.dropped == []
  else:
    state, report = optaxtra.migrate_state(tx, params, saved["state"])
    assert _harness.avals(state) == _harness.avals(tx.init(params))
    assert all(report.reasons[p] == "not in the old state" for p in report.initialised)
  extra = {"value": saved["value"]} if name == "reduce_on_plateau" else {}
  updates, next_state = jax.jit(tx.update)(grads, state, params, **extra)

  # What 0.2 computed for that update, within the bound between two programs
  # (the same formulas, compiled by another version).
  bound = _harness.cross_program_ulps(2)
  for (path, got), want in zip(
    jax.tree_util.tree_flatten_with_path(updates)[0],
    jax.tree.leaves(saved["updates"]),
    strict=True,
  ):
    _harness.assert_max_ulp(
      got, want, bound, f"{name} updates{jax.tree_util.keystr(path)}"
    )
  # And the state it left, value by value where both have it.
  expected, carried = optaxtra.migrate_state(tx, params, saved["next_state"])
  got_leaves = _leaves_by_path(next_state, tx, params)
  want_leaves = _leaves_by_path(expected, tx, params)
  for path in carried.carried:
    _harness.assert_max_ulp(
      got_leaves[path], want_leaves[path], bound, f"{name} {path}"
    )
  assert len(carried.carried) + len(carried.initialised) == len(got_leaves)


def _leaves_by_path(state, tx, params):
  """Each value of ``state`` by its path, as migrate_state's report spells it."""
  _, report = optaxtra.migrate_state(tx, params, state)
  leaves = jax.tree.leaves(state)
  assert len(leaves) == len(report.carried)
  return dict(zip(report.carried, leaves, strict=True))


@pytest.mark.heavy
def test_a_0_2_checkpoint_restored_without_target_is_refused():
  raw = _restore(DATA / "adamax_clipped_chain", None)
  with pytest.raises(TypeError, match=r"restore against|Restore against"):
    optaxtra.migrate_state(optaxtra.adamax_clipped(LR), _params(), raw["state"])


def test_the_generator_names_the_same_transformations():
  text = (DATA.parent / "make_checkpoints_0.2.py").read_text()
  body = text[text.index("def optimizers") : text.index("def main")]
  written = re.findall(r'^    "(\w+)": ', body, re.M)
  assert sorted(written) == sorted(WRITTEN_BY_0_2)
