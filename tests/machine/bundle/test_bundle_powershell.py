"""The Windows side, checked statically: ``pwsh`` is not packaged for Debian (see pscheck's doc).

Every PowerShell script cloudkeep ships or sends passes the check, and the check itself catches
the mistakes it claims to catch (so a pass means something).
"""

from __future__ import annotations

import pytest

from cloudkeep.machine.bundle.builder import installer_text
from cloudkeep.machine.bundle.pscheck import check_powershell, code_only
from cloudkeep.server.rescan import scripts


def test_the_windows_installer_passes_and_requires_powershell_5_1() -> None:
    text = installer_text("windows").decode()
    assert check_powershell(text, require_version="5.1") == []
    for needed in (
        "Get-FileHash",
        "New-Service",
        "sc.exe",
        "-NoStart",
        "CLOUDKEEP-KEYS",
        "CLOUDKEEP-INSTALLED",
    ):
        assert needed in text
    for service in ("cloudkeep-message", "cloudkeep-agent", "cloudkeep-transport"):
        assert f"Name = '{service}'" in text


@pytest.mark.parametrize(
    "script",
    [
        scripts.WINDOWS_PROBE,
        scripts.WINDOWS_START,
        scripts.windows_bootstrap(
            version="0.1.0",
            url="https://acct.blob.core.windows.net/dist/b.zip?sv=2024&sig=a%2Bb'c&se=x",
            sha256="ab" * 32,
            config={"machine_id": "m", "server_public_key": "k"},
        ),
    ],
    ids=["probe", "start", "bootstrap"],
)
def test_scripts_sent_to_windows_machines_pass(script: str) -> None:
    assert check_powershell(script) == []


def test_bootstrap_quotes_the_url_and_verifies_before_expanding() -> None:
    script = scripts.windows_bootstrap(version="1", url="http://h/o?sig=it's", sha256="00", config={})
    assert "-Uri 'http://h/o?sig=it''s'" in script
    assert script.index("Get-FileHash") < script.index("Expand-Archive") < script.index("install.ps1")


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("Get-Service -Name x && Start-Service x", "'&&' / '||' chains"),
        ("if [ -f x ]; then\n  Write-Output y\nfi", "POSIX test"),
        ("export FOO=1", "'export X='"),
        ("if ($a) {\n  Write-Output 'b'\n", "never closed"),
        ("Write-Output (1 + 2))", "unbalanced ')'"),
        ("Write-Output 'not closed", "unterminated string"),
        ("$x = @'\nhere\n", "here-string not closed"),
        ("Install-CloudkeepMagic -Now", "unknown cmdlet Install-CloudkeepMagic"),
        ("function Frobnicate-Thing { }\nFrobnicate-Thing", "unapproved verb 'Frobnicate'"),
        ("Write-Output 1\nparam([string]$A)", "param(...) must come before"),
    ],
)
def test_the_check_catches_what_it_claims(script: str, expected: str) -> None:
    problems = check_powershell(script)
    assert any(expected in str(p) for p in problems), problems


def test_strings_comments_and_here_strings_do_not_count_as_code() -> None:
    script = (
        "# a comment with && and (\n"
        "<# block ( comment\n  spanning lines #>\n"
        "$a = 'it''s ( && fine'\n"
        '$b = "quote `" and ) inside"\n'
        "$c = @'\nfi\n( unbalanced in a here-string\n'@\n"
        "Write-Output $a $b $c\n"
    )
    assert check_powershell(script) == []
    code, problems = code_only(script)
    assert problems == [] and len(code) == len(script.splitlines())
