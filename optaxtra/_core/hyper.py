"""The one hyperparameter resolver: every numeric hyperparameter goes through here.

A hyperparameter of an optaxtra stage is a number (a Python or NumPy scalar, a
0-d array), a schedule (``count -> value``), a traced value (under
``jax.jit`` or :func:`optax.inject_hyperparams`), or, where a stage takes
values by parameter path, a :class:`ByPath` of those. One function checks
each of them, with the same words everywhere:

* :func:`real` checks a real scalar given as a number: its type, then its
  finiteness and range *in the dtype it will be used in* (float32 unless
  ``jax_enable_x64`` is on), so that ``1e39`` (``inf`` in float32) and
  ``b2=0.99999999`` (``1.0`` in float32) are refused at construction, not
  discovered as a frozen average or a NaN later.
* :func:`integer` is the one integer check (Python and NumPy integers; no
  bools, no floats, no silent wrap-around past int32).
* :func:`resolve` makes a :class:`Hyper`, whose value at a step is checked as
  it is computed: a schedule's output must be a real scalar (type, dtype and
  shape are known at trace time, so this holds under ``jit``); a concrete
  value out of range raises ``ValueError`` naming the stage, the argument and
  the step. A *traced* value cannot be checked when the update is traced:
  one that is out of range or not finite is replaced by NaN, so the updates
  it touches are NaN (and the parameters with them, visibly), never a silent
  change of sign or a frozen parameter.

The module imports nothing from optaxtra outside ``_core``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxtra._core import checks as _checks
from optaxtra._core.paths import show

INT32_MAX = 2**31 - 1


# --- Plain values ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a hyperparameter may take: an interval, and what to say.

  Attributes:
    low, high: the bounds (None: unbounded).
    low_open, high_open: whether the bound itself is excluded.
    fix: a hint appended to the message of a value outside the range.
    min_float32: refuse a float array narrower than float32 (a decay rate such
      as ``b2=0.999`` is 1.0 in bfloat16); off for values that a narrow
      dtype holds well enough (a learning rate, a weight decay).
  """

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = True
  fix: str = ""
  min_float32: bool = True

  def text(self) -> str:
    lo = (
      "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
    )
    hi = (
      "inf)"
      if self.high is None
      else f"{self.high:g}" + (")" if self.high_open else "]")
    )
    return f"{lo}, {hi}"

  def holds(self, v: float) -> bool:
    if not math.isfinite(v):
      return False
    if self.low is not None and (v <= self.low if self.low_open else v < self.low):
      return False
    return not (
      self.high is not None and (v >= self.high if self.high_open else v > self.high)
    )

  def holds_traced(self, v: jax.Array) -> jax.Array:
    ok = jnp.isfinite(v)
    if self.low is not None:
      ok &= v > self.low if self.low_open else v >= self.low
    if self.high is not None:
      ok &= v < self.high if self.high_open else v <= self.high
    return ok


def _suffix(fix: str) -> str:
  return f" {fix}" if fix else ""


def _in_dtype(v: float, dtype: Any) -> float:
  """``v`` as the dtype will hold it (float32 by default)."""
  with np.errstate(over="ignore"):
    return float(np.asarray(v, dtype=np.dtype(dtype)))


