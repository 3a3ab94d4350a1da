"""How the engine runs (deadlines, retries, poll policy), the hooks it calls, and the counters it keeps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from promptgrid.api.fetch import DEFAULT_MAX_BYTES
from promptgrid.api.polling import PollPolicy
from promptgrid.defaults import DOWNLOAD_DEADLINE_S, PREDICTION_DEADLINE_S, RATE_LIMIT_WINDOW_S
from promptgrid.engine.retry import RETRYABLE_CODES
from promptgrid.engine.spend import SpendCaps
from promptgrid.engine.stall import STALL_TIMEOUT_S
from promptgrid.quota.base import Limits
from promptgrid.types import Job

# Turns a job's inputs into what is sent (e.g. a local image into a URL the API can fetch).
PrepareInputs = Callable[[Job], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class WatchPolicy:
    """The listing's pace and when to give it up; seconds of the API's clock."""

    enabled: bool = True
    listing_every: float = 6.0  # one listing per this many spacings of the cap
    clock_margin_s: float = 60.0
    listing_failures: int = 3
    missed_share: float = 0.2
    min_checked: int = 10
    # A watched prediction's own poll comes this many times as late as its schedule says (and two listings
    # later): only there for what the listing misses.
    late_poll: float = 2.0
    per_latency: float = 0.25  # listings at most 1/this per learned first-poll delay
    # Where polls are free: listings per prediction end with every slot busy (0: polls alone).
    free_listings: float = 2.5


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs; every duration is in seconds of the API's clock (see `scaled`)."""

    limits: Limits = field(default_factory=Limits)
    deadline_s: float = PREDICTION_DEADLINE_S  # a prediction still running past it is stuck
    # Once latency is known, a prediction still running at `stuck_factor` times the learned first-poll delay
    # (but never before `min_deadline_s`) is stuck, not slow: it is cancelled instead of holding a slot.
    stuck_factor: float = 20.0
    min_deadline_s: float = 30.0
    max_attempts: int = 3
    create_retries: int = 6
    retry_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    # A create refused for want of room (a full organisation, the balance) waits this long at most.
    room_wait_s: float = 1800.0
    # Refused with nothing of ours in flight, no finish can make room: try again after this, doubling.
    idle_retry_s: float = 2.0
    # 402s in a row with nothing of ours in flight (spaced as above) before the run halts.
    payment_tries: int = 4
    # A prediction cancelled as stuck keeps its slot until the API says it ended, watched this long at most.
    cancel_wait_s: float = 300.0
    fetch_retries: int = 2
    # One output download's overall limit, however the bytes trickle in; storage's clock, not the API's.
    fetch_deadline_s: float = DOWNLOAD_DEADLINE_S
    output_max_bytes: int = DEFAULT_MAX_BYTES
    queue_size: int | None = None  # jobs started beyond the in-flight slots; default: as many as the slots
    retryable_codes: frozenset[str] = RETRYABLE_CODES
    unreachable_after: int = 3  # requests failing before they leave, with no answer yet: the API is down
    # A create whose answer was lost is looked for in the listing this long after: a create just made may
    # take a moment to be listed, and "not listed" is what lets it be sent again.
    listing_lag_s: float = 1.0
    poll: PollPolicy = field(default_factory=PollPolicy)
    room_probes: bool = True  # promptgrid.quota.adaptive.SlotGate: creates sent ahead while creates are free
    watch: WatchPolicy = field(default_factory=WatchPolicy)  # promptgrid.engine.ends_watch
    # The model page's window: under `rate_limit: auto`, a first 429 read as coming after a longer window
    # is read within this one (promptgrid.quota.adaptive.infer_rate_limit).
    page_window_s: float = RATE_LIMIT_WINDOW_S
    spend: SpendCaps = field(default_factory=SpendCaps)  # promptgrid.engine.spend
    # No create accepted and no prediction finished for this long: the run halts (None: never).
    stall_timeout_s: float | None = STALL_TIMEOUT_S

    def scaled(self, time_scale: float) -> EngineConfig:
        """The same config for an API whose clock runs `time_scale` times faster (the sandbox, tests)."""
        return replace(
            self,
            deadline_s=self.deadline_s / time_scale,
            min_deadline_s=self.min_deadline_s / time_scale,
            retry_backoff_s=self.retry_backoff_s / time_scale,
            max_backoff_s=self.max_backoff_s / time_scale,
            room_wait_s=self.room_wait_s / time_scale,
            idle_retry_s=self.idle_retry_s / time_scale,
            cancel_wait_s=self.cancel_wait_s / time_scale,
            listing_lag_s=self.listing_lag_s / time_scale,
            page_window_s=self.page_window_s / time_scale,
            poll=self.poll.scaled(time_scale),
            stall_timeout_s=None if self.stall_timeout_s is None else self.stall_timeout_s / time_scale,
        )


@dataclass
class EngineStats:
    """Live counters for progress displays and benchmarks."""

    requests: Counter[str] = field(default_factory=Counter)  # by kind: create, poll, cancel
    throttled: int = 0  # 429s of any kind
    rate_limited: int = 0  # 429s about the request rate
    room_waits: int = 0  # creates refused for want of room (429 about concurrency): they waited
    payment_waits: int = 0  # creates refused with 402: they waited for one of ours to finish
    listed_ends: int = 0  # successes collected from the executions listing, without a get of their own
    listings: int = 0  # executions listings sent to watch for ends (charged to no job)
    refused_probes: int = 0  # room probes refused (429 or 402): sent ahead by creates already waiting
    adopted_limit: str | None = None  # the request cap read off the API under `rate_limit: auto`
    spend: str | None = None  # spent against the spend caps (promptgrid.engine.spend); None without caps
    late_successes: int = 0  # predictions cancelled as stuck that succeeded after all (fetched, paid)
    transient_errors: int = 0
    creates: int = 0
    create_resends: int = 0
    adopted_creates: int = 0  # creates whose answer was lost, whose prediction the listing found
    unverified_resends: int = 0  # 5xx creates sent again with no listing to check (the API's word alone)
    retried_attempts: int = 0
    in_flight: int = 0
    # prediction id -> (wait began, deadline), engine clock, while polled: progress shows the oldest one
    waiting: dict[str, tuple[float, float]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)  # by JobStatus value
