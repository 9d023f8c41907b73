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

import difflib
import operator
import re
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from optaxtra import _checks
from optaxtra._tree_mask import resolve_mask

__all__ = ["freeze", "min_ndim", "path_labels", "path_mask", "paths"]

Patterns = str | re.Pattern | Iterable[str | re.Pattern]

_SHOW = 5  # paths shown in an error message
_CACHE_SIZE = 16  # tree structures whose result a mask remembers


# ---------------------------------------------------------------------------
# Walking a tree by path.


def _box_types() -> tuple[type, ...]:
  """Container types that wrap one parameter (looked through, not named).

  Only modules already imported can have put such boxes in a tree, so Flax is
  never imported here.
  """
  types: list[type] = []
  variablelib = sys.modules.get("flax.nnx.variablelib")
  if variablelib is not None:
    for name in ("Variable", "VariableState"):  # VariableState: flax < 0.11
      t = vars(variablelib).get(name)
      if isinstance(t, type):
        types.append(t)
  meta = sys.modules.get("flax.core.meta")
  if meta is not None and isinstance(getattr(meta, "AxisMetadata", None), type):
    types.append(meta.AxisMetadata)
  return tuple(types)


def _join(path: tuple[Any, ...]) -> str:
  return _checks.path_str(path) if path else ""


def _flatten(
  fn: str, tree: Any, *, step_check: bool = True
) -> tuple[list[tuple[str, Any, bool]], Any]:
  """``[(path, node, is_masked_node)]`` and the treedef to rebuild the tree.

  A node is a leaf, a parameter box (nnx ``Variable``, linen ``Partitioned``)
  or an :class:`optax.MaskedNode`, whose path is kept so that a pattern naming
  a parameter that an enclosing ``optax.masked`` hid still counts as matching.
  ``step_check`` makes a lone integer scalar an error (a mask called by
  ``optax.inject_hyperparams`` as a schedule); :func:`paths` lists it.
  """
  boxes = _box_types()

  def stop(x):
    return isinstance(x, optax.MaskedNode) or (bool(boxes) and isinstance(x, boxes))

  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
  if step_check and len(flat) == 1 and not flat[0][0] and _looks_like_step(flat[0][1]):
    raise TypeError(
      f"{fn} was called on an integer scalar ({flat[0][1]!r}), not on a "
      "parameter tree. This happens when a mask or labels function is passed "
      "through optax.inject_hyperparams, which calls every callable "
      "hyperparameter as a schedule of the step count: list it in static_args, "
      "e.g. optax.inject_hyperparams(optax.adamw, static_args=('mask',))(...)."
    )
  entries = [
    (_join(path), node, isinstance(node, optax.MaskedNode)) for path, node in flat
  ]
  return entries, treedef


def _looks_like_step(x: Any) -> bool:
  if isinstance(x, bool):
    return False
  if isinstance(x, int):
    return True
  dtype = getattr(x, "dtype", None)
  return (
    dtype is not None
    and np.shape(x) == ()
    and jax.numpy.issubdtype(dtype, jax.numpy.integer)
  )


def _fill(entries: list[tuple[str, Any, bool]], treedef: Any, values: list[Any]) -> Any:
  """The tree with every parameter (box or leaf) replaced by its value."""
  nodes = [
    node if masked else jax.tree.map(lambda _, v=v: v, node)
    for (_, node, masked), v in zip(entries, values, strict=True)
  ]
  return treedef.unflatten(nodes)


def paths(params: Any) -> list[str]:
  """The path of every parameter of ``params``, in the tree's leaf order.

  Args:
    params: a tree of parameters (or gradients, or updates). Flax nnx
      ``Variable`` and linen metadata boxes count as one parameter each;
      ``None`` and :class:`optax.MaskedNode` entries are not parameters.

  Returns:
    A list of strings, one per parameter, such as ``"encoder/dense/kernel"``;
    ``""`` for a params tree that is a single array.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxtra import masks
    >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
    ...           "blocks": [{"scale": jnp.ones(2)}]}
    >>> masks.paths(params)
    ['blocks/0/scale', 'dense/bias', 'dense/kernel']
  """
  entries, _ = _flatten("paths", params, step_check=False)
  return [p for p, _, masked in entries if not masked]


