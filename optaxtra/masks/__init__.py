"""Choosing parameters by path: masks and labels for Optax.

A parameter's *path* is the chain of keys that leads to it in the params tree,
joined with ``/``: dict keys, sequence indices, and NamedTuple or dataclass
field names. The spelling reads the same for every framework:

====================================  ========================================
params tree                           paths look like
====================================  ========================================
nested dicts                          ``encoder/dense/kernel``
Flax linen ``variables["params"]``    ``Dense_0/kernel``, ``LayerNorm_0/scale``
Flax nnx ``nnx.state(model, Param)``  ``layers/0/kernel`` (no ``value`` suffix)
Haiku ``transform(f).init(...)``      ``mlp/~/linear_0/w``
====================================  ========================================

Flax nnx ``Variable`` boxes and Flax linen metadata boxes
(``nn.with_partitioning``) are looked through: the path names the parameter,
not the box's ``value`` attribute, so the same pattern selects the same
parameter in the tree ``nnx.Optimizer`` hands to ``tx.init`` (Variables) and in
the one it hands to ``tx.update`` (plain arrays).

Patterns are regular expressions searched anywhere in the path with
:func:`re.search`, as BERT's ``exclude_from_weight_decay`` and TF-Addons do:
``"bias"`` selects ``dense/bias`` and ``encoder/bias_1``, ``"^encoder/"`` only
what lies under ``encoder``, ``"(^|/)bias$"`` only leaves named exactly
``bias``. :func:`paths` lists the paths of a tree, to see what a pattern will
match.

:func:`all_of` and :func:`any_of` combine masks leaf by leaf (timm's weight
decay rule is ``all_of(min_ndim(2), path_mask(exclude=[...]))``).

Every callable here takes a params (or updates) tree and returns a tree of the
same structure, so it can be given wherever Optax takes a ``mask`` or labels:
:func:`optax.masked`, :func:`optax.add_decayed_weights`, :func:`optax.adamw`,
:func:`optaxtra.add_decayed_weights_decoupled`, :func:`optaxtra.adamax_clipped`,
:func:`optax.partition`, :func:`optax.multi_transform`, :func:`optax.freeze`.
Optax calls a mask on the params at ``init`` and on the updates at ``update``,
sometimes on trees where other parameters were replaced by
:class:`optax.MaskedNode`; the callables here work on all of them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from optaxtra.masks._labels import path_labels
from optaxtra.masks._logic import all_of, any_of
from optaxtra.masks._mask import min_ndim, path_mask
from optaxtra.masks._walk import paths

if TYPE_CHECKING:
  import optax

__all__ = [
  "all_of",
  "any_of",
  "freeze",
  "min_ndim",
  "path_labels",
  "path_mask",
  "paths",
]


def freeze(
  inner: optax.GradientTransformation, *, frozen: Any
) -> optax.GradientTransformationExtraArgs:
  """Deprecated alias of :func:`optaxtra.with_frozen`, the same transformation.

  .. deprecated:: 0.2
    Use ``optaxtra.with_frozen(inner, frozen=...)``: renamed so as not to read
    like :func:`optax.transforms.freeze`, which is a single masking stage.
  """
  warnings.warn(
    "optaxtra.masks.freeze is deprecated: use optaxtra.with_frozen(inner, "
    "frozen=...), the same transformation (renamed in 0.2 so as not to read "
    "like optax.transforms.freeze, which is a single masking stage).",
    DeprecationWarning,
    stacklevel=2,
  )
  from optaxtra._freeze import with_frozen  # here: _freeze imports optaxtra.masks

  return with_frozen(inner, frozen=frozen)
