"""Expansion: rows × sweep × zip × seeds, deterministic ids, precedence of values, dedup and streaming."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptgrid.models.check import check_input
from promptgrid.spec.expand import build_variants, iter_job_batches, job_id
from promptgrid.spec.load import load_spec
from promptgrid.spec.plan import plan_jobs

SPEC = """\
model: stable-diffusion-3-5-large
prompts: grid.csv
sweep:
  cfg: [2.5, 4.5]
  steps: [20, 30]
seeds: [1, 2]
"""


def make_spec(folder: Path, grid: str, spec: str = SPEC, name: str = "spec.yaml"):
    (folder / "grid.csv").write_text(grid, encoding="utf-8")
    path = folder / name
    path.write_text(textwrap.dedent(spec), encoding="utf-8")
    return load_spec(path)


def all_jobs(spec, batch_size: int = 5000):
    return [job for batch in iter_job_batches(spec, batch_size) for job in batch]


def test_every_row_meets_every_combination_and_seed(tmp_path: Path) -> None:
    jobs = all_jobs(make_spec(tmp_path, "prompt,id\na fox,1\nan owl,2\na cat,3\n"))
    assert len(jobs) == 3 * 2 * 2 * 2 == len({job.job_id for job in jobs})
    combos = {(j.inputs["prompt"], j.inputs["cfg"], j.inputs["steps"], j.inputs["seed"]) for j in jobs}
    assert len(combos) == 24
    assert {job.carried["id"] for job in jobs} == {"1", "2", "3"}
    assert all(job.model == "stable-diffusion-3-5-large" and job.version == "0.0.1" for job in jobs)


def test_job_inputs_are_check_inputs_normalised_output(tmp_path: Path) -> None:
    for job in all_jobs(make_spec(tmp_path, "prompt,cfg,output_format\na fox,7,png\nan owl,,\n")):
        normalised, errors = check_input(job.model, job.inputs)
        assert errors == []
        assert {key: value for key, value in normalised.items() if value is not None} == dict(job.inputs)
        assert job.job_id == job_id(job.model, job.version, job.inputs)


def test_ids_do_not_depend_on_row_or_axis_order_or_number_spelling(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = make_spec(tmp_path / "a", "prompt\nx\ny\n")
    reordered = """\
    seeds: [2, 1]
    sweep:
      steps: [30, 20]
      cfg: ["4.5", 2.50]
    prompts: grid.csv
    model: stable-diffusion-3.5-large
    """
    (tmp_path / "b").mkdir()
    second = make_spec(tmp_path / "b", "prompt,note\ny,n1\nx,n2\n", reordered)
    assert {job.job_id for job in all_jobs(first)} == {job.job_id for job in all_jobs(second)}


def test_carried_columns_do_not_enter_the_id_and_identical_jobs_collapse(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "prompt,split\na fox,train\na fox,test\nan owl,train\n")
    jobs = all_jobs(spec)
    assert len(jobs) == 16
    assert [job.carried["split"] for job in jobs if job.inputs["prompt"] == "a fox"] == ["train"] * 8
    plan = plan_jobs(spec)
    assert (plan.rows, plan.total_jobs, plan.duplicates_collapsed, plan.distinct_prompts) == (3, 16, 8, 2)


def test_a_row_value_wins_over_the_sweep_and_an_empty_cell_falls_back(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "prompt,cfg,seed\nfixed,6,9\nswept,,\n")
    jobs = all_jobs(spec)
    fixed = [job for job in jobs if job.inputs["prompt"] == "fixed"]
    swept = [job for job in jobs if job.inputs["prompt"] == "swept"]
    assert {(job.inputs["cfg"], job.inputs["seed"]) for job in fixed} == {(6.0, 9)}
    assert len(fixed) == 2  # steps still swept; cfg and seed from the row collapse the rest
    assert len(swept) == 8 and {job.inputs["cfg"] for job in swept} == {2.5, 4.5}
    assert plan_jobs(spec).duplicates_collapsed == 6


def test_inputs_are_defaults_under_axes_and_model_defaults_under_inputs(tmp_path: Path) -> None:
    spec = """\
    model: stable-diffusion-3-5-large-turbo
    prompts: grid.csv
    inputs: {cfg: 1.5, output_format: png}
    zip: {cfg: [0.5, 2], aspect_ratio: ["16:9", "9:16"]}
    """
    jobs = all_jobs(make_spec(tmp_path, "prompt\na fox\n", spec))
    assert [(j.inputs["cfg"], j.inputs["aspect_ratio"]) for j in jobs] == [(0.5, "16:9"), (2.0, "9:16")]
    assert {j.inputs["output_format"] for j in jobs} == {"png"}
    assert {j.inputs["steps"] for j in jobs} == {4} and {j.inputs["seed"] for j in jobs} == {0}


def test_a_model_axis_gives_each_model_its_own_defaults(tmp_path: Path) -> None:
    spec = (
        "prompts: grid.csv\nsweep: {model: [stable-diffusion-3-5-large, stable-diffusion-3-5-large-turbo]}\n"
    )
    jobs = all_jobs(make_spec(tmp_path, "prompt\na fox\n", spec))
    assert {(j.model, j.inputs["steps"], j.inputs["cfg"]) for j in jobs} == {
        ("stable-diffusion-3-5-large", 35, 3.5),
        ("stable-diffusion-3-5-large-turbo", 4, 1.0),
    }


def test_image_references_are_kept_as_written(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"png")
    spec = make_spec(
        tmp_path, "prompt,image\na,cat.png\nb,s3://bucket/dog.webp\nc,\n", SPEC.replace("[1, 2]", "[1]")
    )
    images = {job.inputs["prompt"]: job.inputs.get("image") for job in all_jobs(spec)}
    assert images == {"a": "cat.png", "b": "s3://bucket/dog.webp", "c": None}


@pytest.mark.parametrize(
    "text", ['100% "quoted" \\ back', "ünïcödé 🦊 prompt", "%s %d %(x)s", "a\nmultiline"]
)
def test_the_fast_id_path_equals_the_canonical_hash_for_awkward_text(tmp_path: Path, text: str) -> None:
    spec = SPEC + 'inputs: {image: "https://example.com/a%20b.png"}\n'
    (tmp_path / "grid.parquet").unlink(missing_ok=True)
    pq.write_table(pa.table({"prompt": [text], "aspect_ratio": ["4:3"]}), tmp_path / "grid.parquet")
    jobs = all_jobs(make_spec(tmp_path, "unused", spec.replace("grid.csv", "grid.parquet")))
    assert len(jobs) == 8
    for job in jobs:
        assert job.inputs["prompt"] == text
        assert job.job_id == job_id(job.model, job.version, job.inputs)


def test_jobs_stream_in_batches_of_the_asked_size_and_dedup_across_them(tmp_path: Path) -> None:
    rows = "".join(f"prompt {i % 40}\n" for i in range(100))
    spec = make_spec(tmp_path, "prompt\n" + rows)
    sizes = [len(batch) for batch in iter_job_batches(spec, batch_size=7)]
    assert sum(sizes) == 40 * 8 and set(sizes[:-1]) == {7}
    assert len(build_variants(spec)) == 8


def test_job_ids_are_32_hex_characters_and_stable_across_runs(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "prompt\na fox\n")
    first, again = all_jobs(spec), all_jobs(spec)
    assert [job.job_id for job in first] == [job.job_id for job in again]
    assert all(len(job.job_id) == 32 and int(job.job_id, 16) >= 0 for job in first)
    assert job_id("m", "0.0.1", {"cfg": 3.5}) == job_id("m", "0.0.1", {"cfg": 3.5, "image": None})


def test_local_images_are_relative_to_the_spec_even_when_the_grid_is_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "grids").mkdir()
    (tmp_path / "cat.png").write_bytes(b"png")
    (tmp_path / "grids" / "grid.csv").write_text("prompt,image\na,cat.png\n", encoding="utf-8")
    (tmp_path / "spec.yaml").write_text("model: stable-diffusion-3-5-large\nprompts: grids/grid.csv\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.base_dir == tmp_path
    assert [job.inputs["image"] for job in all_jobs(spec)] == ["cat.png"]
