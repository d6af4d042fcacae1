#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every worker; JAX finds the other
# hosts itself (jax.distributed.initialize auto-detects TPU pods), each host feeds its share of
# the global batch and one jitted step runs over all chips.
#
#   launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [extra flags...]
#   e.g. launch/tpu_pod.sh deca-v4-32 us-central2-b configs/coarse.py gs://bucket/deca/coarse
#
# WORKDIR must be visible from every host (a GCS bucket or a shared filesystem): orbax writes
# one checkpoint cooperatively from all hosts. The working tree as it is (uncommitted edits
# included: git's tracked and untracked, not ignored, files) is copied to each worker and
# installed with the TPU build of jaxlib into ~/jaxdeca/.venv. The workers need Python >= 3.11
# (python3.11, python3.12, or a python3 that new): tpu-ubuntu2204-base has 3.10 only, so install one
# there first or use an image that has one. --dry-run packs the tarball and prints the gcloud commands.

# pack_tree SRC OUT: writes SRC's working tree to the .tar.gz OUT. In a git checkout: the files
# `git ls-files -co --exclude-standard` lists (tracked, and untracked but not ignored) that exist
# on disk; elsewhere (e.g. an unpacked download): all of SRC but .git, .venv, workdir and caches.
pack_tree() {
  local src="$1" out="$2"
  if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (set -o pipefail; cd "$src" && git ls-files -z -co --exclude-standard |
       while IFS= read -r -d '' f; do  # tracked files deleted from the working tree are not shipped
         if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
       done |
       tar --null --no-recursion -T - -czf "$out")
  else
    tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./workdir \
        --exclude=__pycache__ --exclude='*.egg-info' -czf "$out" .
  fi
}

# unpack_tree TARBALL DEST: extracts TARBALL into DEST. The files the previous unpack shipped
# (listed in DEST/.shipped) that TARBALL no longer holds are deleted first, so a file deleted
# locally does not linger on the workers; anything else in DEST (.venv, a local workdir) is kept.
unpack_tree() {
  local tarball="$1" dest="$2" new f
  mkdir -p "$dest"
  new="$(tar -tzf "$tarball" | sed 's|^\./||; /\/$/d; /^\.\{0,1\}$/d' | sort)"
  if [ -f "$dest/.shipped" ]; then
    comm -23 <(sort "$dest/.shipped") <(printf '%s\n' "$new") | while IFS= read -r f; do
      rm -f -- "$dest/$f"
    done
  fi
  tar -xzf "$tarball" -C "$dest"
  printf '%s\n' "$new" > "$dest/.shipped"
}

# What each worker runs: unpacks, picks a Python >= 3.11, (re)makes ~/jaxdeca/.venv, installs, trains.
remote_script() {  # $1: the quoted jaxdeca.main arguments
  cat <<EOF
set -e
$(declare -f unpack_tree)
unpack_tree ~/jaxdeca.tar.gz ~/jaxdeca && cd ~/jaxdeca
py=
for c in python3.11 python3.12 python3; do
  if command -v "\$c" >/dev/null 2>&1 && "\$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then py="\$c"; break; fi
done
if [ -z "\$py" ]; then
  echo "\$(hostname): jaxdeca needs Python >= 3.11; this TPU VM has \$(python3 -V 2>&1). Install python3.11 and python3.11-venv on every worker (Ubuntu: the deadsnakes PPA), or create the TPU VM from an image whose python3 is 3.11 or newer." >&2
  exit 1
fi
# a venv without pip (made before python3.X-venv was installed: Debian's venv then stops after
# making bin/python) is made again, as one of an older Python is
{ .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' &&
  .venv/bin/python -m pip --version; } >/dev/null 2>&1 || "\$py" -m venv --clear .venv
.venv/bin/python -m pip install -q -e . 'jax[tpu]==0.10.2'
.venv/bin/python -m jaxdeca.main $1
EOF
}

main() {
  local dry_run=0
  if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
  [ $# -ge 4 ] || { sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 2; }
  local tpu="$1" zone="$2" config="$3" workdir="$4"; shift 4
  local root tarball args
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tmp="$(mktemp -d)"; tarball="$tmp/jaxdeca.tar.gz"  # tmp is global: the EXIT trap reads it after main
  pack_tree "$root" "$tarball"
  args="$(printf '%q ' --config="$config" --workdir="$workdir" "$@")"
  local run=(gcloud)
  if [ "$dry_run" = 1 ]; then
    run=(echo gcloud)
    echo "# packed $tarball ($(tar -tzf "$tarball" | wc -l) files)"
  else
    trap 'rm -rf "$tmp"' EXIT
  fi
  "${run[@]}" compute tpus tpu-vm scp "$tarball" "$tpu":~/jaxdeca.tar.gz --zone="$zone" --worker=all
  "${run[@]}" compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$(remote_script "$args")"
}

# Sourcing the file (e.g. to call pack_tree alone) defines the functions and runs nothing.
if ! (return 0 2>/dev/null); then  # `return` works only in a sourced file
  set -euo pipefail
  main "$@"
fi
