"""The generate, backfill and sweep flows end to end: sandbox API, local output, Prefect's test server."""

from __future__ import annotations

import asyncio
import csv
import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pytest

from promptgrid.flows.backfill import backfill
from promptgrid.flows.generate import generate
from promptgrid.flows.sweep import SweepRequest, sweep
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from tests.support.secrets import assert_key_nowhere

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
    pytest.mark.usefixtures("prefect_harness"),
]

KEY = "pg-test-key-7f3c9a"


def write_spec(folder: Path, prompts: list[str], *, cfg=(2.5, 4.0), seeds=(1, 2), extra: str = "") -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "item", "split"])
        writer.writerows([prompt, index, "train"] for index, prompt in enumerate(prompts))
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: flow-test\n"
        "model: stable-diffusion-3-5-large\n"
        "prompts: prompts.csv\n"
        "inputs: {output_format: png, aspect_ratio: '1:1', steps: 20}\n"
        f"sweep: {{cfg: {list(cfg)}}}\n"
        f"seeds: {list(seeds)}\n"
        f"output: {folder / 'out'}\n" + extra,
        encoding="utf-8",
    )
    return spec


def run_generate_state(spec: Path, sandbox, **params):
    # The sandbox runs 100x faster than the API: its window is 0.6 s, so the run's budget must match.
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0, **params}
    return asyncio.run(generate(spec_path=str(spec), return_state=True, **params))


def run_generate(spec: Path, sandbox, **params):
    """The run's summary, which a Failed run keeps as its result too."""
    return run_generate_state(spec, sandbox, **params).result(raise_on_failure=False)


