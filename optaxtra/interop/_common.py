"""What the importers share: a source's rule, the state filler, the probes.

A run carried from another framework arrives as a :class:`Source`: its step
count, its per-parameter moments (already in the params' layout) and, per
parameter, the :class:`Rule` its optimizer follows at the next step (the
hyperparameters of that parameter's group). :func:`build_state` makes the
state of ``tx`` from it:

1. ``tx.init(params)`` gives the structure;
2. the state is walked (:func:`rewrite`): every Adam-like state (fields
   ``mu`` and ``nu``: :class:`optax.ScaleByAdamState`, optaxtra's Adam and
   Adamax states), every :class:`optax.TraceState` and every count is found;
   the moments are filled by parameter path, each count set to the source's;
3. before that, :func:`check_behaviour` runs ``tx`` on stand-ins (size-1
   arrays of each parameter's ndim, as :func:`optaxtra.describe` does) from
   probe states and compares what it does with what the rule says: each
   hyperparameter is read from ``tx``'s behaviour, so ``optax.adamw``, a
   chain of optaxtra stages, ``inject_hyperparams``, per-path values,
   ``optax.partition`` and ``MultiSteps`` are all checked the same way, and a
   disagreement is named.

The module never imports torch, TensorFlow or Keras.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxtra._core import hyper as _hyper
from optaxtra._core.checks import default_float
from optaxtra._core.paths import quote, rebuild, show, walk
from optaxtra._introspect.declare import declaration
from optaxtra._introspect.optax_states import declare_optax_states

# The per-parameter slots a source can hold.
M1 = "m1"  # first moment (torch exp_avg, Keras momentum, TF1 m)
M2 = "m2"  # second moment or running max (exp_avg_sq / exp_inf, velocity / norm, v)
TRACE = "trace"  # momentum buffer (torch SGD)
_SLOT_WORDS = {
  M1: "first moment (mu)",
  M2: "second moment or running max (nu)",
  TRACE: "momentum (trace)",
}

# Values a state records about its last update that depend on the count only:
# after the fill they are recomputed for the last update the source made.
_RECORDED = frozenset(
  {"learning_rate", "step_size", "bias_correction", "decay_rate", "weight_decay"}
)
# How many updates a probe may take before a count moves (optax.MultiSteps).
_MAX_MICRO_STEPS = 64


@dataclasses.dataclass(frozen=True)
class Rule:
  """What the source's optimizer does to one parameter at its next step.

  ``None`` marks a hyperparameter the source does not record (a TF1
  checkpoint holds no learning rate or epsilon): it is not checked.

  Attributes:
    algo: ``"adam"``, ``"adamax"`` or ``"sgd"``.
    group: where the values come from, for messages ("param group 1").
    names: the source's spelling of each hyperparameter, by our name.
    lr, b1, b2, eps: as in the source.
    weight_decay: the coefficient (0 for none).
    decoupled: decay ``p -= lr * weight_decay * p`` (AdamW, Keras); else
      coupled, ``g += weight_decay * p`` (torch Adam, Adamax, SGD).
    epsilon_hat: Adam with epsilon outside the bias correction (Keras, TF1).
    eps_in_max: Adamax's running max takes ``|g| + eps`` (torch, Optax);
      else eps is added to the denominator (Keras, the Neural GPU's).
    momentum, nesterov: SGD's.
    maximize: torch's flag (the gradient negated).
  """

  algo: str
  group: str
  names: Mapping[str, str]
  lr: float | None = None
  b1: float | None = None
  b2: float | None = None
  eps: float | None = None
  weight_decay: float | None = 0.0
  decoupled: bool = False
  epsilon_hat: bool = False
  eps_in_max: bool = True
  momentum: float = 0.0
  nesterov: bool = False
  maximize: bool = False

  def name(self, what: str) -> str:
    return self.names.get(what, what)


@dataclasses.dataclass
class Source:
  """A run from another framework, ready to fill a state.

  Attributes:
    fn: the public function, for messages.
    framework: the source in words ("torch's AdamW").
    slot_names: the source's name of each slot it holds (``{M1: "exp_avg"}``).
    slots: per parameter path, its slots' values (NumPy arrays, in the params'
      layout); a path absent here has no state in the source yet.
    rules: per parameter path, the :class:`Rule`.
    count: the number of updates done, or None when the source does not say.
    count_hint: how to pass ``count`` when it is needed and unknown.
  """

  fn: str
  framework: str
  slot_names: Mapping[str, str]
  slots: dict[str, dict[str, np.ndarray]]
  rules: dict[str, Rule]
  count: int | None
  count_hint: str = ""


# --- Arguments ------------------------------------------------------------------


def check_paths(fn: str, params: Any, paths: Any, n: int, what: str) -> list[str]:
  """``paths`` as a list of ``n`` strings naming every parameter of ``params`` once."""
  if isinstance(paths, str) or not isinstance(paths, Sequence):
    raise TypeError(
      f"{fn}: paths must be a list of parameter paths (strings, as "
      f"optaxtra.masks.paths(params) prints them), got {type(paths).__name__}."
    )
  paths = list(paths)
  for p in paths:
    if not isinstance(p, str):
      raise TypeError(f"{fn}: paths holds {p!r}, not a parameter path (a str).")
  if len(paths) != n:
    raise ValueError(
      f"{fn}: paths names {len(paths)} parameters but {what} has {n}; give one "
      f"path per parameter, in {what}'s order."
    )
  known = param_paths(params)
  twice = sorted({p for p in paths if paths.count(p) > 1})
  if twice:
    raise ValueError(f"{fn}: paths names {show(twice)} more than once.")
  unknown = [p for p in paths if p not in known]
  if unknown:
    raise ValueError(
      f"{fn}: paths names {show(unknown)}, not a path of params. The paths of "
      f"params are {show(list(known))}."
    )
  missing = [p for p in known if p not in set(paths)]
  if missing:
    raise ValueError(
      f"{fn}: params has {show(missing)}, which paths does not name; every "
      f"parameter needs its counterpart in {what}."
    )
  return paths


def param_paths(params: Any) -> dict[str, Any]:
  """Every parameter's path and value (masked positions left out)."""
  entries, _ = walk(params)
  return {e.path: e.value for e in entries if not e.masked}


