"""When to poll a prediction: learn how long predictions take, poll where they are likely to end.

Two regimes, switched as the engine learns the API's limits (`LatencyModel.polls_free`):

- Polls count against a request cap ("thrifty"): every poll costs throughput, so the target is close to one
  poll per image. The first poll comes where a share `first_hit` of predictions are done; a miss is followed
  `gap`·delay later, then geometrically wider. When the cap, not the slots, sets the pace, a prediction can
  wait for its poll without slowing anything: the caller says how long (`hold_s`: the slots over the rate
  of images the cap allows), and the first poll comes that late, where up to `max_first_hit` are done.
- Polls are free (no cap is known, or polls do not count toward it: "fine"): the slots set the pace, and a
  finished prediction holds its slot until a poll sees it. Once a few completion times are known, polls
  follow a schedule drawn from them (promptgrid.api.poll_schedule): about `fine_polls` per prediction,
  spaced as one over the square root of the hazard rate, so they crowd where predictions end and a slot
  turns over a few percent of the latency after it frees, for a fixed number of polls whatever the spread or
  the latency. While the API is short of room for us and no room probe finds freed slots (`room_scarce`:
  creates wait because it refused them, under a cap counting creates; promptgrid.quota.adaptive), a slot
  seen free is taken at once: the schedule keeps the poll rate it would have with every slot ours, spread
  over the fewer predictions the API runs for us (`room_share`), between `scarce_polls` and `max_polls` per
  prediction. Before the schedule (the first completions) and past its end, a poll every `fine_step` of the
  time elapsed. (The engine also watches the executions listing there: promptgrid.engine.ends_watch.)

For each (model, steps) the `LatencyModel` learns two numbers with the stochastic-approximation quantile rule,
which needs only the yes/no answer a poll gives, and keeps the recent completion times:

- `delay`: when to poll first (thrifty), and the scale deadlines are set from. A first poll that finds the
  prediction done shortens it by a factor exp(-rate·(1 − target)), a miss lengthens it by exp(rate·target),
  so it settles where a share `target` of first polls succeed — whatever the latency distribution. While a
  free schedule is in use, it is the `fine_first_hit` quantile of the completion times instead. When the
  regime changes, the delay restarts from the recent completion times, at the new target's quantile.
- `gap` (thrifty): after a miss, the second poll comes `gap`·delay later; the same rule settles it where a
  share `second_hit` of second polls succeed. Later polls widen geometrically.
- completion times: each a draw between the poll that last missed and the one that saw the prediction done
  (the poll times themselves would only echo the schedule back). Only prompt sightings count: a poll held
  back by a pause (a 429's Retry-After) saw its prediction's end late, and learning from such times would
  poll every prediction seconds after it finished, for good.

Nothing is known at first: a few "scout" predictions probe on a geometric schedule from `cold_start_s`
(staggered so their polls interleave), while the others hold back; the first completion seeds the delay and
wakes everyone waiting. A new step count of a model already seen starts from the known one scaled by steps.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace

from promptgrid.api.poll_schedule import quantile, sqrt_hazard_schedule

LatencyKey = tuple[str, int]


@dataclass(frozen=True)
class PollPolicy:
    """Poll timing knobs in seconds of the API's clock; tests and benchmarks shrink them by the time scale."""

    first_hit: float = 0.9
    # Where the cap leaves the slots to spare (`LatencyModel.hold_s`): up to this share of first polls hit.
    max_first_hit: float = 0.98
    # Of the time a prediction may hold its slot, the share its first poll may come at: the rest is slack.
    hold_margin: float = 0.7
    second_hit: float = 0.8
    # When polls are free, slots turning over fast matter more than polls saved: polls where predictions end.
    fine_first_hit: float = 0.1
    fine_polls: float = 8.0  # polls per prediction the free schedule spends
    # While the API is short of room for us: as many polls a second as with every slot ours, spread over the
    # fewer predictions it runs for us (fine_polls / room_share), between `scarce_polls` and `max_polls`.
    scarce_polls: float = 11.0
    max_polls: float = 16.0
    # Under `rate_limit: auto`, until the requests sent have shown the model page's cap is not in force: the
    # polls a free schedule spends, and its step before and past the schedule. Should polls count, every
    # poll that misses takes a place in the first window, before its 429 can tell.
    unproven_polls: float = 4.0
    unproven_step: float = 0.2
    unproven_first_hit: float = 0.5
    schedule_samples: int = 5  # completion times needed before the free schedule is used
    fine_step: float = 0.08  # before the schedule and past its end: a poll every this share of the elapsed
    fine_cold_growth: float = 1.35
    fine_seed_margin: float = 0.8
    rate: float = 0.1
    warm_rate: float = 0.5  # larger steps for the first few samples, while the seed is rough
    warm_samples: int = 8
    initial_gap: float = 0.2
    min_gap: float = 0.02
    cold_start_s: float = 0.25
    cold_growth: float = 1.5
    # The first completion is one sample; its delay is padded, since a miss costs a poll per prediction.
    seed_margin: float = 1.2
    scouts: int = 2
    scout_lead: int = 10  # the others wait this many cold steps (~14 s) unless a scout finds a delay first
    retry_growth: float = 1.5
    min_interval_s: float = 0.02
    # A poll answered later than this share of the elapsed time after it was due waited for the budget.
    late_share: float = 0.1
    max_interval_s: float = 30.0
    prior_s: float | None = None  # a known typical latency skips the cold start

    def __post_init__(self) -> None:
        hits = (self.first_hit, self.max_first_hit, self.fine_first_hit, self.unproven_first_hit)
        if not all(0 < x < 1 for x in (*hits, self.second_hit, self.hold_margin)) or hits[1] < hits[0]:
            raise ValueError("PollPolicy needs shares in (0, 1), and max_first_hit >= first_hit")
        if min(self.cold_growth, self.fine_cold_growth) <= 1 or self.retry_growth < 1 or self.scouts < 1:
            raise ValueError("PollPolicy needs cold growths > 1, retry_growth >= 1 and at least one scout")
        knobs = (self.fine_step, self.fine_polls, self.scarce_polls, self.unproven_polls, self.unproven_step)
        if min(knobs) <= 0 or self.max_polls < self.scarce_polls:
            raise ValueError("PollPolicy needs its steps and polls > 0 and max_polls >= scarce_polls")

    def scaled(self, time_scale: float) -> PollPolicy:
        """The same policy for an API whose clock runs `time_scale` times faster.

        The cold start is kept as it is: it is a probe from a small absolute delay, and scaling it down only
        adds probes that find nothing done (measured with two workers sharing one quota at x20: probing from
        12 ms instead of 250 ms cut their throughput to 0.55x that of one worker).
        """
        return replace(
            self,
            min_interval_s=self.min_interval_s / time_scale,
            max_interval_s=self.max_interval_s / time_scale,
            prior_s=None if self.prior_s is None else self.prior_s / time_scale,
        )


