"""reduce_on_plateau: PyTorch's ReduceLROnPlateau, run live, step by step.

The reference is ``torch.optim.lr_scheduler.ReduceLROnPlateau`` driving an SGD
optimizer of ``lr=1``, so that its learning rate is the scale: the scale an
update uses is the learning rate ``optimizer.step()`` reads, and the state
after a plateau step is the scheduler's (``best``, ``num_bad_epochs``,
``cooldown_counter``). Under ``jax_enable_x64`` the two agree bit for bit;
in float32 to the rounding of the float32 factor products.
"""

from __future__ import annotations

import math
import pickle

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra

NAN, INF = math.nan, math.inf

# A loss: falls, plateaus (flat, slightly worse, within the 1e-4 relative
# threshold, above it), jumps, gives NaN and inf, falls again. Every value is
# a float32 (a multiple of 1/4, or 7.9995 and 8.0002, far from any threshold),
# so float32 and float64 runs see the same numbers.
MIN_SEQ = [
  *(10.0, 9.0, 8.0, 8.0, 8.5, 8.0, 7.9995, 9.0, 7.0, 7.0, 7.0, 7.0),
  *(6.5, 6.0, 6.0, 6.0, 6.0, 6.0, 5.5, NAN, 5.5, INF, 5.0, 5.0),
  *(5.25, 5.0, 5.0, 4.75, 4.5, 4.5, 4.5, 4.5, 8.0002, 4.5, 4.5, 4.5),
]
# An accuracy: rises, plateaus, gives NaN and -inf, rises again.
MAX_SEQ = [
  *(1.0, 2.0, 3.0, 3.0, 2.5, 3.0, 3.0002, 1.0, 4.0, 4.0, 4.0, 4.0),
  *(4.5, 5.0, 5.0, 5.0, 5.0, 5.0, 5.5, NAN, 5.5, -INF, 6.0, 6.0),
  *(5.75, 6.0, 6.0, 6.25, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5),
]

# (id, options, values): every option of the scheduler, each met by the
# sequence at least once (a reduction, a skipped one, a cooldown, the floor).
CASES = [
  # patience=10: a flat tail of 12 epochs of 3 reduces it too.
  ("defaults", {}, MIN_SEQ + [4.5] * 36),
  ("patience0", {"patience": 0}, MIN_SEQ),
  ("patience2", {"patience": 2}, MIN_SEQ),
  ("cooldown2", {"patience": 1, "cooldown": 2}, MIN_SEQ),
  ("min_scale", {"patience": 0, "factor": 0.5, "min_scale": 0.05}, MIN_SEQ),
  ("eps", {"patience": 0, "factor": 0.5, "eps": 0.02}, MIN_SEQ),
  ("factor0", {"patience": 1, "factor": 0.0, "min_scale": 0.01}, MIN_SEQ),
  ("min_scale1", {"patience": 0, "min_scale": 1.0}, MIN_SEQ),
  ("min_abs", {"patience": 1, "threshold_mode": "abs", "threshold": 0.5}, MIN_SEQ),
  # 6.0 against best 8.0 lies on the threshold 8 * (1 - 0.25): not better.
  ("min_rel_quarter", {"patience": 1, "threshold": 0.25}, MIN_SEQ),
  ("max_rel", {"mode": "max", "patience": 1}, MAX_SEQ),
  ("max_rel_cooldown", {"mode": "max", "patience": 0, "cooldown": 1}, MAX_SEQ),
  (
    "max_abs",
    {"mode": "max", "patience": 1, "threshold_mode": "abs", "threshold": 0.5},
    MAX_SEQ,
  ),
  (
    "max_abs_min_scale",
    {"mode": "max", "patience": 0, "threshold_mode": "abs", "min_scale": 0.005},
    MAX_SEQ,
  ),
]
# Negative values where |best| changes nothing: abs thresholds, and relative
# ones whose every change is far larger than the threshold.
NEG_SEQ = [-1.0, -2.0, -3.0, -3.0, -3.0, -2.5, -4.0, -4.0, -4.0, -4.0, -5.0, -5.0]
# No value within a relative threshold of the best before it.
NEG_REL_SEQ = [-1.0, -2.0, -3.0, -2.5, -2.0, -4.0, -3.0, -3.5, -5.0, -4.0, -4.5, -4.25]
NEG_CASES = [
  ("neg_min_abs", {"patience": 1, "threshold_mode": "abs", "threshold": 0.5}, NEG_SEQ),
  ("neg_max_abs", {"patience": 1, "mode": "max", "threshold_mode": "abs"}, NEG_SEQ),
  ("neg_min_rel", {"patience": 1}, NEG_REL_SEQ),
  ("neg_max_rel", {"patience": 1, "mode": "max"}, NEG_REL_SEQ),
]


