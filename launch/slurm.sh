#!/usr/bin/env bash
# Multi-GPU / multi-node training under SLURM: one task per node, every GPU of the node used by
# that task; jax.distributed.initialize picks up SLURM's environment (coordinator, process id).
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm.sh CONFIG WORKDIR [extra flags...]
#
# Set JAXDECA_VENV to a virtualenv with jaxdeca and the CUDA build of jaxlib installed
# (`pip install -e . "jax[cuda12]==0.10.2"`). WORKDIR must be on a filesystem all nodes share.
#SBATCH --job-name=jaxdeca
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
config="$1"; workdir="$2"; shift 2
venv="${JAXDECA_VENV:-$PWD/.venv}"
srun --kill-on-bad-exit=1 "$venv/bin/python" -m jaxdeca.main --config="$config" --workdir="$workdir" "$@"
