"""One run service under both faces: `promptgrid run --sandbox` and `promptgrid.run(spec, sandbox=True)` keep
to the same limits, send the same requests and end with the same summary; a rerun says where the report is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import promptgrid
import promptgrid.sandbox.server as sandbox_server
from promptgrid.cli import app

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
    pytest.mark.usefixtures("prefect_harness"),
]

TIME_SCALE = 100.0


def write_spec(folder: Path) -> Path:
    (folder / "p.csv").write_text("prompt\na red fox\na lighthouse\n", encoding="utf-8")
    spec = folder / "s.yaml"
    # An explicit limit, which a sandbox's faster clock must shrink alike for both faces.
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: p.csv\ninputs: {output_format: jpg}\n"
        "sweep: {cfg: [2.5, 4.0]}\nseeds: [1, 2]\n"
        f"output: {folder / 'unused'}\napi: {{rate_limit: 60/60s, max_concurrent: 4}}\n",
        encoding="utf-8",
    )
    return spec


def settings_in_force(notes: str) -> list[str]:
    """The settings table's lines for the limits (the sandbox's URL differs run to run)."""
    return [
        line.strip() for line in notes.splitlines() if re.match(r"\s+api\.(rate_limit|max_conc|polls)", line)
    ]


def test_the_command_and_the_notebook_run_a_spec_alike_on_a_sandbox(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)  # a sandbox needs none
    spec = write_spec(tmp_path)
    by_cli, by_notebook = str(tmp_path / "cli"), str(tmp_path / "notebook")
    args = ["run", str(spec), "--sandbox", "--time-scale", f"{TIME_SCALE:g}", "--output", by_cli]

    command = CliRunner().invoke(app, [*args, "--no-report"])
    summary = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=by_notebook, report=False)

    assert command.exit_code == 0 == summary.exit_code, command.stderr
    limits = settings_in_force(command.stderr)
    assert limits == settings_in_force(capsys.readouterr().err)
    assert "api.rate_limit      60/0.6s  (x100 time)" in limits
    assert (summary.planned, summary.succeeded, summary.failed) == (8, 8, 0)
    # The same counts in the same words: the command's text is the summary's. The requests each run sent
    # depend on when its predictions ended against its polls and listings (12 against 13 seen on a loaded
    # machine), so that one count is read from each text and held to a create each plus reads.
    requests = re.compile(r"(\d+) API requests")
    said, described = command.stdout.strip(), summary.describe().replace(by_notebook, by_cli)
    assert requests.sub("N API requests", said) == requests.sub("N API requests", described)
    assert int(requests.search(described).group(1)) == summary.api_requests
    for sent in (summary.api_requests, int(requests.search(said).group(1))):
        assert summary.planned < sent <= 3 * summary.planned


def test_a_rerun_with_nothing_to_do_says_where_the_report_is(tmp_path, monkeypatch):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)
    spec = write_spec(tmp_path)
    output = str(tmp_path / "out")
    first = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=output)
    assert first.report and first.report.endswith("report/index.html")

    again = CliRunner().invoke(app, ["run", str(spec), "--sandbox", "--output", output])

    assert again.exit_code == 0, again.stderr
    assert "nothing to do: all 8 jobs are in the manifest already" in again.stderr
    assert f"report:   {first.report}" in again.stdout
    rerun = promptgrid.run(spec, sandbox=True, output=output)
    assert rerun.run_id is None and rerun.report == first.report and rerun.api_requests == 0
    assert rerun.verdict == "nothing to do: all 8 jobs are in the manifest already"


def test_backfill_runs_what_failed_through_the_same_service(tmp_path, monkeypatch, sandbox_factory):
    monkeypatch.setenv("EACHLABS_API_KEY", "pg-service-key-5e1")
    failing = sandbox_factory(
        api_key="pg-service-key-5e1", error_rate=0.5, error_codes=(("PROVIDER_REJECTED", False),)
    )
    healthy = sandbox_factory(api_key="pg-service-key-5e1")
    output = str(tmp_path / "out")
    first = promptgrid.run(
        write_spec(tmp_path), api_base=failing.url, time_scale=TIME_SCALE, output=output, report=False
    )
    assert first.failed > 0 and first.exit_code == 1

    args = ["backfill", output, "--api-base", healthy.url, "--time-scale", f"{TIME_SCALE:g}"]
    again = CliRunner().invoke(app, [*args, "--max-concurrent", "2", "--no-polls-count"])

    assert again.exit_code == 0, again.stderr
    assert f"{first.failed} jobs to run again" in again.stderr
    assert f"{first.failed} images generated, 0 failed" in again.stdout
    assert healthy.stats()["creates"] == first.failed


def test_a_rerun_answers_from_the_output_and_any_change_sends_it_the_long_way(tmp_path, monkeypatch):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)
    spec = write_spec(tmp_path)
    output = str(tmp_path / "out")
    first = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=output, report=False)
    assert first.succeeded == 8

    def no_sandbox(*args, **kwargs):
        raise AssertionError("a rerun with nothing left started a sandbox")

    with monkeypatch.context() as patched:  # the output's record answers: no sandbox, no models asked
        patched.setattr(sandbox_server, "running_sandbox", no_sandbox)
        rerun = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=output, report=False)
    assert (rerun.run_id, rerun.skipped, rerun.api_requests) == (None, 8, 0)

    with (tmp_path / "p.csv").open("a", encoding="utf-8") as grid:
        grid.write("a heron\n")  # 4 more jobs: the record no longer answers, the long way finds them
    third = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=output, report=False)
    assert (third.planned, third.succeeded, third.skipped) == (4, 4, 8)

    with monkeypatch.context() as patched:  # the run that did them left the record for the next
        patched.setattr(sandbox_server, "running_sandbox", no_sandbox)
        fourth = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=output, report=False)
    assert (fourth.run_id, fourth.skipped) == (None, 12)

    # What such a rerun costs is the command's imports: no Prefect, nor the grid's readers (pyarrow, and
    # pandas, which pyarrow imports on Python values). A backfill's dry run reads the manifest, no Prefect.
    rerun_loads = heavy_modules_loaded("run", str(spec), "--sandbox", "--output", output)
    assert rerun_loads == [], rerun_loads
    dry_run_loads = heavy_modules_loaded("backfill", output, "--status", "success", "--dry-run")
    assert "pyarrow" in dry_run_loads and "prefect" not in dry_run_loads, dry_run_loads


def heavy_modules_loaded(*args: str) -> list[str]:
    """The heavy libraries a `promptgrid` command imports, run in a process of its own."""
    code = (
        "import sys\nfrom promptgrid.cli import main\nsys.argv = ['promptgrid', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
        "heavy = ('prefect', 'pandas', 'pyarrow', 'redis')\n"
        "print('loaded:', *sorted({m.split('.')[0] for m in sys.modules} & set(heavy)), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr.strip().splitlines()[-1].split()[1:]
