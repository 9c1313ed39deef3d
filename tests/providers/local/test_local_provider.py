"""The local provider end to end: inventory of a lab, commands, signed URLs, scoped credentials."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from cloudkeep.errors import ConfigurationError, NotFoundError, PermissionDeniedError
from cloudkeep.providers import InventoryScope, get_provider
from cloudkeep.providers.local import Lab, LocalProvider


def test_factory_is_registered_and_needs_a_lab(lab: Lab) -> None:
    provider = get_provider("local", {}, {"lab_dir": str(lab.path)})
    assert isinstance(provider, LocalProvider)
    assert provider.check_permissions() == []
    provider.close()
    with pytest.raises(ConfigurationError, match="lab_dir"):
        get_provider("local", {}, {})


def test_inventory_filters_and_tags(lab: Lab, local_provider: LocalProvider) -> None:
    lab.create_machine("web1", tags={"Env": "prod"})
    lab.create_machine("web2", tags={"env": "dev"})
    lab.create_machine("win1", platform="windows", tags={"env": "prod"}, secure_boot=True)
    inventory = local_provider.inventory
    assert [m.name for m in inventory.list_machines(InventoryScope())] == ["web1", "web2", "win1"]
    prod = inventory.list_machines(InventoryScope(include_tags={"env": "prod"}, exclude_ids=("win1",)))
    assert [m.name for m in prod] == ["web1"]
    win = inventory.get_machine("win1")
    assert win is not None and win.platform == "windows" and win.secure_boot is True
    inventory.set_tag("web2", "cloudkeep:server", "srv-a")
    assert [
        m.name for m in inventory.list_machines(InventoryScope(include_tags={"cloudkeep:server": "srv-a"}))
    ] == ["web2"]
    inventory.remove_tag("web2", "cloudkeep:server")
    assert "cloudkeep:server" not in inventory.get_machine("web2").tags  # type: ignore[union-attr]
    assert inventory.get_machine("nope") is None
    with pytest.raises(NotFoundError):
        inventory.set_tag("nope", "k", "v")


def test_command_returns_exit_code_and_full_output(lab: Lab, local_provider: LocalProvider) -> None:
    lab.create_machine("web1")
    machine = local_provider.inventory.get_machine("web1")
    assert machine is not None
    result = local_provider.commands.run(machine, "head -c 30000 /dev/zero | tr '\\0' 'a'; echo; exit 7")
    assert result.exit_code == 7 and not result.ok
    assert len(result.stdout) == 30001 and set(result.stdout.strip()) == {"a"}
    assert local_provider.commands.command_capacity(machine) is None


def test_signed_urls_are_enforced(local_provider: LocalProvider) -> None:
    storage = local_provider.storage
    storage.ensure_container("dist")
    storage.open_store("dist").put("agent/installer.sh", b"#!/bin/sh\necho install\n")
    url = storage.signed_url("dist", "agent/installer.sh", method="GET", expires_seconds=60)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"#!/bin/sh\necho install\n"

    def status(target: str, method: str = "GET", data: bytes | None = None) -> int:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(target, data=data, method=method), timeout=5
            ) as r:
                return int(r.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert status(url.replace("installer.sh", "other.sh")) == 403  # another object
    assert status(url[:-4] + ("0000" if not url.endswith("0000") else "1111")) == 403  # tampered signature
    assert status(url, method="PUT", data=b"evil") == 403  # GET URL used for PUT
    expired = storage.signed_url("dist", "agent/installer.sh", method="GET", expires_seconds=-1)
    assert status(expired) == 403
    put_url = storage.signed_url("dist", "uploads/result.txt", method="PUT", expires_seconds=60)
    assert status(put_url, method="PUT", data=b"done") == 201
    assert storage.open_store("dist").get("uploads/result.txt") == b"done"


def test_scoped_credentials_write_only_their_prefix(local_provider: LocalProvider) -> None:
    local_provider.storage.ensure_container("repo")
    creds = local_provider.storage.scoped_credentials("repo", "machines/web1/", expires_seconds=3600)
    assert creds.provider == "local" and creds.store_url.startswith("file:///")
    store = creds.open_store()
    store.put("machines/web1/pack-1", b"data")
    assert store.get("machines/web1/pack-1") == b"data"
    with pytest.raises(PermissionDeniedError):
        store.put("machines/web2/pack-1", b"intrusion")


def test_signed_url_outlives_the_provider_that_signed_it(lab: Lab) -> None:
    """The server builds a provider per request; the URL it hands a machine must keep working."""
    first = get_provider("local", {}, {"lab_dir": str(lab.path)})
    first.storage.ensure_container("dist")
    first.storage.open_store("dist").put("a.txt", b"A")
    url = first.storage.signed_url("dist", "a.txt", method="GET", expires_seconds=60)
    first.close()
    del first
    second = get_provider("local", {}, {"lab_dir": str(lab.path)})
    assert (
        second.storage.signed_url("dist", "a.txt", method="GET", expires_seconds=60).split("/o/")[0]
        == url.split("/o/")[0]
    )  # same key (from the lab), same server
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"A"