async def read_from_prefect(state):
    """The flow run and its artifacts as Prefect's API holds them, not as the local state object says."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = state.state_details.flow_run_id
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        only_this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        artifacts = await client.read_artifacts(artifact_filter=only_this_run)
    return run, {artifact.key for artifact in artifacts}


def test_a_run_with_failures_ends_failed_in_prefect_and_keeps_its_summary(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key, error_rate=1.0, error_codes=(("PROVIDER_REJECTED", False),))
    spec = write_spec(tmp_path, ["a", "b"])

    state = run_generate_state(spec, sandbox)

    run, artifacts = asyncio.run(read_from_prefect(state))
    assert run.state.is_failed(), run.state
    assert "8 of 8 jobs did not succeed (fail_when: any)" in run.state.message
    assert "promptgrid-summary" in artifacts
    summary = state.result(raise_on_failure=False)
    assert summary.failed == 8 and summary.succeeded == 0


@pytest.mark.parametrize(("fail_when", "completed"), [("never", True), ("ratio > 0.5", False)])
def test_fail_when_in_the_spec_sets_the_threshold(tmp_path, sandbox_factory, api_key, fail_when, completed):
    sandbox = sandbox_factory(api_key=api_key, error_rate=1.0, error_codes=(("PROVIDER_REJECTED", False),))
    spec = write_spec(tmp_path, ["a"], extra=f"fail_when: {fail_when}\n")

    state = run_generate_state(spec, sandbox)

    run, artifacts = asyncio.run(read_from_prefect(state))
    assert run.state.is_completed() is completed and run.state.is_failed() is not completed
    assert "promptgrid-summary" in artifacts
    assert state.result(raise_on_failure=False).failed == 4


def test_a_run_where_every_job_succeeds_ends_completed(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    state = run_generate_state(write_spec(tmp_path, ["a"]), sandbox)

    run, _ = asyncio.run(read_from_prefect(state))
    assert run.state.is_completed() and state.result().succeeded == 4


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    return KEY


def test_generate_stores_every_image_with_its_manifest_row(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, ["a red fox", 'a <b>bold</b> lighthouse, "quoted"'])

    summary = run_generate(spec, sandbox)

    assert summary.succeeded == 8 and summary.failed == 0
    table = read_manifest(open_sink(str(tmp_path / "out")))
    assert table.num_rows == 8
    assert set(table.column("status").to_pylist()) == {"success"}
    for row in table.to_pylist():
        data = Path(row["image_uri"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert (row["width"], row["height"]) == (1024, 1024)
        assert row["split"] == "train" and row["item"] in ("0", "1")
    stats = sandbox.stats()
    assert stats["creates"] == 8 and stats["duplicate_creates"] == 0 and stats["throttled"] == 0


def test_second_run_creates_nothing_and_rewrites_nothing(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, ["a bowl of ramen"])
    run_generate(spec, sandbox)
    images = sorted((tmp_path / "out" / "images").rglob("*.png"))
    stamps = [path.stat().st_mtime_ns for path in images]

    summary = run_generate(spec, sandbox)

    assert summary.skipped == 4 and summary.succeeded == 0
    assert sandbox.stats()["creates"] == 4
    assert [path.stat().st_mtime_ns for path in images] == stamps
    assert read_manifest(open_sink(str(tmp_path / "out"))).num_rows == 4


def test_shards_split_one_spec_without_overlap(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, ["one", "two", "three"], seeds=(1, 2, 3))
    first = run_generate(spec, sandbox, shard_index=0, shard_count=2)
    second = run_generate(spec, sandbox, shard_index=1, shard_count=2)

    assert first.succeeded + second.succeeded == 18
    assert first.succeeded > 0 and second.succeeded > 0
    assert sandbox.stats()["duplicate_creates"] == 0
    assert read_manifest(open_sink(str(tmp_path / "out"))).num_rows == 18


def test_backfill_reruns_only_failures(tmp_path, sandbox_factory, api_key):
    failing = sandbox_factory(api_key=api_key, error_rate=0.5, error_codes=(("PROVIDER_REJECTED", False),))
    spec = write_spec(tmp_path, ["a", "b", "c"])
    first = run_generate(spec, failing)
    assert first.failed > 0, "the sandbox was told to fail half the predictions"
    healthy = sandbox_factory(api_key=api_key)

    summary = asyncio.run(
        backfill(output=str(tmp_path / "out"), api_base=healthy.url, rate_limit="60/0.6s", time_scale=100.0)
    )

    assert summary.succeeded == first.failed
    assert healthy.stats()["creates"] == first.failed
    table = read_manifest(open_sink(str(tmp_path / "out")))
    assert table.num_rows == 12
    assert pc.all(pc.equal(table.column("status"), "success")).as_py()


def test_backfill_where_selects_by_sql(tmp_path, sandbox_factory, api_key):
    failing = sandbox_factory(api_key=api_key, error_rate=1.0, error_codes=(("PROVIDER_REJECTED", False),))
    spec = write_spec(tmp_path, ["a"])
    run_generate(spec, failing)
    healthy = sandbox_factory(api_key=api_key)

    summary = asyncio.run(
        backfill(
            output=str(tmp_path / "out"),
            where="cfg > 3 AND seed = 2",
            api_base=healthy.url,
            rate_limit="60/0.6s",
            time_scale=100.0,
        )
    )

    assert summary.succeeded == 1 and healthy.stats()["creates"] == 1
    success = read_manifest(open_sink(str(tmp_path / "out"))).filter(pc.field("status") == "success")
    assert success.select(["cfg", "seed"]).to_pylist() == [{"cfg": 4.0, "seed": 2}]


def test_failed_shard_fails_the_flow_run(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, ["a"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").write_text("a file where the image folder should be")

    state = asyncio.run(
        generate(
            spec_path=str(spec),
            api_base=sandbox.url,
            rate_limit="60/0.6s",
            time_scale=100.0,
            return_state=True,
        )
    )

    assert state.is_failed()
    assert "shard" in str(state.message).lower() or "shard" in repr(state.result(raise_on_failure=False))


def test_sweep_flow_takes_typed_parameters(tmp_path, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    request = SweepRequest(
        prompts=["a cat", "a dog"],
        cfg=[3.0],
        steps=[10, 20],
        seeds=[7],
        output=str(tmp_path / "sweep"),
        api_base=sandbox.url,
        rate_limit="60/0.6s",
    )

    summary = asyncio.run(sweep(request=request, time_scale=100.0))

    assert summary.succeeded == 4
    rows = read_manifest(open_sink(str(tmp_path / "sweep"))).to_pylist()
    assert sorted((row["prompt"], row["steps"]) for row in rows) == [
        ("a cat", 10),
        ("a cat", 20),
        ("a dog", 10),
        ("a dog", 20),
    ]


def test_api_key_is_nowhere_in_outputs_or_prefect_database(tmp_path, sandbox_factory, api_key, capfd):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, ["a secret-free prompt"])
    run_generate(spec, sandbox)

    captured = capfd.readouterr()
    assert_key_nowhere(api_key, captured.out + captured.err, tmp_path / "out")
