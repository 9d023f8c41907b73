"""Checks every optaxtra transformation must pass, shared by the core tests.

Each helper runs a transformation and asserts one property of the library's
contract: updates keep the gradients' dtype; the state keeps its structure,
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

# Two *different* compiled programs that compute the same expression may round
# differently: XLA's CPU backend contracts ``a * b + c`` into one fused
# multiply-add when the target has FMA and may fold an operand that is a
# constant in one program and a runtime value in the other (a plain optimizer
# against the same one under ``optax.inject_hyperparams``, a transformation
# inside ``optax.MultiSteps``' ``cond`` against the bare one). Which
# expressions are contracted depends on the CPU's instruction set: on an AVX2
# CPU, plain and injected Adam differ by 1 ulp in 2 of 20 entries, where an
# AVX-512 CPU gives identical bits; newer XLA versions fuse differently again.
# Each contraction changes one rounding of an update's few-term expression (at
# most 1 ulp of that term, and no term is much larger than the leaf's largest
# entry); the moments carry a difference into the next steps, where it is
# rounded again: 4 ulps of the leaf's largest entry at the first step, one more
# per step carried (cross_program_ulps; assert_max_ulp says why norm-wise).
# Bit-for-bit equality stays where one compiled program is compared with
# itself (resume against a straight run, a donated run against an undonated
# one). A lax.scan body is *not* the same program as the jitted step: on jax
# 0.12 with AVX2 a MultiSteps moment differs by 1 ulp between the two.
CROSS_PROGRAM_ULPS = 4


def cross_program_ulps(step: int) -> int:
  """The bound after ``step`` earlier steps (0 for the first update).

  Each earlier step may leave a differently rounded moment behind, which the
  next update reads and rounds again: one more ulp per step carried. Measured
  worst case: 5 ulps at the 8th step (scan against loop, jax 0.10 and 0.12,
  AVX2 and AVX-512), 5 at the 3rd (inject_hyperparams Adamax, jax 0.12).
  """
  return CROSS_PROGRAM_ULPS + step


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
  # The scan body is compiled inside a while loop, which newer XLA versions
  # fuse differently from the standalone step: another program (see
  # CROSS_PROGRAM_ULPS).
  for i, u in enumerate(loop):
    step_i = jax.tree.map(lambda x, i=i: x[i], scanned)
    for x, y in zip(jax.tree.leaves(step_i), jax.tree.leaves(u), strict=True):
      assert_max_ulp(x, y, cross_program_ulps(i), err_msg=f"scan step {i}")


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
  traced), within ``CROSS_PROGRAM_ULPS`` (``rtol=0``, the default) or ``rtol``:
  the injected optimizer computes the same expressions from the same float32
  values, but as another compiled program, which may round differently.
  With ``changed``, the hyperparameters are then overwritten in the state and
  the jitted update must follow them, without recompiling, as a fresh
  ``factory(**kwargs, **changed)`` does.
  """
  for jit in (False, True):
    plain, _, _ = run(factory(**kwargs), params, grads, jit=jit)
    injected_tx = optax.inject_hyperparams(factory, **inject_kwargs)(**kwargs)
    injected, _, _ = run(injected_tx, params, grads, jit=jit)
    for i, (a, b) in enumerate(zip(plain, injected, strict=True)):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        if rtol:
          np.testing.assert_allclose(
            np.asarray(y, np.float64),
            np.asarray(x, np.float64),
            rtol=rtol,
            atol=0,
            err_msg=f"step {i}, jit={jit}",
          )
        else:  # two different programs: see CROSS_PROGRAM_ULPS
          assert_max_ulp(y, x, cross_program_ulps(i), err_msg=f"step {i}, jit={jit}")
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


def assert_max_ulp(
  actual: Any, desired: Any, maxulp: int = CROSS_PROGRAM_ULPS, err_msg: str = ""
) -> None:
  """``|actual - desired| <= maxulp * ulp(max |desired|)``, leaf by leaf.

  The ulp is that of the leaf's largest entry, in the leaf's own dtype
  (bfloat16 included), so the bound is norm-wise: a rounding changed in an
  intermediate term costs at most an ulp of that term, and where terms cancel
  (an Adam step against a weight decay, a moment whose gradients change sign)
  the result is far smaller than the terms and an entry-wise ulp would count
  the same absolute difference as thousands. Integer arrays must be equal;
  NaN must be NaN in both.
  """
  a, d = np.asarray(actual), np.asarray(desired)
  assert a.dtype == d.dtype, f"{err_msg}: dtypes differ: {a.dtype} vs {d.dtype}"
  assert a.shape == d.shape, f"{err_msg}: shapes differ: {a.shape} vs {d.shape}"
  if a.dtype.kind in "biu":
    np.testing.assert_array_equal(a, d, err_msg=err_msg)
    return
  if a.dtype.kind == "c":
    assert_max_ulp(a.real, d.real, maxulp, f"{err_msg} (real part)")
    assert_max_ulp(a.imag, d.imag, maxulp, f"{err_msg} (imaginary part)")
    return
  a64, d64 = a.astype(np.float64), d.astype(np.float64)
  nan_a, nan_d = np.isnan(a64), np.isnan(d64)
  assert np.array_equal(nan_a, nan_d), f"{err_msg}: NaN in one and not the other"
  if not d.size or nan_d.all():
    return
  largest = np.max(np.abs(np.where(nan_d, 0.0, d64)))
  ulp = float(jnp.finfo(a.dtype).eps) * 2.0 ** np.floor(np.log2(largest or 1.0))
  diff = np.where(nan_d, 0.0, np.abs(a64 - d64))
  bad = diff > maxulp * ulp
  if np.any(bad):
    i = np.unravel_index(np.argmax(diff), diff.shape)
    raise AssertionError(
      f"{err_msg}: {int(np.sum(bad))} of {d.size} entries differ by more than "
      f"{maxulp} ulp of the largest entry ({largest:.3g}, ulp {ulp:.3g}); worst "
      f"at {i}: {a[i]!r} vs {d[i]!r}, {diff[i] / ulp:.1f} ulp apart"
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
