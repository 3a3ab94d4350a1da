"""The sandbox's models: what its model endpoints describe and its creates accept, and the size each renders.

SD3.5 Large and Large Turbo take the built-in table's schemas (the sandbox shares the model catalog, by the
layer rules). `flux-1-dev` is the sandbox's own: a made-up text-to-image model with other input names
(`guidance`, `num_inference_steps`, `width`/`height`), of which promptgrid has no table, so only its schema
endpoint describes it. `flux-1-schnell` is flux-1-dev with a `num_images` input (1-4) and `output_type:
array`: its success answers a list of output URLs, one per image, each billed. Which slug spellings the
sandbox knows is its `slug_spelling` setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from promptgrid.models.catalog import ASPECT_RATIOS, BUILTIN
from promptgrid.models.schema import ModelSchema
from promptgrid.models.slugs import canonical_slug, dotted_slug

FLUX_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "pattern": "\\S", "description": "What to draw"},
        "width": {
            "type": "integer",
            "minimum": 256,
            "maximum": 1440,
            "multipleOf": 16,
            "default": 1024,
            "description": "Output width in pixels",
        },
        "height": {
            "type": "integer",
            "minimum": 256,
            "maximum": 1440,
            "multipleOf": 16,
            "default": 1024,
            "description": "Output height in pixels",
        },
        "guidance": {
            "type": "number",
            "minimum": 0,
            "maximum": 10,
            "default": 3.5,
            "description": "Guidance for the generation",
        },
        "num_inference_steps": {
            "type": "integer",
            "minimum": 1,
            "maximum": 50,
            "default": 28,
            "description": "Number of denoising steps",
        },
        "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647, "description": "Random seed"},
        "output_format": {
            "type": "string",
            "enum": ["webp", "jpg", "png"],
            "default": "webp",
            "description": "Format of the output image",
        },
    },
    "additionalProperties": False,
}


# An `output_type: array` model: flux-1-dev's inputs plus how many images one prediction makes.
SCHNELL_SCHEMA: dict[str, Any] = {
    **FLUX_SCHEMA,
    "properties": {
        **FLUX_SCHEMA["properties"],
        "num_images": {
            "type": "integer",
            "minimum": 1,
            "maximum": 4,
            "default": 1,
            "description": "Number of images to generate",
        },
    },
}


@dataclass(frozen=True)
class SandboxModel:
    """One model the sandbox serves: its schema, and how it sizes a text-to-image output."""

    schema: ModelSchema
    title: str
    output_type: str = "string"  # "array": a success answers a list of URLs (`num_images` of them)

    @property
    def slug(self) -> str:
        return self.schema.slug

    def size(self, inputs: Mapping[str, Any], delta_px: int) -> tuple[int, int]:
        """The pixel size rendered: the aspect ratio's (SD3.5) or width x height, plus `delta_px` each way."""
        if "width" in self.schema.properties:
            width, height = int(inputs["width"]), int(inputs["height"])
        else:
            width, height = ASPECT_RATIOS[str(inputs.get("aspect_ratio") or "1:1")]
        return width + delta_px, height + delta_px


MODELS: dict[str, SandboxModel] = {
    "stable-diffusion-3-5-large": SandboxModel(
        BUILTIN["stable-diffusion-3-5-large"], "Stable Diffusion 3.5 Large"
    ),
    "stable-diffusion-3-5-large-turbo": SandboxModel(
        BUILTIN["stable-diffusion-3-5-large-turbo"], "Stable Diffusion 3.5 Large Turbo"
    ),
    "flux-1-dev": SandboxModel(
        ModelSchema("flux-1-dev", FLUX_SCHEMA, "the sandbox"), "FLUX.1 [dev] (sandbox)"
    ),
    "flux-1-schnell": SandboxModel(
        ModelSchema("flux-1-schnell", SCHNELL_SCHEMA, "the sandbox"), "FLUX.1 [schnell] (sandbox)", "array"
    ),
}
SPELLINGS = ("any", "dotted", "dashed")


def find_model(slug: Any, spelling: str = "any") -> SandboxModel | None:
    """The model a slug names, if the sandbox knows that spelling of it (any, dotted or dashed)."""
    if not isinstance(slug, str) or not slug:
        return None
    model = MODELS.get(canonical_slug(slug))
    if model is None:
        return None
    dotted, dashed = dotted_slug(model.slug), model.slug
    known = {"any": {dotted, dashed}, "dotted": {dotted}, "dashed": {dashed}}[spelling]
    return model if slug in known else None


def model_detail(model: SandboxModel, slug: str) -> dict[str, Any]:
    """The model endpoint's answer, in the documented shape (`ModelDetail`)."""
    return {
        "title": model.title,
        "slug": slug,
        "version": "0.0.1",
        "output_type": model.output_type,
        "request_schema": dict(model.schema.request_schema),
        "cost": None,
    }


def _as_openapi(schema: Any) -> Any:
    """JSON Schema in OpenAPI 3.0's dialect: a nullable type is `nullable: true`, not a list of types."""
    if isinstance(schema, list):
        return [_as_openapi(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: _as_openapi(value) for key, value in schema.items() if key != "$schema"}
    kind = schema.get("type")
    if isinstance(kind, list) and "null" in kind and len(kind) == 2:
        out["type"] = next(k for k in kind if k != "null")
        out["nullable"] = True
    return out


def openapi_document(model: SandboxModel, slug: str) -> dict[str, Any]:
    """An OpenAPI 3.0 document for one model: its create request, the input schema as a component."""
    inputs = _as_openapi(model.schema.request_schema)
    request = {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "enum": [slug]},
            "version": {"type": "string", "default": "0.0.1"},
            "input": {"$ref": "#/components/schemas/Input"},
        },
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Request"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": model.title, "version": "0.0.1"},
        "paths": {"/v1/prediction": {"post": {"operationId": "createPrediction", "requestBody": body}}},
        "components": {"schemas": {"Request": request, "Input": inputs}},
    }
