"""Device mesh and data parallelism over all devices of all processes.

One mesh axis, `data`: every device of every process holds a slice of the batch; parameters
and optimiser state are replicated. Each process loads only its own share of a global batch
(`local_batch = global_batch / process_count`) and `shard_batch` assembles the global,
sharded `jax.Array` from the per-process pieces, so one jitted step runs unchanged on one CPU,
eight GPUs or a TPU pod.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdeca.train import paths

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
    """Calls `jax.distributed.initialize` when running multi-process.

    Explicit arguments (from the config or launcher flags) win. Otherwise JAX's own detection
    is used (initialize() without arguments) for
      - a task of `srun` with several tasks (SLURM_NTASKS > 1 and srun's step variables, which
        JAX reads: launch/slurm.sh). SLURM_NTASKS > 1 without them, a process the batch script
        or an allocation's shell started itself, is a ConfigError: it is one process of the job,
        and JAX would either find no cluster or wait for tasks that never start;
      - a Cloud TPU VM (launch/tpu_pod.sh): a GCE VM names its pod's workers in its metadata,
        a GKE pod in TPU_WORKER_HOSTNAMES; one host starts it too (one process), as JAX
        recommends on TPU.
    Anything else (one SLURM task with all its node's GPUs, a workstation) is left alone.
    """
    if coordinator_address or num_processes:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif _slurm_tasks() > 1:
        if "SLURM_STEP_NODELIST" not in os.environ or "SLURM_PROCID" not in os.environ:
            raise paths.ConfigError(
                f"SLURM_NTASKS={os.environ['SLURM_NTASKS']} but this process was not started by srun (no "
                "SLURM_STEP_NODELIST): start one task per GPU with srun (launch/slurm.sh), run one process "
                "with srun --ntasks=1, or set config.coordinator_address, num_processes and process_id")
        jax.distributed.initialize()
    elif _on_cloud_tpu_cluster():
        jax.distributed.initialize()
    else:
        return
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


class StopSignal:
    """SIGTERM (what scancel, a SLURM time limit and a TPU VM's maintenance send) as a request to
    stop at a step boundary, so that the loop can checkpoint the step it reached first.

    `with StopSignal() as stop:` ... `stop.requested(step)`, called by every process at every
    step. One process: a handler sets a flag while the block runs (from the main thread only;
    elsewhere SIGTERM keeps its action). Several processes: jax.distributed's preemption service
    already catches SIGTERM on each; they agree on the step to stop at
    (multihost_utils.reached_preemption_sync_point), so all of them save the same one."""

    def __init__(self):
        self.flag, self._old = False, None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _handler(self, signum, frame):
        self.flag = True

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # started with jax_enable_preemption_service off: SIGTERM ends the process
                return False
        return self.flag


def _slurm_tasks() -> int:
    """SLURM_NTASKS (tasks of the job, or of the srun step inside one); 1 when unset or unreadable."""
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1


def _on_cloud_tpu_cluster() -> bool:
    """Whether jax.distributed.initialize() would find a Cloud TPU cluster (GCE: the VM's
    metadata; GKE: TPU_WORKER_HOSTNAMES). Off a TPU VM neither asks the network. A JAX without
    these (private) classes falls back to TPU_WORKER_HOSTNAMES naming several hosts."""
    try:
        from jax._src import clusters
        kinds = (clusters.GkeTpuCluster, clusters.GceTpuCluster)
    except (ImportError, AttributeError):
        return os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    return any(k.is_env_present() for k in kinds)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes), in
    jax.devices() order, with Auto axes (GSPMD).

    Not jax.make_mesh / mesh_utils.create_device_mesh: their topology order (TPU ICI rings)
    matters for collectives over a sub-group of a multi-axis mesh, or for ring permutes; this
    mesh's one collective is the all-reduce of the gradients over all devices, whose group is
    the same whatever the order (the TPU runtime and NCCL pick its route from the physical
    topology). jax.make_mesh would also make the axis Explicit, refuse multi-slice TPUs, and
    may interleave the processes' devices, which would scatter a process's local batch (whole
    identity groups, `shard_batch`) over the global one."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of a global batch; refuses sizes that do not split evenly."""
    n_dev = mesh.devices.size
    if global_batch_size % n_dev:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {n_dev} devices of the mesh")
    return global_batch_size // jax.process_count()


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Per-process numpy batch (leading axis = local batch) -> global sharded jax.Arrays."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (params, optimiser state) on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)
