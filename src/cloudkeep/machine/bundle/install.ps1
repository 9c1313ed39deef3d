#Requires -Version 5.1
<#
.SYNOPSIS
    cloudkeep installer for Windows: verifies the bundle, installs the code and registers three services.
.DESCRIPTION
    Run from an extracted bundle:  powershell -ExecutionPolicy Bypass -File install.ps1 -Config machine.json
    With -NoStart the services are registered but not started (the server first records the agent key,
    then runs the installed copy with -Start); -Stop stops them.
    Trust: every file must match the SHA-256 in manifest.json (Get-FileHash) and the manifest must carry
    a valid Ed25519 signature by the server key named in the config (checked with Python's cryptography,
    because Windows PowerShell 5.1 has no Ed25519). Idempotent; an upgrade stops, replaces and restarts.
    Machine-readable lines: "CLOUDKEEP-KEYS <json>", "CLOUDKEEP-INSTALLED version=<v> changed=<yes|no>",
    "CLOUDKEEP-ERROR <reason>".
#>
param(
    [string]$Config = '',
    [string]$BundleDir = $PSScriptRoot,
    [switch]$NoStart,
    [switch]$Start,
    [switch]$Stop
)

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
Set-StrictMode -Version 3.0

$InstallDir = Join-Path $env:ProgramFiles 'cloudkeep'
$DataDir = Join-Path $env:ProgramData 'cloudkeep'
$ConfigPath = Join-Path $DataDir 'machine.json'
$Services = @(
    @{ Name = 'cloudkeep-message'; Command = 'message-service'; Display = 'cloudkeep Cloud Message Service' },
    @{ Name = 'cloudkeep-agent'; Command = 'agent'; Display = 'cloudkeep Agent' },
    @{ Name = 'cloudkeep-transport'; Command = 'transport'; Display = 'cloudkeep Transport Service' }
)

function Stop-CloudkeepFailure {
    param([int]$Code, [string]$Message)
    Write-Output "CLOUDKEEP-ERROR $Message"
    exit $Code
}

function Stop-CloudkeepServices {
    foreach ($index in 2..0) {
        $service = $Services[$index]
        $existing = Get-Service -Name $service.Name -ErrorAction SilentlyContinue
        if ($null -ne $existing -and $existing.Status -ne 'Stopped') {
            Stop-Service -Name $service.Name -Force
        }
    }
}

function Start-CloudkeepServices {
    param([bool]$Restart)
    foreach ($service in $Services) {
        if ($Restart) { Restart-Service -Name $service.Name -Force } else { Start-Service -Name $service.Name }
    }
}

$RestartMarker = Join-Path $InstallDir '.restart-needed'
if ($Stop) {
    Stop-CloudkeepServices
    Write-Output 'CLOUDKEEP-STOPPED'
    exit 0
}
if ($Start) {
    Start-CloudkeepServices -Restart (Test-Path -LiteralPath $RestartMarker)
    if (Test-Path -LiteralPath $RestartMarker) { Remove-Item -LiteralPath $RestartMarker -Force }
    Write-Output 'CLOUDKEEP-STARTED services=windows'
    exit 0
}
if (-not $Config) { Stop-CloudkeepFailure 2 'usage: install.ps1 -Config machine.json [-NoStart] | -Start | -Stop' }

if (-not (Test-Path -LiteralPath $Config)) { Stop-CloudkeepFailure 2 "config file $Config does not exist" }
$ManifestPath = Join-Path $BundleDir 'manifest.json'
if (-not (Test-Path -LiteralPath $ManifestPath)) { Stop-CloudkeepFailure 2 "no manifest.json in $BundleDir" }
$Manifest = Get-Content -LiteralPath $ManifestPath -Raw | ConvertFrom-Json
$Version = [string]$Manifest.version

# --- every file of the windows platform must match its SHA-256 -------------------------------------
foreach ($name in $Manifest.platforms.windows.files) {
    $path = Join-Path $BundleDir $name
    if (-not (Test-Path -LiteralPath $path)) { Stop-CloudkeepFailure 4 "bundle file $name is missing" }
    $expected = [string]$Manifest.files.$name.sha256
    $actual = (Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($actual -ne $expected) {
        Stop-CloudkeepFailure 4 "checksum mismatch for ${name}: expected $expected, got $actual (tampered bundle?)"
    }
}

# --- Python 3.11+ in a private venv ------------------------------------------------------------
$BasePython = $env:CLOUDKEEP_PYTHON
if (-not $BasePython) {
    $launcher = Get-Command -Name 'py.exe' -ErrorAction SilentlyContinue
    if ($null -eq $launcher) { Stop-CloudkeepFailure 3 'Python 3.11 or later is required (py.exe launcher not found)' }
    $BasePython = (& $launcher.Source -3 -c 'import sys; print(sys.executable)').Trim()
}
& $BasePython -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 3 'Python 3.11 or later is required' }
New-Item -ItemType Directory -Force -Path $InstallDir, $DataDir | Out-Null
$VenvPython = Join-Path $InstallDir 'venv\Scripts\python.exe'
if (-not (Test-Path -LiteralPath $VenvPython)) {
    & $BasePython -m venv (Join-Path $InstallDir 'venv')
    if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 3 'cannot create a Python venv' }
}
& $VenvPython -m pip install --quiet 'cryptography>=42'
if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 3 'pip could not install cryptography' }

