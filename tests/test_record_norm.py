"""record_norm: the updates unchanged, their global L2 norm recorded."""

from __future__ import annotations

import copy
import pickle

import _harness
import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra

SHAPES = {**ref.SHAPES, "v": (7,)}
STEPS = 10
# The norm of bfloat16 updates is computed from their exact values in float32.
RTOL = {"float32": 1e-6, "bfloat16": 1e-6, "float64": 1e-14}


def _grads(dtype, steps=STEPS):
  return _harness.grads(dtype, 6, steps, SHAPES)


def _params(dtype):
  return _harness.normal_params(dtype, 7, SHAPES)


def _norm64(tree):
  """The global L2 norm in float64 NumPy."""
  return float(np.sqrt(sum(np.sum(np.abs(ref.f64(x)) ** 2) for x in tree.values())))


def test_norm_and_updates(float_dtype, maybe_jit):
  tx = optaxtra.record_norm()
  state = maybe_jit(tx.init)(_params(float_dtype))
  norm_dtype = jnp.promote_types(float_dtype, jnp.float32)
  assert state.norm.dtype == norm_dtype and float(state.norm) == 0.0
  update = maybe_jit(tx.update)
  for n, g in enumerate(_grads(float_dtype)):
    updates, state = update(g, state)
    for k in SHAPES:  # passed through unchanged
      assert updates[k].dtype == g[k].dtype
      np.testing.assert_array_equal(np.asarray(updates[k]), np.asarray(g[k]))
    assert state.norm.dtype == norm_dtype and int(state.count) == n + 1
    np.testing.assert_allclose(
      float(state.norm), _norm64(g), rtol=RTOL[float_dtype.name], err_msg=f"step {n}"
    )


def test_complex_updates_norm_of_modulus():
  rng = np.random.default_rng(0)
  z = (rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))).astype(np.complex64)
  g = {"z": jnp.asarray(z), "r": jnp.asarray([3.0, -4.0])}
  tx = optaxtra.record_norm()
  updates, state = jax.jit(tx.update)(g, tx.init(g))
  assert state.norm.dtype == jnp.float32 and updates["z"].dtype == jnp.complex64
  want = np.sqrt(np.sum(np.abs(z.astype(np.complex128)) ** 2) + 25.0)
  np.testing.assert_allclose(float(state.norm), want, rtol=1e-6)


def test_norm_dtype_is_fixed_by_init(x64):
  """float64 updates of float32 params: computed in float64, stored as float32."""
  tx = optaxtra.record_norm()
  state = tx.init({"w": jnp.zeros(3, jnp.float32)})
  g = {"w": jnp.asarray([1.0, 2.0, 2.0 + 1e-12], jnp.float64)}
  _, new = tx.update(g, state)
  _harness.assert_same_avals(state, new, "state")
  assert float(new.norm) == 3.0
  # float64 params: float64 norm, with digits float32 would lose.
  state = tx.init({"w": jnp.zeros(3, jnp.float64)})
  _, new = tx.update(g, state)
  assert new.norm.dtype == jnp.float64
  np.testing.assert_allclose(float(new.norm), np.sqrt(9 + 4e-12), rtol=1e-15)
  assert float(new.norm) != 3.0


def test_empty_tree():
  tx = optaxtra.record_norm()
  updates, state = tx.update({}, tx.init({}))
  assert updates == {} and float(state.norm) == 0.0


def test_inspect_reports_the_name():
  params = _params(jnp.float32)
  g = _grads(jnp.float32, 1)[0]
  tx = optax.chain(
    optaxtra.record_norm("grad_norm"),
    optax.clip_by_global_norm(1.0),
    optax.sgd(0.1),
    optaxtra.record_norm("update_norm"),
  )
  state = tx.init(params)
  info = optaxtra.inspect(state)
  assert float(info["grad_norm"]) == 0.0 and float(info["update_norm"]) == 0.0
  for jit in (False, True):
    _, s = (jax.jit(tx.update) if jit else tx.update)(g, state)
    info = optaxtra.inspect(s)
    np.testing.assert_allclose(float(info["grad_norm"]), _norm64(g), rtol=1e-6)
    np.testing.assert_allclose(float(info["update_norm"]), 0.1, rtol=1e-6)
    traced = jax.jit(optaxtra.inspect)(s)
    assert float(traced["grad_norm"]) == float(info["grad_norm"])
  # The default name, and one name twice: reported under each path.
  assert "grad_norm" in optaxtra.inspect(optaxtra.record_norm().init(params))
  twice = optax.chain(optaxtra.record_norm("n"), optaxtra.record_norm("n"))
  assert {"0/n", "1/n"} <= set(optaxtra.inspect(twice.init(params)))


