"""Spec loading: the contract's keys, overrides, ranges and seeds, and every malformed spec named clearly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

import promptgrid
from promptgrid.errors import InvalidInput
from promptgrid.spec.load import load_spec, load_spec_text
from promptgrid.spec.schema import RateLimit, SweepSpec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

CONTRACT_SPEC = """\
name: cfg-steps-study
model: stable-diffusion-3-5-large
prompts: prompts.csv
inputs: {output_format: webp, output_quality: 90, aspect_ratio: "1:1"}
sweep:
  cfg: [2.5, 3.5, 5.0]
  steps: {start: 20, stop: 40, step: 10}
zip:
  aspect_ratio: ["1:1", "16:9"]
  output_format: [webp, png]
seeds: [1, 2, 3]
output: out/cfg-steps-study
api: {base_url: https://api.eachlabs.ai, rate_limit: 60/60s, max_concurrent: 10, polls_count: true}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "prompts.csv").write_text("prompt,id\na red fox,1\na snow owl,2\n", encoding="utf-8")
    return tmp_path


def write_spec(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        load_spec(path, overrides)
    return caught.value.describe()


def test_the_contract_example_loads_with_every_key(folder: Path) -> None:
    spec = load_spec(write_spec(folder, CONTRACT_SPEC))
    assert spec.model == "stable-diffusion-3-5-large" and spec.version == "0.0.1"
    assert spec.prompts == (folder / "prompts.csv").resolve() and spec.prompts.is_absolute()
    assert spec.sweep == {"cfg": (2.5, 3.5, 5.0), "steps": (20, 30, 40)}
    assert spec.zip == {"aspect_ratio": ("1:1", "16:9"), "output_format": ("webp", "png")}
    assert spec.seeds == (1, 2, 3)
    assert spec.api.rate_limit == RateLimit(requests=60, window_s=60.0)
    assert spec.source_path == (folder / "spec.yaml").absolute()
    assert spec.source_text == CONTRACT_SPEC
    assert len(spec.spec_hash) == 64


def test_overrides_replace_spec_values_and_change_the_hash(folder: Path) -> None:
    path = write_spec(folder, CONTRACT_SPEC)
    overrides = {
        "output": "s3://bucket/run-1",
        "api.base_url": "http://127.0.0.1:9000/",
        "api.rate_limit": "60/6s",
        "api.max_concurrent": 3,
        "api.polls_count": False,
    }
    plain, changed = load_spec(path), load_spec(path, overrides)
    assert changed.output == "s3://bucket/run-1"
    assert changed.api.base_url == "http://127.0.0.1:9000"
    assert changed.api.rate_limit == RateLimit(requests=60, window_s=6.0)
    assert (changed.api.max_concurrent, changed.api.polls_count) == (3, False)
    assert plain.spec_hash == load_spec(path).spec_hash != changed.spec_hash


def test_the_hash_does_not_depend_on_where_the_spec_lives(tmp_path: Path) -> None:
    hashes = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "prompts.csv").write_text("prompt\na red fox\n", encoding="utf-8")
        hashes.append(load_spec(write_spec(folder, CONTRACT_SPEC)).spec_hash)
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize(
    ("text", "requests", "window_s"),
    [
        ("60/60s", 60, 60.0),
        ("60/6s", 60, 6.0),
        ("100/1m", 100, 60.0),
        ("5/s", 5, 1.0),
        ("10/500ms", 10, 0.5),
        ("60/min", 60, 60.0),
        ("60 / 60", 60, 60.0),
    ],
)
def test_rate_limits_parse_from_the_short_form(text: str, requests: int, window_s: float) -> None:
    assert RateLimit.model_validate(text) == RateLimit(requests=requests, window_s=window_s)


def test_defaults_fill_what_a_minimal_spec_leaves_out(folder: Path) -> None:
    spec = load_spec(write_spec(folder, "model: stable-diffusion-3.5-large\nprompts: prompts.csv\n"))
    assert spec.name == "spec" and spec.output == "out/spec"
    assert spec.model == "stable-diffusion-3-5-large"  # the seed page's dotted alias, made canonical
    assert spec.seeds == (0,) and spec.api.max_concurrent == 10 and spec.api.polls_count is True


def test_float_ranges_land_on_their_stop_and_seed_counts_expand(folder: Path) -> None:
    spec = load_spec(
        write_spec(
            folder,
            """\
            model: stable-diffusion-3-5-large
            prompts: prompts.csv
            sweep: {cfg: {start: 0.1, stop: 0.5, step: 0.1}, prompt_strength: [0.5, 1]}
            seeds: {count: 4, start: 1000}
            """,
        )
    )
    assert spec.sweep["cfg"] == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert spec.seeds == (1000, 1001, 1002, 1003)


def test_a_model_sweep_axis_stands_in_for_the_model_key(folder: Path) -> None:
    spec = load_spec(
        write_spec(
            folder,
            """\
            prompts: prompts.csv
            sweep: {model: [stable-diffusion-3-5-large, stable-diffusion-3.5-large-turbo], steps: [4, 8]}
            """,
        )
    )
    assert spec.model == "stable-diffusion-3-5-large"
    assert spec.models == ("stable-diffusion-3-5-large", "stable-diffusion-3-5-large-turbo")


def test_load_spec_text_resolves_paths_against_the_given_folder(folder: Path) -> None:
    spec = load_spec_text(CONTRACT_SPEC, folder, "deployment:study")
    assert spec.prompts == (folder / "prompts.csv").resolve()
    assert spec.source_text == CONTRACT_SPEC
    assert isinstance(spec, SweepSpec)


BASE = "model: stable-diffusion-3-5-large\nprompts: prompts.csv\n"

MALFORMED = {
    "bad yaml": ("model: [unclosed\n", ["line", "not valid YAML"]),
    "not a mapping": ("- a\n- b\n", ["a list", "expected a mapping"]),
    "empty spec": ("", ["empty"]),
    "typo'd top-level key": (BASE + "sweeps: {cfg: [1]}\n", ["sweeps", "unknown key"]),
    "typo'd api key": (BASE + "api: {rate_limt: 60/60s}\n", ["api.rate_limt", "unknown key"]),
    "duplicate key": (BASE + "seeds: [1]\nseeds: [2]\n", ["duplicate key 'seeds'", "line 4"]),
    "missing prompts": ("model: stable-diffusion-3-5-large\n", ["prompts", "required"]),
    "missing grid file": (
        "model: stable-diffusion-3-5-large\nprompts: nope.csv\n",
        ["nope.csv", "does not exist"],
    ),
    "unknown model": ("model: sdxl\nprompts: prompts.csv\n", ["model", "'sdxl'", "known models"]),
    "unknown model on an axis": (
        "prompts: prompts.csv\nsweep: {model: [stable-diffusion-3-5-large, dalle]}\n",
        ["sweep.model[1]", "'dalle'"],
    ),
    "unequal zip lists": (
        BASE + "zip: {aspect_ratio: ['1:1', '16:9'], output_format: [webp]}\n",
        ["zip", "equal"],
    ),
    "bucketless s3 output": (BASE + "output: s3://\n", ["output", "bucket"]),
    "bucketless s3 output with key": (BASE + "output: s3:///x\n", ["output", "bucket"]),
    "other scheme output": (BASE + "output: gs://bucket/x\n", ["output", "s3://bucket/prefix"]),
    "negative seed count": (BASE + "seeds: {count: -1}\n", ["seeds", "count -1"]),
    "huge seed count": (BASE + "seeds: {count: 1000000000}\n", ["seeds", "count 1000000000"]),
    "too many combinations": (
        BASE + "sweep: {cfg: {start: 0, stop: 20, step: 0.01}, steps: {start: 1, stop: 50}}\n",
        ["jobs per row", "at most 100,000"],
    ),
    "seeds mixing types": (BASE + "seeds: [1, '2', 3]\n", ["seeds[1]", "'2'"]),
    "seed out of range": (BASE + "seeds: [4294967296]\n", ["seeds[0]", "4294967296"]),
    "range step 0": (BASE + "sweep: {steps: {start: 20, stop: 40, step: 0}}\n", ["sweep", "step 0"]),
    "range stop below start": (BASE + "sweep: {steps: {start: 40, stop: 20}}\n", ["sweep", "below start"]),
    "scalar sweep axis": (BASE + "sweep: {cfg: 3.5}\n", ["cfg", "not a list"]),
    "empty sweep axis": (BASE + "sweep: {cfg: []}\n", ["cfg", "empty"]),
    "sweep of a non-input": (BASE + "sweep: {guidance: [1, 2]}\n", ["guidance", "can be swept"]),
    "cfg out of range": (BASE + "sweep: {cfg: [2.5, 25]}\n", ["sweep.cfg[1]", "25", "0 to 20"]),
    "wrong type in inputs": (BASE + "inputs: {steps: many}\n", ["inputs.steps", "'many'", "integer"]),
    "bad enum": (BASE + "inputs: {aspect_ratio: '1:2'}\n", ["inputs.aspect_ratio", "'1:2'", "16:9"]),
    "bad output format": (BASE + "zip: {output_format: [gif]}\n", ["zip.output_format[0]", "'gif'"]),
    "turbo steps range": (
        "model: stable-diffusion-3-5-large-turbo\nprompts: prompts.csv\nsweep: {steps: [4, 20]}\n",
        ["sweep.steps[1]", "20", "1 to 10"],
    ),
    "bad image reference": (BASE + "inputs: {image: ftp://host/cat.png}\n", ["inputs.image", "ftp://"]),
    "missing local image": (
        BASE + "inputs: {image: cat.png}\n",
        ["inputs.image", "cat.png", "does not exist"],
    ),
    "bad rate limit": (BASE + "api: {rate_limit: fast}\n", ["api.rate_limit", "'fast'", "60/60s"]),
    "zero concurrency": (BASE + "api: {max_concurrent: 0}\n", ["api.max_concurrent", "at least one"]),
    "bad base url": (BASE + "api: {base_url: api.eachlabs.ai}\n", ["api.base_url", "http"]),
    "seed as a sweep axis": (BASE + "sweep: {seed: [1, 2]}\n", ["'seed'", "use seeds:"]),
    "empty prompts": ("model: stable-diffusion-3-5-large\nprompts: ''\n", ["prompts", "required"]),
    "infinite range": (BASE + "sweep: {cfg: {start: 1, stop: .inf}}\n", ["sweep", "cfg", "stop inf"]),
    "unquoted aspect ratio": (BASE + "sweep: {aspect_ratio: [1:1]}\n", ["sweep.aspect_ratio[0]", "quote it"]),
    "boolean concurrency": (BASE + "api: {max_concurrent: true}\n", ["api.max_concurrent", "integer"]),
    "prompt as an input": (BASE + "inputs: {prompt: hi}\n", ["inputs", "'prompt'"]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_spec_names_its_key_and_value(folder: Path, case: str) -> None:
    text, expected = MALFORMED[case]
    message = problems_of(write_spec(folder, text))
    assert "spec.yaml" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_all_spec_problems_are_reported_together(folder: Path) -> None:
    text = BASE + "inputs: {cfg: 99, steps: 0}\nsweep: {output_quality: [50, 101]}\n"
    with pytest.raises(InvalidInput) as caught:
        load_spec(write_spec(folder, text))
    assert caught.value.total == 3
    joined = caught.value.describe()
    assert "inputs.cfg" in joined and "inputs.steps" in joined and "sweep.output_quality[1]" in joined


def test_a_bad_override_is_named_like_the_spec_key(folder: Path) -> None:
    message = problems_of(write_spec(folder, CONTRACT_SPEC), {"api.rate_limit": "60 per minute"})
    assert "api.rate_limit" in message and "60 per minute" in message


def test_an_unknown_override_key_is_refused(folder: Path) -> None:
    assert "cannot override 'model'" in problems_of(write_spec(folder, CONTRACT_SPEC), {"model": "x"})


def test_a_spec_file_that_is_missing_or_not_utf8_is_reported(folder: Path) -> None:
    assert "does not exist" in problems_of(folder / "absent.yaml")
    (folder / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in problems_of(folder / "latin.yaml")


def test_the_example_configs_load() -> None:
    demo = load_spec(CONFIGS / "demo.yaml")
    assert demo.output == "out/demo" and demo.sweep == {"cfg": (2.5, 4.5), "steps": (20, 30)}
    assert load_spec(CONFIGS / "cfg-steps-study.yaml").zip["output_format"] == ("webp", "png")


SPEC_WITH_TWO_PROBLEMS = """model: stable-diffusion-3-5-large
prompts: grid.csv
inputs:
  cfg: 99
sweeep:
  steps: [10, 20]
"""


def test_a_misspelt_key_and_a_bad_value_are_reported_together_with_their_lines(tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text("prompt\na\n", encoding="utf-8")
    (tmp_path / "spec.yaml").write_text(SPEC_WITH_TWO_PROBLEMS, encoding="utf-8")
    with pytest.raises(InvalidInput) as caught:
        load_spec(tmp_path / "spec.yaml")
    problems = caught.value.problems
    assert any("spec.yaml line 5: sweeep: unknown key 'sweeep'; did you mean 'sweep'?" in p for p in problems)
    assert any("spec.yaml line 4: inputs.cfg: 99 is not allowed" in p for p in problems), problems


def test_a_spec_given_as_a_dict_is_told_its_problems_without_lines(tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text("prompt\na\n", encoding="utf-8")
    data = yaml.safe_load(SPEC_WITH_TWO_PROBLEMS)
    with pytest.raises(InvalidInput) as caught:
        promptgrid.load_spec(data, base_dir=tmp_path)
    problems = caught.value.problems
    assert any(p.startswith("spec: sweeep: unknown key 'sweeep'") for p in problems), problems
    assert any(p.startswith("spec: inputs.cfg: 99 is not allowed") for p in problems), problems
    assert not any(" line " in p for p in problems)
