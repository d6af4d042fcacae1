#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every worker; JAX finds the other
# hosts itself (jax.distributed.initialize auto-detects TPU pods), each host feeds its share of
# the global batch and one jitted step runs over all chips.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra flags...]
#   e.g. launch/tpu_pod.sh deca-v4-32 us-central2-b configs/coarse.py gs://bucket/deca/coarse
#
# WORKDIR must be visible from every host (a GCS bucket or a shared filesystem): orbax writes
# one checkpoint cooperatively from all hosts. The repository is copied to each worker and
# installed with the TPU build of jaxlib.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,12p' "$0"; exit 2; }
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tarball="$(mktemp -d)/jaxdeca.tar.gz"
git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$tpu":~/jaxdeca.tar.gz --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  mkdir -p ~/jaxdeca && tar -xzf ~/jaxdeca.tar.gz -C ~/jaxdeca && cd ~/jaxdeca
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'
  .venv/bin/python -m jaxdeca.main --config=$config --workdir=$workdir $*
"
