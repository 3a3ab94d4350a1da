"""The input schema of the models promptgrid drives, as the API contract states it, in one place.

Both the sandbox (which answers 400 on a bad input) and spec validation (which rejects a bad grid row
before anything is sent) check inputs through `check_input`, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_VERSION = "0.0.1"

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


class UnknownModel(KeyError):
    """The slug names no model promptgrid knows."""


def get_model(slug: str) -> ModelSchema:
    """The schema for a slug or one of its aliases (the seed page writes `3.5` with a dot)."""
    try:
        return _BY_ALIAS[slug]
    except (KeyError, TypeError):
        known = ", ".join(MODELS)
        raise UnknownModel(f"unknown model {slug!r}; known models: {known}") from None


@dataclass(frozen=True)
class InputError:
    """One bad input: which field, the value given, and what is allowed."""

    field: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value!r} is not allowed; expected {self.allowed}"


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_int(value: Any) -> int | None:
    number = _as_number(value)
    if number is None or number != number or number in (float("inf"), float("-inf")):
        return None
    if not number.is_integer():
        return None
    return int(number)


def _check_number(name, value, low, high, errors, *, integer):
    parsed = _as_int(value) if integer else _as_number(value)
    if parsed is None or parsed != parsed or not (low <= parsed <= high):
        span = (
            f"an integer from {int(low)} to {int(high)}" if integer else f"a number from {low:g} to {high:g}"
        )
        errors.append(InputError(name, value, span))
        return None
    return parsed


def _check_image(value: Any, errors: list[InputError]) -> str | None:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) < 12:
        errors.append(InputError("image", value, "an http(s) URL of a jpeg, png or webp image"))
        return None
    return value


def check_input(model: str | ModelSchema, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[InputError]]:
    """Validate one prediction's inputs; return them normalised (real numbers, defaults filled) and errors.

    Numbers sent as strings ("3.5") are accepted, as the contract's own example sends them. Unknown input
    names are errors: a typo must not silently fall back to a default.
    """
    schema = model if isinstance(model, ModelSchema) else get_model(model)
    errors: list[InputError] = []
    out = schema.default_inputs()
    for name in raw:
        if name not in INPUT_NAMES:
            errors.append(InputError(name, raw[name], f"one of the inputs {', '.join(INPUT_NAMES)}"))

    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        errors.append(InputError("prompt", prompt, "a non-empty string"))
    else:
        out["prompt"] = prompt

    def present(name: str) -> bool:
        return name in raw and raw[name] is not None and raw[name] != ""

    if present("aspect_ratio"):
        if raw["aspect_ratio"] in ASPECT_RATIOS:
            out["aspect_ratio"] = raw["aspect_ratio"]
        else:
            errors.append(
                InputError("aspect_ratio", raw["aspect_ratio"], "one of " + ", ".join(ASPECT_RATIOS))
            )
    if present("cfg"):
        out["cfg"] = _check_number("cfg", raw["cfg"], *schema.cfg_range, errors, integer=False)
    if present("steps"):
        out["steps"] = _check_number("steps", raw["steps"], *schema.steps_range, errors, integer=True)
    if present("seed"):
        out["seed"] = _check_number("seed", raw["seed"], 0, SEED_MAX, errors, integer=True)
    if present("prompt_strength"):
        out["prompt_strength"] = _check_number(
            "prompt_strength", raw["prompt_strength"], 0, 1, errors, integer=False
        )
    if present("output_format"):
        if raw["output_format"] in OUTPUT_FORMATS:
            out["output_format"] = raw["output_format"]
        else:
            errors.append(
                InputError("output_format", raw["output_format"], "one of " + ", ".join(OUTPUT_FORMATS))
            )
    if present("output_quality"):
        out["output_quality"] = _check_number(
            "output_quality", raw["output_quality"], 0, 100, errors, integer=True
        )
    if present("image"):
        out["image"] = _check_image(raw["image"], errors)
    return out, errors


def output_size(inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """The pixel size a text-to-image prediction yields; None for image-to-image (it follows the input)."""
    if inputs.get("image"):
        return None
    return ASPECT_RATIOS[inputs.get("aspect_ratio") or "1:1"]
