"""The Python API without a run: a cheap import, documented and typed names, specs and plans as the command
line has them, the manifest as pandas, contact sheets and images, and a coroutine run under a live loop."""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import inspect
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageChops
from typer.testing import CliRunner

import promptgrid
from promptgrid.cli import app
from promptgrid.errors import ApiUnreachable, InvalidInput
from promptgrid.output.manifest.read import status_counts
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import open_sink
from promptgrid.report.build import write_report
from promptgrid.report.layout import prompt_slug
from promptgrid.runs.execute import run_blocking
from promptgrid.types import Job, JobOutcome, JobStatus
from tests.support.report_run import CFGS, PROMPTS, SEEDS, STEPS, T0, record_retry_success, record_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PUBLIC = [name for name in promptgrid.__all__ if name != "__version__"]


def test_importing_promptgrid_loads_no_stage_and_no_heavy_library():
    code = (
        "import sys, promptgrid; heavy = ('prefect', 'pandas', 'PIL', 'pyarrow', 'typer', 'httpx'); "
        "loaded = [m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('promptgrid.')]; "
        "print(' '.join(sorted(loaded)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "promptgrid.version"  # `__version__`: a core module of a few lines


def test_every_public_name_is_listed_documented_and_typed():
    assert set(promptgrid.__all__) <= set(dir(promptgrid))
    for name in PUBLIC:
        value = getattr(promptgrid, name)
        assert inspect.getdoc(value), f"{name} has no docstring"
        if inspect.isfunction(value):
            signature = inspect.signature(value)
            assert signature.return_annotation is not inspect.Signature.empty, name
            untyped = [
                p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty
            ]
            assert untyped == [], name
            assert typing.get_type_hints(value)  # every annotation resolves to a type
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = promptgrid.no_such_name


def test_the_readme_and_the_python_doc_list_every_public_name():
    for doc in (ROOT / "README.md", ROOT / "docs" / "python.md"):
        text = doc.read_text(encoding="utf-8")
        assert [name for name in PUBLIC if f"promptgrid.{name}" not in text] == [], doc.name


# --- specs and plans ---------------------------------------------------------------------------------------


def test_a_dict_spec_loads_like_its_file_with_paths_from_base_dir():
    document = yaml.safe_load((CONFIGS / "demo.yaml").read_text(encoding="utf-8"))
    from_dict = promptgrid.load_spec(document, base_dir=CONFIGS)
    from_file = promptgrid.load_spec(CONFIGS / "demo.yaml")
    assert from_dict.prompts == from_file.prompts == (CONFIGS / "demo-prompts.csv").resolve()
    assert from_dict.spec_hash == from_file.spec_hash
    assert promptgrid.load_spec(from_file) is from_file


def test_spec_problems_are_the_command_lines_all_at_once(tmp_path):
    (tmp_path / "grid.csv").write_text("prompt,cfg\na,3\nb,-2\n", encoding="utf-8")
    spec = tmp_path / "bad.yaml"
    spec.write_text("model: stable-diffusion-3-5-large\nprompts: grid.csv\nseed: [1]\n", encoding="utf-8")
    cli = CliRunner().invoke(app, ["run", str(spec), "--dry-run"])
    assert isinstance(cli.exception, InvalidInput)

    with pytest.raises(InvalidInput) as raised:
        promptgrid.load_spec(spec)
    assert raised.value.problems == cli.exception.problems
    assert any("'seed'" in problem for problem in raised.value.problems)

    with pytest.raises(InvalidInput) as from_dict:
        promptgrid.load_spec(
            {"model": "stable-diffusion-3-5-large", "prompts": "grid.csv", "sweep": {"cfg": [-1]}}
        )
    assert all(problem.startswith("spec: ") for problem in from_dict.value.problems)
    assert any("grid.csv does not exist" in problem for problem in from_dict.value.problems)


def test_plan_is_the_dry_run(tmp_path):
    cli = CliRunner().invoke(app, ["run", str(CONFIGS / "demo.yaml"), "--dry-run"])
    assert cli.exit_code == 0, cli.output

    plan = promptgrid.plan(CONFIGS / "demo.yaml")

    assert str(plan) + "\n" == cli.stdout
    assert (plan.jobs, plan.rows, plan.distinct_prompts, plan.variants_per_row) == (24, 3, 3, 8)
    assert plan.requests == plan.creates + plan.polls and plan.creates == 24
    assert plan.cost_usd == pytest.approx(24 * 0.065)
    assert plan.seconds > 0 and plan.bound_by in ("rate limit", "concurrency")


def test_run_checks_its_arguments_before_anything_starts(monkeypatch):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)
    with pytest.raises(InvalidInput, match="api.rate_limit"):
        promptgrid.run(CONFIGS / "demo.yaml", sandbox=True, rate_limit="lots")
    with pytest.raises(InvalidInput, match="EACHLABS_API_KEY is not set.*sandbox=True"):
        promptgrid.run(CONFIGS / "demo.yaml", api_base="https://api.eachlabs.ai")
    # The demo's API is a local one: a sandbox is already what it points at, so that is not the advice.
    with pytest.raises(InvalidInput, match="EACHLABS_API_KEY is not set") as local:
        promptgrid.run(CONFIGS / "demo.yaml")
    assert "sandbox=True" not in str(local.value) and "127.0.0.1:8787" in str(local.value)
    with pytest.raises(InvalidInput, match="not both"):
        promptgrid.run(CONFIGS / "demo.yaml", sandbox=True, api_base="http://127.0.0.1:9")


