"""An Azure provider on the ARM stand-in (VMs, run commands) and Azurite (queues, blobs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudkeep.providers.azure.provider import AzureProvider, create_azure_provider
from tests.support.arm_standin import ArmStandIn
from tests.support.peers import Azurite


@pytest.fixture
def azure(arm_standin: ArmStandIn, azurite: Azurite) -> Iterator[AzureProvider]:
    options = arm_standin.provider_options(
        storage_connection_string=azurite.connection_string, retry_backoff_factor=0.01
    )
    provider = create_azure_provider(arm_standin.credential(), options)
    yield provider
    provider.close()
