"""Tests of the cyclic and warmup schedules of optaxtra.schedules.

``cosine_restarts`` and ``one_cycle`` are checked against PyTorch's
``CosineAnnealingWarmRestarts`` and ``OneCycleLR``, run live step by step, and
against timm's cycle-decay formula; ``warmup_stable_decay`` and
``inverse_sqrt`` against float64 transcriptions of their reference code (Hugging
Face's ``get_wsd_schedule``, fairseq's ``inverse_sqrt``). All four are checked
at steps where float32 step arithmetic goes wrong (near 2**24, 3e7 and
2**31 - 1), under ``jax.jit`` and ``jax.vmap``, under x64, and with bad
arguments.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optaxtra import schedules as S

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
# float32 rounding: every value is a few float32 operations on the step's
# exact integer offsets (the constants rounded once, a quotient, sin and its
# square or a power, two products and a sum), each within 2**-24 relative; ten
# such roundings bound the float32 result relative to the float64 one. (The
# measured maximum over the runs below is 3.6e-7.)
F32 = 10 * 2.0**-24


def f32(x: float) -> float:
  """``x`` as the float32 a float32 schedule holds (as float64)."""
  return float(np.float32(x))


MIN32 = f32(f32(1.0 / 25) / 1e4)  # one_cycle(1.0, ...)'s minimum, in float32


def call(schedule, steps, jit=True):
  steps = jnp.asarray(steps, jnp.int32)
  return np.asarray((jax.jit(schedule) if jit else schedule)(steps), np.float64)


def assert_within(got, want, rtol):
  """``|got - want| <= rtol * |want|``, ``rtol`` an array (one bound a step)."""
  err = np.abs(got - want) / np.abs(want)
  worst = int(np.argmax(err / rtol))
  assert np.all(err <= rtol), (worst, got[worst], want[worst], err[worst])


def ref(f, steps, *args, **kw) -> np.ndarray:
  return np.array([f(int(t), *args, **kw) for t in steps], np.float64)


# ---------------------------------------------------------------------------
# float64 references, transcribed from the reference code (Python ints for
# the steps).


def ref_timm(t, init, period, period_mul=1, value_mul=1.0, end=0.0):
  """timm's ``CosineLRScheduler._get_lr`` (no warmup, ``k_decay=1``, no limit)."""
  if period_mul != 1:
    i = math.floor(math.log(1 - t / period * (1 - period_mul), period_mul))
    t_i = period_mul**i * period
    t_curr = t - (1 - period_mul**i) / (1 - period_mul) * period
  else:
    i = t // period
    t_i = period
    t_curr = t - (period * i)
  lr_max = init * value_mul**i
  return end + 0.5 * (lr_max - end) * (1 + math.cos(math.pi * t_curr / t_i))


def timm_cycle(t, period, period_mul):
  """The cycle timm's ``CosineLRScheduler`` finds (a float logarithm)."""
  if period_mul == 1:
    return t // period
  return math.floor(math.log(1 - t / period * (1 - period_mul), period_mul))


def exact_cycle(t, period, period_mul):
  """The cycle of step ``t``, in integers."""
  i, start, length = 0, 0, period
  while t >= start + length:
    i, start, length = i + 1, start + length, length * period_mul
  return i


def ref_restarts(t, init, period, period_mul=1, value_mul=1.0, end=0.0):
  """The same, the cycle found in integers and the bracket as sin^2 (exact)."""
  t = max(t, 0)
  if period_mul == 1:
    i, length = t // period, period
    into = t - i * period
  else:
    i, start, length = 0, 0, period
    while t >= start + length:
      i, start, length = i + 1, start + length, length * period_mul
    into = t - start
  bracket = math.sin(math.pi / 2 * (length - into) / length) ** 2
  return end + (init * value_mul**i - end) * bracket


def ref_one_cycle(t, max_value, total_steps, pct_start=0.3, div_factor=25.0,
                  final_div_factor=1e4, anneal="cos", three_phase=False):  # fmt: skip
  """PyTorch's ``OneCycleLR.get_lr`` (its phases and arithmetic), held at the end."""
  initial = max_value / div_factor
  values = {"initial": initial, "max": max_value, "min": initial / final_div_factor}
  ends = [float(pct_start * total_steps) - 1]
  if three_phase:
    ends.append(float(2 * pct_start * total_steps) - 2)
  ends.append(total_steps - 1)
  names = [("initial", "max"), ("max", "initial")][: len(ends) - 1]
  names.append(("initial" if three_phase else "max", "min"))
  step_num = min(max(t, 0), total_steps - 1)
  start_step = 0.0
  for i, end_step in enumerate(ends):
    if step_num <= end_step or i == len(ends) - 1:
      pct = (step_num - start_step) / (end_step - start_step)
      a, b = values[names[i][0]], values[names[i][1]]
      if anneal == "cos":
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
      return (b - a) * pct + a
    start_step = end_step
  raise AssertionError


def ref_hf_wsd(t, W, S_, D, decay_type, min_lr_ratio):
  """Hugging Face's ``_get_wsd_scheduler_lambda`` (linear warmup, one cycle)."""
  if t < W:
    progress = float(t) / float(max(1, W))
    factor = progress * (1.0 - min_lr_ratio) + min_lr_ratio
    return max(0.0, factor)
  if t < W + S_:
    return 1.0
  if t < W + S_ + D:
    progress = float(t - W - S_) / float(max(1, D))
    if decay_type == "linear":
      factor = 1.0 - progress
    elif decay_type == "cosine":
      factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # "1-sqrt"
      factor = 1.0 - math.sqrt(progress)
    factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
    return max(0.0, factor)
  return min_lr_ratio


def ref_wsd(t, peak, W, S_, D, init=0.0, end=0.0, shape="linear"):
  """Warmup-stable-decay from its definition (Hu et al.; Hägele et al.)."""
  t = max(t, 0)
  if t < W:
    return init + (peak - init) * t / W
  if t < W + S_:
    return peak
  if t >= W + S_ + D:
    return end
  p = (t - W - S_) / D
  f = {
    "linear": 1 - p,
    "cosine": math.sin(math.pi / 2 * (W + S_ + D - t) / D) ** 2,  # (1 + cos pi p)/2
    "sqrt": 1 - math.sqrt(p),
  }[shape]
  return end + (peak - end) * f


def ref_fairseq(t, lr, warmup_updates, warmup_init_lr=0.0):
  """fairseq's ``InverseSquareRootSchedule.step_update(num_updates=t)``."""
  lr_step = (lr - warmup_init_lr) / warmup_updates
  decay_factor = lr * warmup_updates**0.5
  if t < warmup_updates:
    return warmup_init_lr + t * lr_step
  return decay_factor * t**-0.5


# ---------------------------------------------------------------------------
# PyTorch, live.


