"""Reusable provider fixtures (registered from tests/conftest.py via ``pytest_plugins``).

* ``lab``: an empty ``Lab`` of simulated machines in a temporary folder;
* ``local_provider``: the local provider over that lab;
* ``ssm_standin`` / ``arm_standin``: the SSM agent and Azure Resource Manager stand-ins
  (see tests/support/ssm_standin.py and arm_standin.py), when present.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.providers.local import Lab, LocalProvider
from cloudkeep.providers.local.provider import create_local_provider
from tests.support.arm_standin import ArmStandIn
from tests.support.peers import MotoServer
from tests.support.ssm_standin import SsmStandIn


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "lab")


@pytest.fixture
def local_provider(lab: Lab) -> Iterator[LocalProvider]:
    provider = create_local_provider({}, {"lab_dir": str(lab.path)})
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def ssm_standin(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsmStandIn]:
    """The SSM agent stand-in serving moto (us-east-1); create instances with ``create_instance``.

    One per module, not per session: it polls moto for every instance of its lab ten times a second,
    which kept the stand-in and moto busy (and growing with the instances) for the rest of the run."""
    standin = SsmStandIn.start(moto_server.endpoint, "us-east-1", tmp_path_factory.mktemp("ssm-lab"))
    yield standin
    standin.stop()


@pytest.fixture
def arm_standin(tmp_path: Path) -> Iterator[ArmStandIn]:
    """The Azure Resource Manager stand-in (HTTPS on loopback) with its own lab of VMs."""
    standin = ArmStandIn(tmp_path / "arm")
    yield standin
    standin.close()
