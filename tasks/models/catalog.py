"""The models promptgrid knows without asking the API: their inputs, defaults, ranges and pixel sizes.

Both the sandbox (which answers 400 on a bad input) and spec validation (which rejects a bad grid row
before anything is sent) read this catalog, through `promptgrid.tasks.models.check`, so the two can never
disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from promptgrid.errors import UnknownModel

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
CONTENT_TYPES = {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
SEED_MAX = 4_294_967_295

# The order in which inputs are listed in manifests and job descriptions.
INPUT_NAMES = (
    "prompt",
    "aspect_ratio",
    "cfg",
    "steps",
    "seed",
    "image",
    "prompt_strength",
    "output_format",
    "output_quality",
)


@dataclass(frozen=True)
class ModelSchema:
    """One model's inputs: defaults and allowed ranges."""

    slug: str
    cfg_default: float
    steps_default: int
    steps_range: tuple[int, int]
    aliases: tuple[str, ...] = ()
    cfg_range: tuple[float, float] = (0.0, 20.0)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def default_inputs(self) -> dict[str, Any]:
        return {
            "aspect_ratio": "1:1",
            "cfg": self.cfg_default,
            "steps": self.steps_default,
            "seed": None,
            "image": None,
            "prompt_strength": 0.85,
            "output_format": "webp",
            "output_quality": 90,
        }


MODELS: dict[str, ModelSchema] = {
    "stable-diffusion-3-5-large": ModelSchema(
        slug="stable-diffusion-3-5-large",
        cfg_default=3.5,
        steps_default=35,
        steps_range=(1, 50),
        aliases=("stable-diffusion-3.5-large",),
    ),
    "stable-diffusion-3-5-large-turbo": ModelSchema(
        slug="stable-diffusion-3-5-large-turbo",
        cfg_default=1.0,
        steps_default=4,
        steps_range=(1, 10),
        aliases=("stable-diffusion-3.5-large-turbo",),
    ),
}
_BY_ALIAS = {alias: schema for schema in MODELS.values() for alias in (schema.slug, *schema.aliases)}


def get_model(slug: str) -> ModelSchema:
    """The schema for a slug or one of its aliases (the seed page writes `3.5` with a dot)."""
    try:
        return _BY_ALIAS[slug]
    except (KeyError, TypeError):
        known = ", ".join(MODELS)
        raise UnknownModel(f"unknown model {slug!r}; known models: {known}") from None


def output_size(inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """The pixel size a text-to-image prediction yields; None for image-to-image (it follows the input)."""
    if inputs.get("image"):
        return None
    return ASPECT_RATIOS[inputs.get("aspect_ratio") or "1:1"]
