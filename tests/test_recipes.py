"""Recipes of other codebases, ported to optaxtra and compared value for value.

Each test runs a reference of the original recipe beside the optaxtra port.
Where the original's behaviour is available from an installed package (Optax,
whose schedules the Flax and Hugging Face recipes join), the reference calls
it. The rest (timm, diffusers, and the example scripts of Haiku, Flax and
Transformers, which no package installs) are reference implementations
written here from the formulas and the documented behaviour of the cited
files, each naming the file and function it reproduces. They do the original's
arithmetic in the original's precision (float32 where it computes in JAX's
float32, Python floats where it computes in float64), so that the measured
agreement is the original's. The ports are the code of ``docs/recipes.md``,
whose blocks run here too, and the numbers it quotes are the ones measured
here.

Agreement is exact where both sides do the same arithmetic (masks, the epoch
of a step), and otherwise bounded by a justified number of float32 roundings:
of the value where both sides compute it accurately, of the peak value where
the original's own float32 formula cancels (``1 + cos`` near the end of a
cosine, ``1 - count / T`` near the end of a linear decay).
"""

from __future__ import annotations

import fnmatch
import math
import re
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _deps import need

import optaxtra
from optaxtra import masks, schedules

EPS32 = 2.0**-24  # a float32 rounding, relative


def run_schedule(schedule, num_steps: int) -> np.ndarray:
  """``schedule`` at the int32 counts ``0 .. num_steps - 1``, jitted, as float64."""
  steps = jnp.arange(num_steps, dtype=jnp.int32)
  return np.asarray(jax.jit(schedule)(steps), np.float64)


def worst(got: np.ndarray, want: np.ndarray, scale: float | np.ndarray) -> float:
  """``max |got - want| / scale`` in float32 roundings (units of 2**-24)."""
  return float(np.max(np.abs(got - want) / scale) / EPS32)


# ---------------------------------------------------------------------------
# Haiku's ImageNet example: a cosine by fractional epoch, a warmup of 5 epochs,
# 1281167 / 1024 = 1251.1396484375 steps per epoch.


def haiku_lr_schedule(
  *,
  num_examples: int = 1281167,  # the TRAIN_AND_VALID split
  device_batch_size: int = 128,
  num_devices: int = 8,
  warmup_epochs: int = 5,
  num_epochs: int = 90,
  lr_init: float = 0.1,
):
  """A reference of Haiku's ImageNet learning rate, as a function of the step.

  Reproduces the behaviour of
  google-deepmind/dm-haiku/examples/imagenet/train.py, lr_schedule, with the
  example's default flags on 8 devices (a batch of 1024). Written from its
  formula: the peak is ``lr_init * batch / 256``; after a warmup of
  ``warmup_epochs`` (fractional) epochs the rate follows half a cosine, ``(1 +
  cos(pi x)) / 2`` of the fraction ``x`` of the remaining steps done, and during
  the warmup it is scaled by ``step / warmup_steps``. The bounds in steps are
  Python floats and the arithmetic is JAX's float32, as in the example, whose
  step is an int32 count: the cosine factor first, times the peak, times the
  warmup ramp.
  """
  batch = device_batch_size * num_devices
  steps_per_epoch = num_examples / batch
  warmup_steps = warmup_epochs * steps_per_epoch
  decay_steps = num_epochs * steps_per_epoch - warmup_steps
  peak = lr_init * batch / 256

  def schedule(step):
    done = jnp.maximum(step - warmup_steps, 0) / decay_steps
    half_cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * done))
    ramp = jnp.minimum(step / warmup_steps, 1.0)
    return peak * half_cosine * ramp

  return schedule


def haiku_port():
  """The optaxtra port (docs/recipes.md)."""
  steps_per_epoch = 1281167 / 1024  # 1251.1396484375, a fraction of a step
  peak = 0.1 * 1024 / 256
  by_epoch = schedules.linear_warmup(
    schedules.cosine_decay(peak, 90 - 5), 5, shift=True
  )
  return schedules.per_epoch(by_epoch, steps_per_epoch, staircase=False)


HAIKU_STEPS = 1281167 * 90 // 1024  # the example's num_train_steps: 112602


def test_haiku_imagenet_schedule():
  peak = 0.4
  got = run_schedule(haiku_port(), HAIKU_STEPS)
  theirs = run_schedule(haiku_lr_schedule(), HAIKU_STEPS)
  # float64, exact: sin^2 rather than (1 + cos) / 2, which cancels at the end.
  spe = 1281167 / 1024
  s = np.arange(HAIKU_STEPS, dtype=np.float64)
  warm, total = 5 * spe, 90 * spe
  exact = peak * np.minimum(s / warm, 1.0)
  exact *= np.sin(np.pi / 2 * (1 - np.maximum(s - warm, 0) / (total - warm))) ** 2
  # Every step of the run, in roundings of the peak. Both compute the epoch
  # (or step / warmup_steps) in float32, whose rounding moves the cosine's
  # argument by up to 2 roundings of 90 / 85 (its derivative is at most
  # pi / 2 times the peak: 3.3 roundings), and round the value a few times.
  # Measured: 5.0 apart; Haiku 2.6 from exact, the port 4.5.
  assert worst(got, theirs, peak) <= 8
  assert worst(theirs, exact, peak) <= 4
  assert worst(got, exact, peak) <= 6
  # In the warmup (epochs 0 to 5) both are step / warmup_steps * peak, within
  # 2.5 roundings of each other relative to the value (measured).
  w = slice(1, 6256)
  assert worst(got[w], theirs[w], theirs[w]) <= 4
  # The end of the run: Haiku's 1 + cos(pi x) is exactly 0 in float32 for the
  # last steps; the port's sin^2 keeps the true tail (about 2e-10).
  assert theirs[-1] == 0.0
  assert got[-1] == pytest.approx(exact[-1], rel=0.01)


