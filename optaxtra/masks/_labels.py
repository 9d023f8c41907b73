"""Labels by path: :func:`path_labels`, for :func:`optax.partition`."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import jax

from optaxtra._core import checks as _checks
from optaxtra._core.paths import show
from optaxtra._core.patterns import _compile_one, _matches_everything, _no_match
from optaxtra.masks._walk import _Cached


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

  def __init__(
    self,
    rules,
    default,
    strict,
    fn="path_labels",
    hint="default=<label> (e.g. default='trainable')",
  ):
    super().__init__()
    self.fn = fn
    self.hint = hint
    self.rules = rules
    self.default = default
    self.strict = strict

  def __call__(self, params: Any) -> Any:
    return self._lookup(self.fn, params)

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
            f"{self.fn}: rule {rx.pattern!r} -> {label!r} matches the empty "
            f"string, so it matches every path ({show(all_paths, 3)}): it takes "
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
            self.fn,
            f"rule {rx.pattern!r} -> {label!r}",
            rx,
            all_paths,
            tree,
            strict=True,
            every="rule",
          )
        earlier = sorted(
          {
            self.rules[w][0].pattern
            for p, w in zip(all_paths, winners, strict=True)
            if rx.search(p) and w is not None and w < i
          }
        )
        raise ValueError(
          f"{self.fn}: rule {rx.pattern!r} -> {label!r} labels nothing: every "
          f"path it matches ({show(matched, 3)}) is taken first by the earlier "
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
        f"{self.fn}: {len(unmatched)} parameter path(s) match no rule and there "
        f"is no default: {show(unmatched, 10)}. Add a rule for them, or pass "
        f"{self.hint}; the rules were "
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