def as_numpy(x: Any) -> np.ndarray:
  """A host array; narrow floats that NumPy lacks come as float32."""
  a = np.asarray(x)
  if a.dtype.kind == "V" or a.dtype.name in ("bfloat16", "float8_e4m3fn"):
    a = a.astype(np.float32)
  return a


def converted(
  fn: str, convert: Callable[[str, Any], Any] | None, path: str, x: np.ndarray
) -> np.ndarray:
  """``convert(path, x)`` as a NumPy array, or ``x`` without a hook."""
  if convert is None:
    return x
  if not callable(convert):
    raise TypeError(
      f"{fn}: convert must be a function (path, array) -> array, got {convert!r}."
    )
  try:
    out = convert(path, x)
  except Exception as e:
    raise ValueError(
      f"{fn}: convert failed on {quote(path)} (shape {x.shape}): "
      f"{type(e).__name__}: {e}"
    ) from e
  return as_numpy(out)


def step_count(fn: str, name: str, value: Any) -> int:
  """A step count read from a source (a float tensor holding an integer)."""
  v = float(np.asarray(value))
  if not math.isfinite(v) or v < 0 or v != round(v) or v > _hyper.INT32_MAX:
    raise ValueError(
      f"{fn}: {name} is {v!r}, not a step count (a whole number of updates "
      "in [0, 2**31 - 1])."
    )
  return round(v)


def float_of(x: Any) -> float:
  """A hyperparameter read from a source (a number, a 0-d tensor or array)."""
  if hasattr(x, "detach"):  # a torch tensor
    x = x.detach().cpu().numpy()
  return float(np.asarray(x))


def transpose_linear(path: str, x: Any) -> Any:
  """A ``convert`` hook: transposes every 2-D array, leaves the rest.

  PyTorch's ``nn.Linear`` stores its weight as ``(out, in)``; Flax's and
  Haiku's dense layers store the kernel as ``(in, out)``. The hook is its own
  inverse, so the same function converts from torch and back
  (:func:`optaxtra.interop.to_torch`). It transposes *every* 2-D array:
  where a model has 2-D parameters in the same layout on both sides (an
  embedding table), write the hook for your paths instead, e.g.
  ``lambda path, x: x.T if path.endswith("kernel") else x``.

  Args:
    path: the parameter's path (unused).
    x: the array.

  Returns:
    ``x.T`` for a 2-D array, else ``x``.

  Examples:
    >>> import numpy as np
    >>> from optaxtra import interop
    >>> interop.transpose_linear("dense/kernel", np.zeros((3, 4))).shape
    (4, 3)
    >>> interop.transpose_linear("dense/bias", np.zeros(3)).shape
    (3,)
  """
  del path
  return x.T if np.ndim(x) == 2 else x


# --- Walking a state ---------------------------------------------------------------


def _moment_fields(node: Any) -> dict[str, str] | None:
  """The slot held by each field of a state we know how to fill, or None."""
  if isinstance(node, optax.TraceState):
    return {"trace": TRACE}
  cls = type(node)
  decl = declaration(cls)
  trees = set(decl.trees) if decl is not None else set()
  if trees == {"mu", "nu"} and (
    cls is optax.ScaleByAdamState or cls.__module__.startswith("optaxtra")
  ):
    return {"mu": M1, "nu": M2}
  return None


def _is_moment_like(node: Any) -> bool:
  decl = declaration(type(node))
  return decl is not None and bool({"mu", "nu", "trace"} & set(decl.trees))


def _count_fields(node: Any) -> set[str]:
  if isinstance(node, optax.MultiStepsState):
    return {"gradient_step"}
  decl = declaration(type(node))
  if decl is not None:
    return {f for f, name in decl.values if name == "count"}
  return {"count"}


def _recorded_fields(node: Any) -> set[str]:
  if isinstance(
    node, optax.InjectHyperparamsState | optax.InjectStatefulHyperparamsState
  ):
    return {"hyperparams"}
  decl = declaration(type(node))
  if decl is None:
    return set()
  return {f for f, name in decl.values if name in _RECORDED}


def _children(node: Any) -> tuple[list[Any], Any] | None:
  flat, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
  if len(flat) == 1 and flat[0] is node:
    return None
  return flat, treedef


def _keys(node: Any) -> list[str]:
  flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
  out = []
  for path, _x in flat:
    (k,) = path
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return out


