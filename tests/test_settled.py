"""An output's record that a spec had nothing left: trusted only while all that decides it is the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptgrid.output.keys import SETTLED_KEY
from promptgrid.output.sinks.local import LocalSink
from promptgrid.run_summary import RunSummary
from promptgrid.runs.settled import SANDBOX_MODELS, manifest_parts, models_key, remember, settled_summary
from promptgrid.spec.load import read_spec
from promptgrid.spec.schema import LoadedSpec

DONE = RunSummary(
    output="-", planned=0, succeeded=0, failed=0, skipped=4, previously_failed=1, api_requests=0
)


def write_spec(folder: Path, **extra: str) -> Path:
    (folder / "p.csv").write_text("prompt\na red fox\na lighthouse\n", encoding="utf-8")
    (folder / "subjects.txt").write_text("fox\nowl\n", encoding="utf-8")
    spec = folder / "s.yaml"
    lines = {
        "model": "stable-diffusion-3-5-large",
        "prompts": "p.csv",
        "seeds": "[1, 2]",
        "output": str(folder / "out"),
        **extra,
    }
    spec.write_text("".join(f"{key}: {value}\n" for key, value in lines.items()), encoding="utf-8")
    return spec


@pytest.fixture
def settled(tmp_path: Path) -> LoadedSpec:
    """A spec whose output holds one manifest part and the record that nothing was left over it."""
    spec = read_spec(write_spec(tmp_path))
    sink = LocalSink(tmp_path / "out")
    sink.put_bytes("manifest/part-run-1-000001.parquet", b"rows", "application/octet-stream")
    remember(spec, SANDBOX_MODELS, manifest_parts(sink), DONE)
    return spec


def test_the_same_spec_over_the_same_parts_has_nothing_left_with_the_counts_it_had(settled, tmp_path):
    again = read_spec(tmp_path / "s.yaml")
    summary = settled_summary(again, SANDBOX_MODELS)
    assert summary is not None
    assert (summary.planned, summary.skipped, summary.previously_failed, summary.run_id) == (0, 4, 1, None)
    assert summary.verdict.startswith("nothing to do: all 4 jobs are in the manifest already")
    assert summary.output == str(tmp_path / "out") and summary.report is None  # no report was built


def test_a_changed_prompts_file_is_not_settled(settled, tmp_path):
    (tmp_path / "p.csv").write_text("prompt\na red fox\na lighthouse\na heron\n", encoding="utf-8")
    assert settled_summary(read_spec(tmp_path / "s.yaml"), SANDBOX_MODELS) is None


def test_an_edited_spec_or_an_override_is_not_settled(settled, tmp_path):
    assert settled_summary(read_spec(write_spec(tmp_path, seeds="[1, 2, 3]")), SANDBOX_MODELS) is None
    assert settled_summary(read_spec(tmp_path / "s.yaml", {"max_jobs": 3}), SANDBOX_MODELS) is None


def test_a_changed_source_file_is_not_settled(tmp_path):
    wildcard = "{subject: {file: subjects.txt}}"
    spec_path = write_spec(tmp_path, template="'a {subject}'", prompts="null", sweep=wildcard)
    spec = read_spec(spec_path)
    sink = LocalSink(tmp_path / "out")
    sink.put_bytes("manifest/part-1.parquet", b"rows", "application/octet-stream")
    remember(spec, SANDBOX_MODELS, manifest_parts(sink), DONE)
    assert settled_summary(read_spec(spec_path), SANDBOX_MODELS) is not None

    (tmp_path / "subjects.txt").write_text("fox\nowl\nheron\n", encoding="utf-8")
    assert settled_summary(read_spec(spec_path), SANDBOX_MODELS) is None


def test_rows_another_run_wrote_since_are_not_settled(settled, tmp_path):
    LocalSink(tmp_path / "out").put_bytes("manifest/part-run-2-000001.parquet", b"rows", "application/x")
    assert settled_summary(settled, SANDBOX_MODELS) is None


def test_other_models_are_not_settled(settled):
    record = {"model": "stable-diffusion-3-5-large", "slug": "sd-3-5", "request_schema": {"type": "object"}}
    answered = {"models": [{**record, "fetched_at": "2026-12-01T00:00:00+00:00"}], "missing": {}}
    assert settled_summary(settled, models_key(answered)) is None
    # When or whence the answer came is not what it says: the same models, asked again or said differently.
    again = {"models": [{**record, "fetched_at": "2026-12-07T00:00:00+00:00", "source": "cache"}]}
    assert models_key(answered) == models_key({**again, "missing": {}, "notes": ["said differently"]})
    schema = {**record, "request_schema": {"type": "object", "required": ["prompt"]}}
    assert models_key(answered) != models_key({"models": [schema], "missing": {}})


@pytest.mark.parametrize("record", [b"{not json", b'{"fingerprint": "x"}', b"[]"])
def test_an_unreadable_record_is_not_settled(settled, tmp_path, record):
    LocalSink(tmp_path / "out").put_bytes(SETTLED_KEY, record, "application/json")
    assert settled_summary(settled, SANDBOX_MODELS) is None


def test_an_output_without_a_manifest_is_never_settled(tmp_path):
    spec = read_spec(write_spec(tmp_path))
    remember(spec, SANDBOX_MODELS, [], DONE)
    assert settled_summary(spec, SANDBOX_MODELS) is None
