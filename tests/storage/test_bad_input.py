"""Expected failures of the backends surface as cloudkeep error types with actionable messages."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError, PermissionDeniedError, UnreachableError
from cloudkeep.storage import open_store
from cloudkeep.storage.base import read_exactly
from cloudkeep.storage.s3 import _S3Range
from tests.support.peers import free_port


def test_local_write_prefix_denies_other_keys(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", write_prefix="data/agent1/")
    store.put("data/agent1/x", b"ok")
    with pytest.raises(PermissionDeniedError, match="access denied for put"):
        store.put("snapshots/x", b"no")
    with pytest.raises(PermissionDeniedError, match="access denied for delete"):
        store.delete("config")
    store.delete("data/agent1/x")  # inside the prefix: allowed
    assert store.stat("data/agent1/x") is None
    assert [i.key for i in store.list()] == []


def test_local_write_prefix_confines_staged_packs(tmp_path: Path) -> None:
    """Packs are staged inside the writable prefix and may only be put there."""
    store = open_store(f"file://{tmp_path}", write_prefix="writers/m1/")
    assert store.staging_dir == str(tmp_path / "writers" / "m1")
    staged = Path(store.staging_dir) / ".ck-tmp-pack-1"
    staged.write_bytes(b"pack")
    with pytest.raises(PermissionDeniedError, match="access denied for put"):
        store.put_file("data/ab/abcd", str(staged))
    assert store.stat("data/ab/abcd") is None
    store.put_file("writers/m1/data/ab/abcd", str(staged))
    assert store.get("writers/m1/data/ab/abcd") == b"pack" and not staged.exists()


def test_local_rejects_escaping_keys(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/r")
    with pytest.raises(ConfigurationError):
        store.put("../outside", b"x")
    assert not (tmp_path / "outside").exists()


def test_s3_unreachable() -> None:
    store = open_store(
        "s3://bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        max_attempts=1,
        connect_timeout=1,
    )
    with pytest.raises(UnreachableError, match="cannot reach"):
        store.get("k")
    with pytest.raises(UnreachableError):
        list(store.list())


def test_s3_missing_bucket(aws_options: dict[str, str], unique_name: str) -> None:
    from cloudkeep.errors import NotFoundError

    store = open_store(f"s3://{unique_name}", **aws_options)
    with pytest.raises(NotFoundError, match=unique_name):
        store.put("k", b"x")


def test_azure_unreachable() -> None:
    store = open_store(
        "azure://c",
        account_url=f"http://127.0.0.1:{free_port()}/devstoreaccount1",
        credential="sv=2020-01-01&sig=x",
        retry_total=0,
        connection_timeout=1,
    )
    with pytest.raises(UnreachableError, match="cannot reach"):
        store.get("k")


def test_azure_read_only_sas_is_denied_writes(azurite, unique_name: str) -> None:  # type: ignore[no-untyped-def]
    """Azurite enforces SAS: a read/list-only token must be refused PUT and DELETE, naming the action."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from tests.storage.conftest import make_azure_container
    from tests.support.peers import AZURITE_ACCOUNT, AZURITE_KEY

    make_azure_container(azurite, unique_name)
    admin = open_store(f"azure://{unique_name}", connection_string=azurite.connection_string)
    admin.put("existing", b"x")
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        unique_name,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    reader = open_store(
        f"azure://{unique_name}", account_url=azurite.blob_endpoint, credential=sas, retry_total=0
    )
    assert reader.get("existing") == b"x"
    assert [i.key for i in reader.list()] == ["existing"]
    with pytest.raises(PermissionDeniedError, match=r"access denied for Microsoft\.Storage/blobs/write"):
        reader.put("new", b"y")
    with pytest.raises(PermissionDeniedError, match="delete"):
        reader.delete("existing")
    assert admin.get("existing") == b"x" and admin.stat("new") is None


def test_s3_body_cut_short_is_an_error_not_a_short_read() -> None:
    """A ranged GET whose body ends before its Content-Length (the connection closed mid-body) is
    the store's error, not a short range that restore would blame on the pack. An in-process
    stand-in server: no real S3 peer cuts a body on demand."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            head = (
                b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\n"
                b"Content-Range: bytes 0-999/5000\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            conn.sendall(head + b"x" * 500)  # then the connection closes: 500 bytes short

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    store = open_store(
        "s3://bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        max_attempts=1,
    )
    buffer = bytearray(1000)
    with store.open_range("pack", 0, 1000) as stream:
        assert isinstance(stream, _S3Range) and stream.direct is not None  # read by http.client
        with pytest.raises(UnreachableError):
            read_exactly(stream, memoryview(buffer))
    server.join(10)
    listener.close()