@dataclasses.dataclass
class Hooks:
  """What :func:`rewrite` does at each place; a hook returns the new value.

  Attributes:
    slot: ``(kind, state_path, param_path, leaf) -> leaf``.
    tree: called with ``(kind, state_path, tree)`` for each whole moment tree.
    count: ``(state_path, leaf) -> leaf``.
    recorded: ``(state_path, value) -> value`` for a recorded value.
    unknown: called with ``(state_path, node)`` for a state holding moments
      that cannot be filled.
  """

  slot: Callable[[str, str, str, Any], Any] | None = None
  tree: Callable[[str, str, Any], None] | None = None
  count: Callable[[str, Any], Any] | None = None
  recorded: Callable[[str, Any], Any] | None = None
  unknown: Callable[[str, Any], None] | None = None


def rewrite(state: Any, hooks: Hooks) -> Any:
  """``state`` with its moments, counts and recorded values passed to ``hooks``."""
  declare_optax_states()

  def visit(node: Any, where: tuple[str, ...]) -> Any:
    if node is None or isinstance(node, optax.MaskedNode):
      return node
    fields = getattr(type(node), "_fields", None)
    if isinstance(node, tuple) and fields is not None:
      moments = _moment_fields(node)
      if moments is None and _is_moment_like(node) and hooks.unknown is not None:
        hooks.unknown("/".join(where), node)
      counts = _count_fields(node)
      recorded = _recorded_fields(node)
      decl = declaration(type(node))
      trees = set(decl.trees) if decl is not None else set()
      new = {}
      for f in fields:
        v = getattr(node, f)
        here = "/".join((*where, f))
        if moments is not None and f in moments:
          new[f] = _slot_tree(v, moments[f], here)
        elif f in counts and v is not None and np.shape(v) == ():
          new[f] = hooks.count(here, v) if hooks.count is not None else v
        elif f in recorded and v is not None and hooks.recorded is not None:
          new[f] = hooks.recorded(here, v)
        elif f in trees:
          new[f] = v  # params-shaped, not a place for states
        else:
          new[f] = visit(v, (*where, f))
      return cast(Any, node)._replace(**new)
    kids = _children(node)
    if kids is None:
      return node
    flat, treedef = kids
    keys = _keys(node)
    return treedef.unflatten(
      [visit(c, (*where, k)) for c, k in zip(flat, keys, strict=True)]
    )

  def _slot_tree(tree: Any, kind: str, here: str) -> Any:
    if hooks.tree is not None and tree is not None:
      hooks.tree(kind, here, tree)
    if hooks.slot is None or tree is None:
      return tree
    entries, treedef = walk(tree)
    values = [
      None if e.masked else hooks.slot(kind, here, e.path, e.value) for e in entries
    ]
    return rebuild(entries, treedef, values)

  return visit(state, ())


def count_values(state: Any) -> dict[str, int]:
  """Every count of ``state``, by state path."""
  out: dict[str, int] = {}

  def count(where: str, leaf: Any) -> Any:
    out[where] = int(np.asarray(leaf))
    return leaf

  rewrite(state, Hooks(count=count))
  return out


def moment_trees(state: Any) -> list[Any]:
  """Every moment tree (``mu``, ``nu``, ``trace``) of ``state``, in order."""
  out: list[Any] = []
  rewrite(state, Hooks(tree=lambda kind, where, tree: out.append(tree)))
  return out


def read_slots(state: Any) -> dict[str, dict[str, list[tuple[str, Any]]]]:
  """Per parameter path, per slot, the ``(state path, value)`` places holding it."""
  out: dict[str, dict[str, list[tuple[str, Any]]]] = {}

  def slot(kind: str, where: str, path: str, leaf: Any) -> Any:
    out.setdefault(path, {}).setdefault(kind, []).append((where, leaf))
    return leaf

  rewrite(state, Hooks(slot=slot))
  return out


def refuse_unknown(fn: str, framework: str) -> Callable[[str, Any], None]:
  def unknown(where: str, node: Any) -> None:
    raise ValueError(
      f"{fn}: tx keeps a {type(node).__name__} (at {quote(where)} in its state), "
      f"whose moments {framework} has no counterpart for. Supported: the moments "
      "of optax's and optaxtra's Adam and Adamax (mu, nu) and optax.trace's "
      "momentum; an optimizer that keeps other moments (AMSGrad's nu_max, "
      "AdaBelief, Lion, RMSprop) cannot be carried over."
    )

  return unknown


# --- Filling --------------------------------------------------------------------


def build_state(src: Source, tx: optax.GradientTransformation, params: Any) -> Any:
  """The state of ``tx`` that continues the run ``src`` holds (see the module)."""
  fn = src.fn
  state = tx.init(params)
  rewrite(state, Hooks(unknown=refuse_unknown(fn, src.framework)))
  _check_slots(src, read_slots(state))
  counts = count_values(state)
  count = src.count
  if count is None:
    if counts:
      raise ValueError(
        f"{fn}: tx's state has counts ({show(list(counts))}) and {src.framework} "
        f"does not say how many updates were made. {src.count_hint}"
      )
    count = 0
  check_behaviour(src, tx, params, count)
  values = param_paths(params)

  def slot(kind: str, where: str, path: str, leaf: Any) -> Any:
    given = src.slots.get(path, {}).get(kind)
    if given is None:
      return leaf  # no state in the source yet: tx.init's zeros
    want = tuple(np.shape(leaf))
    if tuple(given.shape) != want:
      raise ValueError(
        f"{fn}: {src.framework}'s {src.slot_names[kind]} of {quote(path)} has "
        f"shape {tuple(given.shape)}, but tx keeps {want} for it (the param is "
        f"{tuple(np.shape(values[path]))}). If the two frameworks lay the "
        "parameter out differently, pass convert= (interop.transpose_linear "
        "turns a torch Linear weight (out, in) into a Dense kernel (in, out))."
      )
    return _like(leaf, given)

  def set_count(where: str, leaf: Any) -> Any:
    return jnp.asarray(count, jnp.result_type(leaf))

  state = rewrite(
    state,
    Hooks(slot=slot, count=set_count, unknown=refuse_unknown(fn, src.framework)),
  )
  if count > 0:
    state = _recorded_values(src, tx, params, state, count)
  return state


