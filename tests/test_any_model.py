"""Any model, not only SD3.5: the sandbox's model endpoints and its model with other input names, a
two-model study checked against both schemas, its jobs, what the manifest records, and backfill's SQL."""

from __future__ import annotations

import io
import json
import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from PIL import Image

from promptgrid.api.client import ApiClient
from promptgrid.api.prediction import PredictionStatus, parse_prediction
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.engine.selection import job_from_row, select_rows
from promptgrid.errors import InvalidInput
from promptgrid.models.catalog import BUILTIN, ModelCatalog
from promptgrid.models.schema import ModelSchema
from promptgrid.output.manifest.read import latest_rows
from promptgrid.output.manifest.rows import MANIFEST_SCHEMA, outcome_row, rows_to_table
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.sandbox.models import FLUX_SCHEMA
from promptgrid.settings import ApiKey
from promptgrid.spec.expand import iter_job_batches
from promptgrid.spec.load import load_spec
from promptgrid.types import Job, JobOutcome, JobStatus
from tests.support.sandbox import TEST_TIME_SCALE

KEY = {"Authorization": "Bearer test-key"}
FLUX = ModelSchema("flux-1-dev", FLUX_SCHEMA, "the sandbox's model endpoint")
CATALOG = ModelCatalog([BUILTIN["stable-diffusion-3-5-large"], FLUX])
TWO_MODEL_SPEC = """\
name: two-models
prompts: prompts.csv
sweep:
  model: [stable-diffusion-3.5-large, flux-1-dev]
inputs: {output_format: png, cfg: 4.5, steps: 28, guidance: 3.0, num_inference_steps: 20, width: 768}
seeds: [1, 2]
"""


def test_the_model_endpoints_describe_each_model_in_the_spellings_the_api_knows(sandbox_factory):
    dotted = sandbox_factory(slug_spelling="dotted")
    with httpx.Client(base_url=dotted.url, headers=KEY, timeout=5) as client:
        found = client.get("/v1/model", params={"slug": "stable-diffusion-3.5-large"})
        assert found.status_code == 200 and found.json()["slug"] == "stable-diffusion-3.5-large"
        assert set(found.json()) == {"title", "slug", "version", "output_type", "request_schema", "cost"}
        missing = client.get("/v1/model", params={"slug": "stable-diffusion-3-5-large"})
        assert missing.status_code == 404
        assert missing.json() == {"error": "Failed to fetch model: model not found"}
        assert client.get("/v1/model").status_code == 400
        document = client.get("/v1/models/flux-1-dev/schemas/openapi").json()
        assert (
            document["openapi"].startswith("3.0")
            and "guidance" in document["components"]["schemas"]["Input"]["properties"]
        )
        refused = client.post(
            "/v1/prediction/", json={"model": "stable-diffusion-3-5-large", "version": "0.0.1", "input": {}}
        )
        assert refused.status_code == 404 and refused.json()["error"] == "Model not found"
    assert dotted.stats()["creates"] == 0


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


async def run_jobs(url: str, batch: list[Job]) -> list[JobOutcome]:
    limits = Limits(requests=60, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=10)
    config = EngineConfig(limits=limits).scaled(TEST_TIME_SCALE)
    async with ApiClient(url, ApiKey("sk-any-model")) as client:
        engine = Engine(client, LocalBudget(config.limits), config)
        return [outcome async for outcome in engine.run(batch)]


def flux_job(n: int, **inputs) -> Job:
    normalised, errors = FLUX.check({"prompt": f"a kite, take {n}", "seed": n, **inputs})
    assert errors == []
    return Job(f"flux-{n}", "flux-1-dev", {k: v for k, v in normalised.items() if v is not None})


async def test_the_model_with_other_input_names_renders_its_width_and_height(sandbox_factory):
    sandbox = sandbox_factory(bearer_only=True)
    outcomes = await run_jobs(
        sandbox.url, [flux_job(1, width=512, height=768), flux_job(2, output_format="png")]
    )
    by_id = {o.job_id: o for o in outcomes}
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 2}
    assert (by_id["flux-1"].width, by_id["flux-1"].height, by_id["flux-1"].image_format) == (512, 768, "webp")
    assert (by_id["flux-2"].width, by_id["flux-2"].height, by_id["flux-2"].image_format) == (
        1024,
        1024,
        "png",
    )
    assert {o.size_mismatch for o in outcomes} == {False}
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        bad = client.post(
            "/v1/prediction/",
            json={"model": "flux-1-dev", "version": "0.0.1", "input": {"prompt": "p", "guidance": 11}},
        )
    assert bad.status_code == 400 and bad.json()["fields"] == ["guidance"]


