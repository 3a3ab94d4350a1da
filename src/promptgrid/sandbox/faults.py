"""The sandbox's dice: latencies, random seeds and every injected fault, reproducible from one seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

from promptgrid.sandbox.config import SandboxConfig

SERVER_ERROR_STATUSES = (500, 502, 503)


class CreateFault(Enum):
    """What goes wrong with one create, if anything."""

    NONE = "none"
    SERVER_ERROR = "server_error"  # 5xx before anything is created
    DROP_BEFORE = "drop_before"  # connection dropped, nothing created
    DROP_AFTER = "drop_after"  # connection dropped after the prediction was created: the dangerous one
    MADE_THEN_5XX = "made_then_5xx"  # the prediction was created (and billed), then the answer was a 500
    HELD = "held"  # the prediction was created; its answer is held back, then the connection dropped


class GetFault(Enum):
    NONE = "none"
    SERVER_ERROR = "server_error"
    DROP = "drop"


@dataclass(frozen=True)
class Fate:
    """How a new prediction will go: its timings (sandbox seconds) and how it ends."""

    queue_s: float
    run_s: float
    never_finishes: bool
    error_code: str | None
    retryable: bool


class Dice:
    """Independent random streams, so turning one fault on does not reshuffle the others' draws."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self._latency = random.Random(f"latency-{config.seed}")
        self._faults = random.Random(f"faults-{config.seed}")
        self._fates = random.Random(f"fates-{config.seed}")
        self._seeds = random.Random(f"seeds-{config.seed}")
        self._tails = random.Random(f"tails-{config.seed}")
        self._cancels = random.Random(f"cancels-{config.seed}")
        self._listing = random.Random(f"listing-{config.seed}")
        self._lost = random.Random(f"lost-{config.seed}")

    def _hit(self, rng: random.Random, rate: float) -> bool:
        return rate > 0 and rng.random() < rate

    def create_fault(self) -> CreateFault:
        cfg = self.config
        if self._hit(self._faults, cfg.create_5xx_rate):
            return CreateFault.SERVER_ERROR
        if self._hit(self._faults, cfg.drop_rate):
            after = self._faults.random() < cfg.drop_after_create_share
            return CreateFault.DROP_AFTER if after else CreateFault.DROP_BEFORE
        if self._hit(self._lost, cfg.create_made_5xx_rate):
            return CreateFault.MADE_THEN_5XX
        if self._hit(self._lost, cfg.create_held_rate):
            return CreateFault.HELD
        return CreateFault.NONE

    def get_fault(self) -> GetFault:
        if self._hit(self._faults, self.config.drop_rate):
            return GetFault.DROP
        if self._hit(self._faults, self.config.get_5xx_rate):
            return GetFault.SERVER_ERROR
        return GetFault.NONE

    def listing_fails(self) -> bool:
        return self._hit(self._listing, self.config.executions_fail_rate)

    def server_error_status(self) -> int:
        return self._faults.choice(SERVER_ERROR_STATUSES)

    def cancel_ignored(self) -> bool:
        """Whether the API acknowledges this cancel but lets the prediction run on (best effort)."""
        return self._hit(self._cancels, self.config.cancel_ignored_rate)

    def fate(self) -> Fate:
        """Latency is lognormal around the median, a share stretched by the tail; queued time comes first."""
        cfg = self.config
        total = cfg.latency_median_s * math.exp(cfg.latency_sigma * self._latency.gauss(0.0, 1.0))
        if self._hit(self._tails, cfg.latency_tail_rate):
            total *= cfg.latency_tail_factor ** self._tails.random()
        total = cfg.scaled(total)
        never = self._hit(self._fates, cfg.never_finish_rate)
        code, retryable = None, False
        if self._hit(self._fates, cfg.error_rate):
            code, retryable = self._fates.choice(cfg.error_codes)
        return Fate(
            queue_s=total * cfg.queue_share,
            run_s=total * (1 - cfg.queue_share),
            never_finishes=never,
            error_code=code,
            retryable=retryable,
        )

    def random_seed(self) -> int:
        """The seed the model picks when the caller leaves it null."""
        return self._seeds.randrange(0, 2**32)
