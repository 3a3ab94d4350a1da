"""What is known of a model once resolved (the slug the API knows, its schema, where from), and the user cache
that keeps it for offline dry runs.

The user cache is `$XDG_CACHE_HOME/promptgrid/models/<api host>/<model>.json` (`~/.cache` when the variable
is unset), one folder per API, so a sandbox's schemas never stand in for the real API's. A run writes what it
resolved there; `promptgrid run --dry-run` reads it and sends nothing. It holds no key and nothing secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from promptgrid.models.catalog import BUILTIN, ModelCatalog, builtin_sizes
from promptgrid.models.schema import ModelSchema, model_schema
from promptgrid.models.slugs import canonical_slug

CACHE_ENV = "XDG_CACHE_HOME"
_NOT_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelRecord:
    """One model as resolved: promptgrid's name for it, the slug to send, its input schema, where it came
    from (`source`, in words), when and from which API."""

    model: str
    slug: str
    request_schema: Mapping[str, Any]
    source: str
    fetched_at: str | None = None
    api: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "request_schema": dict(self.request_schema)}

    @classmethod
    def from_json(cls, data: Any) -> ModelRecord:
        """A record from its JSON; ValueError when it is not one (a damaged or foreign cache file)."""
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        model, slug, source = (data.get(name) for name in ("model", "slug", "source"))
        fetched_at, api, schema = data.get("fetched_at"), data.get("api"), data.get("request_schema")
        if not (
            isinstance(model, str) and isinstance(slug, str) and isinstance(source, str) and model and slug
        ):
            raise ValueError("model, slug and source must be non-empty strings")
        if not isinstance(schema, Mapping):
            raise ValueError("request_schema must be a JSON object")
        optional = [value if isinstance(value, str) else None for value in (fetched_at, api)]
        return cls(model, slug, dict(schema), source, *optional)

    def schema(self) -> ModelSchema:
        """The schema to check inputs against (jsonschema.SchemaError when the record holds no valid one)."""
        return model_schema(self.model, self.request_schema, self.source, builtin_sizes(self.model))


def builtin_record(slug: str) -> ModelRecord | None:
    """The built-in table's record for a slug in either spelling, sending the slug as written."""
    known = BUILTIN.get(canonical_slug(slug))
    if known is None:
        return None
    return ModelRecord(known.slug, slug, known.request_schema, "the built-in table")


def user_cache_root() -> Path:
    base = os.environ.get(CACHE_ENV, "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "promptgrid" / "models"


def api_folder_name(base_url: str) -> str:
    """The cache folder of one API: its host and port, made a safe file name."""
    parts = urlsplit(base_url)
    return _NOT_SAFE.sub("_", parts.netloc or base_url).strip("._") or "api"


class UserCache:
    """The schemas one API answered, as files in the user's cache folder."""

    def __init__(self, base_url: str, root: Path | None = None):
        self.base_url = base_url
        self.folder = (root or user_cache_root()) / api_folder_name(base_url)

    def _path(self, model: str) -> Path:
        return self.folder / f"{_NOT_SAFE.sub('_', canonical_slug(model))}.json"

    def load(self, model: str) -> ModelRecord | None:
        """The cached record of a model, or None (absent, unreadable or damaged: a cache is only a cache)."""
        try:
            record = ModelRecord.from_json(json.loads(self._path(model).read_text(encoding="utf-8")))
            record.schema()
        except (OSError, ValueError, jsonschema.SchemaError):
            return None
        return record if record.model == canonical_slug(model) else None

    def records(self) -> list[ModelRecord]:
        if not self.folder.is_dir():
            return []
        found = [self.load(path.stem) for path in sorted(self.folder.glob("*.json"))]
        return [record for record in found if record is not None]

    def save(self, record: ModelRecord) -> bool:
        """Write one record atomically; False when the cache folder cannot be written (the run goes on)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(record.to_json(), out, indent=1)  # the schema keeps its order
            os.replace(temporary, self._path(record.model))
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(temporary)
            return False
        return True


def offline_catalog(base_url: str, cache: UserCache | None = None) -> ModelCatalog:
    """What a dry run checks against without asking anything: the built-in table, overlaid by the schemas
    this API answered before (the user cache)."""
    cache = cache or UserCache(base_url)
    models: dict[str, ModelSchema] = dict(BUILTIN)
    for record in cache.records():
        cached = replace(record, source=f"the user cache ({record.source}, fetched {record.fetched_at})")
        models[record.model] = cached.schema()
    note = (
        f" (offline: the built-in table and schemas cached from {base_url}; "
        "`promptgrid models show SLUG` fetches and caches another model's)"
    )
    return ModelCatalog(models.values(), note=note)
