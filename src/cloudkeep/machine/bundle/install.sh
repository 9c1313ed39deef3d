#!/bin/sh
# cloudkeep installer for Linux (POSIX sh). Run from an extracted bundle:
#
#   sh install.sh --config machine.json      install or upgrade in place, start the services
#   sh install.sh --config machine.json --no-start   install only (the server registers the agent key
#                                            first, then runs: sh $ROOT/opt/cloudkeep/install.sh --start)
#   sh install.sh --uninstall                stop the services, remove code, config, units and state
#                                            (logs stay in /var/log/cloudkeep)
#   sh install.sh --start                    start (or restart after an upgrade) the services
#   sh install.sh --stop                     stop the services (non-systemd fallback and systemd)
#
# Trust: the manifest must carry a valid Ed25519 signature by the server key named in the
# config (server_public_key); every file must match the manifest's SHA-256. Nothing is unpacked
# before both checks pass. Idempotent: the same version and config twice changes nothing.
#
# Environment: CLOUDKEEP_MACHINE_ROOT (default /; a simulated machine's root folder) and
# CLOUDKEEP_PYTHON (an interpreter that already has cloudkeep's dependencies; without it a
# venv is built under $ROOT/opt/cloudkeep/venv with pip). Machine-readable lines on stdout:
# "CLOUDKEEP-KEYS <json>", "CLOUDKEEP-INSTALLED version=<v> changed=<yes|no> services=<mode>",
# "CLOUDKEEP-STARTED services=<mode> message-service=<yes|no: (re)started now>",
# "CLOUDKEEP-ERROR <reason>".
set -eu

say() { printf 'cloudkeep-install: %s\n' "$*" >&2; }
fail() {
    code=$1
    shift
    printf 'CLOUDKEEP-ERROR %s\n' "$*"
    printf 'cloudkeep-install: error: %s\n' "$*" >&2
    exit "$code"
}

BUNDLE_DIR=$(cd "$(dirname "$0")" && pwd)
CONFIG=""
ACTION=install
START=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG=$2; shift 2 ;;
        --bundle-dir) BUNDLE_DIR=$2; shift 2 ;;
        --stop) ACTION=stop; shift ;;
        --start) ACTION=start; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --no-start) START=no; shift ;;
        *) fail 2 "unknown argument: $1 (usage: install.sh --config machine.json | --stop)" ;;
    esac
done

ROOT=${CLOUDKEEP_MACHINE_ROOT:-/}
ROOT=${ROOT%/}
DEST="$ROOT/opt/cloudkeep"
ETC="$ROOT/etc/cloudkeep"
STATE="$ROOT/var/lib/cloudkeep"
LOGS="$ROOT/var/log/cloudkeep"
RUN="$ROOT/var/run/cloudkeep"
SERVICES="message agent transport"

daemon_command() {
    case "$1" in
        message) echo message-service ;;
        *) echo "$1" ;;
    esac
}

