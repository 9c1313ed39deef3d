#!/usr/bin/env bash
# Creates .venv and installs cloudkeep into it. With --test, also installs everything the tests
# need: the test extras, Azurite (npm, into node_modules) and PostgreSQL (Debian packages) when absent.
# The Debian bullseye root the old-machine tests enter is built by the tests themselves (debootstrap,
# ~75 s once) and cached in ~/.cache/cloudkeep-test/roots (tests/support/oldroot.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

if [ "${1:-}" != "--test" ]; then
    .venv/bin/python -m pip install --quiet -e ".[server]"
    exit 0
fi

.venv/bin/python -m pip install --quiet -e '.[test]'

# mypy 2 cannot target Python 3.9; `make lint` checks the machine side for 3.9 with a mypy 1.x kept
# in its own venv outside the repository.
MYPY39_VENV="$HOME/.cache/cloudkeep-tools/mypy39"
if [ ! -x "$MYPY39_VENV/bin/mypy" ]; then
    .venv/bin/python -m venv "$MYPY39_VENV"
    "$MYPY39_VENV/bin/python" -m pip install --quiet 'mypy>=1.10,<2'
fi

if [ ! -x node_modules/.bin/azurite ]; then
    npm install --no-audit --no-fund --loglevel=error
fi

need_apt=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)   # lints the installer scripts
command -v dash >/dev/null || need_apt+=(dash)                   # install.sh must run under a POSIX sh
command -v debootstrap >/dev/null || need_apt+=(debootstrap)     # builds the old Debian test roots
command -v chromium >/dev/null || need_apt+=(chromium)           # the API docs page, drawn headless
command -v pwsh >/dev/null || true   # PowerShell is not in Debian; Windows scripts get a static check.
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
