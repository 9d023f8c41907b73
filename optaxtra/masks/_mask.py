"""Masks: :func:`path_mask` (by path) and :func:`min_ndim` (by shape)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from optaxtra._core import checks as _checks
from optaxtra._core.paths import show
from optaxtra._core.patterns import (
  Patterns,
  _compile,
  _matches_everything,
  _no_match,
)
from optaxtra.masks._walk import _Cached, _fill, _flatten


class _PathMask(_Cached):
  """The callable returned by :func:`path_mask`."""

  def __init__(
    self,
    include,
    exclude,
    strict,
    optional=frozenset(),
    *,
    fn: str = "path_mask",
    include_arg: str = "include",
  ):
    super().__init__()
    # Whose mask this is, for messages: with_frozen builds one from `frozen`.
    self.fn, self.include_arg = fn, include_arg
    self.include = include
    self.exclude = exclude
    self.strict = strict
    self.optional = optional  # pattern strings that may have no effect

  def __call__(self, params: Any) -> Any:
    return self._lookup(self.fn, params)

  def _compute(self, entries, tree):
    all_paths = [p for p, _, _ in entries]
    if self.strict:
      self._check(all_paths, tree)
    return [self._included(p) and not self._excluders(p) for p in all_paths]

  def _included(self, path: str) -> bool:
    return self.include is None or any(rx.search(path) for rx in self.include)

  def _excluders(self, path: str) -> list[re.Pattern]:
    return [rx for rx in self.exclude or () if rx.search(path)]

  def _check(self, all_paths: list[str], tree: Any) -> None:
    """Raises ``ValueError`` for a pattern that has no effect on this tree."""
    fn = self.fn
    for arg, pats in ((self.include_arg, self.include), ("exclude", self.exclude)):
      for rx in pats or ():
        if rx.pattern in self.optional:
          continue
        if not any(rx.search(p) for p in all_paths):
          raise _no_match(
            fn,
            f"{arg} pattern {rx.pattern!r}",
            rx,
            all_paths,
            tree,
            # with_frozen's mask has no optional= or strict= to point to.
            optional="optional" if self.fn == "path_mask" else None,
            strict=self.fn == "path_mask",
          )
    if not all_paths:
      return
    for rx in self.include or ():
      if _matches_everything(rx, all_paths):
        raise ValueError(
          f"{fn}: {self.include_arg} pattern {rx.pattern!r} matches the empty "
          "string, so "
          f"it matches every path ({show(all_paths, 3)}) and selects every "
          "parameter. An empty alternative ('bias|', e.g. from '|'.join of a "
          "list ending in '') or a pattern that may match nothing ('a*') does "
          "this. Fix the pattern, pass include=None to select every parameter, "
          "or pass strict=False."
        )
    excluders = {p: self._excluders(p) for p in all_paths}
    for rx in self.include if self.include is not None else (None,):
      if rx is not None and rx.pattern in self.optional:
        continue
      matched = [p for p in all_paths if rx is None or rx.search(p)]
      if all(excluders[p] for p in matched):
        raise self._all_excluded(rx, matched, excluders)
    for rx in self.exclude or ():
      if rx.pattern in self.optional:
        continue
      hit = [p for p in all_paths if rx.search(p)]
      if not any(self._included(p) for p in hit):
        incs = ", ".join(repr(i.pattern) for i in self.include or ())
        raise ValueError(
          f"{fn}: exclude pattern {rx.pattern!r} removes nothing: none of the "
          f"paths it matches ({show(hit, 3)}) is selected by the include "
          f"pattern(s) {incs}, so it has no effect. Make it name what it should "
          "carve out of what include selects (e.g. 'encoder/.*bias' rather "
          f"than '^bias'), drop it, pass optional=[{rx.pattern!r}] if it may "
          "have no effect on some models, or strict=False (which turns every "
          "check off); neither changes what is selected."
        )

  def _all_excluded(
    self,
    rx: re.Pattern | None,
    matched: list[str],
    excluders: dict[str, list[re.Pattern]],
  ) -> ValueError:
    """The error for an include (None: every path) whose matches are all excluded."""
    fn = self.fn
    used = [e for e in self.exclude or () if any(e in excluders[p] for p in matched)]
    names = ", ".join(repr(e.pattern) for e in used)
    if rx is None:
      msg = (
        f"{fn}: the exclude pattern(s) {names} match every parameter path "
        f"({show(matched, 3)}), so the mask selects nothing."
      )
    else:
      msg = (
        f"{fn}: include pattern {rx.pattern!r} selects nothing: every path it "
        f"matches ({show(matched, 3)}) is also matched by the exclude "
        f"pattern(s) {names}, and exclude wins over include."
      )
    empty = [e.pattern for e in used if e.search("") is not None]
    if empty:
      msg += (
        f" {', '.join(repr(e) for e in empty)} matches the empty string, hence "
        "every path (an empty alternative such as 'bias|', or a pattern that may "
        "match nothing such as 'a*')."
      )
    msg += (
      " Narrow the exclude pattern(s) so they spare what should stay selected "
      "(anchor them: '(^|/)bias$' names only leaves called bias)"
      + (", drop the include pattern" if rx is not None else "")
      + ", or pass strict=False if selecting nothing is intended."
    )
    return ValueError(msg)

  def __repr__(self):
    def pats(ps):
      return None if ps is None else [rx.pattern for rx in ps]

    extra = f", optional={sorted(self.optional)!r}" if self.optional else ""
    return (
      f"path_mask(include={pats(self.include)!r}, exclude={pats(self.exclude)!r}, "
      f"strict={self.strict}{extra})"
    )


def path_mask(
  include: Patterns | None = None,
  exclude: Patterns | None = None,
  *,
  strict: bool = True,
  optional: Patterns = (),
) -> Callable[[Any], Any]:
  r"""A mask that selects parameters by path, usable as any Optax ``mask=``.

  A parameter is selected (``True``) when its path matches one of the
  ``include`` patterns (or ``include`` is None) and none of the ``exclude``
  patterns. Patterns are regular expressions found anywhere in the path with
  :func:`re.search`, so BERT's ``exclude_from_weight_decay=["LayerNorm",
  "layer_norm", "bias"]`` reads here ``path_mask(exclude=["LayerNorm",
  "layer_norm", "bias"])`` and selects the same variables.

  Args:
    include: a regular expression or a list of them; None includes every
      parameter.
    exclude: a regular expression or a list of them; None excludes nothing.
    strict: whether every pattern must have an effect on the tree the mask
      is called on. Each pattern must match at least one path: a misspelt
      name (``"LayerNrom"``) then raises a ``ValueError`` naming the pattern,
      listing paths and suggesting close names, instead of silently decaying
      or training what it meant to spare. Each include pattern must keep at
      least one path that no exclude pattern removes (``include="kernel",
      exclude="kernel"`` selects nothing), and without include the exclude
      patterns must not remove every path; carving a part out of what include
      selects (``include="encoder", exclude="bias"``) is what exclude is for.
      Each exclude pattern must remove at least one path that include
      selects. An include pattern that matches every path because it matches
      the empty string (``"bias|"``) is an error too. Pass False when
      selecting nothing is intended; the mask is then computed as described
      above, whatever the patterns match. For a list shared between models,
      prefer ``optional``.
    optional: some of the pattern strings given in ``include`` or
      ``exclude`` (the same strings, or the same compiled patterns), which may
      have no effect on the tree: match no path, or, for an exclude pattern,
      remove nothing that include selects. They still act where they match;
      every other pattern stays checked. This is for a list shared between
      models: BERT's ``["LayerNorm", "layer_norm", "bias"]`` holds two
      spellings, one of which a given model lacks; timm's ``no_weight_decay``
      names ``dist_token`` and ``reg_token``, which a plain ViT lacks. A
      string in ``optional`` that is in neither ``include`` nor ``exclude``
      raises ``ValueError``.

  Returns:
    A function ``params -> tree of bools`` with the structure of ``params``,
    the same for the params and for updates holding :class:`optax.MaskedNode`.
    An invalid regular expression raises ``ValueError`` here, at construction.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optaxtra import masks
    >>> params = {"encoder": {"LayerNorm": {"gamma": jnp.ones(2)},
    ...                       "dense": {"kernel": jnp.ones((2, 2)),
    ...                                 "bias": jnp.zeros(2)}}}
    >>> decay = masks.path_mask(exclude=["LayerNorm", "bias"])
    >>> decay(params)
    {'encoder': {'LayerNorm': {'gamma': False},
                 'dense': {'bias': False, 'kernel': True}}}
    >>> tx = optax.adamw(1e-3, weight_decay=1e-2, mask=decay)
    >>> state = tx.init(params)

    A pattern that only some models match is named in ``optional``; the
    others are still checked:

    >>> masks.path_mask(exclude=["LayerNorm", "layer_norm", "bias"],
    ...                 optional=["LayerNorm", "layer_norm"])(params)
    {'encoder': {'LayerNorm': {'gamma': False},
                 'dense': {'bias': False, 'kernel': True}}}

    A typo does not pass unnoticed, nor an exclude that undoes an include:

    >>> masks.path_mask(exclude=["LayerNrom"])(params)
    Traceback (most recent call last):
    ...
    ValueError: path_mask: exclude pattern 'LayerNrom' matches no parameter path ...
    >>> masks.path_mask(include="kernel", exclude="dense")(params)
    Traceback (most recent call last):
    ...
    ValueError: path_mask: include pattern 'kernel' selects nothing: every path ...

  References:
    Devlin et al., `BERT's optimization.py
    <https://github.com/google-research/bert/blob/master/optimization.py>`_
    (``exclude_from_weight_decay``), 2018.
  """
  _checks.check_flag("path_mask", "strict", strict)
  inc = _compile("path_mask", "include", include)
  exc = _compile("path_mask", "exclude", exclude)
  if inc is not None and not inc:
    raise ValueError(
      "path_mask: include is empty, so the mask would select no parameter. "
      "Pass include=None to start from every parameter, or list patterns."
    )
  opt = _compile("path_mask", "optional", optional) or ()
  given = {rx.pattern for rx in (*(inc or ()), *(exc or ()))}
  for rx in opt:
    if rx.pattern not in given:
      raise ValueError(
        f"path_mask: optional names the pattern {rx.pattern!r}, which is in "
        f"neither include ({[r.pattern for r in inc or ()]}) nor exclude "
        f"({[r.pattern for r in exc or ()]}). optional lists some of those "
        "patterns, spelt the same, to let them match nothing; add the pattern "
        "to include or exclude, or fix its spelling in optional."
      )
  return _PathMask(inc, exc, strict, frozenset(rx.pattern for rx in opt))


class _MinNdim:
  """The callable returned by :func:`min_ndim`."""

  def __init__(self, n):
    self.n = n

  def __call__(self, params: Any) -> Any:
    entries, treedef = _flatten("min_ndim", params)
    values = [
      None if masked else all(np.ndim(x) >= self.n for x in jax.tree.leaves(node))
      for _, node, masked in entries
    ]
    return _fill(entries, treedef, values)

  def __repr__(self):
    return f"min_ndim({self.n})"


def min_ndim(n: int) -> Callable[[Any], Any]:
  """A mask of the parameters with at least ``n`` dimensions.

  ``min_ndim(2)`` is timm's rule for weight decay: decay weight matrices and
  convolution kernels, not biases and normalisation scales (which are 1-D).
  Combine it with a path mask when both matter, as timm's
  ``param_groups_weight_decay`` does with a model's ``no_weight_decay()``
  names: ``all_of(min_ndim(2), path_mask(exclude=["pos_embed",
  "cls_token"]))`` (:func:`optaxtra.masks.all_of`).

  Args:
    n: the least number of dimensions, a non-negative int (a NumPy or
      concrete JAX integer scalar is taken too).

  Returns:
    A function ``params -> tree of bools`` with the structure of ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optaxtra import masks
    >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    >>> masks.min_ndim(2)(params)
    {'bias': False, 'kernel': True}
    >>> tx = optax.add_decayed_weights(1e-4, mask=masks.min_ndim(2))

  References:
    Wightman, `timm's param_groups_weight_decay
    <https://github.com/huggingface/pytorch-image-models/blob/main/timm/optim/_optim_factory.py>`_.
  """
  dtype = getattr(n, "dtype", None)
  if isinstance(n, bool | np.bool_) or (dtype is not None and np.dtype(dtype) == bool):
    raise TypeError(f"min_ndim: n must be an int, got the bool {n!r}.")
  try:
    n = operator.index(n)  # ints, NumPy ints, concrete integer jax scalars
  except TypeError:
    raise TypeError(
      f"min_ndim: n must be an int (a number of dimensions), got {n!r}."
    ) from None
  if n < 0:
    raise ValueError(
      f"min_ndim: n must be >= 0, got {n}; min_ndim(0) selects every parameter."
    )
  return _MinNdim(n)
