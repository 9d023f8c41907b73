"""Checks every optaxtra transformation must pass, shared by the core tests.

Each helper runs a transformation and asserts one property of the contract in
DESIGN.md: updates keep the gradients' dtype; the state keeps its structure,
shapes and dtypes (so ``lax.scan`` works and a second jitted update does not
recompile); ``count`` is int32 and saturates; ``optax.inject_hyperparams``
gives the same results, with the hyperparameters traced under ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax

INT32_MAX = 2**31 - 1


def as_dtype(tree: Any, dtype: Any) -> Any:
  """A NumPy/JAX tree as JAX arrays of ``dtype``."""
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def grads(dtype: Any, seed: int, steps: int, shapes: Any = None) -> list[Any]:
  """``steps`` gradient trees from ``_reference.spiky_grads``, as ``dtype``."""
  shapes = ref.SHAPES if shapes is None else shapes
  return [as_dtype(g, dtype) for g in ref.spiky_grads(seed, shapes, steps)]


def normal_params(dtype: Any, seed: int, shapes: Any) -> dict[str, jax.Array]:
  """Standard-normal params of ``shapes`` (a name -> shape dict), as ``dtype``."""
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def run(
  tx: optax.GradientTransformation,
  params: Any,
  grads: Sequence[Any],
  *,
  jit: bool,
  apply: bool = False,
) -> tuple[list[Any], list[Any], list[Any]]:
  """Runs ``tx`` over ``grads``: lists of updates, states and params.

  ``states[0]`` is the initial state and ``states[i + 1]`` the one after the
  ``i``-th update. With ``apply`` the params move by the updates (needed for
  weight decay to see them change); otherwise they stay fixed.
  """
  update = jax.jit(tx.update) if jit else tx.update
  init = jax.jit(tx.init) if jit else tx.init
  state = init(params)
  updates_seq, states, params_seq = [], [state], [params]
  for g in grads:
    updates, state = update(g, state, params)
    if apply:
      params = optax.apply_updates(params, updates)
    updates_seq.append(updates)
    states.append(state)
    params_seq.append(params)
  return updates_seq, states, params_seq


def avals(tree: Any) -> Any:
  """Structure, shape, dtype and weak type of every leaf (what jit keys on)."""
  return jax.tree.map(
    lambda x: (jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)), tree
  )


def assert_same_avals(a: Any, b: Any, what: str) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b), (
    f"{what}: tree changed\n{jax.tree.structure(a)}\n{jax.tree.structure(b)}"
  )
  for (path, x), y in zip(
    jax.tree_util.tree_flatten_with_path(avals(a))[0],
    jax.tree.leaves(avals(b)),
    strict=True,
  ):
    assert x == y, f"{what}: {jax.tree_util.keystr(path)} changed from {x} to {y}"


def check_contract(
  tx: optax.GradientTransformation,
  params: Any,
  grads: Sequence[Any],
) -> None:
  """Dtype, state stability, no recompilation and ``lax.scan`` (10 steps)."""
  assert len(grads) >= 10
  grads = list(grads[:10])
  # Eagerly: updates keep the gradients' dtype, the state its avals.
  state0 = tx.init(params)
  updates, state = tx.update(grads[0], state0, params)
  assert_same_avals(jax.tree.map(jnp.asarray, grads[0]), updates, "updates (eager)")
  assert_same_avals(state0, state, "state after one update (eager)")

  # Under jit: ten updates trace once, keep dtypes and the state's avals.
  traces = []

  def update(g, state, p):
    traces.append(None)
    return tx.update(g, state, p)

  jitted = jax.jit(update)
  state = jax.jit(tx.init)(params)
  assert_same_avals(state0, state, "state from jitted init")
  loop = []
  for g in grads:
    updates, new_state = jitted(g, state, params)
    assert_same_avals(jax.tree.map(jnp.asarray, g), updates, "updates (jit)")
    assert_same_avals(state, new_state, "state across steps (jit)")
    loop.append(updates)
    state = new_state
  assert len(traces) == 1, f"update was traced {len(traces)} times in 10 calls"
  assert jitted._cache_size() == 1

  # lax.scan over 10 steps (needs an identical carry) gives the loop's result.
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

  def body(state, g):
    updates, state = tx.update(g, state, params)
    return state, updates

  final, scanned = jax.jit(lambda s, gs: jax.lax.scan(body, s, gs))(state0, stacked)
  assert_same_avals(state, final, "scan carry")
  for i, u in enumerate(loop):
    for x, y in zip(
      _f64(jax.tree.map(lambda x, i=i: x[i], scanned)), _f64(u), strict=True
    ):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=0, err_msg=f"scan step {i}")


def _f64(tree: Any) -> list[np.ndarray]:
  return [np.asarray(x).astype(np.float64) for x in jax.tree.leaves(tree)]


def set_counts(state: Any, value: int) -> Any:
  """``state`` with every ``count`` field (at any depth) set to ``value``."""

  def leaf(path, x):
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "count":
      return jnp.asarray(value, jnp.int32)
    return x

  return jax.tree_util.tree_map_with_path(leaf, state)


def counts(state: Any) -> list[jax.Array]:
  """Every ``count`` field of ``state``."""
  out = []

  def leaf(path, x):
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "count":
      out.append(x)
    return x

  jax.tree_util.tree_map_with_path(leaf, state)
  return out


def check_count_saturates(
  tx: optax.GradientTransformation, params: Any, grads: Sequence[Any]
) -> None:
  """From ``count = 2**31 - 2``, two updates leave it at ``2**31 - 1``."""
  for jit in (False, True):
    update = jax.jit(tx.update) if jit else tx.update
    state = set_counts(tx.init(params), INT32_MAX - 1)
    assert counts(state), "the state has no count field"
    for g in grads[:2]:
      updates, state = update(g, state, params)
      for c in counts(state):
        assert c.dtype == jnp.int32
        assert int(c) == INT32_MAX, int(c)
      for u in jax.tree.leaves(updates):
        assert np.all(np.isfinite(np.asarray(u, np.float64)))


def check_inject(
  factory: Callable[..., optax.GradientTransformation],
  kwargs: dict[str, Any],
  params: Any,
  grads: Sequence[Any],
  *,
  changed: dict[str, Any] | None = None,
  rtol: float = 0.0,
  **inject_kwargs: Any,
) -> None:
  """``optax.inject_hyperparams(factory)(**kwargs)`` gives the same results.

  Eagerly and under ``jax.jit`` (where the numeric hyperparameters are
  traced). With ``changed``, the hyperparameters are then overwritten in the
  state and the jitted update must follow them, without recompiling, as a
  fresh ``factory(**kwargs, **changed)`` does.
  """
  for jit in (False, True):
    plain, _, _ = run(factory(**kwargs), params, grads, jit=jit)
    injected_tx = optax.inject_hyperparams(factory, **inject_kwargs)(**kwargs)
    injected, _, _ = run(injected_tx, params, grads, jit=jit)
    for i, (a, b) in enumerate(zip(plain, injected, strict=True)):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(
          np.asarray(y, np.float64),
          np.asarray(x, np.float64),
          rtol=rtol,
          atol=0,
          err_msg=f"step {i}, jit={jit}",
        )
  if not changed:
    return
  injected_tx = optax.inject_hyperparams(factory, **inject_kwargs)(**kwargs)
  update = jax.jit(injected_tx.update)
  state = injected_tx.init(params)
  _, state = update(grads[0], state, params)
  for k, v in changed.items():
    state.hyperparams[k] = jnp.asarray(v, state.hyperparams[k].dtype)
  got, _ = update(grads[1], state, params)
  assert update._cache_size() == 1, "changing a hyperparameter recompiled"
  fresh = factory(**{**kwargs, **changed})
  # Replay the first step with the old values, then one with the new ones.
  old = factory(**kwargs)
  s_old = old.init(params)
  _, s_old = old.update(grads[0], s_old, params)
  want, _ = fresh.update(grads[1], s_old, params)
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(
      np.asarray(y, np.float64), np.asarray(x, np.float64), rtol=max(rtol, 1e-6)
    )


def assert_close(
  actual: Any,
  desired: Any,
  rtol: float,
  scale: Any = None,
  err_msg: str = "",
  *,
  atol: float = 0.0,
) -> None:
  """``|actual - desired| <= rtol * max(|desired|, |scale|) + atol`` entrywise.

  A moving average ``b * m + (1 - b) * g`` that cancels to near zero carries
  rounding errors the size of its terms, not of its result: ``scale`` is the
  same computation run on absolute values (``b * |m| + (1 - b) * |g|``), the
  standard forward error bound. Without it the check is purely relative.
  """
  a = np.asarray(actual).astype(np.float64)
  d = np.asarray(desired, np.float64)
  assert a.shape == d.shape, f"{err_msg}: shape {a.shape} != {d.shape}"
  ref = np.abs(d) if scale is None else np.maximum(np.abs(d), np.abs(np.asarray(scale)))
  bound = rtol * ref + atol
  bad = ~(np.abs(a - d) <= bound)
  if np.any(bad):
    i = np.unravel_index(
      np.argmax(np.where(bad, np.abs(a - d) / np.maximum(ref, 1e-300), 0)), a.shape
    )
    raise AssertionError(
      f"{err_msg}: {int(np.sum(bad))} of {a.size} entries differ by more than "
      f"rtol={rtol:g}; worst at {i}: actual {a[i]!r}, desired {d[i]!r}, "
      f"allowed {bound[i]:.3g}, scale {ref[i]:.3g}"
    )