# --- the manifest signature (same canonical JSON as install.sh) -------------------------------------
$VerifyCode = @'
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
manifest = json.load(open(sys.argv[1], encoding="utf-8-sig"))
key = json.load(open(sys.argv[2], encoding="utf-8-sig"))["server_public_key"]
signature = base64.b64decode(manifest.pop("signature", "") or "")
message = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
try:
    Ed25519PublicKey.from_public_bytes(base64.b64decode(key)).verify(signature, message)
except Exception:
    sys.exit(4)
'@
& $VenvPython -c $VerifyCode $ManifestPath $Config
if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 4 'manifest signature is invalid for the server key (tampered bundle?)' }

# --- install or upgrade the code ---------------------------------------------------------------
$VersionFile = Join-Path $InstallDir 'VERSION'
$Current = ''
if (Test-Path -LiteralPath $VersionFile) { $Current = (Get-Content -LiteralPath $VersionFile -Raw).Trim() }
$Changed = $false
if ($Current -ne $Version) {
    $Changed = $true
    if ($Current) { Stop-CloudkeepServices }
    $Wheel = $Manifest.platforms.windows.files | Where-Object { $_ -like '*.whl' } | Select-Object -First 1
    $WheelPath = Join-Path $BundleDir $Wheel
    & $VenvPython -m pip install --quiet --force-reinstall --no-deps $WheelPath
    if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 5 "pip could not install $Wheel" }
    & $VenvPython -m pip install --quiet $WheelPath
    if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 5 "pip could not install the dependencies of $Wheel" }
    Set-Content -LiteralPath $VersionFile -Value $Version -Encoding ASCII
}

$NewConfig = Get-Content -LiteralPath $Config -Raw
$OldConfig = ''
if (Test-Path -LiteralPath $ConfigPath) { $OldConfig = Get-Content -LiteralPath $ConfigPath -Raw }
if ($NewConfig -ne $OldConfig) {
    Set-Content -LiteralPath $ConfigPath -Value $NewConfig -Encoding ASCII
    if (-not $Changed) { $Changed = $true; Stop-CloudkeepServices }
}

# --- agent keys -----------------------------------------------------------------------------
$Keys = & $VenvPython -m cloudkeep.machine keygen --config $ConfigPath
if ($LASTEXITCODE -ne 0) { Stop-CloudkeepFailure 6 'keygen failed' }
Write-Output ('CLOUDKEEP-KEYS ' + (($Keys | Out-String) -replace "`r?`n", ''))

# --- three Windows services, message service first -------------------------------------------------
foreach ($service in $Services) {
    $binary = "`"$VenvPython`" -m cloudkeep.machine $($service.Command) --config `"$ConfigPath`""
    $existing = Get-Service -Name $service.Name -ErrorAction SilentlyContinue
    if ($null -eq $existing) {
        New-Service -Name $service.Name -BinaryPathName $binary -DisplayName $service.Display -StartupType Automatic | Out-Null
    } else {
        & sc.exe config $service.Name binPath= $binary start= auto | Out-Null
    }
    & sc.exe failure $service.Name reset= 86400 actions= restart/5000/restart/5000/restart/60000 | Out-Null
}
Copy-Item -LiteralPath (Join-Path $BundleDir 'install.ps1') -Destination (Join-Path $InstallDir 'install.ps1') -Force

$ServiceMode = 'windows'
if ($NoStart) {
    if ($Changed) { New-Item -ItemType File -Force -Path $RestartMarker | Out-Null }
    $ServiceMode = 'not-started'
} else {
    Start-CloudkeepServices -Restart $Changed
}
$ChangedText = if ($Changed) { 'yes' } else { 'no' }
Write-Output "CLOUDKEEP-INSTALLED version=$Version changed=$ChangedText services=$ServiceMode"
