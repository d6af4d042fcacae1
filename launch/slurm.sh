#!/usr/bin/env bash
# Multi-GPU / multi-node training under SLURM, one task (process) per GPU as JAX expects on GPUs:
# jax.distributed.initialize reads SLURM's environment (coordinator, process id) and gives each
# task the one GPU numbered SLURM_LOCALID among its node's GPUs, so every task sees them all.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 launch/slurm.sh CONFIG WORKDIR [extra flags...]
#
# Set --ntasks-per-node equal to the GPUs per node (the defaults below are 8 and 8); the script
# stops if they differ. Set JAXDECA_VENV to a virtualenv with jaxdeca and the CUDA build of jaxlib
# (`pip install -e . "jax[cuda12]==0.10.2"`). WORKDIR must be on a filesystem all nodes share.
#SBATCH --job-name=jaxdeca
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --exclusive
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
config="$1"; workdir="$2"; shift 2
venv="${JAXDECA_VENV:-$PWD/.venv}"

# SLURM_GPUS_ON_NODE: GPUs allocated on this node; SLURM_NTASKS_PER_NODE: as requested.
gpus="${SLURM_GPUS_ON_NODE:-}"; tasks="${SLURM_NTASKS_PER_NODE:-}"
if [ -n "$gpus" ] && [ -n "$tasks" ] && [ "$gpus" != "$tasks" ]; then
  echo "slurm.sh: $tasks tasks but $gpus GPUs per node; JAX runs one task per GPU, so submit with" \
       "--ntasks-per-node=$gpus (or --gpus-per-node=$tasks)" >&2
  exit 2
fi
srun_args=(--kill-on-bad-exit=1
           # No per-task GPU binding: each task sees every GPU of its node and JAX picks its own
           # (SLURM_LOCALID); with --gpus-per-task SLURM would otherwise hide the others.
           --gpu-bind=none)
# Since SLURM 22.05 srun no longer inherits sbatch's --cpus-per-task; pass it on, or give each
# task its share of the node's CPUs (for data loading) instead of srun's default of one.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
elif [ -n "${SLURM_CPUS_ON_NODE:-}" ] && [ -n "$tasks" ] && [ "$SLURM_CPUS_ON_NODE" -ge "$tasks" ]; then
  srun_args+=(--cpus-per-task="$((SLURM_CPUS_ON_NODE / tasks))")
fi
srun "${srun_args[@]}" "$venv/bin/python" -m jaxdeca.main --config="$config" --workdir="$workdir" "$@"
