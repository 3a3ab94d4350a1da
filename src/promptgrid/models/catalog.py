"""The models promptgrid knows without asking the API (the SD3.5 family), and the catalog specs are checked
against.

The built-in table is written as the JSON Schema the API would answer for these models (their inputs and
defaults match Replicate's `stability-ai/stable-diffusion-3.5-large`), so a schema from the API, a cached
copy and this table are all read and checked by the same code (`promptgrid.models.schema`). It is the
offline default: a run asks the API first (`promptgrid.api.resolve`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from promptgrid.errors import UnknownModel
from promptgrid.models.schema import ModelSchema
from promptgrid.models.slugs import canonical_slug

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
OUTPUT_FORMATS = ("webp", "jpg", "png")
CONTENT_TYPES = {
    "webp": "image/webp",
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
SEED_MAX = 4_294_967_295


def content_type(image_format: str) -> str:
    return CONTENT_TYPES.get(image_format, "application/octet-stream")


def sd35_schema(cfg_default: float, steps_default: int, steps_max: int) -> dict[str, Any]:
    """The request schema of an SD3.5 Large model, as the API's model endpoint states one."""
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "pattern": "\\S",
                "description": "Text prompt for image generation",
            },
            "aspect_ratio": {
                "type": "string",
                "enum": list(ASPECT_RATIOS),
                "default": "1:1",
                "description": "The aspect ratio of the output; ignored when an image is given",
            },
            "cfg": {
                "type": "number",
                "minimum": 0,
                "maximum": 20,
                "default": cfg_default,
                "description": "How closely the image follows the prompt (guidance scale)",
            },
            "steps": {
                "type": "integer",
                "minimum": 1,
                "maximum": steps_max,
                "default": steps_default,
                "description": "Number of sampler steps",
            },
            "seed": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": SEED_MAX,
                "description": "Random seed; leave out for a random one",
            },
            "image": {
                "type": ["string", "null"],
                "format": "uri",
                "pattern": "^https?://.{5,}",
                "description": "Input image for image-to-image; the output follows its shape",
            },
            "prompt_strength": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": 0.85,
                "description": "Image-to-image denoising strength; 1.0 ignores the input image",
            },
            "output_format": {
                "type": "string",
                "enum": list(OUTPUT_FORMATS),
                "default": "webp",
                "description": "Format of the output image",
            },
            "output_quality": {
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
                "default": 90,
                "description": "Quality of webp and jpg outputs; ignored for png",
            },
        },
    }


BUILTIN: dict[str, ModelSchema] = {
    "stable-diffusion-3-5-large": ModelSchema(
        "stable-diffusion-3-5-large", sd35_schema(3.5, 35, 50), sizes=ASPECT_RATIOS
    ),
    "stable-diffusion-3-5-large-turbo": ModelSchema(
        "stable-diffusion-3-5-large-turbo", sd35_schema(1.0, 4, 10), sizes=ASPECT_RATIOS
    ),
}
# The manifest's typed input columns and the order inputs are listed in: the SD3.5 family's inputs.
INPUT_NAMES = BUILTIN["stable-diffusion-3-5-large"].input_names
# Kept for what imported it: the built-in table by slug.
MODELS = BUILTIN


def builtin_sizes(slug: str) -> Mapping[str, tuple[int, int]] | None:
    """The pixel size per aspect ratio of a model promptgrid has a table for (the SD3 family), else None."""
    known = BUILTIN.get(canonical_slug(slug))
    return known.sizes if known is not None else None


def get_model(slug: str) -> ModelSchema:
    """The built-in schema for a slug in either spelling (the seed page writes `3.5` with a dot)."""
    return builtin_catalog().get(slug)


class ModelCatalog:
    """The models a spec may use, by promptgrid's name for them, each with the schema it is checked against.

    `missing` says, for a model that was looked for and not found, why (the API knows neither spelling, or
    the model endpoint was unavailable and nothing was cached); `note` says where the catalog came from.
    """

    def __init__(
        self, models: Iterable[ModelSchema], missing: Mapping[str, str] | None = None, note: str = ""
    ):
        self.models = {model.slug: model for model in models}
        self.missing = dict(missing or {})
        self.note = note

    def get(self, slug: str) -> ModelSchema:
        if not isinstance(slug, str) or not slug.strip():
            raise UnknownModel(f"{slug!r} is not a model slug")
        name = canonical_slug(slug)
        if name in self.models:
            return self.models[name]
        reason = self.missing.get(name)
        if reason:
            raise UnknownModel(f"unknown model {slug!r}: {reason}")
        known = ", ".join(self.models) or "none"
        raise UnknownModel(f"unknown model {slug!r}; known models: {known}{self.note}")

    def __contains__(self, slug: object) -> bool:
        return isinstance(slug, str) and canonical_slug(slug) in self.models


def builtin_catalog() -> ModelCatalog:
    return ModelCatalog(BUILTIN.values())


def expected_size(model: str, inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """The pixel size a text-to-image prediction should yield, when anything says: `width`/`height` inputs,
    or the SD3 family's table by aspect ratio. None for image-to-image (it follows the input) and otherwise.

    A paid image of another size is kept and flagged, never failed: Eachlabs publishes no sizes.
    """
    if inputs.get("image"):
        return None
    width, height = inputs.get("width"), inputs.get("height")
    if isinstance(width, int) and isinstance(height, int) and not isinstance(width, bool):
        return width, height
    sizes = builtin_sizes(model)
    if sizes is None:
        return None
    return sizes.get(str(inputs.get("aspect_ratio") or "1:1"))


def output_size(inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """The SD3 family's pixel size for these inputs; None for image-to-image (it follows the input)."""
    return expected_size("stable-diffusion-3-5-large", inputs)
