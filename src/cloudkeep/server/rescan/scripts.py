"""The scripts rescan sends through the cloud command channel, and how their output is read.

Two kinds: a harmless *probe* (proves the channel runs scripts and reports facts: PowerShell
version, execution policy, Python, installed bundle version, Secure Boot where the API is
silent) and a *bootstrap* that downloads one platform archive from a signed URL, checks its
SHA-256 against the value embedded here by the server, unpacks it and runs the installer. The
command channel is authenticated by the cloud, so what the bootstrap embeds is trusted.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from cloudkeep.providers.base import Platform

PROBE_MARKER = "CLOUDKEEP-PROBE-OK"
MAX_FACT = 300  # probe output comes from the machine: each fact is bounded
MAX_PYTHONS = 16
_VERSION_RE = re.compile(r"^\d{1,2}\.\d{1,3}(\.\d{1,3})?$")
BLOCKED_SCRIPT_MARKERS = (
    "running scripts is disabled",
    "execution policy",
    "executionpolicy",
    "psSecurityException",
)

# Facts, one ``key=value`` a line. Every Python is listed (RHEL and Amazon Linux install several
# side by side); ``python`` is the one the installer would use today. glibc, the architecture and
# the service manager decide whether the bundle's wheels and services can run at all.
LINUX_PROBE = f"""echo {PROBE_MARKER}
ROOT=${{CLOUDKEEP_MACHINE_ROOT:-/}}; ROOT=${{ROOT%/}}
echo "kernel=$(uname -sr 2>/dev/null || true)"
echo "arch=$(uname -m 2>/dev/null || true)"
echo "installed=$(cat "$ROOT/opt/cloudkeep/VERSION" 2>/dev/null || true)"
if [ -r "$ROOT/etc/os-release" ]; then
    for key in ID VERSION_ID PRETTY_NAME; do
        value=$(sed -n "s/^$key=//p" "$ROOT/etc/os-release" | head -n 1 | tr -d '"' | tr -d "'")
        case $key in
            ID) echo "os=$value" ;;
            VERSION_ID) echo "os_version=$value" ;;
            *) echo "os_name=$value" ;;
        esac
    done
fi
VERSION_OF='import sys; print("%d.%d.%d" % sys.version_info[:3])'
PY=${{CLOUDKEEP_PYTHON:-$(command -v python3 || true)}}
if [ -n "$PY" ]; then
    echo "python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
    echo "python_path=$PY"
fi
found=""
NAMES="python3 python3.9 python3.10 python3.11 python3.12 python3.13 python3.14 /usr/libexec/platform-python"
# A machine configured with CLOUDKEEP_PYTHON has that interpreter and no other for cloudkeep.
[ -z "${{CLOUDKEEP_PYTHON:-}}" ] || NAMES=$CLOUDKEEP_PYTHON
for name in $NAMES; do
    path=$(command -v "$name" 2>/dev/null || true)
    [ -n "$path" ] || continue
    version=$("$path" -c "$VERSION_OF" 2>/dev/null || true)
    [ -n "$version" ] && found="$found $path:$version"
done
echo "pythons=${{found# }}"
libc=$(getconf GNU_LIBC_VERSION 2>/dev/null || true)
if [ -n "$libc" ]; then
    echo "glibc=${{libc##* }}"
elif ldd --version 2>&1 | grep -qi musl; then
    echo "libc=musl"
else
    version=$(ldd --version 2>/dev/null | head -n 1 | awk '{{print $NF}}')
    [ -n "$version" ] && echo "glibc=$version"
fi
echo "init=$(cat "$ROOT/proc/1/comm" 2>/dev/null || echo unknown)"
# The installer's own test: systemd units only where systemd runs (else its pid-file fallback).
if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    echo "service_manager=systemd"
else
    echo "service_manager=none"
fi
if [ -d "$ROOT/sys/firmware/efi" ]; then echo "firmware=uefi"; fi
for f in "$ROOT"/sys/firmware/efi/efivars/SecureBoot-*; do
    [ -f "$f" ] && echo "secureboot=$(od -An -t u1 "$f" | awk '{{print $NF}}')"