def test_haiku_imagenet_epochs_are_exact():
  # The staircase epoch of the same run (per_epoch's default) is the exact
  # floor(step * 1024 / 1281167) at every step, as Python's Fraction computes
  # it; float32 division puts 1.3% of these steps in the wrong epoch.
  spe = 1281167 / 1024
  got = run_schedule(schedules.per_epoch(lambda e: e, spe), HAIKU_STEPS)
  exact = np.arange(HAIKU_STEPS) * 1024 // 1281167
  np.testing.assert_array_equal(got, exact)
  assert all(
    math.floor(Fraction(int(s)) / Fraction(spe)) == e
    for s, e in [(1251, 0), (1252, 1), (112602, 89), (112603, 90)]
  )


# ---------------------------------------------------------------------------
# timm: CosineLRScheduler per step (t_in_epochs=False), warmup_lr_init, lr_min.


def timm_cosine_lr(
  t: int,
  *,
  base_lr: float,
  t_initial: int,
  lr_min: float,
  warmup_t: int,
  warmup_lr_init: float,
  warmup_prefix: bool,
) -> float:
  """A reference of timm's cosine learning rate at update ``t``, in float64.

  Reproduces the behaviour of
  huggingface/pytorch-image-models/timm/scheduler/cosine_lr.py,
  CosineLRScheduler._get_lr, for one cycle (``cycle_mul=1``, ``cycle_limit=1``,
  ``k_decay=1``, no noise), stepped per update (``t_in_epochs=False``). Written
  from its formula: over the first ``warmup_t`` updates the rate climbs from
  ``warmup_lr_init`` by a constant ``(base_lr - warmup_lr_init) / warmup_t`` an
  update; after it, the cosine ``lr_min + (base_lr - lr_min) / 2 * (1 + cos(pi *
  t / t_initial))`` runs on ``t`` itself, or on ``t - warmup_t`` with
  ``warmup_prefix``; once the cycle of ``t_initial`` updates is over the rate
  stays at ``lr_min``. Python floats, with the products and sums in timm's
  order.
  """
  if t < warmup_t:
    per_update = (base_lr - warmup_lr_init) / warmup_t
    return warmup_lr_init + t * per_update
  into_cycle = t - warmup_t if warmup_prefix else t
  if into_cycle >= t_initial:
    return lr_min
  cosine = 1 + math.cos(math.pi * into_cycle / t_initial)
  return lr_min + 0.5 * (base_lr - lr_min) * cosine


# A timm ImageNet fine-tuning run, as create_scheduler_v2 sets it up per
# update: --lr 5e-4 --min-lr 1e-5 --warmup-lr 1e-6 --warmup-epochs 2
# --epochs 30, 1251 updates per epoch (t_initial and warmup_t in updates).
TIMM = {"lr": 5e-4, "min_lr": 1e-5, "warmup_lr": 1e-6, "warmup": 2, "epochs": 30}
TIMM_UPDATES_PER_EPOCH = 1251


def timm_lrs(warmup_prefix: bool, num_steps: int) -> np.ndarray:
  """The learning rate of each update of timm's training loop.

  The scheduler is built with the optimizer at ``warmup_lr_init`` (update 0),
  and after update ``k`` the loop calls ``step_update(num_updates=k + 1)``,
  which sets the rate of update ``k + 1`` to ``_get_lr(k + 1)``: the
  rate of update ``t`` is ``timm_cosine_lr(t)``.
  """
  upe = TIMM_UPDATES_PER_EPOCH
  settings = {
    "base_lr": TIMM["lr"],
    "t_initial": TIMM["epochs"] * upe,
    "lr_min": TIMM["min_lr"],
    "warmup_t": TIMM["warmup"] * upe,
    "warmup_lr_init": TIMM["warmup_lr"],
    "warmup_prefix": warmup_prefix,
  }
  return np.array([timm_cosine_lr(t, **settings) for t in range(num_steps)])


def timm_port(warmup_prefix: bool = False):
  """The optaxtra port (docs/recipes.md)."""
  upe = TIMM_UPDATES_PER_EPOCH
  return schedules.linear_warmup(
    schedules.cosine_decay(5e-4, 30 * upe, end_value=1e-5),
    2 * upe,
    init_value=1e-6,
    shift=warmup_prefix,  # timm's warmup_prefix
  )


@pytest.mark.parametrize("prefix", [False, True], ids=["default", "warmup_prefix"])
def test_timm_cosine_per_step(prefix):
  upe = TIMM_UPDATES_PER_EPOCH
  n = (TIMM["epochs"] + TIMM["warmup"] + 1) * upe  # and after the end
  theirs = timm_lrs(prefix, n)
  got = run_schedule(timm_port(prefix), n)
  # timm computes in float64, the port in float32: relative to the value,
  # a few roundings (the cosine as sin^2 of the exact remaining fraction, a
  # product and a sum; the warmup a quotient, a product and a sum).
  # Measured: 4.2 roundings of the value at most (2.5 of the peak).
  assert worst(got, theirs, theirs) <= 6
  assert got[0] == np.float32(1e-6) and got[-1] == np.float32(1e-5)


@pytest.mark.parametrize("prefix", [False, True], ids=["default", "warmup_prefix"])
def test_timm_cosine_per_step_float64(x64, prefix):
  # Under jax_enable_x64 with float64 values both are float64. timm's own
  # lr_min + 0.5 * (lr_max - lr_min) * (1 + cos) cancels at the end of the
  # cosine, so the bound is relative to the peak; measured 3.9 float64
  # roundings of the peak (21 of the value, at the end).
  n = (TIMM["epochs"] + TIMM["warmup"] + 1) * TIMM_UPDATES_PER_EPOCH
  theirs = timm_lrs(prefix, n)
  got = np.asarray(jax.jit(timm_port(prefix))(jnp.arange(n)))
  assert got.dtype == np.float64
  assert np.max(np.abs(got - theirs)) <= 8 * 2.0**-53 * TIMM["lr"]
  assert np.max(np.abs(got - theirs) / theirs) <= 64 * 2.0**-53