async def test_images_off_every_size_table_succeed_with_their_real_size_flagged(sandbox_factory):
    sandbox = sandbox_factory(size_delta_px=8)
    sd, errors = BUILTIN["stable-diffusion-3-5-large"].check({"prompt": "a fox", "aspect_ratio": "16:9"})
    assert errors == []
    batch = [
        Job("sd", "stable-diffusion-3-5-large", {k: v for k, v in sd.items() if v is not None}),
        flux_job(1),
    ]
    outcomes = {o.job_id: o for o in await run_jobs(sandbox.url, batch)}
    assert {o.status for o in outcomes.values()} == {JobStatus.SUCCESS}
    assert (outcomes["sd"].width, outcomes["sd"].height) == (1352, 776)
    assert (outcomes["flux-1"].width, outcomes["flux-1"].height) == (1032, 1032)
    assert {o.size_mismatch for o in outcomes.values()} == {True}
    assert png_size(outcomes["sd"].image or b"") == (1352, 776)


async def test_completed_is_success_and_the_minimal_error_envelope_keeps_its_message(sandbox_factory):
    sandbox = sandbox_factory(success_status="completed", minimal_errors=True, error_rate=0.5, seed=3)
    outcomes = await run_jobs(sandbox.url, [flux_job(n) for n in range(12)])
    statuses = Counter(o.status for o in outcomes)
    assert statuses[JobStatus.SUCCESS] >= 1 and statuses[JobStatus.FAILED] >= 1
    for outcome in outcomes:
        if outcome.status is JobStatus.FAILED:
            assert outcome.error_code == "PREDICTION_ERROR" and outcome.error_message
            assert outcome.error_message.startswith("The model provider")
    done = parse_prediction("p", {"status": "completed", "output": ["https://x/out.png"]})
    assert done.status is PredictionStatus.SUCCESS and done.output_url == "https://x/out.png"
    failed = parse_prediction("p", {"status": "error", "output": {"error": "NSFW content detected"}})
    assert failed.error_message == "NSFW content detected"


def write_study(folder: Path, spec: str, grid: str = "prompt,id\na red fox,1\na snow owl,2\n") -> Path:
    (folder / "prompts.csv").write_text(grid, encoding="utf-8")
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(spec), encoding="utf-8")
    return path


def test_a_two_model_study_sets_each_model_only_its_own_inputs(tmp_path):
    spec = load_spec(write_study(tmp_path, TWO_MODEL_SPEC), models=CATALOG)
    assert spec.models == ("stable-diffusion-3-5-large", "flux-1-dev")
    assert spec.requested_models == ("stable-diffusion-3.5-large", "flux-1-dev")
    jobs = [job for batch in iter_job_batches(spec) for job in batch]
    assert Counter(job.model for job in jobs) == {"stable-diffusion-3-5-large": 4, "flux-1-dev": 4}
    for job in jobs:
        if job.model == "flux-1-dev":
            assert set(job.inputs) == {
                "prompt",
                "width",
                "height",
                "guidance",
                "num_inference_steps",
                "seed",
            } | {"output_format"}
            assert (job.inputs["width"], job.inputs["height"], job.inputs["guidance"]) == (768, 1024, 3.0)
        else:
            assert "guidance" not in job.inputs and (job.inputs["cfg"], job.inputs["steps"]) == (4.5, 28)


def test_every_bad_key_and_value_of_a_study_is_reported_at_once(tmp_path):
    text = TWO_MODEL_SPEC.replace("guidance: 3.0", "guidence: 3.0, widht: 512, cfg_scale: 2").replace(
        "num_inference_steps: 20", "num_inference_steps: 99"
    )
    with pytest.raises(InvalidInput) as caught:
        load_spec(write_study(tmp_path, text), models=CATALOG)
    message = caught.value.describe()
    assert caught.value.total == 4, message
    assert "inputs.guidence: 'guidence' cannot be a default input" in message
    assert "did you mean 'guidance'?" in message and "did you mean 'width'?" in message
    assert "inputs.cfg_scale" in message and "the inputs of stable-diffusion-3-5-large are" in message
    assert (
        "inputs.num_inference_steps: 99 is not allowed; expected an integer from 1 to 50 (model flux-1-dev)"
        in (message)
    )


