"""How decoupled weight decay is coupled to the learning rate, by name."""

from __future__ import annotations

from typing import Literal

import jax
import numpy as np

from optaxtra._core import hyper as _hyper
from optaxtra._core.hyper import ByPath
from optaxtra._learning_rate import ScalarOrSchedule

Coupling = Literal["learning_rate", "normalized", "independent"]
_COUPLINGS = ("learning_rate", "normalized", "independent")


def decay_schedule(
  learning_rate: ScalarOrSchedule,
  coupling: Coupling,
  peak_learning_rate: float | None = None,
  *,
  fn: str = "decay_schedule",
) -> ScalarOrSchedule | None:
  """The ``schedule`` argument of the decoupled decay for a named coupling.

  Args:
    learning_rate: the optimizer's learning rate, a float or a schedule.
    coupling: ``"learning_rate"`` (PyTorch / Keras / optax.adamw / BERT: decay
      scaled by the learning rate), ``"normalized"`` (Loshchilov & Hutter,
      Composer: decay scaled by ``learning_rate(t) / peak_learning_rate``) or
      ``"independent"`` (TF-Addons: decay independent of the learning rate).
    peak_learning_rate: the normaliser for ``"normalized"``. Defaults to the
      learning rate itself when that is a float; required for a schedule.
    fn: the public function asking, for error messages.

  Returns:
    A float, a schedule, or None, to pass as
    ``add_decayed_weights_decoupled(..., schedule=...)``.

  Examples:
    >>> import optaxtra
    >>> s = optaxtra.decay_schedule(lambda t: 0.01 / (1 + t), "normalized",
    ...                             peak_learning_rate=0.01)
    >>> float(s(0)), float(s(1))
    (1.0, 0.5)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  if coupling not in _COUPLINGS:
    raise ValueError(
      f"{fn}: weight_decay_coupling must be one of {_COUPLINGS}, got {coupling!r}."
    )
  if coupling == "normalized" and isinstance(learning_rate, ByPath):
    raise ValueError(
      f"{fn}: weight_decay_coupling='normalized' takes one learning rate, not "
      "a by_path: normalise each group yourself and pass weight_decay by "
      "path with weight_decay_coupling='independent', or use the "
      "'learning_rate' coupling (each group's decay follows its own rate)."
    )
  if coupling != "normalized":
    if peak_learning_rate is not None:
      raise ValueError(
        f"{fn}: peak_learning_rate is only used with "
        f"weight_decay_coupling='normalized', got coupling {coupling!r}. "
        "Drop peak_learning_rate, or choose the 'normalized' coupling."
      )
    return learning_rate if coupling == "learning_rate" else None
  if peak_learning_rate is None:
    if callable(learning_rate):
      raise ValueError(
        f"{fn}: weight_decay_coupling='normalized' with a learning-rate "
        "schedule needs peak_learning_rate (the value the schedule is "
        "normalised by, usually its maximum)."
      )
    if isinstance(learning_rate, jax.Array | np.ndarray):
      # Inside optax.inject_hyperparams a schedule arrives here as its current
      # value: normalising it by itself would silently give 1 at every step.
      raise ValueError(
        f"{fn}: weight_decay_coupling='normalized' with an array learning "
        "rate needs peak_learning_rate. Inside optax.inject_hyperparams a "
        "schedule arrives as its current value, so the peak cannot be "
        "inferred; pass peak_learning_rate explicitly (or a Python float "
        "learning rate)."
      )
    return None  # a constant learning rate normalised by itself is 1
  _hyper.real(fn, "peak_learning_rate", peak_learning_rate, low=0.0, low_open=True)
  if callable(learning_rate):
    return lambda count: learning_rate(count) / peak_learning_rate
  return learning_rate / peak_learning_rate
