"""The S3 client's construction: what one process shares between stores and what it must not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.storage import open_store
from cloudkeep.storage.base import read_exactly
from cloudkeep.storage.s3 import S3Store, _S3Range
from tests.storage.conftest import make_s3_bucket


def test_stores_share_the_parsed_models_not_credentials(
    aws_options: dict[str, Any], unique_name: str
) -> None:
    make_s3_bucket(aws_options, unique_name)
    first = open_store(f"s3://{unique_name}/a", **aws_options)
    assert isinstance(first, S3Store)
    first.put("k", b"one")
    loader = first.session.get_component("data_loader")
    cached = len(loader._cache)
    second = open_store(f"s3://{unique_name}/a", **aws_options)
    assert isinstance(second, S3Store)
    assert second.session.get_component("data_loader") is loader
    assert len(loader._cache) == cached  # nothing read or parsed again for the second client
    assert second.get("k") == b"one"
    # Credentials stay per store, whatever the loader.
    wrong = open_store(f"s3://{unique_name}/a", **{**aws_options, "aws_access_key_id": "other"})
    assert isinstance(wrong, S3Store)
    assert wrong.session.get_component("data_loader") is loader
    assert wrong.client._request_signer._credentials.access_key == "other"
    assert second.client._request_signer._credentials.access_key == aws_options["aws_access_key_id"]


def test_another_data_path_gets_its_own_loader(
    aws_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = open_store("s3://bucket/p", **aws_options)
    assert isinstance(default, S3Store)
    shared = default.session.get_component("data_loader")  # set up (on its thread) before the change
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    custom = open_store("s3://bucket/p", **aws_options)
    assert isinstance(custom, S3Store)
    loader = custom.session.get_component("data_loader")
    assert loader is not shared
    assert str(tmp_path) in loader.search_paths


# Regions of every partition botocore ships, and an S3-compatible endpoint: where a request goes
# and the scope it is signed for must not change with the endpoints file trimmed.
REGIONS = [
    "us-east-1", "us-west-2", "eu-west-1", "ap-southeast-3", "il-central-1", "cn-north-1", "us-gov-west-1",
]  # fmt: skip


def _sent(session: Any, service: str, region: str, endpoint_url: str | None) -> tuple[str, str]:
    """Where ``session``'s client for ``service`` sends its first request, and the signature's
    region and service (the request never leaves: a hook answers it)."""
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    client = session.create_client(service, region_name=region, endpoint_url=endpoint_url)
    seen: list[tuple[str, str]] = []

    def answer(request: Any, **_: Any) -> AWSResponse:
        scope = request.headers["Authorization"].decode().split("Credential=")[1].split(",")[0]
        seen.append((request.url, "/".join(scope.split("/")[2:4])))  # key/date/REGION/SERVICE/...
        return AWSResponse(request.url, 500, HTTPHeaders(), None)

    client.meta.events.register("before-send", answer)
    with pytest.raises(Exception):  # noqa: B017 (the 500 answer: only the request matters)
        if service == "s3":
            client.list_objects_v2(Bucket="cloudkeep-probe", MaxKeys=1)
        else:
            client.get_caller_identity()
    return seen[0]


@pytest.mark.parametrize("service", ["s3", "sts"])
def test_the_trimmed_endpoints_file_resolves_like_the_whole_one(service: str) -> None:
    import botocore.session

    from cloudkeep.storage.s3 import shared_loader

    def session(trimmed: bool) -> Any:
        made = botocore.session.Session()
        made.set_credentials("AKIDEXAMPLE", "secret")
        made.set_config_variable("retries", {"max_attempts": 0})
        if trimmed:
            made.register_component("data_loader", shared_loader(made))
        return made

    whole, trimmed = session(False), session(True)
    endpoints = trimmed.get_component("data_loader").load_data("endpoints")
    kept = {"s3", "sts", "sso", "sso-oidc", "signin"}
    assert all(set(p["services"]) <= kept for p in endpoints["partitions"])
    for region in REGIONS:
        for url in (None, "https://minio.example:9000"):
            assert _sent(trimmed, service, region, url) == _sent(whole, service, region, url)


def test_an_endpoints_file_of_another_layout_is_left_whole() -> None:
    """``AWS_DATA_PATH`` can put any JSON in its place: what this does not know is not cut (nor does
    it fail), and only a partition's ``services`` are ever trimmed."""
    from cloudkeep.storage.s3 import store_endpoints

    odds: list[Any] = [[], {"version": 3}, {"partitions": {"aws": {}}}, {"partitions": ["aws", None]}]
    for odd in odds:
        assert store_endpoints(odd) == odd
    mixed = {"partitions": [{"partition": "aws", "services": {"s3": 1, "ec2": 2}}, {"services": ["s3"]}, 7]}
    assert store_endpoints(mixed) == {
        "partitions": [{"partition": "aws", "services": {"s3": 1}}, {"services": ["s3"]}, 7]
    }


