"""Prompt templates: parsing, value sources, expansion into jobs, and the manifest columns they become."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from itertools import product
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptgrid.engine.selection import job_from_row
from promptgrid.output.manifest.rows import outcome_row, rows_to_table
from promptgrid.spec.expand import iter_job_batches, job_id
from promptgrid.spec.load import load_spec
from promptgrid.spec.plan import plan_jobs
from promptgrid.spec.sources import read_wildcard_file, sample_values
from promptgrid.spec.template import parse_template
from promptgrid.types import Job, JobOutcome, JobStatus

SUBJECTS = ["a red fox", "an owl", "a glass teapot"]
SETTINGS = ["a forest", "a city street", "a desert", "a kitchen"]
LIGHTING = ["golden hour", "blue hour", "overcast", "neon", "candle light", "studio light"]
SPEC = """\
name: three-variables
model: stable-diffusion-3-5-large
template: "a photo of {subject} in {setting}, {lighting}"
sweep:
  subject: [a red fox, an owl, a glass teapot]
  setting: {file: settings.txt}
  lighting: {sample: 3, from: lighting.txt}
  cfg: [3.5, 5.0]
seeds: [1, 2]
"""


def write(folder: Path, spec: str = SPEC, **files: str) -> Path:
    files.setdefault("settings.txt", "# where\n" + "\n".join(SETTINGS) + "\n\n")
    files.setdefault("lighting.txt", "\n".join(LIGHTING) + "\n")
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    spec = textwrap.dedent(spec)
    path = folder / "spec.yaml"
    path.write_text(
        spec if "model:" in spec else "model: stable-diffusion-3-5-large\n" + spec, encoding="utf-8"
    )
    return path


def all_jobs(spec) -> list[Job]:
    return [job for batch in iter_job_batches(spec, 7) for job in batch]


# Parsing


def test_placeholders_variants_and_escaped_braces_render_as_written() -> None:
    template = parse_template("a {subject} in {setting}, {red|green|} {{not a slot}} 100%")
    assert template.problems == ()
    assert template.variables == ("subject", "setting")
    assert template.choices == {"choice_1": ("red", "green", "")}
    values = {"subject": "fox", "setting": "snow", "choice_1": "red"}
    assert template.render(values) == "a fox in snow, red {not a slot} 100%"
    assert (
        template.render_partial({"setting": "snow"}) == "a {subject} in snow, {red|green|} {not a slot} 100%"
    )


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        ("a {red fox", 3, "never closed"),
        ("a fox}", 6, "closes nothing"),
        ("a {big fox}", 3, "is not a placeholder"),
        ("a {1st}", 3, "is not a placeholder"),
        ("a {} fox", 3, "is not a placeholder"),
        ("a {x {y}", 3, "never closed"),
    ],
)
def test_a_template_that_does_not_parse_says_where(text: str, at: int, words: str) -> None:
    (problem,) = parse_template(text).problems
    assert problem.at == at and words in problem.message


# Value sources


def test_a_wildcard_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_text("\ufeff# colours\n red \n\n  # indented comment\ngreen#2\r\nblue\n")
    assert read_wildcard_file("w.txt", tmp_path) == ["red", "green#2", "blue"]


def test_a_sample_is_fixed_by_the_spec_and_stable_when_values_are_added() -> None:
    population = [f"value {n}" for n in range(100)]
    chosen = sample_values(population, 10)
    assert chosen == sample_values(list(population), 10)
    assert chosen == [value for value in population if value in chosen]  # population order kept
    assert sample_values(population, 10, seed=1) != chosen
    grown = sample_values([*population, "value 100"], 10)
    assert len(set(grown) - set(chosen)) <= 1


def test_every_process_draws_the_same_sample(tmp_path: Path) -> None:
    # Another interpreter with other hash seeds stands for another worker.
    code = "from promptgrid.spec.sources import sample_values\n"
    code += "print(sample_values([str(i) for i in range(50)], 5))"
    answers = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2, 3)
    }
    assert answers == {str(sample_values([str(i) for i in range(50)], 5)) + "\n"}


# Expansion


def test_three_variables_a_cfg_sweep_and_two_seeds_expand_to_the_product(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path))
    lighting = sample_values(LIGHTING, 3)
    jobs = all_jobs(spec)

    expected = {
        (f"a photo of {subject} in {setting}, {light}", cfg, seed): {
            "subject": subject,
            "setting": setting,
            "lighting": light,
        }
        for subject, setting, light, cfg, seed in product(SUBJECTS, SETTINGS, lighting, (3.5, 5.0), (1, 2))
    }
    assert len(jobs) == len(expected) == 3 * 4 * 3 * 2 * 2
    for job in jobs:
        assert dict(job.variables) == expected[(job.inputs["prompt"], job.inputs["cfg"], job.inputs["seed"])]
        assert job.template == "a photo of {subject} in {setting}, {lighting}"
        assert job.job_id == job_id(job.model, job.version, job.inputs)  # the fast path agrees
    plan = plan_jobs(spec)
    assert (plan.total_jobs, plan.distinct_prompts, plan.duplicates_collapsed) == (144, 36, 0)
    assert plan.prompt_samples[0] == f"a photo of a red fox in a forest, {lighting[0]}"

    rerun = load_spec(write(tmp_path))
    assert [job.job_id for job in all_jobs(rerun)] == [job.job_id for job in jobs]


def test_every_variable_is_a_manifest_column_and_backfill_gets_the_job_back(tmp_path: Path) -> None:
    jobs = all_jobs(load_spec(write(tmp_path)))
    rows = [outcome_row(job, JobOutcome(job.job_id, JobStatus.FAILED), None, "run-1") for job in jobs]
    table = rows_to_table(rows)
    for name in ("subject", "setting", "lighting"):
        assert table.column(name).to_pylist() == [job.variables[name] for job in jobs]
    assert set(table.column("template").to_pylist()) == {"a photo of {subject} in {setting}, {lighting}"}
    again = job_from_row(table.to_pylist()[5])
    assert again == jobs[5]


def test_variables_do_not_enter_the_id_the_rendered_prompt_does(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "grid.csv").write_text("prompt\na red fox\na green fox\n")
    plain = load_spec(write(tmp_path / "plain", "model: stable-diffusion-3-5-large\nprompts: grid.csv\n"))
    templated = load_spec(write(tmp_path, "template: 'a {colour} fox'\nsweep: {colour: [red, green]}\n"))
    assert {job.job_id for job in all_jobs(plain)} == {job.job_id for job in all_jobs(templated)}


def test_grid_prompts_may_be_templates_filled_by_columns_and_empty_ones_take_the_spec_template(
    tmp_path: Path,
) -> None:
    grid = (
        "prompt,subject,split\n"
        "a {subject} at {time|dusk},,train\n"  # the column is empty here: the sweep fills it
        ",a lighthouse,val\n"  # no prompt: the spec's template, its subject from the column
        "a plain prompt,,test\n"
    )
    spec = """\
    prompts: grid.csv
    template: "{subject}, oil painting"
    sweep: {subject: [a fox, an owl]}
    """
    jobs = all_jobs(load_spec(write(tmp_path, spec, **{"grid.csv": grid})))
    by_prompt = {job.inputs["prompt"]: job for job in jobs}
    assert set(by_prompt) == {
        "a a fox at time", "a a fox at dusk", "a an owl at time", "a an owl at dusk",
        "a lighthouse, oil painting", "a plain prompt",
    }  # fmt: skip
    assert dict(by_prompt["a an owl at dusk"].variables) == {"subject": "an owl", "choice_1": "dusk"}
    assert dict(by_prompt["a lighthouse, oil painting"].variables) == {"subject": "a lighthouse"}
    assert by_prompt["a lighthouse, oil painting"].carried["split"] == "val"
    plain = by_prompt["a plain prompt"]  # a prompt written out neither repeats per subject nor claims one
    assert plain.variables == {} and plain.template is None
    assert len(jobs) == 6 and plan_jobs(load_spec(tmp_path / "spec.yaml")).total_jobs == 6


def test_a_zip_may_pair_a_variable_with_an_input(tmp_path: Path) -> None:
    spec = """\
    template: "a {subject}"
    zip: {subject: [tall tower, wide valley], aspect_ratio: ["9:16", "16:9"]}
    sweep: {cfg: [2, 4]}
    """
    jobs = all_jobs(load_spec(write(tmp_path, spec)))
    pairs = {(job.inputs["prompt"], job.inputs["aspect_ratio"], job.inputs["cfg"]) for job in jobs}
    assert pairs == {
        (p, r, c) for (p, r), c in product([("a tall tower", "9:16"), ("a wide valley", "16:9")], [2.0, 4.0])
    }
    assert all(job.job_id == job_id(job.model, job.version, job.inputs) for job in jobs)
    assert plan_jobs(load_spec(tmp_path / "spec.yaml")).total_jobs == 4


def test_prompts_that_render_alike_collapse_into_one_job(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "template: 'a {fox|fox|owl}'\nseeds: [1, 2]\n"))
    assert len(all_jobs(spec)) == 4
    plan = plan_jobs(spec)
    assert (plan.total_jobs, plan.duplicates_collapsed, plan.distinct_prompts) == (4, 2, 2)


def test_a_parquet_grid_column_of_numbers_fills_a_placeholder(tmp_path: Path) -> None:
    pq.write_table(pa.table({"prompt": ["{count} apples", None], "count": [3, 7]}), tmp_path / "g.parquet")
    spec = load_spec(write(tmp_path, "prompts: g.parquet\ntemplate: '{count} pears'\n"))
    assert sorted(job.inputs["prompt"] for job in all_jobs(spec)) == ["3 apples", "7 pears"]
    assert json.loads(json.dumps(sorted(job.variables["count"] for job in all_jobs(spec)))) == ["3", "7"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_plain_grid_whose_prompts_hold_variants_expands_them(tmp_path: Path, suffix: str) -> None:
    prompts = ["a {red|green} fox", "an owl", "a {{literal}} brace"]
    if suffix == ".csv":
        (tmp_path / "g.csv").write_text("prompt\n" + "\n".join(prompts) + "\n", encoding="utf-8")
    else:
        pq.write_table(pa.table({"prompt": pa.array(prompts).dictionary_encode()}), tmp_path / "g.parquet")
    spec = load_spec(write(tmp_path, f"prompts: g{suffix}\n"))
    assert spec.grid_templates
    jobs = all_jobs(spec)
    assert sorted(job.inputs["prompt"] for job in jobs) == [
        "a green fox",
        "a red fox",
        "a {literal} brace",
        "an owl",
    ]
    assert [job.variables for job in jobs if job.inputs["prompt"] == "an owl"] == [{}]
    assert plan_jobs(spec).total_jobs == 4


def test_a_plain_grid_without_braces_is_not_scanned_as_templates(tmp_path: Path) -> None:
    pq.write_table(pa.table({"prompt": ["a fox", "an owl"]}), tmp_path / "g.parquet")
    spec = load_spec(write(tmp_path, "prompts: g.parquet\n"))
    assert not spec.grid_templates
    assert all(job.variables == {} and job.template is None for job in all_jobs(spec))
