"""Problems found while checking input, collected so that every one is reported at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from promptgrid.errors import InvalidInput

MAX_PROBLEMS = 20


class ProblemLog:
    """Problems found so far: the first MAX_PROBLEMS kept as sentences, all of them counted."""

    def __init__(self, cap: int = MAX_PROBLEMS):
        self.cap = cap
        self.problems: list[str] = []
        self.total = 0

    def add(self, problem: str) -> None:
        self.total += 1
        if len(self.problems) < self.cap:
            self.problems.append(problem)

    def raise_if_any(self) -> None:
        if self.total:
            raise InvalidInput(self.problems, self.total)


def display_path(path: Path) -> str:
    """The path as a person typed it: relative to the working directory when it is inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def describe_problem(where: str, column: str, raw: Any, allowed: str) -> str:
    return f"{where}, column {column}: {raw!r} is not allowed; expected {allowed}"