def real(
  fn: str,
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_open: bool = False,
  high_open: bool = True,
  dtype: Any = None,
  fix: str = "",
  min_float32: bool = True,
) -> float | None:
  """The one check of a real scalar hyperparameter; its value as a float.

  Accepts Python and NumPy scalars and 0-d arrays, of float or integer dtype.
  Refuses with ``TypeError`` what is not a real number (None, bools, strings,
  complex numbers, arrays with dimensions, float arrays narrower than float32)
  and with ``ValueError`` a value that is not finite, or outside the range,
  *as the dtype holds it* (``dtype``, default float32 or float64 under x64):
  ``1e39`` overflows float32, ``0.99999999`` is 1.0 there.

  Returns:
    The value as a Python float (as given), or None when it is a
    tracer (checked for its dtype only; see :class:`Hyper` for what happens
    to its value).
  """
  rng = Range(low, high, low_open, high_open, fix)
  if callable(value):
    raise TypeError(f"{fn}: {name} must be a number here, not a schedule ({value!r}).")
  if value is None or isinstance(value, bool | np.bool_):
    raise TypeError(f"{fn}: {name} must be a number, got {value!r}.{_suffix(fix)}")
  try:
    v = _checks.concrete_scalar(value)
  except TypeError as e:
    raise TypeError(f"{fn}: {name} must be a real scalar; {e}.") from None
  if min_float32:
    _checks.check_float32_or_wider(fn, name, value)
  if v is None:
    return None
  # float32 by default, also under x64: the arithmetic of a float32 parameter
  # is done in float32, the narrowest precision a hyperparameter is used in.
  dt = np.float32 if dtype is None else dtype
  held = _in_dtype(v, dt)
  if not math.isfinite(v):
    raise ValueError(
      f"{fn}: {name} must be in {rng.text()}, got {v!r} (it must be finite)."
      f"{_suffix(fix)}"
    )
  if not math.isfinite(held):
    raise ValueError(
      f"{fn}: {name}={v!r} overflows {np.dtype(dt).name} (it becomes {held}); "
      f"it must be a finite number in {rng.text()}.{_suffix(fix)}"
    )
  if not rng.holds(v):
    raise ValueError(f"{fn}: {name} must be in {rng.text()}, got {v!r}.{_suffix(fix)}")
  if not rng.holds(held):
    raise ValueError(
      f"{fn}: {name}={v!r} is {held!r} in {np.dtype(dt).name}, the precision "
      f"it is used in, which is outside {rng.text()}.{_suffix(fix)}"
    )
  return v


INT64_MAX = 2**63 - 1
_LIMITS = {INT32_MAX: "2**31 - 1", INT64_MAX: "2**63 - 1"}


def integer(
  fn: str,
  name: str,
  value: Any,
  *,
  low: int = 0,
  high: int = INT32_MAX,
  whole_floats: bool = False,
  what: str = "",
  fix: str = "",
) -> int:
  """The one integer check: a Python or NumPy integer in ``[low, high]``.

  Bools, strings, arrays with dimensions and traced values raise
  ``TypeError``; so do floats, unless ``whole_floats`` (a schedule's lengths,
  which users compute by division: ``40.0`` is taken, ``31.25`` raises
  ``ValueError`` with the fix). A value outside the range raises
  ``ValueError`` (``high`` defaults to the largest int32, since counts are
  int32 and never wrap). ``what`` names the unit in messages ("steps").
  """
  unit = f" {what}" if what else ""
  if _checks.is_traced(value):
    raise TypeError(
      f"{fn}: {name} must be a concrete int{unit}, got a traced value; it is "
      "fixed when the optimizer is built (with optax.inject_hyperparams, list "
      f"it in static_args).{_suffix(fix)}"
    )
  bad = value is None or isinstance(value, bool | np.bool_ | str | bytes)
  bad = bad or (isinstance(value, float) and not whole_floats)
  arr = None
  if not bad:
    try:
      arr = np.asarray(value)
    except (TypeError, ValueError):
      bad = True
  kinds = "iuf" if whole_floats else "iu"
  if bad or arr is None or arr.ndim != 0 or arr.dtype.kind not in kinds:
    dtype = getattr(value, "dtype", None)
    of = "" if dtype is None else f" of dtype {dtype}"
    raise TypeError(
      f"{fn}: {name} must be an int{unit}, got {value!r}{of}.{_suffix(fix)}"
    )
  v = arr.item()
  if isinstance(v, float):
    if not math.isfinite(v) or not v.is_integer():
      raise ValueError(
        f"{fn}: {name} must be a whole number{unit}, got {v!r}. Round it "
        f"explicitly (e.g. {name}=math.ceil(...) or {name}=... // ...)."
        f"{_suffix(fix)}"
      )
    v = int(v)
  if not low <= v <= high:
    hi = _LIMITS.get(high, str(high))
    raise ValueError(
      f"{fn}: {name} must be an int in [{low}, {hi}]{unit}, got {v}.{_suffix(fix)}"
    )
  return v


def integer_or_traced(
  fn: str, name: str, value: Any, *, low: int = 0, high: int = INT32_MAX, fix: str = ""
) -> None:
  """:func:`integer`, letting through a traced integer scalar (a value that
  ``optax.inject_hyperparams`` passes), whose number is unknown at trace time."""
  if _checks.is_traced(value):
    if jnp.issubdtype(value.dtype, jnp.integer) and value.shape == ():
      return
    raise TypeError(
      f"{fn}: {name} must be an int, got a traced {value.dtype} array of shape "
      f"{value.shape}.{_suffix(fix)}"
    )
  integer(fn, name, value, low=low, high=high, fix=fix)


