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
#   sh install.sh --unit message             print the systemd unit written for a service
#
# Trust: the manifest must carry a valid Ed25519 signature by the server key named in the
# config (server_public_key); every file must match the manifest's SHA-256. Nothing is unpacked
# before both checks pass. Idempotent: the same version and config twice changes nothing.
#
# Environment: CLOUDKEEP_MACHINE_ROOT (default /; a simulated machine's root folder) and
# CLOUDKEEP_PYTHON (an interpreter that already has cloudkeep's dependencies; without it a
# venv is built under $ROOT/opt/cloudkeep/venv from the bundle's wheels, offline, with the newest
# python3.9+ found or CLOUDKEEP_INSTALL_PYTHON). Logs: the journal under systemd, otherwise
# $ROOT/var/log/cloudkeep/<service>.log (the services write to stderr only, so each line once).
# Machine-readable lines on stdout:
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
        --unit) ACTION=unit; UNIT_SERVICE=$2; shift 2 ;;
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
# A unit restarts a service that fails (not one stopped on purpose) and sends its output to the
# journal (journalctl -u cloudkeep-<svc>); the services log to stderr only, so nothing is written twice.
unit_text() {
    after="network-online.target"
    [ "$1" = message ] || after="network-online.target cloudkeep-message.service"
    cat <<UNIT
[Unit]
Description=cloudkeep $1 service
After=$after
Wants=network-online.target

[Service]
Type=simple
ExecStart=$DEST/bin/cloudkeep-machine $(daemon_command "$1") --config $ETC/machine.json
Restart=on-failure
RestartSec=5
StandardOutput=journal
StandardError=journal
SyslogIdentifier=cloudkeep-$1

[Install]
WantedBy=multi-user.target
UNIT
}

start_services() {
    if use_systemd; then
        for svc in $SERVICES; do
            unit_text "$svc" >"/etc/systemd/system/cloudkeep-$svc.service"
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

if [ "$ACTION" = unit ]; then
    case "$UNIT_SERVICE" in
        message | agent | transport) unit_text "$UNIT_SERVICE"; exit 0 ;;
        *) fail 2 "--unit takes message, agent or transport" ;;
    esac
fi
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
# CLOUDKEEP_PYTHON: an interpreter that already has the dependencies (labs, development): the
# package is unpacked next to it. Otherwise the newest CPython 3.9+ found (or CLOUDKEEP_INSTALL_PYTHON)
# gets a private venv filled offline from the bundle's wheels.
if [ -n "${CLOUDKEEP_PYTHON:-}" ]; then
    PY=$CLOUDKEEP_PYTHON
    MODE=lib
else
    PY=${CLOUDKEEP_INSTALL_PYTHON:-}
    if [ -z "$PY" ]; then
        for candidate in python3.13 python3.12 python3.11 python3.10 python3.9 python3; do
            found=$(command -v "$candidate" 2>/dev/null || true)
            if [ -n "$found" ] && "$found" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
                PY=$found
                break
            fi
        done
    fi
    MODE=venv
fi
[ -n "$PY" ] || fail 3 "python 3.9 or later is required and was not found (install the distribution's python3 package)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || fail 3 "python 3.9 or later is required, found $("$PY" -V 2>&1)"

# --- verify: manifest signature, then every file's SHA-256 ------------------------------------
# Ed25519 (RFC 8032) in plain Python: the check runs before anything from the bundle is installed,
# so it cannot lean on the bundle's own cryptography wheel.
"$PY" - "$BUNDLE_DIR/manifest.json" "$CONFIG" <<'PYEOF' || fail 4 "bundle manifest signature check failed"
import base64, hashlib, json, sys

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e, h = (y1 + x1) * (y2 + x2) - (y1 - x1) * (y2 - x2), (y1 + x1) * (y2 + x2) + (y1 - x1) * (y2 - x2)
    c, dd = t1 * 2 * D * t2, z1 * 2 * z2
    f, g = dd - c, dd + c
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(k, point):
    result = (0, 1, 1, 0)
    while k:
        if k & 1:
            result = add(result, point)
        point, k = add(point, point), k >> 1
    return result


def decode(data):
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        raise ValueError("bad point")
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * SQRT_M1 % P
    if (x * x - xx) % P or (x == 0 and sign):
        raise ValueError("bad point")
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def verify(public, message, signature):
    if len(public) != 32 or len(signature) != 64:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    a, r = decode(public), decode(signature[:32])
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    base = decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
    left, right = mul(s, base), add(r, mul(h, a))
    return (left[0] * right[2] - right[0] * left[2]) % P == 0 and (left[1] * right[2] - right[1] * left[2]) % P == 0