def timm_decayed_names(
  named_parameters, no_weight_decay_list, weight_decay: float = 0.05
) -> set[str]:
  """A reference of the parameters timm gives weight decay: their names.

  Reproduces the behaviour of
  huggingface/pytorch-image-models/timm/optim/_param_groups.py,
  param_groups_weight_decay (and its _matches_pattern), with
  ``weight_decay_exclude_1d=True`` and no fallback lists, as documented there:
  frozen parameters are left out, and with a nonzero ``weight_decay`` a
  parameter is decayed unless it is 1-D or a scalar, its name ends in ``.bias``,
  or its name matches one of the shell-style (``fnmatch``) patterns of
  ``no_weight_decay_list``.
  """
  if not weight_decay:
    return set()

  def exempt(name, param):
    if param.ndim <= 1 or name.endswith(".bias"):
      return True
    return any(fnmatch.fnmatch(name, rule) for rule in no_weight_decay_list)

  return {
    name
    for name, param in named_parameters
    if param.requires_grad and not exempt(name, param)
  }


def timm_decay_mask():
  """The optaxtra port (docs/recipes.md): timm's rule for a ViT."""
  no_weight_decay = ["^pos_embed$", "^cls_token$", "^reg_token$", "^dist_token$"]
  return masks.all_of(
    masks.min_ndim(2),  # no decay on 1-D parameters: biases, norm scales
    masks.path_mask(
      exclude=[r"(^|/)bias$", *no_weight_decay],
      optional=["^reg_token$", "^dist_token$"],  # a plain ViT has neither
    ),
  )


def _tiny_vit(torch, *, reg_tokens: bool):
  """A two-block ViT with timm's parameter names (and no_weight_decay)."""
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, d):
      super().__init__()
      self.norm1 = nn.LayerNorm(d)
      self.attn = nn.Module()
      self.attn.qkv = nn.Linear(d, 3 * d)
      self.attn.proj = nn.Linear(d, d)
      self.norm2 = nn.LayerNorm(d)
      self.mlp = nn.Module()
      self.mlp.fc1 = nn.Linear(d, 2 * d)
      self.mlp.fc2 = nn.Linear(2 * d, d)

  class ViT(nn.Module):
    def __init__(self, d=8):
      super().__init__()
      self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
      if reg_tokens:
        self.reg_token = nn.Parameter(torch.zeros(1, 4, d))
      self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
      self.patch_embed = nn.Module()
      self.patch_embed.proj = nn.Conv2d(3, d, 2, 2)
      self.blocks = nn.Sequential(Block(d), Block(d))
      self.norm = nn.LayerNorm(d)
      self.head = nn.Linear(d, 10)

    def no_weight_decay(self):  # timm's VisionTransformer.no_weight_decay
      return {"pos_embed", "cls_token", "reg_token", "dist_token"}

  return ViT()


@pytest.mark.heavy
@pytest.mark.parametrize("reg_tokens", [False, True], ids=["vit", "vit-reg"])
def test_timm_weight_decay_exclusion(reg_tokens):
  torch = need("torch")

  model = _tiny_vit(torch, reg_tokens=reg_tokens)
  decayed = timm_decayed_names(
    model.named_parameters(), model.no_weight_decay(), weight_decay=0.05
  )
  # The same tree in JAX, paths from torch's names ("blocks.0.attn.qkv.weight"
  # -> "blocks/0/attn/qkv/weight"), the same shapes.
  params = {}
  for name, p in model.named_parameters():
    node = params
    *parents, last = name.split(".")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = jnp.zeros(tuple(p.shape))
  mask = timm_decay_mask()(params)
  flat = {
    path: leaf
    for path, leaf in zip(masks.paths(params), jax.tree.leaves(mask), strict=True)
  }
  got = {path.replace("/", ".") for path, keep in flat.items() if keep}
  assert got == decayed  # exactly the same parameters
  assert "pos_embed" not in got and "blocks.0.attn.qkv.weight" in got


# ---------------------------------------------------------------------------
# The EMA warmup of timm's ModelEmaV3 and diffusers' EMAModel.


def timm_ema_decay(
  step: int,
  *,
  decay: float = 0.9999,
  min_decay: float = 0.0,
  update_after_step: int = 0,
  use_warmup: bool = False,
  warmup_gamma: float = 1.0,
  warmup_power: float = 2 / 3,
) -> float:
  """A reference of timm's EMA decay at its ``step`` (counted from 1).

  Reproduces the behaviour of
  huggingface/pytorch-image-models/timm/utils/model_ema.py,
  ModelEmaV3.get_decay, written from its formula: with ``n = step -
  update_after_step - 1`` the number of earlier updates, the decay is 0 while
  ``n <= 0`` (the average copies the model), then ``decay``, or with
  ``use_warmup`` the warmup ``1 - (1 + n / warmup_gamma) ** -warmup_power`` kept
  within ``[min_decay, decay]``. Python floats.
  """
  n = step - update_after_step - 1
  if n <= 0:
    return 0.0
  if not use_warmup:
    return decay
  warm = 1 - (1 + n / warmup_gamma) ** -warmup_power
  return max(min(warm, decay), min_decay)


