"""A TensorFlow 1 checkpoint's optimizer slots in: from_tf1_checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from optaxtra._core import hyper as _hyper
from optaxtra._core.paths import show
from optaxtra.interop import _common as c

_FN = "from_tf1_checkpoint"
_NAMES = {"b1": "beta1", "b2": "beta2"}


def _slot_suffix(fn: str, var: str, shapes: Mapping[str, Any]) -> str:
  """The optimizer's name ``X`` of the slots ``<var>/X`` and ``<var>/X_1``."""
  prefix = var + "/"
  rest = {k[len(prefix) :] for k in shapes if k.startswith(prefix)}
  rest = {r for r in rest if "/" not in r}
  pairs = sorted(
    r for r in rest if r + "_1" in rest and shapes[prefix + r] == shapes[var]
  )
  if len(pairs) == 1:
    return pairs[0]
  if not pairs:
    held = show(sorted(k for k in shapes if k.startswith(prefix)))
    raise ValueError(
      f"{fn}: the checkpoint has no optimizer slots for {var!r} (looked for "
      f"'{var}/<name>' and '{var}/<name>_1', as tf.compat.v1.train.AdamOptimizer "
      f"writes them); it holds {held}."
    )
  raise ValueError(
    f"{fn}: the checkpoint has the slots of several optimizers for {var!r} "
    f"({show(pairs)}); from_tf1_checkpoint reads a checkpoint of one."
  )


def _steps_from_power(power: float, b: float, dtype: Any) -> tuple[int, float] | None:
  """``(t, bound)``: TF1's ``beta_power`` is ``b**(t + 1)``; None if it cannot say.

  TF1 multiplies ``beta_power`` by ``b`` (in the variable's dtype) after each
  step, starting at ``b``: each product rounds by at most half an ulp, so after
  ``n`` products the exponent read back, ``log(power) / log(b)``, is within
  ``n * eps / 2 / |log(b)|`` of ``n``. Where that bound reaches 1/4, or the
  power has become subnormal, the count cannot be read.
  """
  if not 0.0 < b < 1.0 or not 0.0 < power <= 1.0:
    return None
  info = np.finfo(dtype)
  if power < float(info.tiny):
    return None
  b_held = float(np.asarray(b, dtype))
  e = math.log(power) / math.log(b_held)
  bound = (e + 1) * float(info.eps) / 2 / abs(math.log(b_held)) + 1e-9
  if bound >= 0.25:
    return None
  return round(e) - 1, abs(e - round(e)) - bound