def _like(leaf: Any, value: np.ndarray) -> Any:
  """``value`` in ``leaf``'s dtype, and on its devices."""
  dtype = jnp.result_type(leaf)
  out = jnp.asarray(np.asarray(value).astype(dtype))
  sharding = getattr(leaf, "sharding", None)
  if isinstance(leaf, jax.Array) and sharding is not None:
    out = jax.device_put(out, sharding)
  return out


def _check_slots(src: Source, holders: dict[str, dict[str, list]]) -> None:
  """Every slot the source holds has exactly one place in tx's state, and back."""
  fn = src.fn
  for path, kinds in holders.items():
    for kind, places in kinds.items():
      if kind not in src.slot_names:
        raise ValueError(
          f"{fn}: tx keeps a {_SLOT_WORDS[kind]} for {quote(path)} (at "
          f"{quote(places[0][0])}), which {src.framework} does not have: tx is "
          f"not the optimizer {src.framework} ran."
        )
      if len(places) > 1:
        raise ValueError(
          f"{fn}: tx keeps {len(places)} places for the {_SLOT_WORDS[kind]} of "
          f"{quote(path)} ({show([w for w, _ in places])}), so it cannot tell "
          f"which one continues {src.framework}'s {src.slot_names[kind]}."
        )
  for path in src.rules:
    for kind in src.slot_names:
      if kind not in holders.get(path, {}):
        raise ValueError(
          f"{fn}: tx keeps no {_SLOT_WORDS[kind]} for {quote(path)}, where "
          f"{src.framework} keeps {src.slot_names[kind]}: is the parameter "
          "frozen, masked out or given another optimizer in tx?"
        )


def _recorded_values(
  src: Source, tx: optax.GradientTransformation, params: Any, state: Any, count: int
) -> Any:
  """The values tx records about its last update, as at update ``count``.

  The learning rate, bias correction, decay rate and ``inject_hyperparams``'
  values a state records depend on the count alone: one update of tx on
  stand-ins from count ``count - 1`` gives them.
  """
  probe = _Probe(src.fn, tx, params)
  after = probe.state_after(count - 1, {M1: 0.0, M2: 1.0, TRACE: 0.0}, 0.0, 0.0)
  found: dict[str, Any] = {}

  def collect(where: str, value: Any) -> Any:
    found[where] = value
    return value

  rewrite(after, Hooks(recorded=collect))

  def replace(where: str, value: Any) -> Any:
    new = found.get(where)
    if new is None:
      return value
    a, b = jax.tree.structure(value), jax.tree.structure(new)
    same = a == b and all(
      np.shape(x) == np.shape(y) and jnp.result_type(x) == jnp.result_type(y)
      for x, y in zip(jax.tree.leaves(value), jax.tree.leaves(new), strict=True)
    )
    return new if same else value

  return rewrite(state, Hooks(recorded=replace))


# --- Probing tx's behaviour --------------------------------------------------------


def _probe_dtype() -> Any:
  """float64 under ``jax_enable_x64``, else float32."""
  return jnp.dtype(default_float())


class _Probe:
  """Runs tx on size-1 stand-ins of the params from chosen states."""

  def __init__(self, fn: str, tx: optax.GradientTransformation, params: Any):
    self.fn = fn
    self.tx = tx
    self.params = params
    self.dtype = _probe_dtype()
    # Eager: the stand-ins are tiny, and compiling would cost more than running.
    self.update = tx.update

  def _fill(self, value: float) -> Any:
    dt = self.dtype

    def leaf(x):
      shape = (1,) * np.ndim(x)
      if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return jnp.zeros(shape, jnp.result_type(x))
      return jnp.full(shape, value, dt)

    return jax.tree.map(leaf, self.params)

  def state_after(
    self, count: int, slots: Mapping[str, float], g: float, p: float
  ) -> Any:
    return self.run(count, slots, g, p)[1]

  def run(
    self, count: int, slots: Mapping[str, float], g: float, p: float
  ) -> tuple[Any, Any]:
    params = self._fill(p)
    grads = self._fill(g)
    try:
      state = self.tx.init(params)

      def slot(kind, where, path, leaf):
        return jnp.full(np.shape(leaf), slots.get(kind, 0.0), jnp.result_type(leaf))

      def set_count(where, leaf):
        return jnp.asarray(count, jnp.result_type(leaf))

      state = rewrite(state, Hooks(slot=slot, count=set_count))
      has_counts = bool(count_values(state))
      updates = None
      for _ in range(_MAX_MICRO_STEPS):  # optax.MultiSteps: until a count moves
        updates, state = self.update(grads, state, params)
        if not has_counts or any(c != count for c in count_values(state).values()):
          break
    except Exception as e:
      raise ValueError(
        f"{self.fn}: could not run tx on stand-ins of the params (size-1 arrays "
        f"of each leaf's ndim) to check it against the source: "
        f"{type(e).__name__}: {e}. The check runs tx.init and tx.update(grads, "
        "state, params); a transformation that needs extra arguments cannot be "
        "checked."
      ) from e
    return updates, state

  def measure(
    self, count: int, slots: Mapping[str, float], g: float, p: float
  ) -> dict[str, dict[str, float]]:
    """Per parameter path: the update ``"u"`` and each slot's new value."""
    updates, state = self.run(count, slots, g, p)
    out: dict[str, dict[str, float]] = {}
    for e in walk(updates)[0]:
      if not e.masked and e.value is not None:
        out.setdefault(e.path, {})["u"] = float(
          np.asarray(e.value, np.float64).ravel()[0]
        )
    for path, kinds in read_slots(state).items():
      for kind, places in kinds.items():
        v = places[0][1]
        out.setdefault(path, {})[kind] = float(np.asarray(v, np.float64).ravel()[0])
    return out


