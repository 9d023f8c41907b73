"""Training all parameters but some: :func:`with_frozen`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import optax

from optaxtra._core.masking import resolve_mask
from optaxtra._core.paths import paths, show
from optaxtra._core.patterns import Patterns, _compile
from optaxtra.masks._mask import _PathMask

_FROZEN = "frozen"
_TRAINABLE = "trainable"


def _frozen_mask(fn: str, patterns: Any) -> Any:
  """``path_mask(include=patterns)``, whose messages name ``fn``'s ``frozen``."""
  return _PathMask(
    _compile(fn, "frozen", patterns), None, True, fn=fn, include_arg="frozen"
  )


def with_frozen(
  inner: optax.GradientTransformation,
  *,
  frozen: Patterns | Any | Callable[[Any], Any],
) -> optax.GradientTransformationExtraArgs:
  """Trains with ``inner`` every parameter but the frozen ones, which stay put.

  The JAX counterpart of TensorFlow's ``trainable=False`` and of passing
  ``var_list`` to ``minimize``: the frozen parameters get zero updates (so
  ``optax.apply_updates`` leaves them bit-for-bit unchanged) and ``inner``
  never sees them, keeping no moments for them. It is

  .. code-block:: python

    optax.partition({"trainable": inner, "frozen": optax.set_to_zero()},
                    labels)

  with labels from ``frozen``, and it raises ``ValueError`` when every
  parameter is frozen, since nothing would train (TensorFlow's "No variables
  to optimize").

  It differs from :func:`optax.transforms.freeze`, a single stage of a chain
  that zeroes the masked updates while the transformations around it still see
  (and keep state for) every parameter: ``with_frozen`` wraps ``inner``, which
  sees only the parameters that train.

  ``inner`` is given the params with the frozen ones replaced by
  :class:`optax.MaskedNode`, which keep their paths: stages inside that choose
  by path (:func:`optaxtra.scale_by_path`, :func:`optaxtra.layerwise_lr_decay`)
  check their patterns and number the layers against the whole model.

  Unlike :func:`optax.selective_transform`, whose ``freeze_mask`` must be a
  tree of bools (a function given there counts as a single ``True`` and
  freezes everything), ``frozen`` may be patterns or a mask function.

  Args:
    inner: the transformation for the trainable parameters.
    frozen: which parameters to freeze: a regular expression or a list (or
      set) of them (shorthand for ``masks.path_mask(include=frozen)``,
      strict), a function ``params -> tree of bools`` such as
      :func:`optaxtra.masks.path_mask`, or a tree of bools with the params'
      structure (or a prefix of it). ``True`` freezes.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is an
    ``optax.PartitionState`` with groups ``"trainable"`` (``inner``'s state,
    under ``optax.MaskedState``) and ``"frozen"``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optaxtra
    >>> params = {"encoder": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    >>> tx = optaxtra.with_frozen(optax.adam(0.1), frozen="^encoder/")
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["encoder"]["kernel"], updates["head"]["kernel"]
    (Array([0., 0.], dtype=float32), Array([-0.1, -0.1], dtype=float32))
    >>> optaxtra.with_frozen(optax.adam(0.1), frozen="kernel").init(params)
    Traceback (most recent call last):
    ...
    ValueError: with_frozen: every parameter is frozen (2 of 2)...
  """
  fn = "with_frozen"
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f"{fn}: inner must be an optax.GradientTransformation (e.g. "
      f"optax.adam(1e-3)), got {inner!r}."
    )
  if isinstance(frozen, str | re.Pattern):
    mask: Any = _frozen_mask(fn, frozen)
  elif isinstance(frozen, list | tuple | set | frozenset) and any(
    isinstance(f, str | re.Pattern) for f in frozen
  ):
    # Patterns (a set is a leaf to JAX, never a tree of bools), each checked
    # here so that the message names with_frozen's argument, not path_mask's.
    items: list[Any] = list(frozen)
    if isinstance(frozen, set | frozenset):
      items.sort(key=repr)
    mask = _frozen_mask(fn, items)
  elif isinstance(frozen, list | tuple | set | frozenset) and not frozen:
    raise ValueError(
      f"{fn}: frozen is empty, so nothing would be frozen; use inner itself, "
      "or list the patterns of the parameters to freeze."
    )
  elif frozen is None:
    raise TypeError(
      f"{fn}: frozen must be patterns, a mask function or a tree of bools, got None."
    )
  else:
    mask = frozen

  def labels(tree):
    flags = resolve_mask(fn, mask, tree)
    if flags and all(flags):
      shown = show(paths(tree))
      raise ValueError(
        f"{fn}: every parameter is frozen ({len(flags)} of {len(flags)}), so "
        f"nothing would train. The paths are: {shown}. Check frozen={mask!r}: "
        "it should select only what must stay fixed."
      )
    treedef = jax.tree.structure(tree)
    return treedef.unflatten([_FROZEN if f else _TRAINABLE for f in flags])

  return optax.transforms.partition(
    {_TRAINABLE: inner, _FROZEN: optax.set_to_zero()}, labels
  )