def from_tf1_checkpoint(
  tx: optax.GradientTransformation,
  params: Any,
  checkpoint_prefix: str,
  *,
  names: Mapping[str, str],
  count: int | None = None,
) -> optax.OptState:
  """The state of ``tx`` that continues a TensorFlow 1 run, from its checkpoint.

  Reads a checkpoint written by ``tf.compat.v1.train.Saver`` (with
  ``tf.train.load_checkpoint``) for one of:

  * ``tf.compat.v1.train.AdamOptimizer``: the slots ``<var>/Adam`` (m) and
    ``<var>/Adam_1`` (v) and the ``beta1_power`` / ``beta2_power`` it keeps.
    TF1 puts epsilon outside the bias correction ("epsilon hat":
    ``var -= lr * sqrt(1 - beta2_power) / (1 - beta1_power) * m / (sqrt(v) +
    eps)``), which ``optax.chain(optaxtra.scale_by_adam(epsilon_hat=True),
    optaxtra.scale_by_learning_rate(lr))`` reproduces (or
    ``scale_by_adam(bias_correction=False)`` with ``lr * alpha_t`` as a
    schedule).
  * The Neural GPU's ``AdamaxOptimizer`` (Freivalds & Liepins, 2017): the
    slots ``m`` and ``v`` (``<var>/Adamax`` and ``<var>/Adamax_1``), into
    :func:`optaxtra.scale_by_adamax_clipped` (its defaults are that
    optimizer's).

  The slots' optimizer name is found by the pair ``<var>/X``, ``<var>/X_1``,
  so a renamed optimizer is read too; a checkpoint with ``beta1_power`` is
  read as Adam's, one without as the Neural GPU's Adamax.

  **The count.** From the checkpoint's ``global_step`` when it has one; else
  from ``beta1_power`` (TF1 holds ``b1**(t + 1)`` after ``t`` steps) and the
  ``b1`` that ``tx`` uses, ``t = round(log(beta1_power) / log(b1)) - 1``, or
  from ``beta2_power`` where ``beta1_power`` has underflowed (after about 800
  steps in float32 with ``b1=0.9``): each is used only where the rounding of
  the power's float32 products cannot change the answer (checked), and both
  must agree. Else pass ``count=``; a ``count`` (or ``global_step``) that
  disagrees with a power that can be read raises ``ValueError``, since it
  means ``tx``'s ``b1`` or ``b2`` is not the run's.

  **What is checked.** A TF1 checkpoint records neither the learning rate nor
  epsilon, so those of ``tx`` are trusted. Checked: ``b1`` and ``b2`` against
  the beta powers (for Adam), that ``tx`` keeps the right kind of second
  moment (a mean of squares for Adam, a running max for Adamax), and, for
  Adam, that ``tx`` adds epsilon outside the bias correction (by the ratio of
  two updates at two counts, which cancels the learning rate; skipped where
  ``tx``'s learning rate is 0 at those counts).

  Args:
    tx: the optimizer to continue with.
    params: its parameters.
    checkpoint_prefix: the prefix ``Saver.save`` returned (``.../model-1000``).
    names: maps each parameter path (as :func:`optaxtra.masks.paths` prints
      it) to its TF variable name (``"dense/kernel"``; a ``":0"`` is dropped).
    count: the number of updates done, where the checkpoint cannot say.

  Returns:
    An optax state for ``tx``.

  Raises:
    ValueError: a prefix that is not a checkpoint, names that do not cover the
      params, missing slots, shape mismatch, a count that cannot be found or
      disagrees, a second moment of the wrong kind, epsilon inside the bias
      correction.

  Examples:
    (Needs TensorFlow; the guide "Bringing a run from PyTorch, Keras or
    TensorFlow" runs it.)

    >>> import optax, optaxtra
    >>> from optaxtra import interop
    >>> tx = optax.chain(
    ...   optaxtra.scale_by_adam(epsilon_hat=True),  # TF1's eps: 1e-8, outside
    ...   optaxtra.scale_by_learning_rate(1e-3),
    ... )
    >>> state = interop.from_tf1_checkpoint(  # doctest: +SKIP
    ...   tx, params, "/tmp/run/model-1000",
    ...   names={"dense/kernel": "dense/kernel", "dense/bias": "dense/bias"},
    ... )

  References:
    Kingma & Ba, `Adam <https://arxiv.org/abs/1412.6980>`_, 2015 (the end of
    Section 2: epsilon hat).

    Freivalds & Liepins, `Improving the Neural GPU Architecture for Algorithm
    Learning <https://arxiv.org/abs/1702.08727>`_, 2017.
  """
  import tensorflow as tf  # pyright: ignore[reportMissingImports, reportMissingModuleSource]

  fn = _FN
  if not isinstance(names, Mapping):
    raise TypeError(
      f"{fn}: names must map each parameter path to its TF variable name, got "
      f"{type(names).__name__}."
    )
  paths = list(names)
  var_names = []
  for p in paths:
    v = names[p]
    if not isinstance(p, str) or not isinstance(v, str):
      raise TypeError(f"{fn}: names maps {p!r} to {v!r}; both must be strings.")
    var_names.append(v[:-2] if v.endswith(":0") else v)
  c.check_paths(fn, params, paths, len(paths), "names")
  if count is not None:
    count = _hyper.integer(fn, "count", count)
  try:
    reader = tf.train.load_checkpoint(checkpoint_prefix)
  except Exception as e:  # TF raises several kinds for a missing checkpoint
    raise ValueError(
      f"{fn}: could not read a checkpoint at {checkpoint_prefix!r}: "
      f"{type(e).__name__}: {e}"
    ) from e
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  missing = [v for v in var_names if v not in shapes]
  if missing:
    raise ValueError(
      f"{fn}: the checkpoint has no variable {show(missing)}; it holds "
      f"{show(sorted(shapes))}."
    )
  adam = "beta1_power" in shapes
  algo = "adam" if adam else "adamax"
  framework = (
    "the TF1 AdamOptimizer checkpoint"
    if adam
    else "the TF1 Adamax (Neural GPU) checkpoint"
  )
  slots, rules = {}, {}
  for path, var in zip(paths, var_names, strict=True):
    x = _slot_suffix(fn, var, shapes)
    slots[path] = {
      c.M1: np.asarray(reader.get_tensor(f"{var}/{x}")),
      c.M2: np.asarray(reader.get_tensor(f"{var}/{x}_1")),
    }
    rules[path] = c.Rule(
      algo,
      group="",
      names=_NAMES,
      lr=None,
      b1=None,
      b2=None,
      eps=None,
      weight_decay=None,
      epsilon_hat=adam,
      eps_in_max=False,
    )
  slot_names = {c.M1: "m", c.M2: "v"}
  src = c.Source(
    fn,
    framework,
    slot_names,
    slots,
    rules,
    None,
    count_hint="Pass count= (the number of optimizer steps the run took).",
  )
  c._check_slots(src, c.read_slots(jax.eval_shape(tx.init, params)))
  betas = c.measured_betas(src, tx, params, algo)
  src.count = _count(fn, reader, shapes, dtypes, betas, count, adam, tf)
  if adam:
    c.check_tf1_eps_placement(src, tx, params)
  return c.build_state(src, tx, params)