done
exit 0
"""

# Only statements the simplest PowerShell host understands; one value per line, in this order.
WINDOWS_PROBE = f"""$ErrorActionPreference = 'Stop'
Write-Output {PROBE_MARKER}
$PSVersionTable.PSVersion.ToString()
Get-ExecutionPolicy
"""


@dataclass
class ProbeFacts:
    ok: bool
    reason: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def installed_version(self) -> str | None:
        return self.facts.get("installed") or None


def probe_script(platform: Platform) -> str:
    return WINDOWS_PROBE if platform == Platform.WINDOWS else LINUX_PROBE


def read_probe(platform: Platform, exit_code: int, stdout: str, stderr: str) -> ProbeFacts:
    """Turn probe output into facts, or a clear reason why the channel cannot run our scripts."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if exit_code != 0 or PROBE_MARKER not in lines:
        text = (stderr or stdout).strip()
        if platform == Platform.WINDOWS and any(m.lower() in text.lower() for m in BLOCKED_SCRIPT_MARKERS):
            first = text.splitlines()[0] if text else ""
            return ProbeFacts(
                False,
                f"scripts are blocked by the PowerShell execution policy: {first} "
                "(set it to RemoteSigned, e.g. by group policy, and rescan)",
            )
        return ProbeFacts(False, f"the probe command failed (exit {exit_code}): {tail(text)}")
    after = lines[lines.index(PROBE_MARKER) + 1 :]
    if platform == Platform.WINDOWS:
        facts: dict[str, Any] = {}
        if after:
            facts["powershell_version"] = after[0]
        if len(after) > 1:
            facts["execution_policy"] = after[1]
        return ProbeFacts(True, facts=facts)
    facts = dict(line.split("=", 1) for line in after if "=" in line)
    result: dict[str, Any] = {
        k: v[:MAX_FACT] for k, v in facts.items() if v != "" and k not in {"secureboot", "pythons"}
    }
    if "secureboot" in facts:
        result["secure_boot"] = facts["secureboot"] == "1"
    if "pythons" in facts:
        result["pythons"] = read_pythons(facts["pythons"])
    return ProbeFacts(True, facts=result)


def read_pythons(text: str) -> list[dict[str, str]]:
    """``/usr/bin/python3:3.9.2 …`` into ``[{"path", "version"}]``; malformed entries are dropped."""
    found: list[dict[str, str]] = []
    for item in text.split()[:MAX_PYTHONS]:
        path, _, version = item.rpartition(":")
        if path.startswith("/") and _VERSION_RE.match(version) and path not in {f["path"] for f in found}:
            found.append({"path": path[:MAX_FACT], "version": version})
    return found


def powershell_too_old(version: str | None) -> bool:
    """True when ``version`` is below 5.1 (unknown counts as too old: we could not read it)."""
    if not version:
        return True
    try:
        parts = [int(p) for p in version.split(".")[:2]]
    except ValueError:
        return True
    return tuple(parts + [0] * (2 - len(parts))) < (5, 1)


