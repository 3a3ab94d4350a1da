"""Any model end to end: the generate flow and the `promptgrid` command against sandboxes that know one slug
spelling, read only Bearer, serve a model promptgrid has no table for, or render sizes off every table."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from promptgrid.flows.backfill import backfill
from promptgrid.flows.generate import generate
from promptgrid.models.records import UserCache
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from tests.support.processes import free_port, promptgrid

pytestmark = [
    pytest.mark.integration,  # the Prefect test server, or the installed command in a process of its own
]

KEY = "pg-any-model-key-51d2"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DASHED, DOTTED = "stable-diffusion-3-5-large", "stable-diffusion-3.5-large"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    return KEY


def write_spec(
    folder: Path, model: str, extra: str = "", grid: str = "prompt,item\na red fox,1\na kite,2\n"
) -> Path:
    (folder / "prompts.csv").write_text(grid, encoding="utf-8")
    spec = folder / "spec.yaml"
    spec.write_text(
        f"name: any-model\nmodel: {model}\nprompts: prompts.csv\nseeds: [1, 2]\noutput: {folder / 'out'}\n"
        + extra,
        encoding="utf-8",
    )
    return spec


def run_generate(spec: Path, sandbox, **params):
    """The run's summary, which a Failed run (some job failed) keeps as its result too."""
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0, **params}
    state = asyncio.run(generate(spec_path=str(spec), return_state=True, **params))
    return state.result(raise_on_failure=False)


def manifest(folder: Path) -> list[dict]:
    return read_manifest(open_sink(str(folder / "out"))).to_pylist()


def refused_creates(stats: dict) -> int:
    return stats["requests"]["create"] - stats["creates"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("spelling", "written", "sent"), [("dotted", DASHED, DOTTED), ("dashed", DOTTED, DASHED)]
)
def test_either_spelling_in_the_spec_reaches_an_api_that_knows_only_the_other(
    tmp_path, sandbox_factory, api_key, spelling, written, sent
):
    sandbox = sandbox_factory(api_key=api_key, slug_spelling=spelling, bearer_only=True)
    spec = write_spec(tmp_path, written, "inputs: {output_format: png, steps: 20}\n")

    summary = run_generate(spec, sandbox)

    assert summary.succeeded == 4 and summary.failed == 0
    stats = sandbox.stats()
    assert "401" not in stats["responses"] and refused_creates(stats) == 0  # no create answered 404 or 401
    rows = manifest(tmp_path)
    assert {(row["model"], row["resolved_model"]) for row in rows} == {(DASHED, sent)}
    assert (tmp_path / "out" / "models" / f"{DASHED}.json").is_file()


@pytest.mark.usefixtures("prefect_harness")
def test_a_model_described_only_by_its_schema_endpoint_runs_a_sweep(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key, bearer_only=True)
    extra = (
        "inputs: {width: 512, height: 768}\nsweep: {guidance: [2.5, 4.0], num_inference_steps: [12, 24]}\n"
    )
    spec = write_spec(tmp_path, "flux-1-dev", extra)

    summary = run_generate(spec, sandbox)

    assert summary.succeeded == 16 and summary.failed == 0
    rows = manifest(tmp_path)
    assert {(row["width"], row["height"], row["size_mismatch"]) for row in rows} == {(512, 768, False)}
    assert Counter(row["input_guidance"] for row in rows) == {2.5: 8, 4.0: 8}
    assert {row["resolved_model"] for row in rows} == {"flux-1-dev"}
    assert UserCache(sandbox.url).load("flux-1-dev") is not None  # offline dry runs know it now


@pytest.mark.usefixtures("prefect_harness")
def test_images_off_every_size_table_all_succeed_with_their_real_sizes(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key, size_delta_px=-24)
    spec = write_spec(tmp_path, DASHED, "zip: {aspect_ratio: ['1:1', '21:9']}\n")

    summary = run_generate(spec, sandbox)

    assert summary.succeeded == 8 and summary.failed == 0
    rows = manifest(tmp_path)
    assert {(row["width"], row["height"]) for row in rows} == {(1000, 1000), (1512, 616)}
    assert {row["size_mismatch"] for row in rows} == {True} and {row["image_format"] for row in rows} == {
        "webp"
    }
    assert all(Path(row["image_uri"]).is_file() for row in rows)


@pytest.mark.usefixtures("prefect_harness")
def test_the_two_model_study_runs_and_backfill_selects_by_either_models_inputs(
    tmp_path, sandbox_factory, api_key
):
    for name in ("two-model-study.yaml", "demo-prompts.csv"):
        shutil.copy(CONFIGS / name, tmp_path / name)
    failing = sandbox_factory(api_key=api_key, error_rate=1.0, error_codes=(("PROVIDER_REJECTED", False),))
    spec = tmp_path / "two-model-study.yaml"
    output = str(tmp_path / "out")

    first = run_generate(spec, failing, output=output)

    assert first.failed == 12 and failing.stats()["creates"] == 12
    healthy = sandbox_factory(api_key=api_key)
    params = {"api_base": healthy.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
    again = asyncio.run(backfill(output=output, where="input_guidance > 3", return_state=True, **params))
    assert again.result().succeeded == 6 and healthy.stats()["creates"] == 6
    rest = asyncio.run(backfill(output=output, where="cfg = 4.5", return_state=True, **params)).result()
    assert rest.succeeded == 6
    table = read_manifest(open_sink(output))
    assert pc.all(pc.equal(table.column("status"), "success")).as_py()
    sizes = {(row["model"], row["width"], row["height"]) for row in table.to_pylist()}
    assert sizes == {(DASHED, 1344, 768), ("flux-1-dev", 1344, 768)}


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "EACHLABS_API_KEY": KEY, **extra}


def test_an_out_of_range_value_for_a_model_without_a_table_is_exit_2_before_any_create(tmp_path, sandbox):
    grid = "prompt,guidance\na red fox,3\na kite,12.5\n"
    spec = write_spec(tmp_path, "flux-1-dev", grid=grid)

    done = promptgrid("run", str(spec), "--api-base", sandbox.url, env=cli_env(), cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert "prompts.csv line 3, column guidance: '12.5' is not allowed; expected a number from 0 to 10" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    assert sandbox.stats()["creates"] == 0 and sandbox.stats()["requests"]["create"] == 0


def test_an_api_that_cannot_be_reached_fails_the_run_with_its_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    spec = write_spec(tmp_path, DASHED)

    done = promptgrid("run", str(spec), "--api-base", url, env=cli_env())

    assert done.returncode == 1 and f"cannot reach the API at {url}" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_models_show_prints_the_inputs_the_api_states(tmp_path):
    env = cli_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    shown = promptgrid("models", "show", "flux-1-dev", "--sandbox", env=env)

    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "a number from 0 to 10" in lines["guidance"] and "3.5" in lines["guidance"]
    assert "an integer from 256 to 1440, a multiple of 16" in lines["width"]
    assert "string (required)" in lines["prompt"]
    offline = promptgrid("models", "show", DOTTED, "--offline", env=env)
    assert offline.returncode == 0 and "the built-in table" in offline.stdout
    assert "one of 1:1, 16:9" in offline.stdout
    unknown = promptgrid("models", "show", "sd-9.9-gone", "--sandbox", env=env)
    assert unknown.returncode == 2 and "knows neither 'sd-9.9-gone' nor 'sd-9-9-gone'" in unknown.stderr
