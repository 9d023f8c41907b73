"""optaxtra on many devices: states follow their params' sharding, updates stay local.

JAX's own sharding is the distributed engine: params are placed on a mesh
FSDP-style (large leaves split over a mesh axis, small ones replicated) and the
optimizer runs under ``jax.jit``. optaxtra's transformations are elementwise
per leaf, so each moment must live where its param lives, and an update must
move no parameter-sized data between devices; the only communication allowed
is the scalar all-reduce that counts clipped entries for ``clip_fraction``
(with ``track_clip_fraction=True``).
A sharded state checkpointed with Orbax resumes bit for bit, in place.

The checks run on 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) in a subprocess, so
that the rest of the test suite keeps its single device: one subprocess per
test process runs every case, one after another (``run_case``). Run this file
as a script with a case name to execute one case directly.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optaxtra
from optaxtra import masks, schedules

NUM_DEVICES = 8

# Collectives that move array data between devices. all-reduce is checked
# separately: it is allowed on scalars only.
_COLLECTIVE = re.compile(
  r"=\s*(?P<shape>.+?)\s+(?P<op>all-reduce|all-gather|all-to-all|"
  r"collective-permute|reduce-scatter|collective-broadcast|ragged-all-to-all)"
  r"(?:-start)?\("
)


def collectives(hlo_text: str) -> list[tuple[str, int, str]]:
  """``(op, largest operand size in elements, line)`` for each collective."""
  found = []
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    sizes = [1]
    for dims in re.findall(r"\[([0-9,]*)\]", m.group("shape")):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      sizes.append(n)
    found.append((m.group("op"), max(sizes), line.strip()))
  return found


# ---------------------------------------------------------------- the worker
# The `_worker_*` functions run in the subprocess, with 8 devices. (Importing
# jax above starts no backend; XLA_FLAGS is read when the first device is used.)

# FSDP-style placement on a (data=2, fsdp=4) mesh: large leaves split over
# "fsdp" (one over both axes), small ones replicated on every device.
SPECS = {
  "embed": P(("data", "fsdp"), None),
  "dense": {"kernel": P("fsdp", None), "bias": P()},
  "out": {"kernel": P(None, "fsdp"), "bias": P()},
  "norm": {"scale": P()},
}
SHAPES = {
  "embed": ((32, 8), jnp.bfloat16),
  "dense": {"kernel": ((64, 24), jnp.float32), "bias": ((24,), jnp.float32)},
  "out": {"kernel": ((24, 16), jnp.float32), "bias": ((16,), jnp.float32)},
  "norm": {"scale": ((24,), jnp.float32)},
}


def _host_values(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda sd: np.asarray(rng.standard_normal(sd[0]) * scale).astype(sd[1]),
    SHAPES,
    is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], tuple),
  )


def _transforms(decay_mask=True):
  lr = schedules.linear_warmup(schedules.cosine_decay(1e-2, 50), 5)
  mask = masks.path_mask(exclude=["bias", "norm"]) if decay_mask else None
  return {
    "adamax_clipped": optaxtra.adamax_clipped(
      lr, weight_decay=1e-2, weight_decay_mask=mask, track_clip_fraction=True
    ),
    # Without the clip share the update communicates nothing at all.
    "adamax_default": optaxtra.adamax_clipped(
      lr, weight_decay=1e-2, weight_decay_mask=mask
    ),
    "chain_adam": optax.chain(
      optaxtra.scale_by_adam(bias_correction=False),
      optaxtra.scale_by_schedule(lambda n: 1.0 / (1.0 + n)),
      optaxtra.scale_by_learning_rate(lr),
      optaxtra.add_decayed_weights_decoupled(1e-2, schedule=lr),
    ),
    "scale_by_adamax_clipped_bf16_mu": optaxtra.scale_by_adamax_clipped(
      bias_correction=True, mu_dtype=jnp.bfloat16, track_clip_fraction=True
    ),
  }


# Meshes whose axes are typed (Auto, Explicit) and jax.set_mesh came with
# jax 0.7; before them every mesh is what Auto now names.
HAS_AXIS_TYPES = hasattr(jax.sharding, "AxisType") and hasattr(jax, "set_mesh")
needs_explicit_axes = pytest.mark.skipif(
  not HAS_AXIS_TYPES,
  reason=f"explicit-axis meshes need jax.sharding.AxisType (jax {jax.__version__})",
)


def _use_mesh(mesh):
  """The context that makes ``mesh`` the current one."""
  return jax.set_mesh(mesh) if HAS_AXIS_TYPES else mesh


def _mesh(explicit):
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  if not HAS_AXIS_TYPES:
    assert not explicit
    devices = np.asarray(jax.devices()).reshape(2, 4)
    return jax.sharding.Mesh(devices, ("data", "fsdp"))
  kind = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
  return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(kind, kind))


def _place(mesh, host_tree):
  return jax.tree.map(
    lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), host_tree, SPECS
  )


def _param_like_subtrees(state, params):
  """The sub-trees of ``state`` with the params' structure (mu, nu, ...)."""
  p_def = jax.tree.structure(params)
  found = []

  def visit(node):
    if jax.tree.structure(node) == p_def:
      found.append(node)
      return True
    return False

  jax.tree.map(lambda x: x, state, is_leaf=visit)
  return found


