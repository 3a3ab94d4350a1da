"""Model schemas: the two slug spellings, checking any model's inputs with jsonschema, OpenAPI documents, and
the user cache of schemas for offline dry runs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from promptgrid.errors import UnknownModel
from promptgrid.models.catalog import BUILTIN, ModelCatalog, expected_size, get_model
from promptgrid.models.check import check_input
from promptgrid.models.openapi import input_schema_from_openapi
from promptgrid.models.records import ModelRecord, UserCache, builtin_record, offline_catalog
from promptgrid.models.schema import ModelSchema, describe_allowed
from promptgrid.models.slugs import canonical_slug, spellings
from promptgrid.sandbox.models import FLUX_SCHEMA, MODELS, openapi_document
from promptgrid.spec.expand import iter_job_batches, job_id
from promptgrid.spec.load import load_spec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LARGE = get_model("stable-diffusion-3-5-large")
FLUX = ModelSchema("flux-1-dev", FLUX_SCHEMA, "a test")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("stable-diffusion-3-5-large", ["stable-diffusion-3-5-large", "stable-diffusion-3.5-large"]),
        ("stable-diffusion-3.5-large", ["stable-diffusion-3.5-large", "stable-diffusion-3-5-large"]),
        ("flux-1-1-pro", ["flux-1-1-pro", "flux-1.1-pro"]),
        ("flux-1-dev", ["flux-1-dev"]),
        ("seedream-v4-5", ["seedream-v4-5", "seedream-v4.5"]),
    ],
)
def test_a_slug_is_asked_for_as_written_then_in_its_other_spelling(written, expected):
    assert spellings(written) == expected
    assert {canonical_slug(slug) for slug in expected} == {canonical_slug(written)}


def test_the_built_in_table_normalises_exactly_as_the_hand_written_checks_did():
    # Job ids hash the normalised inputs: these must not change, or every existing output would run again.
    inputs, errors = check_input(LARGE, {"prompt": "a fox", "cfg": "3", "steps": "30.0", "seed": "7"})
    assert errors == []
    assert inputs == {
        "prompt": "a fox",
        "aspect_ratio": "1:1",
        "cfg": 3.0,
        "steps": 30,
        "seed": 7,
        "image": None,
        "prompt_strength": 0.85,
        "output_format": "webp",
        "output_quality": 90,
    }
    assert [type(inputs[name]) for name in ("cfg", "steps", "prompt_strength")] == [float, int, float]
    turbo = get_model("stable-diffusion-3.5-large-turbo")
    assert turbo.slug == "stable-diffusion-3-5-large-turbo"
    assert (turbo.defaults["cfg"], turbo.defaults["steps"], type(turbo.defaults["cfg"])) == (1.0, 4, float)
    # The id of a job as the hand-written table made it (sha256 over model, version, sorted inputs).
    present = {key: value for key, value in inputs.items() if value is not None}
    assert job_id("stable-diffusion-3-5-large", "0.0.1", present) == "97f796968d8cf8e3d35f4fc0e3ef6b27"


@pytest.mark.parametrize(
    ("config", "count", "digest"),
    [("demo.yaml", 24, "928b682d95071694"), ("cfg-steps-study.yaml", 648, "6794a47ab5e6d5c6")],
)
def test_the_example_specs_expand_to_the_job_ids_the_hand_written_checks_gave(config, count, digest):
    spec = load_spec(CONFIGS / config)  # offline: the built-in table
    ids = sorted(job.job_id for batch in iter_job_batches(spec) for job in batch)
    assert len(ids) == count and hashlib.sha256("".join(ids).encode()).hexdigest()[:16] == digest


def test_every_bad_input_of_any_model_is_reported_with_what_its_schema_allows():
    _, errors = FLUX.check(
        {
            "prompt": " ",
            "width": "1000",
            "guidance": "11",
            "num_inference_steps": 2.5,
            "guidence": 3,
            "cfg": 2,
        }
    )
    found = {error.field: error.allowed for error in errors}
    assert found["prompt"] == "a non-empty string"
    assert found["width"] == "an integer from 256 to 1440, a multiple of 16"
    assert found["guidance"] == "a number from 0 to 10"
    assert found["num_inference_steps"] == "an integer from 1 to 50"
    assert "did you mean 'guidance'?" in found["guidence"]
    assert "the inputs of flux-1-dev are prompt, width, height" in found["cfg"]
    assert len(errors) == 6


def test_values_are_normalised_by_the_type_the_schema_states():
    inputs, errors = FLUX.check({"prompt": "p", "width": "512", "height": 768.0, "guidance": 4, "seed": "12"})
    assert errors == []
    assert (inputs["width"], inputs["height"], inputs["guidance"], inputs["seed"]) == (512, 768, 4.0, 12)
    assert type(inputs["guidance"]) is float and inputs["num_inference_steps"] == 28  # the default
    for bad in (float("nan"), math.inf, "nan", True, "3,5"):
        assert FLUX.check_value("guidance", bad) == (None, "a number from 0 to 10")
    assert FLUX.check({"width": 512})[1][0].field == "prompt"  # required


def test_booleans_lists_references_and_nullable_ranges_are_read_from_any_schema():
    schema = {
        "$defs": {"Steps": {"type": "integer", "minimum": 1, "maximum": 8}},
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "steps": {"$ref": "#/$defs/Steps", "default": 4},
            "safety": {"type": "boolean", "default": True},
            "loras": {"type": "array", "items": {"type": "string"}},
            "strength": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
        },
    }
    model = ModelSchema("m", schema, "a test")
    inputs, errors = model.check({"prompt": "p", "safety": "false", "loras": '["a", "b"]', "strength": "0.5"})
    assert errors == []
    assert (inputs["steps"], inputs["safety"], inputs["loras"], inputs["strength"]) == (
        4,
        False,
        ["a", "b"],
        0.5,
    )
    assert model.numeric_range("steps") == (1.0, 8.0, True) and model.numeric_range("strength") == (
        0,
        1,
        False,
    )
    assert model.check_value("steps", 9) == (None, "an integer from 1 to 8")
    assert model.check_value("strength", 2) == (None, "a number from 0 to 1")
    assert FLUX.numeric_range("width") is None  # multipleOf: checked value by value, not vectorised
    assert (
        describe_allowed({"type": "string", "minLength": 10, "maxLength": 500})
        == "a string of 10 to 500 characters"
    )


@pytest.mark.parametrize("slug", list(MODELS))
def test_the_input_schema_is_read_back_from_an_openapi_document(slug):
    model = MODELS[slug]
    document = json.loads(json.dumps(openapi_document(model, slug)))
    assert document["components"]["schemas"]["Input"]["properties"]["prompt"]["type"] == "string"
    read = ModelSchema(slug, input_schema_from_openapi(document), "openapi")
    assert read.input_names == model.schema.input_names
    assert read.defaults == model.schema.defaults and read.required == model.schema.required
    for name in model.schema.input_names:
        assert read.allowed(name) == model.schema.allowed(name)
        assert read.kinds[name] == model.schema.kinds[name]  # nullable: true is a null type again
    assert input_schema_from_openapi({"openapi": "3.0.3", "paths": {}}) is None


def test_exclusive_bounds_of_openapi_3_0_become_json_schema_bounds():
    document = {
        "components": {
            "schemas": {
                "Input": {"properties": {"x": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}}
            }
        }
    }
    schema = input_schema_from_openapi(document)
    assert schema is not None and schema["properties"]["x"] == {"type": "number", "exclusiveMinimum": 0}
    assert ModelSchema("m", schema, "t").check_value("x", 0)[1] is not None


def test_a_catalog_names_a_model_in_either_spelling_and_says_why_one_is_missing():
    catalog = ModelCatalog([LARGE], {"sdxl": "the API knows neither 'sdxl'"})
    assert catalog.get("stable-diffusion-3.5-large") is LARGE
    with pytest.raises(UnknownModel, match="the API knows neither 'sdxl'"):
        catalog.get("sdxl")
    with pytest.raises(UnknownModel, match="known models: stable-diffusion-3-5-large"):
        catalog.get("dall-e")


def test_expected_sizes_come_from_width_and_height_or_the_sd3_table():
    assert expected_size("flux-1-dev", {"width": 512, "height": 768}) == (512, 768)
    assert expected_size("stable-diffusion-3.5-large", {"aspect_ratio": "16:9"}) == (1344, 768)
    assert expected_size("flux-1-dev", {"aspect_ratio": "16:9"}) is None  # nothing says
    assert expected_size("stable-diffusion-3-5-large", {"image": "https://x/a.png"}) is None


def test_the_user_cache_follows_xdg_cache_home_and_keeps_one_folder_per_api(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    record = ModelRecord("flux-1-dev", "flux-1-dev", FLUX_SCHEMA, "GET /v1/model?slug=flux-1-dev", "now", "x")
    cache = UserCache("http://127.0.0.1:8787")
    assert cache.save(record)
    assert (tmp_path / "xdg/promptgrid/models/127.0.0.1_8787/flux-1-dev.json").is_file()
    loaded = UserCache("http://127.0.0.1:8787").load("flux-1-dev")
    assert loaded == record
    assert (
        loaded is not None and loaded.schema().input_names == FLUX.input_names
    )  # the API's order of inputs is kept
    assert UserCache("https://api.eachlabs.ai").load("flux-1-dev") is None  # another API's cache
    catalog = offline_catalog("http://127.0.0.1:8787")
    assert catalog.get("flux-1-dev").source.startswith("the user cache (GET /v1/model?slug=flux-1-dev")
    assert catalog.get("stable-diffusion-3-5-large") is BUILTIN["stable-diffusion-3-5-large"]
    with pytest.raises(UnknownModel, match="promptgrid models show SLUG"):
        offline_catalog("https://api.eachlabs.ai").get("flux-1-dev")
    (cache.folder / "flux-1-dev.json").write_text("{not json")
    assert cache.load("flux-1-dev") is None and cache.records() == []  # a damaged cache is only a miss


def test_the_built_in_record_sends_the_slug_as_written():
    record = builtin_record("stable-diffusion-3.5-large")
    assert record is not None and (record.model, record.slug) == (LARGE.slug, "stable-diffusion-3.5-large")
    assert builtin_record("flux-1-dev") is None