def torch_lrs(torch, make, n, lr=1.0):
  """The learning rates of ``n + 1`` steps of a PyTorch optimizer and scheduler.

  Entry ``t`` is the one the ``t``-th update uses (counting from 0, as Optax's
  count); the last is the one the scheduler computes after the ``n``-th, or
  NaN where PyTorch divides by zero computing it.
  """
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=lr, momentum=0.9)
  sched = make(opt)
  lrs = [opt.param_groups[0]["lr"]]
  for t in range(n):
    opt.step()
    try:
      sched.step()
    except ZeroDivisionError:
      assert t == n - 1
      return np.array([*lrs, math.nan])
    lrs.append(opt.param_groups[0]["lr"])
  return np.array(lrs)


RESTARTS = [  # (T_0, T_mult, eta_min, base learning rate)
  (100, 1, 0.0, 0.1),
  (100, 1, 1e-3, 0.1),
  (37, 2, 1e-4, 0.5),
  (10, 2, 0.0, 1.0),
  (10, 3, 0.01, 1.0),
]


@pytest.mark.parametrize(("T0", "T_mult", "eta_min", "base"), RESTARTS)
def test_cosine_restarts_matches_torch(torch, T0, T_mult, eta_min, base):
  n = 5000
  want = torch_lrs(
    torch,
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
      o, T_0=T0, T_mult=T_mult, eta_min=eta_min
    ),
    n,
    lr=base,
  )
  got = call(
    S.cosine_restarts(base, T0, period_mul=T_mult, end_value=eta_min), range(n + 1)
  )
  np.testing.assert_allclose(got, want, rtol=F32, atol=0)
  # The restarts are at the same steps, and each is the peak itself.
  restarts = np.flatnonzero(np.diff(want) > 0) + 1
  np.testing.assert_array_equal(np.flatnonzero(np.diff(got) > 0) + 1, restarts)
  assert len(restarts) >= 3 and np.all(got[restarts] == np.float32(base))


@pytest.mark.parametrize(("T0", "T_mult"), [(3, 1), (2, 2)])
def test_cosine_restarts_per_epoch_matches_torch_per_epoch(torch, T0, T_mult):
  """Stepped once per epoch, as PyTorch's examples do, and at fractional epochs."""
  spe, epochs = 7, 40
  steps = np.arange(spe * epochs)
  per_epoch = torch_lrs(
    torch,
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T0, T_mult, 0.01),
    epochs,
  )
  lr = S.per_epoch(S.cosine_restarts(1.0, T0, period_mul=T_mult, end_value=0.01), spe)
  np.testing.assert_allclose(call(lr, steps), per_epoch[steps // spe], rtol=F32)
  if T_mult != 1:
    return  # PyTorch's closed form finds T_mult > 1 cycles with a float log
  # scheduler.step(epoch + i / iters), PyTorch's documented fractional use.
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=1.0)
  sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T0, 1, 0.01)
  want = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the epoch argument is deprecated
    for t in steps:
      sched.step(t // spe + (t % spe) / spe)
      want.append(opt.param_groups[0]["lr"])
  smooth = S.per_epoch(S.cosine_restarts(1.0, T0, end_value=0.01), spe, staircase=False)
  # The fractional epoch per_epoch passes on is a float32, within
  # epochs * 2**-24 of PyTorch's float64 one, and the value moves by at most
  # pi / (2 * T0) per epoch.
  atol = 2 * math.pi / (2 * T0) * epochs * 2.0**-24
  np.testing.assert_allclose(call(smooth, steps), want, rtol=F32, atol=atol)


ONE_CYCLE = [  # (total_steps, pct_start, anneal, three_phase, div, final_div)
  (1000, 0.3, "cos", False, 25.0, 1e4),  # the defaults
  (1000, 0.3, "linear", False, 25.0, 1e4),
  (997, 0.3, "cos", False, 25.0, 1e4),  # 0.3 * 997 - 1 = 298.09999999999997
  (1000, 0.25, "cos", True, 25.0, 1e4),
  (997, 0.4, "linear", True, 10.0, 100.0),
  (5000, 0.1, "cos", False, 5.0, 1e3),
  (123, 0.0, "cos", False, 25.0, 1e4),  # no rise: the fall starts at step -1
  (50, 1.0, "linear", False, 25.0, 1e4),  # only the rise
  (50, 0.9, "cos", True, 25.0, 1e4),  # the second phase ends after the run
  (3, 0.5, "cos", True, 25.0, 1e4),
  (1, 0.3, "linear", False, 25.0, 1e4),
]


@pytest.mark.parametrize(("T", "pct", "anneal", "three", "div", "fdiv"), ONE_CYCLE)
def test_one_cycle_matches_torch(torch, T, pct, anneal, three, div, fdiv):
  kw = dict(pct_start=pct, div_factor=div, final_div_factor=fdiv, three_phase=three)
  want = torch_lrs(
    torch,
    lambda o: torch.optim.lr_scheduler.OneCycleLR(
      o, max_lr=0.1, total_steps=T, anneal_strategy=anneal, **kw
    ),
    T,
  )
  # Our float64 transcription is PyTorch's arithmetic, to the last bit.
  ours64 = ref(ref_one_cycle, range(T), 0.1, T, anneal=anneal, **kw)
  np.testing.assert_array_equal(ours64, want[:T])
  s = S.one_cycle(0.1, T, anneal=anneal, **kw)
  got = call(s, range(T + 3))
  np.testing.assert_allclose(got[:T], want[:T], rtol=F32, atol=0)
  # After the run the last update's value is held. PyTorch computes one
  # more value, past the last phase's end (never used by an update).
  assert np.all(got[T - 1 :] == got[T - 1])
  assert float(s(10 * T)) == got[T - 1]
  if pct < 1 and T > 1:
    assert want[T] != want[T - 1]
  if anneal == "linear" and fdiv > 1e3 and T > 1 and pct < 1:
    assert want[T] < 0 < got[T]  # a negative learning rate


def test_one_cycle_where_torch_divides_by_zero(torch):
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=1.0, momentum=0.9)
  for pct, T in [(0.1, 10), (0.05, 20)]:  # pct * T == 1: the rise ends at step 0
    with pytest.raises(ZeroDivisionError):
      torch.optim.lr_scheduler.OneCycleLR(opt, 1.0, total_steps=T, pct_start=pct)
    with pytest.raises(ValueError, match="pct_start"):
      S.one_cycle(1.0, T, pct_start=pct)


def test_one_cycle_optax_is_a_step_longer():
  """Optax's one-cycle peaks and ends a step after PyTorch's (and ours)."""
  T = 100
  ours = call(S.one_cycle(1.0, T), range(T + 1))
  theirs = np.array(
    [float(optax.cosine_onecycle_schedule(T, 1.0)(t)) for t in range(T + 1)]
  )
  assert np.argmax(ours) == 29 and np.argmax(theirs) == 30
  assert ours[T - 1] == ours[T] == MIN32 and theirs[T - 1] > theirs[T]