def reference_step(
  r: Rule, count: int, m1: float, m2: float, trace: float, g: float, p: float
) -> dict[str, float]:
  """The source's next update of one entry, in float64: ``u`` and the slots."""
  n = count + 1
  if r.maximize:
    g = -g
  lr = r.lr or 0.0
  wd = r.weight_decay or 0.0
  decay = 0.0
  if wd:
    if r.decoupled:
      decay = -lr * wd * p
    else:
      g = g + wd * p
  if r.algo == "sgd":
    if r.momentum:
      new_trace = r.momentum * trace + g
      d = g + r.momentum * new_trace if r.nesterov else new_trace
      return {"u": -lr * d + decay, TRACE: new_trace}
    return {"u": -lr * g + decay}
  b1, b2 = r.b1 or 0.0, r.b2 or 0.0
  eps = r.eps or 0.0
  new_m1 = b1 * m1 + (1 - b1) * g
  c1 = _one_minus_power(b1, n)
  if r.algo == "adam":
    new_m2 = b2 * m2 + (1 - b2) * g * g
    c2 = _one_minus_power(b2, n)
    if r.epsilon_hat:
      step = math.sqrt(c2) / c1 * _div(new_m1, math.sqrt(new_m2) + eps)
    else:
      step = _div(new_m1 / c1, math.sqrt(new_m2 / c2) + eps)
  elif r.eps_in_max:  # adamax: torch's and optax's
    new_m2 = max(b2 * m2, abs(g) + eps)
    step = _div(new_m1, c1 * new_m2)
  else:  # adamax: Keras' and the Neural GPU's
    new_m2 = max(b2 * m2, abs(g))
    step = _div(new_m1, c1 * (new_m2 + eps))
  return {"u": -lr * step + decay, M1: new_m1, M2: new_m2}


def _close(a: float, b: float, rtol: float, scale: float = 0.0) -> bool:
  if math.isinf(a) or math.isinf(b):
    return a == b
  return abs(a - b) <= rtol * max(abs(a), abs(b), scale)


def _fmt(x: float) -> str:
  return f"{x:.6g}"


class _Checker:
  def __init__(self, src: Source, tx: Any, params: Any, count: int):
    self.src = src
    self.fn = src.fn
    self.count = count
    self.probe = _Probe(src.fn, tx, params)
    # float32: Optax's 1 - b2**t cancels (7e-6 relative at t = 2); float64: a
    # schedule or hyperparameter that tx computes in float32 all the same.
    self.rtol = 1e-6 if self.probe.dtype == jnp.float64 else 1e-4
    self.rules = src.rules

  def fail(
    self, path: str, r: Rule, what: str, source: Any, got: str, fix: str
  ) -> None:
    n = sum(1 for q in self.rules.values() if q.group == r.group)
    where = f"{r.group} ({n} parameters)" if r.group and n > 1 else r.group
    raise ValueError(
      f"{self.fn}: {self.src.framework}'s {r.name(what)} is {source!r}"
      f"{f' in {where}' if where else ''}, but for {quote(path)} tx {got} "
      f"(read from one update of tx on stand-ins of the params). {fix}".rstrip()
    )

  def measure(self, slots, g, p, count=None):
    return self.probe.measure(self.count if count is None else count, slots, g, p)


def check_behaviour(
  src: Source, tx: optax.GradientTransformation, params: Any, count: int
) -> None:
  """Refuses ``tx`` where it does not do what the source's rules say, by name."""
  if not src.rules:
    return
  c = _Checker(src, tx, params, count)
  algos = {r.algo for r in src.rules.values()}
  (algo,) = algos
  if algo == "sgd":
    _check_sgd(c)
  else:
    _check_adam_like(c, algo)


def _betas(c: _Checker, algo: str) -> dict[str, tuple[float, float]]:
  """tx's b1 and b2 per path, read from its moments after a zero gradient."""
  s = 1e4
  m2 = s * s if algo == "adam" else s
  got = c.measure({M1: s, M2: m2}, 0.0, 0.0)
  out = {}
  for path, r in c.rules.items():
    b1, b2 = got[path][M1] / s, got[path][M2] / m2
    if r.b1 is not None and not _close(b1, r.b1, c.rtol):
      c.fail(path, r, "b1", r.b1, f"uses b1={_fmt(b1)}", "Build tx with the same b1.")
    if r.b2 is not None and not _close(b2, r.b2, c.rtol):
      c.fail(path, r, "b2", r.b2, f"uses b2={_fmt(b2)}", "Build tx with the same b2.")
    out[path] = (b1, b2)
  return out


