"""Checking one prediction's inputs against its model's schema: every bad field named with what is allowed.

Spec validation and the sandbox (which answers 400 on a bad input) both check through here, so the two can
never disagree about a schema they share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from promptgrid.models.catalog import get_model
from promptgrid.models.schema import InputError, ModelSchema

__all__ = ["InputError", "check_input"]


def check_input(model: str | ModelSchema, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[InputError]]:
    """Validate one prediction's inputs against `model` (a schema, or a built-in model's slug); return them
    normalised (real numbers, defaults filled, None for inputs without one) and every error found."""
    schema = model if isinstance(model, ModelSchema) else get_model(model)
    return schema.check(raw)
