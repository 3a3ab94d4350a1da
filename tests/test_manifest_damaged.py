"""A damaged manifest part (truncated, zero bytes) stops no command that reads the manifest: `export`,
`report` and `manifest show` skip it with a warning naming it, through the real Typer app."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.output.manifest.read import part_keys
from promptgrid.output.sinks import open_sink
from tests.support.exports import load_hf
from tests.support.report_run import FAILURES, record_run

ZERO = "manifest/part-zz-zero-bytes.parquet"
TRUNCATED = "manifest/part-zz-truncated.parquet"


@pytest.fixture
def damaged(tmp_path) -> str:
    """A finished run (32 images, 4 failures) whose manifest also holds a zero-byte and a truncated part."""
    sink = open_sink(str(tmp_path / "out"))
    record_run(sink)
    (whole,) = part_keys(sink)
    sink.put_bytes(ZERO, b"", "application/octet-stream")
    sink.put_bytes(TRUNCATED, sink.get_bytes(whole)[:-40], "application/octet-stream")
    return sink.root


def invoke(caplog, *args: str) -> tuple[str, list[str]]:
    """The command's output, and the manifest warnings it logged; it must end well."""
    with caplog.at_level(logging.WARNING, logger="promptgrid.manifest"):
        result = CliRunner().invoke(app, list(args))
    assert result.exception is None and result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "ArrowInvalid" not in result.output
    return result.output, [r.getMessage() for r in caplog.records if r.name == "promptgrid.manifest"]


def assert_both_named(warned: list[str]) -> None:
    assert any(ZERO in text and "damaged" in text for text in warned), warned
    assert any(TRUNCATED in text and "damaged" in text for text in warned), warned


def test_export_skips_damaged_parts_and_names_them(damaged, tmp_path, caplog):
    _, warned = invoke(caplog, "export", damaged, "--to", str(tmp_path / "hf"), "--format", "hf")
    assert_both_named(warned)
    assert len(load_hf(tmp_path / "hf", decode=False)) == 32  # every row of the whole part


def test_report_skips_damaged_parts_and_names_them(damaged, caplog):
    _, warned = invoke(caplog, "report", damaged)
    assert_both_named(warned)
    assert (open_sink(damaged).folder / "report" / "index.html").is_file()


def test_manifest_show_skips_damaged_parts_and_names_them(damaged, caplog):
    shown, warned = invoke(caplog, "manifest", "show", damaged)
    assert_both_named(warned)
    lines = [line.split() for line in shown.splitlines()]
    assert ["success", "32"] in lines and ["total", str(32 + len(FAILURES))] in lines