def diffusers_ema_decay(
  optimization_step: int,
  *,
  decay: float = 0.9999,
  min_decay: float = 0.0,
  update_after_step: int = 0,
  use_ema_warmup: bool = False,
  inv_gamma: float = 1.0,
  power: float = 2 / 3,
) -> float:
  """A reference of diffusers' EMA decay at its ``optimization_step``.

  Reproduces the behaviour of
  huggingface/diffusers/src/diffusers/training_utils.py, EMAModel.get_decay
  (``EMAModel.step`` counts the step from 1, then asks for the decay), written
  from its formula: 0 for the first update after ``update_after_step``, then the
  warmup ``1 - (1 + n / inv_gamma) ** -power`` of the ``n`` earlier updates with
  ``use_ema_warmup``, or else ``decay``, clipped to ``[min_decay, decay]`` in
  both cases. Python floats.
  """
  n = max(0, optimization_step - update_after_step - 1)
  if n == 0:
    return 0.0
  value = 1 - (1 + n / inv_gamma) ** -power if use_ema_warmup else decay
  return max(min(value, decay), min_decay)


EMA_SETTINGS = {
  "defaults": {"decay": 0.9999},
  "power-3/4": {"decay": 0.999, "inv_gamma": 1.0, "power": 3 / 4},
  "floor": {"decay": 0.9999, "inv_gamma": 10.0, "power": 0.5, "min_decay": 0.5},
  "uniform": {"decay": 0.99, "inv_gamma": 1.0, "power": 1.0},
}


def _ema_counts() -> np.ndarray:
  head = np.arange(2000)
  tail = np.unique(np.geomspace(2000, 2**31 - 1, 3000).astype(np.int64))
  return np.concatenate([head, tail, [2**31 - 1]])


@pytest.mark.parametrize("kw", EMA_SETTINGS.values(), ids=EMA_SETTINGS.keys())
def test_ema_power_warmup_is_timm_and_diffusers_get_decay(kw):
  timm_kw = {
    "decay": kw["decay"],
    "min_decay": kw.get("min_decay", 0.0),
    "use_warmup": True,
    "warmup_gamma": kw.get("inv_gamma", 1.0),
    "warmup_power": kw.get("power", 2 / 3),
  }
  diffusers_kw = {
    "decay": kw["decay"],
    "min_decay": kw.get("min_decay", 0.0),
    "use_ema_warmup": True,
    "inv_gamma": kw.get("inv_gamma", 1.0),
    "power": kw.get("power", 2 / 3),
  }
  counts = _ema_counts()
  # Both are called with their own step, counted from 1: the Optax count + 1.
  theirs = np.array([timm_ema_decay(int(c) + 1, **timm_kw) for c in counts])
  np.testing.assert_array_equal(
    theirs, [diffusers_ema_decay(int(c) + 1, **diffusers_kw) for c in counts]
  )
  got = np.asarray(jax.jit(optaxtra.ema_power_warmup(**kw))(jnp.asarray(counts)))
  got = got.astype(np.float64)
  assert got[0] == theirs[0] == 0.0  # the first update: a copy
  # float32 against float64: within 3 roundings of 1 (d is at most 1; the
  # form -expm1(-p log1p(t / g)) is accurate to a rounding or two relative to
  # d and to 1 - d, then rounded). Measured: 1.2 roundings of 1 at most, and
  # 0.8 relative to d where d < 0.5.
  assert np.max(np.abs(got - theirs)) <= 3 * EPS32
  # and relative to d itself, where d is small (the first updates).
  small = (theirs > 0) & (theirs < 0.5)
  assert np.all(np.abs(got - theirs)[small] <= 4 * EPS32 * theirs[small])


def test_ema_power_warmup_float64_matches_to_float64_rounding(x64):
  counts = _ema_counts()
  theirs = np.array([timm_ema_decay(int(c) + 1, use_warmup=True) for c in counts])
  got = np.asarray(optaxtra.ema_power_warmup()(jnp.asarray(counts)))
  assert got.dtype == np.float64
  assert np.max(np.abs(got - theirs)) <= 4 * 2.0**-53


@pytest.mark.parametrize(
  ("kw", "error", "match"),
  [
    ({"decay": 1.0}, ValueError, r"decay must be in \[0, 1\)"),
    ({"decay": 0.99999999}, ValueError, "float32"),  # 1.0 in float32
    ({"decay": float("nan")}, ValueError, "decay"),
    ({"inv_gamma": 0.0}, ValueError, "inv_gamma"),
    ({"power": -0.5}, ValueError, "power"),
    ({"min_decay": 0.5, "decay": 0.4}, ValueError, "min_decay=0.5 is above"),
    ({"min_decay": -0.1}, ValueError, "min_decay"),
    ({"decay": "0.999"}, TypeError, "decay"),
    ({"power": lambda t: 0.5}, TypeError, "power must be a number"),
    ({"decay": True}, TypeError, "decay"),
  ],
)
def test_ema_power_warmup_bad_arguments(kw, error, match):
  with pytest.raises(error, match=rf"^ema_power_warmup: .*{match}"):
    optaxtra.ema_power_warmup(**kw)


