"""What an export wrote, counted shard by shard: images, bytes, per model and per parameter value, and
what it left out (near-duplicates, images that could not be read), so the card can say it.

Which columns count as parameters is decided from the manifest's columns, not from a fixed list: every
column except those that describe the outcome, the storage or the identity of a row. A column with more
than `VALUES_MAX` distinct values (a free-text grid column, say) is reported by its count alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

VALUES_MAX = 50
PROBLEMS_MAX = 20
NOT_PARAMETERS = frozenset(
    {
        *("run_id", "job_id", "status", "error_code", "error_message", "prediction_id", "attempts"),
        *("api_requests", "queued_at", "submitted_at", "completed_at", "predict_time_s", "cost_usd"),
        *("version", "image_uri", "image_key", "sha256", "bytes", "width", "height", "carried", "prompt"),
        *("image_format", "size_mismatch", "resolved_model", "inputs"),  # what came back, and as sent
        *("template", "variables"),  # a rendered prompt's provenance; each variable is a column of its own
        "model",  # counted on its own
        "split",  # the dataset split a row lands in, not a setting it was made with
    }
)


def parameter_columns(names: list[str]) -> list[str]:
    return [name for name in names if name not in NOT_PARAMETERS]


@dataclass
class Tally:
    """Counts for one shard or, merged, for the whole export."""

    rows: int = 0
    images: int = 0
    bytes: int = 0
    duplicates: int = 0
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)
    values: dict[str, Counter[str]] = field(default_factory=dict)
    many: set[str] = field(default_factory=set)

    def count_row(self, row: dict[str, Any], image_size: int | None, parameters: list[str]) -> None:
        """One exported row; `image_size` is None for a row exported without an image."""
        self.rows += 1
        if image_size is not None:
            self.images += 1
            self.bytes += image_size
        self.models[str(row.get("model"))] += 1
        for name in parameters:
            value = row.get(name)
            if value is None or name in self.many:
                continue
            counts = self.values.setdefault(name, Counter())
            counts[str(value)] += 1
            if len(counts) > VALUES_MAX:
                self._too_many(name)

    def count_problem(self, message: str) -> None:
        self.unreadable += 1
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(message)

    def merge(self, other: Tally) -> None:
        self.images += other.images
        self.bytes += other.bytes
        self.rows += other.rows
        self.duplicates += other.duplicates
        self.unreadable += other.unreadable
        self.problems.extend(other.problems[: max(0, PROBLEMS_MAX - len(self.problems))])
        self.models.update(other.models)
        for name in other.many:
            self._too_many(name)
        for name, counts in other.values.items():
            if name not in self.many:
                self.values.setdefault(name, Counter()).update(counts)
                if len(self.values[name]) > VALUES_MAX:
                    self._too_many(name)

    def _too_many(self, name: str) -> None:
        self.many.add(name)
        self.values.pop(name, None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "images": self.images,
            "bytes": self.bytes,
            "near_duplicates_dropped": self.duplicates,
            "unreadable_images": self.unreadable,
            "problems": self.problems,
            "per_model": dict(sorted(self.models.items())),
            "per_parameter": {
                name: dict(sorted(counts.items())) for name, counts in sorted(self.values.items())
            },
            "parameters_with_many_values": sorted(self.many),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            rows=int(data["rows"]),
            images=int(data["images"]),
            bytes=int(data["bytes"]),
            duplicates=int(data["near_duplicates_dropped"]),
            unreadable=int(data["unreadable_images"]),
            problems=list(data["problems"]),
            models=Counter(data["per_model"]),
            values={name: Counter(counts) for name, counts in data["per_parameter"].items()},
            many=set(data["parameters_with_many_values"]),
        )