def _check_state_follows_params(tx_name, state, params, how, *, scalars=True):
  """Every param-shaped state leaf has its param's sharding; scalars replicated."""
  p_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  subtrees = _param_like_subtrees(state, params)
  assert subtrees, f"{tx_name}: no param-shaped state found"
  for node in subtrees:
    for (path, p), s in zip(p_leaves, jax.tree.leaves(node), strict=True):
      where = f"{tx_name} ({how}) {jax.tree_util.keystr(path)}"
      assert s.shape == p.shape, where
      assert s.sharding.is_equivalent_to(p.sharding, p.ndim), (
        f"{where}: state sharding {s.sharding} != param sharding {p.sharding}"
      )
  for s in jax.tree.leaves(state) if scalars else ():
    if s.ndim == 0:
      assert s.sharding.is_fully_replicated, f"{tx_name} ({how}): {s.sharding}"


def _worker_init_eager():
  mesh = _mesh(explicit=False)
  params = _place(mesh, _host_values(0))
  for name, tx in _transforms().items():
    _check_state_follows_params(name, tx.init(params), params, "eager")


def _worker_init_jit_explicit_mesh():
  # With Explicit mesh axes every traced array carries its sharding, so an init
  # under jit places zeros_like(param) exactly like the param.
  mesh = _mesh(explicit=True)
  with _use_mesh(mesh):
    params = _place(mesh, _host_values(0))
    for name, tx in _transforms().items():
      state = jax.jit(tx.init)(params)
      _check_state_follows_params(name, state, params, "jit, explicit mesh")
      # So does eval_shape, e.g. to build an Orbax restore target.
      abstract = jax.eval_shape(tx.init, params)
      for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        if s.ndim:
          assert a.sharding.spec == s.sharding.spec, (name, a.sharding, s.sharding)


def _worker_init_jit_auto_mesh():
  # A plain jax.jit(tx.init) on an Auto mesh: the moments are built from the
  # params (optaxtra._core.dtypes.zeros_like), so sharding propagation gives each
  # its param's sharding. (Scalars, which depend on no param, are left to XLA;
  # out_shardings pins them, see the next case.)
  mesh = _mesh(explicit=False)
  params = _place(mesh, _host_values(0))
  for name, tx in _transforms().items():
    state = jax.jit(tx.init)(params)
    _check_state_follows_params(name, state, params, "plain jit", scalars=False)


def _tree_map_params_shardings(tx, params):
  mesh = jax.tree.leaves(params)[0].sharding.mesh
  return optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    jax.eval_shape(tx.init, params),
    jax.tree.map(lambda p: p.sharding, params),
    transform_non_params=lambda _: NamedSharding(mesh, P()),
  )


def _worker_init_jit_auto_mesh_out_shardings():
  # With Auto mesh axes the state's scalars depend on no param, so to pin
  # every leaf (scalars replicated) the placement is given as out_shardings,
  # derived from the params' with
  # optax.tree_map_params (as for every Optax optimizer), which calls init
  # with a leafless placeholder (masks included, see the next test).
  mesh = _mesh(explicit=False)
  params = _place(mesh, _host_values(0))
  for name, tx in _transforms().items():
    shardings = _tree_map_params_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    _check_state_follows_params(name, state, params, "jit, out_shardings")


