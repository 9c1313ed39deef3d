"""An agent installed by an older bundle (no registered agent level) is reported ``outdated`` by
rescan, refused the commands it is too old for, and upgraded by a new bundle: local provider, with
real installs into simulated machines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.rescan_support import RescanWorld

from cloudkeep.machine.keys import AGENT_LEVEL
from cloudkeep.providers.local import Lab
from cloudkeep.server.agent_compat import AgentOutdatedError
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher
from cloudkeep.server.rescan import set_bundle_version, start_rescan

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path, lab: Lab) -> Iterator[RescanWorld]:
    w = RescanWorld.create(tmp_path / "home", lab)
    yield w
    w.close()


def test_an_agent_without_a_level_is_outdated_until_a_new_bundle_upgrades_it(world: RescanWorld) -> None:
    world.linux("web1")
    assert world.session(start_rescan(world.ctx, world.group_id, wait=True)).state == "success"
    row = world.machines()["web1"]
    assert row.agent_level == AGENT_LEVEL  # registered with its keys at install
    with world.ctx.db() as session:  # what an agent of a bundle from before levels registered
        stored = session.get(DiscoveredMachine, row.id)
        assert stored is not None
        stored.agent_level = None

    world.update_group(auto_update=False)
    checked = world.session(start_rescan(world.ctx, world.group_id, wait=True))
    row = world.machines()["web1"]
    assert row.status == "outdated"
    assert row.status_reason == "agent level 1 installed, this server needs level 2; auto-update is off"
    assert checked.state == "warning" and checked.stats["outdated"] == 1
    dispatcher = Dispatcher(world.ctx)
    with pytest.raises(AgentOutdatedError, match=r"machine web1 runs agent level 1; .* for `check`; nothing"):
        dispatcher.send(row.id, "check", {})

    world.update_group(auto_update=True)
    set_bundle_version(world.ctx, "0.1.0.post3")
    upgraded = world.session(start_rescan(world.ctx, world.group_id, wait=True))
    assert upgraded.state == "success", upgraded.reason
    assert upgraded.stats["installed"] == 1
    row = world.machines()["web1"]
    assert row.status == "deployed" and row.agent_level == AGENT_LEVEL and row.agent_version == "0.1.0.post3"
    # the command now reaches the agent (which fails it for want of a repository, as it should)
    command_id = dispatcher.send(row.id, "check", {})
    with pytest.raises(CommandFailed, match="no sealed secrets"):
        dispatcher.wait(command_id, timeout=60)
