"""Administrator input the CLI must refuse: exit code 2, one ``error:`` line naming the problem, no
traceback — and nothing stored. Embedded mode on the real state store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudkeep.server.context import ServerContext
from tests.cli.test_cli_core import Invoke, ok, run  # noqa: F401  (run: the embedded-CLI fixture)
from tests.server.fixtures import Seeded

JOB = ("job", "create", "bad", "--repository", "{backup}", "--group", "{group}")
REPOSITORY = ("repository", "add", "bad", "--credential", "{credential}", "--password-stdin")

BAD_INPUT = {
    "notifications-broken-json": (
        (*JOB, "--option", 'notifications={"on": [}'),
        "--option notifications: the value is not valid JSON",
    ),
    "notifications-not-an-object": (
        (*JOB, "--option", "notifications=email"),
        "option notifications: Input should be a valid dictionary",
    ),
    "notifications-email-without-host": (
        (*JOB, "--option", 'notifications={"email": {"to": "ops@example.com"}}'),
        "option notifications.email.smtp_host: Field required",
    ),
    "notifications-unknown-channel": (
        (*JOB, "--option", 'notifications={"slack": {"url": "https://x"}}'),
        "option notifications: unknown option slack; known options: email, on, webhook",
    ),
    "bandwidth-not-a-size": (
        (*JOB, "--option", "bandwidth_limit=10XB"),
        "option bandwidth_limit: '10XB' is not a size: use e.g. 10MiB, 10MB or a number of bytes",
    ),
    "parallel-not-a-number": (
        (*JOB, "--option", "parallel_machines=two"),
        "option parallel_machines: Input should be a valid integer",
    ),
    "parallel-zero": ((*JOB, "--option", "parallel_machines=0"), "option parallel_machines: Input should be"),
    "compression-out-of-range": (
        (*JOB, "--option", "compression_level=99"),
        "option compression_level: Input should be less than or equal to 22",
    ),
    "timeout-not-a-duration": (
        (*JOB, "--option", "task_timeout_seconds=soon"),
        "option task_timeout_seconds: 'soon' is not a duration: use e.g. 90m, 2h",
    ),
    "unknown-option": (
        (*JOB, "--option", "frobnicate=1"),
        "unknown option frobnicate; known options: bandwidth_limit, cancel_grace_seconds, compression_level",
    ),
    "option-not-key-value": ((*JOB, "--option", "prune"), "--option 'prune' is not key=value"),
    "mode-bogus": ((*JOB, "--mode", "bogus"), "mode: Input should be 'entire', 'volume' or 'file'"),
    "include-relative": ((*JOB, "--include", "etc/nginx"), "include path 'etc/nginx' is relative"),
    "volume-without-devices": ((*JOB, "--mode", "volume"), "a volume job needs the devices to image"),
    "entire-with-include": (
        (*JOB, "--mode", "entire", "--include", "/etc"),
        "an entire-machine job backs up every file system and takes no --include",
    ),
    "location-under-proc": (
        (*REPOSITORY, "--location", "/proc/nope"),
        "storage location '/proc/nope' is under /proc, a kernel file system",
    ),
    "location-is-a-file": (
        (*REPOSITORY, "--location", "{a_file}"),
        "is a file, not a folder",
    ),
    "location-cannot-be-created": (
        (*REPOSITORY, "--location", "{a_file}/below"),
        "cannot create the folder",
    ),
    "immutability-on-a-folder": (
        (*REPOSITORY, "--location", "{a_folder}", "--immutability-days", "7"),
        "cannot enforce immutability: files in it can always be deleted",
    ),
    "upgrade-without-machines": (("machine", "upgrade"), "name the machines to upgrade"),
}


@pytest.mark.parametrize(("args", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_error_line_and_exit_code_2(
    run: Invoke,  # noqa: F811
    ctx: ServerContext,
    seeded: Seeded,
    tmp_path: Path,
    args: tuple[str, ...],
    message: str,
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    names = {
        "backup": seeded.backup,
        "group": seeded.group,
        "credential": seeded.credential,
        "a_file": str(a_file),
        "a_folder": str(tmp_path / "folder"),
    }
    result = run(
        *(a.format(**names) if a.startswith("{") else a for a in args), input="correct-horse-battery\n"
    )
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert json.loads(ok(run("job", "list", "--json")))["total"] == 0
    assert [r["name"] for r in json.loads(ok(run("repository", "list", "--json")))["items"]] == sorted(
        [seeded.distribution, seeded.backup]
    )


def test_job_update_refuses_a_bad_option_and_keeps_the_old_ones(run: Invoke, seeded: Seeded) -> None:  # noqa: F811
    ok(run(*(a.format(backup=seeded.backup, group=seeded.group) for a in JOB), "--option", "prune=false"))
    result = run("job", "update", "bad", "--option", "bandwidth_limit=fast")
    assert result.exit_code == 2 and "error: option bandwidth_limit: 'fast' is not a size" in result.output
    assert json.loads(ok(run("job", "show", "bad", "--json")))["options"] == {"prune": False}


def test_options_are_typed_and_stored_normalised(run: Invoke, seeded: Seeded) -> None:  # noqa: F811
    hook = '{"on": ["failed"], "webhook": {"url": "https://hooks.example.com/x", "timeout": "30s"}}'
    given = (
        "bandwidth_limit=10MiB",
        "task_timeout_seconds=90m",
        "parallel_machines=2",
        f"notifications={hook}",
    )
    args = [a.format(backup=seeded.backup, group=seeded.group) for a in JOB]
    ok(run(*args, "--include", "/srv", *(x for pair in given for x in ("--option", pair))))
    assert json.loads(ok(run("job", "show", "bad", "--json")))["options"] == {
        "bandwidth_limit": 10 * 1024 * 1024,
        "task_timeout_seconds": 5400.0,
        "parallel_machines": 2,
        "notifications": {
            "on": ["failed"],
            "webhook": {"url": "https://hooks.example.com/x", "timeout": 30.0},
        },
    }
