"""Every output of a prediction kept: a model with `num_images` (`output_type: array`) answers a list of
URLs, each billed; each image is stored, gets a manifest row of its own (`output_index`), and reaches the
report, the export and the dry run's count. Against the sandbox's `flux-1-schnell`."""

from __future__ import annotations

import asyncio
import gc
import glob
import hashlib
import tarfile
from collections import defaultdict
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import promptgrid
from promptgrid.api.prediction import PredictionStatus, parse_prediction
from promptgrid.engine.estimate import describe_dry_run
from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.flows.generate import generate
from promptgrid.models.catalog import ModelCatalog
from promptgrid.models.schema import ModelSchema
from promptgrid.output import recovery
from promptgrid.output.journal import Journal
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.read import latest_rows, latest_status, read_manifest
from promptgrid.output.manifest.rows import outcome_row, rows_to_table
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recorder import OutcomeStore
from promptgrid.output.sinks import open_sink
from promptgrid.report.build import write_report
from promptgrid.report.sheets import FAILURE_FILL
from promptgrid.sandbox.models import SCHNELL_SCHEMA
from promptgrid.spec.load import load_spec
from promptgrid.types import Job, JobOutcome, JobStatus, OutputImage

KEY = "pg-array-outputs-key-51d2"
MODEL = "flux-1-schnell"
PRICE = 0.065  # the sandbox's price per image
SCHNELL = ModelCatalog([ModelSchema(MODEL, SCHNELL_SCHEMA, "the sandbox's model endpoint")])


def write_spec(folder: Path, num_images: int = 3) -> Path:
    (folder / "prompts.csv").write_text("prompt,item\na red fox,1\na kite,2\n", encoding="utf-8")
    spec = folder / "spec.yaml"
    spec.write_text(
        f"name: many-images\nmodel: {MODEL}\nprompts: prompts.csv\nseeds: [1, 2]\n"
        f"inputs: {{num_images: {num_images}, output_format: png, width: 256, height: 256}}\n"
        f"output: {folder / 'out'}\n",
        encoding="utf-8",
    )
    return spec


# --- the API's answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "urls"),
    [
        ("https://x/a.png", ("https://x/a.png",)),
        (["https://x/a.png", "https://x/b.png"], ("https://x/a.png", "https://x/b.png")),
        ([{"url": "https://x/a.png"}, {"uri": "https://x/b.png"}], ("https://x/a.png", "https://x/b.png")),
        (
            ["https://x/a.png", None, 3, "not a url", "https://x/c.png"],
            ("https://x/a.png", "https://x/c.png"),
        ),
        ({"url": "https://x/a.png"}, ("https://x/a.png",)),
        ([], ()),
        (None, ()),
    ],
)
def test_a_success_reads_every_output_url_whatever_its_shape(output, urls):
    prediction = parse_prediction("p1", {"status": "success", "output": output})
    assert prediction.status is PredictionStatus.SUCCESS
    assert prediction.output_urls == urls
    assert prediction.output_url == (urls[0] if urls else None)


def test_the_sandbox_array_model_answers_a_list_of_distinct_images_billed_each(sandbox):
    headers = {"Authorization": "Bearer k"}
    body = {"model": MODEL, "version": "0.0.1", "input": {"prompt": "p", "num_images": 3, "seed": 7}}
    with httpx.Client(base_url=sandbox.url, headers=headers, timeout=5) as client:
        assert client.get("/v1/model", params={"slug": MODEL}).json()["output_type"] == "array"
        prediction_id = client.post("/v1/prediction/", json=body).json()["predictionID"]
        for _ in range(200):
            answer = client.get(f"/v1/prediction/{prediction_id}").json()
            if answer["status"] == "success":
                break
            asyncio.run(asyncio.sleep(0.02))
        assert answer["status"] == "success"
        assert len(answer["output"]) == 3
        assert answer["metrics"]["cost"] == pytest.approx(3 * PRICE)
        images = [client.get(url).content for url in answer["output"]]
        assert len({hashlib.sha256(data).hexdigest() for data in images}) == 3
        name = answer["output"][0].rsplit("/", 1)[-1]
        assert client.get(answer["output"][0].replace(name, name.replace(".0.", ".3."))).status_code == 404


# --- the dry run -------------------------------------------------------------------------------------


def test_the_dry_run_counts_images_and_prices_each(tmp_path):
    spec = load_spec(write_spec(tmp_path, num_images=3), models=SCHNELL)
    text = describe_dry_run(spec, price_per_image=0.05)
    assert "jobs: 4 " in text
    assert "images: 12 (3 per job)" in text
    assert "4 creates" in text
    assert f"cost: ${12 * 0.05:,.2f} at $0.05 per image" in text


# --- storage: rows, latest view, journal -------------------------------------------------------------


def job(n: int) -> Job:
    return Job(f"{n:064x}", MODEL, {"prompt": f"a fox {n}", "num_images": 3, "output_format": "png"})


