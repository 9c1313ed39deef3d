"""Which agent level each command needs: the one table the dispatcher and rescan consult.

Each agent registers its level (``cloudkeep.machine.keys.AGENT_LEVEL``) with its public keys at
install; one installed before levels existed registered none and counts as level 1. A command an
agent is too old to understand is refused before anything is recorded or sent (an older agent
would fail it with a confusing error, e.g. a store option it does not know), and rescan reports
such a machine ``outdated`` and installs the current bundle.
"""

from __future__ import annotations

from typing import Any

from cloudkeep.errors import ConflictError
from cloudkeep.machine.keys import AGENT_LEVEL

LEGACY_LEVEL = 1  # an agent that registered no level

# Level 2: every command that opens the repository gets access options (append-only local
# stores, writer bundles) that level-1 agents refuse.
NEEDED_LEVEL: dict[str, int] = {
    "backup": 2,
    "restore": 2,
    "restore_volume": 2,
    "browse": 2,
    "check": 2,
    "retention": 2,
}
SERVER_NEEDS = max(NEEDED_LEVEL.values())  # what rescan upgrades every agent to
assert SERVER_NEEDS <= AGENT_LEVEL, "the bundle this server installs must provide every level it needs"


class AgentOutdatedError(ConflictError):
    """The machine's agent is older than this server needs for a command; nothing was sent."""


def agent_level(registered: int | None) -> int:
    """The level a machine's agent runs: what it registered, else the legacy level."""
    return registered if registered is not None else LEGACY_LEVEL


def needed_level(kind: str) -> int:
    return NEEDED_LEVEL.get(kind, LEGACY_LEVEL)


def require_level(machine: str, registered: int | None, kind: str) -> None:
    """Refuse ``kind`` for a machine whose agent is too old (``machine`` names it in the message)."""
    level, needed = agent_level(registered), needed_level(kind)
    if level < needed:
        raise AgentOutdatedError(
            f"machine {machine} runs agent level {level}; this server needs agent level ≥ {needed} "
            f"for `{kind}`; nothing was sent to the machine",
            hint=f"`cloudkeep machine upgrade {machine}` installs the current agent",
        )


def outdated_reason(registered: int | None) -> str | None:
    """Why rescan must upgrade this agent, or ``None`` when it runs every command this server sends."""
    level = agent_level(registered)
    if level >= SERVER_NEEDS:
        return None
    return f"agent level {level} installed, this server needs level {SERVER_NEEDS}"


def split_registration(reported: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """An installer's report as (the public keys to store, the agent level or ``None``).

    The report comes from the machine: a level that is not a small positive integer is ignored
    (the agent then counts as legacy and is upgraded), never trusted.
    """
    keys = {k: v for k, v in reported.items() if k != "agent_level"}
    level = reported.get("agent_level")
    valid = isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= 1000
    return keys, level if valid else None
