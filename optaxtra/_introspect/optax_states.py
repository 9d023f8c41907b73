"""What Optax's own states hold, declared for :func:`optaxtra.inspect` in one place.

Optax's states are NamedTuples whose fields follow a convention (a ``count``,
moments named ``mu``, ``nu``, ...). Each is declared here with
:func:`optaxtra.inspectable`: the fields named like the values ``inspect``
reports are values (read whatever their shape, so a state stacked by
``jax.vmap(tx.init)`` reports them with the stacking axis), the fields
listed in ``_TREES`` hold params-shaped trees, never looked into, and those in
``_APART`` hold counts that do not advance with the rest of the optimizer's.
"""

from __future__ import annotations

import functools
import sys

import optax

from optaxtra._introspect.declare import _fields, declaration, inspectable

# The names inspect reports for a state that declared nothing.
CONVENTION = (
  "count",
  "learning_rate",
  "step_size",
  "weight_decay",
  "decay_rate",
  "clip_fraction",
  "bias_correction",
)

# Fields holding trees shaped like the params, by state class name, where this
# Optax version has the class.
_TREES: dict[str, tuple[str, ...]] = {
  "ScaleByAdamState": ("mu", "nu"),
  "MultiStepsState": ("acc_grads",),
  "TraceState": ("trace",),
  "EmaState": ("ema",),
  "ApplyEvery": ("grad_acc",),
  "FactoredState": ("v_row", "v_col", "v"),
  "ScaleByAdaDeltaState": ("e_g", "e_x"),
  "ScaleByAdanState": ("m", "v", "n", "g"),
  "ScaleByAmsgradState": ("mu", "nu", "nu_max"),
  "ScaleByBeliefState": ("mu", "nu"),
  "ScaleByLBFGSState": (
    "params",
    "updates",
    "diff_params_memory",
    "diff_updates_memory",
  ),
  "ScaleByLionState": ("mu",),
  "ScaleByNovogradState": ("mu", "nu"),
  "ScaleByRStdDevState": ("mu", "nu"),
  "ScaleByRmsState": ("nu",),
  "ScaleByRpropState": ("step_sizes", "prev_updates"),
  "ScaleByRssState": ("sum_of_squares",),
  "ScaleBySM3State": ("mu", "nu"),
}
# The counters of Optax's wrappers, reported under their own names.
_COUNTERS: dict[str, tuple[str, ...]] = {
  "MultiStepsState": ("mini_step", "gradient_step"),
  "ApplyIfFiniteState": ("notfinite_count", "last_finite", "total_notfinite"),
}
# Counts that do not advance with the rest of the optimizer's: the inner state
# of a wrapper that skips, accumulates or conditions updates, and counters
# named count that count something else (a cycle, the values of a plateau).
_APART: dict[str, tuple[str, ...]] = {
  "MultiStepsState": ("inner_opt_state",),
  "ApplyIfFiniteState": ("inner_state",),
  "ConditionallyMaskState": ("inner_state",),
  "ConditionallyTransformState": ("inner_state",),
  "SAMState": ("opt_state", "adv_state"),
  "ApplyEvery": ("count",),
  "ReduceLROnPlateauState": ("count",),
}
# Read by inspect itself: a dict of hyperparameters around an inner state.
INJECT = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)
# States whose count gives Adam's bias correction when an enclosing
# inject_hyperparams holds b1 and b2.
ADAM_COUNT = (optax.ScaleByAdamState,)


def _modules() -> list:
  return [
    optax,
    getattr(optax, "transforms", None),
    getattr(optax, "schedules", None),
    sys.modules.get("optax.contrib"),
  ]


@functools.cache
def _declare(with_contrib: bool) -> None:
  del with_contrib  # the cache key: run again once optax.contrib is imported
  for module in _modules():
    for name, cls in vars(module or object).items():
      fields = _fields(cls) if isinstance(cls, type) else None
      if not fields or cls in INJECT or declaration(cls) is not None:
        continue
      if not cls.__module__.startswith("optax"):
        continue
      trees = tuple(f for f in _TREES.get(name, ()) if f in fields)
      values = [f for f in fields if f in CONVENTION or f in _COUNTERS.get(name, ())]
      apart = [f for f in _APART.get(name, ()) if f in fields]
      inspectable(values=values, trees=trees, counts_apart=apart)(cls)


def declare_optax_states() -> None:
  """Declares every Optax state class of the modules imported so far."""
  _declare("optax.contrib" in sys.modules)
