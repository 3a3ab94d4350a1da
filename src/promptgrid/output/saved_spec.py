"""The spec a run used, and its models' schemas, kept beside its manifest so backfills and reports need only
the output."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from promptgrid.models.records import ModelRecord
from promptgrid.output.keys import SPEC_KEY, model_key
from promptgrid.output.sinks import Sink
from promptgrid.redact import scrub


def save_spec(sink: Sink, text: str) -> None:
    """Keep the spec a run used beside its manifest: `spec.yaml`, plus `specs/<hash>.yaml` for history;
    the API key, if the spec holds it in any spelling (even in a comment), is scrubbed first."""
    data = scrub(text).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:16]
    sink.put_bytes(f"specs/{digest}.yaml", data, "application/yaml")
    sink.put_bytes(SPEC_KEY, data, "application/yaml")


def read_saved_spec(sink: Sink) -> str:
    """The spec text saved by the latest run (FileNotFoundError when none was saved)."""
    return sink.get_bytes(SPEC_KEY).decode("utf-8")


def save_models(sink: Sink, records: Iterable[ModelRecord]) -> None:
    """Keep each model's resolved record (slug sent, schema, where it came from): `models/<model>.json`."""
    for record in records:
        data = json.dumps(record.to_json(), indent=1).encode("utf-8")  # the schema keeps its order
        sink.put_bytes(model_key(record.model), data, "application/json")


def read_saved_model(sink: Sink, model: str) -> ModelRecord | None:
    """The record a run of this output saved for a model, or None (none saved, or not readable as one)."""
    try:
        record = ModelRecord.from_json(json.loads(sink.get_bytes(model_key(model))))
    except (FileNotFoundError, ValueError):
        return None
    return record
