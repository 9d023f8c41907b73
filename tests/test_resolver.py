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
from _harness import assert_max_ulp, cross_program_ulps

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


# --- Cases an independent review found -------------------------------------------


def test_values_by_path_inside_wrappers_that_hide_parameters():
  p = {"head": {"w": jnp.ones(2)}, "body": {"w": jnp.ones(2)}}
  tx = optaxtra.with_frozen(
    optaxtra.adamw(optaxtra.by_path({"^head/": 1e-3})), frozen="^body/"
  )
  u, _ = tx.update(p, tx.init(p), p)
  np.testing.assert_array_equal(u["body"]["w"], 0.0)
  q = {"w": jnp.ones(2), "b": jnp.ones(2)}
  tx = optax.masked(
    optaxtra.scale_by_learning_rate(optaxtra.by_path({"w": 0.1})),
    {"w": True, "b": False},
  )
  u, _ = tx.update(q, tx.init(q), q)
  np.testing.assert_array_equal(u["w"], -np.float32(0.1))
  np.testing.assert_array_equal(u["b"], 1.0)
  tx = optax.masked(
    optaxtra.average_params(optaxtra.by_path({"w": 0.5})), {"w": True, "b": False}
  )
  tx.update(q, tx.init(q), q)


def test_masks_are_checked_when_the_optimizer_is_built():
  q = {"w": jnp.ones(2), "b": jnp.ones(2)}
  typo = optaxtra.masks.path_mask(exclude=["typo"])
  for tx in (
    optaxtra.adamw(1e-3, weight_decay_mask=typo),
    optaxtra.adamax_clipped(1e-3, weight_decay=1e-2, weight_decay_mask=typo),
  ):
    with pytest.raises(ValueError, match="exclude pattern 'typo' matches no"):
      tx.init(q)


def test_narrow_learning_rates_are_fine_narrow_decay_rates_are_not():
  b = {"w": jnp.ones(2, jnp.bfloat16)}
  tx = optax.inject_hyperparams(optaxtra.scale_by_learning_rate)(learning_rate=0.1)
  u, _ = tx.update(b, tx.init(b))
  assert u["w"].dtype == jnp.bfloat16
  tx = optax.inject_hyperparams(optaxtra.add_decayed_weights_decoupled)(
    weight_decay=0.1, schedule=None
  )
  tx.update(b, tx.init(b), b)
  with pytest.raises(TypeError, match="b2 arrived as bfloat16"):
    optaxtra.scale_by_adam(b2=jnp.asarray(0.999, jnp.bfloat16))


def test_a_rule_named_default_is_refused_beside_a_default():
  with pytest.raises(ValueError, match="share its label '\\[default\\]'"):
    optaxtra.by_path({"default": 0.1}, default=0.2)
  optaxtra.by_path({"default": 0.1})  # no default= given: no clash


def test_under_x64_ranges_are_checked_in_float32_and_eager_equals_jit(x64):
  with pytest.raises(ValueError, match=r"is 1\.0 in float32"):
    optaxtra.scale_by_adam(b2=0.99999999)
  p = {"w": jnp.asarray(np.random.default_rng(0).normal(size=5))}
  tx = optaxtra.adamw(optax.linear_schedule(1e-2, 0.0, 100), weight_decay=0.1)
  theirs = optax.adamw(optax.linear_schedule(1e-2, 0.0, 100), weight_decay=0.1)
  s = tx.init(p)
  eager, _ = tx.update(p, s, p)
  jitted, _ = jax.jit(tx.update)(p, s, p)
  # Two programs (op by op, and fused): an ulp apart at most, where a rate
  # rounded to float32 on one side only put them 1e-8 apart.
  assert_max_ulp(eager["w"], jitted["w"], cross_program_ulps(0))
  optax_u, _ = theirs.update(p, theirs.init(p), p)
  # Optax's formula in float64: the rate wd * lr is not rounded to float32.
  np.testing.assert_allclose(eager["w"], optax_u["w"], rtol=1e-14)
