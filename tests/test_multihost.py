"""optaxtra on two hosts: the same training, sharded across processes.

examples/multihost.py trains a small MLP with ``adamax_clipped`` (a warmup +
cosine schedule, decoupled decay, a path mask sparing the biases), its params
and optimizer state sharded FSDP-style over one global mesh (kernels split,
biases replicated), each process building only its rows of every batch. Here it
runs as two processes of 4 CPU devices each, joined by
``jax.distributed.initialize`` over loopback with gloo collectives
(tests/_multihost_worker.py is one such process), and as one process of 8
devices, the reference. The checks:

* two processes compute what one does, bit for bit when the reductions are
  ordered the same (the 1-process reference also goes through gloo), and within
  rounding of the order otherwise (XLA's in-process collectives);
* ``tx.init`` under ``jax.jit`` gives every state leaf its param's sharding,
  across processes, and each process holds the same pieces of a moment as of
  its param;
* the compiled update moves no parameter-sized data between devices (let alone
  processes): its only collectives are scalar all-reduces (the counts behind
  ``clip_fraction``);
* ``optaxtra.inspect`` inside the jitted step gives every process the same
  values;
* an Orbax checkpoint written by both processes (each its own shards) resumes
  bit for bit in a new 2-process run, and on 1 process of 8 devices.

Each process writes what it holds to files (tests/_multihost_worker.py); the
arrays are assembled here from the pieces, so no process gathers another's
data. Every child has a hard timeout, a free port chosen at run time, and is
killed whatever happens; its output is shown when it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _deps import need
from test_sharding import collectives, xla_flags

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_multihost_worker.py")
NUM_DEVICES = 8
STEPS = 8
SAVE_AT = 4
TIMEOUT_S = 300  # for each group of children, whatever they do

# jax 0.4.30 and 0.4.31 (checked) cannot run collectives across processes on a
# CPU process with more than one device: creating the gloo context times out
# waiting for a key ("GetKeyValue() timed out with key: cpu:gloo/0,1,2,3,
# 131072,..."). jax 0.4.33 runs them, this whole file passes there (checked;
# 0.4.32 was not tried).
MIN_JAX = (0, 4, 33)
_JAX = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)\.(\d+)", jax.__version__).groups())
pytestmark = [
  pytest.mark.skipif(
    _JAX < MIN_JAX,
    reason=(
      f"jax {jax.__version__}'s CPU gloo collectives cannot span processes of "
      "several devices each (the gloo context times out); multi-process CPU "
      f"runs need jax >= {'.'.join(map(str, MIN_JAX))}"
    ),
  ),
  # Five JAX processes training and compiling: about 25 s of CPU, too much for
  # the quick loop, which checks the single-process sharding (test_sharding.py).
  pytest.mark.heavy,
]


# Orbax is optional (the core suite runs without it): the 2-process training
# run writes its checkpoint only where it is installed.
def _installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:  # its parent package is missing
    return False


HAS_ORBAX = _installed("orbax.checkpoint")


# ---------------------------------------------------------------- the runs


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The port was free when chosen; another program may take it before the
# coordinator binds it: then the run is tried once more, with a new port.
_PORT_TAKEN = re.compile(
  r"(?i)address already in use|failed to add port|failed to bind"
)


class _Group:
  """The processes of one run of the worker; every one is ended by ``stop``."""

  def __init__(self, run_dir: Path, num_processes: int, args: list[str], gloo: bool):
    self.dir, self.num_processes, self.args, self.gloo = (
      run_dir,
      num_processes,
      args,
      gloo,
    )
    self.env = dict(
      os.environ,
      XLA_FLAGS=xla_flags(NUM_DEVICES // num_processes),
      JAX_PLATFORMS="cpu",
      PYTHONUNBUFFERED="1",
      PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
      ),
    )
    self.procs: list[subprocess.Popen] = []
    self.attempts = 0

  def start(self) -> None:
    self.attempts += 1
    shutil.rmtree(self.dir, ignore_errors=True)
    self.dir.mkdir(parents=True)
    address = ["--coordinator", f"127.0.0.1:{_free_port()}"] if self.gloo else []
    self.started = time.monotonic()
    self.procs = []
    for i in range(self.num_processes):
      cmd = [sys.executable, str(WORKER), str(self.dir), *self.args, *address]
      cmd += ["--num-processes", str(self.num_processes), "--process-id", str(i)]
      with open(self.dir / f"log.p{i}.txt", "w") as log:  # the child keeps it
        self.procs.append(
          subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
          )
        )

  def check(self) -> str | None:
    """None while running, else "ok" or what went wrong."""
    codes = [p.poll() for p in self.procs]
    if all(c == 0 for c in codes):
      self.seconds = time.monotonic() - self.started
      return "ok"
    if any(c not in (None, 0) for c in codes):
      return "a process failed (the others were then killed)"
    if time.monotonic() - self.started > TIMEOUT_S:
      return f"timed out after {TIMEOUT_S} s (all killed)"
    return None

  def stop(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    for p in self.procs:
      p.wait()

  def logs(self) -> list[str]:
    return [(self.dir / f"log.p{i}.txt").read_text() for i in range(len(self.procs))]

  def report(self, failure: str) -> str:
    parts = [f"{self.num_processes}-process run {' '.join(self.args)}: {failure}"]
    for i, (p, text) in enumerate(zip(self.procs, self.logs(), strict=True)):
      lines = [line for line in text.splitlines() if not line.startswith("[Gloo]")]
      tail = "\n".join(lines)[-6000:]
      parts.append(f"--- process {i} (exit code {p.returncode}):\n{tail}")
    return "\n".join(parts)


def _run_groups(groups: dict[str, _Group]) -> dict[str, str]:
  """Runs the groups at once (their processes wait on one another more than
  they compute); returns the failure report of each that failed."""
  failures: dict[str, str] = {}
  try:
    for group in groups.values():
      group.start()
    pending = dict(groups)
    while pending:
      time.sleep(0.1)
      for name, group in list(pending.items()):
        state = group.check()
        if state is None:
          continue
        group.stop()
        if state != "ok" and group.attempts == 1 and group.gloo:
          if any(_PORT_TAKEN.search(text) for text in group.logs()):
            group.start()
            continue
        if state != "ok":
          failures[name] = group.report(state)
        del pending[name]
  finally:
    for group in groups.values():
      group.stop()
  return failures


class Run:
  """What the processes of one run wrote."""

  def __init__(self, group: _Group):
    self.dir, self.num_processes = group.dir, group.num_processes
    self.seconds = group.seconds

  def result(self, i: int) -> dict:
    return json.loads((self.dir / f"result.p{i}.json").read_text())

  def history(self, i: int) -> dict[str, np.ndarray]:
    with np.load(self.dir / f"history.p{i}.npz") as z:
      return dict(z)

  def pieces(self, kind: str, i: int) -> dict[str, tuple[tuple, list[tuple]]]:
    """``name -> (shape, [(index, values)])`` of what process ``i`` wrote."""
    out: dict[str, tuple[tuple, list[tuple]]] = {}
    with np.load(self.dir / f"{kind}.p{i}.npz") as z:
      for key in z.files:
        name, _, rest = key.partition("@")
        if rest == "shape":
          out[name] = (tuple(int(n) for n in z[key]), [])
      for key in z.files:
        name, _, rest = key.partition("@")
        if rest != "shape" and not rest.endswith("@index"):
          index = tuple(slice(int(a), int(b)) for a, b in z[f"{key}@index"])
          out[name][1].append((index, z[key]))
    return out

  def arrays(self, kind: str) -> tuple[dict[str, np.ndarray], dict[str, set]]:
    """The whole arrays, assembled from every process's pieces, and for each
    the processes that wrote some of it. Each entry must be written once."""
    arrays, counts, writers = {}, {}, {}
    for i in range(self.num_processes):
      for name, (shape, pieces) in self.pieces(kind, i).items():
        counts.setdefault(name, np.zeros(shape, np.int64))
        for index, values in pieces:
          arrays.setdefault(name, np.zeros(shape, values.dtype))[index] = values
          counts[name][index] += 1
          writers.setdefault(name, set()).add(i)
    for name, count in counts.items():
      assert (count == 1).all(), f"{kind} {name}: entries written {count}"
    return arrays, writers


# name: (processes, worker arguments, through jax.distributed and gloo). The
# runs of one phase run at the same time; the second phase resumes from the
# checkpoint of the first phase's "two".
_TRAIN = ["--phase", "train", "--steps", str(STEPS)]
_CKPT = ["--save-at", str(SAVE_AT), "--checkpoint", "{two}/ckpt"] if HAS_ORBAX else []
_RESUME = ["--phase", "resume", "--steps", str(STEPS), "--checkpoint", "{two}/ckpt"]
PHASES = [
  {
    "two": (2, [*_TRAIN, "--hlo", *_CKPT], True),
    "one": (1, _TRAIN, True),  # gloo too: reductions ordered as for "two"
    "one_local": (1, _TRAIN, False),  # XLA's in-process collectives
  },
  {
    "two_resumed": (2, _RESUME, True),
    "one_resumed": (1, _RESUME, True),
  },
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``runs(name)``: that run, its phase started the first time it is asked for."""
  base = tmp_path_factory.mktemp("multihost")
  done: dict[str, Run | str] = {}

  def get(name: str) -> Run:
    if name not in done:
      phase = next(p for p in PHASES if name in p)
      if phase is not PHASES[0]:
        get("two")  # its checkpoint; raises if it failed
      groups = {
        n: _Group(base / n, k, [a.replace("{two}", str(base / "two")) for a in args], g)
        for n, (k, args, g) in phase.items()
      }
      failures = _run_groups(groups)
      for n, group in groups.items():
        done[n] = failures[n] if n in failures else Run(group)
    if isinstance(done[name], str):
      raise AssertionError(done[name])
    return done[name]

  return get