def test_run_stops_at_once_on_an_api_that_cannot_be_reached(monkeypatch, tmp_path):
    monkeypatch.setenv("EACHLABS_API_KEY", "pg-unit-key")
    with pytest.raises(ApiUnreachable, match="cannot reach the API at http://127.0.0.1:9"):
        promptgrid.run(CONFIGS / "demo.yaml", api_base="http://127.0.0.1:9", output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_summary_is_ok_when_the_command_would_exit_0():
    counts = {"output": "out", "planned": 4, "succeeded": 3, "failed": 1, "skipped": 2, "api_requests": 9}
    assert promptgrid.RunSummary(**counts, previously_failed=0, fail_when="ratio > 0.5").ok
    assert not promptgrid.RunSummary(**counts, previously_failed=0, problem="1 of 4 jobs did not succeed").ok
    assert not promptgrid.RunSummary(**counts, previously_failed=1).ok  # an earlier failure still stands
    assert promptgrid.RunSummary(**counts, previously_failed=1, fail_when="never").ok


# --- the manifest as pandas --------------------------------------------------------------------------------


@pytest.fixture
def recorded(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    return sink, record_run(sink)


def test_one_typed_row_per_job_with_the_statuses_manifest_show_counts(recorded):
    sink, jobs = recorded
    failed = next(job for job in jobs if job.status == JobStatus.FAILED)
    record_retry_success(sink, failed, (1, 2, 3))

    df = promptgrid.read_manifest(sink.root)

    assert len(df) == len(jobs) and df["job_id"].is_unique
    assert df["status"].value_counts().to_dict() == status_counts(sink)
    assert df.set_index("job_id").loc[failed.job_id, "status"] == "success"
    dtypes = df.dtypes.astype(str).to_dict()
    assert {name: dtypes[name] for name in ("cfg", "steps", "seed", "width", "predict_time_s")} == {
        "cfg": "Float64", "steps": "Int32", "seed": "Int64", "width": "Int32", "predict_time_s": "Float64",
    }  # fmt: skip
    assert dtypes["completed_at"].startswith("datetime64") and "UTC" in dtypes["completed_at"]
    assert df["width"].isna().sum() == len([job for job in jobs if job.status != "success"]) - 1
    assert len(promptgrid.read_manifest(sink.root, latest=False)) == len(jobs) + 1


def test_status_picks_jobs_by_their_latest_status(recorded):
    sink, jobs = recorded
    failed = promptgrid.read_manifest(sink.root, status="failed")
    assert sorted(failed["job_id"]) == sorted(job.job_id for job in jobs if job.status == "failed")
    both = promptgrid.read_manifest(sink.root, status=["failed", "timed_out"])
    assert set(both["status"]) == {"failed", "timed_out"}
    with pytest.raises(InvalidInput, match="'done' is not a job status"):
        promptgrid.read_manifest(sink.root, status="done")
    with pytest.raises(InvalidInput, match="no manifest found"):
        promptgrid.read_manifest(sink.root + "-elsewhere")


def test_grid_columns_get_back_their_types(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    carried = [  # a Parquet grid's typed values, and a CSV grid's text
        {"item": 3, "ratio": 0.5, "keep": True, "note": "a", "row": "12", "code": "007"},
        {"item": 4, "ratio": 1, "note": "b", "row": "-3", "code": "8"},
    ]
    with ManifestWriter(sink, run_id="r", spec_hash="h") as writer:
        for index, columns in enumerate(carried):
            job = Job(
                f"job-{index}", "stable-diffusion-3-5-large", {"prompt": "p", "seed": index}, carried=columns
            )
            writer.add(
                job, JobOutcome(job.job_id, JobStatus.FAILED, "PROVIDER_REJECTED", completed_at=T0), None
            )

    df = promptgrid.read_manifest(sink.root).sort_values("job_id")

    columns = ["item", "ratio", "keep", "note", "row", "code"]
    assert df[columns].dtypes.astype(str).tolist() == [
        "Int64",
        "Float64",
        "boolean",
        "string",
        "Int64",
        "string",
    ]
    assert (
        df["item"].tolist() == [3, 4]
        and df["ratio"].tolist() == [0.5, 1.0]
        and df["row"].tolist() == [12, -3]
    )
    assert df["code"].tolist() == ["007", "8"]  # a leading zero is an identifier, not a number
    assert df["keep"].isna().tolist() == [False, True]
    assert [json.loads(text) for text in df["carried"]] == carried  # the manifest's own copy, untouched


def test_a_moved_output_opens_its_images_where_they_are_now(recorded, tmp_path):
    _, jobs = recorded
    moved = shutil.move(tmp_path / "out", tmp_path / "elsewhere")

    df = promptgrid.read_manifest(moved).set_index("job_id", drop=False)

    job = next(job for job in jobs if job.status == JobStatus.SUCCESS)
    assert df.loc[job.job_id, "image_uri"] == str(Path(moved) / job.image_key)
    picture = promptgrid.open_image(df.loc[job.job_id])
    assert picture.size == (96, 96) and picture.getpixel((10, 10)) == job.colour
    failure = next(job for job in jobs if job.status == JobStatus.TIMED_OUT)
    with pytest.raises(InvalidInput, match="status timed_out has no image \\(EXECUTION_TIMEOUT\\)"):
        promptgrid.open_image(df.loc[failure.job_id])


def test_an_s3_output_reads_and_draws_through_the_standard_aws_chain(s3_output):
    sink = open_sink(s3_output)
    jobs = record_run(sink)
    df = promptgrid.read_manifest(s3_output)
    job = next(job for job in jobs if job.status == JobStatus.SUCCESS)
    row = df[df["job_id"] == job.job_id].iloc[0]
    assert row["image_uri"] == f"{s3_output}/{job.image_key}"
    assert promptgrid.open_image(row).getpixel((0, 0)) == job.colour
    assert promptgrid.contact_sheet(df[df["prompt"] == PROMPTS[0]]).size[0] > 0


# --- contact sheets ----------------------------------------------------------------------------------------


def test_a_contact_sheet_is_the_reports_own_sheet(recorded):
    sink, _ = recorded
    write_report(sink, across="cfg", down="steps")
    df = promptgrid.read_manifest(sink.root)

    sheet = promptgrid.contact_sheet(df[df["prompt"] == PROMPTS[0]], rows="steps", cols="cfg")

    with Image.open(sink.local_path(f"report/sheets/{prompt_slug(PROMPTS[0])}.png")) as report_sheet:
        assert sheet.size == report_sheet.size
        assert ImageChops.difference(sheet, report_sheet.convert("RGB")).getbbox() is None


def test_a_contact_sheets_size_follows_its_axes(recorded):
    sink, _ = recorded
    df = promptgrid.read_manifest(sink.root)
    one = df[df["prompt"] == PROMPTS[0]]
    assert (len(CFGS), len(STEPS), len(SEEDS)) == (3, 2, 2)

    cfg_across = promptgrid.contact_sheet(one, rows="steps", cols="cfg")
    steps_across = promptgrid.contact_sheet(one, rows="cfg", cols="steps")
    seeds_across = promptgrid.contact_sheet(one, rows="cfg", cols="seed")
    every_prompt = promptgrid.contact_sheet(df, rows="steps", cols="cfg")

    assert cfg_across.width > steps_across.width and cfg_across.height < steps_across.height
    # Three cfg values down either way; two steps or two seeds across, each cell holding the other two.
    assert seeds_across.size == steps_across.size
    assert every_prompt.width == cfg_across.width
    assert every_prompt.height > len(PROMPTS) * cfg_across.height


def test_a_contact_sheet_names_a_wrong_axis_and_what_would_work(recorded):
    sink, _ = recorded
    df = promptgrid.read_manifest(sink.root)
    with pytest.raises(InvalidInput) as raised:
        promptgrid.contact_sheet(df, rows="nope", cols="cfg")
    assert raised.value.problems == [
        "contact_sheet: rows='nope' is not a parameter in the manifest; choose one of: cfg, steps, "
        "aspect_ratio, prompt_strength, output_quality, output_format, model, image, seed"
    ]
    with pytest.raises(InvalidInput, match="no rows"):
        promptgrid.contact_sheet(df[df["status"] == "nothing"])


# --- a coroutine from synchronous code, under a running loop -----------------------------------------------

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="unset")


async def where_am_i() -> tuple[str, str, int]:
    await asyncio.sleep(0)
    return threading.current_thread().name, LABEL.get(), id(asyncio.get_running_loop())


async def test_under_a_running_loop_it_runs_on_a_worker_threads_loop_with_this_context():
    LABEL.set("cell")
    thread, label, loop = run_blocking(where_am_i)
    assert thread == "promptgrid-run" and label == "cell"
    assert loop != id(asyncio.get_running_loop())


def test_without_a_running_loop_it_runs_here():
    thread, _, _ = run_blocking(where_am_i)
    assert thread == threading.current_thread().name


async def test_an_exception_in_the_worker_is_raised_to_the_caller():
    async def fail() -> None:
        raise InvalidInput(["spec: from the worker"])

    with pytest.raises(InvalidInput, match="from the worker"):
        run_blocking(fail)


async def test_interrupting_the_waiting_caller_cancels_the_run_and_raises_again():
    cancelled = threading.Event()

    async def long_run() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # While a cell executes, ipykernel sets Python's default SIGINT handler, so its interrupt button raises
    # KeyboardInterrupt in the waiting thread (this test's runner would otherwise cancel its own task).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_blocking(long_run)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cancelled.is_set() and time.monotonic() - started < 30