def flag(fn: str, name: str, value: Any) -> bool:
  """A Python (or NumPy) bool, or ``TypeError``: flags select code at trace time."""
  _checks.check_flag(fn, name, value)
  return bool(value)


def choice(fn: str, name: str, value: Any, choices: Sequence[str]) -> str:
  """One of ``choices`` (strings), or ``TypeError`` / ``ValueError`` naming them."""
  shown = " or ".join(repr(c) for c in choices)
  if not isinstance(value, str):
    raise TypeError(
      f"{fn}: {name} must be the string {shown}, got {value!r}. It selects "
      "code at trace time; with optax.inject_hyperparams it stays static."
    )
  if value not in choices:
    raise ValueError(f"{fn}: {name} must be {shown}, got {value!r}.")
  return value


# --- Values by parameter path ----------------------------------------------------


class ByPath:
  """Values of one hyperparameter by parameter path (see :func:`by_path`).

  Attributes:
    rules: ``(pattern, value)`` pairs in order; the first match wins.
    default: the value of a parameter no rule matches, or None (then such a
      parameter is an error).
  """

  def __init__(
    self,
    rules: tuple[tuple[str, Any], ...],
    default: Any,
    compiled: tuple[re.Pattern, ...] | None = None,
  ):
    self.rules = rules
    self.default = default
    # Compiled patterns keep their flags (re.compile("layernorm", re.I)).
    self._compiled = compiled or tuple(re.compile(p) for p, _ in rules)

  def __repr__(self) -> str:
    inner = ", ".join(f"{p!r}: {v!r}" for p, v in self.rules)
    return f"by_path({{{inner}}}, default={self.default!r})"

  def labels(self) -> list[str]:
    """One label per value, in order: ``[<pattern>]`` and ``[default]``."""
    out = [f"[{p}]" for p, _ in self.rules]
    if self.default is not None:
      out.append("[default]")
    return out

  def values(self) -> list[Any]:
    """The values in :meth:`labels`' order."""
    out = [v for _, v in self.rules]
    if self.default is not None:
      out.append(self.default)
    return out

  def assign(self, fn: str, name: str, paths: Sequence[str]) -> list[int]:
    """For each path, the index (in :meth:`values`) of the value it takes.

    Strict, as :func:`optaxtra.masks.path_labels`: a rule that matches no
    path, a rule every one of whose matches an earlier rule takes, and a path
    no rule matches without a default raise ``ValueError`` naming them.
    """
    taken: list[int | None] = []
    for p in paths:
      hit = next((i for i, rx in enumerate(self._compiled) if rx.search(p)), None)
      taken.append(hit)
    for i, ((pattern, _), rx) in enumerate(
      zip(self.rules, self._compiled, strict=True)
    ):
      matches = [p for p in paths if rx.search(p)]
      if rx.search("") is not None and any(paths) and len(matches) == len(paths):
        raise ValueError(
          f"{fn}: {name} rule {pattern!r} matches the empty string, hence every "
          "parameter path (an alternative left empty, as in 'bias|', or a "
          "pattern that is all optional). Fix the pattern, or use default= for "
          "the value every other parameter takes."
        )
      if not matches:
        raise ValueError(
          f"{fn}: {name} rule {pattern!r} matches no parameter path. The paths "
          f"are: {show(list(paths))}. Fix the pattern (optaxtra.masks.paths(params) "
          "lists every path) or remove the rule."
        )
      if i not in taken:
        first = next(j for j, p in enumerate(paths) if rx.search(p))
        earlier = self.rules[taken[first] or 0][0]
        raise ValueError(
          f"{fn}: {name} rule {pattern!r} never applies: every path it matches "
          f"({show(matches, 3)}) is taken by the earlier rule {earlier!r} (the "
          "first matching rule wins). Put the narrower rule first, or remove it."
        )
    missing = [p for p, t in zip(paths, taken, strict=True) if t is None]
    if missing and self.default is None:
      raise ValueError(
        f"{fn}: {name} has no rule for {len(missing)} parameters: "
        f"{show(missing)}. Add a rule that matches them, or "
        "pass default=... to by_path."
      )
    n = len(self.rules)
    return [n if t is None else t for t in taken]