def test_ema_power_warmup_in_average_params_is_timms_ema():
  # timm's loop: after update k (its step k + 1) the EMA model lerps towards
  # the model with weight 1 - get_decay(k + 1). average_params, placed last,
  # does the same with the decay schedule at count k.
  timm_kw = {"decay": 0.999, "use_warmup": True, "warmup_power": 3 / 4}
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  tx = optax.chain(
    optax.sgd(0.1),
    optaxtra.average_params(optaxtra.ema_power_warmup(0.999, power=0.75)),
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  ema = np.asarray(params["w"], np.float64)  # timm: a deepcopy of the model
  for k in range(40):
    grads = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    d = timm_ema_decay(k + 1, **timm_kw)
    ema = ema + (1 - d) * (np.asarray(params["w"], np.float64) - ema)  # lerp_
    got = np.asarray(optaxtra.averaged_params(state)["w"], np.float64)
    # float32 averaging against float64: a few roundings of the params' size
    # (about 3) a step, accumulating over the 40 steps: 40 * 4 * 3 * 2**-24
    # = 3e-5 at most. Measured: 1.5e-7.
    err = np.max(np.abs(got - ema))
    assert err <= 40 * 4 * 3 * EPS32, err
    if k == 0:
      np.testing.assert_array_equal(got, np.asarray(params["w"]))  # a copy


# ---------------------------------------------------------------------------
# Hugging Face's run_mlm_flax.py / run_clm_flax.py: linear warmup and linear
# decay, no decay on biases and LayerNorm scales, optax.adamw.


def hf_learning_rate_fn(
  train_ds_size: int,
  batch_size: int,
  num_epochs: int,
  warmup_steps: int,
  learning_rate: float,
):
  """A reference of the Transformers Flax examples' schedule, on Optax.

  Reproduces the behaviour of
  huggingface/transformers/examples/flax/language-modeling/run_clm_flax.py,
  create_learning_rate_fn (run_mlm_flax.py builds the same schedule in main())
  with the installed Optax, as that function uses it: a run of ``num_epochs``
  epochs of ``train_ds_size // batch_size`` steps; ``optax.linear_schedule``
  from 0 up to ``learning_rate`` over the warmup, then, joined by
  ``optax.join_schedules`` at the warmup's end, ``optax.linear_schedule`` from
  ``learning_rate`` down to 0 over the steps left.
  """
  num_steps = train_ds_size // batch_size * num_epochs
  ramp_up = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  ramp_down = optax.linear_schedule(learning_rate, 0, num_steps - warmup_steps)
  return optax.join_schedules([ramp_up, ramp_down], [warmup_steps])


def _flatten_keys(tree: dict, prefix: tuple = ()):
  """``(keys, leaf)`` for each leaf of nested dicts: a path as a key tuple."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten_keys(value, (*prefix, key))
    else:
      yield (*prefix, key), value


def hf_decay_mask_fn(params: dict) -> dict:
  """A reference of the Transformers Flax examples' weight-decay mask.

  Reproduces the behaviour of
  huggingface/transformers/examples/flax/language-modeling/run_clm_flax.py (and
  run_mlm_flax.py), decay_mask_fn (the version of both scripts since 2022;
  earlier, run_mlm_flax.py excluded the paths ending in ``("LayerNorm",
  "scale")`` and run_clm_flax.py the ``ln_1``, ``ln_2``, ``ln_f`` scales, which
  are the same parameters on BERT and GPT-2). Written from its documented rule:
  a path whose keys, joined into one string and lowercased, contain
  ``layernorm``, ``layer_norm`` or ``ln`` names a LayerNorm parameter by its
  last two keys; a leaf is decayed unless its last key is ``bias`` or its last
  two keys are such a pair. Returns the nested dicts of bools.
  """
  paths = [path for path, _ in _flatten_keys(params)]
  norm_like = re.compile("layernorm|layer_norm|ln")
  norm_tails = {path[-2:] for path in paths if norm_like.search("".join(path).lower())}
  mask: dict = {}
  for path in paths:
    node = mask
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = path[-1] != "bias" and path[-2:] not in norm_tails
  return mask


# A run: 100,000 examples in batches of 64 for 3 epochs, 500 warmup steps
# (steps_per_epoch = 1562, 4686 steps), learning rate 5e-5.
HF_RUN = {"train_ds_size": 100_000, "batch": 64, "epochs": 3, "warmup": 500}


def hf_port_schedule(learning_rate=5e-5):
  """The optaxtra port (docs/recipes.md)."""
  num_train_steps = HF_RUN["train_ds_size"] // HF_RUN["batch"] * HF_RUN["epochs"]
  warmup_steps = HF_RUN["warmup"]
  return schedules.linear_warmup(
    schedules.polynomial_decay(learning_rate, 0.0, num_train_steps - warmup_steps),
    warmup_steps,
    shift=True,
  )


def hf_decay_mask():
  """The optaxtra port (docs/recipes.md): no decay on biases and norm scales."""
  return masks.path_mask(exclude=[r"(^|/)bias$", r"(?i)(layer_?norm|ln_\w+)/scale$"])


def _flax_bert_params():
  """FlaxBertForMaskedLM's parameter names (one layer), small shapes."""
  d, h = 4, 8
  dense = lambda i, o: {"kernel": jnp.zeros((i, o)), "bias": jnp.zeros(o)}  # noqa: E731
  norm = {"scale": jnp.ones(d), "bias": jnp.zeros(d)}
  return {
    "bert": {
      "embeddings": {
        "word_embeddings": {"embedding": jnp.zeros((11, d))},
        "position_embeddings": {"embedding": jnp.zeros((7, d))},
        "token_type_embeddings": {"embedding": jnp.zeros((2, d))},
        "LayerNorm": dict(norm),
      },
      "encoder": {
        "layer": {
          "0": {
            "attention": {
              "self": {"query": dense(d, d), "key": dense(d, d), "value": dense(d, d)},
              "output": {"dense": dense(d, d), "LayerNorm": dict(norm)},
            },
            "intermediate": {"dense": dense(d, h)},
            "output": {"dense": dense(h, d), "LayerNorm": dict(norm)},
          }
        }
      },
    },
    "cls": {
      "predictions": {
        "bias": jnp.zeros(11),
        "transform": {"dense": dense(d, d), "LayerNorm": dict(norm)},
      }
    },
  }


def _flax_gpt2_params():
  """FlaxGPT2LMHeadModel's parameter names (one block), small shapes."""
  d = 4
  dense = lambda i, o: {"kernel": jnp.zeros((i, o)), "bias": jnp.zeros(o)}  # noqa: E731
  norm = {"scale": jnp.ones(d), "bias": jnp.zeros(d)}
  return {
    "transformer": {
      "wte": {"embedding": jnp.zeros((11, d))},
      "wpe": {"embedding": jnp.zeros((7, d))},
      "h": {
        "0": {
          "ln_1": dict(norm),
          "attn": {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)},
          "ln_2": dict(norm),
          "mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)},
        }
      },
      "ln_f": dict(norm),
    }
  }