# ---------------------------------------------------------------------------
# float64 references.


@pytest.mark.sweep(quick=["50-1-0.7-0.01-eager", "7-3-0.6-0.05-jit"])
@JIT
@pytest.mark.parametrize(
  ("period", "period_mul", "value_mul", "end"),
  [(50, 1, 0.5, 0.0), (50, 1, 0.7, 0.01), (13, 2, 0.8, 1e-3), (7, 3, 0.6, 0.05)],
)
def test_cosine_restarts_matches_timm_cycle_decay(
  period, period_mul, value_mul, end, jit
):
  steps = np.arange(4000)
  s = S.cosine_restarts(
    1.0, period, period_mul=period_mul, value_mul=value_mul, end_value=end
  )
  got = call(s, steps, jit)
  # The reference holds value_mul and end_value as float32 does (0.7**79
  # would otherwise show float32's rounding of 0.7, not ours), and float32's
  # value_mul**i is within |i ln(value_mul)| * 2**-24 of float64's (1.6e-6
  # for 0.7**77).
  args = (1.0, period, period_mul, f32(value_mul), f32(end))
  cycle = np.array([timm_cycle(int(t), period, period_mul) for t in steps])
  rtol = F32 + 2 * np.abs(cycle * math.log(value_mul)) * 2.0**-24
  exact = ref(ref_restarts, steps, *args)
  assert_within(got, exact, rtol)
  # timm's formula, where its float logarithm finds the cycle: it finds the
  # one before at some restarts (math.log(243, 3) == 4.999999999999999).
  exact_i = np.array([exact_cycle(int(t), period, period_mul) for t in steps])
  same = cycle == exact_i
  want = ref(ref_timm, steps, *args)
  assert_within(got[same], want[same], rtol[same])
  late = steps[~same]
  restarts = steps[1:][np.diff(exact_i) > 0]
  assert len(late) == {(7, 3): 1}.get((period, period_mul), 0), late
  assert set(late) <= set(restarts) and np.all(cycle[~same] == exact_i[~same] - 1)
  # end_value is the floor of every cycle, not scaled: the peaks fall below it
  # (0.7**13 < 0.01), and the cosine then rises to it.
  if end and period_mul == 1:
    low = steps[steps // period >= math.log(end) / math.log(value_mul) + 1]
    assert np.all(got[low] <= f32(end) * (1 + F32))
    assert np.all(np.diff(got[low])[np.diff(low // period) == 0] >= 0)


def test_timm_and_torch_closed_form_restart_a_step_late(torch):
  """A float logarithm puts a restart a step late: ``math.log(1000, 10) < 3``."""
  t = 111  # the start of the fourth cycle: 1 + 10 + 100
  s = S.cosine_restarts(1.0, 1, period_mul=10, value_mul=0.5)
  assert float(s(t)) == 0.125 and float(s(t - 1)) < 1e-4
  assert ref_restarts(t, 1.0, 1, 10, 0.5) == 0.125
  assert ref_timm(t, 1.0, 1, 10, 0.5) == 0.0  # still the end of the third cycle
  # PyTorch's closed form (scheduler.step(epoch)) does the same; stepped one
  # step at a time it counts in integers and restarts at 111.
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=1.0)
  sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, 1, T_mult=10)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sched.step(t)
  assert opt.param_groups[0]["lr"] == 0.0
  stepped = torch_lrs(
    torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 1, 10), t
  )
  assert stepped[t] == 1.0
  np.testing.assert_allclose(call(S.cosine_restarts(1.0, 1, period_mul=10), [t]), 1.0)


@pytest.mark.sweep(
  quick=[
    "300-2000-700-0.0-0.0-linear-eager",
    "0-100-3000-0.0-0.001-cosine-jit",
    "77-0-1234-0.001-0.01-sqrt-jit",
  ]
)
@JIT
@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
@pytest.mark.parametrize(
  ("W", "S_", "D", "init", "end"),
  [(300, 2000, 700, 0.0, 0.0), (0, 100, 3000, 0.0, 1e-3), (77, 0, 1234, 1e-3, 1e-2)],
)
def test_warmup_stable_decay_float64(shape, W, S_, D, init, end, jit):
  steps = np.arange(W + S_ + D + 50)
  s = S.warmup_stable_decay(
    0.5, W, S_, D, init_value=init, end_value=end, decay_shape=shape
  )
  got = call(s, steps, jit)
  want = ref(ref_wsd, steps, 0.5, W, S_, D, f32(init), f32(end), shape)
  np.testing.assert_allclose(got, want, rtol=F32, atol=0)
  # The phases end at their steps: the peak held exactly, then the end value.
  assert np.all(got[W : W + S_] == np.float32(0.5))
  assert np.all(got[W + S_ + D :] == np.float32(end))
  assert np.all(np.diff(got[: W + 1]) > 0) and np.all(np.diff(got[W + S_ :]) <= 0)


@pytest.mark.parametrize(
  ("shape", "hf"), [("linear", "linear"), ("cosine", "cosine"), ("sqrt", "1-sqrt")]
)
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_warmup_stable_decay_matches_hugging_face(shape, hf, min_lr_ratio):
  """``get_wsd_schedule``: from and to ``min_lr_ratio * peak``."""
  W, S_, D, peak = 100, 500, 400, 3e-4
  steps = np.arange(W + S_ + D + 20)
  lo = min_lr_ratio * peak
  s = S.warmup_stable_decay(
    peak, W, S_, D, init_value=lo, end_value=lo, decay_shape=shape
  )
  want = peak * ref(ref_hf_wsd, steps, W, S_, D, hf, min_lr_ratio)
  np.testing.assert_allclose(call(s, steps), want, rtol=F32, atol=0)


@JIT
@pytest.mark.parametrize(
  ("lr", "W", "init"),
  [(5e-4, 4000, 0.0), (7e-4, 4000, 1e-7), (1.0, 1, 1.0), (0.1, 37, 0.3)],
)
def test_inverse_sqrt_matches_fairseq_float64(lr, W, init, jit):
  steps = np.concatenate([np.arange(20_000), [10**6, 10**8, INT32_MAX]])
  got = call(S.inverse_sqrt(lr, W, init_value=init), steps, jit)
  want = ref(ref_fairseq, steps, f32(lr), W, f32(init))
  np.testing.assert_allclose(got, want, rtol=F32, atol=0)
  assert got[W] == np.float32(lr)


# ---------------------------------------------------------------------------
# Exact boundaries where float32 step arithmetic is not.

# (boundary, a period ending there, the cycle it starts)
BOUNDARIES = [
  (2**24 + 2, 2**23 + 1, 2),  # float32(2**24 + 1) == 2**24
  (30_000_000, 10_000_000, 3),
  (2**31 - 2, 2**30 - 1, 2),
]


# One boundary eagerly and one jitted in the quick loop.
NEAR_LARGE_STEPS = pytest.mark.sweep(
  quick=["16777218-8388609-2-eager", "2147483646-1073741823-2-jit"]
)


def around(b):
  steps = np.array([b - 3, b - 2, b - 1, b, b + 1])
  return steps[steps <= INT32_MAX]


@NEAR_LARGE_STEPS
@JIT
@pytest.mark.parametrize(("b", "T", "q"), BOUNDARIES)
def test_cosine_restarts_exact_near_large_steps(b, T, q, jit):
  steps = around(b)
  s = S.cosine_restarts(1.0, T, value_mul=0.5)
  got = call(s, steps, jit)
  np.testing.assert_allclose(got, ref(ref_restarts, steps, 1.0, T, 1, 0.5), rtol=F32)
  assert got[3] == 0.5**q and 0 < got[2] < 1e-12
  # period_mul=2 with the third cycle starting at b (3 * period == b), and the
  # 31st of period 1 at 2**31 - 1, the last int32 step.
  for period, start in [(b // 3, b), (1, INT32_MAX)]:
    steps = around(start)
    got = call(S.cosine_restarts(1.0, period, period_mul=2), steps, jit)
    want = ref(ref_restarts, steps, 1.0, period, 2)
    np.testing.assert_allclose(got, want, rtol=F32, atol=0)
    assert got[3] == 1.0 and got[2] < 1e-12


@NEAR_LARGE_STEPS
@JIT
@pytest.mark.parametrize(("b", "T", "q"), BOUNDARIES)
def test_one_cycle_exact_near_large_steps(b, T, q, jit):
  del T, q
  # The peak at b: pct_start * total_steps - 1 == b.
  total = 2 * (b + 1)
  steps = around(b)
  for three in (False, True):
    s = S.one_cycle(1.0, total, pct_start=0.5, three_phase=three)
    got = call(s, steps, jit)
    want = ref(ref_one_cycle, steps, 1.0, total, 0.5, three_phase=three)
    np.testing.assert_allclose(got, want, rtol=F32, atol=0)
    # The peak is exact; its neighbours are within 1e-13 of it (the cosine is
    # flat there), which float32 rounds to 1.0 too.
    assert got[3] == 1.0
  # A fractional end: 0.3 * total - 1 falls between two steps, as PyTorch's.
  total = 100_000_001
  s = S.one_cycle(1.0, total, anneal="linear")
  e = 0.3 * total - 1
  steps = around(math.floor(e) + 1)
  np.testing.assert_allclose(
    call(s, steps, jit),
    ref(ref_one_cycle, steps, 1.0, total, anneal="linear"),
    rtol=F32,
  )
  # The last update (2**31 - 2) of a run of 2**31 - 1 steps ends at the
  # minimum, linearly: a step before, it is 1.7e-4 higher (a float32 step
  # count would be 64 steps off).
  s = S.one_cycle(1.0, INT32_MAX, anneal="linear")
  got = call(s, [INT32_MAX - 3, INT32_MAX - 2, INT32_MAX - 1, INT32_MAX], jit)
  want = ref(
    ref_one_cycle,
    [INT32_MAX - 3, INT32_MAX - 2, INT32_MAX - 1],
    1.0,
    INT32_MAX,
    anneal="linear",
  )
  np.testing.assert_allclose(got[:3], want, rtol=F32)
  assert got[2] == got[3] == MIN32 and got[0] > got[1] > got[2]


@NEAR_LARGE_STEPS
@JIT
@pytest.mark.parametrize(("b", "T", "q"), BOUNDARIES)
def test_warmup_ends_exact_near_large_steps(b, T, q, jit):
  del T, q
  steps = around(b)
  # Each boundary of warmup-stable-decay at b in turn: the warmup's end, the
  # decay's start and its end, and a drop (no decay) at b.
  for W, S_, D in [(b, 10, 10), (b - 10, 10, 10), (b - 20, 10, 10), (0, b, 0)]:
    for shape in ("linear", "cosine", "sqrt"):
      got = call(S.warmup_stable_decay(1.0, W, S_, D, decay_shape=shape), steps, jit)
      want = ref(ref_wsd, steps, 1.0, W, S_, D, shape=shape)
      np.testing.assert_allclose(got, want, rtol=F32, atol=0)
      if W == b:  # the last warmup steps are within 2e-8 of 1.0 in float32
        assert got[3] == 1.0 and np.all(got[:3] <= 1.0)
      elif W + S_ == b and D:
        assert got[2] == got[3] == 1.0 > got[4]
      elif D:
        assert got[2] > 0.0 == got[3]
      else:
        assert got[2] == 1.0 and got[3] == 0.0
  # The inverse square root's switch at b (continuous: both sides round to
  # 1.0 in float32 there).
  got = call(S.inverse_sqrt(1.0, b), steps, jit)
  np.testing.assert_allclose(got, ref(ref_fairseq, steps, 1.0, b), rtol=F32, atol=0)
  assert got[3] == 1.0


# ---------------------------------------------------------------------------
# Pure functions: shapes, jit, vmap, dtypes, composition.

CATALOG = {
  "restarts": lambda: S.cosine_restarts(1.0, 5, value_mul=0.8, end_value=0.1),
  "restarts_mul": lambda: S.cosine_restarts(1.0, 3, period_mul=2, value_mul=0.5),
  "one_cycle": lambda: S.one_cycle(1.0, 40),
  "one_cycle_three": lambda: S.one_cycle(
    1.0, 40, pct_start=0.25, anneal="linear", three_phase=True
  ),
  "wsd": lambda: S.warmup_stable_decay(
    1.0, 5, 10, 20, init_value=0.1, end_value=0.01, decay_shape="cosine"
  ),
  "wsd_sqrt": lambda: S.warmup_stable_decay(1.0, 0, 7, 30, decay_shape="sqrt"),
  "inverse_sqrt": lambda: S.inverse_sqrt(1.0, 8, init_value=0.1),
  "per_epoch_restarts": lambda: S.per_epoch(S.cosine_restarts(1.0, 2, period_mul=2), 3),
  "per_epoch_one_cycle": lambda: S.per_epoch(S.one_cycle(1.0, 10), 4, staircase=False),
  "join": lambda: S.join([S.inverse_sqrt(1.0, 4), S.one_cycle(0.5, 20)], [9]),
}


# One schedule of each family in the quick loop (per_epoch_one_cycle and join
# run one_cycle and inverse_sqrt too).
QUICK_CATALOG = ["join", "per_epoch_one_cycle", "restarts_mul", "wsd"]


# restarts_mul's shapes run in the float64 sweep below; its exactness there.
@pytest.mark.sweep(quick=["join", "per_epoch_one_cycle", "wsd"])
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_pure_function_of_any_step_shape(name):
  s = CATALOG[name]()
  steps = jnp.arange(48, dtype=jnp.int32).reshape(2, 4, 6)
  eager = np.asarray(s(steps))
  assert eager.shape == (2, 4, 6) and eager.dtype == np.float32
  # XLA's fused code may round an ulp differently from op-by-op dispatch.
  same = dict(rtol=3e-7, atol=1e-7)
  np.testing.assert_allclose(np.asarray(jax.jit(s)(steps)), eager, **same)
  np.testing.assert_allclose(np.asarray(jax.vmap(jax.vmap(s))(steps)), eager, **same)
  flat = eager.reshape(-1)
  for t in [0, 7, 17]:
    values = [s(t), s(np.int64(t)), s(jnp.uint8(t)), jax.jit(s)(jnp.int32(t))]
    assert all(v.shape == () and v.dtype == jnp.float32 for v in values)
    np.testing.assert_allclose([float(v) for v in values], flat[t], **same)
  np.testing.assert_allclose(S.sample(s, 48), flat, **same)
  # Steps before 0 hold the step-0 value.
  np.testing.assert_allclose(float(s(-5)), flat[0], **same)


def test_per_epoch_composition():
  spe = 10
  lr = S.per_epoch(S.one_cycle(1.0, 20, anneal="linear"), spe)
  np.testing.assert_array_equal(
    S.sample(lr, 300),
    np.repeat(S.sample(S.one_cycle(1.0, 20, anneal="linear"), 30), spe),
  )
  lr = S.per_epoch(S.warmup_stable_decay(1.0, 2, 3, 4), spe, staircase=False)
  steps = np.arange(120)
  want = [ref_wsd(t / spe, 1.0, 2, 3, 4) for t in steps]
  np.testing.assert_allclose(S.sample(lr, 120), want, rtol=1e-6, atol=1e-7)
  # Fractional epochs through cycles growing 2, 4, 8, 16 epochs long.
  lr = S.per_epoch(S.cosine_restarts(1.0, 2, period_mul=2), spe, staircase=False)
  want = [ref_restarts(t / spe, 1.0, 2, 2) for t in range(300)]
  np.testing.assert_allclose(S.sample(lr, 300), want, rtol=1e-6, atol=1e-7)


@pytest.mark.sweep(quick=QUICK_CATALOG)
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_float64_under_x64(x64, name):
  del x64
  steps = jnp.arange(48)  # int64 under x64
  s = CATALOG[name]()
  assert jax.jit(s)(steps).dtype == jnp.float64, name
  assert jax.jit(s)(steps.astype(jnp.int32)).dtype == jnp.float64, name
  assert s(steps).dtype == jnp.float64, name


def test_float32_values_stay_float32_under_x64(x64):
  del x64
  steps = jnp.arange(48)  # int64 under x64
  one = jnp.float32(1.0)
  assert S.one_cycle(one, 10, div_factor=one, final_div_factor=one)(steps).dtype == (
    jnp.float32
  )
  assert S.inverse_sqrt(one, 10, init_value=one)(steps).dtype == jnp.float32


@pytest.mark.parametrize(
  "kw", [{}, dict(anneal_strategy="linear", three_phase=True, pct_start=0.25)]
)
def test_one_cycle_float64_matches_torch(x64, torch, kw):
  del x64
  T = 3000
  want = torch_lrs(
    torch, lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, T, **kw), T
  )[:T]
  kw["anneal"] = kw.pop("anneal_strategy", "cos")
  got = np.asarray(jax.jit(S.one_cycle(0.1, T, **kw))(jnp.arange(T)))
  assert got.dtype == np.float64
  # PyTorch's own float64 rounding (1 + cos near a phase's end, where the
  # value is the minimum, 2.5e5 times smaller than the peak) bounds this.
  np.testing.assert_allclose(got, want, rtol=1e-11, atol=0)


def test_float64_values_are_float64_accurate(x64):
  del x64
  steps = np.arange(0, 6000, 7)
  for s, want in [
    (
      S.cosine_restarts(0.5, 37, period_mul=2, value_mul=0.9, end_value=1e-3),
      ref(ref_restarts, steps, 0.5, 37, 2, 0.9, 1e-3),
    ),
    (
      S.warmup_stable_decay(0.5, 300, 2000, 3000, end_value=1e-3, decay_shape="sqrt"),
      ref(ref_wsd, steps, 0.5, 300, 2000, 3000, 0.0, 1e-3, "sqrt"),
    ),
    (
      S.inverse_sqrt(5e-4, 4000, init_value=1e-7),
      ref(ref_fairseq, steps, 5e-4, 4000, 1e-7),
    ),
  ]:
    np.testing.assert_allclose(np.asarray(jax.jit(s)(steps)), want, rtol=1e-13)


def test_traced_values():
  # Values (not lengths) may be traced: jit over a peak, vmap a sweep.
  peaks = jnp.array([1.0, 0.1, 0.01])
  for make in [
    lambda p: S.cosine_restarts(p, 10, value_mul=0.5)(25),
    lambda p: S.one_cycle(p, 100)(29),
    lambda p: S.warmup_stable_decay(p, 5, 20, 10)(10),
    lambda p: S.inverse_sqrt(p, 25)(100) * 2,
  ]:
    want = np.array([float(make(float(p))) for p in peaks])
    np.testing.assert_allclose(jax.vmap(make)(peaks), want, rtol=1e-6)
  np.testing.assert_allclose(
    jax.jit(lambda d: S.one_cycle(1.0, 10, div_factor=d)(0))(4.0), 0.25
  )
  # As an Optax learning rate, inside optax.inject_hyperparams under jit.
  lr = S.one_cycle(0.1, 12, three_phase=True)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
  state = tx.init(jnp.zeros(2))
  update = jax.jit(tx.update)
  seen = []
  for _ in range(12):
    _, state = update(jnp.ones(2), state)
    seen.append(float(state.hyperparams["learning_rate"]))
  np.testing.assert_allclose(seen, S.sample(lr, 12), rtol=1e-7)


# ---------------------------------------------------------------------------
# Steps and lengths beyond int32.

X64_STEPS = {  # (ours, int64 steps, the float64 values)
  "restarts": (
    lambda: S.cosine_restarts(1.0, 2**32),
    [2**32 - 1, 2**32, 2**32 + 2**31],
    [math.sin(math.pi / 2**33) ** 2, 1.0, 0.5],
  ),
  "restarts_mul": (
    lambda: S.cosine_restarts(1.0, 2**31, period_mul=2),
    [2**31 - 1, 2**31, 3 * 2**31, 4 * 2**31],
    [math.sin(math.pi / 2**32) ** 2, 1.0, 1.0, (1 + math.cos(math.pi / 4)) / 2],
  ),
  "restarts_last": (  # cycle 63 of period 1 starts at 2**63 - 1
    lambda: S.cosine_restarts(1.0, 1, period_mul=2, value_mul=0.5),
    [2**63 - 2, 2**63 - 1],
    [0.5**62 * math.sin(math.pi / 2**63) ** 2, 0.5**63],
  ),
  "one_cycle": (
    lambda: S.one_cycle(1.0, 2**33, pct_start=0.25, anneal="linear"),
    [2**31 - 1, 2**33 - 1, 2**34],
    [1.0, 4e-6, 4e-6],
  ),
  "wsd": (
    lambda: S.warmup_stable_decay(1.0, 2**32, 2**32, 2**32),
    [2**31, 2**32, 2**33 - 1, 2**33 + 2**31, 3 * 2**32],
    [0.5, 1.0, 1.0, 0.5, 0.0],
  ),
  "inverse_sqrt": (
    lambda: S.inverse_sqrt(1.0, 2**32),
    [2**31, 2**32, 2**34],
    [0.5, 1.0, 0.5],
  ),
}


@pytest.mark.sweep(quick=["inverse_sqrt", "one_cycle", "wsd"])
@pytest.mark.parametrize("case", sorted(X64_STEPS))
def test_int64_steps_are_exact_under_x64(x64, case):
  del x64
  make, steps, want = X64_STEPS[case]
  s = make()
  int64 = jnp.asarray(steps, jnp.int64)
  for got in [s(int64), jax.jit(s)(int64), [s(t) for t in steps]]:
    got = np.asarray(got)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
  with pytest.raises(ValueError, match="int64 step count"):
    s(2**63)


STEPS32 = [0, 1, 2**24 + 1, INT32_MAX - 1, INT32_MAX]
L = 2**31  # one more than any int32 step

LONG = {  # (ours, its float64 value at an int32 step t)
  "restarts": (
    lambda: S.cosine_restarts(1.0, L),
    lambda t: ref_restarts(t, 1.0, L),
  ),
  "restarts_mul": (  # the second cycle, from 2**30, never ends
    lambda: S.cosine_restarts(1.0, 2**30, period_mul=2, value_mul=0.5),
    lambda t: ref_restarts(t, 1.0, 2**30, 2, 0.5),
  ),
  "restarts_huge_mul": (
    lambda: S.cosine_restarts(1.0, 3, period_mul=INT64_MAX),
    lambda t: ref_restarts(t, 1.0, 3, INT64_MAX),
  ),
  "one_cycle": (
    lambda: S.one_cycle(1.0, 2**40),
    lambda t: ref_one_cycle(t, 1.0, 2**40),
  ),
  "one_cycle_three": (
    lambda: S.one_cycle(1.0, 2**31 + 5, pct_start=0.6, three_phase=True),
    lambda t: ref_one_cycle(t, 1.0, 2**31 + 5, 0.6, three_phase=True),
  ),
  "wsd": (
    lambda: S.warmup_stable_decay(1.0, L, 10, 10),
    lambda t: t / L,
  ),
  "wsd_decay": (
    lambda: S.warmup_stable_decay(1.0, 0, 1, 2**40, decay_shape="sqrt"),
    lambda t: ref_wsd(t, 1.0, 0, 1, 2**40, shape="sqrt"),
  ),
  "inverse_sqrt": (lambda: S.inverse_sqrt(1.0, L), lambda t: t / L),
}


@JIT
@pytest.mark.parametrize("case", sorted(LONG))
def test_lengths_beyond_int32(case, jit):
  make, ref_at = LONG[case]
  got = call(make(), STEPS32, jit)
  want = [ref_at(t) for t in STEPS32]
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("case", sorted(LONG))
def test_step_beyond_int32_raises_without_x64(case):
  with pytest.raises(ValueError, match=r"the step \d+.* int32 step count"):
    LONG[case][0]()(np.int64(2**31 + 5))


# ---------------------------------------------------------------------------
# Bad arguments, refused when the schedule is built, naming the argument.

NAN, INF = float("nan"), float("inf")
BAD = [
  (lambda: S.cosine_restarts(1.0, 0), ValueError, "period"),
  (lambda: S.cosine_restarts(1.0, 10.5), ValueError, "period"),
  (lambda: S.cosine_restarts(1.0, "10"), TypeError, "period"),
  (lambda: S.cosine_restarts(1.0, 10, period_mul=0), ValueError, "period_mul"),
  (lambda: S.cosine_restarts(1.0, 10, period_mul=1.5), ValueError, "period_mul"),
  (lambda: S.cosine_restarts(1.0, 10, value_mul=0.0), ValueError, "value_mul"),
  (lambda: S.cosine_restarts(1.0, 10, value_mul=-0.5), ValueError, "value_mul"),
  (lambda: S.cosine_restarts(INF, 10), ValueError, "init_value"),
  (lambda: S.cosine_restarts(1.0, 10, end_value=NAN), ValueError, "end_value"),
  (lambda: jax.jit(lambda n: S.cosine_restarts(1.0, n))(10), TypeError, "period"),
  (lambda: S.one_cycle(1.0, 0), ValueError, "total_steps"),
  (lambda: S.one_cycle(1.0, 2**63), ValueError, "total_steps"),
  (lambda: S.one_cycle(1.0, 100, pct_start=1.5), ValueError, "pct_start"),
  (lambda: S.one_cycle(1.0, 100, pct_start=-0.1), ValueError, "pct_start"),
  (lambda: S.one_cycle(1.0, 100, pct_start=NAN), ValueError, "pct_start"),
  (lambda: S.one_cycle(1.0, 100, pct_start="0.3"), TypeError, "pct_start"),
  (
    lambda: S.one_cycle(1.0, 10, pct_start=0.1),
    ValueError,
    r"pct_start \* total_steps",
  ),
  (
    lambda: jax.jit(lambda p: S.one_cycle(1.0, 10, pct_start=p))(0.3),
    TypeError,
    "pct_start",
  ),
  (lambda: S.one_cycle(1.0, 100, div_factor=0.0), ValueError, "div_factor"),
  (
    lambda: S.one_cycle(1.0, 100, final_div_factor=-1.0),
    ValueError,
    "final_div_factor",
  ),
  (lambda: S.one_cycle(1.0, 100, anneal="cosine"), ValueError, "anneal"),
  (lambda: S.one_cycle(1.0, 100, anneal=None), TypeError, "anneal"),
  (lambda: S.one_cycle(1.0, 100, three_phase="yes"), TypeError, "three_phase"),
  (lambda: S.one_cycle(INF, 100), ValueError, "max_value"),
  (lambda: S.one_cycle(lambda t: t, 100), TypeError, "max_value"),
  (lambda: S.warmup_stable_decay(1.0, -1, 10, 10), ValueError, "warmup_steps"),
  (lambda: S.warmup_stable_decay(1.0, 10, 1.5, 10), ValueError, "stable_steps"),
  (lambda: S.warmup_stable_decay(1.0, 10, 10, -3), ValueError, "decay_steps"),
  (
    lambda: S.warmup_stable_decay(1.0, 2**62, 2**62, 1),
    ValueError,
    r"warmup_steps \+ stable_steps \+ decay_steps",
  ),
  (
    lambda: S.warmup_stable_decay(1.0, 1, 1, 1, decay_shape="exp"),
    ValueError,
    "decay_shape",
  ),
  (
    lambda: S.warmup_stable_decay(1.0, 1, 1, 1, decay_shape=1),
    TypeError,
    "decay_shape",
  ),
  (
    lambda: S.warmup_stable_decay(1.0, 1, 1, 1, init_value=NAN),
    ValueError,
    "init_value",
  ),
  (
    lambda: S.warmup_stable_decay(1.0, 1, 1, 1, end_value=-INF),
    ValueError,
    "end_value",
  ),
  (lambda: S.warmup_stable_decay(None, 1, 1, 1), TypeError, "peak_value"),
  (lambda: S.inverse_sqrt(1.0, 0), ValueError, "warmup_steps=1 with init_value"),
  (lambda: S.inverse_sqrt(1.0, -4), ValueError, "warmup_steps"),
  (lambda: S.inverse_sqrt(1.0, 4, init_value=NAN), ValueError, "init_value"),
  (lambda: S.inverse_sqrt("1e-3", 4), TypeError, "peak_value"),
  (lambda: S.inverse_sqrt(1.0, 4)(True), TypeError, "step"),
  (lambda: S.one_cycle(1.0, 10)(2**31), ValueError, "int32"),
]


@pytest.mark.parametrize(("make", "error", "name"), BAD, ids=range(len(BAD)))
def test_bad_arguments_raise_naming_them(make, error, name):
  with pytest.raises(error, match=name):
    make()


# ---------------------------------------------------------------------------
# per_epoch with a fractional number of steps per epoch: the staircase epoch
# floor(step / steps_per_epoch) is exact for every step, as Python's Fraction
# computes it.

from fractions import Fraction  # noqa: E402

from optaxtra.schedules import _epochs  # noqa: E402

# (steps_per_epoch, whether 1 / steps_per_epoch has a denominator within int32)
FRACTIONAL = {
  "imagenet-1024": 1281167 / 1024,  # Haiku's ImageNet example: 1251.1396484375
  "imagenet-1000": Fraction(1281167, 1000),  # exact, as a Fraction
  "imagenet-1000-float": 1281167 / 1000,  # the float: denominator 2**41
  "two-and-a-half": 2.5,
  "one-and-a-half": 1.5,
  "just-above-one": 1.0000001,
  "a-third-of-ten": 10 / 3,
  "beyond-int32": 2**31 - 0.5,
}


def boundary_steps(spe, top=INT32_MAX, epochs=60, seed=0):
  """Steps at and around the first steps of many epochs, and the extremes.

  The first step of epoch ``e`` is ``ceil(e * spe)``; around it the epoch
  changes, which is where float arithmetic goes wrong. The epochs are the
  first ``epochs``, a random sample over the whole int32 range, and the last
  ones below ``top``.
  """
  spe = Fraction(spe)
  last = math.floor(top / spe)
  rng = np.random.default_rng(seed)
  picked = set(range(epochs)) | set(range(max(last - epochs, 0), last + 1))
  picked |= {int(e) for e in rng.integers(0, last + 1, 4 * epochs)}
  steps = {0, 1, top, top - 1}
  for e in picked:
    b = math.ceil(e * spe)
    steps |= {s for s in range(b - 2, b + 3) if 0 <= s <= top}
  return np.array(sorted(steps), np.int64)


def exact_epochs(steps, spe):
  spe = Fraction(spe)
  return np.array([math.floor(int(s) / spe) for s in steps], np.int64)


def epochs_seen(spe, steps, *, jit=True, vmap=False, dtype=jnp.int32):
  """The integer epoch number ``per_epoch`` passes its schedule at ``steps``.

  A schedule's output is a float (float32 holds integers only up to 2**24),
  so the epoch is read in two 16-bit halves, each exact in float32.
  """

  def run(f):
    g = jax.vmap(f) if vmap else f
    g = jax.jit(g) if jit else g
    return np.asarray(g(jnp.asarray(steps, dtype)), np.float64).astype(np.int64)

  low = run(S.per_epoch(lambda e: e & 0xFFFF, spe))
  high = run(S.per_epoch(lambda e: e >> 16, spe))
  return high * 65536 + low


def floor_epochs(spe, steps, dtype=jnp.int32):
  """The staircase epochs, from the exact routine per_epoch calls, jitted."""
  x = 1 / Fraction(spe)
  return np.asarray(_epochs.floor_times(jnp.asarray(steps, dtype), x))


@pytest.mark.parametrize("spe", FRACTIONAL.values(), ids=FRACTIONAL.keys())
def test_fractional_epochs_are_exact_at_every_boundary(spe):
  # At and around the first step of ~300 epochs spread over the int32 range,
  # at 2**31 - 1, and at the negative steps down to -2**31 (floored too).
  steps = boundary_steps(spe)
  negative = np.append(-steps[::5] - 1, -(2**31))
  steps = np.concatenate([steps, negative])
  got = floor_epochs(spe, steps).astype(np.int64)
  np.testing.assert_array_equal(got, exact_epochs(steps, spe))


def test_per_epoch_fractional_staircase_passes_the_exact_epoch():
  spe = 1281167 / 1024  # Haiku's ImageNet example: 1251.1396484375
  steps = boundary_steps(spe, epochs=20)
  want = exact_epochs(steps, spe)
  np.testing.assert_array_equal(epochs_seen(spe, steps), want)
  few = np.concatenate([steps[:3], steps[-3:]])  # eager
  np.testing.assert_array_equal(
    epochs_seen(spe, few, jit=False), exact_epochs(few, spe)
  )
  got = epochs_seen(spe, steps[:64], vmap=True)
  np.testing.assert_array_equal(got, want[:64])
  # What the exact computation avoids: floor(step / spe) in float32 puts many
  # of these boundary steps in the wrong epoch (above 2**24 the step itself
  # rounds).
  naive = np.floor(steps.astype(np.float32) / np.float32(spe)).astype(np.int64)
  assert np.sum(naive != want) > 10


def test_per_epoch_fractional_epoch_boundaries_by_hand():
  # 2.5 steps per epoch: epochs start at 0, 3, 5, 8, 10 (ceil(2.5 e)); the
  # last int32 step is in epoch floor((2**31 - 1) / 2.5) = 858993458, and
  # step -1 in epoch -1.
  got = epochs_seen(2.5, [0, 2, 3, 4, 5, 7, 8, 10, INT32_MAX, -1, -3, -4])
  np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 2, 3, 4, 858993458, -1, -2, -2])
  # ImageNet in batches of 1024: epoch 1 starts at step 1252, epoch 90 at
  # step ceil(90 * 1281167 / 1024) = 112603.
  got = floor_epochs(1281167 / 1024, [1251, 1252, 112602, 112603])
  np.testing.assert_array_equal(got, [0, 1, 89, 90])


