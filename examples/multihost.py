"""Training on many hosts: one program, launched once per host.

A small MLP is trained with :func:`optaxtra.adamax_clipped` (a warmup + cosine
schedule, decoupled weight decay that spares the biases) on one global mesh
of every host's devices. The params and the optimizer state are sharded
FSDP-style over that mesh, across hosts (kernels split over the ``fsdp`` axis,
biases replicated); each host builds only its own rows of every batch
(:func:`jax.make_array_from_process_local_data`); every host runs the same
jitted step, and :func:`optaxtra.inspect` inside it gives every host the same
values. With ``--checkpoint DIR`` the run ends with an Orbax checkpoint in which
each host writes its own shards; ``--resume DIR`` continues from one, on any
number of hosts.

On one machine, two processes over loopback with 4 CPU devices each::

  export XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu
  python examples/multihost.py --coordinator 127.0.0.1:12345 \\
      --num-processes 2 --process-id 0 &
  python examples/multihost.py --coordinator 127.0.0.1:12345 \\
      --num-processes 2 --process-id 1

On a cluster, launch it once per host with no arguments:
:func:`jax.distributed.initialize` reads the coordinator, the number of
processes and this process's id from the environment (SLURM, Cloud TPU, ...),
e.g. ``srun --nodes=2 --ntasks-per-node=1 python examples/multihost.py``.
``--num-processes 1`` runs the same program in one process, on its local
devices (add ``--coordinator`` to run it through :mod:`jax.distributed` all the
same: on CPU its collectives then go through gloo, as with many processes).

The test suite runs this program on 2 processes of 4 CPU devices and on 1
process of 8 (tests/test_multihost.py).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optaxtra
from optaxtra import masks, schedules

SIZES = (32, 64, 64, 8)  # features, two hidden layers, classes
BATCH_SIZE = 64  # the global batch, split over every device
AXIS = "fsdp"  # the mesh's one axis: batch rows and parameters split over it

# Where each parameter lives: large kernels split over the mesh (along either
# dimension), biases replicated on every device of every host.
PARAM_SPECS = {
  "dense_0": {"kernel": P(AXIS, None), "bias": P()},
  "dense_1": {"kernel": P(None, AXIS), "bias": P()},
  "dense_2": {"kernel": P(AXIS, None), "bias": P()},
}
BATCH_SPECS = (P(AXIS, None), P(AXIS))  # x rows, y rows


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins the other processes; call before any other JAX call.

  With no arguments :func:`jax.distributed.initialize` reads them from the
  environment (SLURM, Cloud TPU, ...). ``num_processes=1`` without a
  coordinator starts nothing: the process runs alone, on its local devices.
  """
  if num_processes == 1 and coordinator is None:
    return
  # Cross-process collectives on CPU go through gloo: the default in recent
  # jax, while older versions (0.5 and before) have none unless asked (and,
  # asked without jax.distributed, fail to start the CPU backend). GPUs and
  # TPUs ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator,
    num_processes=num_processes,
    process_id=process_id,
  )


def make_mesh() -> Mesh:
  """One mesh over every device of every host, ordered by process."""
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def param_shardings(mesh: Mesh) -> Any:
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec),
    PARAM_SPECS,
    is_leaf=lambda x: isinstance(x, P),
  )


def init_params(seed: int = 0) -> dict:
  """The initial params as host (NumPy) arrays, the same on every host."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (m, n) in enumerate(itertools.pairwise(SIZES)):
    params[f"dense_{i}"] = {
      "kernel": (rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(np.float32),
      "bias": (rng.standard_normal(n) * 0.1).astype(np.float32),
    }
  return params


def make_optimizer(num_steps: int) -> optax.GradientTransformationExtraArgs:
  """Clipped Adamax, warmup + cosine, decoupled decay on the kernels only."""
  lr = schedules.linear_warmup(schedules.cosine_decay(3e-2, num_steps), 2)
  return optaxtra.adamax_clipped(
    lr,
    weight_decay=1e-2,
    weight_decay_mask=masks.path_mask(exclude=["bias"]),
    track_clip_fraction=True,  # inspect reports the share clipped (a psum)
  )


def state_shardings(tx: optax.GradientTransformation, params: Any) -> Any:
  """Each moment where its param is, every scalar replicated."""
  mesh = jax.tree.leaves(params)[0].sharding.mesh
  return optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    jax.eval_shape(tx.init, params),
    jax.tree.map(lambda p: p.sharding, params),
    transform_non_params=lambda _: NamedSharding(mesh, P()),
  )


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  *hidden, last = params.values()
  for layer in hidden:
    x = jnp.tanh(x @ layer["kernel"] + layer["bias"])
  logits = x @ last["kernel"] + last["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# The data: row r of step t's batch is a function of (t, r) alone, so that each
# host can build just its rows, as it would read just its files of a dataset.
_TEACHER = np.random.default_rng(1234).standard_normal((SIZES[0], SIZES[-1]))


def rows(step: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows ``start:stop`` of step ``step``'s global batch, on the host."""
  x = np.stack(
    [
      np.random.default_rng([step, r]).standard_normal(SIZES[0])
      for r in range(start, stop)
    ]
  ).astype(np.float32)
  y = np.argmax(x @ _TEACHER, axis=-1).astype(np.int32)
  return x, y


