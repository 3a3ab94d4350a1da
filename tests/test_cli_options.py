"""The command line's options: one set of API options for every command that sends requests, help without
type noise, `--version`, and a missing key explained for the API in force."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.version import VERSION

API_OPTIONS = ("--api-base", "--rate-limit", "--max-concurrent", "--polls-count", "--sandbox", "--time-scale")


def help_of(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"promptgrid {VERSION}"


@pytest.mark.parametrize("command", [("run",), ("backfill",)])
def test_run_and_backfill_take_the_same_api_options(command):
    text = help_of(*command)
    assert [option for option in API_OPTIONS if option not in text] == []
    assert re.search(r"--rate-limit .*auto", text)


def test_models_show_asks_the_api_with_the_same_connection_options():
    text = help_of("models", "show")
    assert all(option in text for option in ("--api-base", "--sandbox", "--time-scale"))


@pytest.mark.parametrize("command", [("run",), ("backfill",), ("report",), ("manifest", "check")])
def test_flags_show_no_type_in_help(command):
    flags = [line for line in help_of(*command).splitlines() if "<bool>" in line and "--help" not in line]
    assert flags == []


def test_a_missing_key_for_a_local_api_does_not_suggest_the_sandbox(monkeypatch):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)
    monkeypatch.setenv("EACHLABS_API_BASE", "http://127.0.0.1:9")  # a sandbox elsewhere: nothing is asked

    result = CliRunner().invoke(app, ["models", "show", "flux-1-dev"])

    assert isinstance(result.exception, InvalidInput), result.output
    text = str(result.exception)
    assert "EACHLABS_API_KEY is not set" in text and "--sandbox" not in text and "127.0.0.1:9" in text


def test_a_missing_key_for_the_real_api_suggests_the_sandbox(monkeypatch, tmp_path):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)
    monkeypatch.delenv("EACHLABS_API_BASE", raising=False)
    (tmp_path / "p.csv").write_text("prompt\na cat\n", encoding="utf-8")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"model: stable-diffusion-3-5-large\nprompts: p.csv\noutput: {tmp_path / 'out'}\n")

    result = CliRunner().invoke(app, ["run", str(spec)])

    assert isinstance(result.exception, InvalidInput), result.output
    assert "EACHLABS_API_KEY is not set: export your Eachlabs API key, or pass --sandbox" in str(
        result.exception
    )
    assert not (tmp_path / "out").exists()


def test_a_sandbox_and_an_api_base_together_are_refused():
    result = CliRunner().invoke(app, ["backfill", "out", "--sandbox", "--api-base", "http://127.0.0.1:9"])
    assert isinstance(result.exception, InvalidInput) and "not both" in str(result.exception)
