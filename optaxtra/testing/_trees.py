"""Leaves, abstract values and tree differences, as the probes' messages name them."""

from __future__ import annotations

from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra._core import checks as _checks
from optaxtra._core import compat as _compat
from optaxtra._core.paths import path_str

FN = "check_transformation"

# A leaf's path and abstract value (None when it is not an array).
Signature = tuple[Any, list[tuple[str, Any]]]


def fail(msg: str) -> NoReturn:
  """Raises the ``AssertionError`` a failed probe raises."""
  raise AssertionError(f"{FN}: {msg}")


def leaves(tree: Any) -> list[tuple[str, Any]]:
  """``(path, leaf)`` for every leaf, the path spelt by :func:`path_str`."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_str(p), x) for p, x in flat]


def aval(x: Any) -> Any:
  """The abstract value of an array leaf, or None for anything else."""
  try:
    return _compat.typeof(x)
  except TypeError:
    return None


def describe(aval: Any) -> str:
  """An abstract value in a message: ``float32[2, 3]``, ``(weakly typed)`` added."""
  if aval is None:
    return "not an array"
  weak = " (weakly typed)" if getattr(aval, "weak_type", False) else ""
  return f"{aval.dtype}{list(aval.shape)}{weak}"


def tree_diff(a: Any, b: Any) -> str:
  """How two trees differ: the paths only one has, else both structures."""
  pa = {p for p, _ in leaves(a)}
  pb = {p for p, _ in leaves(b)}
  only_a, only_b = sorted(pa - pb)[:5], sorted(pb - pa)[:5]
  if only_a or only_b:
    return f"leaves only in the first: {only_a}; only in the second: {only_b}"
  sa, sb = str(jax.tree.structure(a)), str(jax.tree.structure(b))
  return f"{sa[:300]} versus {sb[:300]}"


def signature(state: Any) -> Signature:
  """A state's tree structure and every leaf's path and abstract value."""
  return jax.tree.structure(state), [(p, aval(x)) for p, x in leaves(state)]


def buffers(x: Any) -> list[Any]:
  """The device buffers (device, address) a concrete, non-empty leaf holds."""
  if isinstance(x, jax.Array) and not _checks.is_traced(x) and x.size:
    return [
      (str(s.device), s.data.unsafe_buffer_pointer()) for s in x.addressable_shards
    ]
  if isinstance(x, np.ndarray) and x.size:
    return [("host", x.__array_interface__["data"][0])]
  return []


def float64(x: Any) -> np.ndarray:
  """A float64 (complex128 for complex) NumPy copy of any leaf, bfloat16 included."""
  a = np.asarray(x)
  return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def rms(x: Any) -> float:
  """The root-mean-square of a leaf's entries (0 for an empty leaf)."""
  a = np.abs(float64(x))
  return float(np.sqrt(np.mean(a * a))) if a.size else 0.0


def host_tree(fn: Any, params: Any) -> Any:
  """``fn(shape, dtype)`` per leaf, a NumPy array made a JAX array (no compile)."""
  return jax.tree.map(
    lambda p: jnp.asarray(np.asarray(fn(np.shape(p), p.dtype)).astype(p.dtype)), params
  )


def default_grads(params: Any, step: int) -> Any:
  """Standard-normal gradients, a fixed draw per step (complex for complex)."""
  rng = np.random.default_rng([20170224, step])

  def draw(shape, dtype):
    if jnp.issubdtype(dtype, jnp.complexfloating):
      return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return rng.standard_normal(shape)

  return host_tree(draw, params)