use_systemd() {
    [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

pid_alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_services() {
    if use_systemd; then
        for svc in transport agent message; do
            systemctl stop "cloudkeep-$svc.service" 2>/dev/null || true
        done
        return 0
    fi
    for svc in transport agent message; do
        pidfile="$RUN/cloudkeep-$svc.pid"
        if pid_alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            tries=0
            while kill -0 "$pid" 2>/dev/null && [ $tries -lt 100 ]; do
                sleep 0.1
                tries=$((tries + 1))
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

# --- services: message first, then agent and transport -----------------------------------------
start_services() {
    if use_systemd; then
        for svc in $SERVICES; do
            after="network-online.target"
            [ "$svc" = message ] || after="network-online.target cloudkeep-message.service"
            cat >"/etc/systemd/system/cloudkeep-$svc.service" <<UNIT
[Unit]
Description=cloudkeep $svc service
After=$after
Wants=network-online.target

[Service]
ExecStart=$DEST/bin/cloudkeep-machine $(daemon_command "$svc") --config $CFG
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
        done
        systemctl daemon-reload
        MESSAGE_STARTED=$CHANGED
        systemctl is-active --quiet cloudkeep-message.service || MESSAGE_STARTED=yes
        for svc in $SERVICES; do
            systemctl enable "cloudkeep-$svc.service" >/dev/null 2>&1 || fail 7 "systemctl enable cloudkeep-$svc failed"
            if [ "$CHANGED" = yes ]; then
                systemctl restart "cloudkeep-$svc.service" || fail 7 "cloudkeep-$svc did not start (journalctl -u cloudkeep-$svc)"
            else
                systemctl start "cloudkeep-$svc.service" || fail 7 "cloudkeep-$svc did not start (journalctl -u cloudkeep-$svc)"
            fi
        done
        SERVICE_MODE=systemd
    else
        STARTED=""
        for svc in $SERVICES; do
            pidfile="$RUN/cloudkeep-$svc.pid"
            pid_alive "$pidfile" && continue
            nohup "$DEST/bin/cloudkeep-machine" "$(daemon_command "$svc")" --config "$CFG" \
                >>"$LOGS/$svc.log" 2>&1 </dev/null &
            echo $! >"$pidfile"
            STARTED="$STARTED $svc"
        done
        case "$STARTED" in *message*) MESSAGE_STARTED=yes ;; *) MESSAGE_STARTED=no ;; esac
        if [ -n "$STARTED" ]; then
            sleep 1  # a daemon that cannot start (bad config, missing module) exits at once
            for svc in $STARTED; do
                pid_alive "$RUN/cloudkeep-$svc.pid" \
                    || fail 7 "cloudkeep-$svc exited at start: $(tail -n 3 "$LOGS/$svc.log" 2>/dev/null | tr '\n' ' ')"
            done
        fi
        SERVICE_MODE=fallback
    fi
}

if [ "$ACTION" = stop ]; then
    stop_services
    echo "CLOUDKEEP-STOPPED"
    exit 0
fi
if [ "$ACTION" = uninstall ]; then
    stop_services
    if use_systemd; then
        for svc in $SERVICES; do
            systemctl disable "cloudkeep-$svc.service" >/dev/null 2>&1 || true
            rm -f "/etc/systemd/system/cloudkeep-$svc.service"
        done
        systemctl daemon-reload || true
    fi
    rm -rf "$DEST" "$ETC" "$RUN" "$STATE"
    echo "CLOUDKEEP-UNINSTALLED"
    exit 0
fi
if [ "$ACTION" = start ]; then
    [ -x "$DEST/bin/cloudkeep-machine" ] || fail 2 "cloudkeep is not installed in $DEST"
    CFG="$ETC/machine.json"
    CHANGED=no
    [ ! -f "$DEST/.restart-needed" ] || CHANGED=yes
    start_services
    rm -f "$DEST/.restart-needed"
    echo "CLOUDKEEP-STARTED services=$SERVICE_MODE message-service=$MESSAGE_STARTED"
    exit 0
fi

[ -n "$CONFIG" ] || fail 2 "usage: install.sh --config machine.json"
[ -f "$CONFIG" ] || fail 2 "config file $CONFIG does not exist"
[ -f "$BUNDLE_DIR/manifest.json" ] || fail 2 "no manifest.json in $BUNDLE_DIR"
umask 022
mkdir -p "$DEST" "$ETC" "$STATE" "$LOGS" "$RUN"

# --- a Python interpreter ----------------------------------------------------------------
if [ -n "${CLOUDKEEP_PYTHON:-}" ]; then
    PY=$CLOUDKEEP_PYTHON
    MODE=lib
else
    PY=$(command -v python3 || true)
    MODE=venv
fi
[ -n "$PY" ] || fail 3 "python3 (3.11 or later) is required and was not found"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || fail 3 "python 3.11 or later is required, found $("$PY" -V 2>&1)"
if [ "$MODE" = venv ]; then
    [ -x "$DEST/venv/bin/python" ] || "$PY" -m venv "$DEST/venv" || fail 3 "cannot create a venv (install python3-venv)"
    PY="$DEST/venv/bin/python"
    "$PY" -c 'import cryptography' 2>/dev/null \
        || "$PY" -m pip install --quiet 'cryptography>=42' || fail 3 "pip could not install cryptography"
fi

# --- verify: manifest signature, then every file's SHA-256 ------------------------------------
"$PY" - "$BUNDLE_DIR/manifest.json" "$CONFIG" <<'PYEOF' || fail 4 "bundle manifest signature check failed"
import base64, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
manifest = json.load(open(sys.argv[1]))
key = json.load(open(sys.argv[2]))["server_public_key"]
signature = base64.b64decode(manifest.pop("signature", "") or "")
message = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
try:
    Ed25519PublicKey.from_public_bytes(base64.b64decode(key)).verify(signature, message)
except (InvalidSignature, ValueError):
    print("CLOUDKEEP-ERROR manifest signature is invalid for the server key (tampered bundle?)")
    sys.exit(4)
PYEOF

manifest_field() {
    "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"m": m}))' \
        "$BUNDLE_DIR/manifest.json" "$1"
}
VERSION=$(manifest_field 'm["version"]')
WHEEL=$(manifest_field '[f for f in m["platforms"]["linux"]["files"] if f.endswith(".whl")][0]')
SUMS=$(manifest_field '"\n".join(m["files"][f]["sha256"] + "  " + f for f in m["platforms"]["linux"]["files"])')

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}
echo "$SUMS" | while read -r expected name; do
    [ -f "$BUNDLE_DIR/$name" ] || fail 4 "bundle file $name is missing"
    actual=$(sha256_of "$BUNDLE_DIR/$name")
    [ "$actual" = "$expected" ] || fail 4 "checksum mismatch for $name: expected $expected, got $actual (tampered bundle?)"