@pytest.mark.parametrize("spe", [1281167 / 1024, 1281167 / 1000, 2**40 + 0.25])
def test_fractional_epochs_int64_steps_exact(x64, spe):
  steps = boundary_steps(spe, top=INT64_MAX, epochs=10)
  steps = np.concatenate([steps, -steps - 1, [-(2**63)]])
  got = floor_epochs(spe, steps, jnp.int64)
  assert [int(g) for g in got] == [math.floor(int(s) / Fraction(spe)) for s in steps]
  # and through per_epoch, read as a float64 below 2**53:
  lr = S.per_epoch(lambda e: e, spe)
  small = steps[np.abs(steps) < 2**52]
  got = np.asarray(jax.jit(lr)(jnp.asarray(small, jnp.int64)))
  np.testing.assert_array_equal(got, exact_epochs(small, spe).astype(np.float64))


@pytest.mark.parametrize("spe", FRACTIONAL.values(), ids=FRACTIONAL.keys())
def test_fractional_smooth_epoch_is_accurate(spe):
  # staircase=False: the fractional epoch step / spe, within two float32
  # roundings of its value (the exact integer part and remainder, each
  # rounded and added; or a float32 division where 1 / spe's denominator
  # exceeds int32). Measured: at most 1.6 of the float32 spacing of the value.
  steps = boundary_steps(spe, epochs=30)
  got = _epochs.times(jnp.asarray(steps, jnp.int32), 1 / Fraction(spe), jnp.float32)
  got = np.asarray(got, np.float64)
  want = np.array([float(int(s) / Fraction(spe)) for s in steps])
  spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
  assert np.all(np.abs(got - want) <= 2 * spacing)


