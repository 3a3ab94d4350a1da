"""One model's inputs as a JSON Schema: values checked with `jsonschema`, the schema read for defaults and
ranges.

The schema is the API's own (`request_schema` of `GET /v1/model`), a cached copy of it, or the built-in
table's. Checking happens in two steps: a value is first normalised the way a grid or a YAML file writes it
(numbers given as text, booleans as `true`, -0.0) by the type the schema states, then validated by
`jsonschema`. Every bad field is reported, each with what its schema allows, in words.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

NUMERIC = frozenset({"integer", "number"})
# Keywords the vectorised range check of a numeric column understands; any other constraint (multipleOf,
# enum, not, ...) sends the column through the schema value by value.
_RANGE_KEYWORDS = frozenset(
    {"type", "minimum", "maximum", "default", "description", "title", "examples", "example", "format"}
    | {"nullable", "deprecated", "readOnly", "anyOf", "oneOf"}
)


@dataclass(frozen=True)
class InputError:
    """One bad input: which field, the value given, and what is allowed."""

    field: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value!r} is not allowed; expected {self.allowed}"


def _pointer(root: Any, ref: str) -> Any:
    node = root
    for part in ref.lstrip("#").strip("/").split("/") if ref.strip("#/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def deref(schema: Any, root: Any, seen: tuple[str, ...] = ()) -> Any:
    """`schema` with its local `$ref`s ("#/...") inlined, for reading; a recursive reference stays."""
    if isinstance(schema, list):
        return [deref(item, root, seen) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in seen:
        target = _pointer(root, ref)
        if isinstance(target, Mapping):
            out.update(deref(target, root, (*seen, ref)))
            schema = {key: value for key, value in schema.items() if key != "$ref"}
    for key, value in schema.items():
        literal = key in ("default", "enum", "const", "examples", "example")
        out[key] = value if literal else deref(value, root, seen)
    members = out.get("allOf")
    if isinstance(members, list) and len(members) == 1 and isinstance(members[0], Mapping):
        merged = {**members[0], **{key: value for key, value in out.items() if key != "allOf"}}
        return merged
    return out


def kinds_of(prop: Mapping[str, Any]) -> frozenset[str]:
    """The JSON types a property accepts: its `type`, `anyOf`/`oneOf` branches, `nullable` and `enum`."""
    found: set[str] = set()
    kind = prop.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(str(k) for k in kind)
    for branch_key in ("anyOf", "oneOf"):
        for branch in prop.get(branch_key) or []:
            if isinstance(branch, Mapping):
                found |= kinds_of(branch)
    if prop.get("nullable") is True:
        found.add("null")
    if not found and isinstance(prop.get("enum"), list):
        found.update(_json_kind(value) for value in prop["enum"])
    return frozenset(found)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "object"


def _branch_bounds(prop: Mapping[str, Any]) -> Mapping[str, Any]:
    """The branch of an `anyOf: [{type: integer, minimum..}, {type: null}]` that carries the bounds."""
    if "minimum" in prop or "maximum" in prop or "enum" in prop:
        return prop
    for branch_key in ("anyOf", "oneOf"):
        for branch in prop.get(branch_key) or []:
            if isinstance(branch, Mapping) and kinds_of(branch) - {"null"}:
                return branch
    return prop


def _number_text(value: Any, integer: bool) -> str:
    return str(int(value)) if integer and float(value).is_integer() else f"{value:g}"


def describe_allowed(prop: Mapping[str, Any]) -> str:
    """What a property allows, in the words promptgrid's messages use ("an integer from 1 to 50")."""
    kinds = kinds_of(prop) - {"null"}
    body = _branch_bounds(prop)
    enum = body.get("enum")
    if isinstance(enum, list) and enum:
        return "one of " + ", ".join(str(value) for value in enum if value is not None)
    if kinds and kinds <= NUMERIC:
        integer = "number" not in kinds
        noun = "an integer" if integer else "a number"
        low = body.get("minimum", body.get("exclusiveMinimum"))
        high = body.get("maximum", body.get("exclusiveMaximum"))
        if isinstance(low, int | float) and isinstance(high, int | float):
            text = f"{noun} from {_number_text(low, integer)} to {_number_text(high, integer)}"
        elif isinstance(low, int | float):
            text = f"{noun} of at least {_number_text(low, integer)}"
        elif isinstance(high, int | float):
            text = f"{noun} of at most {_number_text(high, integer)}"
        else:
            text = noun
        if "exclusiveMinimum" in body or "exclusiveMaximum" in body:
            text += " (bounds excluded)"
        step = body.get("multipleOf")
        return text + (
            f", a multiple of {_number_text(step, integer)}" if isinstance(step, int | float) else ""
        )
    if kinds == {"string"}:
        if str(body.get("pattern", "")).startswith("^https?://"):
            return "an http(s) URL"
        if body.get("format") == "uri":
            return "a URL"
        low, high = body.get("minLength"), body.get("maxLength")
        if isinstance(high, int):
            return f"a string of {low or 0} to {high} characters"
        return "a non-empty string" if isinstance(low, int) and low >= 1 else "a string"
    if kinds == {"boolean"}:
        return "true or false"
    if kinds == {"array"}:
        return "a list"
    return "a value of type " + " or ".join(sorted(kinds)) if kinds else "a value the schema allows"


