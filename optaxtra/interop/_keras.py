"""A built Keras 3 optimizer's state in: from_keras."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optax

from optaxtra.interop import _common as c

_FN = "from_keras"
_NAMES = {
  "b1": "beta_1",
  "b2": "beta_2",
  "eps": "epsilon",
  "lr": "learning_rate",
  "weight_decay": "weight_decay",
}
_SUPPORTED = "keras.optimizers.Adam, AdamW and Adamax"


def _number(keras: Any, x: Any) -> float:
  if callable(x) and not hasattr(x, "dtype"):
    x = x()  # Keras accepts a callable for beta_1, beta_2
  return float(np.asarray(keras.ops.convert_to_numpy(x)))


def from_keras(
  tx: optax.GradientTransformation,
  params: Any,
  optimizer: Any,
  *,
  paths: Sequence[str],
) -> optax.OptState:
  """The state of ``tx`` that continues a Keras 3 run, from its optimizer.

  ``optimizer`` is a built ``keras.optimizers.Adam``, ``AdamW`` or
  ``Adamax`` (built by its first step, or by
  ``optimizer.build(model.trainable_variables)``). The result has the
  structure of ``tx.init(params)`` with Keras' moments in place and every count
  set to ``optimizer.iterations``, so the next update is Keras' next.

  Keras puts epsilon outside the bias correction ("epsilon hat"):
  ``variable -= lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + epsilon)``.
  The transformations that do the same:

  ==========  =====================================================================
  Keras       tx
  ==========  =====================================================================
  ``Adam``    ``optax.chain(optaxtra.scale_by_adam(epsilon_hat=True),
              optaxtra.scale_by_learning_rate(lr))``, or
              ``scale_by_adam(bias_correction=False)`` with the learning rate
              ``lr * sqrt(1 - b2**(t+1)) / (1 - b1**(t+1))`` as a schedule
  ``AdamW``   the same, with ``optaxtra.add_decayed_weights_decoupled(wd,
              schedule=lr)`` before the learning-rate stage (Keras decays
              ``variable -= lr * wd * variable``); likewise for ``Adam`` given
              ``weight_decay``
  ``Adamax``  ``optax.chain(optaxtra.scale_by_adamax_clipped(clip=False,
              bias_correction=True), optaxtra.scale_by_learning_rate(lr))``:
              Keras adds epsilon to the denominator, ``m / (u + epsilon)``,
              not inside the running max as ``optax.adamax`` does
  ==========  =====================================================================

  ``tx`` is checked against the optimizer's ``beta_1``, ``beta_2``,
  ``epsilon``, current ``learning_rate`` and ``weight_decay`` (per variable:
  ``exclude_from_weight_decay`` is honoured) by running it on stand-ins, as
  :func:`optaxtra.interop.from_torch` documents; a disagreement raises
  ``ValueError`` naming it. ``amsgrad=True`` and
  ``gradient_accumulation_steps`` are refused. Not carried or checked:
  ``use_ema``'s average, ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``
  (put the same clipping in ``tx``), ``loss_scale_factor``.

  Args:
    tx: the optimizer to continue with.
    params: its parameters, in the layout of the Keras variables (a Keras
      ``Dense`` kernel is ``(in, out)`` like Flax's).
    optimizer: the built Keras optimizer.
    paths: ``paths[i]`` is the path (as :func:`optaxtra.masks.paths` prints
      it) of the ``i``-th variable the optimizer was built with (the order of
      ``model.trainable_variables``).

  Returns:
    An optax state for ``tx``.

  Raises:
    TypeError: another optimizer.
    ValueError: an optimizer not built, ``paths`` not naming every parameter
      once, a shape mismatch, a hyperparameter of ``tx`` disagreeing.

  Examples:
    (Needs Keras 3; the guide "Bringing a run from PyTorch, Keras or
    TensorFlow" runs it.)

    >>> import jax.numpy as jnp, optax, optaxtra
    >>> from optaxtra import interop
    >>> import keras  # doctest: +SKIP
    >>> model = keras.Sequential([keras.layers.Dense(1)])  # doctest: +SKIP
    >>> opt = keras.optimizers.Adam(1e-2)  # doctest: +SKIP
    >>> model.compile(opt, "mse")  # doctest: +SKIP
    >>> model.fit(x, y, epochs=5, verbose=0)  # doctest: +SKIP
    >>> k, b = (jnp.asarray(v) for v in model.trainable_variables)  # doctest: +SKIP
    >>> tx = optax.chain(
    ...   optaxtra.scale_by_adam(eps=1e-7, epsilon_hat=True),
    ...   optaxtra.scale_by_learning_rate(1e-2),
    ... )
    >>> params = {"kernel": k, "bias": b}  # doctest: +SKIP
    >>> state = interop.from_keras(  # doctest: +SKIP
    ...   tx, params, opt, paths=["kernel", "bias"]
    ... )
  """
  import keras  # pyright: ignore[reportMissingImports]  (an optional dependency)

  fn = _FN
  if isinstance(optimizer, keras.optimizers.AdamW):
    algo, framework, slots_attr = (
      "adam",
      "keras.optimizers.AdamW",
      ("_momentums", "_velocities"),
    )
  elif isinstance(optimizer, keras.optimizers.Adam):
    algo, framework, slots_attr = (
      "adam",
      "keras.optimizers.Adam",
      ("_momentums", "_velocities"),
    )
  elif isinstance(optimizer, keras.optimizers.Adamax):
    algo, framework, slots_attr = "adamax", "keras.optimizers.Adamax", ("_m", "_u")
  else:
    raise TypeError(
      f"{fn}: optimizer must be a {_SUPPORTED}, got {type(optimizer).__name__}."
    )
  if not getattr(optimizer, "built", False):
    raise ValueError(
      f"{fn}: the {framework} is not built yet, so it holds no moments; build it "
      "(optimizer.build(model.trainable_variables)) or train a step first."
    )
  if getattr(optimizer, "amsgrad", False):
    raise ValueError(
      f"{fn}: the {framework} has amsgrad=True; AMSGrad's velocity_hat has no "
      "counterpart in optaxtra's Adam. Train with amsgrad=False."
    )
  accumulate = getattr(optimizer, "gradient_accumulation_steps", None)
  if accumulate not in (None, 1):
    raise ValueError(
      f"{fn}: the {framework} has gradient_accumulation_steps={accumulate}; "
      "its iterations count micro-batches and its accumulators are not carried. "
      "Move the run without accumulation (optax.MultiSteps can accumulate in tx)."
    )
  variables = list(optimizer._trainable_variables)
  firsts, seconds = (list(getattr(optimizer, a)) for a in slots_attr)
  paths = c.check_paths(fn, params, paths, len(variables), f"the {framework}")
  count = c.step_count(
    fn, "optimizer.iterations", keras.ops.convert_to_numpy(optimizer.iterations)
  )
  lr = _number(keras, optimizer.learning_rate)
  b1, b2 = _number(keras, optimizer.beta_1), _number(keras, optimizer.beta_2)
  eps = _number(keras, optimizer.epsilon)
  wd = optimizer.weight_decay
  wd = 0.0 if wd is None else float(wd)
  use_decay = getattr(optimizer, "_use_weight_decay", lambda v: True)
  slots, rules = {}, {}
  for path, var, m, v in zip(paths, variables, firsts, seconds, strict=True):
    if m is None or v is None:
      raise ValueError(
        f"{fn}: the {framework} keeps no moments for {var.path!r} ({path!r}), "
        "a variable overwritten with its gradient (a float8 scale); such "
        "variables cannot be carried over."
      )
    decayed = bool(wd) and bool(use_decay(var))
    rules[path] = c.Rule(
      algo,
      group=""
      if not wd
      else (
        "the decayed variables"
        if decayed
        else "the variables excluded from weight decay"
      ),
      names=_NAMES,
      lr=lr,
      b1=b1,
      b2=b2,
      eps=eps,
      weight_decay=wd if decayed else 0.0,
      decoupled=True,
      epsilon_hat=algo == "adam",
      eps_in_max=False,
    )
    slots[path] = {
      c.M1: np.asarray(keras.ops.convert_to_numpy(m)),
      c.M2: np.asarray(keras.ops.convert_to_numpy(v)),
    }
  names = {c.M1: "momentum", c.M2: "velocity" if algo == "adam" else "norm (u)"}
  src = c.Source(fn, framework, names, slots, rules, count)
  return c.build_state(src, tx, params)
