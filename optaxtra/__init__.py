"""optaxtra: exact, inspectable Optax gradient transformations.

Everything here is an ordinary :class:`optax.GradientTransformation`, a pure
schedule function or a plain helper, so it chains with :func:`optax.chain`,
wraps with :func:`optax.inject_hyperparams` and plugs into Flax and Haiku.
"""

from optaxtra import interop, masks, schedules, testing
from optaxtra._adam import ScaleByAdamState, scale_by_adam
from optaxtra._adamax_clipped import ScaleByAdamaxClippedState, scale_by_adamax_clipped
from optaxtra._adamw import AdamWState, adamw
from optaxtra._alias import AdamaxClippedState, adamax_clipped
from optaxtra._average import AverageParamsState, average_params, with_average
from optaxtra._average_decay import (
  ema_from_first_update,
  ema_power_warmup,
  ema_warmup,
  polyak,
)
from optaxtra._core.hyper import ByPath, by_path
from optaxtra._coupling import decay_schedule
from optaxtra._freeze import with_frozen
from optaxtra._introspect.averaged import averaged_params
from optaxtra._introspect.declare import inspectable
from optaxtra._introspect.describe import Description, describe
from optaxtra._introspect.inspect import inspect
from optaxtra._introspect.lr_scale import set_learning_rate_scale
from optaxtra._introspect.migrate import (
  MigrationReport,
  checkpoint_target,
  migrate_state,
  migrates_from,
)
from optaxtra._learning_rate import (
  ScaleByLearningRateState,
  ScaleByScheduleState,
  scale_by_learning_rate,
  scale_by_schedule,
)
from optaxtra._plateau import ReduceOnPlateauState, reduce_on_plateau
from optaxtra._record_norm import RecordNormState, record_norm
from optaxtra._scale_by_path import (
  ScaleByPathState,
  layerwise_lr_decay,
  scale_by_path,
)
from optaxtra._skip_bad_steps import SkipBadStepsState, skip_bad_steps
from optaxtra._weight_decay import (
  AddDecayedWeightsDecoupledState,
  add_decayed_weights_decoupled,
)

__version__ = "0.3.0.dev0"

__all__ = [
  "AdamWState",
  "AdamaxClippedState",
  "AddDecayedWeightsDecoupledState",
  "AverageParamsState",
  "ByPath",
  "Description",
  "MigrationReport",
  "RecordNormState",
  "ReduceOnPlateauState",
  "ScaleByAdamState",
  "ScaleByAdamaxClippedState",
  "ScaleByLearningRateState",
  "ScaleByPathState",
  "ScaleByScheduleState",
  "SkipBadStepsState",
  "adamax_clipped",
  "adamw",
  "add_decayed_weights_decoupled",
  "average_params",
  "averaged_params",
  "by_path",
  "checkpoint_target",
  "decay_schedule",
  "describe",
  "ema_from_first_update",
  "ema_power_warmup",
  "ema_warmup",
  "inspect",
  "inspectable",
  "interop",
  "layerwise_lr_decay",
  "masks",
  "migrate_state",
  "migrates_from",
  "polyak",
  "record_norm",
  "reduce_on_plateau",
  "scale_by_adam",
  "scale_by_adamax_clipped",
  "scale_by_learning_rate",
  "scale_by_path",
  "scale_by_schedule",
  "schedules",
  "set_learning_rate_scale",
  "skip_bad_steps",
  "testing",
  "with_average",
  "with_frozen",
]
