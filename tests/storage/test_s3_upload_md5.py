"""A pack's MD5 is computed while it is staged, and its upload is not hashed again (moto over HTTP).

An S3-compatible store checks each upload against its Content-MD5. The writer (and a backup's
worker process) hashes a pack as it writes it, so the upload neither reads the staged file again
nor hashes it; over plain HTTP such an upload is signed ``UNSIGNED-PAYLOAD`` (the signed MD5
header binds the body), where botocore would otherwise also hash the body with SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.repo import Repository, backup_files, check, restore
from cloudkeep.repo.crypto import Crypter, MasterKey
from cloudkeep.repo.pack import PackWriter
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage import open_store
from cloudkeep.storage import s3 as s3_module
from cloudkeep.storage.s3 import S3Store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored
from tests.storage.conftest import make_s3_bucket

UNSIGNED = "UNSIGNED-PAYLOAD"


def _puts(store: S3Store) -> list[dict[str, str]]:
    """The headers of every PutObject the store's client sends from now on."""
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent.append({**headers, "url": request.url})

    store.client.meta.events.register("before-send.s3.PutObject", record)
    return sent


def test_a_pack_writer_hashes_what_it_stages(tmp_path: Path) -> None:
    pack = PackWriter("data", str(tmp_path), prelude=b"prelude", md5=True)
    rng = random.Random(5)
    for i in range(40):  # small blobs batched, large ones written at once
        pack.add(bytes([i]) * 32, rng.randbytes(rng.choice([100, 3000, 200_000])), 1)
    assert pack.md5 is not None
    _, path, _ = pack.finish(Crypter(MasterKey.generate(), 3))
    assert pack.md5 == hashlib.md5(Path(path).read_bytes()).digest()
    assert PackWriter("data", str(tmp_path)).md5 is None  # not asked for: not computed


def test_backup_packs_go_up_with_the_writers_md5_unsigned(
    aws_options: dict[str, Any], unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pack of a backup (the parent's tree and data packs, a worker process's data packs)
    carries the MD5 its writer computed: the store never hashes a staged file itself."""
    make_s3_bucket(aws_options, unique_name)
    store = open_store(f"s3://{unique_name}/repo", **aws_options)
    assert isinstance(store, S3Store) and store.upload_md5(False, 2**20)
    assert not store.upload_md5(True, store.multipart_threshold + 1)  # parts carry MD5s of their own
    source = tmp_path / "src"
    rng = random.Random(9)
    for folder in range(3):
        (source / f"d{folder}").mkdir(parents=True)
        for i in range(20):
            (source / f"d{folder}" / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 40_000)))
    (source / "large.bin").write_bytes(rng.randbytes(3 * 2**20))

    def rehashed(path: str) -> Any:
        raise AssertionError(f"{path}: a staged pack was read and hashed again before its upload")

    monkeypatch.setattr(s3_module, "file_md5", rehashed)
    adopted: list[bytes | None] = []  # the worker's packs, as the parent takes them
    adopt = BlobWriter.adopt_pack

    def adopt_pack(
        writer: BlobWriter, pack_id: str, path: str, entries: Any, md5: bytes | None = None
    ) -> None:
        adopted.append(md5)
        adopt(writer, pack_id, path, entries, md5)

    monkeypatch.setattr(BlobWriter, "adopt_pack", adopt_pack)
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=512 * 1024)
    sent = _puts(store)
    snapshot = backup_files(repo, [source], hostname="h", processes=True)
    assert adopted and all(md5 is not None and len(md5) == 16 for md5 in adopted)
    assert len(list(store.list("data/"))) > len(adopted)  # the parent's packs too (trees at least)
    assert sent and all(headers["X-Amz-Content-SHA256"] == UNSIGNED for headers in sent)
    packs = [headers for headers in sent if "/repo/data/" in headers["url"]]
    assert len(packs) == len(list(store.list("data/")))
    for headers in packs:  # the digest sent is the stored body's (moto does not check it itself)
        body = store.get("data/" + headers["url"].split("/repo/data/")[1])
        assert headers["Content-MD5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    restore(Repository.open(store, PASSWORD), snapshot.id, tmp_path / "out")
    diff = subprocess.run(["diff", "-r", str(source), str(restored(tmp_path / "out", source))])
    assert diff.returncode == 0
    report = check(Repository.open(store, PASSWORD), read_data=True)
    assert report.ok, report.problems


def test_only_an_upload_with_an_md5_goes_unsigned(
    aws_options: dict[str, Any], unique_name: str, tmp_path: Path
) -> None:
    """Without Content-MD5 (botocore's own checksums asked for) the body is signed as before."""
    make_s3_bucket(aws_options, unique_name)
    store = open_store(f"s3://{unique_name}/r", **aws_options, request_checksum_calculation="when_supported")
    assert isinstance(store, S3Store) and not store.upload_md5(False, 2**20)
    sent = _puts(store)
    body = b"signed body" * 100
    store.put("plain", body)
    assert "Content-MD5" not in sent[-1]
    assert sent[-1]["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    md5_store = open_store(f"s3://{unique_name}/r", **aws_options)
    assert isinstance(md5_store, S3Store)
    sent = _puts(md5_store)
    md5_store.put("checked", body)
    assert sent[-1]["Content-MD5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert sent[-1]["X-Amz-Content-SHA256"] == UNSIGNED
    assert md5_store.get("checked") == body == store.get("plain")
