"""The one hyperparameter resolver: the same checks, in the same words, everywhere.

Each case is one a user met in 0.2, where a stage accepted it or another
stage said it differently; here every stage goes through
``optaxtra/_core/hyper.py``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra
from optaxtra._core import hyper

PARAMS = {"w": jnp.ones(2)}


@pytest.mark.parametrize(
  ("make", "error", "match"),
  [
    # Finite as a Python float, inf in float32: refused where it is used.
    (lambda: optaxtra.scale_by_path({"w": 1e39}), ValueError, "overflows float32"),
    (
      lambda: optaxtra.set_learning_rate_scale(optaxtra.adamw(1e-3).init(PARAMS), 1e39),
      ValueError,
      "overflows float32",
    ),
    # Below 1 as a Python float, 1.0 in float32: the average would never move.
    (lambda: optaxtra.average_params(0.99999999), ValueError, "is 1.0 in float32"),
    (lambda: optaxtra.scale_by_adam(b2=0.99999999), ValueError, "is 1.0 in float32"),
    # A schedule that is bad at step 0 is refused at init, by every stage.
    (
      lambda: optaxtra.scale_by_learning_rate(lambda n: jnp.inf).init(PARAMS),
      ValueError,
      r"learning_rate is inf at step 0",
    ),
    (
      lambda: optaxtra.scale_by_learning_rate(lambda n: jnp.nan).init(PARAMS),
      ValueError,
      r"learning_rate is nan at step 0",
    ),
    (
      lambda: optaxtra.scale_by_path({"w": lambda n: jnp.inf}).init(PARAMS),
      ValueError,
      r"is inf at step 0",
    ),
    (
      lambda: optaxtra.average_params(lambda n: jnp.nan).init(PARAMS),
      ValueError,
      r"decay is nan at step 0",
    ),
    # NumPy integers are integers everywhere; floats never are.
    (
      lambda: optaxtra.reduce_on_plateau(patience=2.0),
      TypeError,
      "patience must be an int",
    ),
  ],
)
def test_refused_the_same_way_everywhere(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_numpy_scalars_are_numbers_everywhere():
  optaxtra.layerwise_lr_decay(0.5, np.int64(2), default=1.0)
  optaxtra.reduce_on_plateau(patience=np.int32(3), factor=np.float32(0.5))
  optaxtra.scale_by_adam(b1=np.float64(0.9))
  optaxtra.adamw(np.float32(1e-3), weight_decay=np.float64(0.0))


def test_real_and_integer():
  assert hyper.real("f", "x", np.float32(0.5), low=0.0, high=1.0) == 0.5
  assert hyper.integer("f", "n", np.int64(7)) == 7
  for bad, error in [(True, TypeError), ("1", TypeError), (1 + 2j, TypeError)]:
    with pytest.raises(error, match="f: x"):
      hyper.real("f", "x", bad)
  with pytest.raises(TypeError, match=r"x arrived as bfloat16"):
    hyper.real("f", "x", jnp.asarray(0.999, jnp.bfloat16))
  for bad in (3.0, True, "3", np.ones(2, int)):
    with pytest.raises(TypeError, match="f: n must be an int"):
      hyper.integer("f", "n", bad)
  with pytest.raises(
    ValueError, match=r"n must be an int in \[1, 2\*\*31 - 1\], got 4294967296"
  ):
    hyper.integer("f", "n", 2**32, low=1)  # never wrapped to an int32


def test_a_traced_value_out_of_range_is_a_visible_nan():
  h = hyper.resolve("f", "lr", lambda n: 0.1 - 0.05 * n, low=0.0)
  assert float(h(0)) == np.float32(0.1)
  with pytest.raises(ValueError, match=r"f: lr is -0.05\d* at step 3"):
    h(jnp.int32(3))
  assert np.isnan(float(jax.jit(h)(jnp.int32(3))))
  assert float(jax.jit(h)(jnp.int32(1))) == np.float32(0.05)  # in range: unchanged


def test_by_path_rules_are_strict_and_keep_flags():
  paths = ["enc/LayerNorm/scale", "enc/dense/kernel", "head/kernel"]
  rule = optaxtra.by_path({re.compile("layernorm", re.I): 0.0}, default=1e-2)
  assert rule.assign("f", "weight_decay", paths) == [0, 1, 1]
  with pytest.raises(ValueError, match=r"rule 'bias\|' matches the empty string"):
    optaxtra.by_path({"bias|": 0.0}, default=1.0).assign("f", "wd", paths)
  with pytest.raises(ValueError, match=r"pattern '\[' is not a valid regular"):
    optaxtra.by_path({"[": 0.0})
  with pytest.raises(TypeError, match="every rule must be a \\(pattern, value\\) pair"):
    optaxtra.by_path([("a", 1.0, 2.0)])
  with pytest.raises(TypeError, match="is itself a by_path"):
    optaxtra.by_path({"a": optaxtra.by_path({"b": 1.0})})


def test_a_stage_without_values_by_path_says_so():
  with pytest.raises(TypeError, match="f: x does not take values by path"):
    hyper.resolve("f", "x", optaxtra.by_path({"w": 0.9}))
  # optax's own transformations know nothing of by_path: use optaxtra's.
  with pytest.raises(TypeError):
    optax.sgd(optaxtra.by_path({"w": 0.1})).update(PARAMS, optax.sgd(0.1).init(PARAMS))


def test_average_decay_by_path():
  params = {"fast": jnp.zeros(2), "slow": jnp.zeros(2)}
  tx = optaxtra.average_params(optaxtra.by_path({"^fast": 0.5}, default=0.9))
  state = tx.init(params)
  ones = jax.tree.map(jnp.ones_like, params)
  _, state = jax.jit(tx.update)(ones, state, params)
  avg = optaxtra.averaged_params(state, ones)
  np.testing.assert_array_equal(avg["fast"], np.float32(0.5))
  np.testing.assert_array_equal(avg["slow"], 1 - np.float32(0.9))
  assert set(state.decay) == {"[^fast]", "[default]"}