def linux_bootstrap(
    *,
    version: str,
    url: str,
    sha256: str,
    config: dict[str, Any],
    python: str | None = None,
    install_python: str = "",
) -> str:
    """Download, verify and unpack the Linux archive, then run ``install.sh`` with the machine config.

    ``python`` is the interpreter prerequisites picked (``python3.11`` beside an old ``python3``);
    ``install_python`` is the package manager step of a group that may add Python when none fits.
    """
    config_b64 = base64.b64encode(json.dumps(config, sort_keys=True).encode()).decode()
    choose = f"PY=${{CLOUDKEEP_PYTHON:-{shlex.quote(python or 'python3')}}}"
    if install_python and not python:
        choose = install_python + _NEWEST_PYTHON
    return f"""set -eu
ROOT=${{CLOUDKEEP_MACHINE_ROOT:-/}}; ROOT=${{ROOT%/}}
STAGE="$ROOT/var/lib/cloudkeep/staging/{version}"
rm -rf "$STAGE"; mkdir -p "$STAGE"; cd "$STAGE"
trap 'rm -f "$STAGE/machine.json"' EXIT
{choose}
export CLOUDKEEP_INSTALL_PYTHON="$PY"
REFUSED="CLOUDKEEP-ERROR download of the bundle was refused:"
WHY="(expired or tampered signed URL?)"
fetch() {{
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --retry 2 -o "$2" "$1" 2>fetch.err || {{
            echo "$REFUSED $(tr '\\n' ' ' <fetch.err)$WHY"; exit 10; }}
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1" 2>fetch.err || {{
            echo "$REFUSED $(tr '\\n' ' ' <fetch.err)$WHY"; exit 10; }}
    else
        "$PY" -c 'import sys, urllib.request, urllib.error
try:
    data = urllib.request.urlopen(sys.argv[1], timeout=120).read()
except urllib.error.HTTPError as exc:
    print("CLOUDKEEP-ERROR download of the bundle was refused: HTTP %d" % exc.code,
          "(expired or tampered signed URL?)")
    sys.exit(10)
open(sys.argv[2], "wb").write(data)' "$1" "$2"
    fi
}}
fetch {shlex.quote(url)} bundle.tar.gz
if command -v sha256sum >/dev/null 2>&1; then
    actual=$(sha256sum bundle.tar.gz | cut -d' ' -f1)
else
    actual=$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())'\\
        bundle.tar.gz)
fi
if [ "$actual" != {shlex.quote(sha256)} ]; then
    echo "CLOUDKEEP-ERROR checksum mismatch for the downloaded bundle {version}:" \\
        "expected {sha256}, got $actual (tampered bundle?)"
    exit 11
fi
tar -xzf bundle.tar.gz
printf '%s' {shlex.quote(config_b64)} \\
    | "$PY" -c 'import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.stdin.read()))' >machine.json
sh "$STAGE/install.sh" --config "$STAGE/machine.json" --no-start
"""


# After the package manager ran: the newest Python 3.9+ now on the PATH.
_NEWEST_PYTHON = """PY=""
for name in python3.13 python3.12 python3.11 python3.10 python3.9 python3; do
    candidate=$(command -v "$name" 2>/dev/null || true)
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null; then
        PY=$candidate; break
    fi
done
if [ -z "$PY" ]; then
    echo "CLOUDKEEP-ERROR the package manager ran but no Python 3.9 or later is on the PATH"
    exit 12
fi
"""


def windows_bootstrap(*, version: str, url: str, sha256: str, config: dict[str, Any]) -> str:
    """The PowerShell twin of ``linux_bootstrap`` (Invoke-WebRequest, Get-FileHash, Expand-Archive)."""
    config_b64 = base64.b64encode(json.dumps(config, sort_keys=True).encode()).decode()
    return f"""$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Stage = Join-Path $env:ProgramData 'cloudkeep\\staging\\{version}'
if (Test-Path -LiteralPath $Stage) {{ Remove-Item -LiteralPath $Stage -Recurse -Force }}
New-Item -ItemType Directory -Force -Path $Stage | Out-Null
$Archive = Join-Path $Stage 'bundle.zip'
try {{
    Invoke-WebRequest -UseBasicParsing -Uri {_ps_quote(url)} -OutFile $Archive
}} catch {{
    $Reason = $_.Exception.Message
    Write-Output "CLOUDKEEP-ERROR download of the bundle was refused: $Reason (expired or tampered URL?)"
    exit 10
}}
$Actual = (Get-FileHash -LiteralPath $Archive -Algorithm SHA256).Hash.ToLowerInvariant()
if ($Actual -ne '{sha256}') {{
    $Reason = "expected {sha256}, got $Actual (tampered bundle?)"
    Write-Output "CLOUDKEEP-ERROR checksum mismatch for the downloaded bundle {version}: $Reason"
    exit 11
}}
Expand-Archive -LiteralPath $Archive -DestinationPath $Stage -Force
$ConfigFile = Join-Path $Stage 'machine.json'
[System.IO.File]::WriteAllBytes($ConfigFile, [System.Convert]::FromBase64String('{config_b64}'))
$Installer = Join-Path $Stage 'install.ps1'
& powershell.exe -NoProfile -ExecutionPolicy Bypass -File $Installer -Config $ConfigFile -NoStart
$Code = $LASTEXITCODE
Remove-Item -LiteralPath $ConfigFile -Force
exit $Code
"""


