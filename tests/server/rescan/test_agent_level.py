"""An agent installed by an older bundle (no registered agent level) is reported ``outdated`` by
rescan, refused the commands it is too old for, and upgraded by a new bundle: local provider, with
real installs into simulated machines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.rescan_support import RescanWorld

from cloudkeep.errors import ConfigurationError
from cloudkeep.machine.keys import AGENT_LEVEL
from cloudkeep.providers.local import Lab
from cloudkeep.server.agent_compat import AgentOutdatedError
from cloudkeep.server.db.models import DiscoveredMachine, ProtectionGroup
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher
from cloudkeep.server.rescan import set_bundle_version, start_rescan, wait_for_session
from cloudkeep.server.services.machines import list_machines
from cloudkeep.server.services.operations import upgrade_machines
from cloudkeep.server.services.schemas import MachineUpgrade

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


def test_machine_upgrade_installs_the_bundle_with_auto_update_off(world: RescanWorld) -> None:
    world.linux("web1")
    world.linux("web2")
    assert world.session(start_rescan(world.ctx, world.group_id, wait=True)).state == "success"
    rows = world.machines()
    with world.ctx.db() as session:  # both run an agent from before levels
        for name in ("web1", "web2"):
            stored = session.get(DiscoveredMachine, rows[name].id)
            assert stored is not None
            stored.agent_level = None
    world.update_group(auto_update=False)
    listed = {m.name: m for m in list_machines(world.ctx).items}
    assert listed["web1"].upgrade_reason == (
        "agent level 1 installed, this server needs level 2: run `cloudkeep machine upgrade web1`"
    )

    with pytest.raises(ConfigurationError, match="name the machines to upgrade"):
        upgrade_machines(world.ctx, MachineUpgrade())
    started = upgrade_machines(world.ctx, MachineUpgrade(machines=["web1"]))
    assert len(started.session_ids) == 1
    assert wait_for_session(world.ctx, started.session_ids[0], timeout=300) == "success"

    upgraded = world.session(started.session_ids[0])
    assert upgraded.stats["upgrade"] is True
    install = next(detail for step, _, detail in world.steps("web1") if step == "install")
    assert "agent key registered" in install  # the bundle (the same version here) was installed again
    assert upgraded.stats["found"] == 1  # only the machine named
    rows = world.machines()
    assert rows["web1"].status == "deployed" and rows["web1"].agent_level == AGENT_LEVEL
    assert rows["web2"].agent_level is None  # not named: left as it was
    listed = {m.name: m for m in list_machines(world.ctx).items}
    assert listed["web1"].upgrade_reason is None and listed["web2"].upgrade_reason is not None
    with world.ctx.db() as session:
        group = session.get(ProtectionGroup, world.group_id)
        assert group is not None and group.auto_update is False  # the group's setting is unchanged
