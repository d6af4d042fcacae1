#!/usr/bin/env bash
# Downloads the wheels that benchmarks/run_all.sh needs on an accelerator machine that cannot reach
# PyPI but whose Python already holds a stock JAX + PyTorch GPU stack, so that one call there gives
# every figure:
#
#   benchmarks/offline_wheels.sh DIR [PYTHON_VERSION]   # where PyPI is reachable (default 3.12)
#   WHEELS=DIR PYTHON=python3 benchmarks/run_all.sh OUT  # on the machine (run_all.sh installs them)
#
# The machine's Python must already have jax and jaxlib for its accelerator (>= 0.11.2 for
# jaxrenderer), flax, optax, orbax-checkpoint, numpy, scipy, opencv-python-headless, pillow,
# imageio, absl-py, etils, pyyaml, tqdm, jaxtyping and typing-extensions; torch for the texture
# benchmark's peer. The benchmarks import no TensorFlow, tfds, grain or clu. DIR gets (about 3 MB):
#   ml-collections  jaxdeca's configs (imported by the inference and train benchmarks)
#   jaxrenderer     render.py's JAX peer (Python >= 3.12, jax >= 0.11.2: runs on the accelerator)
#   DEODR, trimesh  render.py's C++ CPU peer, for the CPU rows of the same run
# Versions are the ones checked with run_all.sh (SMOKE=1) on Python 3.12 with jax 0.11.2 and
# flax 0.12.12. Binary wheels are for x86-64 Linux (manylinux); pip's --no-deps means each
# dependency not listed above must already be on the machine.
set -euo pipefail
dir="${1:?usage: benchmarks/offline_wheels.sh DIR [PYTHON_VERSION]}"
version="${2:-3.12}"
py="${PYTHON:-python3}"
wheels=(ml-collections==1.1.0 jaxrenderer==0.4.0 deodr==0.2.3 trimesh==5.2.0)
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
"$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$version" --implementation cp "${platforms[@]}" -d "$dir" "${wheels[@]}"
ls -l "$dir"
