"""A sink on this machine's file system: atomic, fsynced writes into one folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from promptgrid.errors import StorageError
from promptgrid.output.sinks.base import TEMP_PREFIX, check_key


class LocalSink:
    """A folder on this machine; each write goes to a temp file in the same folder, fsynced, then renamed."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().resolve()
        self.root = str(self.path)

    def __repr__(self) -> str:
        return f"LocalSink({self.root!r})"

    def local_path(self, key: str) -> Path:
        return self.path.joinpath(*check_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] = {}) -> str:
        # content_type and metadata are implied by the extension and the manifest for local files.
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
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
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)  # so the rename itself survives a power cut
        return str(target)

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

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

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def append_line(self, key: str, line: bytes) -> None:
        """Append one record and fsync it: the journal's durable write for a local output."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so a rename or a new file in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
