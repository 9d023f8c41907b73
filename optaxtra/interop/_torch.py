"""PyTorch optimizers' state in and out: from_torch, to_torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from optaxtra._core import hyper as _hyper
from optaxtra._core.paths import quote, rebox, show, walk
from optaxtra.interop import _common as c

_FROM = "from_torch"
_TO = "to_torch"

# torch's spelling of each hyperparameter a Rule names.
_NAMES = {
  "b1": "betas[0]",
  "b2": "betas[1]",
  "eps": "eps",
  "lr": "lr",
  "weight_decay": "weight_decay",
  "maximize": "maximize",
  "momentum": "momentum",
  "nesterov": "nesterov",
}
# Per algorithm: the torch class, and torch's name of each slot.
_SLOTS = {
  "adam": {c.M1: "exp_avg", c.M2: "exp_avg_sq"},
  "adamax": {c.M1: "exp_avg", c.M2: "exp_inf"},
  "sgd": {c.TRACE: "momentum_buffer"},
}
_SUPPORTED = "torch.optim.Adam, AdamW, Adamax and SGD"


def _algo(fn: str, groups: list[dict], states: Mapping[Any, Mapping[str, Any]]) -> str:
  """Which optimizer wrote a state dict, from the keys torch puts in it."""
  keys = set(groups[0]) if groups else set()
  state_keys: set[str] = set()
  for s in states.values():
    state_keys |= set(s)
  if {"momentum", "dampening", "nesterov"} <= keys:
    algo = "sgd"
  elif {"betas", "amsgrad"} <= keys and "momentum_decay" not in keys:
    algo = "adam"
  elif "betas" in keys and not keys & {
    "amsgrad",
    "decoupled_weight_decay",
    "momentum_decay",
  }:
    algo = "adamax"
  else:
    raise TypeError(
      f"{fn}: the state dict is not one of {_SUPPORTED} (its param groups hold "
      f"{sorted(keys)}). Only those are supported."
    )
  allowed = set(_SLOTS[algo].values()) | {"step", "max_exp_avg_sq"}
  odd = state_keys - allowed
  if odd:
    raise TypeError(
      f"{fn}: the state dict's per-parameter state holds {sorted(odd)}, which "
      f"torch's {algo} does not keep; only {_SUPPORTED} are supported."
    )
  return algo


def _framework(algo: str, groups: list[dict]) -> str:
  if algo == "adam":
    decoupled = any(g.get("decoupled_weight_decay", False) for g in groups)
    return "torch.optim.AdamW" if decoupled else "torch.optim.Adam"
  return {"adamax": "torch.optim.Adamax", "sgd": "torch.optim.SGD"}[algo]


def _rule(
  fn: str, algo: str, index: int, group: Mapping[str, Any], framework: str
) -> c.Rule:
  name = f"param group {index}"
  if group.get("maximize", False) not in (False, True):
    raise TypeError(f"{fn}: {name}'s maximize is {group['maximize']!r}, not a bool.")
  wd = c.float_of(group.get("weight_decay", 0.0))
  common = {
    "group": name,
    "names": _NAMES,
    "lr": c.float_of(group["lr"]),
    "weight_decay": wd,
    "maximize": bool(group.get("maximize", False)),
  }
  if algo == "sgd":
    dampening = c.float_of(group.get("dampening", 0.0))
    if dampening != 0:
      raise ValueError(
        f"{fn}: {framework}'s dampening is {dampening} in {name}; optax.sgd and "
        "optax.trace have no dampening (torch's buffer is momentum * buf + "
        "(1 - dampening) * g, after a first step that takes g whole), so only "
        "dampening=0 is carried over."
      )
    return c.Rule(
      "sgd",
      momentum=c.float_of(group.get("momentum", 0.0)),
      nesterov=bool(group.get("nesterov", False)),
      **common,
    )
  b1, b2 = (c.float_of(b) for b in group["betas"])
  if algo == "adam":
    if group.get("amsgrad", False):
      raise ValueError(
        f"{fn}: {framework}'s amsgrad is True in {name}; AMSGrad keeps "
        "max_exp_avg_sq, which optax.adam / optax.adamw and optaxtra's Adam do "
        "not have, so the run cannot be carried over. Train with amsgrad=False."
      )
    decoupled = group.get("decoupled_weight_decay")
    if decoupled is None and wd != 0:
      raise ValueError(
        f"{fn}: {name} has weight_decay={wd} but the state dict does not say "
        "whether the decay is decoupled (AdamW) or added to the gradient (Adam): "
        "torch before 2.6 left decoupled_weight_decay out. Set "
        "state_dict['param_groups'][i]['decoupled_weight_decay'] to True (AdamW) "
        "or False (Adam) in every group."
      )
    return c.Rule(
      "adam",
      b1=b1,
      b2=b2,
      eps=c.float_of(group["eps"]),
      decoupled=bool(decoupled),
      **common,
    )
  return c.Rule("adamax", b1=b1, b2=b2, eps=c.float_of(group["eps"]), **common)


def _to_numpy(x: Any) -> np.ndarray:
  """A torch tensor (or an array) as a NumPy array; half precision as float32."""
  if not hasattr(x, "detach"):
    return c.as_numpy(x)
  t = x.detach().cpu()
  if t.is_floating_point() and t.dtype.itemsize < 4:
    t = t.float()
  return np.asarray(t.numpy())


def _as_state_dict(fn: str, state_dict: Any) -> dict:
  if hasattr(state_dict, "state_dict") and hasattr(state_dict, "param_groups"):
    state_dict = state_dict.state_dict()  # an optimizer, given as it is
  if (
    not isinstance(state_dict, Mapping)
    or "state" not in state_dict
    or "param_groups" not in state_dict
  ):
    raise TypeError(
      f"{fn}: state_dict must be torch_optimizer.state_dict() (a dict with "
      f"'state' and 'param_groups'), got {type(state_dict).__name__}."
    )
  return dict(state_dict)


def _order(groups: list[dict]) -> list[tuple[int, Any]]:
  """``(group index, param id)`` of every parameter, in param_groups order."""
  return [(gi, pid) for gi, g in enumerate(groups) for pid in g["params"]]


def from_torch(
  tx: optax.GradientTransformation,
  params: Any,
  state_dict: Any,
  *,
  paths: Sequence[str],
  convert: Callable[[str, Any], Any] | None = None,
  count: int | None = None,
) -> optax.OptState:
  """The state of ``tx`` that continues a PyTorch run, from its optimizer's state.

  ``state_dict`` is ``torch_optimizer.state_dict()`` (or the optimizer
  itself) of a ``torch.optim.Adam``, ``AdamW``, ``Adamax`` or ``SGD``. The
  result has the structure of ``tx.init(params)``, with torch's moments in
  place of the zeros and every count set to torch's step, so the next
  ``tx.update`` makes torch's next step (``t + 1``) everywhere: the bias
  correction, a learning-rate schedule, ``inject_hyperparams``' count,
  ``MultiSteps``' count of real updates. Param groups come as they are: each
  parameter's hyperparameters are those of its group.

  ========================  =================================================
  torch                     tx (for example)
  ========================  =================================================
  ``AdamW``                 ``optax.adamw``; ``optax.chain(optaxtra.scale_by_adam(),
                            optaxtra.add_decayed_weights_decoupled(wd,
                            schedule=lr), optaxtra.scale_by_learning_rate(lr))``
  ``Adam``                  ``optax.adam``; ``optax.chain(optaxtra.scale_by_adam(),
                            optaxtra.scale_by_learning_rate(lr))``; with
                            ``weight_decay``, ``optax.add_decayed_weights(wd)``
                            first (torch's Adam adds it to the gradient)
  ``Adamax``                ``optax.adamax`` (torch and Optax put eps inside the
                            running max; ``optaxtra.scale_by_adamax_clipped``
                            puts it in the denominator, as Keras does, so it
                            is refused here)
  ``SGD``                   ``optax.sgd(lr, momentum, nesterov)``
  ========================  =================================================

  SGD's momentum buffer is Optax's trace: torch starts it at the first
  gradient and Optax at zero, which is the same buffer after the first step
  (``momentum * 0 + g``), so with ``dampening=0`` they agree at every step.

  **What is checked.** Before anything is filled, ``tx`` is run on size-1
  stand-ins of the params from probe states (as :func:`optaxtra.describe`
  does), and what it does is compared with what torch would do at the next
  step, parameter by parameter with that parameter's group: its ``b1`` and
  ``b2`` (read from the moments it keeps), the sign of its steps
  (``maximize``), its learning rate at this step (bias correction included),
  ``eps`` (and where it sits), the weight decay (coupled or decoupled), SGD's
  momentum and ``nesterov``, and then one whole update. A disagreement raises
  ``ValueError`` naming torch's hyperparameter, its group, the parameter and
  the value ``tx`` uses. The comparison is to a relative ``1e-4`` in float32
  (Optax's float32 ``1 - b2**t`` alone is 7e-6 off at ``t = 2``) and ``1e-6``
  with ``jax_enable_x64`` (a schedule that ``tx`` computes in float32 is 3e-7
  off). A mistake of configuration is far larger (``b2=0.99`` for ``0.999``,
  an exponential decay one step off); a slowly varying schedule one step off
  can be within it. Hyperparameters are read from what ``tx`` does, not from
  its arguments: ``optax.adamw``, a chain, ``inject_hyperparams``, per-path
  values, ``optax.partition`` are checked alike. The learning rate is
  checked too: torch's param group holds the rate of its next step (a
  scheduler has already stepped), which must be ``tx``'s at the count ``t``.
  ``amsgrad=True``, SGD's ``dampening`` other than 0, and an ``Adam`` state
  dict from a torch too old to say whether its decay is decoupled are
  refused. ``foreach``, ``fused``, ``capturable`` and ``differentiable`` change
  how torch computes, not what, and are ignored.

  **What is not carried.** States ``tx`` keeps that torch has no counterpart
  for (an average of the params, a plateau scheduler, recorded norms) start
  as ``tx.init`` makes them, with their counts set to ``t``. Gradient clipping
  done outside the torch optimizer (``clip_grad_norm_``) is not in the state
  dict; the check uses probe gradients too small to be clipped.

  Args:
    tx: the optimizer to continue with.
    params: its parameters (the values the torch model holds, in ``tx``'s
      layout).
    state_dict: ``torch_optimizer.state_dict()``, or the torch optimizer.
    paths: ``paths[i]`` is the path (as :func:`optaxtra.masks.paths` prints
      it) of the ``i``-th parameter in the order torch's ``param_groups`` list
      them; every parameter of ``params`` once.
    convert: a hook ``(path, array) -> array`` applied to each torch moment
      (a NumPy array in torch's layout) to give it ``params``' layout, e.g.
      :func:`optaxtra.interop.transpose_linear` for ``nn.Linear`` weights
      stored as Dense kernels. Shapes are then checked leaf by leaf.
    count: the number of updates done, for an SGD state dict (torch's SGD
      records no step) when ``tx`` has a count (a schedule); checked against
      torch's step where the state dict has one.

  Returns:
    An optax state for ``tx``, the moments in the dtypes ``tx.init`` gave.

  Raises:
    TypeError: a state dict of another optimizer, or bad arguments.
    ValueError: ``paths`` not naming every parameter once, a shape mismatch,
      a hyperparameter of ``tx`` disagreeing with torch's, a state ``tx``
      keeps that torch does not have (or the reverse), parameters at
      different steps.

  Examples:
    With PyTorch, ``opt.state_dict()`` of a trained ``torch.optim.AdamW``;
    here one written out, as it holds torch's tensors (NumPy arrays do too):

    >>> import jax.numpy as jnp, numpy as np, optax
    >>> from optaxtra import interop
    >>> state_dict = {
    ...   "state": {0: {"step": 5.0, "exp_avg": np.array([0.2, -0.1]),
    ...                 "exp_avg_sq": np.array([0.03, 0.01])}},
    ...   "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8,
    ...                     "weight_decay": 0.01, "amsgrad": False,
    ...                     "maximize": False, "decoupled_weight_decay": True,
    ...                     "params": [0]}],
    ... }
    >>> params = {"w": jnp.ones(2)}
    >>> tx = optax.adamw(0.1, weight_decay=0.01)
    >>> state = interop.from_torch(tx, params, state_dict, paths=["w"])
    >>> state[0].count, state[0].mu["w"]
    (Array(5, dtype=int32), Array([ 0.2, -0.1], dtype=float32))

    A ``tx`` that would not continue the run is refused by name:

    >>> interop.from_torch(optax.adamw(0.1), params, state_dict, paths=["w"])
    Traceback (most recent call last):
    ...
    ValueError: from_torch: torch.optim.AdamW's weight_decay is 0.01 in param group 0,
    but for 'w' tx decays it by lr * 0.0001 * p (decoupled) ...
  """
  fn = _FROM
  sd = _as_state_dict(fn, state_dict)
  groups = list(sd["param_groups"])
  states = {int(k): v for k, v in dict(sd["state"]).items()}
  algo = _algo(fn, groups, states)
  framework = _framework(algo, groups)
  order = _order(groups)
  paths = c.check_paths(fn, params, paths, len(order), f"the {framework} state dict")
  if count is not None:
    count = _hyper.integer(fn, "count", count)
  rules, slots, steps = {}, {}, {}
  slot_names = _SLOTS[algo]
  group_rules = [_rule(fn, algo, i, g, framework) for i, g in enumerate(groups)]
  momentum = algo != "sgd" or any(r.momentum for r in group_rules)
  for (gi, pid), path in zip(order, paths, strict=True):
    rules[path] = group_rules[gi]
    st = states.get(pid)
    if not st:
      continue
    if "step" in st:
      steps[path] = c.step_count(fn, f"the step of {quote(path)}", st["step"])
    got = {}
    for kind, name in slot_names.items():
      if name in st and st[name] is not None:
        got[kind] = c.converted(fn, convert, path, _to_numpy(st[name]))
    if got:
      slots[path] = got
  if not momentum:
    slot_names = {}
  t = _steps(fn, framework, rules, slots, steps, algo)
  if count is not None and t is not None and count != t:
    raise ValueError(
      f"{fn}: count={count} but the {framework} state dict is at step {t}."
    )
  src = c.Source(
    fn=fn,
    framework=framework,
    slot_names=slot_names,
    slots=slots,
    rules=rules,
    count=t if t is not None else count,
    count_hint="torch's SGD records no step: pass count= (the number of "
    "optimizer steps taken, e.g. your scheduler's last_epoch when it steps "
    "once per optimizer step).",
  )
  if t is None and count is None and not slots:
    src.count = 0 if algo != "sgd" else None
  return c.build_state(src, tx, params)


def _steps(
  fn: str,
  framework: str,
  rules: dict[str, c.Rule],
  slots: dict[str, dict],
  steps: dict[str, int],
  algo: str,
) -> int | None:
  """The one step every parameter is at, or None where torch does not say."""
  if not steps and not slots:
    return 0 if algo != "sgd" else None
  if algo == "sgd":
    if slots:
      missing = [p for p in rules if p not in slots]
      if missing:
        raise ValueError(
          f"{fn}: {framework} has a momentum buffer for some parameters but not "
          f"for {show(missing)} (they never had a gradient): their next torch "
          "step would start their buffer afresh, which tx cannot do for some "
          "parameters only."
        )
    return None
  missing = [p for p in rules if p not in steps]
  if missing:
    raise ValueError(
      f"{fn}: {framework} has no state for {show(missing)} (they never had a "
      "gradient) while other parameters have; tx keeps one count for all."
    )
  values = sorted(set(steps.values()))
  if len(values) > 1:
    by = {v: [p for p, s in steps.items() if s == v] for v in values}
    detail = "; ".join(f"step {v}: {show(ps, 3)}" for v, ps in by.items())
    raise ValueError(
      f"{fn}: {framework}'s parameters are at different steps ({detail}); tx "
      "keeps one count for all (its bias correction uses it)."
    )
  return values[0]


def to_torch(
  tx: optax.GradientTransformation,
  opt_state: optax.OptState,
  optimizer: Any,
  *,
  paths: Sequence[str],
  convert: Callable[[str, Any], Any] | None = None,
) -> None:
  """Loads a state of ``tx`` into a torch optimizer, so torch continues the run.

  The reverse of :func:`from_torch`: ``optimizer`` (a ``torch.optim.Adam``,
  ``AdamW``, ``Adamax`` or ``SGD`` built over parameters of the same shapes,
  with the hyperparameters of the run) gets ``tx``'s moments and its count as
  torch's step, through ``optimizer.load_state_dict``. The same checks as
  :func:`from_torch` compare ``tx``'s behaviour with the optimizer's param
  groups before anything is loaded; the torch optimizer's hyperparameters are
  left as they are.

  Args:
    tx: the optimizer ``opt_state`` belongs to.
    opt_state: its state.
    optimizer: the torch optimizer to load into.
    paths: ``paths[i]`` is the path of the ``i``-th torch parameter in
      ``param_groups`` order (as for :func:`from_torch`).
    convert: a hook ``(path, array) -> array`` from ``tx``'s layout to
      torch's (:func:`optaxtra.interop.transpose_linear` is its own inverse).

  Raises:
    TypeError: an optimizer other than those four.
    ValueError: as :func:`from_torch`; also an ``opt_state`` that is not a
      state of ``tx``, counts that disagree, or ``optax.MultiSteps`` in the
      middle of accumulating (torch has no accumulated gradients).

  Examples:
    (Needs PyTorch.)

    >>> import jax.numpy as jnp, optax
    >>> import torch  # doctest: +SKIP
    >>> from optaxtra import interop
    >>> params = {"w": jnp.ones(3)}
    >>> tx = optax.adam(0.1)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   _, state = tx.update({"w": 2 * params["w"]}, state)
    >>> w = torch.nn.Parameter(torch.ones(3))  # doctest: +SKIP
    >>> opt = torch.optim.Adam([w], lr=0.1)  # doctest: +SKIP
    >>> interop.to_torch(tx, state, opt, paths=["w"])  # doctest: +SKIP
    >>> float(opt.state[w]["step"])  # doctest: +SKIP
    3.0
  """
  import torch  # pyright: ignore[reportMissingImports]  (an optional dependency)

  fn = _TO
  if not isinstance(optimizer, torch.optim.Optimizer):
    raise TypeError(
      f"{fn}: optimizer must be a torch.optim.Optimizer ({_SUPPORTED}), got "
      f"{type(optimizer).__name__}."
    )
  sd = optimizer.state_dict()
  groups = list(sd["param_groups"])
  algo = _algo(fn, groups, {})
  framework = _framework(algo, groups)
  tensors = [p for g in optimizer.param_groups for p in g["params"]]
  order = _order(groups)
  if isinstance(paths, str) or not isinstance(paths, Sequence):
    raise TypeError(f"{fn}: paths must be a list of parameter paths (strings).")
  paths = list(paths)
  if len(paths) != len(tensors):
    raise ValueError(
      f"{fn}: paths names {len(paths)} parameters but the optimizer has "
      f"{len(tensors)}; give one path per parameter, in param_groups order."
    )
  ndims = {path: p.dim() for path, p in zip(paths, tensors, strict=True)}
  stand_in = _params_like(opt_state, paths, ndims)
  c.check_paths(fn, stand_in, paths, len(tensors), f"the {framework}")
  init = jax.eval_shape(tx.init, stand_in)
  if jax.tree.structure(init) != jax.tree.structure(opt_state):
    raise ValueError(
      f"{fn}: opt_state is not a state of tx (tx.init on parameters with these "
      "paths gives another structure); pass the transformation the state "
      "belongs to."
    )
  _no_pending_micro_steps(fn, opt_state)
  counts = c.count_values(opt_state)
  values = sorted(set(counts.values()))
  if len(values) > 1:
    shown = show([f"{k}={v}" for k, v in counts.items()])
    raise ValueError(
      f"{fn}: opt_state's counts disagree ({shown}); torch keeps one step per "
      "parameter."
    )
  t = values[0] if values else None
  group_rules = [_rule(fn, algo, i, g, framework) for i, g in enumerate(groups)]
  rules = {path: group_rules[gi] for (gi, _), path in zip(order, paths, strict=True)}
  slot_names = _SLOTS[algo]
  if algo == "sgd" and not any(r.momentum for r in group_rules):
    slot_names = {}
  held = c.read_slots(opt_state)
  src = c.Source(fn, framework, slot_names, {}, rules, t)
  c._check_slots(
    src, {p: {k: v for k, v in kinds.items()} for p, kinds in held.items()}
  )
  if t is None and algo != "sgd":
    raise ValueError(f"{fn}: opt_state has no count, so torch's step is unknown.")
  c.check_behaviour(src, tx, stand_in, t or 0)
  new_state: dict[int, dict[str, Any]] = {}
  for (_, pid), path, p in zip(order, paths, tensors, strict=True):
    kinds = held.get(path, {})
    entry: dict[str, Any] = {}
    for kind, name in slot_names.items():
      value = c.as_numpy(kinds[kind][0][1])
      value = c.converted(fn, convert, path, value)
      if tuple(value.shape) != tuple(p.shape):
        raise ValueError(
          f"{fn}: tx's {c._SLOT_WORDS[kind]} of {quote(path)} has shape "
          f"{tuple(value.shape)} (after convert) but the torch parameter has "
          f"{tuple(p.shape)}; pass convert= to change the layout."
        )
      # A copy: np.asarray of a jax.Array is a view of its buffer, which torch
      # would then update in place.
      entry[name] = torch.tensor(np.array(value, copy=True)).to(
        dtype=p.dtype, device=p.device
      )
    if algo != "sgd":
      if not t:
        continue  # no step yet: torch starts its state lazily, as tx.init does
      scalar = (
        torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
      )
      entry["step"] = torch.tensor(float(t), dtype=scalar)
    if entry:
      new_state[pid] = entry
  sd["state"] = new_state
  optimizer.load_state_dict(sd)


def _params_like(opt_state: Any, paths: list[str], ndims: dict[str, int]) -> Any:
  """Stand-in params (size-1 arrays) with the structure tx was initialised on.

  The structure is read from a moment tree in ``opt_state``, which mirrors the
  params (masked positions filled in); a state without one gets a nested dict
  of the paths, which names the same paths.
  """

  def stand_in(path: str) -> Any:
    return jax.numpy.zeros((1,) * ndims[path], jax.numpy.float32)

  trees = c.moment_trees(opt_state)
  for tree in trees:
    entries, treedef = walk(tree)
    if {e.path for e in entries} == set(paths) and len(entries) == len(paths):
      nodes = [
        stand_in(e.path) if e.masked else rebox(e.node, stand_in(e.path))
        for e in entries
      ]
      return treedef.unflatten(nodes)
  if trees:
    held = [e.path for e in walk(trees[0])[0]]
    raise ValueError(
      f"{_TO}: paths names {show(paths)}, but opt_state's moments are for "
      f"{show(held)}; give the paths of the params tx was initialised on."
    )
  out: dict[str, Any] = {}
  for path in paths:
    parts = path.split("/")
    node = out
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = stand_in(path)
  return out


def _no_pending_micro_steps(fn: str, state: Any) -> None:
  leaves = jax.tree.leaves(
    state, is_leaf=lambda x: isinstance(x, optax.MultiStepsState)
  )
  for x in leaves:
    if isinstance(x, optax.MultiStepsState) and int(np.asarray(x.mini_step)) != 0:
      raise ValueError(
        f"{fn}: opt_state is an optax.MultiSteps state {int(np.asarray(x.mini_step))} "
        "micro-steps into accumulating; torch has no accumulated gradients. "
        "Move the run after a real update."
      )
