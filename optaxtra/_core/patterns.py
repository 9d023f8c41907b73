"""Patterns: regular expressions searched in paths, and what a miss says."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from optaxtra._core.paths import none_paths as _none_paths
from optaxtra._core.paths import show

Patterns = str | re.Pattern | Iterable[str | re.Pattern]


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


def _no_match(
  fn: str,
  what: str,
  rx: re.Pattern,
  all_paths: list[str],
  tree: Any,
  *,
  optional: str | None = None,
  strict: bool = False,
  every: str = "pattern",
) -> ValueError:
  """The error for a pattern that matches no path, with what might be meant.

  Args:
    fn: the public function, for the message.
    what: the pattern as the message names it ("exclude pattern 'bias'").
    rx: the pattern.
    all_paths: the paths of the tree.
    tree: the tree (for its ``None`` entries).
    optional: the name of the argument that lets this one pattern match
      nothing (``path_mask``'s ``optional``), or None where there is none.
    strict: whether the caller has a ``strict`` flag that turns the check off
      (``path_mask``, ``path_labels``); without one (or ``optional``) the
      message only asks for the pattern to be fixed.
    every: what ``strict=False`` relaxes, in words ("pattern", "rule").

  The switches it names never change what is selected: ``optional=[...]``
  and ``strict=False`` only turn the check off. Where a change of the
  pattern would select more (ignoring case), it says so.
  """
  msg = (
    f"{fn}: {what} matches no parameter path (patterns are "
    "regular expressions searched in each path with re.search, case-sensitive)."
  )
  nones = [p for p in _none_paths(tree) if rx.search(p)]
  if nones:
    msg += (
      f" It matches {show(nones, 3)}, which the tree holds as None: None is an "
      "empty subtree in JAX, not a parameter, and no transformation updates it."
    )
  if all_paths:
    msg += f" The paths are: {show(all_paths)}."
    hints = []
    folded = [p for p in all_paths if re.search(rx.pattern, p, rx.flags | re.I)]
    if folded:
      hints.append(
        f"ignoring case it would match {show(folded, 3)} (names are spelt "
        "variably, e.g. 'LayerNorm', 'layernorm', 'layer_norm'; the pattern "
        f"{'(?i)' + rx.pattern!r} ignores case, and then selects those)"
      )
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
  msg += " Fix the pattern (optaxtra.masks.paths(params) lists every path)."
  reason = (
    "a list shared between models, or a mask used inside an optax.partition / "
    "optax.masked whose group lacks these parameters"
  )
  if optional is not None and strict:
    msg += (
      f" If it may match nothing ({reason}), pass {optional}=[{rx.pattern!r}]: "
      "this pattern may then match nothing and still acts where it matches, "
      f"while every other {every} stays checked; strict=False turns the check "
      f"off for every {every}. Neither changes which parameters are selected."
    )
  elif strict:
    msg += (
      f" If it may match nothing ({reason}), pass strict=False, which turns the "
      f"check off for every {every} without changing what is selected."
    )
  return ValueError(msg)
