"""One scoring pass over an output: every stored image not yet scored by each chosen scorer, in parts.

Incremental and resumable: an image counts as scored by a scorer when a stored row has its job id, output
index and image hash and the scorer's current version; each batch of images is written as its own part
before the next is read, so a pass stopped anywhere keeps what it finished. Near-duplicate groups and seed
diversity are computed from the stored hashes after the pixels are scored, and written again only when the
images they cover changed. The caller holds the output's lease (the CLI takes it; a run already holds it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from promptgrid.errors import InvalidInput
from promptgrid.output.manifest.locate import key_under_root
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.scores import (
    SCORES_PREFIX,
    read_score_rows,
    score_part_key,
    score_part_keys,
    write_score_part,
)
from promptgrid.output.sinks import Sink
from promptgrid.score.metrics import PIXEL_METRICS, PIXELS_VERSION, PixelScorer, ScoreItem
from promptgrid.score.sets import SET_METRICS, SETS_VERSION, Key, set_metrics
from promptgrid.score.weights import DEFAULT_CLIP
from promptgrid.types import JobStatus

# What each name on `--metric` (or in a spec's `score:`) runs; a metric's name runs its scorer.
SCORERS = {"pixels": "pixels", "clip": "clip", "aesthetic": "aesthetic", "clip_score": "clip"}
SCORERS.update({name: "pixels" for name in (*PIXEL_METRICS, *SET_METRICS, "phash")})
DEFAULT_METRICS = ("pixels",)
BATCH_IMAGES = 64
_UNREADABLE = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class Scorer(Protocol):
    name: str
    version: str

    def score(self, items: list[ScoreItem]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Weights:
    """Where the learned metrics' weights are: a folder or a Hugging Face repository id."""

    clip: str = DEFAULT_CLIP
    aesthetic: str | None = None  # default: `aesthetic.onnx` beside the CLIP model


@dataclass
class ScoreResult:
    """What a pass did: images scored per scorer, images already scored, images it could not read."""

    scored: dict[str, int] = field(default_factory=dict)
    already: int = 0
    unreadable: list[str] = field(default_factory=list)
    sets_written: bool = False

    @property
    def total(self) -> int:
        return sum(self.scored.values())


def scorers_for(names: Iterable[str]) -> list[str]:
    """The scorers that produce the named metrics, pixels first; InvalidInput naming any unknown name."""
    names = list(names) or list(DEFAULT_METRICS)
    unknown = [name for name in names if name not in SCORERS]
    if unknown:
        allowed = ", ".join(sorted(SCORERS))
        raise InvalidInput([f"--metric {name!r} is not a metric; choose from: {allowed}" for name in unknown])
    chosen = {SCORERS[name] for name in names}
    return [name for name in ("pixels", "clip", "aesthetic") if name in chosen]


def score_output(
    sink: Sink,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    weights: Weights = Weights(),
    job_ids: Collection[str] | None = None,
    batch_images: int = BATCH_IMAGES,
    check: Callable[[], None] | None = None,
) -> ScoreResult:
    """Score the output's stored images not yet scored (of `job_ids` only, when given).

    `check` is called before each batch (a run passes its lease's check, so a lost lease stops it).
    """
    chosen = scorers_for(metrics)
    rows = image_rows(read_manifest(sink), job_ids)
    stored = read_score_rows(sink)
    done = _scored_keys(stored)
    result = ScoreResult()
    learned: dict[str, Any] = {}  # the CLIP model, loaded once for CLIP score and the aesthetic head
    for name in chosen:
        # The pixels' version is known without loading anything; a learned scorer's depends on its
        # weights, so any stored row of it counts (other weights: a new output, or `--metric` after a
        # removal of its parts).
        wanted = (name, PIXELS_VERSION) if name == "pixels" else (name,)
        todo = [row for row in rows if (row_key(row), *wanted) not in done]
        result.already += len(rows) - len(todo)
        if not todo:
            continue
        scorer = _scorer(name, weights, learned)
        for start in range(0, len(todo), max(1, batch_images)):
            if check is not None:
                check()
            _score_batch(sink, scorer, todo[start : start + batch_images], result)
    if "pixels" in chosen:
        result.sets_written = update_sets(sink, image_rows(read_manifest(sink), None))
    return result


def image_rows(table: pa.Table, job_ids: Collection[str] | None) -> list[dict[str, Any]]:
    """The latest rows that have a stored image (of the given jobs)."""
    table = table.filter(pc.fill_null(pc.equal(table["status"], JobStatus.SUCCESS.value), False))
    rows = [row for row in table.to_pylist() if row.get("image_key") or row.get("image_uri")]
    wanted = None if job_ids is None else set(job_ids)
    return rows if wanted is None else [row for row in rows if row["job_id"] in wanted]