def _worker_tree_map_params_with_decay_mask():
  mesh = _mesh(explicit=False)
  params = _place(mesh, _host_values(0))
  tx = _transforms()["adamax_clipped"]
  shardings = _tree_map_params_shardings(tx, params)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  _check_state_follows_params("adamax_clipped", state, params, "masked")


def _step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@functools.cache
def _one_device_run(name):
  """The three steps of ``name`` on one device: what every mesh must compute
  (computed once, for both kinds of mesh)."""
  cpu0 = jax.devices()[0]
  tx = _transforms()[name]
  params = jax.device_put(_host_values(0), cpu0)
  # Committed to the device like the params, so that the jitted step compiles
  # once, not again for the committed state it returns.
  state = jax.device_put(tx.init(params), cpu0)
  step = jax.jit(_step(tx))
  for seed in (1, 2, 3):
    params, state = step(params, state, jax.device_put(_host_values(seed, 0.1), cpu0))
  return params, state


# The transformations whose sharded update every quick run checks on each kind
# of mesh; the full suite checks the others too.
QUICK_UPDATES = {
  False: ["adamax_clipped", "adamax_default", "chain_adam"],
  True: ["adamax_clipped"],
}


def _update_case(explicit, names):
  mesh = _mesh(explicit=explicit)
  host_params = _host_values(0)
  host_grads = [_host_values(seed, scale=0.1) for seed in (1, 2, 3)]

  for name in names:
    tx = _transforms()[name]
    step = _step(tx)
    ref_p, ref_s = _one_device_run(name)

    with _use_mesh(mesh):
      params = _place(mesh, host_params)
      state = tx.init(params)
      grads = [_place(mesh, g) for g in host_grads]
      # The program checked below is the one that runs.
      compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads[0])
      compiled = compiled.compile()
      hlo = compiled.as_text()
      for g in grads:
        params, state = compiled(params, state, g)

    for op, size, line in collectives(hlo):
      assert op == "all-reduce" and size == 1, (
        f"{name}: the update moves data between devices: {line}"
      )
    ops = {op for op, _, _ in collectives(hlo)}
    if "clipped" in name:  # the clip share: a sum of counts over all devices
      assert ops == {"all-reduce"}, (name, ops)
    else:  # nothing to communicate at all
      assert ops == set(), (name, ops)

    _check_state_follows_params(name, state, params, "after updates")
    p_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    specs = jax.tree.leaves(SPECS, is_leaf=lambda x: isinstance(x, P))
    for (path, p), spec in zip(p_leaves, specs, strict=True):
      assert p.sharding.is_equivalent_to(NamedSharding(mesh, spec), p.ndim), (
        name,
        jax.tree_util.keystr(path),
        p.sharding,
      )
    # Sharding changes where the arithmetic runs, not its result (up to the
    # rounding of differently fused programs: one float32 ulp was seen).
    for a, b in zip(
      jax.tree.leaves((params, state)), jax.tree.leaves((ref_p, ref_s)), strict=True
    ):
      assert a.dtype == b.dtype and a.shape == b.shape, name
      tol = 1e-2 if a.dtype == jnp.bfloat16 else 1e-6
      np.testing.assert_allclose(
        np.asarray(a, np.float64),
        np.asarray(b, np.float64),
        rtol=tol,
        atol=tol,
        err_msg=name,
      )


def _worker_update_auto_mesh():
  _update_case(False, QUICK_UPDATES[False])


def _worker_update_explicit_mesh():
  _update_case(True, QUICK_UPDATES[True])


def _worker_update_every_transform():
  for explicit in (False, True) if HAS_AXIS_TYPES else (False,):
    _update_case(
      explicit, [n for n in _transforms() if n not in QUICK_UPDATES[explicit]]
    )


def _worker_collective_detector_sees_an_all_gather():
  # The check above would pass vacuously if it could not see a collective.
  mesh = _mesh(explicit=False)
  x = jax.device_put(jnp.ones((64, 24)), NamedSharding(mesh, P("fsdp")))
  gather = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(mesh, P()))
  found = collectives(gather.lower(x).compile().as_text())
  assert [(op, size) for op, size, _ in found] == [("all-gather", 64 * 24)], found
  found = collectives(jax.jit(jnp.sum).lower(x).compile().as_text())
  assert [(op, size) for op, size, _ in found] == [("all-reduce", 1)], found