def png(seed: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 10, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def image(data: bytes) -> OutputImage:
    return OutputImage(data, "png", hashlib.sha256(data).hexdigest(), len(data), 8, 8, None)


def outcome_of(the_job: Job, images: list[bytes], cost: float = 0.3) -> JobOutcome:
    first, *rest = [image(data) for data in images]
    return JobOutcome(
        the_job.job_id, JobStatus.SUCCESS, prediction_id="pred-1", attempts=1, cost_usd=cost,
        image=first.image, image_format="png", sha256=first.sha256, bytes=first.bytes, width=8, height=8,
        more_images=rest,
    )  # fmt: skip


class Counted:
    def __init__(self) -> None:
        self.outcomes: list[JobOutcome] = []

    def record(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)


def test_a_prediction_s_images_become_one_row_each_under_their_own_keys_with_the_cost_split(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    the_job, images = job(1), [png(1), png(2), png(3)]
    with ManifestWriter(sink, run_id="r1", spec_hash="h") as writer:
        store = OutcomeStore(sink, Journal(sink, "w"), writer, Counted())
        asyncio.run(store.save(the_job, outcome_of(the_job, images, cost=0.3)))
    rows = sorted(read_manifest(sink).to_pylist(), key=lambda row: row["output_index"])
    assert [row["output_index"] for row in rows] == [0, 1, 2]
    assert [row["image_key"] for row in rows] == [image_key(the_job, "png", i) for i in range(3)]
    assert rows[0]["image_key"] == image_key(the_job, "png")  # the first keeps the one-image key
    assert rows[1]["image_key"].endswith(f"{the_job.job_id}-1.png")
    for row, data in zip(rows, images, strict=True):
        assert sink.get_bytes(row["image_key"]) == data
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(0.3)
    assert latest_status(sink) == {the_job.job_id: "success"}  # one status per job


def test_the_latest_view_folds_per_image_and_reads_older_parts_as_image_0():
    the_job = job(2)
    failed = JobOutcome(the_job.job_id, JobStatus.FAILED, error_code="PREDICTION_ERROR")
    success = outcome_of(the_job, [png(1), png(2)])
    rows = [outcome_row(the_job, failed, None, "r1")]
    rows += [outcome_row(the_job, success, f"file:///k{i}", "r2", f"k{i}", i) for i in range(2)]
    table = rows_to_table(rows)
    latest = latest_rows(table).to_pylist()
    assert [(row["output_index"], row["status"]) for row in latest] == [(0, "success"), (1, "success")]
    assert latest_rows(table, per_image=False).num_rows == 1
    older = table.drop_columns(["output_index"])  # a part written before the column existed
    assert latest_rows(older).num_rows == 1
    nulls = table.set_column(
        table.schema.get_field_index("output_index"), "output_index", pa.nulls(3, pa.int32())
    )
    assert latest_rows(nulls).num_rows == 1


def test_a_run_killed_after_storing_its_images_has_them_adopted_per_image_and_not_fetched_again(tmp_path):
    """The journal records each image before writing it; a kill before the rows leaves images the next run
    adopts, each with its row. A kill half way through a prediction's images leaves that job to be polled
    and fetched again, whole (its prediction is in the journal: nothing is paid twice)."""
    sink = open_sink(str(tmp_path / "out"))
    whole, half = job(3), job(4)
    writer = ManifestWriter(sink, run_id="r1", spec_hash="h")
    store = OutcomeStore(sink, Journal(sink, "killed"), writer, Counted())
    store._store_images(whole, outcome_of(whole, [png(1), png(2), png(3)]))  # killed before the rows
    store._store_images(half, outcome_of(half, [png(4), png(5), png(6)]))
    store.journal.close()
    lines = sink.get_bytes("journal/killed/images.jsonl").decode().splitlines()
    assert len(lines) == 6
    # Killed after the first image of `half`: its two other records never reached the journal.
    sink.put_bytes("journal/killed/images.jsonl", ("\n".join(lines[:4]) + "\n").encode(), "text/plain")
    assert set(Journal(sink, "x").image_sets()) == {whole.job_id}
    with ManifestWriter(sink, run_id="r2", spec_hash="h") as rerun:
        done = recovery.repair(sink, Journal(sink, "rerun"), rerun)
    assert done.rebuilt == 3 and done.recoverable == [whole.job_id]
    rows = read_manifest(sink).to_pylist()
    assert {row["job_id"] for row in rows} == {whole.job_id}
    assert sorted(row["output_index"] for row in rows) == [0, 1, 2]
    assert len({row["sha256"] for row in rows}) == 3
    for row in rows:
        assert hashlib.sha256(sink.get_bytes(row["image_key"])).hexdigest() == row["sha256"]


# --- end to end --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _collect_prefects_sockets():
    yield
    gc.collect()


@pytest.mark.integration  # the Prefect test server
@pytest.mark.usefixtures("prefect_harness")
def test_a_num_images_sweep_stores_reports_and_exports_every_image(tmp_path, sandbox, monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    spec = write_spec(tmp_path, num_images=3)
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
    asyncio.run(generate(spec_path=str(spec), return_state=True, **params))
    sink = open_sink(str(tmp_path / "out"))
    rows = [row for row in read_manifest(sink).to_pylist() if row["status"] == "success"]
    by_job: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_job[row["job_id"]].append(row)
    assert len(by_job) == 4 and len(rows) == 12
    for images in by_job.values():
        assert sorted(row["output_index"] for row in images) == [0, 1, 2]
        assert len({row["sha256"] for row in images}) == 3
        assert len({row["image_key"] for row in images}) == 3
        for row in images:
            assert hashlib.sha256(sink.get_bytes(row["image_key"])).hexdigest() == row["sha256"]
            assert row["cost_usd"] == pytest.approx(PRICE)  # the prediction's 3 x price, split over 3 rows
    stats = sandbox.stats()
    assert stats["creates"] == 4

    asyncio.run(generate(spec_path=str(spec), return_state=True, **params))  # the rerun
    assert sandbox.stats()["creates"] == 4
    assert len(read_manifest(sink).to_pylist()) == 12

    write_report(sink, sheets=True)
    thumbs = [key for key in sink.list_keys("report/thumbs/") if key.endswith(".webp")]
    assert len(thumbs) == 12
    page = (tmp_path / "out" / "report" / "index.html").read_text(encoding="utf-8")
    assert "output_index 2" in page
    assert "<th>success</th><td>4</td>" in page and "<th>images</th><td>12</td>" in page
    assert sink.list_keys("report/sheets/")
    frame = promptgrid.read_manifest(str(tmp_path / "out"))
    sheet = promptgrid.contact_sheet(frame[frame.prompt == "a kite"]).convert("RGB")
    colours = {colour for _, colour in sheet.getcolors(sheet.width * sheet.height) or []}
    assert FAILURE_FILL not in colours  # every image of the cell drawn, none as a missing one

    dest = tmp_path / "export"
    export_output(ExportOptions(str(tmp_path / "out"), str(dest), "hf", include_sandbox=True))
    exported = pa.concat_tables(
        [pq.read_table(path) for path in sorted(glob.glob(str(dest / "data" / "*.parquet")))]
    ).to_pylist()
    assert sorted((row["job_id"], row["output_index"]) for row in exported) == sorted(
        (row["job_id"], row["output_index"]) for row in rows
    )
    assert {hashlib.sha256(row["image"]["bytes"]).hexdigest() for row in exported} == {
        row["sha256"] for row in rows
    }
    tars = tmp_path / "wds"
    export_output(ExportOptions(str(tmp_path / "out"), str(tars), "webdataset", include_sandbox=True))
    members = []
    for path in sorted(glob.glob(str(tars / "*" / "*.tar"))):
        with tarfile.open(path) as tar:
            members += [name for name in tar.getnames() if name.endswith(".png")]
    assert len(members) == len(set(members)) == 12
    assert {name.removesuffix(".png") for name in members} == {
        row["job_id"] if not row["output_index"] else f"{row['job_id']}-{row['output_index']}" for row in rows
    }
    # Exported again after the rerun: every image still once, none added.
    export_output(ExportOptions(str(tmp_path / "out"), str(dest), "hf", include_sandbox=True))
    shards = glob.glob(str(dest / "data" / "*.parquet"))
    assert sum(pq.read_metadata(path).num_rows for path in shards) == 12


# --- the collect step --------------------------------------------------------------------------------


def test_collect_fetches_every_output_and_names_the_one_that_failed():
    from promptgrid.engine.collect import collect
    from promptgrid.engine.config import EngineConfig
    from promptgrid.engine.retry import JobEnded

    served = {f"https://out/{i}.png": png(i + 1) for i in range(3)}

    def handler(request: httpx.Request) -> httpx.Response:
        data = served.get(str(request.url))
        return httpx.Response(200, content=data) if data else httpx.Response(410)

    the_job = job(6)
    success = {"status": "success", "output": list(served)}

    async def collected(body: dict) -> JobOutcome:
        outcome = JobOutcome(the_job.job_id, JobStatus.FAILED)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as storage:
            await collect(storage, EngineConfig(), the_job, parse_prediction("p", body), outcome)
        return outcome

    outcome = asyncio.run(collected(success))
    assert outcome.output_count == 3
    shas = [outcome.output_image(i).sha256 for i in range(3)]
    assert shas == [hashlib.sha256(data).hexdigest() for data in served.values()]
    with pytest.raises(JobEnded) as ended:
        asyncio.run(collected({**success, "output": [*served, "https://out/gone.png"]}))
    assert ended.value.code == "OUTPUT_EXPIRED"
    assert ended.value.message.startswith("output 4 of 4: ")