def test_hugging_face_schedule():
  theirs_fn = hf_learning_rate_fn(
    HF_RUN["train_ds_size"], HF_RUN["batch"], HF_RUN["epochs"], HF_RUN["warmup"], 5e-5
  )
  n = HF_RUN["train_ds_size"] // HF_RUN["batch"] * HF_RUN["epochs"] + 10
  theirs = run_schedule(theirs_fn, n)
  got = run_schedule(hf_port_schedule(), n)
  s = np.arange(n, dtype=np.float64)
  W, T = HF_RUN["warmup"], n - 10
  exact = 5e-5 * np.where(s < W, s / W, np.maximum(T - s, 0) / (T - W))
  # Both float32. Optax's linear_schedule takes 1 - count / T, which cancels
  # (650 roundings of the value near either end, 1.4 of the peak): bounded
  # relative to the peak. Measured: 1.2 roundings of the peak apart; the port
  # 1.8 roundings of the value from exact (its remaining fraction is taken
  # from the integer step).
  assert worst(got, theirs, 5e-5) <= 3
  nz = exact > 0
  assert worst(got[nz], exact[nz], exact[nz]) <= 3
  assert worst(theirs, exact, 5e-5) <= 3
  np.testing.assert_array_equal(got[T:], 0.0)


@pytest.mark.parametrize("tree", ["bert", "gpt2"])
def test_hugging_face_decay_mask(tree):
  params = _flax_bert_params() if tree == "bert" else _flax_gpt2_params()
  theirs = hf_decay_mask_fn(params)
  got = hf_decay_mask()(params)
  assert got == theirs  # the same tree of bools, exactly
  assert sum(jax.tree.leaves(got)) == {"bert": 10, "gpt2": 6}[tree]


def test_hugging_face_adamw():
  # optax.adamw(schedule, b1, b2, eps, weight_decay, mask=decay_mask_fn)
  # against optaxtra.adamw(..., weight_decay_mask=...), on most of the GPT-2 tree with
  # random gradients, the script's defaults b1=0.9, b2=0.999, eps=1e-8 and
  # weight_decay=0.01 (a run's --weight_decay).
  tree = _flax_gpt2_params()
  del tree["transformer"]["h"]["0"]["mlp"], tree["transformer"]["wpe"]  # smaller
  params = jax.tree.map(
    lambda x: jnp.asarray(np.random.default_rng(x.size).normal(size=x.shape), x.dtype),
    tree,
  )
  # The mask: the port's, on both sides (test_hugging_face_decay_mask shows it
  # is decay_mask_fn's tree, exactly).
  mask = hf_decay_mask()
  theirs_lr = hf_learning_rate_fn(
    HF_RUN["train_ds_size"], HF_RUN["batch"], HF_RUN["epochs"], HF_RUN["warmup"], 1e-3
  )
  lr = hf_port_schedule(1e-3)
  theirs_tx = optax.adamw(
    theirs_lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, mask=mask
  )
  ours_tx = optaxtra.adamw(
    lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, weight_decay_mask=mask
  )
  # Measured: Optax's bias-correction error (112 to 228 roundings of the
  # update in the first 6 steps) and the learning rates' difference (Optax's
  # linear_schedule rounds the warmup's first steps), plus at most 3.4
  # roundings.
  _compare_optimizers(
    theirs_tx, ours_tx, params, b1=0.9, b2=0.999, lrs=(theirs_lr, lr), steps=6, seed=1
  )


def optax_bias_correction_error(b1: float, b2: float, t: int) -> float:
  """How far Optax's float32 bias correction is from exact at step ``t``.

  Optax divides by ``1 - b**t`` computed in float32 from the float32 ``b``,
  which cancels: ``1 - float32(0.999)`` is ``0.00099998713``, 1.3e-5 from
  0.001. optaxtra.adamw rounds it once (``-expm1(t log b)``), as PyTorch's
  float64 does. The Adam direction ``mhat / sqrt(vhat)`` then differs by the
  first relative error plus half the second (a square root).
  """

  def rel(b):
    optax_value = float(1 - jnp.float32(b) ** t)
    exact = 1 - b**t
    return abs(optax_value - exact) / exact

  return rel(b1) + 0.5 * rel(b2)


def compare_updates(
  theirs, ours, *, b1: float, b2: float, t: int, lr_error: float = 0.0
) -> float:
  """Leaf by leaf, ``max |ours - theirs| / max |theirs|`` in float32 roundings.

  Asserted within Optax's own bias-correction error at step ``t``, plus the
  relative difference of the two learning rates ``lr_error`` (the updates
  are proportional to it), plus 16 roundings: the other operations (two
  moments, a square root, a quotient, the decay's products and sums), each
  rounded once on each side and ordered differently (Optax multiplies
  ``-lr * (adam + wd * p)``, optaxtra ``-lr * adam - lr * wd * p``). Returns
  the worst excess over the first two, in roundings, for the record.
  """
  allowed = optax_bias_correction_error(b1, b2, t) + lr_error
  excess = 0.0
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.any(b):  # a learning rate of 0 (a warmup's first step)
      np.testing.assert_array_equal(a, 0.0)
      continue
    rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert rel <= allowed + 16 * EPS32, (t, rel / EPS32, allowed / EPS32)
    excess = max(excess, (rel - allowed) / EPS32)
  return excess


