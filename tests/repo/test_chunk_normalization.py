"""FastCDC's normalization level (repo/chunker.py): new repositories chunk at level 3, those whose
config names none keep level 1, threads and worker processes alike, and an edit to a large file
re-stores less at level 3 (fewer chunks far above the mean)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import Repository, backup_files
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.chunker import LEGACY_NORMALIZATION, NORMALIZATION, ChunkerParams, StreamCutter
from cloudkeep.repo.layout import CONFIG_KEY, open_config
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD

# Scaled down 8x from the defaults (16 KiB / 64 KiB / 1 MiB) so a few MiB hold many chunks.
_MIN, _AVG, _MAX = 16 * 1024, 64 * 1024, 2**20


def _params(normalization: int, seed: int = 11) -> ChunkerParams:
    return ChunkerParams(_MIN, _AVG, _MAX, seed, normalization)


def _chunks(params: ChunkerParams, data: bytes) -> list[bytes]:
    return [bytes(c) for c in StreamCutter(params).cut(io.BytesIO(data))]


def test_a_new_repository_chunks_at_level_3_and_says_so(store: ObjectStore) -> None:
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    assert repo.config.chunker.normalization == NORMALIZATION == 3
    assert repo.config.chunker.to_json()["normalization"] == 3
    reopened = Repository.open(store, PASSWORD)
    assert reopened.config.chunker == repo.config.chunker


def test_a_config_without_the_level_keeps_level_1_and_its_json(store: ObjectStore) -> None:
    """A repository created before the field: its chunks were cut at pyfastcdc's default (1); a
    resealed config (migrate, password change) must not gain a field its readers never wrote."""
    old = _params(LEGACY_NORMALIZATION)
    assert "normalization" not in old.to_json()
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=old)
    assert repo.master is not None
    config = open_config(repo.master, store.get(CONFIG_KEY))
    assert config.chunker == old and config.chunker.normalization == 1
    assert ChunkerParams.from_json(json.loads(json.dumps(old.to_json()))) == old


def test_a_hostile_level_in_a_config_is_refused() -> None:
    body = {**_params(3).to_json(), "normalization": 9}
    with pytest.raises(IntegrityError, match="normalization level 9"):
        ChunkerParams.from_json(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [("normalization", "3"), ("normalization", True), ("normalization", 2.5), ("normalization", None),
     ("normalization", [3]), ("min", "16384"), ("seed", 1.0)],
)  # fmt: skip
def test_a_config_field_that_is_not_a_whole_number_is_refused(field: str, value: object) -> None:
    body = {**_params(3).to_json(), field: value}
    with pytest.raises(IntegrityError, match=f"chunker {field} must be a whole number"):
        ChunkerParams.from_json(body)


def test_a_config_without_a_size_is_refused() -> None:
    body = _params(3).to_json()
    del body["avg"]
    with pytest.raises(IntegrityError, match="chunker avg must be a whole number, not None"):
        ChunkerParams.from_json(body)


@pytest.mark.parametrize("processes", [False, True])
def test_backups_cut_at_the_configs_level(store: ObjectStore, tmp_path: Path, processes: bool) -> None:
    """Threads and worker processes (which get the parameters as a tuple) cut alike, at the level
    the config names: the stored chunks are level 1's for a level 1 repository, not level 3's."""
    old = _params(LEGACY_NORMALIZATION)
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=old)
    data = random.Random(5).randbytes(6 * 2**20)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(data)
    snap = backup_files(repo, [src], hostname="h", processes=processes, threads=2)
    stored = lookup(repo, snap.id, str(src / "big.bin")).content
    level1 = [repo.crypter.content_id(c) for c in _chunks(old, data)]
    level3 = [repo.crypter.content_id(c) for c in _chunks(_params(3, old.seed), data)]
    assert stored == level1 and stored != level3


def test_level_3_re_stores_less_after_scattered_edits() -> None:
    """Pages rewritten at random land in chunks with odds in proportion to their size: the tail of
    big chunks level 1 leaves is what an incremental uploads again (the bench's database)."""
    rng = random.Random(2)
    base = bytearray(rng.randbytes(8 * 2**20))
    edited = bytearray(base)
    for _ in range(40):
        at = rng.randrange(len(edited) - 256)
        edited[at : at + 256] = rng.randbytes(256)
    for seed in (1, 2, 3):
        new_bytes = {}
        for level in (1, 3):
            before = set(_chunks(_params(level, seed), bytes(base)))
            after = _chunks(_params(level, seed), bytes(edited))
            new_bytes[level] = sum(len(c) for c in after if c not in before)
        assert new_bytes[3] < new_bytes[1] * 0.9, (seed, new_bytes)
