"""describe: what an optimizer will do to each parameter, before training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optaxtra
from optaxtra import masks

PARAMS = {
  "embed": jnp.zeros((10, 4)),
  "layer_0": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)},
  "layer_1": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)},
  "head": {"kernel": jnp.zeros((4, 2))},
}
PATHS = masks.paths(PARAMS)


def _rows(tx, params=PARAMS):
  d = optaxtra.describe(tx, params)
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
    "decay",
    "lr_mult",
    "group",
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
