#!/usr/bin/env bash
# Every benchmark in one command, at the sizes the issues' targets name for an accelerator, each
# run under its own time limit, so that one call on a machine lent for a few minutes gives all
# the figures. Each run's output goes to OUT/NAME.log; OUT/summary.txt collects, per run, its
# exit status, seconds and the last lines it printed.
#
#   benchmarks/run_all.sh [OUT] [RUNS]     # OUT default: bench-out; RUNS: comma-separated names
#                                          # (an unknown name: exit 2 before anything runs)
#   SMOKE=1 benchmarks/run_all.sh OUT      # tiny sizes: checks that every run starts and prints
#   PYTHON=python3 benchmarks/run_all.sh   # interpreter (default: .venv/bin/python, else python3)
#   WHEELS=DIR benchmarks/run_all.sh OUT   # first installs DIR's wheels (benchmarks/offline_wheels.sh:
#                                          # a machine with no PyPI) into a temporary folder on
#                                          # PYTHONPATH, without their dependencies (relative
#                                          # OUT and DIR are taken from the repository root)
#
# Runs, in this order (name: what, time limit in s; all limits together 540 s, inside a
# 10-minute command):
#   render     renderer fwd and fwd+bwd, 224 px, batch 1/8/32, sphere and demo head     (80)
#   inference  encode+decode faces/s at batch 1 and 256, the reconstruct app, fit        (100)
#   train      coarse and detail train steps at full size, batch 8, float32              (180)
#   train_bf16 the same in bfloat16 at batch 32                                          (120)
#   networks   encode + decode images/s, batch 1/64/256, float32 and bfloat16            (40)
#   texture    grid_sample fwd and fwd+bwd against torch, batch 1/8/32, one round         (20)
# A run that passes its limit is stopped (exit status 124 in the summary) and the next starts.
# flame.py (needs smplx) and data.py (CPU data loading) are not accelerator figures: run them
# by hand. Needs jaxdeca's dependencies; render.py's peers (DEODR, CPU only; jaxrenderer, a JAX
# renderer that runs on the accelerator too) are looked for as its docstring says and skipped
# with a note when absent. jaxrenderer 0.4.0 needs Python >= 3.12 and jax >= 0.11.2: an
# interpreter that has those and its wheel on its path, named by JAXRENDERER_PYTHON. With WHEELS
# (offline_wheels.sh includes both peers), render.py finds them in PYTHON itself when neither
# variable is set and its default /tmp venvs are absent.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-bench-out}"
only="${2:-}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if [ -n "${SMOKE:-}" ]; then
  runs=(
    "render 300 benchmarks/render.py --batches 1 --repeats 1 --size 64"
    "inference 400 benchmarks/inference.py --big-batch 2 --repeats 1 --app-images 1 --app-batch 1 --fit-batch 1 --fit-steps 5"
    "train 400 benchmarks/train.py --size 64 --width 0.25 --blocks 1,1,1,1 --uv 64 --hidden 64 --steps 1"
    "train_bf16 400 benchmarks/train.py --size 64 --width 0.25 --blocks 1,1,1,1 --uv 64 --hidden 64 --steps 1 --dtype bfloat16"
    "networks 300 benchmarks/networks.py --batches 1 --reps 1"
    "texture 120 benchmarks/texture.py --batches 1 --repeats 1 --size 64 --texture 64"
  )
else
  runs=(
    "render 80 benchmarks/render.py --batches 1,8,32 --repeats 5 --peer-budget 15"
    "inference 100 benchmarks/inference.py --big-batch 256 --app-images 8"
    "train 180 benchmarks/train.py --steps 5"
    "train_bf16 120 benchmarks/train.py --batch 32 --dtype bfloat16 --steps 5"
    "networks 40 benchmarks/networks.py --batches 1 64 256"
    "texture 20 benchmarks/texture.py --batches 1 8 32 --repeats 7 --rounds 1"
  )
fi

names=()
for r in "${runs[@]}"; do names+=("${r%% *}"); done
IFS=, read -r -a wanted <<< "$only"
for w in ${wanted[@]+"${wanted[@]}"}; do
  if [[ " ${names[*]} " != *" $w "* ]]; then
    echo "[run_all] unknown run '$w' in '$only'; runs: $(IFS=,; echo "${names[*]}")" >&2
    exit 2
  fi
done

installed=""
if [ -n "${WHEELS:-}" ]; then
  whl=()
  for w in "$WHEELS"/*.whl; do [ -f "$w" ] && whl+=("$w"); done
  if [ "${#whl[@]}" -eq 0 ]; then
    echo "[run_all] WHEELS=$WHEELS holds no .whl files (benchmarks/offline_wheels.sh DIR downloads them)" >&2
    exit 2
  fi
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  if ! "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$site" "${whl[@]}"; then
    echo "[run_all] $py -m pip could not install the wheels in $WHEELS (above); nothing ran" >&2
    exit 2
  fi
  export PYTHONPATH="$site:$PYTHONPATH"
  names=("${whl[@]##*/}")
  installed="wheels from $WHEELS: ${names[*]}"
fi

mkdir -p "$out"
summary="$out/summary.txt"
{ echo "# benchmarks/run_all.sh $(date -u +%FT%TZ) ${SMOKE:+(SMOKE) }python: $py"
  [ -z "$installed" ] || echo "$installed"
  "$py" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1
} > "$summary"
status=0
for r in "${runs[@]}"; do
  read -r name limit script args <<< "$r"
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  echo "[run_all] $name: $script $args (limit ${limit} s)" >&2
  start=$(date +%s)
  # shellcheck disable=SC2086  # args are word-split on purpose
  timeout --kill-after=10 "$limit" "$py" "$script" $args > "$out/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || status=1
  { echo; echo "## $name: exit $rc, $(( $(date +%s) - start )) s: $script $args"; tail -n 25 "$out/$name.log"; } >> "$summary"
done
cat "$summary"
exit "$status"
