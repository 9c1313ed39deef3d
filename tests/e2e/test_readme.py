"""The README's commands stay true: every `cloudkeep …` line in its shell blocks names a real command
and only options that command has (checked against the Click command tree, no subprocess)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer.main

from cloudkeep.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"


def _command_lines() -> list[str]:
    """`cloudkeep …` invocations in ```sh blocks, with continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"\s*(?:;|&&|\|\|)\s*", line):
                words = part.split()
                while words and ("=" in words[0] or words[0] in ("sudo", "export")):
                    words = words[1:]
                if words and words[0].endswith("cloudkeep") and "make" not in words:
                    lines.append(" ".join(words))
    return lines


def _resolve(argv: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command named by ``argv`` and the words left for it (typer vendors its own Click)."""
    command: Any = typer.main.get_command(app)
    rest = argv
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"no command {rest[0]!r} in {argv}"
        command, rest = sub, rest[1:]
    return command, rest


def test_readme_has_the_tour_commands() -> None:
    lines = _command_lines()
    assert len(lines) >= 15, lines
    for needed in ("credential add", "repository add", "protection-group create", "protection-group rescan",
                   "job create", "job start", "session watch", "restore files", "host protect"):  # fmt: skip
        assert any(f" {needed}" in f" {line}" for line in lines), needed


def test_every_readme_command_and_option_exists() -> None:
    for line in _command_lines():
        argv = shlex.split(line.replace("<", "").replace(">", ""))[1:]
        command, rest = _resolve(argv)
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in known, f"{line}: {word} is not an option of {command.name}"