def test_state_classes():
  a, b = optaxtra.record_norm("a").init(None), optaxtra.record_norm("b").init(None)
  assert isinstance(a, optaxtra.RecordNormState)
  assert isinstance(b, optaxtra.RecordNormState)
  assert type(a) is type(optaxtra.record_norm("a").init(None))  # one per name
  assert type(a) is not type(b) and type(a).name == "a"
  assert a._fields == b._fields == ("count", "norm")
  # Same leaves for every name; the name is in the tree's structure.
  assert jax.tree.structure(a) != jax.tree.structure(b)
  assert [x.dtype for x in jax.tree.leaves(a)] == [x.dtype for x in jax.tree.leaves(b)]
  for back in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
    assert type(back) is type(a)
    assert jax.tree.structure(back) == jax.tree.structure(a)
  shapes = jax.eval_shape(optaxtra.record_norm("a").init, {"w": jnp.zeros(2)})
  assert type(shapes) is type(a)
  assert "RecordNormState" in repr(a)


@pytest.mark.sweep(quick=["bfloat16"])
def test_check_transformation(float_dtype):
  params = _params(float_dtype)
  optaxtra.testing.check_transformation(optaxtra.record_norm(), params)
  optaxtra.testing.check_transformation(
    optax.chain(optaxtra.record_norm(), optax.adam(1e-3), optaxtra.record_norm("u")),
    params,
  )


@pytest.mark.sweep(quick=["float32", "float64"])
def test_contract(float_dtype):
  """Dtypes kept, state stable, one trace for 10 jitted steps, lax.scan."""
  tx = optaxtra.record_norm()
  _harness.check_contract(tx, _params(float_dtype), _grads(float_dtype))


def test_scan_records_each_norm():
  grads = _grads(jnp.float32)
  tx = optaxtra.record_norm()
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

  def body(state, g):
    _, state = tx.update(g, state)
    return state, state.norm

  final, norms = jax.jit(lambda s, gs: jax.lax.scan(body, s, gs))(
    tx.init(_params(jnp.float32)), stacked
  )
  np.testing.assert_allclose(norms, [_norm64(g) for g in grads], rtol=1e-6)
  assert int(final.count) == STEPS


def test_count_saturates():
  _harness.check_count_saturates(
    optaxtra.record_norm(), _params(jnp.float32), _grads(jnp.float32)
  )


@pytest.mark.parametrize(
  ("name", "error", "match"),
  [
    ("", TypeError, "name must be a non-empty string"),
    (None, TypeError, "name must be a non-empty string"),
    (3, TypeError, "name must be a non-empty string"),
    ("grad/norm", ValueError, "must not contain '/'"),
    ("count", ValueError, "'count' is one that optaxtra.inspect gives a meaning"),
    ("learning_rate", ValueError, "gives a meaning of its own"),
  ],
)
def test_bad_names(name, error, match):
  with pytest.raises(error, match=match):
    optaxtra.record_norm(name)


def test_refuses_other_states_and_integer_updates():
  tx = optaxtra.record_norm("a")
  with pytest.raises(
    TypeError,
    match=r"expected the state made by its init, .*RecordNormState\['a'\], got "
    r"another class of the same name",
  ):
    tx.update(jnp.ones(2), optaxtra.record_norm("b").init(None))
  with pytest.raises(TypeError, match="has dtype int32"):
    tx.update({"w": jnp.ones(2, jnp.int32)}, tx.init(None))