def local_rows(mesh: Mesh) -> tuple[int, int]:
  """The batch rows held by this process's devices (a contiguous range)."""
  sharding = NamedSharding(mesh, BATCH_SPECS[0])
  index = sharding.addressable_devices_indices_map((BATCH_SIZE, SIZES[0]))
  starts = [idx[0].start or 0 for idx in index.values()]
  stops = [BATCH_SIZE if idx[0].stop is None else idx[0].stop for idx in index.values()]
  return min(starts), max(stops)


def global_batch(step: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
  """Step ``step``'s batch as global arrays, each host giving only its rows."""
  start, stop = local_rows(mesh)
  x, y = rows(step, start, stop)
  return tuple(
    jax.make_array_from_process_local_data(
      NamedSharding(mesh, spec), local, (BATCH_SIZE, *local.shape[1:])
    )
    for spec, local in zip(BATCH_SPECS, (x, y), strict=True)
  )


def make_train_step(tx: optax.GradientTransformation, params: Any, opt_state: Any):
  """The jitted step; params and state keep their shardings, scalars replicated."""
  mesh = jax.tree.leaves(params)[0].sharding.mesh
  replicated = NamedSharding(mesh, P())
  shardings = (
    jax.tree.map(lambda p: p.sharding, params),
    jax.tree.map(lambda s: s.sharding, opt_state),
  )

  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    # What this update used, read inside the step: replicated scalars, the
    # same on every host.
    info = optaxtra.inspect(opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, info

  return jax.jit(
    train_step,
    out_shardings=(*shardings, replicated, replicated),
    donate_argnums=(0, 1),
  )


def init(tx: optax.GradientTransformation, mesh: Mesh, seed: int = 0):
  """Params and optimizer state, sharded: each device gets only its pieces.

  Every host computes the (small) initial params and puts on its devices the
  pieces they hold. A model too large for one host is better created sharded,
  as the state is here: ``jax.jit(init_fn, out_shardings=param_shardings(mesh))``.
  """
  host = init_params(seed)
  params = jax.tree.map(
    lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
    host,
    param_shardings(mesh),
  )
  opt_state = jax.jit(tx.init, out_shardings=state_shardings(tx, params))(params)
  return params, opt_state


def save(path: str, params: Any, opt_state: Any) -> None:
  """An Orbax checkpoint; every host calls it and writes its own shards."""
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {"params": params, "opt_state": opt_state})
    ckptr.wait_until_finished()


def restore(path: str, tx: optax.GradientTransformation, mesh: Mesh):
  """Params and state from ``path``, placed on ``mesh`` (any number of hosts)."""
  import orbax.checkpoint as ocp

  p_shardings = param_shardings(mesh)
  params = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    init_params(),  # for the shapes and dtypes
    p_shardings,
  )
  # The target: the state's own types (NamedTuples), shapes, and placements.
  opt_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    jax.eval_shape(tx.init, params),
    state_shardings(tx, params),
  )
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path, {"params": params, "opt_state": opt_state})
  return restored["params"], restored["opt_state"]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--coordinator", help="host:port of process 0's coordinator")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  parser.add_argument(
    "--steps", type=int, default=50, help="in all (the schedule's length)"
  )
  parser.add_argument("--checkpoint", help="write an Orbax checkpoint here at the end")
  parser.add_argument(
    "--resume", help="continue from this Orbax checkpoint (same --steps)"
  )
  args = parser.parse_args(argv)

  initialize(args.coordinator, args.num_processes, args.process_id)
  mesh = make_mesh()
  tx = make_optimizer(args.steps)
  if args.resume:
    params, opt_state = restore(args.resume, tx, mesh)
  else:
    params, opt_state = init(tx, mesh)
  first = int(opt_state.count)  # a replicated scalar: readable on every host
  step_fn = make_train_step(tx, params, opt_state)
  me = jax.process_index()
  if me == 0:
    print(
      f"{jax.process_count()} process(es), {jax.device_count()} devices "
      f"({jax.local_device_count()} here), batch rows {local_rows(mesh)} here"
    )
  for step in range(first, args.steps):
    x, y = global_batch(step, mesh)
    params, opt_state, loss, info = step_fn(params, opt_state, x, y)
    if me == 0 and (step % 5 == 0 or step == args.steps - 1):
      print(
        f"step {step:3d}  loss {float(loss):.4f}  "
        f"lr {float(info['learning_rate']):.2e}  "
        f"decay_rate {float(info['decay_rate']):.2e}  "
        f"clipped {float(info['clip_fraction']):.3f}"
      )
  if args.checkpoint:
    save(args.checkpoint, params, opt_state)
    if me == 0:
      print(f"checkpoint written to {args.checkpoint}")


if __name__ == "__main__":
  main(sys.argv[1:])