def coerce(value: Any, kinds: frozenset[str]) -> Any:
    """A value as written (a CSV cell is always text) turned into the JSON type its property states.

    A value that cannot be turned is returned as it is, for validation to refuse with the original in view.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if kinds & NUMERIC and "string" not in kinds:
            return _parse_number(value, kinds)
        return _coerce_text(value, kinds)
    if isinstance(value, int | float) and kinds & NUMERIC:
        return _coerce_number(value, kinds, value)
    return value


def _parse_number(text: str, kinds: frozenset[str]) -> Any:
    if "number" not in kinds:
        try:  # exact, where a float would round a long integer
            return int(text.strip())
        except ValueError:
            pass
    try:
        number = float(text.strip())
    except ValueError:
        return _coerce_text(text, kinds)
    return _coerce_number(number, kinds, text)


def _coerce_number(number: float | int, kinds: frozenset[str], original: Any) -> Any:
    if isinstance(number, float) and not math.isfinite(number):
        return original
    if "number" in kinds:
        return number if isinstance(number, int) and "integer" in kinds else float(number) + 0.0
    if isinstance(number, int):
        return number
    return int(number) if number.is_integer() else original


def _coerce_text(value: str, kinds: frozenset[str]) -> Any:
    if "boolean" in kinds and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if kinds & {"array", "object"} and "string" not in kinds and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _constraints(prop: Mapping[str, Any]) -> set[str]:
    """Keywords of a property beyond a plain numeric range (annotations and x- extensions aside)."""
    return {key for key in prop if not key.startswith("x-")} - _RANGE_KEYWORDS


def _is_bad_number(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


@dataclass(frozen=True)
class ModelSchema:
    """One model: promptgrid's name for it (the dashed slug), the JSON Schema of its inputs, and where the
    schema came from. `sizes` is the pixel size per aspect ratio, for the family promptgrid has a table of."""

    slug: str
    request_schema: Mapping[str, Any]
    source: str = "the built-in table"
    sizes: Mapping[str, tuple[int, int]] | None = field(default=None, compare=False)

    @cached_property
    def _root(self) -> dict[str, Any]:
        return dict(self.request_schema)

    @cached_property
    def properties(self) -> dict[str, dict[str, Any]]:
        """Each input's schema, references inlined, in the order the schema lists them (`x-order` first)."""
        resolved = deref(self._root, self._root)
        raw = resolved.get("properties") if isinstance(resolved, Mapping) else None
        props = {str(k): dict(v) for k, v in (raw or {}).items() if isinstance(v, Mapping)}
        order = {name: prop.get("x-order") for name, prop in props.items()}
        ranked = sorted(props, key=lambda n: (not isinstance(order[n], int), order[n] or 0))
        return {name: props[name] for name in ranked}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.properties)

    @cached_property
    def required(self) -> tuple[str, ...]:
        names = self._root.get("required")
        return tuple(str(n) for n in names) if isinstance(names, list) else ()

    @cached_property
    def kinds(self) -> dict[str, frozenset[str]]:
        return {name: kinds_of(prop) for name, prop in self.properties.items()}

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """Each input's default, normalised like a value the user gave; inputs without one are left out."""
        found = {}
        for name, prop in self.properties.items():
            if prop.get("default") is not None:
                found[name] = coerce(prop["default"], self.kinds[name])
        return found

    @cached_property
    def _validator(self) -> Validator:
        cls = jsonschema.validators.validator_for(self._root, default=jsonschema.Draft202012Validator)
        # Presence is checked by `check`, field by field; here only the values are.
        schema = {**self._root, "required": []}
        return cls(schema)

    def allowed(self, name: str) -> str:
        return describe_allowed(self.properties.get(name, {}))

    def suggest(self, name: str) -> str | None:
        """The input a misspelt name most likely meant (difflib), or None."""
        close = difflib.get_close_matches(name, self.input_names, n=1, cutoff=0.6)
        return close[0] if close else None

    def unknown_input(self, name: str) -> str:
        """Why `name` is not an input of this model: a suggestion, and the inputs it has."""
        near = self.suggest(name)
        hint = f"did you mean {near!r}? " if near else ""
        return f"{hint}the inputs of {self.slug} are {', '.join(self.input_names)}"

    def numeric_range(self, name: str) -> tuple[float, float, bool] | None:
        """(low, high, integer) when the input is a plain number in a range (the vectorised path's case)."""
        prop = self.properties.get(name)
        kinds = self.kinds.get(name, frozenset()) - {"null"}
        if prop is None or not kinds or not kinds <= NUMERIC:
            return None
        body = _branch_bounds(prop)
        if _constraints(body) or _constraints(prop):
            return None
        low, high = body.get("minimum", -math.inf), body.get("maximum", math.inf)
        return float(low), float(high), "number" not in kinds

    def is_text(self, name: str) -> bool:
        return self.kinds.get(name, frozenset()) - {"null"} == {"string"}

    def is_absent(self, name: str, value: Any) -> bool:
        """None, or "" for an input that is not required (an empty grid cell): the default applies."""
        return value is None or (isinstance(value, str) and value == "" and name not in self.required)

    def check_value(self, name: str, raw: Any) -> tuple[Any, str | None]:
        """One input's value normalised, and what is allowed when it is bad (None when it is fine)."""
        value = coerce(raw, self.kinds.get(name, frozenset()))
        if _is_bad_number(value) or any(
            error.absolute_path and error.absolute_path[0] == name
            for error in self._validator.iter_errors({name: value})
        ):
            return None, self.allowed(name)
        return value, None

    def check(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[InputError]]:
        """Validate one prediction's inputs; return them normalised (defaults filled) and every error.

        Numbers sent as strings ("3.5") are accepted, as the contract's own example sends them. Names the
        schema does not list are errors even where it allows extra keys: a typo must not fall back to a
        default. Absent means None or "" (an empty grid cell).
        """
        errors: list[InputError] = []
        out: dict[str, Any] = {name: self.defaults.get(name) for name in self.input_names}
        for name, value in raw.items():
            if name not in self.properties:
                errors.append(
                    InputError(name, value, f"an input of {self.slug} ({self.unknown_input(name)})")
                )
            elif not self.is_absent(name, value):
                out[name], allowed = self.check_value(name, value)
                if allowed is not None:
                    errors.append(InputError(name, value, allowed))
        for name in self.required:
            if out.get(name) is None and not any(error.field == name for error in errors):
                errors.append(InputError(name, raw.get(name), f"a value ({self.allowed(name)}; required)"))
        present = {name: value for name, value in out.items() if value is not None}
        errors.extend(self._whole_object_errors(present, {error.field for error in errors}))
        return out, errors

    def _whole_object_errors(self, present: Mapping[str, Any], reported: set[str]) -> list[InputError]:
        """Constraints between inputs (if/then, dependentRequired) the per-field checks cannot see."""
        found = []
        for error in self._validator.iter_errors(dict(present)):
            where = str(error.absolute_path[0]) if error.absolute_path else ""
            if where in reported or error.validator == "additionalProperties":
                continue
            reported.add(where)
            found.append(InputError(where or "input", present.get(where), error.message))
        return found


def model_schema(
    slug: str, request_schema: Mapping[str, Any], source: str, sizes: Mapping[str, tuple[int, int]] | None
) -> ModelSchema:
    """A ModelSchema whose schema is checked to be one (`jsonschema.SchemaError` otherwise)."""
    cls = jsonschema.validators.validator_for(request_schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(dict(request_schema))
    if not isinstance(request_schema.get("properties"), Mapping):
        raise jsonschema.SchemaError("the schema lists no input properties")
    return ModelSchema(slug, request_schema, source, sizes)


def names_of(models: Sequence[ModelSchema]) -> tuple[str, ...]:
    """Every input name of these models, each once, in the order the models list them."""
    return tuple(dict.fromkeys(name for model in models for name in model.input_names))