# ---------------------------------------------------------------- comparing


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
  """The largest distance between ``a`` and ``b`` in float32 steps."""
  ia, ib = (np.asarray(x, np.float32).view(np.int32).astype(np.int64) for x in (a, b))
  ia, ib = (np.where(i < 0, -(i & 0x7FFFFFFF), i) for i in (ia, ib))
  return int(np.abs(ia - ib).max(initial=0))


def _assert_identical(a: dict, b: dict, what: str) -> None:
  assert sorted(a) == sorted(b), what
  for name in a:
    assert a[name].dtype == b[name].dtype, (what, name)
    assert a[name].shape == b[name].shape, (what, name)
    assert a[name].tobytes() == b[name].tobytes(), (
      f"{what} {name}: differs by up to {_ulps(a[name], b[name])} float32 steps, "
      f"{np.abs(a[name].astype(np.float64) - b[name]).max()}"
    )


# ---------------------------------------------------------------- the tests


def test_each_process_holds_its_devices_and_its_rows(runs):
  for i in (0, 1):
    result = runs("two").result(i)
    assert result["process_index"] == i and result["process_count"] == 2
    assert result["device_count"] == 8 and result["local_device_count"] == 4
    assert result["local_rows"] == [32 * i, 32 * (i + 1)]
  assert runs("one").result(0)["local_rows"] == [0, 64]


