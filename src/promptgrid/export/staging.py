"""Shard files written under a temporary name and published whole, so no reader ever sees half a shard.

A local destination gets the temporary file beside the final one (`.tmp-*.partial`, which no `*.tar` or
`*.parquet` pattern matches), fsynced and renamed into place. An S3 destination gets it in a local
temporary folder, then one upload (multipart for large files): S3 shows an object only once its upload
has completed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from promptgrid.output.sinks import Sink
from promptgrid.output.sinks.base import TEMP_PREFIX

PARTIAL_SUFFIX = ".partial"
SHARD_MODE = 0o644


class Staging:
    """Where a destination's shards are written before they are published."""

    def __init__(self, dest: Sink):
        self.dest = dest
        self._folder = None if dest.folder is not None else tempfile.mkdtemp(prefix="promptgrid-export-")

    def new_file(self, key: str) -> Path:
        """A fresh temporary file for `key`'s content; `publish` or `discard` it."""
        target = self.dest.local_path(key)
        if target is not None:
            folder = target.parent
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(str(self._folder))
        fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=PARTIAL_SUFFIX)
        os.close(fd)
        os.chmod(name, SHARD_MODE)  # mkstemp makes it private; a dataset is read by others (training jobs)
        return Path(name)

    def publish(self, path: Path, key: str, content_type: str) -> None:
        """Put the finished file at `key` in one step, then forget the temporary name."""
        try:
            self.dest.put_file(path, key, content_type)
        finally:
            path.unlink(missing_ok=True)

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def size_of(self, key: str) -> int | None:
        """The published object's size, or None when there is none."""
        return self.dest.size(key)

    def remove_leftovers(self, folders: list[str]) -> int:
        """Delete temporary files an interrupted export left in a local destination; returns how many."""
        if self.dest.folder is None:
            return 0
        removed = 0
        for folder in folders:
            base = self.dest.folder.joinpath(*[part for part in folder.split("/") if part])
            for leftover in base.glob(f"{TEMP_PREFIX}*{PARTIAL_SUFFIX}"):
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        if self._folder is not None:
            for leftover in Path(self._folder).glob("*"):
                leftover.unlink(missing_ok=True)
            Path(self._folder).rmdir()
