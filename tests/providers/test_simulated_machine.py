"""The simulated machine shared by the local provider and the cloud stand-ins."""

from __future__ import annotations

import shutil

import pytest

from cloudkeep.errors import ConflictError, NotFoundError
from cloudkeep.providers.base import Platform
from cloudkeep.providers.local import Lab


def test_shell_script_runs_in_machine_context(lab: Lab) -> None:
    machine = lab.create_machine("web1", tags={"env": "prod"})
    outcome = machine.run('echo "$CLOUDKEEP_MACHINE_ID" && pwd && echo oops >&2 && touch made && exit 3')
    assert outcome.exit_code == 3
    assert outcome.stdout.splitlines() == ["web1", str(machine.root)]
    assert outcome.stderr == "oops\n"
    assert (machine.root / "made").exists()


def test_a_launcher_runs_scripts_inside_the_root_with_the_machine_paths(lab: Lab) -> None:
    """A stand-in launcher enters root/ by path prefix (the real one is ip netns exec … chroot, in
    tests/machine/test_oldroot_bullseye.py): the script is in root/tmp and sees no host paths."""
    machine = lab.create_machine("old", env={"EXTRA": "kept"})
    enter = 'cd "$0" && exec "$1" "$0$2"'
    machine.update(launcher=["sh", "-c", enter, str(machine.root)])
    outcome = machine.run('echo "$0"; echo "${CLOUDKEEP_MACHINE_ROOT:-none} $HOME $EXTRA"; pwd')
    assert outcome.exit_code == 0, outcome.stderr
    script, env, cwd = outcome.stdout.splitlines()
    assert script.startswith(f"{machine.root}/tmp/cloudkeep-runs/") and script.endswith(".sh")
    assert env == "none /root kept"
    assert cwd == str(machine.root)
    assert list((machine.root / "tmp/cloudkeep-runs").iterdir()) == []  # removed after the run


def test_a_malformed_launcher_is_refused_clearly(lab: Lab) -> None:
    machine = lab.create_machine("bad", launcher="chroot /somewhere")
    outcome = machine.run("echo never")
    assert outcome.exit_code == 1 and outcome.stdout == ""
    assert outcome.stderr == "machine bad: launcher must be a list of strings\n"


def test_timeout_kills_the_script(lab: Lab) -> None:
    machine = lab.create_machine("slow")
    outcome = machine.run("echo started; sleep 30", timeout=0.5)
    assert outcome.timed_out and outcome.exit_code == 124
    assert outcome.stdout == "started\n"


@pytest.mark.skipif(shutil.which("pwsh") is not None, reason="pwsh installed: real PowerShell runs instead")
def test_windows_probe_interpreter(lab: Lab) -> None:
    machine = lab.create_machine("win1", platform=Platform.WINDOWS, powershell_version="5.1.17763.316")
    outcome = machine.run(
        "$ErrorActionPreference = 'Stop'\n$PSVersionTable.PSVersion.ToString(); Get-ExecutionPolicy"
    )
    assert outcome.exit_code == 0
    assert outcome.stdout == "5.1.17763.316\nRemoteSigned\n"
    refused = machine.run("Get-ChildItem C:\\")
    assert refused.exit_code == 1 and "PowerShell cannot run here" in refused.stderr


def test_restricted_execution_policy_gives_the_windows_error(lab: Lab) -> None:
    machine = lab.create_machine("win2", platform="windows", execution_policy="Restricted")
    outcome = machine.run("$PSVersionTable.PSVersion")
    assert outcome.exit_code == 1
    assert "running scripts is disabled on this system" in outcome.stderr


def test_lab_lists_finds_tags_and_removes(lab: Lab) -> None:
    lab.create_machine("a", machine_id="i-0123456789abcdef0")
    lab.create_machine("b", platform="windows")
    with pytest.raises(ConflictError):
        lab.create_machine("a")
    assert [m.name for m in lab.list()] == ["a", "b"]
    found = lab.get("i-0123456789abcdef0")
    assert found is not None and found.name == "a"
    found.set_tag("cloudkeep:server", "srv-1")
    assert lab.get("a").describe().tags == {"cloudkeep:server": "srv-1"}  # type: ignore[union-attr]
    found.remove_tag("cloudkeep:server")
    assert found.describe().tags == {}
    lab.remove("b")
    assert lab.get("b") is None
    with pytest.raises(NotFoundError):
        lab.remove("b")


def test_stopped_machine_refuses_commands(lab: Lab) -> None:
    machine = lab.create_machine("off", state="stopped")
    outcome = machine.run("echo hi")
    assert outcome.exit_code != 0 and "stopped" in outcome.stderr