def _compare_optimizers(theirs_tx, ours_tx, params, *, b1, b2, lrs, steps, seed):
  """Both optimizers on the same gradients, update by update.

  ``lrs`` is the pair of learning-rate schedules (theirs, ours).
  """
  rng = np.random.default_rng(seed)
  p_theirs, p_ours = params, params
  s_theirs, s_ours = theirs_tx.init(params), ours_tx.init(params)
  up_theirs, up_ours = jax.jit(theirs_tx.update), jax.jit(ours_tx.update)
  lr_fns = [jax.jit(f) for f in lrs]
  excess = 0.0
  for k in range(steps):
    # Gradients over six orders of magnitude, as a network's are.
    grads = jax.tree.map(
      lambda x: jnp.asarray(
        rng.normal(size=x.shape) * 10.0 ** rng.uniform(-6, 0, x.shape), x.dtype
      ),
      params,
    )
    u_theirs, s_theirs = up_theirs(grads, s_theirs, p_theirs)
    u_ours, s_ours = up_ours(grads, s_ours, p_ours)
    count = jnp.asarray(k, jnp.int32)  # as the jitted optimizers call them
    lr_theirs, lr_ours = (float(f(count)) for f in lr_fns)
    lr_error = abs(lr_theirs - lr_ours) / lr_ours if lr_ours else 0.0
    excess = max(
      excess,
      compare_updates(u_theirs, u_ours, b1=b1, b2=b2, t=k + 1, lr_error=lr_error),
    )
    p_theirs = optax.apply_updates(p_theirs, u_theirs)
    p_ours = optax.apply_updates(p_ours, u_ours)
  return excess


# ---------------------------------------------------------------------------
# Flax's lm1b example: rsqrt with linear warmup, optax.adamw.


def flax_lm1b_schedule(learning_rate: float, warmup_steps: int):
  """A reference of Flax's lm1b learning rate, on Optax.

  Reproduces the behaviour of google/flax/examples/lm1b/train.py,
  create_learning_rate_schedule (with its rsqrt_schedule) with the installed
  Optax, as that function uses it: ``optax.linear_schedule`` from 0 up to
  ``learning_rate`` over the warmup, then, joined by ``optax.join_schedules`` at
  ``warmup_steps`` (which restarts the count at 0 there), the inverse square
  root ``learning_rate * (count + warmup_steps) ** -0.5 * sqrt(warmup_steps)``,
  in that order of operations.
  """

  def inverse_sqrt(count):
    return learning_rate * (count + warmup_steps) ** -0.5 * math.sqrt(warmup_steps)

  warmup = optax.linear_schedule(0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, inverse_sqrt], [warmup_steps])


# examples/lm1b/configs/default.py: learning_rate 0.0016, warmup_steps 1000,
# num_train_steps 500_000, weight_decay 0.1; train.py: b1=0.9, b2=0.98,
# eps=1e-9.
LM1B = {"lr": 0.0016, "warmup": 1000, "steps": 500_000, "weight_decay": 0.1}


def test_flax_lm1b_schedule():
  theirs_fn = flax_lm1b_schedule(LM1B["lr"], LM1B["warmup"])
  port = schedules.inverse_sqrt(LM1B["lr"], LM1B["warmup"])
  theirs = run_schedule(theirs_fn, LM1B["steps"])
  got = run_schedule(port, LM1B["steps"])
  s = np.arange(LM1B["steps"], dtype=np.float64)
  W = LM1B["warmup"]
  exact = LM1B["lr"] * np.where(s < W, s / W, np.sqrt(W / np.maximum(s, W)))
  # Both float32. The warmup is Optax's linear_schedule, (0 - lr) * (1 -
  # count / W) + lr, which cancels for the first steps (217 roundings of the
  # value at step 1, 1.6 of the peak); the port's lr * count / W does not.
  # After the warmup Flax's (count + W - W) ** -0.5 * sqrt(W) and the port's
  # sqrt(W / count) each round a few times. Measured over the 500,000 steps:
  # 2.4 roundings of the peak apart, 3.7 of the value after the warmup; the
  # port 2.5 roundings of the value from exact.
  assert worst(got, theirs, LM1B["lr"]) <= 4
  assert worst(got[W:], theirs[W:], theirs[W:]) <= 6
  nz = exact > 0
  assert worst(got[nz], exact[nz], exact[nz]) <= 4
  assert worst(theirs, exact, LM1B["lr"]) <= 3
  assert got[0] == theirs[0] == 0.0


def test_flax_lm1b_optimizer():
  theirs_fn = flax_lm1b_schedule(LM1B["lr"], LM1B["warmup"])
  theirs_tx = optax.adamw(
    theirs_fn, b1=0.9, b2=0.98, eps=1e-9, weight_decay=LM1B["weight_decay"]
  )
  ours_lr = schedules.inverse_sqrt(LM1B["lr"], LM1B["warmup"])
  ours_tx = optaxtra.adamw(
    ours_lr,
    b1=0.9,
    b2=0.98,
    eps=1e-9,
    weight_decay=LM1B["weight_decay"],  # optaxtra.adamw's default is 1e-2
  )
  params = {
    "embed": jnp.asarray(np.random.default_rng(3).normal(size=(11, 4)), jnp.float32),
    "dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)},
  }
  # Measured: Optax's bias-correction error (12 to 18 roundings with b2=0.98)
  # and the learning rates' difference, plus at most 1.0 rounding.
  _compare_optimizers(
    theirs_tx,
    ours_tx,
    params,
    b1=0.9,
    b2=0.98,
    lrs=(theirs_fn, ours_lr),
    steps=6,
    seed=2,
  )


