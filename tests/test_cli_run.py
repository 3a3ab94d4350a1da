"""`promptgrid run` and `promptgrid backfill` as a user types them: what they refuse before anything runs."""

from __future__ import annotations

import os

import pytest

from promptgrid.output.saved_spec import save_spec
from promptgrid.output.sinks import open_sink
from tests.support.processes import promptgrid

pytestmark = pytest.mark.integration  # the installed command, in a process of its own


def test_run_without_a_key_is_a_clear_error_before_anything_runs(tmp_path, monkeypatch, sandbox):
    (tmp_path / "p.csv").write_text("prompt\na cat\n", encoding="utf-8")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"model: stable-diffusion-3-5-large\nprompts: p.csv\noutput: {tmp_path / 'out'}\n")
    env = {k: v for k, v in os.environ.items() if k != "EACHLABS_API_KEY"}

    result = promptgrid("run", str(spec), "--api-base", sandbox.url, env=env)

    assert result.returncode == 2
    assert "EACHLABS_API_KEY" in result.stderr and "Traceback" not in result.stderr
    assert sandbox.stats()["requests"].get("create", 0) == 0
    assert not (tmp_path / "out").exists()


def test_backfill_of_a_folder_that_is_no_output_exits_2(tmp_path):
    result = promptgrid("backfill", str(tmp_path), "--sandbox")

    assert result.returncode == 2
    assert "spec.yaml" in result.stderr and "Traceback" not in result.stderr


def test_backfill_rejects_an_unknown_status(tmp_path):
    # A real output (its spec saved), so the status is the only thing wrong with the command.
    save_spec(open_sink(str(tmp_path)), "model: stable-diffusion-3-5-large\nprompts: p.csv\n")

    result = promptgrid("backfill", str(tmp_path), "--status", "broken", "--sandbox")

    assert result.returncode == 2
    assert "unknown status broken" in result.stderr and "Traceback" not in result.stderr