def _worker_checkpoint_resume_sharded():
  # Orbax saves each shard from the device holding it and restores into the
  # shardings the target names: a sharded run resumes bit for bit.
  import tempfile

  import orbax.checkpoint as ocp

  mesh = _mesh(explicit=False)
  host_grads = [_host_values(seed, scale=0.1) for seed in (1, 2, 3, 4)]
  for name, tx in _transforms(decay_mask=False).items():

    @jax.jit
    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    params = _place(mesh, _host_values(0))
    grads = [_place(mesh, g) for g in host_grads]
    shardings = {
      "params": jax.tree.map(lambda p: p.sharding, params),
      "opt_state": _tree_map_params_shardings(tx, params),
    }
    init = jax.jit(tx.init, out_shardings=shardings["opt_state"])

    straight = (params, init(params))
    for g in grads:
      straight = step(*straight, g)

    half = (params, init(params))
    for g in grads[:2]:
      half = step(*half, g)
    # The target: shapes and dtypes from eval_shape, placement from the params.
    abstract = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
    target = jax.tree.map(
      lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      abstract,
      shardings,
    )
    with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as ckptr:
      ckptr.save(f"{tmp}/ckpt", {"params": half[0], "opt_state": half[1]})
      ckptr.wait_until_finished()
      restored = ckptr.restore(f"{tmp}/ckpt", target)
    for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
      assert r.sharding.is_equivalent_to(t.sharding, r.ndim), (name, r.sharding)
    resumed = (restored["params"], restored["opt_state"])
    for g in grads[2:]:
      resumed = step(*resumed, g)

    assert jax.tree.structure(resumed) == jax.tree.structure(straight), name
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
      assert a.sharding.is_equivalent_to(b.sharding, a.ndim), name
      np.testing.assert_array_equal(
        np.asarray(a, np.float64), np.asarray(b, np.float64), err_msg=name
      )


def _run_worker(case: str) -> None:
  os.environ["XLA_FLAGS"] = xla_flags()
  os.environ["JAX_PLATFORMS"] = "cpu"
  globals()[f"_worker_{case}"]()
  print(f'{{"case": "{case}", "ok": true}}')


def xla_flags(devices: int = NUM_DEVICES) -> str:
  """XLA_FLAGS as set, with the host platform's device count set to ``devices``."""
  flags = os.environ.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
  return f"{flags} --xla_force_host_platform_device_count={devices}".strip()


# ---------------------------------------------------------------- the runner
# One 8-device process per test process runs every case (of this file and of
# the other files that call run_case), one after another: JAX, the backend and
# the programs the cases share are set up once, not once per case. A case
# that fails, crashes the process or hangs fails alone; the next case starts a
# fresh process.


def _serve() -> None:
  """The 8-device process: runs ``{"script", "case"}`` requests read from stdin.

  Each reply is one JSON line on stdout; what a case prints goes to stderr.
  """
  import contextlib
  import importlib
  import json
  import traceback

  os.environ["XLA_FLAGS"] = xla_flags()
  os.environ["JAX_PLATFORMS"] = "cpu"
  replies = sys.stdout
  for line in sys.stdin:
    request = json.loads(line)
    folder, name = os.path.split(os.path.splitext(request["script"])[0])
    if folder not in sys.path:
      sys.path.insert(0, folder)
    try:
      with contextlib.redirect_stdout(sys.stderr):
        getattr(importlib.import_module(name), f"_worker_{request['case']}")()
      reply = {"ok": True}
    except Exception:  # reported to the test, which fails
      reply = {"ok": False, "error": traceback.format_exc()}
    sys.stderr.flush()
    replies.write(json.dumps(reply) + "\n")
    replies.flush()