@pytest.fixture(params=["float32", "float64"])
def precision(request):
  """The default float dtype: float64 runs with ``jax_enable_x64`` on."""
  if request.param == "float64":
    request.getfixturevalue("x64")
  return request.param


def _torch_scheduler(torch, *, abs_best=False, min_scale=0.0, **options):
  """SGD(lr=1) and its ReduceLROnPlateau (``min_lr = min_scale``).

  ``abs_best`` patches in optaxtra's relative threshold (``|best|``, written
  as PyTorch's product), leaving everything else as PyTorch's.
  """
  param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  opt = torch.optim.SGD([param], lr=1.0)
  cls = torch.optim.lr_scheduler.ReduceLROnPlateau
  if abs_best:

    class AbsBest(cls):
      def _is_better(self, a, best):
        if self.threshold_mode == "abs":
          return super()._is_better(a, best)
        t = self.threshold
        if self.mode == "min":
          return a < best * ((1 - t) if best >= 0 else (1 + t))
        return a > best * ((1 + t) if best >= 0 else (1 - t))

    cls = AbsBest
  return param, opt, cls(opt, min_lr=min_scale, **options)


def _torch_run(torch, values, steps, **options):
  """PyTorch's loop: ``steps`` optimizer steps, then ``scheduler.step(mean)``.

  Returns the learning rate each step used (read from the parameter's change:
  its gradient is 1 and it is reset to 0 before each step) and, after each
  scheduler step, ``(lr, best, num_bad_epochs, cooldown_counter)``.
  """
  param, opt, sched = _torch_scheduler(torch, **options)
  used, after = [], []
  for e in range(len(values) // steps):
    chunk = values[e * steps : (e + 1) * steps]
    for _ in chunk:
      with torch.no_grad():
        param.zero_()
      param.grad = torch.ones(1, dtype=torch.float64)
      opt.step()
      used.append(-float(param.detach()[0]))
    sched.step(sum(chunk) / steps)
    after.append(
      (
        opt.param_groups[0]["lr"],
        sched.best,
        sched.num_bad_epochs,
        sched.cooldown_counter,
      )
    )
  return used, after


def _ours(values, steps, **options):
  """The scale each update used, and the states at the ends of epochs."""
  tx = optaxtra.reduce_on_plateau(accumulation_steps=steps, **options)
  fdt = jnp.result_type(float)
  state = tx.init(jnp.zeros((), fdt))
  update = jax.jit(tx.update)
  used, after = [], []
  for k, v in enumerate(values):
    u, state = update(jnp.ones((), fdt), state, value=jnp.asarray(v, fdt))
    assert float(state.scale) == float(u)  # the scale this update used
    used.append(float(u))
    if (k + 1) % steps == 0:
      after.append(state)
  assert update._cache_size() == 1
  return used, after


def _compare(ours, theirs, precision, what):
  used, after = ours
  t_used, t_after = theirs
  exact = precision == "float64"
  rtol = 0 if exact else 1e-6
  np.testing.assert_allclose(used, t_used, rtol=rtol, atol=0, err_msg=f"{what} used")
  assert len(after) == len(t_after)
  for e, (s, (lr, best, bad, cooldown)) in enumerate(zip(after, t_after, strict=True)):
    msg = f"{what}, plateau step {e + 1}"
    np.testing.assert_allclose(float(s.next_scale), lr, rtol=rtol, atol=0, err_msg=msg)
    # best is a value, or the mean of three of them: exact in float64, one
    # rounding of the float32 mean otherwise.
    np.testing.assert_allclose(float(s.best), best, rtol=rtol, atol=0, err_msg=msg)
    assert (int(s.num_bad_epochs), int(s.cooldown_counter)) == (bad, cooldown), msg
    assert int(s.value_count) == 0 and float(s.value_sum) == 0.0, msg


def _float32(values):
  """The values as the float32 run sees them, as Python floats."""
  return [float(np.float32(v)) for v in values]


@pytest.mark.parametrize("steps", [1, 3], ids=["per_step", "per_epoch_of_3"])
@pytest.mark.parametrize(
  ("options", "values"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_matches_torch(torch, precision, steps, options, values):
  """Scale per update and scheduler state per plateau step, as PyTorch's."""
  if precision == "float32":
    values = _float32(values)
  ours = _ours(values, steps, **options)
  theirs = _torch_run(torch, values, steps, **options)
  _compare(ours, theirs, precision, "stock")
  # best stays >= 0 on these sequences: |best| changes nothing.
  _compare(
    ours, _torch_run(torch, values, steps, abs_best=True, **options), precision, "abs"
  )
  if steps == 1 and options.get("min_scale") != 1.0:
    assert min(ours[0]) < 1.0  # something happened


@pytest.mark.parametrize("steps", [1, 3], ids=["per_step", "per_epoch_of_3"])
@pytest.mark.parametrize(
  ("options", "values"), [c[1:] for c in NEG_CASES], ids=[c[0] for c in NEG_CASES]
)
def test_negative_values_where_pytorch_agrees(torch, precision, steps, options, values):
  ours = _ours(values, steps, **options)
  _compare(ours, _torch_run(torch, values, steps, **options), precision, "stock")
  if steps == 1:
    assert min(ours[0]) < 1.0


@pytest.mark.parametrize("steps", [1, 3], ids=["per_step", "per_epoch_of_3"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_flat_negative_plateau(torch, precision, steps, mode):
  """PyTorch never reduces on a flat negative value (rel threshold); we do.

  PyTorch's ``best * (1 - threshold)`` lies above a negative ``best``
  (``mode="min"``; ``best * (1 + threshold)`` below it for ``"max"``), so a
  value equal to ``best`` counts as better every time (pytorch issue #47513).
  """
  values = [-1.0] * 18
  options = {"mode": mode, "patience": 1}
  stock = _torch_run(torch, values, steps, **options)
  assert set(stock[0]) == {1.0}  # PyTorch: never a bad epoch, no reduction
  assert all(bad == 0 for _, _, bad, _ in stock[1])
  ours = _ours(values, steps, **options)
  assert min(ours[0]) < 1.0
  # Per step: the 3rd value is the 2nd without improvement (patience=1), so
  # the 4th update uses 0.1, and so on every 2 values.
  if steps == 1:
    np.testing.assert_allclose(ours[0][:6], [1, 1, 1, 0.1, 0.1, 0.01], rtol=1e-6)
  # Everything else is PyTorch's: equal to it with |best| patched in.
  _compare(
    ours, _torch_run(torch, values, steps, abs_best=True, **options), precision, "abs"
  )


def test_negative_infinity_becomes_best(torch, precision):
  """-inf is better than any best (mode='min'); nothing is better after it."""
  values = [2.0, 1.0, -INF, -INF, 0.0, -5.0, -INF, 1.0]
  options = {"patience": 1, "factor": 0.5}
  ours = _ours(values, 1, **options)
  assert float(ours[1][2].best) == -INF
  _compare(ours, _torch_run(torch, values, 1, **options), precision, "stock")
  _compare(
    ours, _torch_run(torch, values, 1, abs_best=True, **options), precision, "abs"
  )


def test_nan_is_a_bad_epoch():
  """NaN compares false, as in PyTorch: a bad epoch; best is kept."""
  tx = optaxtra.reduce_on_plateau(patience=1)
  state = tx.init(None)
  for v in (1.0, NAN, NAN):
    _, state = tx.update(jnp.ones(()), state, value=v)
  assert float(state.best) == 1.0
  assert float(state.next_scale) == pytest.approx(0.1)
  # A NaN inside an epoch makes its mean NaN: one bad plateau step.
  tx = optaxtra.reduce_on_plateau(patience=0, accumulation_steps=2)
  state = tx.init(None)
  for v in (1.0, 1.0, 0.5, NAN):
    _, state = tx.update(jnp.ones(()), state, value=v)
  assert float(state.best) == 1.0 and float(state.next_scale) == pytest.approx(0.1)


# --- Timing --------------------------------------------------------------------


def test_timing_per_step():
  """The value given with update k changes the scale from update k + 1."""
  tx = optaxtra.reduce_on_plateau(patience=0, factor=0.5)
  state = tx.init(None)
  assert float(state.scale) == 1.0 and float(state.next_scale) == 1.0
  u, state = tx.update(jnp.ones(()), state, value=1.0)  # sets best
  assert (float(u), float(state.scale), float(state.next_scale)) == (1.0, 1.0, 1.0)
  u, state = tx.update(jnp.ones(()), state, value=2.0)  # bad: reduces
  assert (float(u), float(state.scale), float(state.next_scale)) == (1.0, 1.0, 0.5)
  u, state = tx.update(jnp.ones(()), state, value=0.5)  # better: keeps
  assert (float(u), float(state.scale), float(state.next_scale)) == (0.5, 0.5, 0.5)
  u, state = tx.update(jnp.ones(()), state, value=0.5)
  assert (float(u), float(state.scale), float(state.next_scale)) == (0.5, 0.5, 0.25)
  assert float(tx.update(jnp.ones(()), state, value=0.0)[0]) == 0.25


def test_timing_per_epoch():
  """A reduction decided at the end of epoch e applies from epoch e + 1."""
  tx = optaxtra.reduce_on_plateau(patience=0, factor=0.5, accumulation_steps=3)
  state = tx.init(None)
  used = []
  for v in [1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]:
    u, state = tx.update(jnp.ones(()), state, value=v)
    used.append(float(u))
  # Epoch 1: mean 1 (best). Epoch 2: mean 1, not better: reduce after its 3rd
  # update. Epoch 3: mean 2: reduce again.
  assert used == [1.0] * 6 + [0.5] * 3 + [0.25]
  assert int(state.value_count) == 1 and float(state.value_sum) == 0.0


# --- JAX: jit, scan, chains, inject_hyperparams, inspect ------------------------


def test_scan_equals_loop():
  values = jnp.asarray(MIN_SEQ, jnp.float32)
  tx = optaxtra.reduce_on_plateau(patience=1, cooldown=1, accumulation_steps=2)
  params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  grads = jax.tree.map(jnp.ones_like, params)

  def body(state, v):
    u, state = tx.update(grads, state, params, value=v)
    return state, u

  final, scanned = jax.jit(lambda s: jax.lax.scan(body, s, values))(tx.init(params))
  state = tx.init(params)
  update = jax.jit(tx.update)
  for k, v in enumerate(values):
    u, state = update(grads, state, params, value=v)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(scanned), strict=True):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(
        np.asarray(a, np.float32), np.asarray(b[k], np.float32)
      )
  _harness.assert_same_avals(state, final, "scan carry")
  for a, b in zip(state, final, strict=True):
    np.testing.assert_array_equal(a, b)
  assert float(state.next_scale) < 1.0


def test_check_transformation():
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  for tx in (
    optaxtra.reduce_on_plateau(patience=0),
    optax.chain(optax.adam(1e-3), optaxtra.reduce_on_plateau(accumulation_steps=2)),
  ):
    optaxtra.testing.check_transformation(tx, params, extra_args={"value": 1.0})


def test_state_dtypes(precision):
  fdt = jnp.dtype(precision)
  state = optaxtra.reduce_on_plateau().init(None)
  assert [x.dtype for x in state] == [
    jnp.int32,
    fdt,
    fdt,
    fdt,
    jnp.int32,
    jnp.int32,
    fdt,
    jnp.int32,
  ]
  # Any real value dtype is taken, the state's dtypes never change.
  tx = optaxtra.reduce_on_plateau()
  for value in (1, 1.0, jnp.bfloat16(1), jnp.float32(1), np.float64(1)):
    _, new = tx.update(jnp.ones(2), state, value=value)
    _harness.assert_same_avals(state, new, f"value {value!r}")


def test_updates_keep_their_dtype():
  tx = optaxtra.reduce_on_plateau(patience=0, factor=0.5)
  state = tx.init(None)
  g = {
    "f32": jnp.ones(2, jnp.float32),
    "bf16": jnp.ones(2, jnp.bfloat16),
    "c64": jnp.full(2, 1 + 2j, jnp.complex64),
  }
  for v in (1.0, 2.0):
    u, state = tx.update(g, state, value=v)
  u, state = tx.update(g, state, value=3.0)
  for k in g:
    assert u[k].dtype == g[k].dtype
    np.testing.assert_array_equal(np.asarray(u[k]), 0.5 * np.asarray(g[k]))


@pytest.mark.parametrize("precision_", ["float32", "float64"])
def test_chained_after_adam_matches_torch_adam(torch, request, precision_):
  """chain(optax.adam(lr), reduce_on_plateau()) is torch Adam + the scheduler.

  The float32 bound is that of the two Adams alone (they differ by up to
  1.2e-5 of an lr-sized step in float32, scale or not); a scale applied one
  update early or late would be off by half a step.
  """
  if precision_ == "float64":
    request.getfixturevalue("x64")
  dtype = jnp.dtype(precision_)
  rng = np.random.default_rng(5)
  grads = [{"w": jnp.asarray(rng.normal(size=(3, 4)), dtype)} for _ in range(24)]
  values = _float32([4.0, 3.0, 3.0, 3.0, 3.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.0] * 2)
  lr = 1e-2
  tx = optax.chain(optax.adam(lr), optaxtra.reduce_on_plateau(patience=1, factor=0.5))
  params = {"w": jnp.zeros((3, 4), dtype)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  w = torch.zeros((3, 4), dtype=getattr(torch, precision_), requires_grad=True)
  opt = torch.optim.Adam([w], lr=lr)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
  for k, (g, v) in enumerate(zip(grads, values, strict=True)):
    w.grad = torch.tensor(np.asarray(g["w"]))
    opt.step()
    sched.step(v)
    updates, state = update(g, state, params, value=v)
    params = optax.apply_updates(params, updates)
    step_tol = 1e-13 if precision_ == "float64" else 3e-5
    _harness.assert_close(
      params["w"],
      w.detach().numpy(),
      0,
      None,
      f"step {k}",
      atol=step_tol * lr * (k + 1),
    )
  np.testing.assert_allclose(float(state[1].next_scale) * lr, opt.param_groups[0]["lr"])
  assert opt.param_groups[0]["lr"] < lr


def test_inspect():
  tx = optax.chain(
    optaxtra.scale_by_learning_rate(0.1),
    optaxtra.reduce_on_plateau(patience=0, factor=0.5),
  )
  state = tx.init(jnp.zeros(2))
  info = optaxtra.inspect(state)
  assert float(info["plateau_scale"]) == 1.0 and float(info["plateau_best"]) == INF
  step = jax.jit(lambda s, v: tx.update(jnp.ones(2), s, value=v)[1])
  for v in (1.0, 2.0, 3.0):
    state = step(state, v)
  info = optaxtra.inspect(state)
  assert float(info["learning_rate"]) == pytest.approx(0.1)
  assert {k: float(x) for k, x in info.items() if "plateau" in k or "count" in k} == {
    "count": 3.0,  # one count: the stages' counts agree
    "plateau_scale": 0.5,
    "plateau_next_scale": 0.25,
    "plateau_best": 1.0,
    "plateau_bad_epochs": 0.0,
    "plateau_cooldown": 0.0,
  }
  traced = jax.jit(optaxtra.inspect)(state)
  assert float(traced["plateau_scale"]) == 0.5


def test_inject_hyperparams():
  """Numeric arguments injected (traced under jit), the strings static."""
  kwargs = {"factor": 0.5, "patience": 1, "cooldown": 1, "mode": "max"}
  values = [1.0, 1.0, 1.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]
  plain = optaxtra.reduce_on_plateau(**kwargs)
  injected = optax.inject_hyperparams(optaxtra.reduce_on_plateau)(**kwargs)
  for jit in (False, True):
    s1, s2 = plain.init(None), injected.init(None)
    u1 = jax.jit(plain.update) if jit else plain.update
    u2 = jax.jit(injected.update) if jit else injected.update
    for v in values:
      a, s1 = u1(jnp.ones(()), s1, value=v)
      b, s2 = u2(jnp.ones(()), s2, value=v)
      assert float(a) == float(b)
    assert float(s1.next_scale) < 1.0
    info = optaxtra.inspect(s2)
    assert float(info["plateau_next_scale"]) == float(s1.next_scale)
    assert float(info["factor"]) == 0.5
  # A changed factor is followed without recompiling.
  update = jax.jit(injected.update)
  state = injected.init(None)
  for v in (1.0, 1.0):
    _, state = update(jnp.ones(()), state, value=v)
  # (Old Optax gives init's hyperparameters another weak type than update's,
  # so the first update may compile twice: count from here.)
  compiled = update._cache_size()
  old = state.hyperparams["factor"]
  state.hyperparams["factor"] = old * 0 + 0.25  # same dtype and weak type
  _, state = update(jnp.ones(()), state, value=1.0)
  assert float(state.inner_state.next_scale) == 0.25
  assert update._cache_size() == compiled


def test_count_saturates():
  tx = optaxtra.reduce_on_plateau()
  for jit in (False, True):
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(None)._replace(count=jnp.asarray(_harness.INT32_MAX - 1, jnp.int32))
    for _ in range(2):
      _, state = update(jnp.ones(()), state, value=1.0)
      assert state.count.dtype == jnp.int32 and int(state.count) == _harness.INT32_MAX


def test_pickle_roundtrip():
  tx = optaxtra.reduce_on_plateau()
  _, state = tx.update(jnp.ones(()), tx.init(None), value=1.0)
  back = pickle.loads(pickle.dumps(state))
  assert type(back) is optaxtra.ReduceOnPlateauState
  assert jax.tree.structure(back) == jax.tree.structure(state)


# --- Refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"factor": 1.0}, ValueError, r"factor must be in \[0, 1\), got 1.0"),
    ({"factor": -0.1}, ValueError, r"factor must be in \[0, 1\)"),
    ({"factor": "0.1"}, TypeError, "factor must be a real scalar"),
    (
      {"patience": -1},
      ValueError,
      r"patience must be an int in \[0, 2\*\*31 - 1\].*got -1",
    ),
    ({"patience": 2.0}, TypeError, "patience must be an int, got 2.0"),
    ({"patience": 2**31}, ValueError, "patience must be an int in .*got 2147483648"),
    ({"patience": True}, TypeError, "patience must be an int"),
    ({"mode": "minimum"}, ValueError, "mode must be 'min' or 'max', got 'minimum'"),
    ({"mode": None}, TypeError, "mode must be the string 'min' or 'max'"),
    ({"threshold_mode": "relative"}, ValueError, "threshold_mode must be 'rel' or"),
    ({"threshold": -1e-4}, ValueError, r"threshold must be in \[0, 1\)"),
    ({"threshold": 1.0}, ValueError, "threshold must be in .*threshold_mode='abs'"),
    (
      {"threshold": -1.0, "threshold_mode": "abs"},
      ValueError,
      r"threshold must be in \[0, inf\)",
    ),
    ({"cooldown": -1}, ValueError, r"cooldown must be an int in \[0, "),
    ({"cooldown": 0.5}, TypeError, "cooldown must be an int"),
    ({"min_scale": -0.1}, ValueError, r"min_scale must be in \[0, 1\]"),
    ({"min_scale": 2.0}, ValueError, "min_scale must be in .*min_lr / initial"),
    ({"eps": -1.0}, ValueError, r"eps must be in \[0, inf\)"),
    ({"eps": NAN}, ValueError, "eps must be in"),
    (
      {"accumulation_steps": 0},
      ValueError,
      r"accumulation_steps must be an int in \[1, ",
    ),
    ({"accumulation_steps": 3.0}, TypeError, "accumulation_steps must be an int"),
    (
      {"factor": jnp.asarray(0.5, jnp.bfloat16)},
      TypeError,
      "factor arrived as bfloat16",
    ),
  ],
)
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    optaxtra.reduce_on_plateau(**kwargs)


def test_integer_arguments_as_arrays():
  """inject_hyperparams passes ints as int32 arrays: accepted."""
  optaxtra.reduce_on_plateau(patience=jnp.asarray(3), cooldown=np.int64(1))
  with pytest.raises(TypeError, match="patience must be an int"):
    optaxtra.reduce_on_plateau(patience=jnp.asarray(3.0))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
  ("value", "error", "match"),
  [
    (None, TypeError, r"needs the monitored value.*value=loss"),
    (jnp.ones(2), ValueError, r"value must be a scalar.*shape \(2,\)"),
    (jnp.asarray(True), TypeError, "value must be a real number"),
    (jnp.asarray(1 + 1j), TypeError, "value must be a real number"),
  ],
)
def test_bad_values(jit, value, error, match):
  tx = optaxtra.reduce_on_plateau()
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(error, match=match):
    if value is None:
      update(jnp.ones(2), tx.init(None))
    else:
      update(jnp.ones(2), tx.init(None), value=value)


def test_missing_value_in_a_chain():
  tx = optax.chain(optax.adam(1e-3), optaxtra.reduce_on_plateau())
  with pytest.raises(TypeError, match=r"In optax\.chain pass value=loss"):
    tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))


def test_refuses_other_states_and_integer_updates():
  tx = optaxtra.reduce_on_plateau()
  with pytest.raises(TypeError, match="expected the ReduceOnPlateauState"):
    tx.update(jnp.ones(2), optax.EmptyState(), value=1.0)
  with pytest.raises(TypeError, match="has dtype int32"):
    tx.update(jnp.ones(2, jnp.int32), tx.init(None), value=1.0)
