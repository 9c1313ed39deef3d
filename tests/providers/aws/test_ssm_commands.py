"""SSM Run Command through moto, executed by the SSM agent stand-in (tests/support/ssm_standin.py).

moto records commands but runs nothing; the stand-in runs each script in a simulated machine and
writes output to the S3 output prefix like the real agent, which is where the channel reads it.
"""

from __future__ import annotations

import shutil

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers import get_provider
from cloudkeep.providers.aws.provider import AwsProvider
from cloudkeep.providers.base import Machine, Platform
from tests.providers.aws.conftest import KEYS
from tests.support.ssm_standin import SsmStandIn


def _machine(aws: AwsProvider, instance_id: str) -> Machine:
    machine = aws.inventory.get_machine(instance_id)
    assert machine is not None
    return machine


def test_exit_code_and_full_output_beyond_ssm_inline_limit(
    aws: AwsProvider, ssm_standin: SsmStandIn, unique_name: str
) -> None:
    simulated = ssm_standin.create_instance(unique_name)
    script = "head -c 30000 /dev/zero | tr '\\0' 'x'\necho\necho warning >&2\nexit 5"
    result = aws.commands.run(_machine(aws, simulated.id), script, timeout=60)
    ssm_standin.assert_alive()
    assert result.exit_code == 5, result
    assert len(result.stdout) == 30001  # SSM's inline output stops at 24,000 characters
    assert result.stderr == "warning\n"
    assert result.command_id


def test_script_runs_in_the_instance_machine(
    aws: AwsProvider, ssm_standin: SsmStandIn, unique_name: str
) -> None:
    simulated = ssm_standin.create_instance(unique_name)
    result = aws.commands.run(
        _machine(aws, simulated.id), 'echo "$CLOUDKEEP_MACHINE_ID" > id.txt; cat id.txt'
    )
    assert result.ok and result.stdout == f"{simulated.id}\n"
    assert (simulated.root / "id.txt").read_text() == f"{simulated.id}\n"


@pytest.mark.skipif(shutil.which("pwsh") is not None, reason="pwsh installed: real PowerShell runs instead")
def test_windows_instance_gets_powershell(
    aws: AwsProvider, ssm_standin: SsmStandIn, unique_name: str
) -> None:
    simulated = ssm_standin.create_instance(
        unique_name, image_id="ami-12c6146b", powershell_version="5.1.14393.0"
    )
    machine = _machine(aws, simulated.id)
    assert machine.platform == Platform.WINDOWS
    result = aws.commands.run(machine, "$PSVersionTable.PSVersion.ToString()")
    assert result.ok and result.stdout.strip() == "5.1.14393.0"


def test_timeout_is_reported(aws: AwsProvider, ssm_standin: SsmStandIn, unique_name: str) -> None:
    simulated = ssm_standin.create_instance(unique_name)
    result = aws.commands.run(_machine(aws, simulated.id), "sleep 5", timeout=1)
    assert result.timed_out and not result.ok


def test_output_bucket_is_required(moto_server: object, unique_name: str) -> None:
    provider = get_provider("aws", KEYS, {"endpoint_url": moto_server.endpoint})  # type: ignore[attr-defined]
    machine = Machine(id="i-0123", name="x", platform=Platform.LINUX, state="running", region="us-east-1")
    with pytest.raises(ConfigurationError, match="ssm_output_bucket"):
        provider.commands.run(machine, "true")


def test_command_nobody_runs_is_not_reported_as_success(aws: AwsProvider) -> None:
    """Real SSM refuses unknown instances (InvalidInstanceId → NotFoundError); moto accepts the command
    and says Success at once. With no output in S3 the channel must not call that a success."""
    machine = Machine(
        id="i-00000000000000bad", name="x", platform=Platform.LINUX, state="running", region="us-east-1"
    )
    result = aws.commands.run(machine, "true", timeout=2)
    assert not result.ok and result.timed_out
