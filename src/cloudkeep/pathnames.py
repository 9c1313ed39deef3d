"""File names as the file system's bytes, and the one way they are shown as text.

A Linux file name is any bytes but NUL and ``/``. Python hands them over as ``str`` with every
byte that is not UTF-8 turned into a lone surrogate (U+DC80..U+DCFF, ``os.fsdecode``'s
surrogateescape). The engine keeps those strings as they are (trees store them as JSON
``\\udcXX`` escapes), so backup and restore recreate the same bytes.

Text that leaves the engine (queue messages, the server's catalog and API, a terminal) must be
valid Unicode, which a lone surrogate is not. There a path is *displayed* with each byte that
is not UTF-8 written ``\\xNN`` (``caf\\xe9``), and where it must stay exact it travels with its
bytes too: ``{"path": "/srv/caf\\xe9", "path_b64": "L3Nydi9jYWbp"}`` (``path_b64`` only when the
two differ). A machine given a displayed path back resolves it against the tree
(``cloudkeep.repo.restorer.resolve_path``).
"""

from __future__ import annotations

import base64
from typing import Any


def is_text(path: str) -> bool:
    """True when ``path`` is valid Unicode (no surrogate-escaped bytes): it can be sent as it is."""
    if path.isascii():
        return True
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_bytes(path: str) -> bytes:
    """The name's bytes: what ``os.fsencode`` gives on Linux, and never an error for other strings."""
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (a Windows name): keep it exact
        return path.encode("utf-8", "surrogatepass")


def from_bytes(raw: bytes) -> str:
    """The engine's string for a name's bytes (the inverse of ``to_bytes`` for Linux names)."""
    return raw.decode("utf-8", "surrogateescape")


def display(path: str) -> str:
    """``path`` as valid Unicode: bytes that are not UTF-8 become ``\\xNN`` (readable, not exact)."""
    if is_text(path):
        return path
    return to_bytes(path).decode("utf-8", "backslashreplace")


def path_fields(path: str, key: str = "path") -> dict[str, str]:
    """``{key: displayed}``, plus ``{key}_b64`` with the exact bytes when they are not valid UTF-8."""
    if is_text(path):
        return {key: path}
    return {key: display(path), f"{key}_b64": base64.b64encode(to_bytes(path)).decode("ascii")}


def safe_text(value: Any) -> Any:
    """``value`` with every string displayed (dict keys too): what a JSON message can carry."""
    if isinstance(value, str):
        return value if is_text(value) else display(value)
    if isinstance(value, dict):
        return {safe_text(k): safe_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_text(v) for v in value]
    return value
