"""Which dataset split each exported row lands in: the grid's `split` column where a row has one, else the
spec's `split:` shares by job id, else `train`.

A share is taken by job id alone (a hash of it, placed on the shares laid end to end), so a job keeps its
split however the grid grows or is filtered, and an incremental export never moves a row between splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from promptgrid.errors import InvalidInput
from promptgrid.spec.split import parse_split, split_name_problem

DEFAULT_SPLIT = "train"
SPLIT_COLUMN = "split"
_HASH_SPAN = 2**64


@dataclass(frozen=True)
class SplitRule:
    """How rows are split: the spec's shares (None: every row without a `split` value is train)."""

    shares: tuple[tuple[str, float], ...] = ()

    def by_job(self, job_id: str) -> str:
        if not self.shares:
            return DEFAULT_SPLIT
        point = int.from_bytes(hashlib.sha256(job_id.encode("utf-8")).digest()[:8], "big") / _HASH_SPAN
        edge = 0.0
        for name, share in self.shares:
            edge += share
            if point < edge:
                return name
        return self.shares[-1][0]  # a point past a sum rounded just below 1

    def assign(self, rows: pa.Table) -> list[str]:
        """Each row's split, in order."""
        jobs = rows["job_id"].to_pylist()
        given = rows[SPLIT_COLUMN].to_pylist() if SPLIT_COLUMN in rows.column_names else [None] * len(jobs)
        return [
            str(value).strip() if _given(value) else self.by_job(str(job))
            for job, value in zip(jobs, given, strict=True)
        ]

    def names(self, column_values: Iterable[Any]) -> list[str]:
        """Every split an export may hold: the grid's values and the spec's shares, train first."""
        found = {str(value).strip() for value in column_values if _given(value)} | {
            name for name, _ in self.shares
        }
        if not self.shares or not found:
            found.add(DEFAULT_SPLIT)
        return sorted(found, key=lambda name: (name != DEFAULT_SPLIT, name))


def _given(value: Any) -> bool:
    return value is not None and bool(str(value).strip())


def split_rule(spec_text: str | None, where: str) -> SplitRule:
    """The rule of the spec saved in the output (`where` names it in errors); InvalidInput for a bad key."""
    if not spec_text:
        return SplitRule()
    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return SplitRule()  # a spec that no longer parses says nothing about splits
    if not isinstance(data, dict) or data.get("split") is None:
        return SplitRule()
    try:
        shares = parse_split(data["split"])
    except ValueError as exc:
        raise InvalidInput([f"{where}: split: {exc}"]) from None
    return SplitRule(tuple((shares or {}).items()))


def check_split_values(values: Iterable[Any], where: str) -> None:
    """InvalidInput naming every `split` value of the grid that cannot name a split."""
    problems = sorted(
        {problem for value in values if _given(value) if (problem := split_name_problem(str(value).strip()))}
    )
    if problems:
        raise InvalidInput([f"{where}: column {SPLIT_COLUMN}: {problem}" for problem in problems])
