"""Stalls: a run whose creates are all refused, and whose predictions none finish, halts instead of waiting.

Progress is a create the API accepted or a prediction of ours that finished. Each refusal a create meets
(a 429, a 402) is noted with its wording; after `warn_after_s` of refusals with no progress the log says
so once, and past `timeout_s` with no progress the run halts with `Stalled` (STALLED), naming the refusals
it met. Refusals are where a stall is noticed: a run that is refused keeps trying, so it keeps noting them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from promptgrid.errors import ApiError, Stalled

log = logging.getLogger(__name__)

STALL_TIMEOUT_S = 600.0  # the default `api.stall_timeout`
WARN_AFTER_S = 60.0
# Wordings kept per stall: enough to name what the API said, bounded whatever it says.
_WORDINGS_KEPT = 5


class StallWatch:
    """When this run last moved, and what refused it since; `timeout_s` None never halts."""

    def __init__(
        self, timeout_s: float | None, clock: Callable[[], float], *, warn_after_s: float = WARN_AFTER_S
    ):
        self.timeout_s = timeout_s
        self.warn_after_s = warn_after_s
        self._clock = clock
        self._moved_at = clock()
        self._refused_since: float | None = None
        self._refusals: Counter[str] = Counter()
        self._warned = False

    def progressed(self) -> None:
        """A create was accepted or a prediction finished: the run moves."""
        self._moved_at = self._clock()
        self._refused_since = None
        self._refusals.clear()
        self._warned = False

    def refused(self, refusal: ApiError) -> None:
        """Note a refused create; raise Stalled once nothing moved for `timeout_s`."""
        now = self._clock()
        self._refused_since = now if self._refused_since is None else self._refused_since
        wording = _wording(refusal)
        if wording in self._refusals or len(self._refusals) < _WORDINGS_KEPT:
            self._refusals[wording] += 1
        if not self._warned and now - self._refused_since >= self.warn_after_s:
            self._warned = True
            log.warning(
                "every create has been refused for %.0f s (%s); the run halts after %s without progress",
                now - self._refused_since,
                self.describe(),
                "no limit" if self.timeout_s is None else f"{self.timeout_s:g} s",
            )
        if self.timeout_s is not None and now - self._moved_at >= self.timeout_s:
            raise Stalled(
                f"stalled: no create accepted and no prediction finished for {now - self._moved_at:.0f} s "
                f"(stall_timeout {self.timeout_s:g} s); refusals met: {self.describe()}. Rerun the same "
                "command later to continue, or raise api.stall_timeout (--stall-timeout)"
            )

    def describe(self) -> str:
        """The refusals met since the run last moved: '12 x create: HTTP 429: too many requests'."""
        return "; ".join(f"{count} x {wording}" for wording, count in self._refusals.most_common()) or "none"


def _wording(refusal: ApiError) -> str:
    return refusal.message[:160]  # the client's message names the call and the HTTP status