def _count(
  fn: str,
  reader: Any,
  shapes: Mapping[str, Any],
  dtypes: Mapping[str, Any],
  betas: dict[str, tuple[float, float]],
  count: int | None,
  adam: bool,
  tf: Any,
) -> int | None:
  """The checkpoint's step count, cross-checked (see from_tf1_checkpoint)."""
  said: list[tuple[str, int]] = []
  if count is not None:
    said.append(("count", count))
  if "global_step" in shapes:
    said.append(("global_step", int(np.asarray(reader.get_tensor("global_step")))))
  if len(said) == 2 and said[0][1] != said[1][1]:
    raise ValueError(
      f"{fn}: count={said[0][1]} but the checkpoint's global_step is {said[1][1]}."
    )
  if adam:
    for i, (name, word) in enumerate((("beta1_power", "b1"), ("beta2_power", "b2"))):
      values = sorted({b[i] for b in betas.values()})
      if len(values) > 1:
        raise ValueError(
          f"{fn}: tx uses several values of {word} "
          f"({show([f'{v:.6g}' for v in values])}), but TF1's AdamOptimizer has one."
        )
      b = values[0]
      power = float(np.asarray(reader.get_tensor(name)))
      dtype = tf.as_dtype(dtypes[name]).as_numpy_dtype
      got = _steps_from_power(power, b, dtype)
      if got is None:
        continue
      t, slack = got
      if slack > 0:
        raise ValueError(
          f"{fn}: the checkpoint's {name} is {power!r}, not a power of tx's "
          f"{word}={b:.6g} (log({name}) / log({word}) is not a whole number): "
          f"build tx with the {word} the run used."
        )
      for source, value in said:
        if value != t:
          raise ValueError(
            f"{fn}: {source} is {value}, but the checkpoint's {name} = {power!r} "
            f"is tx's {word}={b:.6g} to the power {t + 1}, i.e. step {t}: tx's "
            f"{word} is not the run's, or {source} counts something else."
          )
      said.append((name, t))
  return said[0][1] if said else None
