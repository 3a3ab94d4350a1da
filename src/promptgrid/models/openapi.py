"""Reading a model's input schema out of the OpenAPI document the API publishes for it
(`GET /v1/models/{slug}/schemas/openapi`).

Eachlabs documents that the endpoint exists (OpenAPI 3.0, derived from the model's request schema) but not
the document's layout, so this reads it defensively: the `input` property of a request body's JSON schema,
else a component schema named like an input. OpenAPI 3.0's dialect is made JSON Schema on the way
(`nullable`, boolean `exclusiveMinimum`/`exclusiveMaximum`), and references are inlined.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from promptgrid.models.schema import deref

_INPUT_COMPONENTS = ("Input", "input", "ModelInput", "PredictionInput", "Inputs")


def input_schema_from_openapi(document: Any) -> dict[str, Any] | None:
    """The JSON Schema of a model's inputs in its OpenAPI document, or None when none can be found."""
    if not isinstance(document, Mapping):
        return None
    for candidate in _candidates(document):
        schema = json_schema_from_openapi(deref(candidate, document))
        if isinstance(schema.get("properties"), Mapping) and schema["properties"]:
            return {"type": "object", **schema}
    return None


def _candidates(document: Mapping[str, Any]) -> Iterator[Any]:
    for body in _request_bodies(document):
        schema = deref(body, document)
        if not isinstance(schema, Mapping):
            continue
        properties = schema.get("properties")
        if isinstance(properties, Mapping) and isinstance(properties.get("input"), Mapping):
            yield properties["input"]
        elif isinstance(properties, Mapping) and "prompt" in properties:
            yield schema
    components = (document.get("components") or {}).get("schemas") or {}
    if isinstance(components, Mapping):
        for name in _INPUT_COMPONENTS:
            if isinstance(components.get(name), Mapping):
                yield components[name]
        for name, schema in components.items():
            if str(name).lower().endswith("input") and isinstance(schema, Mapping):
                yield schema


def _request_bodies(document: Mapping[str, Any]) -> Iterator[Any]:
    paths = document.get("paths")
    if not isinstance(paths, Mapping):
        return
    for operations in paths.values():
        if not isinstance(operations, Mapping):
            continue
        for operation in operations.values():
            body = operation.get("requestBody") if isinstance(operation, Mapping) else None
            body = deref(body, document)
            content = body.get("content") if isinstance(body, Mapping) else None
            if isinstance(content, Mapping):
                for media in content.values():
                    if isinstance(media, Mapping) and "schema" in media:
                        yield media["schema"]


def json_schema_from_openapi(schema: Any) -> Any:
    """An OpenAPI 3.0 schema object rewritten as JSON Schema (draft 2020-12), recursively."""
    if isinstance(schema, list):
        return [json_schema_from_openapi(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {
        key: value
        if key in ("default", "enum", "const", "example", "examples")
        else json_schema_from_openapi(value)
        for key, value in schema.items()
        if key != "nullable"
    }
    if schema.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # OpenAPI 3.0 (like draft 4) makes the bound exclusive with a boolean; JSON Schema names the bound.
        if isinstance(out.get(flag), bool) and out.pop(flag) and bound in out:
            out[flag] = out.pop(bound)
    return out