def _none_paths(tree: Any) -> list[str]:
  """The paths of the ``None`` entries of ``tree`` (which are not parameters)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return [_join(path) for path, x in flat if x is None]


# ---------------------------------------------------------------------------
# Patterns.


def _compile(
  fn: str, arg: str, patterns: Any, *, allow_none: bool = True
) -> tuple[re.Pattern, ...] | None:
  """``patterns`` (one or an iterable of str / re.Pattern) compiled."""
  if patterns is None:
    if allow_none:
      return None
    raise TypeError(f"{fn}: {arg} must be a pattern, got None.")
  if isinstance(patterns, str | re.Pattern):
    patterns = [patterns]
  elif isinstance(patterns, bytes | bytearray | Mapping) or not isinstance(
    patterns, Iterable
  ):
    raise TypeError(
      f"{fn}: {arg} must be a regular expression (str) or a list of them, "
      f"got {patterns!r}."
    )
  out = []
  for p in patterns:
    out.append(_compile_one(fn, arg, p))
  return tuple(out)


def _compile_one(fn: str, arg: str, p: Any) -> re.Pattern:
  if isinstance(p, re.Pattern):
    if not isinstance(p.pattern, str):
      raise TypeError(
        f"{fn}: {arg} pattern {p.pattern!r} is a bytes pattern; paths are "
        "str, so compile it from a str."
      )
    return p
  if not isinstance(p, str):
    raise TypeError(
      f"{fn}: every {arg} pattern must be a str (a regular expression), got "
      f"{p!r} of type {type(p).__name__}."
    )
  try:
    return re.compile(p)
  except re.error as e:
    raise ValueError(
      f"{fn}: {arg} pattern {p!r} is not a valid regular expression ({e}). "
      "Patterns are searched in the paths with re.search; to match a name "
      f"literally, pass re.escape({p!r})."
    ) from None


def _matches_everything(rx: re.Pattern, all_paths: list[str]) -> bool:
  """Whether ``rx`` matches the empty string (hence any path) and every path.

  Not for a tree whose only path is ``""`` (a single array), which such a
  pattern may mean.
  """
  return (
    rx.search("") is not None
    and any(all_paths)
    and all(rx.search(p) for p in all_paths)
  )


def _show(strings: Sequence[str], n: int = _SHOW) -> str:
  shown = ", ".join(repr(s) for s in strings[:n])
  if len(strings) > n:
    shown += f", ... ({len(strings)} in all)"
  return shown


def _no_match(
  fn: str, what: str, rx: re.Pattern, all_paths: list[str], tree: Any
) -> ValueError:
  """The error for a pattern that matches no path, with what might be meant."""
  msg = (
    f"{fn}: {what} matches no parameter path (patterns are "
    "regular expressions searched in each path with re.search, case-sensitive)."
  )
  nones = [p for p in _none_paths(tree) if rx.search(p)]
  if nones:
    msg += (
      f" It matches {_show(nones, 3)}, which the tree holds as None: None is an "
      "empty subtree in JAX, not a parameter, and no transformation updates it."
    )
  if all_paths:
    msg += f" The paths are: {_show(all_paths)}."
    hints = []
    folded = [p for p in all_paths if re.search(rx.pattern, p, rx.flags | re.I)]
    if folded:
      hints.append(f"ignoring case it would match {_show(folded, 3)}")
    parts = sorted({s for p in all_paths for s in p.split("/")})
    close = difflib.get_close_matches(rx.pattern, parts, n=3, cutoff=0.6)
    if close:
      hints.append(f"similar names: {', '.join(repr(c) for c in close)}")
    if hints:
      msg += " Perhaps: " + "; ".join(hints) + "."
    if len(all_paths) == 1 and not all_paths[0]:
      msg += " The params are a single array, whose path is ''."
  else:
    msg += " The tree has no parameters."
  msg += (
    " Fix the pattern (optaxtra.masks.paths(params) lists every path), or pass "
    "strict=False if it may match nothing (a list shared between models, or a "
    "mask used inside an optax.partition / optax.masked whose group lacks "
    "these parameters)."
  )
  return ValueError(msg)


class _Cached:
  """Remembers the result for the last few tree structures (keyed by paths)."""

  def __init__(self):
    self._cache: dict[tuple[Any, ...], list[Any]] = {}

  def _lookup(self, fn: str, tree: Any) -> Any:
    entries, treedef = _flatten(fn, tree)
    key = tuple((p, masked) for p, _, masked in entries)
    values = self._cache.get(key)
    if values is None:
      values = self._compute(entries, tree)
      if len(self._cache) >= _CACHE_SIZE:
        self._cache.clear()
      self._cache[key] = values
    return _fill(entries, treedef, values)

  def _compute(self, entries: list[tuple[str, Any, bool]], tree: Any) -> list[Any]:
    raise NotImplementedError


# ---------------------------------------------------------------------------
# path_mask.


class _PathMask(_Cached):
  """The callable returned by :func:`path_mask`."""

  def __init__(self, include, exclude, strict):
    super().__init__()
    self.include = include
    self.exclude = exclude
    self.strict = strict

  def __call__(self, params: Any) -> Any:
    return self._lookup("path_mask", params)

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
    fn = "path_mask"
    for arg, pats in (("include", self.include), ("exclude", self.exclude)):
      for rx in pats or ():
        if not any(rx.search(p) for p in all_paths):
          raise _no_match(fn, f"{arg} pattern {rx.pattern!r}", rx, all_paths, tree)
    if not all_paths:
      return
    for rx in self.include or ():
      if _matches_everything(rx, all_paths):
        raise ValueError(
          f"{fn}: include pattern {rx.pattern!r} matches the empty string, so "
          f"it matches every path ({_show(all_paths, 3)}) and selects every "
          "parameter. An empty alternative ('bias|', e.g. from '|'.join of a "
          "list ending in '') or a pattern that may match nothing ('a*') does "
          "this. Fix the pattern, pass include=None to select every parameter, "
          "or pass strict=False."
        )
    excluders = {p: self._excluders(p) for p in all_paths}
    for rx in self.include if self.include is not None else (None,):
      matched = [p for p in all_paths if rx is None or rx.search(p)]
      if all(excluders[p] for p in matched):
        raise self._all_excluded(rx, matched, excluders)
    for rx in self.exclude or ():
      hit = [p for p in all_paths if rx.search(p)]
      if not any(self._included(p) for p in hit):
        incs = ", ".join(repr(i.pattern) for i in self.include or ())
        raise ValueError(
          f"{fn}: exclude pattern {rx.pattern!r} removes nothing: none of the "
          f"paths it matches ({_show(hit, 3)}) is selected by the include "
          f"pattern(s) {incs}, so it has no effect. Make it name what it should "
          "carve out of what include selects (e.g. 'encoder/.*bias' rather "
          "than '^bias'), drop it, or pass strict=False."
        )

  def _all_excluded(
    self,
    rx: re.Pattern | None,
    matched: list[str],
    excluders: dict[str, list[re.Pattern]],
  ) -> ValueError:
    """The error for an include (None: every path) whose matches are all excluded."""
    fn = "path_mask"
    used = [e for e in self.exclude or () if any(e in excluders[p] for p in matched)]
    names = ", ".join(repr(e.pattern) for e in used)
    if rx is None:
      msg = (
        f"{fn}: the exclude pattern(s) {names} match every parameter path "
        f"({_show(matched, 3)}), so the mask selects nothing."
      )
    else:
      msg = (
        f"{fn}: include pattern {rx.pattern!r} selects nothing: every path it "
        f"matches ({_show(matched, 3)}) is also matched by the exclude "
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

    return (
      f"path_mask(include={pats(self.include)!r}, exclude={pats(self.exclude)!r}, "
      f"strict={self.strict})"
    )


def path_mask(
  include: Patterns | None = None,
  exclude: Patterns | None = None,
  *,
  strict: bool = True,
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
      the empty string (``"bias|"``) is an error too. Pass False for a list
      shared between models (BERT's list holds both ``"LayerNorm"`` and
      ``"layer_norm"``, one of which matches nothing in a given model), or
      when selecting nothing is intended; the mask is then computed as
      described above, whatever the patterns match.

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
  return _PathMask(inc, exc, strict)


# ---------------------------------------------------------------------------
# path_labels.


def _check_label(fn: str, where: str, label: Any) -> None:
  if label is None:
    raise TypeError(
      f"{fn}: {where} is None, which is not a label (None is how default= says "
      "'no default'). Use a string such as 'frozen'."
    )
  if not jax.tree_util.treedef_is_leaf(jax.tree.structure(label)):
    raise TypeError(
      f"{fn}: {where} {label!r} is a container; optax.partition would take "
      "its elements for labels. Use a string or a number."
    )
  try:
    hash(label)
  except TypeError:
    raise TypeError(
      f"{fn}: {where} {label!r} is not hashable, so it cannot be a key of the "
      "transforms mapping given to optax.partition; use a string."
    ) from None


class _PathLabels(_Cached):
  """The callable returned by :func:`path_labels`."""

  def __init__(self, rules, default, strict):
    super().__init__()
    self.rules = rules
    self.default = default
    self.strict = strict

  def __call__(self, params: Any) -> Any:
    return self._lookup("path_labels", params)

  def _compute(self, entries, tree):
    winners = []
    for p, _, _ in entries:
      winners.append(
        next((i for i, (rx, _) in enumerate(self.rules) if rx.search(p)), None)
      )
    all_paths = [p for p, _, _ in entries]
    if self.strict:
      for rx, label in self.rules:
        if _matches_everything(rx, all_paths):
          raise ValueError(
            f"path_labels: rule {rx.pattern!r} -> {label!r} matches the empty "
            f"string, so it matches every path ({_show(all_paths, 3)}): it takes "
            "every parameter no earlier rule took. An empty alternative ('bias|', "
            "e.g. from '|'.join of a list ending in '') or a pattern that may "
            "match nothing ('a*') does this. Fix the pattern, use "
            f"default={label!r} for 'everything else', or pass strict=False."
          )
      for i, (rx, label) in enumerate(self.rules):
        if i in winners:
          continue
        matched = [p for p in all_paths if rx.search(p)]
        if not matched:
          raise _no_match(
            "path_labels", f"rule {rx.pattern!r} -> {label!r}", rx, all_paths, tree
          )
        earlier = sorted(
          {
            self.rules[w][0].pattern
            for p, w in zip(all_paths, winners, strict=True)
            if rx.search(p) and w is not None and w < i
          }
        )
        raise ValueError(
          f"path_labels: rule {rx.pattern!r} -> {label!r} labels nothing: every "
          f"path it matches ({_show(matched, 3)}) is taken first by the earlier "
          f"rule(s) {', '.join(repr(e) for e in earlier)} (the first matching rule "
          "wins). Move it up, or pass strict=False."
        )
    unmatched = [
      p
      for (p, _, masked), w in zip(entries, winners, strict=True)
      if w is None and not masked
    ]
    if unmatched and self.default is None:
      raise ValueError(
        f"path_labels: {len(unmatched)} parameter path(s) match no rule and there "
        f"is no default: {_show(unmatched, 10)}. Add a rule for them, or pass "
        "default=<label> (e.g. default='trainable'); the rules were "
        f"{[rx.pattern for rx, _ in self.rules]}."
      )
    return [self.default if w is None else self.rules[w][1] for w in winners]

  def __repr__(self):
    rules = {rx.pattern: label for rx, label in self.rules}
    return f"path_labels({rules!r}, default={self.default!r}, strict={self.strict})"


def path_labels(
  rules: Mapping[str | re.Pattern, Hashable]
  | Iterable[tuple[str | re.Pattern, Hashable]],
  default: Hashable | None = None,
  *,
  strict: bool = True,
) -> Callable[[Any], Any]:
  """Labels parameters by path, for :func:`optax.partition` and friends.

  Each parameter gets the label of the first rule whose pattern
  (:func:`re.search`) matches its path, or ``default``.

  Args:
    rules: an ordered mapping ``pattern -> label`` (a dict keeps its order),
      or a sequence of ``(pattern, label)`` pairs. Labels are strings (or
      other hashable, non-container values), the keys of the transforms
      mapping given to :func:`optax.partition`.
    default: the label of the paths no rule matches. None makes an unmatched
      path an error listing the unmatched paths.
    strict: whether every rule must label at least one parameter: a rule
      whose pattern matches no path, or whose paths are all taken by earlier
      rules, raises ``ValueError`` saying which; so does a rule that matches
      every path because it matches the empty string (``"bias|"``).

  Returns:
    A function ``params -> tree of labels`` with the structure of ``params``.
    An invalid pattern or label raises here, at construction.

  Examples:
    Two learning rates: the pretrained encoder trains slowly, the rest fast.

    >>> import jax, jax.numpy as jnp
    >>> import optax
    >>> from optaxtra import masks
    >>> params = {"encoder": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    >>> labels = masks.path_labels({"^encoder/": "slow"}, default="fast")
    >>> labels(params)
    {'encoder': {'kernel': 'slow'}, 'head': {'kernel': 'fast'}}
    >>> # optax.partition in optax >= 0.2.5; optax.transforms.partition in all
    >>> tx = optax.transforms.partition(
    ...   {"slow": optax.sgd(0.01), "fast": optax.sgd(0.1)}, labels)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state)
    >>> updates["encoder"]["kernel"], updates["head"]["kernel"]
    (Array([-0.01, -0.01], dtype=float32), Array([-0.1, -0.1], dtype=float32))
  """
  fn = "path_labels"
  _checks.check_flag(fn, "strict", strict)
  if isinstance(rules, Mapping):
    items = list(rules.items())
  elif isinstance(rules, str | bytes | re.Pattern) or not isinstance(rules, Iterable):
    raise TypeError(
      f"{fn}: rules must be a mapping pattern -> label (e.g. {{'^encoder/': "
      f"'frozen'}}) or a list of (pattern, label) pairs, got {rules!r}."
    )
  else:
    items = []
    for item in rules:
      if not isinstance(item, tuple | list) or len(item) != 2:
        raise TypeError(
          f"{fn}: rules given as a sequence must hold (pattern, label) pairs, "
          f"got {item!r}."
        )
      items.append(tuple(item))
  if not items and default is None:
    raise ValueError(
      f"{fn}: rules is empty and there is no default, so no parameter would "
      "get a label. Pass rules such as {'^encoder/': 'frozen'}, or a default."
    )
  compiled = []
  for pattern, label in items:
    rx = _compile_one(fn, "rules", pattern)
    _check_label(fn, f"the label of rule {rx.pattern!r}", label)
    compiled.append((rx, label))
  if default is not None:
    _check_label(fn, "default", default)
  return _PathLabels(tuple(compiled), default, strict)


# ---------------------------------------------------------------------------
# min_ndim.


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
  Combine with a path mask by hand when both matter, e.g.
  ``lambda p: jax.tree.map(operator.and_, min_ndim(2)(p), path_mask(...)(p))``.

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


# ---------------------------------------------------------------------------
# freeze.

_FROZEN = "frozen"
_TRAINABLE = "trainable"


def freeze(
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

  Unlike :func:`optax.selective_transform`, whose ``freeze_mask`` must be a
  tree of bools (a function given there counts as a single ``True`` and
  freezes everything), ``frozen`` may be patterns or a mask function.

  Args:
    inner: the transformation for the trainable parameters.
    frozen: which parameters to freeze: a regular expression or a list (or
      set) of them (shorthand for ``path_mask(include=frozen)``, strict), a function
      ``params -> tree of bools`` such as :func:`path_mask`, or a tree of bools
      with the params' structure (or a prefix of it). ``True`` freezes.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is an
    ``optax.PartitionState`` with groups ``"trainable"`` (``inner``'s state,
    under ``optax.MaskedState``) and ``"frozen"``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optax
    >>> from optaxtra import masks
    >>> params = {"encoder": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    >>> tx = masks.freeze(optax.adam(0.1), frozen="^encoder/")
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["encoder"]["kernel"], updates["head"]["kernel"]
    (Array([0., 0.], dtype=float32), Array([-0.1, -0.1], dtype=float32))
    >>> masks.freeze(optax.adam(0.1), frozen="kernel").init(params)
    Traceback (most recent call last):
    ...
    ValueError: freeze: every parameter is frozen (2 of 2)...
  """
  fn = "freeze"
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f"{fn}: inner must be an optax.GradientTransformation (e.g. "
      f"optax.adam(1e-3)), got {inner!r}."
    )
  if isinstance(frozen, str | re.Pattern):
    mask: Any = path_mask(include=frozen)
  elif isinstance(frozen, list | tuple | set | frozenset) and any(
    isinstance(f, str | re.Pattern) for f in frozen
  ):
    # Patterns (a set is a leaf to JAX, never a tree of bools); one that is not
    # a pattern is then named by path_mask.
    items: list[Any] = list(frozen)
    if isinstance(frozen, set | frozenset):
      items.sort(key=repr)
    mask = path_mask(include=items)
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
      shown = _show(paths(tree))
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
