"""When to poll a prediction: learn how long predictions take, poll first near when one is likely done.

Every poll counts against the request budget, so the target is close to one poll per image. For each
(model, steps) the `LatencyModel` tracks one number, the delay after which a share `first_hit` of predictions
are done, with the stochastic-approximation quantile rule: a first poll that finds the prediction done
shortens the delay by a factor exp(-rate·(1 − first_hit)), a miss lengthens it by exp(rate·first_hit), so the
delay settles where a share `first_hit` of first polls succeed — whatever the latency distribution. A miss is
followed by polls spaced a fraction of the delay apart, widening geometrically.

Nothing is known at first: a few "scout" predictions probe on a geometric schedule from `cold_start_s`
(staggered so their polls interleave), while the others hold back; the first completion seeds the delay and
wakes everyone waiting. A new step count of a model already seen starts from the known one scaled by steps.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

LatencyKey = tuple[str, int]


@dataclass(frozen=True)
class PollPolicy:
    """Poll timing knobs in seconds of the API's clock; tests and benchmarks shrink them by the time scale."""

    first_hit: float = 0.88
    rate: float = 0.15
    warm_rate: float = 0.3  # larger steps for the first few samples, while the seed is rough
    warm_samples: int = 6
    cold_start_s: float = 1.0
    cold_growth: float = 1.5
    scouts: int = 2
    scout_lead: int = 3  # the others start this many cold steps later than the scouts
    retry_fraction: float = 0.12
    retry_growth: float = 1.5
    min_interval_s: float = 0.02
    max_interval_s: float = 30.0
    prior_s: float | None = None  # a known typical latency skips the cold start

    def __post_init__(self) -> None:
        if not 0 < self.first_hit < 1 or self.cold_growth <= 1 or self.retry_growth < 1:
            raise ValueError("PollPolicy needs 0 < first_hit < 1, cold_growth > 1, retry_growth >= 1")


@dataclass
class _KeyState:
    delay_s: float | None = None
    samples: int = 0
    cold_started: int = 0
    learned: asyncio.Event = field(default_factory=asyncio.Event)


class LatencyModel:
    """What the engine knows about prediction latency, per (model, steps), shared by all its predictions."""

    def __init__(self, policy: PollPolicy | None = None):
        self.policy = policy or PollPolicy()
        self._keys: dict[LatencyKey, _KeyState] = {}

    def estimate(self, key: LatencyKey) -> float | None:
        """The current first-poll delay for `key`, or None while nothing is known."""
        state = self._state(key)
        return state.delay_s

    def plan(self, key: LatencyKey) -> PollPlan:
        """A poll schedule for one new prediction of `key`."""
        state = self._state(key)
        scout_index = None
        if state.delay_s is None:
            scout_index = state.cold_started
            state.cold_started += 1
        return PollPlan(self, key, scout_index)

    def record_first_poll(self, key: LatencyKey, elapsed_s: float, done: bool) -> None:
        """Move the delay after a first poll made at `elapsed_s`, when that poll says something about it."""
        state = self._state(key)
        if state.delay_s is None:
            return
        delay = state.delay_s
        rate = self.policy.warm_rate if state.samples < self.policy.warm_samples else self.policy.rate
        # A hit well after the delay, or a miss well before it, says nothing about where the delay should be.
        if done and elapsed_s <= delay * 1.1:
            state.delay_s = delay * math.exp(-rate * (1 - self.policy.first_hit))
        elif not done and elapsed_s >= delay * 0.9:
            state.delay_s = delay * math.exp(rate * self.policy.first_hit)
        else:
            return
        state.samples += 1

    def record_done(self, key: LatencyKey, elapsed_s: float) -> None:
        """A prediction was seen done `elapsed_s` after creation; seeds the delay when nothing was known."""
        state = self._state(key)
        if state.delay_s is None:
            state.delay_s = max(elapsed_s, self.policy.min_interval_s)
            state.learned.set()

    def learned_event(self, key: LatencyKey) -> asyncio.Event:
        return self._state(key).learned

    def _state(self, key: LatencyKey) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState(delay_s=self._prior(key))
            if state.delay_s is not None:
                state.learned.set()
        return state

    def _prior(self, key: LatencyKey) -> float | None:
        if self.policy.prior_s is not None:
            return self.policy.prior_s
        model, steps = key
        known = [(s, st.delay_s) for (m, s), st in self._keys.items() if m == model and st.delay_s]
        if not known or steps <= 0:
            return None
        near_steps, near_delay = min(known, key=lambda item: abs(item[0] - steps))
        return near_delay * min(4.0, max(0.25, steps / max(near_steps, 1)))


class PollPlan:
    """The poll times of one prediction, as delays since its creation."""

    def __init__(self, model: LatencyModel, key: LatencyKey, scout_index: int | None):
        self._model = model
        self.key = key
        self._scout_index = scout_index
        self.polls = 0
        self._misses_after_learning = 0
        self._last_poll_s = 0.0

    @property
    def learned(self) -> asyncio.Event:
        return self._model.learned_event(self.key)

    def next_poll_at(self) -> float:
        """Delay since creation at which to poll next."""
        policy = self._model.policy
        delay = self._model.estimate(self.key)
        if delay is None:
            return self._cold_poll_at()
        if self._misses_after_learning == 0:
            return max(delay, self._last_poll_s + policy.min_interval_s)
        gap = delay * policy.retry_fraction * policy.retry_growth ** (self._misses_after_learning - 1)
        return self._last_poll_s + min(policy.max_interval_s, max(policy.min_interval_s, gap))

    def record_poll(self, elapsed_s: float, done: bool) -> None:
        learned_before = self._model.estimate(self.key) is not None
        if learned_before and self._misses_after_learning == 0:
            self._model.record_first_poll(self.key, elapsed_s, done)
        if done:
            self._model.record_done(self.key, elapsed_s)
        elif learned_before:
            self._misses_after_learning += 1
        self.polls += 1
        self._last_poll_s = elapsed_s

    def _cold_poll_at(self) -> float:
        policy = self._model.policy
        index = self._scout_index or 0
        # Scouts' polls interleave; the others hold back until a scout has likely found something.
        step = self.polls + (index / policy.scouts if index < policy.scouts else policy.scout_lead)
        planned = policy.cold_start_s * policy.cold_growth**step
        return max(planned, self._last_poll_s + policy.min_interval_s)