def by_path(
  rules: Mapping[str, Any] | Iterable[tuple[str, Any]], *, default: Any = None
) -> ByPath:
  """A hyperparameter's value by parameter path, as PyTorch's param groups.

  Args:
    rules: an ordered mapping (or a list of pairs) from a regular expression,
      searched in each parameter's path (``optaxtra.masks.paths(params)``,
      e.g. ``"blocks/0/attn/qkv/kernel"``), to a value: a number or a
      schedule ``count -> value``. The first rule that matches a path wins.
    default: the value of a parameter no rule matches; None makes such a
      parameter an error that lists the paths.

  Returns:
    A value accepted wherever optaxtra documents ``by_path`` (``adamw``'s
    ``learning_rate``, ``b1``, ``b2``, ``eps``, ``weight_decay``, ...).
    The rules are checked when the paths are known (at ``init``): a rule that
    matches no path, or whose every match an earlier rule takes, raises
    ``ValueError`` naming it; each value is checked like the argument itself.

  Examples:
    >>> import optaxtra
    >>> lr = optaxtra.by_path({"^head/": 1e-3}, default=1e-4)
    >>> lr
    by_path({'^head/': 0.001}, default=0.0001)
    >>> lr.labels()
    ['[^head/]', '[default]']
  """
  fn = "by_path"
  if isinstance(rules, Mapping):
    pairs = list(rules.items())
  elif isinstance(rules, str | bytes) or not isinstance(rules, Iterable):
    raise TypeError(
      f"{fn}: rules must be a mapping of path patterns to values (or a list "
      f"of (pattern, value) pairs), got {rules!r}."
    )
  else:
    pairs = []
    for item in rules:
      if not (isinstance(item, tuple | list) and len(item) == 2):
        raise TypeError(
          f"{fn}: every rule must be a (pattern, value) pair, got {item!r}."
        )
      pairs.append((item[0], item[1]))
  if not pairs:
    raise ValueError(f"{fn}: rules is empty; give at least one pattern -> value.")
  seen = set()
  out = []
  compiled = []
  for pattern, value in pairs:
    rx = pattern if isinstance(pattern, re.Pattern) else None
    if rx is not None:
      if not isinstance(rx.pattern, str):
        raise TypeError(
          f"{fn}: pattern {rx.pattern!r} is a bytes pattern; paths are str."
        )
      pattern = rx.pattern
    if not isinstance(pattern, str):
      raise TypeError(
        f"{fn}: every pattern must be a str (a regular expression), got {pattern!r}."
      )
    try:
      compiled.append(rx if rx is not None else re.compile(pattern))
    except re.error as e:
      raise ValueError(
        f"{fn}: pattern {pattern!r} is not a valid regular expression ({e}); "
        f"to match a name literally, pass re.escape({pattern!r})."
      ) from None
    if pattern in seen:
      raise ValueError(f"{fn}: pattern {pattern!r} is given twice.")
    seen.add(pattern)
    if isinstance(value, ByPath):
      raise TypeError(f"{fn}: the value of {pattern!r} is itself a by_path.")
    out.append((pattern, value))
  if isinstance(default, ByPath):
    raise TypeError(f"{fn}: default must be a number or a schedule, not a by_path.")
  if default is not None and "default" in seen:
    raise ValueError(
      f"{fn}: a rule's pattern is 'default', which would share its label "
      "'[default]' (in the state, inspect and set_learning_rate_scale's group) "
      "with default=; write it another way, e.g. '(default)' or '^default$'."
    )
  return ByPath(tuple(out), default, tuple(compiled))


# --- Resolved hyperparameters ----------------------------------------------------


def _to_float(v: jax.Array) -> jax.Array:
  if not jnp.issubdtype(v.dtype, jnp.floating):
    v = v.astype(_checks.default_float())
  return v


