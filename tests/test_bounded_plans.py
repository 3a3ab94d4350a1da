"""Bounded plans: a dry run counts a trillion jobs by multiplication, a wildcard that is no regular file (or
too large) is refused, and a run larger than max_jobs is refused before anything is sent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import promptgrid
from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.spec.load import load_spec
from promptgrid.spec.plan import EXACT_COUNT_LIMIT, check_run_size, count_jobs, plan_jobs
from promptgrid.spec.sources import MAX_WILDCARD_BYTES
from tests.support.processes import promptgrid as promptgrid_command

MODEL = "model: stable-diffusion-3-5-large\n"
GROUP = "{a|b|c|d|e|f|g|h|i|j}"


def write_spec(folder: Path, text: str) -> Path:
    (folder / "spec.yaml").write_text(text, encoding="utf-8")
    return folder / "spec.yaml"


@pytest.mark.timeout(60)  # a plan that enumerated its jobs would take days
def test_a_dry_run_of_a_trillion_jobs_prints_its_count(tmp_path: Path) -> None:
    template = " ".join([GROUP] * 12)
    spec = write_spec(tmp_path, f"{MODEL}template: '{template}'\n")

    result = CliRunner().invoke(app, ["run", str(spec), "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "jobs: 1,000,000,000,000 (1 per prompt; counted by multiplication" in result.output
    assert "template: 1,000,000,000,000 prompts rendered" in result.output
    assert "'a a a a a a a a a a a a'" in result.output  # a rendered sample
    assert "max_jobs: 1,000,000: a run of this spec is refused" in result.output


def test_below_the_exact_limit_identical_jobs_still_collapse(tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text("prompt\nsame\nsame\nother\n", encoding="utf-8")
    spec = load_spec(write_spec(tmp_path, f"{MODEL}prompts: grid.csv\nseeds: [1, 2]\n"))
    plan = plan_jobs(spec)
    assert (plan.total_jobs, plan.duplicates_collapsed, plan.exact) == (4, 2, True)
    multiplied = plan_jobs(spec, exact_limit=5)  # 6 jobs before collapsing: above the limit
    assert (multiplied.total_jobs, multiplied.duplicates_collapsed, multiplied.exact) == (6, 0, False)
    assert count_jobs(spec) == 6 and EXACT_COUNT_LIMIT >= 1_000_000


def refusal(spec: Path) -> str:
    """The InvalidInput a dry run of `spec` raises (the command exits 2 with it)."""
    result = CliRunner().invoke(app, ["run", str(spec), "--dry-run"])
    assert isinstance(result.exception, InvalidInput), result.output
    return str(result.exception)


@pytest.mark.timeout(30)  # reading /dev/zero would never end
def test_a_wildcard_read_from_a_device_is_refused_naming_the_file(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, f"{MODEL}template: 'a {{color}}'\nsweep:\n  color: {{file: /dev/zero}}\n")
    done = promptgrid_command("run", str(spec), "--dry-run", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "spec.yaml line 4: sweep.color: file /dev/zero is not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(30)  # opening a FIFO with no writer would block for good
def test_a_fifo_wildcard_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "colors.txt")
    spec = write_spec(tmp_path, f"{MODEL}template: 'a {{color}}'\nsweep:\n  color: {{file: colors.txt}}\n")
    assert "colors.txt is not a regular file" in refusal(spec)


def test_a_wildcard_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "colors.txt", "wb") as handle:
        handle.truncate(MAX_WILDCARD_BYTES + 1)  # sparse: its size is what is judged, before reading
    spec = write_spec(tmp_path, f"{MODEL}template: 'a {{color}}'\nsweep:\n  color: {{file: colors.txt}}\n")
    assert f"has {MAX_WILDCARD_BYTES + 1:,} bytes; at most {MAX_WILDCARD_BYTES:,}" in refusal(spec)


def test_max_jobs_is_a_spec_key_a_flag_and_an_environment_setting(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, f"{MODEL}template: '{GROUP} {GROUP}'\nmax_jobs: 50\n")
    spec = load_spec(spec_path)
    with pytest.raises(InvalidInput) as caught:
        check_run_size(spec)
    assert "spec.yaml line 3: max_jobs: the spec makes 100 jobs, more than max_jobs 50" in str(caught.value)
    assert check_run_size(load_spec(spec_path, overrides={"max_jobs": 100})) == 100
    raised = load_spec(spec_path, environment={"max_jobs": 200})
    assert raised.max_jobs == 200 and raised.setting_origins["max_jobs"] == "PROMPTGRID_MAX_JOBS"
    with pytest.raises(InvalidInput, match=r"max_jobs: 0 is below 1"):
        load_spec(write_spec(tmp_path, f"{MODEL}template: a\nmax_jobs: 0\n"))


@pytest.mark.integration  # the installed command against a live sandbox
def test_a_run_above_max_jobs_is_refused_with_no_create(tmp_path: Path, sandbox) -> None:
    spec = write_spec(tmp_path, f"{MODEL}template: '{GROUP}'\nseeds: {{count: 3}}\noutput: out\n")
    env = {**os.environ, "EACHLABS_API_KEY": "pg-bounded-plans-key"}
    args = ("run", str(spec), "--api-base", sandbox.url, "--max-jobs", "29")
    done = promptgrid_command(*args, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "the spec makes 30 jobs, more than max_jobs 29" in done.stderr
    assert sandbox.stats()["creates"] == 0 and sandbox.stats()["requests"]["create"] == 0
    assert not (tmp_path / "out" / "manifest").exists()


def test_a_python_run_above_max_jobs_is_refused_before_anything_starts(tmp_path: Path) -> None:
    spec = {"model": "stable-diffusion-3-5-large", "template": f"{GROUP} {GROUP}", "max_jobs": 99}
    with pytest.raises(InvalidInput) as caught:
        promptgrid.run(spec, output=str(tmp_path / "out"), sandbox=True)
    assert caught.value.problems == [
        "spec: max_jobs: the spec makes 100 jobs, more than max_jobs 99; nothing was sent. Raise it "
        "(max_jobs: N in the spec, --max-jobs N, or PROMPTGRID_MAX_JOBS) if you mean to run them all, or "
        "make the grid smaller (`promptgrid run SPEC --dry-run` counts the jobs)"
    ]
    assert not (tmp_path / "out").exists()
