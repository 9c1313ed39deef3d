"""A static check for the PowerShell scripts cloudkeep ships, for hosts without ``pwsh``.

``pwsh`` is not packaged for Debian, so the Windows installer and the scripts rescan sends to
Windows machines are checked here instead of being run. What it proves (and no more):

* brackets ``() {} []`` balance outside strings, here-strings and comments, and every string
  and here-string is closed;
* every ``Verb-Noun`` command is a cmdlet that exists in Windows PowerShell 5.1 (a fixed list
  of the ones we use) or a function the script defines, and uses an approved verb;
* no POSIX-shell habits that PowerShell 5.1 rejects: ``&&`` / ``||`` chains (PowerShell 7
  only), ``if [ … ]; then``, ``fi``, ``done``, ``esac``, ``export X=``, ``[[ … ]]``;
* a ``param(...)`` block, when present, comes before any other statement.

It is not a parser: a script can pass and still fail on Windows. The Linux installer, by
contrast, really runs in the simulated machines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


KNOWN_CMDLETS = _words(
    """
    Add-Content ConvertFrom-Json ConvertTo-Json Copy-Item Expand-Archive ForEach-Object Get-ChildItem
    Get-Command Get-Content Get-ExecutionPolicy Get-FileHash Get-Item Get-ItemProperty Get-Process Get-Service
    Invoke-WebRequest Join-Path Move-Item New-Item New-Service Out-File Out-Null Out-String Remove-Item
    Restart-Service Select-Object Set-Content Set-ExecutionPolicy Set-Service Set-StrictMode Split-Path
    Start-Process Start-Service Start-Sleep Stop-Process Stop-Service Test-Path Where-Object Write-Error
    Write-Host Write-Output Write-Verbose Write-Warning
    """
)
APPROVED_VERBS = _words(
    """
    Add Clear Close Copy Enter Exit Find Format Get Hide Join Lock Move New Open Optimize Pop Push Redo
    Remove Rename Reset Resize Search Select Set Show Skip Split Step Switch Undo Unlock Watch Backup
    Checkpoint Compare Compress Convert ConvertFrom ConvertTo Dismount Edit Expand Export Group Import
    Initialize Limit Merge Mount Out Publish Restore Save Sync Unpublish Update Approve Assert Build
    Complete Confirm Deny Deploy Disable Enable Install Invoke Register Request Restart Resume Start Stop
    Submit Suspend Uninstall Unregister Wait Debug Measure Ping Repair Resolve Test Trace Connect
    Disconnect Read Receive Send Write Block Grant Protect Revoke Unblock Unprotect Use
    """
)
_BASHISMS = [
    (re.compile(r"&&|\|\|"), "'&&' / '||' chains need PowerShell 7; Windows PowerShell 5.1 rejects them"),
    (re.compile(r"^\s*if\s+\[\s"), "POSIX test 'if [ … ]' is not PowerShell"),
    (re.compile(r"^\s*(fi|done|esac|then)\s*$"), "POSIX shell keyword"),
    (re.compile(r"^\s*export\s+\w+="), "'export X=' is POSIX shell; use $env:X = …"),
    (re.compile(r"\[\["), "'[[ … ]]' is bash"),
]
_CMDLET = re.compile(r"(?<![\w$.-])([A-Z][A-Za-z]+)-([A-Z][A-Za-z0-9]+)(?![\w-])")
_FUNCTION = re.compile(r"^\s*function\s+([\w-]+)", re.IGNORECASE | re.MULTILINE)
_PAIRS = {")": "(", "}": "{", "]": "["}


@dataclass(frozen=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def code_only(script: str) -> tuple[list[str], list[Problem]]:
    """Each line with strings, here-strings and comments blanked out (same line numbers)."""
    out: list[str] = []
    problems: list[Problem] = []
    lines = script.splitlines()
    here: str | None = None  # the closing token of an open here-string
    block_comment = False
    for number, line in enumerate(lines, 1):
        if here is not None:
            if line.startswith(here):
                here = None
                out.append(line[2:])
            else:
                out.append("")
            continue
        kept: list[str] = []
        i = 0
        while i < len(line):
            ch = line[i]
            if block_comment:
                end = line.find("#>", i)
                if end < 0:
                    break
                block_comment, i = False, end + 2
                continue
            if line.startswith("<#", i):
                block_comment, i = True, i + 2
                continue
            if ch == "#":
                break
            if line.startswith(("@'", '@"'), i) and line[i + 2 :].strip() == "":
                here = line[i + 1] + "@"
                break
            if ch in "'\"":
                end = _string_end(line, i)
                if end < 0:
                    problems.append(Problem(number, f"unterminated string starting at column {i + 1}"))
                    break
                kept.append(" " * 2)
                i = end + 1
                continue
            if ch == "`":  # escape: the next character is literal
                i += 2
                continue
            kept.append(ch)
            i += 1
        out.append("".join(kept))
    if here is not None:
        problems.append(Problem(len(lines), f"here-string not closed with {here}"))
    if block_comment:
        problems.append(Problem(len(lines), "block comment not closed with #>"))
    return out, problems


def _string_end(line: str, start: int) -> int:
    quote = line[start]
    i = start + 1
    while i < len(line):
        if quote == '"' and line[i] == "`":
            i += 2
            continue
        if line[i] == quote:
            if i + 1 < len(line) and line[i + 1] == quote:  # '' or "" is an escaped quote
                i += 2
                continue
            return i
        i += 1
    return -1


def check_powershell(script: str, *, require_version: str | None = None) -> list[Problem]:
    """Problems found in ``script`` (empty when it passes the checks listed in the module doc)."""
    code, problems = code_only(script)
    stack: list[tuple[str, int]] = []
    for number, line in enumerate(code, 1):
        for ch in line:
            if ch in "({[":
                stack.append((ch, number))
            elif ch in ")}]":
                if not stack or stack[-1][0] != _PAIRS[ch]:
                    problems.append(Problem(number, f"unbalanced {ch!r}"))
                else:
                    stack.pop()
    problems += [Problem(n, f"{ch!r} opened here is never closed") for ch, n in stack]
    defined = {name.lower() for name in _FUNCTION.findall(script)}
    for number, line in enumerate(code, 1):
        for pattern, message in _BASHISMS:
            if pattern.search(line):
                problems.append(Problem(number, message))
        for verb, noun in _CMDLET.findall(line):
            name = f"{verb}-{noun}"
            if name.lower() in defined:
                if verb not in APPROVED_VERBS:
                    problems.append(Problem(number, f"function {name} uses an unapproved verb {verb!r}"))
            elif name not in KNOWN_CMDLETS:
                problems.append(
                    Problem(number, f"unknown cmdlet {name} (not in Windows PowerShell 5.1's list)")
                )
    statements = [(n, line.strip()) for n, line in enumerate(code, 1) if line.strip()]
    param_at = next((n for n, text in statements if re.match(r"param\s*\(", text, re.IGNORECASE)), None)
    if param_at is not None and statements[0][0] != param_at:
        problems.append(Problem(param_at, "param(...) must come before any other statement"))
    if require_version and f"#Requires -Version {require_version}" not in script:
        problems.append(Problem(1, f"missing '#Requires -Version {require_version}'"))
    return sorted(problems, key=lambda p: p.line)