class Hyper:
  """A checked hyperparameter: a number, a schedule or a traced value.

  Call it with the step count (the number of updates done before this one)
  to get the value used at that step, a float scalar array, checked:
  a schedule's output must be a real scalar; a concrete value outside the
  range raises ``ValueError`` naming the stage, the argument and the step;
  a traced value outside the range (or not finite) becomes NaN.

  Attributes:
    fn, name: the stage and the argument, for messages.
    value: what was given.
    range: the values allowed.
  """

  def __init__(self, fn: str, name: str, value: Any, rng: Range):
    self.fn, self.name, self.value, self.range = fn, name, value, rng
    self.is_schedule = callable(value)
    self.constant: float | None = None
    if not self.is_schedule:
      self.constant = real(
        fn,
        name,
        value,
        low=rng.low,
        high=rng.high,
        low_open=rng.low_open,
        high_open=rng.high_open,
        fix=rng.fix,
        min_float32=rng.min_float32,
      )

  def __call__(self, count: Any) -> jax.Array:
    if self.is_schedule:
      out = _checks.schedule_output(self.fn, self.name, self.value(count))
    else:
      out = jnp.asarray(self.value)
    return self.check(_to_float(out), count)

  def check(self, v: jax.Array, count: Any) -> jax.Array:
    """``v`` if in range; else ``ValueError`` (concrete) or NaN (traced)."""
    if _checks.is_traced(v):
      # No astype: the result keeps v's dtype and weak type, as the concrete
      # path does, so eager and jitted runs compute the same.
      return jnp.where(self.range.holds_traced(v), v, jnp.nan)
    x = float(v)
    if not self.range.holds(x):
      at = "" if _checks.is_traced(count) else f" at step {int(count)}"
      shown = str(np.asarray(v)[()]) if v.dtype != jnp.float64 else repr(x)
      raise ValueError(
        f"{self.fn}: {self.name} is {shown}{at}; it must be in "
        f"{self.range.text()}.{_suffix(self.range.fix)}"
      )
    return v


def resolve(
  fn: str,
  name: str,
  value: Any,
  **bounds: Any,
) -> Hyper:
  """A :class:`Hyper` for ``value`` (a number, a schedule or a traced value).

  ``bounds`` are :class:`Range`'s fields (``low``, ``high``, ``low_open``,
  ``high_open``, ``fix``).

  A number is checked now (:func:`real`); a schedule's values and a traced
  value are checked at each step (see :class:`Hyper`). A :class:`ByPath` is
  refused here: a stage that takes values by path uses :func:`resolve_by_path`.
  """
  if isinstance(value, ByPath):
    raise TypeError(
      f"{fn}: {name} does not take values by path (by_path); pass one number "
      "or schedule, or use optaxtra.scale_by_path for per-path learning-rate "
      "multipliers."
    )
  return Hyper(fn, name, value, Range(**bounds))


class PathHyper:
  """A hyperparameter that may differ by parameter path.

  For a plain value it behaves as one :class:`Hyper` shared by every leaf;
  for a :class:`ByPath`, each rule's value is its own :class:`Hyper` (checked
  in the same words, the rule named), bound to the params' paths at ``init``
  with :meth:`assign`.
  """

  def __init__(self, fn: str, name: str, value: Any, rng: Range):
    self.fn, self.name, self.value = fn, name, value
    self.by_path = isinstance(value, ByPath)
    if isinstance(value, ByPath):
      self.labels = [f"{name}{label}" for label in value.labels()]
      self.hypers = [
        Hyper(fn, f"{name}{label}", v, rng)
        for label, v in zip(value.labels(), value.values(), strict=True)
      ]
    else:
      self.labels = [name]
      self.hypers = [Hyper(fn, name, value, rng)]

  def assign(self, paths: Sequence[str]) -> list[int]:
    """Each path's index into :meth:`values` (all 0 for a plain value)."""
    if isinstance(self.value, ByPath):
      return self.value.assign(self.fn, self.name, paths)
    return [0] * len(paths)

  def values(self, count: Any) -> list[jax.Array]:
    """The checked value of each rule (one for a plain value) at ``count``."""
    return [h(count) for h in self.hypers]

  @property
  def constants(self) -> list[float | None]:
    """Each rule's constant value, None for a schedule or a traced value."""
    return [h.constant for h in self.hypers]


def resolve_by_path(
  fn: str,
  name: str,
  value: Any,
  **bounds: Any,
) -> PathHyper:
  """A :class:`PathHyper` for a value that may be a :func:`by_path`;
  ``bounds`` as for :func:`resolve`."""
  return PathHyper(fn, name, value, Range(**bounds))


def constants_by_path(fn: str, name: str, value: Any, **bounds: Any) -> PathHyper:
  """:func:`resolve_by_path` for a value that may not be a schedule (Adam's
  ``b1``, ``b2``, ``eps``): numbers and traced values, by path or not."""
  out = resolve_by_path(fn, name, value, **bounds)
  for h in out.hypers:
    if h.is_schedule:
      raise TypeError(
        f"{fn}: {h.name} must be a number, not a schedule ({h.value!r}); a "
        "value that changes along training is passed through "
        "optax.inject_hyperparams."
      )
  return out


Schedule = Callable[[jax.Array], Any]