def measured_betas(
  src: Source, tx: Any, params: Any, algo: str
) -> dict[str, tuple[float, float]]:
  """tx's b1 and b2 per parameter path (for a source that holds none)."""
  c = _Checker(src, tx, params, 0)
  return _betas(c, algo)


def _with(r: Rule, **kw: Any) -> Rule:
  return dataclasses.replace(r, **kw)


def _check_adam_like(c: _Checker, algo: str) -> None:
  betas = _betas(c, algo)
  rules = {p: _with(r, b1=betas[p][0], b2=betas[p][1]) for p, r in c.rules.items()}
  s = 1e4
  big_m2 = s * s if algo == "adam" else s
  known_lr = all(r.lr is not None for r in rules.values())
  if not known_lr:
    _check_kind(c, rules, algo)
    return
  # maximize: the sign of the moment a gradient leaves, and of the update.
  got = c.measure({M1: 0.0, M2: 0.0}, 1.0, 0.0)
  for path, r in rules.items():
    want = reference_step(r, c.count, 0.0, 0.0, 0.0, 1.0, 0.0)
    if np.sign(got[path][M1]) != np.sign(want[M1]) or (
      r.lr and np.sign(got[path]["u"]) != np.sign(want["u"])
    ):
      c.fail(
        path,
        r,
        "maximize",
        r.maximize,
        "moves the other way (or keeps the negated gradient in its moment)",
        "torch's maximize=True negates the gradient before the moments; do the "
        "same in tx (optax.scale(-1.0) first) or train with maximize=False.",
      )
  # The learning rate: a state whose step eps cannot change.
  got = c.measure({M1: s, M2: big_m2}, 0.0, 0.0)
  for path, r in rules.items():
    unit = reference_step(_with(r, lr=1.0), c.count, s, big_m2, 0.0, 0.0, 0.0)["u"]
    lr = got[path]["u"] / unit
    if not _close(lr, r.lr or 0.0, c.rtol):
      c.fail(
        path,
        r,
        "lr",
        r.lr,
        f"steps with learning rate {_fmt(lr)} at step {c.count + 1}"
        + (
          f" (bias correction included: tx's differs from {c.src.framework}'s, "
          "or its learning rate does)"
          if algo == "adam"
          else ""
        ),
        "Give tx the learning rate the source uses at this step (a schedule "
        "evaluated at the count the source has reached), with the same bias "
        "correction.",
      )
  # eps: a moment with nothing in the denominator but eps.
  got = c.measure({M1: 1.0, M2: 0.0}, 0.0, 0.0)
  for path, r in rules.items():
    if not r.lr:
      continue
    _check_eps(c, path, r, algo, got[path])
  # weight decay: coupled shows in the moment, decoupled in the update.
  got = c.measure({M1: 0.0, M2: big_m2}, 0.0, 1.0)
  for path, r in rules.items():
    _check_decay(c, path, r, algo, got[path], big_m2)
  # Everything at once, with small values (below any clipping threshold).
  gam = 1e-3
  state = {M1: 0.4 * gam, M2: (1.5 * gam) ** 2 if algo == "adam" else 1.5 * gam}
  got = c.measure(state, gam, 0.5)
  for path, r in rules.items():
    want = reference_step(r, c.count, state[M1], state[M2], 0.0, gam, 0.5)
    _check_all(c, path, r, got[path], want)


def _check_eps(c: _Checker, path: str, r: Rule, algo: str, got: dict) -> None:
  n = c.count + 1
  b1, b2 = r.b1 or 0.0, r.b2 or 0.0
  c1 = _one_minus_power(b1, n)
  eps = r.eps or 0.0
  lr = r.lr or 0.0
  if algo == "adamax":
    want_m2 = eps if r.eps_in_max else 0.0
    if not _close(got[M2], want_m2, c.rtol):
      if r.eps_in_max:
        fix = (
          "torch's Adamax (like optax.adamax) adds eps to |g| inside the running "
          "max, exp_inf = max(b2 * exp_inf, |g| + eps), where "
          "optaxtra.scale_by_adamax_clipped adds it to the denominator: use "
          "optax.adamax or optax.scale_by_adamax."
        )
      else:
        fix = (
          f"{c.src.framework} adds epsilon to the denominator, u = max(b2 * u, "
          "|g|), step m / (u + epsilon), where optax.adamax adds it inside the "
          "max: use optaxtra.scale_by_adamax_clipped(clip=False, "
          "bias_correction=True)."
        )
      c.fail(
        path,
        r,
        "eps",
        r.eps,
        f"keeps a running max of {_fmt(got[M2])} after a zero gradient from 0 "
        f"(the source keeps {_fmt(want_m2)})",
        fix,
      )
    if r.eps_in_max:
      return  # the running max held eps itself, compared above
    tx_eps = _div(-lr * b1, c1 * got["u"])
    if not _close(tx_eps, eps, c.rtol):
      c.fail(
        path, r, "eps", r.eps, f"uses eps={_fmt(tx_eps)}", "Build tx with the same eps."
      )
    return
  sq = math.sqrt(_one_minus_power(b2, n))
  scale = b1 / c1 * (sq if r.epsilon_hat else 1.0)
  tx_eps = _div(-lr * scale, got["u"])
  if _close(tx_eps, eps, c.rtol):
    return
  if eps and _close(tx_eps, eps / sq, 100 * c.rtol):
    fix = (
      "tx adds epsilon outside the bias correction (epsilon hat, as Keras and "
      f"TF1 do) and {c.src.framework} inside: use optax.adam / optax.adamw or "
      "optaxtra.scale_by_adam(epsilon_hat=False)."
    )
  elif eps and _close(tx_eps, eps * sq, 100 * c.rtol):
    fix = (
      "tx adds epsilon inside the bias correction (as PyTorch and optax.adam do) "
      f"and {c.src.framework} outside (epsilon hat): use "
      "optaxtra.scale_by_adam(epsilon_hat=True)."
    )
  else:
    fix = "Build tx with the same eps."
  form = " (in the source's form, outside the bias correction)" if r.epsilon_hat else ""
  c.fail(path, r, "eps", r.eps, f"behaves as eps={_fmt(tx_eps)}{form} at step {n}", fix)