done || exit 4
say "bundle $VERSION verified"

# --- install code ----------------------------------------------------------------------------
CURRENT=$(cat "$DEST/VERSION" 2>/dev/null || true)
CHANGED=no
if [ "$CURRENT" != "$VERSION" ] || [ ! -f "$DEST/.installed" ]; then
    CHANGED=yes
    [ -z "$CURRENT" ] || { say "upgrading $CURRENT -> $VERSION"; stop_services; }
    rm -f "$DEST/.installed"
    if [ "$MODE" = lib ]; then
        rm -rf "$DEST/lib.new" "$DEST/lib.old"
        "$PY" -m zipfile -e "$BUNDLE_DIR/$WHEEL" "$DEST/lib.new" || fail 5 "cannot unpack $WHEEL"
        [ ! -d "$DEST/lib" ] || mv "$DEST/lib" "$DEST/lib.old"
        mv "$DEST/lib.new" "$DEST/lib"
        rm -rf "$DEST/lib.old"
    else
        # The package itself is replaced; its dependencies are installed only when missing.
        "$PY" -m pip install --quiet --force-reinstall --no-deps "$BUNDLE_DIR/$WHEEL" \
            || fail 5 "pip could not install $WHEEL"
        "$PY" -m pip install --quiet "$BUNDLE_DIR/$WHEEL" || fail 5 "pip could not install the dependencies of $WHEEL"
    fi
    mkdir -p "$DEST/bin"
    {
        echo '#!/bin/sh'
        echo "# cloudkeep $VERSION: runs the machine-side services"
        if [ "$MODE" = lib ]; then
            echo "PYTHONPATH='$DEST/lib'\${PYTHONPATH:+:\$PYTHONPATH}"
            echo 'export PYTHONPATH'
        fi
        echo "exec '$PY' -m cloudkeep.machine \"\$@\""
    } >"$DEST/bin/cloudkeep-machine"
    chmod 755 "$DEST/bin/cloudkeep-machine"
    printf '%s\n' "$VERSION" >"$DEST/VERSION"
    touch "$DEST/.installed"
fi

# --- config (0600: it names the queues) ---------------------------------------------------------
CFG="$ETC/machine.json"
if ! cmp -s "$CONFIG" "$CFG" 2>/dev/null; then
    (umask 077 && cp "$CONFIG" "$CFG.tmp" && mv "$CFG.tmp" "$CFG")
    [ "$CHANGED" = yes ] || { CHANGED=yes; stop_services; }
fi

# --- agent keys (created once, kept across upgrades) --------------------------------------------
KEYS=$("$DEST/bin/cloudkeep-machine" keygen --config "$CFG" 2>>"$LOGS/install.log") \
    || fail 6 "keygen failed (see $LOGS/install.log)"
printf 'CLOUDKEEP-KEYS %s\n' "$(printf '%s' "$KEYS" | tr -d '\n')"

cp "$BUNDLE_DIR/install.sh" "$DEST/install.sh.tmp" && mv "$DEST/install.sh.tmp" "$DEST/install.sh"
if [ "$START" = yes ]; then
    start_services
    rm -f "$DEST/.restart-needed"
else
    [ "$CHANGED" = no ] || touch "$DEST/.restart-needed"
    SERVICE_MODE=not-started
fi
echo "CLOUDKEEP-INSTALLED version=$VERSION changed=$CHANGED services=$SERVICE_MODE"
