"""The error every stage raises for input a person must fix; the CLI turns it into exit code 2."""

from __future__ import annotations

from collections.abc import Sequence


class InvalidInput(Exception):
    """Input that cannot run: a bad spec, grid row, flag or output location.

    `problems` lists each problem as a full sentence naming the file, row and field; `total` counts all
    problems found when the list was capped.
    """

    def __init__(self, problems: Sequence[str], total: int | None = None):
        self.problems = list(problems)
        self.total = total if total is not None else len(self.problems)
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = list(self.problems)
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more problems")
        return "\n".join(lines)
