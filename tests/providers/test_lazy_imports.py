"""Which cloud SDKs a process imports: only those of the clouds it uses (issue 17, point 5).

Each case runs in a fresh interpreter (this test process has long since imported every SDK) and
prints the SDK modules it ended up with. Nothing connects anywhere: building clients is enough.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from cloudkeep.providers.registry import KNOWN_PROVIDERS, provider_facts, provider_kinds
from tests.support.interpreter import fresh_interpreter

AWS_SDK = ("boto3", "botocore", "s3transfer")
AZURE_SDK = ("azure",)
AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
)


def _sdk_modules_after(code: str, tmp_path: Path) -> dict[str, list[str]]:
    """Run ``code`` in a new interpreter; return the SDK modules it imported, by SDK."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json, sys
        roots = {name.split(".")[0] for name in sys.modules}
        print(json.dumps({"aws": sorted(roots & {"boto3", "botocore", "s3transfer"}),
                          "azure": sorted(roots & {"azure"})}))
        """
    )
    found: dict[str, list[str]] = json.loads(fresh_interpreter(script, tmp_path)[-1])
    return found


def test_machine_side_and_local_repository_import_no_cloud_sdk(tmp_path: Path) -> None:
    found = _sdk_modules_after(
        f"""
        import cloudkeep.providers, cloudkeep.storage
        import cloudkeep.machine.message_service
        from cloudkeep.providers.queues import open_queue_from_info
        from cloudkeep.providers.registry import all_provider_facts, get_provider
        from cloudkeep.repo.repository import Repository
        from cloudkeep.storage import open_store

        all_provider_facts()  # names, channels, credential fields: no SDK needed
        store = open_store({(tmp_path / "repo").as_uri()!r})
        Repository.create(store, "pw").close()
        Repository.open(store, "pw").close()
        lab = get_provider("local", {{}}, {{"lab_dir": "lab"}})
        lab.queues.ensure_queue("q")
        open_queue_from_info(lab.queues.connection_info("q")).send("hello")
        lab.close()
        """,
        tmp_path,
    )
    assert found == {"aws": [], "azure": []}


def test_aws_machine_imports_no_azure(tmp_path: Path) -> None:
    found = _sdk_modules_after(
        """
        from cloudkeep.providers.queues import open_queue_from_info
        from cloudkeep.providers.registry import get_provider
        from cloudkeep.storage import open_store

        keys = {"aws_access_key_id": "x", "aws_secret_access_key": "y"}
        open_store("s3://bucket/prefix", endpoint_url="http://127.0.0.1:9", region="us-east-1", **keys)
        endpoint = "http://127.0.0.1:9"
        open_queue_from_info({"kind": "aws", "name": "q", "queue_url": endpoint + "/q",
                              "region": "us-east-1", "endpoint_url": endpoint, "credentials": keys})
        get_provider("aws", keys, {"endpoint_url": "http://127.0.0.1:9"})
        """,
        tmp_path,
    )
    assert found["aws"] and found["azure"] == []


def test_the_s3_backend_leaves_the_response_parsers_to_its_client_thread(tmp_path: Path) -> None:
    """Importing the S3 backend reads botocore's exceptions only: ``botocore.parsers`` (with urllib3,
    ~0.12 s) comes with the client, built beside a repository's key derivation, not before it."""
    watched = ("botocore.parsers", "urllib3")
    code = f"import sys, cloudkeep.storage.s3\nprint(*(name in sys.modules for name in {watched!r}))"
    assert fresh_interpreter(code, tmp_path)[-1].split() == ["False", "False"]


def test_azure_machine_imports_no_boto(tmp_path: Path) -> None:
    found = _sdk_modules_after(
        f"""
        from cloudkeep.providers.queues import open_queue_from_info
        from cloudkeep.storage import open_store

        open_store("azure://container/prefix", connection_string={AZURITE!r})
        endpoint = "http://127.0.0.1:9/devstoreaccount1"
        open_queue_from_info({{"kind": "azure", "name": "q", "queue_endpoint": endpoint,
                               "blob_endpoint": endpoint, "queue_sas": "sv=x", "dead_letter_sas": "sv=x",
                               "payload_sas": "sv=x"}})
        """,
        tmp_path,
    )
    assert found["azure"] and found["aws"] == []


@pytest.mark.parametrize("kind", sorted(KNOWN_PROVIDERS))
def test_each_provider_states_its_facts(kind: str) -> None:
    """The facts name this provider, and the modules they point at exist (imported on first use)."""
    from pkgutil import resolve_name

    facts = provider_facts(kind)
    assert facts.kind == kind and kind in provider_kinds()
    assert facts.fallback_channel and facts.server_queue_wait > 0
    assert callable(resolve_name(facts.factory)) and callable(resolve_name(facts.queue_opener))
    for field in facts.credential_fields:
        assert field.option.startswith("--") and field.help
        assert field.prompt_after is None or facts.field(field.prompt_after) is not None


@pytest.mark.parametrize("kind", ["gcp", "os:system", "cloudkeep.providers.aws.facts:FACTS", ""])
def test_unknown_kinds_are_refused_not_imported(kind: str) -> None:
    """A kind read from a message or config selects from the table; it is never a module path."""
    from cloudkeep.errors import ConfigurationError
    from cloudkeep.providers.queues import open_queue_from_info
    from cloudkeep.providers.registry import get_provider

    with pytest.raises(ConfigurationError, match="unknown"):
        provider_facts(kind)
    with pytest.raises(ConfigurationError, match="unknown cloud provider"):
        get_provider(kind, {})
    with pytest.raises(ConfigurationError, match="unknown kind"):
        open_queue_from_info({"kind": kind, "name": "q"})