manifest = json.load(open(sys.argv[1]))
key = json.load(open(sys.argv[2]))["server_public_key"]
try:
    signature = base64.b64decode(manifest.pop("signature", "") or "")
    message = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    valid = verify(base64.b64decode(key), message, signature)
except ValueError:
    valid = False
if not valid:
    print("CLOUDKEEP-ERROR manifest signature is invalid for the server key (tampered bundle?)")
    sys.exit(4)
PYEOF

manifest_field() {
    "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"m": m}))' \
        "$BUNDLE_DIR/manifest.json" "$1"
}
VERSION=$(manifest_field 'm["version"]')
WHEEL=$(manifest_field '[f for f in m["platforms"]["linux"]["files"] if f.endswith(".whl") and "/" not in f][0]')
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

# --- the wheels for this machine --------------------------------------------------------------
if [ "$MODE" = venv ]; then
    case "$(uname -m)" in
        x86_64 | amd64) ARCH=x86_64 ;;
        aarch64 | arm64) ARCH=aarch64 ;;
        *) fail 3 "unsupported architecture $(uname -m): bundles carry wheels for x86_64 and aarch64" ;;
    esac
    WHEELS="$BUNDLE_DIR/wheels/$ARCH"
    PIP_WHEEL=""
    for candidate in "$WHEELS"/pip-*.whl; do
        [ ! -f "$candidate" ] || PIP_WHEEL=$candidate
    done
    [ -n "$PIP_WHEEL" ] || fail 3 "bundle $VERSION carries no wheels for $ARCH (built without a wheelhouse)"
    # The machine's cloud SDK only: boto3 on AWS, azure-storage-* on Azure, none for local.
    EXTRA=$("$PY" -c 'import json,sys; k=json.load(open(sys.argv[1])).get("agent_queue",{}).get("kind"); print("[%s]" % k if k in ("aws","azure") else "")' "$CONFIG")
fi

# pip runs from its wheel (no ensurepip, no system pip needed) and reaches no index.
pip_offline() {
    target_python=$1
    shift
    PIP_CONFIG_FILE=/dev/null "$target_python" "$PIP_WHEEL/pip" install --quiet --disable-pip-version-check \
        --no-cache-dir --no-index --find-links "$WHEELS" --find-links "$BUNDLE_DIR" "$@"
}

# --- install code ----------------------------------------------------------------------------
CURRENT=$(cat "$DEST/VERSION" 2>/dev/null || true)
CHANGED=no
if [ "$CURRENT" != "$VERSION" ] || [ ! -f "$DEST/.installed" ]; then
    CHANGED=yes
    [ -z "$CURRENT" ] || { say "upgrading $CURRENT -> $VERSION"; stop_services; }
    rm -f "$DEST/.installed"
    rm -rf "$DEST/lib.new" "$DEST/venv.new"
    if [ "$MODE" = lib ]; then
        "$PY" -m zipfile -e "$BUNDLE_DIR/$WHEEL" "$DEST/lib.new" || fail 5 "cannot unpack $WHEEL"
    elif "$PY" -m venv --without-pip "$DEST/venv.new" >/dev/null 2>&1; then
        pip_offline "$DEST/venv.new/bin/python" "$BUNDLE_DIR/$WHEEL$EXTRA" \
            || fail 5 "pip could not install $WHEEL$EXTRA from the bundle's wheels"
    else
        # No venv module (some minimal images): a private site-packages folder instead.
        say "python has no venv module: installing into $DEST/lib"
        MODE=lib
        pip_offline "$PY" --target "$DEST/lib.new" "$BUNDLE_DIR/$WHEEL$EXTRA" \
            || fail 5 "pip could not install $WHEEL$EXTRA into $DEST/lib"
    fi
    for tree in lib venv; do
        [ -d "$DEST/$tree.new" ] || continue
        rm -rf "$DEST/$tree.old"
        [ ! -d "$DEST/$tree" ] || mv "$DEST/$tree" "$DEST/$tree.old"
        mv "$DEST/$tree.new" "$DEST/$tree"
        rm -rf "$DEST/$tree.old"
    done
    if [ "$MODE" = venv ]; then PY="$DEST/venv/bin/python"; fi
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