def test_per_epoch_fractional_smooth_passes_the_fractional_epoch():
  spe = 1281167 / 1024
  steps = np.array([0, 1, 1251, 1252, 112603, 2**24 + 3, INT32_MAX])
  lr = S.per_epoch(lambda e: e, spe, staircase=False)
  got = np.asarray(jax.jit(lr)(jnp.asarray(steps, jnp.int32)), np.float64)
  want = np.array([float(int(s) / Fraction(spe)) for s in steps])
  spacing = np.spacing(want.astype(np.float32)).astype(np.float64)
  assert np.all(np.abs(got - want) <= 2 * spacing)


def test_per_epoch_whole_float_and_fraction_are_the_whole_path():
  # 40.0 and Fraction(80, 2) are 40 steps: the integer code, the same numbers.
  f = S.cosine_decay(1.0, 9)
  steps = jnp.asarray([0, 39, 40, 359, 360, INT32_MAX], jnp.int32)
  want = np.asarray(S.per_epoch(f, 40)(steps))
  for spe in (40.0, Fraction(80, 2), np.float32(40), np.int64(40)):
    np.testing.assert_array_equal(np.asarray(S.per_epoch(f, spe)(steps)), want)
    smooth = S.per_epoch(f, spe, staircase=False)
    np.testing.assert_array_equal(
      np.asarray(smooth(steps)), np.asarray(S.per_epoch(f, 40, staircase=False)(steps))
    )