def _one_minus_power(b: float, n: int) -> float:
  """``1 - b**n`` without cancellation (1 for ``b = 0``)."""
  return -math.expm1(n * math.log(b)) if b > 0 else 1.0


def _div(a: float, b: float) -> float:
  """``a / b`` with IEEE results (inf, nan) instead of ZeroDivisionError."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return float(np.float64(a) / np.float64(b))


def _check_decay(
  c: _Checker, path: str, r: Rule, algo: str, got: dict, m2: float
) -> None:
  if r.weight_decay is None:
    return
  b1 = r.b1 or 0.0
  coupled = got[M1] / (1 - b1) if b1 < 1 else 0.0
  unit = _with(r, lr=1.0, weight_decay=0.0, maximize=False)
  step = reference_step(unit, c.count, 0.0, m2, 0.0, coupled, 0.0)["u"]
  lr = r.lr or 0.0
  decoupled = (-got["u"] / lr + step) if lr else 0.0
  want_c = 0.0 if r.decoupled else r.weight_decay
  want_d = r.weight_decay if r.decoupled else 0.0
  tol = c.rtol * (abs(r.weight_decay) + abs(step))
  if abs(coupled - want_c) <= tol and (not lr or abs(decoupled - want_d) <= tol):
    return
  kind = (
    "decoupled, lr * weight_decay * p"
    if r.decoupled
    else "coupled, added to the gradient"
  )
  parts = []
  if abs(coupled) > tol:
    parts.append(f"{_fmt(coupled)} added to the gradient (coupled)")
  if lr and abs(decoupled) > tol:
    parts.append(f"lr * {_fmt(decoupled)} * p (decoupled)")
  got_text = "decays it by " + " and ".join(parts) if parts else "does not decay it"
  c.fail(
    path,
    r,
    "weight_decay",
    r.weight_decay,
    f"{got_text} (the source's decay is {kind})",
    "Give tx the same decay for this parameter: optax.adamw / "
    "optaxtra.add_decayed_weights_decoupled(wd, schedule=learning_rate) for "
    "decoupled decay, optax.add_decayed_weights before the optimizer for "
    "coupled; masks or optaxtra.by_path for per-group values.",
  )


def _check_all(c: _Checker, path: str, r: Rule, got: dict, want: dict) -> None:
  bad = []
  for k, w in want.items():
    if k in got and not _close(got[k], w, c.rtol):
      what = "update" if k == "u" else _SLOT_WORDS[k]
      bad.append(f"{what} {_fmt(got[k])} (the source: {_fmt(w)})")
  if bad:
    raise ValueError(
      f"{c.fn}: tx's next update of {quote(path)} differs from "
      f"{c.src.framework}'s on a probe gradient: {'; '.join(bad)}, although "
      "the hyperparameters checked one by one agree. The algorithms differ: "
      "look for nesterov, AMSGrad, gradient clipping inside tx with a small "
      "threshold, or a stage the source does not have."
    )


def _check_kind(c: _Checker, rules: dict[str, Rule], algo: str) -> None:
  """Without a learning rate to compare: what kind of second moment tx keeps."""
  got = c.measure({M1: 0.0, M2: 0.5}, 0.5, 0.0)
  for path, r in rules.items():
    b1, b2 = r.b1 or 0.0, r.b2 or 0.0
    want_m1 = (1 - b1) * 0.5
    if algo == "adam":
      want, words = b2 * 0.5 + (1 - b2) * 0.25, "a moving average of g**2 (Adam's)"
    else:
      want, words = max(b2 * 0.5, 0.5), "a running max of |g| (Adamax's)"
    if not _close(got[path][M1], want_m1, c.rtol) or not _close(
      got[path][M2], want, c.rtol
    ):
      raise ValueError(
        f"{c.fn}: {c.src.framework}'s second slot holds {words}, but tx's nu "
        f"for {quote(path)} does not (after a probe gradient of 0.5 it holds "
        f"{_fmt(got[path][M2])}, not {_fmt(want)}): tx is not the optimizer "
        "that wrote the checkpoint."
      )


def _check_sgd(c: _Checker) -> None:
  rules = c.rules
  gam = 1.0
  a = c.measure({TRACE: 1.0}, 0.0, 0.0)  # tx's momentum, from its trace
  m = c.measure({TRACE: 0.0}, gam, 0.0)  # one gradient from an empty trace
  for path, r in rules.items():
    mu_tx = a[path].get(TRACE, 0.0)
    if not _close(mu_tx, r.momentum, c.rtol):
      c.fail(
        path,
        r,
        "momentum",
        r.momentum,
        f"uses momentum {_fmt(mu_tx)}",
        "Build tx with the same momentum (optax.sgd(lr, momentum=...)).",
      )
    lr = r.lr or 0.0
    want = reference_step(r, c.count, 0.0, 0.0, 0.0, gam, 0.0)
    u = m[path]["u"]
    flipped = bool(lr) and np.sign(u) != np.sign(want["u"])
    if TRACE in want and TRACE in m[path]:
      flipped = flipped or np.sign(m[path][TRACE]) != np.sign(want[TRACE])
    if flipped:
      c.fail(
        path,
        r,
        "maximize",
        r.maximize,
        "moves the other way",
        "torch's maximize=True negates the gradient; do the same in tx "
        "(optax.scale(-1.0) first) or train with maximize=False.",
      )
    if r.momentum and lr:
      ratio = a[path]["u"] / u if u else math.nan
      plain, nest = r.momentum / gam, r.momentum**2 / (gam * (1 + r.momentum))
      want_ratio = nest if r.nesterov else plain
      other = plain if r.nesterov else nest
      if not _close(ratio, want_ratio, c.rtol) and _close(ratio, other, c.rtol):
        c.fail(
          path,
          r,
          "nesterov",
          r.nesterov,
          f"uses {'plain' if r.nesterov else 'Nesterov'} momentum",
          "Build tx with the same nesterov flag (optax.sgd(..., nesterov=...)).",
        )
    factor = (1 + r.momentum) if (r.nesterov and r.momentum) else 1.0
    tx_lr = -u / (gam * factor) * (-1 if r.maximize else 1)
    if not _close(tx_lr, lr, c.rtol):
      c.fail(
        path,
        r,
        "lr",
        r.lr,
        f"steps with learning rate {_fmt(tx_lr)} at step {c.count + 1}",
        "Give tx the learning rate the source uses at this step (a schedule "
        "evaluated at the count the source has reached).",
      )
  d = c.measure({TRACE: 0.0}, 0.0, 1.0)  # weight decay alone
  for path, r in rules.items():
    want = reference_step(r, c.count, 0.0, 0.0, 0.0, 0.0, 1.0)
    ok = _close(d[path]["u"], want["u"], c.rtol, scale=c.rtol * (r.lr or 0.0))
    if TRACE in want and TRACE in d[path]:
      ok = ok and _close(d[path][TRACE], want[TRACE], c.rtol, scale=c.rtol)
    if not ok and r.weight_decay is not None:
      lr = r.lr or 0.0
      factor = (1 + r.momentum) if (r.nesterov and r.momentum) else 1.0
      tx_wd = -d[path]["u"] / (lr * factor) if lr else math.nan
      c.fail(
        path,
        r,
        "weight_decay",
        r.weight_decay,
        f"decays it by {_fmt(tx_wd)} per unit of learning rate",
        "torch's SGD adds weight_decay * p to the gradient (coupled): put "
        "optax.add_decayed_weights(wd) before optax.sgd, with a mask for "
        "per-group values.",
      )
  gam = 1e-3
  got = c.measure({TRACE: 0.6 * gam}, gam, 0.5)
  for path, r in rules.items():
    want = reference_step(r, c.count, 0.0, 0.0, 0.6 * gam, gam, 0.5)
    _check_all(c, path, r, got[path], want)


def check_tf1_eps_placement(src: Source, tx: Any, params: Any) -> None:
  """Whether tx adds epsilon outside Adam's bias correction, as TF1 does.

  Without the learning rate or epsilon (a TF1 checkpoint records neither),
  the ratio of two updates at one step, one whose denominator is only eps and
  one where eps is negligible, cancels the learning rate; that ratio is the
  same at every step with epsilon outside the bias correction and changes
  with ``sqrt(1 - b2**t)`` with it inside. Skipped where an update is 0
  (a learning rate of 0 at the steps probed).
  """
  probe = _Probe(src.fn, tx, params)
  s = 1e4
  ratios = []
  for count in (0, 10**6):
    a = probe.measure(count, {M1: 1.0, M2: 0.0}, 0.0, 0.0)
    b = probe.measure(count, {M1: s, M2: s * s}, 0.0, 0.0)
    ratios.append({p: (a[p]["u"], b[p]["u"]) for p in src.rules})
  for path in src.rules:
    (a0, b0), (a1, b1) = ratios[0][path], ratios[1][path]
    if not all(math.isfinite(x) and x != 0 for x in (a0, b0, a1, b1)):
      continue
    r0, r1 = a0 / b0, a1 / b1
    if not _close(r0, r1, 1e-2):
      raise ValueError(
        f"{src.fn}: TF1's AdamOptimizer adds epsilon outside the bias correction "
        f"(epsilon hat: lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps)), "
        f"but tx adds it inside for {quote(path)} (its update with v = 0 changes "
        "relative to one with a large v as sqrt(1 - b2**t) does). Use "
        "optaxtra.scale_by_adam(epsilon_hat=True) and "
        "optaxtra.scale_by_learning_rate(lr)."
      )