class _Runner:
  """The 8-device process of this test process, started on first use."""

  def __init__(self) -> None:
    self.proc: subprocess.Popen | None = None
    self.log = None

  def start(self) -> None:
    import tempfile

    self.log = tempfile.TemporaryFile("w+")  # its stderr, for failure reports
    env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu")
    self.proc = subprocess.Popen(
      [sys.executable, __file__, "--serve"],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
      env=env,
    )

  def stop(self) -> None:
    if self.proc is not None:
      self.proc.kill()
      self.proc.wait()
      self.proc = None
    if self.log is not None:
      self.log.close()
      self.log = None

  def output(self, since: int) -> str:
    assert self.log is not None
    self.log.seek(since)
    return self.log.read()[-8000:]

  def run(self, script: str, case: str, timeout: float) -> None:
    import json
    import select

    if self.proc is None or self.proc.poll() is not None:
      self.stop()
      self.start()
    assert self.proc is not None and self.proc.stdin and self.proc.stdout
    assert self.log is not None
    since = self.log.seek(0, os.SEEK_END)
    request = {"script": os.path.abspath(script), "case": case}
    where = f"case {case} of {os.path.basename(script)}, {NUM_DEVICES} CPU devices"
    try:
      self.proc.stdin.write(json.dumps(request) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass  # it died: the read below reports it
    ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
    line = self.proc.stdout.readline() if ready else ""
    if not line:
      what = f"timed out after {timeout} s" if not ready else "the process died"
      self.proc.kill()
      self.proc.wait()
      report = (
        f"{where}: {what} (exit code {self.proc.returncode}):\n{self.output(since)}"
      )
      self.stop()
      raise AssertionError(report)
    reply = json.loads(line)
    assert reply["ok"], f"{where} failed:\n{reply['error']}\n{self.output(since)}"


_runner = _Runner()
atexit.register(_runner.stop)


def run_case(script: str, case: str, *, timeout: float = 600) -> None:
  """Runs ``_worker_<case>()`` of the test file ``script`` with NUM_DEVICES CPU
  devices, in this test process's 8-device process; fails with the case's
  traceback and output unless it returns."""
  _runner.run(script, case, timeout)


# ---------------------------------------------------------------- the tests


def _in_subprocess(case: str) -> None:
  run_case(__file__, case)


def test_eager_init_puts_each_moment_where_its_param_is():
  _in_subprocess("init_eager")


@needs_explicit_axes
def test_jit_init_on_an_explicit_mesh_puts_each_moment_where_its_param_is():
  _in_subprocess("init_jit_explicit_mesh")


def test_plain_jit_init_on_an_auto_mesh_puts_each_moment_where_its_param_is():
  _in_subprocess("init_jit_auto_mesh")


def test_jit_init_on_an_auto_mesh_with_out_shardings_from_tree_map_params():
  _in_subprocess("init_jit_auto_mesh_out_shardings")


def test_tree_map_params_with_a_decay_mask():
  _in_subprocess("tree_map_params_with_decay_mask")


def test_sharded_update_moves_only_scalars_auto_mesh():
  _in_subprocess("update_auto_mesh")


@needs_explicit_axes
def test_sharded_update_moves_only_scalars_explicit_mesh():
  _in_subprocess("update_explicit_mesh")


@pytest.mark.heavy  # the same checks for the other transformations
def test_sharded_update_moves_only_scalars_every_transform():
  _in_subprocess("update_every_transform")


@pytest.mark.heavy  # Orbax
def test_sharded_checkpoint_resumes_bit_for_bit():
  _in_subprocess("checkpoint_resume_sharded")


def test_collective_detector_is_not_blind():
  _in_subprocess("collective_detector_sees_an_all_gather")


def test_collectives_parser():
  hlo = """
  %all-reduce.2 = (s32[], s32[]) all-reduce(%a, %b), channel_id=2
  %ag = f32[64,24]{1,0} all-gather(f32[16,24]{1,0} %p), dimensions={0}
  %cp-start = (f32[8]{0}, f32[8]{0}) collective-permute-start(%x)
  %add = f32[64,24]{1,0} add(%p, %q)
  """
  assert [(op, n) for op, n, _ in collectives(hlo)] == [
    ("all-reduce", 1),
    ("all-gather", 64 * 24),
    ("collective-permute", 8),
  ]


if __name__ == "__main__":
  if sys.argv[1] == "--serve":
    _serve()
  else:
    _run_worker(sys.argv[1])