def row_key(row: Mapping[str, Any]) -> Key:
    # An image without a recorded hash (a manifest written before the column) is keyed by "".
    return (str(row["job_id"]), int(row.get("output_index") or 0), str(row.get("sha256") or ""))


def _scored_keys(stored: pa.Table | None) -> set[tuple[Any, ...]]:
    """(image key, scorer) and (image key, scorer, version) for every stored row."""
    if stored is None:
        return set()
    columns = [
        stored[name].to_pylist() for name in ("job_id", "output_index", "sha256", "scorer", "scorer_version")
    ]
    keys: set[tuple[Any, ...]] = set()
    for job_id, index, sha, scorer, version in zip(*columns, strict=True):
        keys.add(((job_id, index, sha), scorer, version))
        keys.add(((job_id, index, sha), scorer))
    return keys


def _scorer(name: str, weights: Weights, learned: dict[str, Any]) -> Scorer:
    if name == "pixels":
        return PixelScorer()
    from promptgrid.score.clip import AestheticScorer, ClipModel, ClipScorer

    model = learned.get("model") or ClipModel(weights.clip)
    learned["model"] = model
    if name == "clip":
        return ClipScorer(model)
    return AestheticScorer(model, weights.aesthetic or str(model.folder))


def _score_batch(sink: Sink, scorer: Scorer, rows: Sequence[Mapping[str, Any]], result: ScoreResult) -> None:
    """Score one batch and store it as one part; an unreadable image is named and left unscored."""
    items = []
    for row in rows:
        item = load_item(sink, row)
        if isinstance(item, str):
            result.unreadable.append(f"{row['job_id']}: {item}")
        else:
            items.append(item)
    if not items:
        return
    metrics = scorer.score(items)
    now = datetime.now(UTC)
    records = [
        {
            "job_id": item.job_id,
            "output_index": item.output_index,
            "sha256": item.sha256,
            "scorer": scorer.name,
            "scorer_version": scorer.version,
            "scored_at": now,
            **values,
        }
        for item, values in zip(items, metrics, strict=True)
    ]
    write_score_part(sink, score_part_key(scorer.name), pa.Table.from_pylist(records))
    result.scored[scorer.name] = result.scored.get(scorer.name, 0) + len(items)


def load_item(sink: Sink, row: Mapping[str, Any]) -> ScoreItem | str:
    """A row's image read and decoded, or why it could not be."""
    key = row.get("image_key") or key_under_root(sink.root, row.get("image_uri"))
    if not key:
        return f"the image {row.get('image_uri')!r} is not inside this output"
    try:
        data = sink.get_bytes(str(key))
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = opened.copy()
    except _UNREADABLE as exc:
        return f"the image could not be read ({type(exc).__name__})"
    job_id, index, sha = row_key(row)
    return ScoreItem(job_id, index, sha, str(row.get("prompt") or ""), data, image)


def update_sets(sink: Sink, rows: list[dict[str, Any]]) -> bool:
    """Write the near-duplicate groups and seed diversity again when the hashed images changed."""
    stored = read_score_rows(sink)
    if stored is None:
        return False
    pixels = stored.filter(pc.equal(stored["scorer"], "pixels")).to_pylist()
    hashed = {(row["job_id"], row["output_index"], row["sha256"]): row for row in pixels}
    current = sorted(key for key in map(row_key, rows) if key in hashed)
    covered = [SETS_VERSION, *((key, hashed[key]["phash"]) for key in current)]
    suffix = hashlib.sha256(repr(covered).encode()).hexdigest()[:16]
    key = score_part_key("sets", suffix)
    older = [part for part in score_part_keys(sink) if part.startswith(f"{SCORES_PREFIX}sets-")]
    if key in older or not current:
        return False
    now = datetime.now(UTC)
    records = [
        {"job_id": k[0], "output_index": k[1], "sha256": k[2], "scorer": "sets",
         "scorer_version": SETS_VERSION, "scored_at": now, **values}
        for k, values in sorted(set_metrics(rows, hashed).items())
    ]  # fmt: skip
    write_score_part(sink, key, pa.Table.from_pylist(records, schema=_sets_schema()))
    for part in older:
        sink.delete(part)  # superseded: the new part covers every hashed image
    return True


def _sets_schema() -> pa.Schema:
    return pa.schema(
        [
            ("job_id", pa.string()), ("output_index", pa.int64()), ("sha256", pa.string()),
            ("scorer", pa.string()), ("scorer_version", pa.string()),
            ("scored_at", pa.timestamp("us", "UTC")),
            ("near_dup_group", pa.int64()), ("near_dup_size", pa.int64()), ("near_dup_rank", pa.int64()),
            ("seed_diversity", pa.float64()),
        ]
    )  # fmt: skip