def test_the_loader_looks_only_in_the_store_services_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's own loader reads every service's folder (~900 reads) to tell whether one is
    known; a store's looks at the few it may use, and finds them in every search path."""
    import os

    import botocore.session
    from botocore.exceptions import UnknownServiceError
    from botocore.loaders import Loader

    from cloudkeep.storage.s3 import ENDPOINT_SERVICES, _store_loader

    listed: list[str] = []
    real_listdir = os.listdir

    def counting(path: Any = ".") -> list[str]:
        listed.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counting)
    assert len(Loader().list_available_services("service-2")) > 100
    whole = len(listed)
    listed.clear()
    extra = tmp_path / "s3" / "2099-01-01"
    extra.mkdir(parents=True)
    (extra / "paginators-1.json").write_text("{}")
    loader = _store_loader(str(tmp_path))
    services = loader.list_available_services("service-2")
    assert len(listed) < 20 < whole
    assert services == sorted(ENDPOINT_SERVICES & set(services)) and {"s3", "sts"} <= set(services)
    assert loader.list_api_versions("s3", "paginators-1")[-1] == "2099-01-01"  # the extra path is seen
    assert loader.load_service_model("s3", "service-2")["metadata"]["endpointPrefix"] == "s3"
    with pytest.raises(UnknownServiceError):
        loader.load_service_model("ec2", "service-2")
    session = botocore.session.Session()
    session.register_component("data_loader", loader)
    assert session.get_available_services() == services


def _emptied(value: Any) -> Any:
    """botocore's parse of a model with every documentation text emptied, as plain dicts."""
    if isinstance(value, dict):
        return {
            k: "" if k == "documentation" and isinstance(v, str) else _emptied(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_emptied(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("service", "kind"),
    [
        ("s3", "service-2"),
        ("s3", "endpoint-rule-set-1"),
        ("sts", "service-2"),
        ("sts", "endpoint-rule-set-1"),
    ],
)
def test_a_store_loader_gives_botocores_models_without_their_documentation(service: str, kind: str) -> None:
    """The store's loader parses the models into plain dicts with their documentation texts
    emptied (the keys stay: a client reads some): otherwise botocore's own parse, value for
    value, in the same order."""
    from botocore.loaders import create_loader

    from cloudkeep.storage.s3 import _store_loader

    version = create_loader().determine_latest_version(service, kind)
    ours = _store_loader("").load_service_model(service, kind, version)
    theirs = create_loader().load_service_model(service, kind, version)
    assert type(ours) is dict and json.dumps(ours) == json.dumps(_emptied(theirs))
    assert "documentation" in json.dumps(theirs)
    if kind == "service-2":
        assert len(json.dumps(ours)) < len(json.dumps(theirs)) / 2  # most of the model was its text


def test_a_range_is_read_into_the_buffer_and_its_connection_reused(
    aws_options: dict[str, Any], unique_name: str
) -> None:
    """A plain GET body is read by http.client straight into the caller's buffer (not through
    urllib3's read-and-copy); read to its end, its connection goes back to the pool for the next."""
    make_s3_bucket(aws_options, unique_name)
    store = open_store(f"s3://{unique_name}/r", **aws_options)
    assert isinstance(store, S3Store)
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    store.put("pack", data)
    for offset in (0, 5, 2**20):
        with store.open_range("pack", offset, 2 * 2**20) as stream:
            assert isinstance(stream, _S3Range) and stream.direct is not None
            got = bytearray(2 * 2**20 + 10)
            assert len(read_exactly(stream, memoryview(got))) == 2 * 2**20
            assert bytes(got[: 2 * 2**20]) == data[offset : offset + 2 * 2**20]
            raw = stream.body._raw_stream
            assert raw._connection is None  # released to the pool, not closed with the body
    pools = store.client._endpoint.http_session._manager.pools
    (pool,) = [pools[key] for key in pools.keys()]  # noqa: SIM118 - the container is not iterable
    assert pool.num_connections == 1  # one connection served every range
