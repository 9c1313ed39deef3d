"""Local folder backend (``file:///abs/path``): the embedded default repository location.

Writes go to a temporary file in the target folder, are fsynced, then renamed (or hard-linked for
create-only writes), so a reader never sees a partial object and a crash leaves at most a stray
temp file that listing ignores. ``write_prefix`` confines writes and deletes to one key prefix:
the local stand-in for credentials scoped to one agent; ``append_only`` makes them create-only
(no overwrite, no delete), like an agent's Azure SAS or S3 session policy (docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NoReturn
from urllib.parse import unquote, urlparse

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, InsufficientSpaceError, PermissionDeniedError
from cloudkeep.storage.base import (
    STAGING_PREFIX,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    RangeStream,
)

_TEMP_PREFIX = STAGING_PREFIX


class LocalStore(ObjectStore):
    """Objects are files under ``root``; keys map 1:1 to relative paths."""

    scheme: ClassVar[str] = "file"

    def __init__(
        self,
        root: Path | str,
        *,
        write_prefix: str | None = None,
        append_only: bool = False,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root)
        self.append_only = append_only
        if not self.root.is_absolute():
            raise ConfigurationError(f"local repository path must be absolute: {root}")
        self.write_prefix = write_prefix
        self.fsync = fsync
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise PermissionDeniedError(f"{self.describe()}: permission denied creating the folder") from None
        except OSError as exc:
            self._raise_os(exc, "create folder", "")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> LocalStore:
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigurationError(f"file URL must be file:///absolute/path, got {url!r}")
        return cls(unquote(parsed.path), **options)

    def describe(self) -> str:
        return f"file://{self.root}"

    # -- helpers ---------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigurationError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _check_write(self, key: str, action: str) -> None:
        if self.write_prefix is not None and not key.startswith(self.write_prefix):
            raise PermissionDeniedError(
                f"{self.describe()}: access denied for {action} on {key!r}",
                hint=f"these credentials may only write under {self.write_prefix!r}",
            )

    def _refuse(self, action: str, key: str) -> NoReturn:
        raise PermissionDeniedError(
            f"{self.describe()}: access denied for {action} on {key!r}",
            hint="these credentials may only create new objects (append-only)",
        )

    def _raise_os(self, exc: OSError, action: str, key: str) -> NoReturn:
        where = f"{self.describe()}/{key}"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionDeniedError(f"{where}: access denied for {action} ({exc.strerror})") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientSpaceError(f"{where}: no space left on device during {action}") from exc
        raise exc

    # -- interface -------------------------------------------------------------------------

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        self._check_write(key, "put")
        path = self._path(key)
        tmp = path.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if if_absent or self.append_only:
                try:
                    os.link(tmp, path)  # atomic create-only: fails if the key exists
                except FileExistsError:
                    if not if_absent:
                        self._refuse("overwrite", key)
                    raise ObjectExistsError(f"{self.describe()}/{key} already exists") from None
            else:
                os.replace(tmp, path)
            if self.fsync:
                self._fsync(path.parent)
        except OSError as exc:
            self._raise_os(exc, "put", key)
        finally:
            with contextlib.suppress(OSError):  # gone, or unremovable (read-only): the error above counts
                tmp.unlink()

    @property
    def staging_dir(self) -> str:
        """Inside the repository (so a finished pack is renamed into place, never copied), under
        the writable prefix; staging names start with the temp prefix, which listing ignores."""
        folder = (
            self.root.joinpath(*self.write_prefix.strip("/").split("/")) if self.write_prefix else self.root
        )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._raise_os(exc, "create folder", self.write_prefix or "")
        return str(folder)

    def put_file(
        self,
        key: str,
        path: str,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
        md5: bytes | None = None,
    ) -> None:
        self._check_write(key, "put")
        target = self._path(key)
        try:
            try:
                if self.fsync:
                    self._fsync(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                if self.append_only or if_absent:
                    try:
                        os.link(path, target)  # create-only; the staged file is unlinked below
                    except FileExistsError:
                        if not if_absent:
                            self._refuse("overwrite", key)
                        raise ObjectExistsError(f"{self.describe()}/{key} already exists") from None
                else:
                    os.replace(path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # staged on another filesystem
                super().put_file(key, path, if_absent=if_absent, retain_until=retain_until)
                return
            if self.fsync:
                self._fsync(target.parent)
        except OSError as exc:
            self._raise_os(exc, "put", key)
        finally:
            with contextlib.suppress(OSError):  # gone, or unremovable (read-only): the error above counts
                os.unlink(path)

    @staticmethod
    def _fsync(path: Path | str) -> None:
        """Make a written file, or a folder's new entries, durable."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"{self.describe()}/{key} does not exist") from None
        except OSError as exc:
            self._raise_os(exc, "get", key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"{self.describe()}/{key} does not exist") from None
        except OSError as exc:
            self._raise_os(exc, "get", key)

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[RangeStream]:
        try:
            fh = self._path(key).open("rb", buffering=0)
            fh.seek(offset)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"{self.describe()}/{key} does not exist") from None
        except OSError as exc:
            self._raise_os(exc, "get", key)
        with fh:
            yield _LocalRange(self, key, fh, length)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._raise_os(exc, "stat", key)
        if not os.path.isfile(self._path(key)):
            return None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list_folders(self, prefix: str) -> tuple[str, ...]:
        if prefix and not prefix.endswith("/"):
            return super().list_folders(prefix)
        folder = self.root.joinpath(*prefix.strip("/").split("/")) if prefix else self.root
        try:
            return tuple(sorted(prefix + e.name + "/" for e in folder.iterdir() if e.is_dir()))
        except FileNotFoundError:
            return ()
        except OSError as exc:
            self._raise_os(exc, "list", prefix)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the deepest folder the prefix names, then filter by the rest of the prefix.
        folder_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_key.split("/")) if folder_key else self.root
        if not start.is_dir():
            return
        try:
            found: list[ObjectInfo] = []
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames.sort()
                rel = os.path.relpath(dirpath, self.root)
                base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                if base and not (base.startswith(prefix) or prefix.startswith(base)):
                    dirnames.clear()
                    continue
                for name in filenames:
                    key = base + name
                    if name.startswith(_TEMP_PREFIX) or not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted while listing
                    found.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        except OSError as exc:
            self._raise_os(exc, "list", prefix)
        found.sort(key=lambda info: info.key)
        yield from found

    def delete(self, key: str) -> None:
        self._check_write(key, "delete")
        if self.append_only:
            self._refuse("delete", key)
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._raise_os(exc, "delete", key)


class _LocalRange:
    """A file read from an offset, stopping after the range's length."""

    def __init__(self, store: LocalStore, key: str, fh: Any, length: int) -> None:
        self.store, self.key, self.fh, self.left = store, key, fh, length

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            n = self.fh.readinto(buffer[: self.left]) or 0
        except OSError as exc:
            self.store._raise_os(exc, "get", self.key)
        self.left -= n
        return n