def test_two_processes_train_like_one_bit_for_bit(runs):
  # With the reductions ordered the same (the 1-process reference also sums
  # across its devices through gloo), splitting the run over two processes
  # changes nothing: params, state, losses and inspected values, every bit.
  two, one = runs("two"), runs("one")
  _assert_identical(two.arrays("final")[0], one.arrays("final")[0], "final")
  _assert_identical(two.history(0), one.history(0), "history")
  history = one.history(0)
  np.testing.assert_array_equal(history["info.count"], np.arange(1, STEPS + 1))
  assert np.isfinite(history["loss"]).all()
  # The schedule ran: warmup from 0, then the cosine decay.
  lr = history["info.learning_rate"]
  assert lr[0] == 0 and lr.max() > lr[-1] > 0, lr


def test_two_processes_train_like_one_within_rounding_otherwise(runs):
  # XLA's in-process collectives add the 8 devices' partial sums (the loss
  # mean, the gradients' batch sums) in another order than gloo does. Each such
  # sum then moves by up to about 8 eps (float32 eps = 1.2e-7) of the sum of
  # its terms' magnitudes, which here is at most 1.5 times the leaf's largest
  # gradient (measured: the devices' partial sums hardly cancel): ~1.5e-6 of
  # the gradients' scale per step. Bounds, relative to each leaf's largest
  # entry (its terms cancel, so not entrywise):
  # * params and loss, 1e-5: a step moves a param by lr * mu / nu (at most lr)
  #   and rounds p + u (eps |p|): over 8 steps about 8 * (eps + lr * 1.5e-6),
  #   ~1e-6 of the params' scale. Seen: 1.9e-7.
  # * moments (mu averages the gradients, nu is their running max), 1e-3: a
  #   gradient moves with the params it is taken at, and the gradients' scale
  #   (~1e-3 here) is ~1e3 times below the params' (~1), so the params' 1e-6
  #   becomes ~1e-3 of the moments' scale. Seen: 1.1e-5.
  # * clip_fraction: a gradient entry within rounding of its clip threshold
  #   could flip; two entries' share is allowed. Seen: equal.
  # * counts and schedule values (learning rate, decay rate): bit for bit.
  two, local = runs("two"), runs("one_local")
  a, b = two.arrays("final")[0], local.arrays("final")[0]
  a.update({f"history.{k}": v for k, v in two.history(0).items()})
  b.update({f"history.{k}": v for k, v in local.history(0).items()})
  assert sorted(a) == sorted(b)
  num_entries = sum(v.size for k, v in a.items() if k.startswith("params."))
  for name in a:
    x, y = a[name].astype(np.float64), b[name].astype(np.float64)
    diff = np.abs(x - y).max(initial=0.0)
    if name.endswith("clip_fraction"):
      assert diff <= 2 / num_entries, (name, x, y)
    elif name.startswith("history.info.") or a[name].ndim == 0:
      assert a[name].tobytes() == b[name].tobytes(), name  # count, rates
    else:
      moment = name.startswith(("opt_state.mu.", "opt_state.nu."))
      bound = (1e-3 if moment else 1e-5) * np.abs(y).max(initial=0.0)
      assert diff <= bound, f"{name}: differs by {diff}, more than {bound}"


