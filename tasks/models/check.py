"""Checking one prediction's inputs against its model: every bad field named with what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from promptgrid.tasks.models.catalog import (
    ASPECT_RATIOS,
    INPUT_NAMES,
    OUTPUT_FORMATS,
    SEED_MAX,
    ModelSchema,
    get_model,
)


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


def _check_number(
    name: str, value: Any, low: float, high: float, errors: list[InputError], *, integer: bool
) -> float | None:
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
