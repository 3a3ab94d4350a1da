"""The report after a real run: the generate flow on the sandbox, some jobs rejected, then the report."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.flows.generate import generate
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks.local import LocalSink
from tests.support.report_run import ReportPage

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
    pytest.mark.usefixtures("prefect_harness"),
]

KEY = "pg-report-test-key"
PROMPTS = ("a red fox in fresh snow", 'a <b>bold</b> lighthouse, ""quoted""', "ünïcode ramen 🍜")


def write_spec(folder: Path) -> Path:
    """3 prompts × 3 cfg × 2 steps, one seed: the 18-job grid the report is judged on."""
    rows = "\n".join(f'"{prompt}"' for prompt in PROMPTS)
    (folder / "prompts.csv").write_text(f"prompt\n{rows}\n", encoding="utf-8")
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: report-test\n"
        "model: stable-diffusion-3-5-large\n"
        "prompts: prompts.csv\n"
        "inputs: {output_format: png, aspect_ratio: '1:1'}\n"
        "sweep: {cfg: [2.0, 3.5, 7.0], steps: [20, 35]}\n"
        "seeds: [1]\n"
        f"output: {folder / 'out'}\n",
        encoding="utf-8",
    )
    return spec


def test_report_after_a_run_with_rejections(tmp_path, sandbox_factory, monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    # Half the predictions end in a content-filter rejection, which is final: those jobs fail for good.
    sandbox = sandbox_factory(
        api_key=KEY, error_rate=0.5, error_codes=(("PROVIDER_REJECTED", False),), seed=7
    )
    spec = write_spec(tmp_path)
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
    state = asyncio.run(generate(spec_path=str(spec), return_state=True, **params))
    assert state.is_failed()  # rejections fail the run; the report is written all the same
    sink = LocalSink(tmp_path / "out")
    rows = read_manifest(sink).to_pylist()
    assert len(rows) == 18
    failed = [row for row in rows if row["status"] != "success"]
    assert 0 < len(failed) < 18, "the run should mix images and rejections"

    result = CliRunner().invoke(app, ["report", str(sink.path)])

    assert result.exit_code == 0, result.output
    index = sink.path / "report" / "index.html"
    page = ReportPage(index.read_text(encoding="utf-8"))
    for row in rows:
        figure = page.figure_for(row["job_id"])
        if row["status"] == "success":
            assert figure.kind == "ok"
            assert (index.parent / urllib.parse.unquote(figure.href)).resolve() == Path(row["image_uri"])
            assert (index.parent / urllib.parse.unquote(figure.src)).is_file()
        else:
            assert figure.kind == "failed" and figure.src is None
            assert row["error_code"] == "PROVIDER_REJECTED"
            assert row["error_code"] in figure.text and row["error_message"] in figure.text
    assert len(list((sink.path / "report" / "sheets").glob("*.png"))) == len(PROMPTS)


def test_a_chosen_report_layout_survives_a_later_run(tmp_path, sandbox_factory, monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    sandbox = sandbox_factory(api_key=KEY)
    spec = write_spec(tmp_path)
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
    assert asyncio.run(generate(spec_path=str(spec), return_state=True, **params)).is_completed()
    out = tmp_path / "out"

    def corner() -> str:
        page = ReportPage((out / "report" / "index.html").read_text(encoding="utf-8"))
        return next(header for header in page.headers if "→" in header)

    assert corner() == "steps ↓ / cfg →"
    result = CliRunner().invoke(app, ["report", str(out), "--across", "steps", "--down", "cfg"])
    assert result.exit_code == 0, result.output
    assert corner() == "cfg ↓ / steps →"

    # A later run with nothing to do still writes the report: in the layout chosen, not the default.
    assert asyncio.run(generate(spec_path=str(spec), return_state=True, **params)).is_completed()
    assert corner() == "cfg ↓ / steps →"
    assert len(list((out / "report" / "sheets").glob("*.png"))) == len(PROMPTS)