# ---------------------------------------------------------------------------
# Flax nnx's MNIST tutorial: optax.adamw(learning_rate, momentum).


def _mnist_cnn(nnx, *, rngs):
  """A CNN with the layers of Flax's MNIST tutorial, written for this test.

  Reproduces the layers of google/flax/docs_nnx/mnist_tutorial.md, CNN, as the
  tutorial describes them: two 3x3 convolutions of 32 and 64 features, each
  batch-normalised, passed through a ReLU and 2x2 average-pooled (a dropout of
  0.025 after the first convolution), then a dense layer of 256 units (dropout
  0.025, ReLU) and one of 10 logits.
  """

  class SmallCNN(nnx.Module):
    def __init__(self, rngs):
      conv = lambda c_in, c_out: nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)  # noqa: E731
      self.conv_a, self.norm_a = conv(1, 32), nnx.BatchNorm(32, rngs=rngs)
      self.conv_b, self.norm_b = conv(32, 64), nnx.BatchNorm(64, rngs=rngs)
      self.hidden = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
      self.logits = nnx.Linear(256, 10, rngs=rngs)
      self.dropout = nnx.Dropout(rate=0.025)

    def __call__(self, x, rngs=None):
      def pooled(y):
        return nnx.avg_pool(nnx.relu(y), window_shape=(2, 2), strides=(2, 2))

      x = pooled(self.norm_a(self.dropout(self.conv_a(x), rngs=rngs)))
      x = pooled(self.norm_b(self.conv_b(x)))
      x = self.hidden(x.reshape(x.shape[0], -1))
      return self.logits(nnx.relu(self.dropout(x, rngs=rngs)))

  return SmallCNN(rngs)


# The tutorial's optimizer, as a user writes it:
#   learning_rate = 0.005
#   momentum = 0.9
#   optimizer = nnx.Optimizer(
#     model, optax.adamw(learning_rate, momentum), wrt=nnx.Param
#   )


@pytest.mark.heavy
def test_flax_nnx_mnist_optimizer():
  need("flax")
  from flax import nnx

  theirs_model = _mnist_cnn(nnx, rngs=nnx.Rngs(0))
  ours_model = _mnist_cnn(nnx, rngs=nnx.Rngs(0))
  learning_rate, momentum = 0.005, 0.9
  theirs = nnx.Optimizer(
    theirs_model, optax.adamw(learning_rate, momentum), wrt=nnx.Param
  )
  # The port: optax.adamw's second argument is b1, and its default weight
  # decay is 1e-4 where optaxtra.adamw's (PyTorch's) is 1e-2.
  ours = nnx.Optimizer(
    ours_model,
    optaxtra.adamw(learning_rate, b1=momentum, weight_decay=1e-4),
    wrt=nnx.Param,
  )

  def loss_fn(model, batch, rngs):
    logits = model(batch["image"], rngs)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits=logits, labels=batch["label"]
    ).mean()

  @nnx.jit
  def grads_of(model, batch, rngs):
    return nnx.grad(loss_fn)(model, batch, rngs)

  @nnx.jit
  def apply(optimizer, model, grads):
    return optimizer.update(model, grads)  # the updates it applied

  rng = np.random.default_rng(0)
  for k in range(3):
    batch = {
      "image": jnp.asarray(rng.random((8, 28, 28, 1)), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 10, 8)),
    }
    # The same gradients for both (the reference model's), so that only the
    # optimizers are compared.
    grads = grads_of(theirs_model, batch, nnx.Rngs(k))
    u_theirs = apply(theirs, theirs_model, grads)
    u_ours = apply(ours, ours_model, grads)
    excess = compare_updates(u_theirs, u_ours, b1=0.9, b2=0.999, t=k + 1)
    print(f"step {k}: {excess:.1f} roundings beyond Optax's bias correction")
  # inspect reads the port's learning rate from the nnx optimizer's state.
  assert float(optaxtra.inspect(ours.opt_state)["learning_rate"]) == np.float32(0.005)


# ---------------------------------------------------------------------------
# The page docs/recipes.md: its optaxtra blocks run (the originals' blocks are
# shown, not run: they need their scripts' data and flags).

PAGE = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_IMPORT = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.M)
_HEAVY = {"torch", "flax", "haiku", "tensorflow", "keras"}


def page_blocks() -> list[tuple[int, str, set[str]]]:
  text = PAGE.read_text(encoding="utf-8")
  out = []
  for m in _FENCE.finditer(text):
    code = m.group(1)
    line = text.count("\n", 0, m.start(1)) + 1
    out.append((line, code, set(_IMPORT.findall(code)) & _HEAVY))
  return out


def _run_page(*, heavy: bool) -> int:
  namespace: dict = {"__name__": "recipes_page"}
  ran = 0
  for line, code, needs in page_blocks():
    if needs and not heavy:
      continue
    exec(compile("\n" * (line - 1) + code, str(PAGE), "exec"), namespace)
    ran += 1
  return ran


def test_recipes_page_has_the_ports_and_no_asserts():
  blocks = page_blocks()
  assert len(blocks) >= 5
  for line, code, _ in blocks:
    assert not re.search(r"^\s*assert\b", code, re.M), f"recipes.md:{line}"
    for i, text in enumerate(code.splitlines()):
      assert len(text) <= 88, f"recipes.md:{line + i}: {len(text)} columns"


def test_recipes_page_core_blocks():
  assert _run_page(heavy=False) >= 4


@pytest.mark.heavy
def test_recipes_page_all_blocks():
  for name in sorted(set().union(*(b[2] for b in page_blocks()))):
    need(name)
  assert _run_page(heavy=True) == len(page_blocks())
