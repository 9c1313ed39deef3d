"""Include/exclude masks: shell globs over the machine's absolute paths, shared by backup and browse."""

from __future__ import annotations

import functools
import os
import re


def machine_path(path: str, prefix: str) -> str:
    """How the backed-up machine names the host path ``path`` when its "/" is the host folder
    ``prefix`` ("": the host's own): masks and manifests use the machine's view."""
    return (path[len(prefix) :] or "/") if prefix else path


def matches_any(patterns: list[str], path: str, prefix: str = "") -> bool:
    """One of ``patterns`` matches the host path ``path`` as the machine names it (``prefix``: the
    host folder holding its "/")."""
    machine = machine_path(path, prefix)
    return any(matches(p, machine) for p in patterns)


def matches(pattern: str, path: str) -> bool:
    """Glob match: a pattern without ``/`` matches the base name, otherwise the absolute path."""
    if "/" not in pattern:
        return glob_regex(pattern).fullmatch(os.path.basename(path)) is not None
    return glob_regex(pattern.rstrip("/")).fullmatch(path) is not None


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell glob as a regex: ``*``, ``?`` and ``[...]`` stay inside one path component and
    ``**`` spans any number of them (``/home/*/.cache`` is one level, ``/srv/**/*.log`` any depth),
    as in restic and .gitignore; ``fnmatch`` would let ``*`` cross ``/``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole directories
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif (
            pattern[i] == "["
            and (end := pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)) > 0
        ):
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\")
            body = "\\" + body if body.startswith("^") else body  # a literal caret, not regex negation
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)
