"""The spec a run used, kept beside its manifest so backfills and reports need only the output."""

from __future__ import annotations

import hashlib

from promptgrid.tasks.output.keys import SPEC_KEY
from promptgrid.tasks.output.sinks import Sink


def save_spec(sink: Sink, text: str) -> None:
    """Keep the spec a run used beside its manifest: `spec.yaml`, plus `specs/<hash>.yaml` for history."""
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:16]
    sink.put_bytes(f"specs/{digest}.yaml", data, "application/yaml")
    sink.put_bytes(SPEC_KEY, data, "application/yaml")


def read_saved_spec(sink: Sink) -> str:
    """The spec text saved by the latest run (FileNotFoundError when none was saved)."""
    return sink.get_bytes(SPEC_KEY).decode("utf-8")