def test_jit_init_puts_each_state_leaf_where_its_param_is(runs):
  two = runs("two")
  for i in (0, 1):
    result = two.result(i)
    # A plain jax.jit(tx.init): each moment gets its param's sharding, by
    # propagation; with out_shardings from the params every leaf is pinned
    # (scalars replicated); after the training steps nothing has moved.
    assert result["init_plain_jit_problems"] == [], result
    assert result["init_out_shardings_problems"] == [], result
    assert result["final_problems"] == [], result
  # Across processes: each holds the same pieces of a moment as of its param,
  # a kernel's pieces are spread over both processes and a bias is whole on
  # each (written once, by process 0).
  _, writers = two.arrays("final")
  for i in (0, 1):
    pieces = two.pieces("final", i)
    names = [n[len("params.") :] for n in pieces if n.startswith("params.")]
    assert len(names) == 6, names
    for name in names:
      where = [index for index, _ in pieces[f"params.{name}"][1]]
      for moment in ("mu", "nu"):
        assert [ix for ix, _ in pieces[f"opt_state.{moment}.{name}"][1]] == where
        expected = {0, 1} if name.endswith("kernel") else {0}
        assert writers[f"opt_state.{moment}.{name}"] == expected, name
        assert writers[f"params.{name}"] == expected, name


def test_update_moves_no_parameter_data_between_processes(runs):
  for i in (0, 1):
    found = collectives((runs("two").dir / f"update.p{i}.hlo").read_text())
    for op, size, line in found:
      assert op == "all-reduce" and size == 1, f"the update moves data: {line}"
    # The clip share: sums of counts over all 8 devices, both processes' (one
    # all-reduce of a tuple of scalars, or one each on older XLA).
    assert found and {op for op, _, _ in found} == {"all-reduce"}, found


def test_inspect_in_the_step_is_the_same_on_every_process(runs):
  two = runs("two")
  h0, h1 = two.history(0), two.history(1)
  info = [k for k in h0 if k.startswith("info.")]
  assert {"info.learning_rate", "info.decay_rate", "info.clip_fraction"} <= set(info)
  _assert_identical(h0, h1, "process 0 vs process 1")
  assert two.result(0)["replicated_info"] and two.result(1)["replicated_info"]
  # Inspected inside the step: the decay applied follows the schedule.
  np.testing.assert_allclose(
    h0["info.decay_rate"], 1e-2 * h0["info.learning_rate"], rtol=1e-6
  )


@pytest.mark.heavy  # Orbax
def test_checkpoint_by_two_processes_resumes_on_two_and_on_one(runs):
  need("orbax.checkpoint")
  two = runs("two")
  saved, saved_writers = two.arrays("saved")
  # Both processes wrote their own shards of the kernels.
  assert saved_writers["params.dense_1.kernel"] == {0, 1}
  straight = two.arrays("final")[0]
  tail = {k: v[SAVE_AT:] for k, v in two.history(0).items()}
  for name in ("two_resumed", "one_resumed"):
    run = runs(name)
    for i in range(run.num_processes):
      result = run.result(i)
      assert result["restored_problems"] == [], result
      assert result["first_step"] == SAVE_AT
      _assert_identical(run.history(i), tail, f"{name} history")
    _assert_identical(run.arrays("restored")[0], saved, f"{name} restored")
    _assert_identical(run.arrays("final")[0], straight, f"{name} final")
