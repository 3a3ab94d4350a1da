"""When a run counts as failed: the spec's `fail_when`, applied to the jobs a run took.

`any` (the default): one job that did not succeed fails the run. `ratio > 0.05`: more than 5% of the run's
jobs did not succeed. `never`: the run completes however many failed (their rows still say why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_RATIO = re.compile(r"^\s*ratio\s*>\s*(\d+(?:\.\d+)?|\.\d+)\s*$")
FORMS = "any, never, or ratio > R with R from 0 to 1 (e.g. ratio > 0.05)"


@dataclass(frozen=True)
class FailWhen:
    """A threshold on the share of a run's jobs that did not succeed; None never fails."""

    above: float | None = 0.0

    @classmethod
    def parse(cls, value: Any) -> FailWhen:
        if isinstance(value, FailWhen):
            return value
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text == "any":
            return cls(0.0)
        if text == "never":
            return cls(None)
        match = _RATIO.match(text or "")
        if match is None or float(match.group(1)) > 1:
            raise ValueError(f"{value!r} is not a failure threshold; expected {FORMS}")
        return cls(float(match.group(1)))

    @classmethod
    def of_saved_spec(cls, text: str) -> FailWhen:
        """The threshold a saved spec sets (a backfill judges itself as its run did); the default if none."""
        import yaml

        data = yaml.safe_load(text)
        value = data.get("fail_when", "any") if isinstance(data, dict) else "any"
        try:
            return cls.parse(value)
        except ValueError:
            return cls()

    def fails(self, failed: int, total: int) -> bool:
        """Whether `failed` of `total` jobs fail the run."""
        if self.above is None or failed == 0:
            return False
        return failed / max(total, 1) > self.above

    def __str__(self) -> str:
        if self.above is None:
            return "never"
        return "any" if self.above == 0 else f"ratio > {self.above:g}"


ANY_FAILURE = FailWhen(0.0)  # the default: a run fails when one of its jobs does
