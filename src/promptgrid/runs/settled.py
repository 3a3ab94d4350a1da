"""A rerun with nothing to do, told without asking the API: the output remembers when every job of a spec
was last found done, under a fingerprint of everything that decides it.

Working out that nothing is left takes the models resolved, the whole grid checked and the manifest read.
When it finds nothing left, the run service stores `settled.json` in the output: the fingerprint, and the
counts the summary gives. The fingerprint covers promptgrid's version, the spec after overrides (its
hash), the values its sources resolved to, the bytes of its prompts file, the models it was checked against
and the names of the manifest's parts. A later run of the same spec whose fingerprint matches has nothing
left either, and says so at once. Anything that differs (a spec edit, a new prompts file, another run's
rows, another version) only sends the run the long way, which checks everything again.

Only a run against a sandbox started for it can skip resolving its models: the sandbox's models are part
of promptgrid's version. A configured API is asked before anything is skipped (see `models_key`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from promptgrid.output.keys import MANIFEST_PREFIX, SETTLED_KEY
from promptgrid.output.sinks import open_sink
from promptgrid.output.sinks.base import Sink
from promptgrid.run_summary import RunSummary
from promptgrid.spec.schema import LoadedSpec
from promptgrid.version import VERSION

REPORT_INDEX_KEY = "report/index.html"  # promptgrid.report.build.INDEX_KEY, without importing the report
SANDBOX_MODELS = f"the sandbox's models, promptgrid {VERSION}"


@dataclass(frozen=True)
class Settled:
    """An output's record of the last time a spec had nothing left: when (its fingerprint) and the counts."""

    fingerprint: str
    skipped: int
    previously_failed: int

    def to_json(self) -> bytes:
        record = {"fingerprint": self.fingerprint, "skipped": self.skipped}
        record["previously_failed"] = self.previously_failed
        return json.dumps(record, indent=1).encode("utf-8")


def models_key(resolution: dict[str, Any] | None) -> str:
    """What stands for the models in a fingerprint: the sandbox's (None), or what the API answered: each
    model's slug and input schema, and why any is missing (not when or whence an answer came)."""
    if resolution is None:
        return SANDBOX_MODELS
    records = resolution.get("models") or []
    models = [{name: record.get(name) for name in ("model", "slug", "request_schema")} for record in records]
    return json.dumps({"models": models, "missing": resolution.get("missing")}, sort_keys=True, default=str)


def fingerprint(spec: LoadedSpec, models: str, parts: list[str]) -> str:
    """Everything a rerun's jobs and their state depend on, hashed: equal only when nothing changed."""
    digest = hashlib.sha256()
    sources = json.dumps(spec.sources.data, sort_keys=True, default=str)
    for piece in (VERSION, spec.spec_hash, sources, _file_digest(spec), models, *parts):
        digest.update(piece.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def manifest_parts(output: str | Sink) -> list[str]:
    """The names of the manifest's parts (a fingerprint's last piece), listed without reading any."""
    sink = open_sink(output) if isinstance(output, str) else output
    return sorted(key for key in sink.list_keys(MANIFEST_PREFIX) if key.endswith(".parquet"))


def settled_summary(spec: LoadedSpec, models: str) -> RunSummary | None:
    """The summary of a rerun with nothing left, when the output says so for this very spec; else None."""
    sink = open_sink(spec.output)
    parts = manifest_parts(sink)
    if not parts or not sink.exists(SETTLED_KEY):
        return None
    try:
        record = json.loads(sink.get_bytes(SETTLED_KEY))
        settled = Settled(record["fingerprint"], int(record["skipped"]), int(record["previously_failed"]))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: the long way finds out, and writes it again
    if settled.fingerprint != fingerprint(spec, models, parts):
        return None
    return nothing_to_do(spec, sink, settled.skipped, settled.previously_failed)


def nothing_to_do(spec: LoadedSpec, sink: Sink, skipped: int, previously_failed: int) -> RunSummary:
    """The summary of a run that found every job of `spec` done: no flow ran, the last report stays."""
    return RunSummary(
        output=sink.root,
        planned=0,
        succeeded=0,
        failed=0,
        skipped=skipped,
        previously_failed=previously_failed,
        api_requests=0,
        report=sink.uri(REPORT_INDEX_KEY) if sink.exists(REPORT_INDEX_KEY) else None,
        fail_when=str(spec.fail_when),
    )


def remember(spec: LoadedSpec, models: str, parts: list[str], done: RunSummary) -> None:
    """Store that `spec` had nothing left over the manifest's `parts` (listed before it was read)."""
    settled = Settled(fingerprint(spec, models, parts), done.skipped, done.previously_failed)
    open_sink(spec.output).put_bytes(SETTLED_KEY, settled.to_json(), "application/json")


def _file_digest(spec: LoadedSpec) -> str:
    if spec.prompts is None:
        return "-"
    digest = hashlib.sha256()
    with spec.prompts.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
