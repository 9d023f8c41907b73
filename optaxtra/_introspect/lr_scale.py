"""Changing the learning rate mid-run without recompiling: set_learning_rate_scale."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optaxtra._core import hyper as _hyper
from optaxtra._core.paths import box_types
from optaxtra._introspect.declare import declaration

_FN = "set_learning_rate_scale"
# A state holds a learning-rate scale where it declares a field reported by
# optaxtra.inspect under this name (optaxtra.inspectable).
_SCALE = "learning_rate_scale"


def _new_scale(scale: ArrayLike) -> jax.Array:
  _hyper.real(
    _FN,
    "scale",
    scale,
    low=0.0,
    fix="It multiplies the learning rate: 0.1 divides it by 10, 1 restores it.",
  )
  return jnp.asarray(scale, jnp.float32)


def _scale_field(cls: type) -> str | None:
  """The field a state class declares as its learning-rate scale, if any."""
  decl = declaration(cls)
  if decl is None:
    return None
  return next((f for f, name in decl.values if name == _SCALE), None)


def _inject_lr(state: Any) -> bool:
  """Whether ``state`` holds an ``inject_hyperparams`` learning rate."""
  found = False

  def visit(x):
    nonlocal found
    hyper = getattr(x, "hyperparams", None)
    if isinstance(hyper, dict) and "learning_rate" in hyper:
      found = True
    return x

  jax.tree.map(visit, state, is_leaf=lambda x: hasattr(x, "hyperparams"))
  return found


def set_learning_rate_scale(
  state: optax.OptState, scale: ArrayLike, *, group: str | None = None
) -> Any:
  """The state with the learning-rate scale of every optaxtra stage set.

  optaxtra's learning-rate stages (:func:`optaxtra.scale_by_learning_rate`
  and :func:`optaxtra.adamax_clipped`) keep a float32 ``scale`` in their state,
  1.0 at init, and use ``scale * learning_rate(count)``: PyTorch's
  ``param_group["lr"] = ...`` or Keras' ``optimizer.learning_rate = ...``
  without building a new optimizer. The scale is an array of the state, so a
  jitted step keeps its compiled program: setting it never recompiles. It
  multiplies the schedule, which goes on from where it is; a decay coupled to
  the learning rate (``adamax_clipped``'s default) follows it.

  Works on any state holding such stages (chains, :func:`optax.masked`,
  ``optax.partition``, :class:`optax.MultiSteps`, ``inject_hyperparams``,
  ``nnx.Optimizer.opt_state``), concrete or inside :func:`jax.jit`.

  A learning rate given by path (:func:`optaxtra.by_path`, PyTorch's param
  groups) has one scale per rule: ``group`` names the rule (its pattern, or
  ``"default"``) whose scale is set, as ``param_groups[i]["lr"] = x`` sets one
  group's; without ``group`` every rule's scale is set.

  Args:
    state: an optimizer state, as ``tx.init`` or ``tx.update`` returned it.
    scale: the new scale, a non-negative float or scalar array (traced values
      are taken as they are).
    group: the pattern of one ``by_path`` rule (or ``"default"``), or None for
      every scale.

  Returns:
    The state, of the same structure and dtypes, with every such scale set.

  Raises:
    ValueError: when the state holds no optaxtra learning-rate stage (Optax's
      own keep no learning rate in their state: use
      :func:`optax.inject_hyperparams` for those), or for a negative,
      non-finite or non-scalar scale.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> tx = optax.chain(optax.scale_by_adam(), optaxtra.scale_by_learning_rate(1e-3))
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> state = optaxtra.set_learning_rate_scale(state, 0.1)
    >>> _, state = tx.update({"w": jnp.ones(2)}, state)
    >>> optaxtra.inspect(state)["learning_rate"]  # 0.1 * 1e-3
    Array(1.e-04, dtype=float32)
  """
  value = _new_scale(scale)
  if group is not None and not isinstance(group, str):
    raise TypeError(f"{_FN}: group must be a rule's pattern (a str), got {group!r}.")
  key = None if group is None else f"[{group}]"
  boxes = box_types()
  found, groups_seen, hit = 0, set(), 0

  def is_stage(x):
    return _scale_field(type(x)) is not None

  def set_one(old):
    if boxes and isinstance(old, boxes):  # nnx keeps each leaf in a Variable
      return jax.tree.map(lambda x: value.astype(x.dtype), old)
    return value.astype(jnp.result_type(old))

  def replace(node):
    nonlocal found, hit
    if not is_stage(node):
      return node
    found += 1
    field = cast(str, _scale_field(type(node)))
    old = getattr(node, field)
    if isinstance(old, dict):  # by path: one scale per rule
      groups_seen.update(k[1:-1] for k in old)
      new = {k: set_one(v) if key is None or k == key else v for k, v in old.items()}
      hit += key is None or key in old
    else:
      if key is not None:
        return node
      new = set_one(old)
      hit += 1
    return node._replace(**{field: new})

  out = jax.tree.map(replace, state, is_leaf=is_stage)
  if not found:
    hint = (
      "This state is optax.inject_hyperparams's: its learning rate lives in "
      "state.hyperparams['learning_rate'], which you set directly (a new value "
      "there does not recompile either)."
      if _inject_lr(state)
      else "Optax's own stages keep no learning rate in their state: build the "
      "optimizer with optaxtra.scale_by_learning_rate(...) (or "
      "optaxtra.adamax_clipped / optaxtra.adamw), or wrap it in "
      "optax.inject_hyperparams and set state.hyperparams['learning_rate']."
    )
    raise ValueError(
      f"{_FN}: the state holds no optaxtra learning-rate stage "
      f"(scale_by_learning_rate, adamax_clipped, adamw), so there is no scale "
      f"to set. {hint}"
    )
  if not hit:
    known = ", ".join(repr(g) for g in sorted(groups_seen)) or "none"
    raise ValueError(
      f"{_FN}: group={group!r} names no by_path rule of the learning rate; "
      f"the rules are {known}. Pass one of them, or group=None for all."
    )
  return out