def test_per_epoch_fractional_float_steps():
  # A float step (a fractional epoch passed on) is divided in floating point.
  lr = S.per_epoch(lambda e: e, 2.5)
  np.testing.assert_allclose(lr(jnp.array([5.0, 6.0])), [2.0, 2.0])
  lr = S.per_epoch(lambda e: e, 2.5, staircase=False)
  np.testing.assert_allclose(lr(jnp.array([5.0, 6.0])), [2.0, 2.4])


def test_lower_neighbour_is_the_farey_neighbour():
  # The largest fraction <= x with a denominator <= n, by brute force.
  rng = np.random.default_rng(1)
  for _ in range(200):
    n = int(rng.integers(1, 60))
    x = Fraction(int(rng.integers(1, 10**6)), int(rng.integers(1, 10**6)))
    x = min(x, 1 / x)
    best = max(Fraction(math.floor(x * q), q) for q in range(1, n + 1))
    assert _epochs.lower_neighbour(x, n) == best, (x, n)


# ---------------------------------------------------------------------------
# linear_warmup(init_value=...) and cosine_decay(end_value=...).


def test_linear_warmup_from_init_value():
  # init + (peak - init) * t / W, as timm's warmup_lr_init + t * (peak - init) / W.
  init, peak, W = 1e-6, 5e-4, 37
  lr = S.linear_warmup(S.constant(peak), W, init_value=init)
  steps = np.arange(60)
  got = call(lr, steps)
  want = np.array([init + t * (peak - init) / W if t < W else peak for t in steps])
  assert_within(got, want, 4 * 2.0**-24)
  assert got[0] == f32(init)
  # init_value=0 is exactly the warmup it was: peak * t / W.
  a = call(S.linear_warmup(S.constant(peak), W), steps)
  b = call(S.linear_warmup(S.constant(peak), W, init_value=0.0), steps)
  np.testing.assert_array_equal(a, b)
  # A warmup down to a lower peak, and with shift.
  lr = S.linear_warmup(S.constant(0.1), 4, init_value=1.0, shift=True)
  np.testing.assert_allclose(call(lr, [0, 2, 4, 9]), [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_cosine_decay_end_value_is_an_absolute_floor():
  init, end, T = 5e-4, 1e-5, 1000
  lr = S.cosine_decay(init, T, end_value=end)
  steps = np.arange(0, T + 50)
  got = call(lr, steps)
  want = np.array(
    [end + 0.5 * (init - end) * (1 + math.cos(math.pi * min(t, T) / T)) for t in steps]
  )
  assert_within(got, want, F32)
  assert got[-1] == f32(end)
  # The same numbers as Optax's warmup_cosine_decay_schedule without warmup
  # (it has an end_value), to float32 rounding.
  # (Optax computes 1 + cos, which cancels near the end: bounded relative to
  # the initial value, not the value.)
  optax_lr = optax.warmup_cosine_decay_schedule(init, init, 0, T, end_value=end)
  assert np.all(np.abs(call(optax_lr, steps) - want) <= F32 * init)
  # exponent applies to the cosine factor; end_value=0 is alpha=0.
  a = call(S.cosine_decay(init, T, exponent=2.0, end_value=0.0), steps)
  b = call(S.cosine_decay(init, T, exponent=2.0), steps)
  np.testing.assert_array_equal(a, b)


def test_cosine_decay_end_value_and_alpha_exclusive():
  with pytest.raises(ValueError, match=r"alpha and end_value"):
    S.cosine_decay(1.0, 10, alpha=0.1, end_value=0.1)
  S.cosine_decay(1.0, 10, alpha=0.0, end_value=0.1)  # alpha at its default