# Completion times kept per key, to restart the delay at another quantile when the regime changes.
_RECENT_DONE = 200
_MIN_RESTART_SAMPLES = 8


@dataclass
class _KeyState:
    delay_s: float | None = None
    gap: float = 0.2
    samples: int = 0
    cold_started: int = 0
    learned: asyncio.Event = field(default_factory=asyncio.Event)
    done_at: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT_DONE))
    # The free schedule drawn from done_at, per polls spent: (completion times added when drawn, times).
    added: int = 0
    schedules: dict[float, tuple[int, tuple[float, ...]]] = field(default_factory=dict)


class LatencyModel:
    """What the engine knows about prediction latency, per (model, steps), shared by all its predictions."""

    def __init__(self, policy: PollPolicy | None = None, *, polls_free: bool = False):
        self.policy = policy or PollPolicy()
        self.polls_free = polls_free
        self.room_scarce = False  # creates wait for room the API refused: a slot seen free is taken at once
        self.room_share = 1.0  # the share of our in-flight cap the API runs for us now
        # While polls count: how long a prediction may hold its slot before the slots, not the cap, bind.
        self.hold_s: float | None = None
        self.polls_unproven = False  # free polls may yet count toward a cap (PollPolicy.unproven_polls)
        self._keys: dict[LatencyKey, _KeyState] = {}
        self._rng = random.Random(0)  # where in its last interval a completion is placed

    @property
    def first_hit(self) -> float:
        """The share of first polls meant to find the prediction done, in the current regime."""
        if not self.polls_free:
            return self.policy.first_hit
        return self.policy.unproven_first_hit if self.polls_unproven else self.policy.fine_first_hit

    def first_hit_for(self, key: LatencyKey) -> float:
        """The first-hit target for `key`; with time to spare, up to the share of recent ends by then."""
        state, latest = self._state(key), self._latest_first_poll_s
        if self.polls_free or latest is None or len(state.done_at) < _MIN_RESTART_SAMPLES:
            return self.first_hit
        ended = sum(1 for t in state.done_at if t <= latest) / len(state.done_at)
        return min(self.policy.max_first_hit, max(self.policy.first_hit, ended))

    @property
    def _latest_first_poll_s(self) -> float | None:
        """The latest a first poll may come while the slots have time to spare (`hold_s`)."""
        return None if self.hold_s is None else self.hold_s * self.policy.hold_margin

    def set_polls_unproven(self, unproven: bool) -> None:
        """Say whether free polls may yet count (`PollPolicy.unproven_polls`); delays restart as below."""
        if unproven != self.polls_unproven:
            self.polls_unproven = unproven
            self._restart(self.polls_free)

    def set_polls_free(self, free: bool) -> None:
        """Switch regime; each delay restarts at the new target's quantile of recent completion times."""
        if free == self.polls_free:
            return
        self.polls_free = free
        self._restart(free)

    def _restart(self, free: bool) -> None:
        for state in self._keys.values():
            if len(state.done_at) >= _MIN_RESTART_SAMPLES:
                ordered = sorted(state.done_at)
                state.delay_s = ordered[min(len(ordered) - 1, int(self.first_hit * len(ordered)))]
                state.samples = 0
            elif state.done_at and state.delay_s is not None and not free:
                # Too few to restart from, but a fine delay (an early quantile) would miss most first polls.
                state.delay_s = max(state.delay_s, quantile(sorted(state.done_at), self.first_hit))

    def estimate(self, key: LatencyKey) -> float | None:
        """The current first-poll delay for `key`, or None while nothing is known."""
        return self._state(key).delay_s

    def median_s(self, key: LatencyKey) -> float | None:
        """The median of recent completion times for `key`, or None while none is known."""
        return quantile(sorted(done), 0.5) if (done := self._state(key).done_at) else None

    def gap(self, key: LatencyKey) -> float:
        """The current wait after a missed first poll, as a fraction of the delay."""
        return self._state(key).gap

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
        delay = state.delay_s
        # A hit well after the delay (the poll waited for the budget), or a miss well before it, says nothing.
        if delay is None or (done and elapsed_s > delay * 1.1) or (not done and elapsed_s < delay * 0.9):
            return
        target = self.first_hit_for(key)
        state.delay_s = delay * self._factor(state, target, done)
        state.samples += 1
        if target > self.policy.first_hit and (latest := self._latest_first_poll_s) is not None:
            # Time to spare: start the first poll where that share of recent completions had ended, not
            # one miss at a time from below.
            state.delay_s = max(state.delay_s, min(latest, quantile(sorted(state.done_at), target)))

    def record_second_poll(self, key: LatencyKey, gap_used: float, done: bool) -> None:
        """Move the gap after the poll that followed a missed first poll."""
        state = self._state(key)
        if (done and gap_used > state.gap * 1.2) or (not done and gap_used < state.gap * 0.8):
            return
        state.gap = max(self.policy.min_gap, state.gap * self._factor(state, self.policy.second_hit, done))

    @property
    def schedule_polls(self) -> float:
        """The polls per prediction a free schedule spends now."""
        policy = self.policy
        if self.polls_unproven:
            return policy.unproven_polls
        if not self.room_scarce:
            return policy.fine_polls
        spread = policy.fine_polls / max(self.room_share, 1e-3)
        return round(min(policy.max_polls, max(policy.scarce_polls, spread)))

    def schedule(self, key: LatencyKey) -> tuple[float, ...]:
        """The free regime's poll times for `key`, or () while polls count or too little is known."""
        state = self._state(key)
        if not self.polls_free or len(state.done_at) < self.policy.schedule_samples:
            return ()
        polls = self.schedule_polls
        version = state.added
        cached = state.schedules.get(polls)
        if cached is not None and cached[0] == version:
            return cached[1]
        # The first poll (at the learned delay) is not the schedule's: it spends the polls after it.
        times = sqrt_hazard_schedule(state.done_at, polls - 1, self.policy.min_interval_s)
        state.schedules[polls] = (version, times)
        return times

    def record_done(
        self, key: LatencyKey, elapsed_s: float, *, prompt: bool = True, after_s: float | None = None
    ) -> None:
        """A prediction was seen done `elapsed_s` after creation; seeds the delay when nothing was known.

        `after_s`: when the poll that last found it unfinished left; it ended in between, and a time drawn
        there is kept among the completion times. A poll that was not `prompt` (it waited out a pause or the
        window before it left) saw the end late: its time is not kept.
        """
        state = self._state(key)
        # Free polls are placed after the first from the times of predictions the first missed: one the
        # first poll found done says only that it ended before, and piled at that poll's time it would
        # drag the schedule there.
        known_before = self.polls_free and after_s is None and state.delay_s is not None
        if prompt and not known_before:
            ended = elapsed_s if after_s is None else self._rng.uniform(min(after_s, elapsed_s), elapsed_s)
            state.done_at.append(ended)
            state.added += 1
        if state.delay_s is None:
            margin = self.policy.fine_seed_margin if self.polls_free else self.policy.seed_margin
            state.delay_s = max(elapsed_s * margin, self.policy.min_interval_s)
            state.learned.set()

    def learned_event(self, key: LatencyKey) -> asyncio.Event:
        return self._state(key).learned

    def _factor(self, state: _KeyState, target: float, done: bool) -> float:
        rate = self.policy.warm_rate if state.samples < self.policy.warm_samples else self.policy.rate
        return math.exp(-rate * (1 - target)) if done else math.exp(rate * target)

    def _state(self, key: LatencyKey) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState(delay_s=self._prior(key), gap=self.policy.initial_gap)
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
        self._misses = 0  # polls that found it unfinished since the delay was known
        self._last_poll_s = self._last_sent_s = 0.0  # when the last poll's answer came, and when it left
        self._gap_used = 0.0
        # The free schedule this prediction follows, kept for its life (unless the spend changes): switching
        # to one redrawn from newer samples would put the next poll at a random point of an interval.
        self._schedule: tuple[float, ...] = ()
        self._schedule_polls = 0.0
        self._schedule_index = 0  # the next of its points to use
        self._due_index: int | None = None  # the point the next poll is due at

    @property
    def learned(self) -> asyncio.Event:  # set once the delay is known
        return self._model.learned_event(self.key)

    def next_poll_at(self) -> float:
        """Delay since creation at which to poll next."""
        policy = self._model.policy
        delay = self._model.estimate(self.key)
        self._due_index = None
        if delay is None:
            return self._cold_poll_at()
        soonest = self._last_poll_s + policy.min_interval_s
        if self._misses == 0:
            return max(delay, soonest)
        if self._model.polls_free:
            # Counted from when the last poll left, so a slow answer does not stretch the cadence too.
            schedule = self._followed_schedule()
            # The point after the last one used, or after the last poll if that left later (it waited).
            index = max(self._schedule_index, bisect.bisect_right(schedule, self._last_sent_s))
            if index < len(schedule):
                self._due_index = index
                return max(schedule[index], soonest)
            step = policy.unproven_step if self._model.polls_unproven else policy.fine_step
            interval = min(policy.max_interval_s, self._last_sent_s * step)
            return max(self._last_sent_s + interval, soonest)
        self._gap_used = self._model.gap(self.key) * policy.retry_growth ** (self._misses - 1)
        wait = delay * self._gap_used
        return self._last_poll_s + min(policy.max_interval_s, max(policy.min_interval_s, wait))

    def _followed_schedule(self) -> tuple[float, ...]:
        if not self._schedule or self._schedule_polls != self._model.schedule_polls:
            self._schedule = self._model.schedule(self.key)
            self._schedule_polls = self._model.schedule_polls
            self._schedule_index = 0
        return self._schedule

    def record_poll(self, elapsed_s: float, done: bool, sent_s: float | None = None) -> None:
        """A poll answered `elapsed_s` after creation (sent at `sent_s`, if known) found it `done` or not."""
        if self._model.estimate(self.key) is not None:
            if self._misses == 0:
                # When it left, not when it was answered: a slow answer is not a poll that waited.
                self._model.record_first_poll(self.key, elapsed_s if sent_s is None else sent_s, done)
            elif self._misses == 1 and not self._model.polls_free:
                self._model.record_second_poll(self.key, self._gap_used, done)
            self._misses += 0 if done else 1
        if done:
            waited, policy = 0.0 if sent_s is None else elapsed_s - sent_s, self._model.policy
            prompt = waited <= max(policy.late_share * elapsed_s, policy.min_interval_s)
            after = self._last_sent_s if self.polls else None
            self._model.record_done(self.key, elapsed_s, prompt=prompt, after_s=after)
        if self._due_index is not None:
            self._schedule_index, self._due_index = self._due_index + 1, None
        self.polls += 1
        self._last_poll_s = elapsed_s
        self._last_sent_s = elapsed_s if sent_s is None else sent_s

    def _cold_poll_at(self) -> float:
        policy = self._model.policy
        index = self._scout_index or 0
        # Scouts' polls interleave; the others hold back until a scout has likely found something.
        step = self.polls + (index / policy.scouts if index < policy.scouts else policy.scout_lead)
        growth = policy.fine_cold_growth if self._model.polls_free else policy.cold_growth
        planned = policy.cold_start_s * growth**step
        return max(planned, self._last_poll_s + policy.min_interval_s)
