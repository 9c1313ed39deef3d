"""Real trees for the engine bench, copied from files already on the machine (issue 18).

The synthetic machine in ``engine_vs_restic.py`` flatters cloudkeep (few, large, regular files);
these corpora are what a real machine holds:

- ``usr``: a subset of this machine's ``/usr`` (shared libraries, the Python standard library,
  headers, gzipped man pages, locales), taken in sorted order until the size budget is spent;
- ``venv``: the project's Python virtual environment (many small ``.py`` and ``.pyc`` files, some
  large extension modules);
- ``git``: a clone of this repository (``.git`` with its packs plus the work tree);
- ``node``: the project's ``node_modules`` (Azurite and its dependencies, which ``make test-deps``
  installs): a real JavaScript dependency tree, ~55,000 files averaging 3.6 KiB in ~5,000 folders,
  half of them below 1 KiB. The per-file costs on files someone else wrote;
- ``mail``: generated, a mail store in maildir folders (``cur`` of up to 50,000 messages each,
  0.3-16 KiB of text with unique headers): the per-file costs, where the other corpora are mostly
  bytes. No machine here has such a tree to copy, so it is seeded text;
- ``bigmail``: the same messages in one folder of as many as the size allows (~200,000 at
  ``--size 640 --db 64``): what a backup holds of one folder far larger than the mail store's.

Each also gets one seeded 128 MiB database-like file (``--db`` MiB): 8 KiB pages of records with
free space, so in-place rewrites have something to change. The day-2 mutation for real trees
appends to some files, rewrites pages of the database, edits 1 % of the small files, deletes
0.5 % and adds 20 files: about 2 % of the bytes, like the synthetic one.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ("synthetic", "usr", "venv", "git", "node", "mail", "bigmail")

# /usr subtrees in the order they are taken from, each with its share of the budget: the mix
# issue 18 measured on (libraries, the standard library, headers, man pages, locales).
_USR_PARTS = (
    ("lib/x86_64-linux-gnu", 0.50),
    ("lib/python3.11", 0.15),
    ("include", 0.12),
    ("share/man", 0.13),
    ("share/locale", 0.10),
)
PAGE = 8192


def _files(top: Path) -> Iterator[Path]:
    """Regular files and symlinks under ``top``, in a stable order (no following of links)."""
    for folder, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            yield Path(folder) / name


def _copy_budget(src: Path, dst: Path, budget: int) -> int:
    """Copy files (symlinks as links) from ``src`` to ``dst`` until ``budget`` bytes; returns bytes."""
    used = 0
    for path in _files(src):
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_symlink():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        if not path.is_file() or not os.access(path, os.R_OK):
            continue
        if used + st.st_size > budget:
            if used >= budget * 0.98:
                break
            continue  # a smaller file may still fit
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        used += st.st_size
    return used


def database(path: Path, size: int, rng: random.Random) -> None:
    """Pages of records (ids, short texts, numbers) with free space at each page's end."""
    letters = b"abcdefghijklmnopqrstuvwxyz"
    words = [bytes(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(500)]
    with open(path, "wb") as fh:
        for page_no in range(size // PAGE):
            page = bytearray(page_no.to_bytes(8, "little") + b"PAGE")
            fill = rng.randint(PAGE // 2, PAGE - 64)
            while len(page) < fill:
                page += rng.getrandbits(32).to_bytes(4, "little") + b" ".join(rng.choices(words, k=4)) + b";"
            fh.write(bytes(page[:fill]) + bytes(PAGE - fill))


MAILDIR_MESSAGES = 50_000
_WORDS = (  # the vocabulary of the messages' text, space-separated
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will can more other out up "
    "backup restore server volume snapshot meeting invoice report attached please regards thanks schedule"
)


def _maildirs(top: Path, budget: int, rng: random.Random, per_folder: int = MAILDIR_MESSAGES) -> None:
    """Messages of seeded text until ``budget`` bytes, ``per_folder`` to a folder: a log-normal size
    around 2 KiB (0.3-16 KiB), each a unique header over a slice of one shared text, so files
    differ but compress as mail does."""
    words = _WORDS.split()
    text = " ".join(rng.choices(words, k=1_200_000)).encode()
    used = folder_count = count = 0
    folder = top
    while used < budget:
        if count % per_folder == 0:
            folder = top / f"box{folder_count:02d}" / "cur"
            folder.mkdir(parents=True)
            folder_count += 1
        size = int(min(16384, max(300, rng.lognormvariate(7.6, 0.9))))
        start = rng.randrange(len(text) - size)
        header = (
            f"Message-ID: <{rng.getrandbits(64):016x}@mail.example>\n"
            f"From: user{rng.randrange(500)}@example.com\nSubject: {' '.join(rng.choices(words, k=5))}\n\n"
        ).encode()
        body = header + text[start : start + size - len(header)]
        (folder / f"{1_700_000_000 + count}.{count}.mail:2,S").write_bytes(body)
        used += len(body)
        count += 1


def build(kind: str, root: Path, size_mib: int, seed: int, db_mib: int = 128) -> None:
    """Build corpus ``kind`` (not ``synthetic``) of about ``size_mib`` MiB plus the database, in a
    sibling folder renamed to ``root`` when complete: a failed build leaves no half corpus that a
    later run would take as built."""
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _build(kind, partial, size_mib, seed, db_mib)
    partial.rename(root)


def _build(kind: str, root: Path, size_mib: int, seed: int, db_mib: int) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    budget = max(0, size_mib - db_mib) * 2**20
    if kind == "usr":
        for part, share in _USR_PARTS:
            src = Path("/usr") / part
            if src.is_dir():
                _copy_budget(src, root / "usr" / part, int(budget * share))
    elif kind == "venv":
        venv = (ROOT / ".venv").resolve()
        _copy_budget(venv, root / "venv", budget)
    elif kind == "node":
        modules = ROOT / "node_modules"
        if not modules.is_dir():
            raise SystemExit(f"the node corpus copies {modules}: `make test-deps` installs it (npm)")
        _copy_budget(modules, root / "srv" / "app" / "node_modules", budget)
    elif kind == "git":
        if not (ROOT / ".git").exists():
            raise SystemExit(f"the git corpus clones the checkout the bench runs from: {ROOT} is not one")
        subprocess.run(
            ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(root / "checkout")], check=True
        )
    elif kind == "mail":
        _maildirs(root / "home" / "mail", budget, rng)
    elif kind == "bigmail":
        _maildirs(root / "home" / "mail", budget, rng, per_folder=10**9)
    else:
        raise ValueError(f"unknown corpus {kind!r}")
    (root / "var" / "lib").mkdir(parents=True)
    database(root / "var" / "lib" / "app.db", db_mib * 2**20, rng)


def mutate(root: Path, seed: int, fraction: float = 0.02) -> int:
    """Day 2 on a real tree: ~``fraction`` of the bytes change. Returns bytes touched."""
    rng = random.Random(seed + 1)
    files = sorted(p for p in _files(root) if not p.is_symlink() and p.is_file())
    total = sum(p.stat().st_size for p in files)
    budget = int(total * fraction)
    touched = 0
    db = root / "var" / "lib" / "app.db"
    others = [p for p in files if p != db]
    for p in rng.sample(others, min(len(others), max(5, len(others) // 400))):  # appends
        with open(p, "ab") as fh:
            fh.write(rng.randbytes(4096))
            touched += 4096
    with open(db, "r+b") as fh:  # rewritten pages
        pages = os.fstat(fh.fileno()).st_size // PAGE
        for _ in range(max(1, budget // 4 // 65536)):  # as many as the synthetic machine's rewrites
            fh.seek(rng.randrange(pages) * PAGE + 12)
            fh.write(rng.randbytes(256))
            touched += PAGE
    small = [p for p in others if p.stat().st_size < 64 * 1024]
    for p in rng.sample(small, min(len(small), max(10, len(small) // 100))):  # edits
        with open(p, "ab") as fh:
            fh.write(b"\n# edited\n")
        touched += 10
    for p in rng.sample(others, max(1, len(others) // 200)):  # deletes
        if p.exists():
            p.unlink()
    new = root / "day2"
    new.mkdir(exist_ok=True)
    remaining = max(0, budget - touched)
    for i in range(20):  # adds
        (new / f"added{i}.bin").write_bytes(rng.randbytes(remaining // 20 + 1))
        touched += remaining // 20 + 1
    return touched