LINUX_START = """ROOT=${CLOUDKEEP_MACHINE_ROOT:-/}; ROOT=${ROOT%/}
exec sh "$ROOT/opt/cloudkeep/install.sh" --start
"""
WINDOWS_START = """$Installer = Join-Path $env:ProgramFiles 'cloudkeep\\install.ps1'
& powershell.exe -NoProfile -ExecutionPolicy Bypass -File $Installer -Start
exit $LASTEXITCODE
"""


def start_script(platform: Platform) -> str:
    """Start (or restart after an upgrade) the installed services; run once the agent key is registered."""
    return WINDOWS_START if platform == Platform.WINDOWS else LINUX_START


LINUX_UNINSTALL = """ROOT=${CLOUDKEEP_MACHINE_ROOT:-/}; ROOT=${ROOT%/}
if [ ! -f "$ROOT/opt/cloudkeep/install.sh" ]; then echo CLOUDKEEP-UNINSTALLED; exit 0; fi
exec sh "$ROOT/opt/cloudkeep/install.sh" --uninstall
"""


def linux_uninstall_script() -> str:
    """Stop the services and remove cloudkeep from a Linux machine (logs stay); idempotent."""
    return LINUX_UNINSTALL


def services_check_script() -> str:
    """Are the three services running? (Used to confirm when no dispatcher is available.)"""
    return """ROOT=${CLOUDKEEP_MACHINE_ROOT:-/}; ROOT=${ROOT%/}
down=""
for svc in message agent transport; do
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl is-active --quiet "cloudkeep-$svc.service" || down="$down $svc"
    else
        pidfile="$ROOT/var/run/cloudkeep/cloudkeep-$svc.pid"
        { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; } || down="$down $svc"
    fi
done
if [ -n "$down" ]; then echo "CLOUDKEEP-ERROR not running:$down"; exit 1; fi
echo CLOUDKEEP-SERVICES-OK
"""


@dataclass
class InstallOutcome:
    ok: bool
    reason: str = ""
    version: str | None = None
    changed: bool = False
    keys: dict[str, Any] | None = None
    tampered: bool = False


def read_install(exit_code: int, stdout: str, stderr: str) -> InstallOutcome:
    """Find the installer's machine-readable lines; the first CLOUDKEEP-ERROR is the reason."""
    keys: dict[str, Any] | None = None
    installed: dict[str, str] = {}
    error = ""
    for line in stdout.splitlines():
        if line.startswith("CLOUDKEEP-ERROR ") and not error:
            error = line.removeprefix("CLOUDKEEP-ERROR ").strip()
        elif line.startswith("CLOUDKEEP-KEYS "):
            try:
                keys = json.loads(line.removeprefix("CLOUDKEEP-KEYS "))
            except ValueError:
                keys = None
        elif line.startswith("CLOUDKEEP-INSTALLED "):
            installed = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
    if exit_code != 0 or not installed:
        reason = error or f"the installer failed (exit {exit_code}): {tail(stderr or stdout)}"
        return InstallOutcome(False, reason, tampered="checksum mismatch" in reason or "signature" in reason)
    if keys is None:
        return InstallOutcome(False, "the installer did not report the agent's public keys")
    return InstallOutcome(
        True, version=installed.get("version"), changed=installed.get("changed") == "yes", keys=keys
    )


def _ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def tail(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-limit:]
