"""Metrics of an image among its neighbours, from the perceptual hashes the pixel scorer stored.

Near-duplicates: within one prompt, two images whose pHashes differ in at most `NEAR_DUPLICATE_BITS` bits
are near-duplicates, and near-duplicates of near-duplicates share a group (`near_dup_group`, numbered
from 0 per prompt; `near_dup_size`; `near_dup_rank`, 0 for the group's sharpest image, so
`near_dup_rank = 0` keeps one image of each group). Seed diversity: within a cell (the same model and
inputs but for the seed), the mean pairwise pHash distance in bits of its images (null for a lone image):
a setting whose seeds all look alike scores low.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

NEAR_DUPLICATE_BITS = 6
SETS_VERSION = "1"
SET_METRICS = ("near_dup_group", "near_dup_size", "near_dup_rank", "seed_diversity")

Key = tuple[str, int, str]  # job_id, output_index, sha256


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def cell_of(row: Mapping[str, Any]) -> str:
    """What sets a cell apart: the model and every input but the seed (all of them, as sent)."""
    inputs = json.loads(row["inputs"]) if row.get("inputs") else {"prompt": row.get("prompt")}
    inputs.pop("seed", None)
    return json.dumps([row.get("model"), inputs], sort_keys=True, default=str)


def near_duplicate_groups(keys: Sequence[Key], hashes: Sequence[str]) -> list[int]:
    """Group numbers (0, 1, ... in the order given) joining images within NEAR_DUPLICATE_BITS."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in combinations(range(len(keys)), 2):
        if hamming(hashes[i], hashes[j]) <= NEAR_DUPLICATE_BITS:
            parent[root(j)] = root(i)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(keys))]


def set_metrics(
    rows: Iterable[Mapping[str, Any]], pixels: Mapping[Key, Mapping[str, Any]]
) -> dict[Key, dict[str, Any]]:
    """Each hashed image's group and its cell's seed diversity; `rows` are manifest rows with images."""
    by_prompt: dict[str, list[Key]] = {}
    by_cell: dict[str, list[Key]] = {}
    for row in rows:
        key: Key = (str(row["job_id"]), int(row.get("output_index") or 0), str(row.get("sha256") or ""))
        if key in pixels:
            by_prompt.setdefault(str(row.get("prompt")), []).append(key)
            by_cell.setdefault(cell_of(row), []).append(key)
    result: dict[Key, dict[str, Any]] = {}
    for keys in by_prompt.values():
        keys.sort()
        groups = near_duplicate_groups(keys, [str(pixels[key]["phash"]) for key in keys])
        members: dict[int, list[Key]] = {}
        for key, group in zip(keys, groups, strict=True):
            members.setdefault(group, []).append(key)
        for group, grouped in members.items():
            grouped.sort(key=lambda key: -float(pixels[key].get("sharpness") or 0.0))
            for rank, key in enumerate(grouped):
                result[key] = {"near_dup_group": group, "near_dup_size": len(grouped), "near_dup_rank": rank}
    for keys in by_cell.values():
        diversity = _mean_distance([str(pixels[key]["phash"]) for key in keys])
        for key in keys:
            result[key]["seed_diversity"] = diversity
    return result


def _mean_distance(hashes: Sequence[str]) -> float | None:
    pairs = list(combinations(hashes, 2))
    if not pairs:
        return None
    return sum(hamming(a, b) for a, b in pairs) / len(pairs)
