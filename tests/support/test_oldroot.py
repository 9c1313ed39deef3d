"""The test-root cache: a failed or killed build never leaves a root behind; the apt mirror is found.

debootstrap is replaced by a script on PATH here (a stand-in: the real build is exercised by
tests/machine/test_oldroot_bullseye.py, which builds the root when the cache is empty).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import oldroot


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if os.geteuid() != 0:
        pytest.skip("test roots need root")
    monkeypatch.setenv("CLOUDKEEP_TEST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "roots"


def test_a_failed_build_leaves_nothing_and_says_why(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "debootstrap"
    # Writes half a root, then fails as debootstrap does when the mirror cannot be reached.
    fake.write_text('#!/bin/sh\nmkdir -p "$5/usr/bin"\necho "E: Failed getting release file" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cache.mkdir(parents=True)
    (cache / ".build-bullseye-killed").mkdir()  # what a killed build leaves

    with pytest.raises(
        oldroot.OldRootUnavailable, match=r"debootstrap bullseye failed: .*Failed getting release file"
    ):
        oldroot.ensure_root("bullseye")

    assert sorted(p.name for p in cache.iterdir()) == [".lock"]


def test_the_mirror_comes_from_the_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert oldroot.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] https://other.example/debian bookworm main\n")
    assert oldroot.debian_mirror(tmp_path) == "https://other.example/debian"
    (tmp_path / "sources.list").unlink()
    assert oldroot.debian_mirror(tmp_path) == oldroot.DEFAULT_MIRROR


def test_the_recipe_hash_names_what_is_built() -> None:
    assert oldroot.recipe_hash("bullseye") != oldroot.recipe_hash("trixie")
    assert oldroot.recipe("bullseye")["include"] == ["python3", "python3-venv", "ca-certificates"]
