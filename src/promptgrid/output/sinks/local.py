"""A sink on this machine's file system: atomic, fsynced writes into one folder, with the folder's own modes.

Files are created with mode 0666 less the umask, as any program's are (0644 under the usual 022), so a
report or a dataset can be served or shared by another user; a private output is a matter of umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from promptgrid.errors import StorageError
from promptgrid.output.sinks.base import TEMP_PREFIX, check_key

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_FILE_MODE = 0o666  # less the umask, applied by the kernel


class LocalSink:
    """A folder on this machine; each write goes to a temp file in the same folder, fsynced, then renamed."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().resolve()
        self.root = str(self.path)
        self.folder: Path | None = self.path

    def __repr__(self) -> str:
        return f"LocalSink({self.root!r})"

    def local_path(self, key: str) -> Path:
        return self.path.joinpath(*check_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] = {}) -> str:
        # content_type and metadata are implied by the extension and the manifest for local files.
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = _new_temp_file(target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                written = os.fstat(handle.fileno()).st_size
            if written != len(data):
                raise StorageError(f"{target}: wrote {written} bytes of {len(data)}")
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)  # so the rename itself survives a power cut
        return str(target)

    def put_file(self, path: Path, key: str, content_type: str) -> None:
        """Move a finished file into place: fsynced, renamed (copied only from another file system)."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self.put_bytes(key, path.read_bytes(), content_type)
            path.unlink(missing_ok=True)
            return
        fsync_dir(target.parent)

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def size(self, key: str) -> int | None:
        target = self.local_path(key)
        return target.stat().st_size if target.is_file() else None

    def list_keys(self, prefix: str) -> Iterator[str]:
        folder = self.path.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.path
        if not folder.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.path).as_posix()
            for name in sorted(filenames):
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(TEMP_PREFIX) and key.startswith(prefix):
                    yield key

    def uri(self, key: str) -> str:
        return str(self.local_path(key))

    def url_for_reading(self, key: str, expires_s: int = 3600) -> str:
        return self.local_path(key).as_uri()

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return None  # a file:// URL means nothing to another machine

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def line_log(self, key: str) -> LocalLineLog:
        return LocalLineLog(self.local_path(key))

    def conditional_writes(self) -> LockedWrites:
        return LockedWrites(self)


class LocalLineLog:
    """One file opened for appending on first write and kept open; lines from several threads stay whole."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, _APPEND, _FILE_MODE)
            os.write(self._fd, line)

    def sync(self) -> None:
        with self._lock:
            fd = self._fd
        if fd is not None:  # outside the lock: a write on the event loop never waits for a disk commit
            os.fsync(fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None


class LockedWrites:
    """Conditional writes in a local folder: each change made under an exclusive `flock` on a `.lock` file
    beside the object (the kernel drops it when its holder dies, so a killed run never leaves it locked)."""

    def __init__(self, sink: LocalSink):
        self.sink = sink

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock = self.sink.local_path(key).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _current(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.sink.get_bytes(key)
        except FileNotFoundError:
            return None
        return data, _version(data)

    def read(self, key: str) -> tuple[bytes, str] | None:
        with self._locked(key):
            return self._current(key)

    def create(self, key: str, data: bytes) -> str | None:
        with self._locked(key):
            if self._current(key) is not None:
                return None
            return self._write(key, data)

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        with self._locked(key):
            current = self._current(key)
            if current is None or current[1] != version:
                return None
            return self._write(key, data)

    def delete(self, key: str, version: str) -> None:
        with self._locked(key):
            current = self._current(key)
            if current is not None and current[1] == version:
                self.sink.delete(key)

    def _write(self, key: str, data: bytes) -> str:
        self.sink.put_bytes(key, data, "application/octet-stream")
        return _version(data)


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _new_temp_file(folder: Path) -> tuple[int, Path]:
    """A fresh hidden file in `folder`, created with the umask's mode (mkstemp would make it 0600)."""
    while True:
        temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            return os.open(temp, _NEW_FILE, _FILE_MODE), temp
        except FileExistsError:
            continue


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so a rename or a new file in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
