"""The S3 client's construction: what one process shares between stores and what it must not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudkeep.storage import open_store
from cloudkeep.storage.s3 import S3Store
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
