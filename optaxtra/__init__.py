"""optaxtra: exact, inspectable Optax gradient transformations.

Everything here is an ordinary :class:`optax.GradientTransformation`, a pure
schedule function or a plain helper, so it chains with :func:`optax.chain`,
wraps with :func:`optax.inject_hyperparams` and plugs into Flax and Haiku.
"""

from optaxtra import masks, schedules, testing
from optaxtra._adam import ScaleByAdamState, scale_by_adam
from optaxtra._adamax_clipped import ScaleByAdamaxClippedState, scale_by_adamax_clipped
from optaxtra._alias import AdamaxClippedState, adamax_clipped
from optaxtra._coupling import decay_schedule
from optaxtra._freeze import with_frozen
from optaxtra._inspect import inspect
from optaxtra._inspectable import inspectable
from optaxtra._learning_rate import (
  ScaleByLearningRateState,
  ScaleByScheduleState,
  scale_by_learning_rate,
  scale_by_schedule,
)
from optaxtra._weight_decay import (
  AddDecayedWeightsDecoupledState,
  add_decayed_weights_decoupled,
)

__version__ = "0.2.0.dev0"

__all__ = [
  "AdamaxClippedState",
  "AddDecayedWeightsDecoupledState",
  "ScaleByAdamState",
  "ScaleByAdamaxClippedState",
  "ScaleByLearningRateState",
  "ScaleByScheduleState",
  "adamax_clipped",
  "add_decayed_weights_decoupled",
  "decay_schedule",
  "inspect",
  "inspectable",
  "masks",
  "scale_by_adam",
  "scale_by_adamax_clipped",
  "scale_by_learning_rate",
  "scale_by_schedule",
  "schedules",
  "testing",
  "with_frozen",
]
