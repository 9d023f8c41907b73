"""describe: what an optimizer will do to each parameter, before training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from _deps import need

import optaxtra
from optaxtra import masks

PARAMS = {
  "embed": jnp.zeros((10, 4)),
  "layer_0": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)},
  "layer_1": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)},
  "head": {"kernel": jnp.zeros((4, 2))},
}
PATHS = masks.paths(PARAMS)


def _rows(tx, params=PARAMS, **kwargs):
  d = optaxtra.describe(tx, params, **kwargs)
  assert [r["path"] for r in d.rows] == masks.paths(params)
  return {r["path"]: r for r in d.rows}


def _col(rows, name):
  return {p: r[name] for p, r in rows.items()}


def test_frozen_and_decay_excluded_with_the_ready_made_optimizer():
  tx = optaxtra.with_frozen(
    optaxtra.adamax_clipped(
      optax.linear_schedule(0.0, 1e-3, 10),  # a warmup from 0 moves at step 2
      weight_decay=1e-2,
      weight_decay_mask=masks.path_mask(exclude=["bias"]),
    ),
    frozen="^embed",
  )
  rows = _rows(tx)
  assert _col(rows, "trainable") == {p: p != "embed" for p in PATHS}
  assert _col(rows, "weight_decay") == {
    p: p != "embed" and not p.endswith("bias") for p in PATHS
  }
  assert _col(rows, "group") == {
    p: "frozen" if p == "embed" else "trainable" for p in PATHS
  }
  # mu and nu in float32 for the trainable ones, nothing for the frozen one.
  assert rows["layer_0/kernel"]["state_bytes"] == 2 * 16 * 4
  assert rows["embed"]["state_bytes"] == 0
  assert rows["head/kernel"]["shape"] == (4, 2)
  assert rows["head/kernel"]["dtype"] == "float32"


def test_optax_adamw_with_a_mask_and_coupled_decay():
  mask = masks.path_mask(include=["kernel"])
  rows = _rows(optax.adamw(1e-3, weight_decay=1e-4, mask=mask))
  assert _col(rows, "weight_decay") == {p: p.endswith("kernel") for p in PATHS}
  assert all(_col(rows, "trainable").values())
  assert set(_col(rows, "lr_multiplier").values()) == {1.0}
  # L2 regularisation before Adam (coupled) also counts as decay.
  rows = _rows(
    optax.chain(optax.add_decayed_weights(1e-4, mask=mask), optax.adam(1e-3))
  )
  assert _col(rows, "weight_decay") == {p: p.endswith("kernel") for p in PATHS}


def test_partition_groups_and_a_stateless_group():
  labels = masks.path_labels({"^layer_": "body"}, default="rest")
  tx = optax.transforms.partition(
    {"body": optax.adam(1e-3), "rest": optax.sgd(1.0)}, labels
  )
  rows = _rows(tx)
  assert _col(rows, "group") == {
    p: "body" if p.startswith("layer_") else "rest" for p in PATHS
  }
  assert rows["layer_0/bias"]["state_bytes"] == 2 * 4 * 4
  assert rows["head/kernel"]["state_bytes"] == 0
  # Two groups without per-parameter state cannot be told apart: an error.
  tx = optax.multi_transform(
    {"a": optax.sgd(1.0), "b": optax.sgd(0.1), "c": optax.adam(1.0)},
    masks.path_labels({"^embed": "a", "^head": "b"}, default="c"),
  )
  with pytest.raises(ValueError, match=r"cannot tell which of the groups \['a', 'b'\]"):
    optaxtra.describe(tx, PARAMS)


def test_multipliers_layerwise_decay_and_a_zero_multiplier():
  tx = optax.chain(
    optax.adam(1e-3),
    optaxtra.layerwise_lr_decay(0.5, 2),
    optaxtra.scale_by_path({"^head/": 0.0}, default=1.0),
  )
  rows = _rows(tx)
  assert _col(rows, "lr_multiplier") == {
    "embed": 0.125,
    "head/kernel": 0.0,
    "layer_0/bias": 0.25,
    "layer_0/kernel": 0.25,
    "layer_1/bias": 0.5,
    "layer_1/kernel": 0.5,
  }
  assert _col(rows, "trainable") == {p: p != "head/kernel" for p in PATHS}
  # In with_frozen's trainable group the multipliers map to that group's leaves.
  tx = optaxtra.with_frozen(
    optax.chain(optax.adam(1e-3), optaxtra.scale_by_path({"bias": 2.0}, default=1.0)),
    frozen="^embed",
  )
  rows = _rows(tx)
  assert _col(rows, "lr_multiplier") == {
    p: 2.0 if p.endswith("bias") else 1.0 for p in PATHS
  }


@pytest.mark.skipif(
  not hasattr(optax.transforms, "freeze"), reason="optax.transforms.freeze: 0.2.5+"
)
def test_optax_freeze_and_shape_structs():
  frozen = masks.path_mask(include=["^embed"])
  tx = optax.chain(
    optax.adam(1e-3),
    optax.transforms.freeze(frozen),  # pyright: ignore[reportAttributeAccessIssue]
  )
  shapes = jax.eval_shape(lambda: PARAMS)
  rows = _rows(tx, shapes)
  assert _col(rows, "trainable") == {p: p != "embed" for p in PATHS}


def test_optax_masked_passes_masked_out_updates_through():
  # optax.masked passes the masked-out updates through unchanged: they move
  # by the raw gradient, which describe shows (trainable, no Adam state).
  tx = optax.masked(optax.adam(1e-3), masks.path_mask(exclude=["^embed"]))
  rows = _rows(tx)
  assert rows["embed"]["trainable"] and rows["embed"]["state_bytes"] == 0
  assert rows["layer_0/kernel"]["state_bytes"] == 2 * 16 * 4


def test_the_table_and_the_refusals():
  d = optaxtra.describe(optaxtra.adamax_clipped(1e-3, weight_decay=1e-2), PARAMS)
  lines = str(d).splitlines()
  assert lines[0].split() == [
    "path",
    "shape",
    "dtype",
    "trainable",
    "lr",
    "decay",
    "state_bytes",
  ]
  assert len(lines) == 2 + len(PATHS)
  assert lines[2].split()[:2] == ["embed", "10x4"]
  with pytest.raises(ValueError, match="no parameter moved"):
    optaxtra.describe(optax.sgd(0.0), PARAMS)
  with pytest.raises(ValueError, match="could not run the optimizer"):
    optaxtra.describe(optax.contrib.reduce_on_plateau(), PARAMS)
  with pytest.raises(ValueError, match="no leaves"):
    optaxtra.describe(optax.adam(1e-3), {})


# --- learning rates and decay rates per leaf, at a step ---------------------------

SMALL = {
  "layer_0": {"w": jnp.zeros(2)},
  "layer_1": {"w": jnp.zeros(2)},
  "head": jnp.zeros(2),
}


def test_a_misplaced_layer_stage_shows_in_the_decay_rate():
  sched = optax.linear_schedule(1e-2, 0.0, 100)
  lr_at_50 = 5e-3
  blocks = (
    optaxtra.scale_by_adamax_clipped(),
    optaxtra.scale_by_learning_rate(sched),
  )
  decay = optaxtra.add_decayed_weights_decoupled(0.1, schedule=sched)
  layers = optaxtra.layerwise_lr_decay(0.5, 2)  # layer_0: 0.25, layer_1: 0.5
  after = _rows(optax.chain(*blocks, decay, layers), SMALL, step=50)
  before = _rows(optax.chain(*blocks, layers, decay), SMALL, step=50)
  mult = {"layer_0/w": 0.25, "layer_1/w": 0.5, "head": 1.0}
  for p, m in mult.items():
    # The learning rate at step 50, every multiplier included, either way.
    assert after[p]["learning_rate"] == pytest.approx(lr_at_50 * m, rel=1e-6)
    assert before[p]["learning_rate"] == after[p]["learning_rate"]
    # Placed after the decay stage, the multipliers scale the decay too.
    assert after[p]["decay_rate"] == pytest.approx(0.1 * lr_at_50 * m, rel=1e-6)
    assert before[p]["decay_rate"] == pytest.approx(0.1 * lr_at_50, rel=1e-6)


def test_values_by_path_betas_and_a_coupled_decay():
  lr = optaxtra.by_path({"^head": 1e-2, "w$": 5e-3}, default=1e-3)  # head first
  wd = optaxtra.by_path({"^layer_0/": 0.0}, default=0.1)
  rows = _rows(
    optax.chain(
      optaxtra.scale_by_learning_rate(lr),
      optaxtra.add_decayed_weights_decoupled(wd, schedule=None),
    ),
    {**SMALL, "head": {"w": jnp.zeros(2)}},
  )
  assert _col(rows, "learning_rate") == pytest.approx(
    {"head/w": 1e-2, "layer_0/w": 5e-3, "layer_1/w": 5e-3}
  )
  assert _col(rows, "decay_rate") == pytest.approx(
    {"head/w": 0.1, "layer_0/w": 0.0, "layer_1/w": 0.1}
  )
  assert not rows["layer_0/w"]["weight_decay"]
  # inject_hyperparams' learning rate and betas; a decay in Adam's gradient
  # has no share per step (NaN), optax.sgd's has lr * wd.
  sched = optax.linear_schedule(0.2, 0.0, 10)  # 0.1 at step 5: its own count set
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=sched, b1=0.8)
  row = _rows(optax.chain(optax.add_decayed_weights(1e-2), tx), SMALL, step=5)["head"]
  assert (row["learning_rate"], row["b1"], row["b2"]) == pytest.approx(
    (0.1, 0.8, 0.999)
  )
  assert row["weight_decay"] and math.isnan(row["decay_rate"])
  row = _rows(optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1)), SMALL)
  assert row["head"]["decay_rate"] == pytest.approx(1e-3)
  assert row["head"]["learning_rate"] is None  # Optax's own stage records none
  assert "b1" not in row["head"]


def test_step_wrappers_and_what_the_average_reads():
  inner = optaxtra.scale_by_learning_rate(optax.linear_schedule(1e-2, 0.0, 10))
  d = optaxtra.describe(optax.MultiSteps(inner, every_k_schedule=3), SMALL, step=5)
  assert d.step == 5 and "every 3 calls" in str(d)
  assert d.rows[0]["learning_rate"] == pytest.approx(5e-3)  # the inner update's
  assert optaxtra.describe(inner, SMALL).rows[0]["learning_rate"] == pytest.approx(1e-2)
  d = optaxtra.describe(optaxtra.skip_bad_steps(inner), SMALL)
  assert "skip_bad_steps" in str(d) and all(r["trainable"] for r in d.rows)
  tx = optax.chain(
    inner, optaxtra.average_params(0.99, mask=masks.path_mask(include=["^layer"]))
  )
  assert _col(_rows(tx, SMALL), "averaged") == {
    "head": False,
    "layer_0/w": True,
    "layer_1/w": True,
  }
  with pytest.raises(TypeError, match=r"step must be an int"):
    optaxtra.describe(inner, SMALL, step=1.0)


def test_the_findings_on_trees_and_arguments():
  # A single array: its moments are its state.
  (row,) = optaxtra.describe(optax.adam(1e-3), jnp.zeros((3, 4))).rows
  assert row["path"] == "" and row["state_bytes"] == 2 * 12 * 4
  # A parameter named count is not charged the optimizer's count.
  rows = _rows(optax.adam(1e-3), {"count": jnp.zeros(()), "w": jnp.zeros(3)})
  assert rows["count"]["state_bytes"] == 2 * 4
  # The factory, not a transformation.
  with pytest.raises(TypeError, match=r"function optax.adam.*optax.adam\(1e-3\)"):
    optaxtra.describe(optax.adam, SMALL)  # pyright: ignore[reportArgumentType]


@pytest.mark.heavy
def test_flax_paths_are_the_masks_paths():
  nnx = need("flax.nnx")
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  rows = _rows(optax.adam(1e-3), state)
  assert set(rows) == {"bias", "kernel"}
  assert rows["kernel"]["state_bytes"] == 2 * 6 * 4
  # linen's partitioning boxes are looked through too.
  linen = need("flax.linen")
  boxed = {"dense": {"kernel": linen.Partitioned(jnp.zeros((2, 3)), names=("a", "b"))}}
  rows = _rows(optax.adam(1e-3), boxed)
  assert set(rows) == {"dense/kernel"} and rows["dense/kernel"]["shape"] == (2, 3)
