#!/usr/bin/env bash
# Runs every benchmark in bench/: the engine comparison (cloudkeep vs restic, and borg when
# installed) plus any other bench/*.py. Not part of `make test` (takes minutes on 1 GiB).
# Arguments are passed to engine_vs_restic.py, e.g. `./bench/run.sh --size 100`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v restic >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq restic
fi
# Borg is optional (no wheels on PyPI for this platform; Debian's package installs in seconds).
if ! command -v borg >/dev/null; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq borgbackup || echo "borg not installed: skipped"
fi

"$PY" bench/engine_vs_restic.py "$@"
for script in bench/*.py; do
    [ "$script" = bench/engine_vs_restic.py ] && continue
    echo "== $script"
    "$PY" "$script"
done