def test_a_grid_value_out_of_range_for_one_model_names_file_row_and_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = "prompt,guidance,width\na red fox,2.5,512\na snow owl,12,1000\n"
    with pytest.raises(InvalidInput) as caught:
        load_spec(write_study(tmp_path, TWO_MODEL_SPEC, grid), models=CATALOG)
    where = "prompts.csv line 3, column"
    assert caught.value.problems == [
        f"{where} guidance: '12' is not allowed; expected a number from 0 to 10 (model flux-1-dev)",
        f"{where} width: '1000' is not allowed; expected an integer from 256 to 1440, a multiple of 16 "
        "(model flux-1-dev)",
    ]


def test_a_model_not_in_the_offline_catalog_is_named_with_how_to_fetch_it(tmp_path):
    with pytest.raises(InvalidInput, match=r"unknown model 'flux-1-dev'.*promptgrid models show SLUG"):
        load_spec(write_study(tmp_path, TWO_MODEL_SPEC))


def manifest_of(jobs_and_outcomes: list[tuple[Job, JobOutcome]]) -> pa.Table:
    return rows_to_table([outcome_row(job, outcome, None, "run1") for job, outcome in jobs_and_outcomes])


def test_the_manifest_keeps_any_models_inputs_typed_and_exact():
    flux = flux_job(1, guidance=4.5, width=512, height=512)
    outcome = JobOutcome(flux.job_id, JobStatus.SUCCESS, model_slug="flux-1-dev", image_format="webp")
    outcome.width, outcome.height, outcome.size_mismatch = 512, 520, True
    table = manifest_of([(flux, outcome)])
    row = table.to_pylist()[0]
    assert table.schema.field("input_guidance").type == pa.float64() and row["input_guidance"] == 4.5
    assert row["input_width"] == 512.0 and row["height"] == 520 and row["size_mismatch"] is True
    assert row["prompt"] == "a kite, take 1" and row["seed"] == 1 and row["cfg"] is None
    assert (row["resolved_model"], row["image_format"]) == ("flux-1-dev", "webp")
    assert json.loads(row["inputs"]) == dict(flux.inputs)
    rebuilt = job_from_row(row)
    assert rebuilt.inputs == flux.inputs and type(rebuilt.inputs["width"]) is int


def test_backfill_sql_filters_on_any_models_inputs_across_old_and_new_parts():
    old_row = {name: None for name in MANIFEST_SCHEMA.names if name not in ("resolved_model", "inputs")}
    old_row.update(run_id="old", job_id="old-1", status="failed", model="stable-diffusion-3-5-large")
    old_row.update(prompt="a fox", cfg=3.5, steps=20, seed=1, version="0.0.1")
    old_schema = pa.schema([f for f in MANIFEST_SCHEMA if f.name in old_row])
    old = pa.Table.from_pylist([old_row], schema=old_schema)  # a part written before these columns
    failed = [
        (flux_job(n, guidance=g), JobOutcome(f"flux-{n}", JobStatus.FAILED, error_code="PROVIDER_REJECTED"))
        for n, g in ((1, 2.0), (2, 6.0))
    ]
    table = latest_rows(pa.concat_tables([old, manifest_of(failed)], promote_options="default"))
    picked = select_rows(table, ["failed"], "input_guidance > 3")
    assert picked["job_id"].to_pylist() == ["flux-2"]
    assert select_rows(table, ["failed"], "cfg = 3.5")["job_id"].to_pylist() == ["old-1"]
    old_job = job_from_row(select_rows(table, ["failed"], "cfg = 3.5").to_pylist()[0])
    assert old_job.inputs == {"prompt": "a fox", "cfg": 3.5, "steps": 20, "seed": 1}


def test_the_report_lays_any_models_inputs_out_and_never_the_record_columns():
    from promptgrid.report.layout import choose_axes, sweep_params

    jobs = [
        flux_job(n, guidance=g, num_inference_steps=s) for n, (g, s) in enumerate([(2, 10), (4, 10), (2, 20)])
    ]
    rows = manifest_of(
        [(job, JobOutcome(job.job_id, JobStatus.SUCCESS, model_slug="flux-1-dev")) for job in jobs]
    )
    assert choose_axes(rows.to_pylist()) == ("input_guidance", "input_num_inference_steps")
    offered = sweep_params(rows.column_names)
    assert "input_guidance" in offered
    assert not {"inputs", "resolved_model", "image_format", "size_mismatch"} & set(offered)
