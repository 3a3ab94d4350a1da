"""A request budget shared by every worker process through one Redis: sliding window, leased slots, pause.

Four keys under `promptgrid:quota:{namespace}:` hold the shared state, each changed only by an atomic Lua
script reading Redis TIME, so every process judges time by one clock:

- `window`  a sorted set of admitted requests: a request is admitted while fewer than `limits.requests`
  entries are younger than `limits.window_s` (plus a small `guard_s`); otherwise the script answers how long
  to wait. As in LocalBudget (quota.local), an entry is dated when its answer arrives (the receipt's
  `settle()`), never earlier than the API stamped it, so unequal network delays cannot squeeze N+1 into the
  API's window; until then it counts as dated `unsettled_s` after admission.
- `slots`   a sorted set of in-flight tokens scored by lease expiry. A holder renews its leases while it
  holds them; a killed worker stops renewing, so its slots return after at most `lease_s`.
- `paused_until`  a timestamp set when any process meets a 429: every process waits it out. A 429 on a
  create while polls are not known to count sets `creates_paused_until` instead, which only creates wait
  out (quota.base's `pauses_polls`: the polls that go on tell whether they count).

Releases are announced on a pub/sub channel so slot waiters wake at once instead of polling; a waiter still
re-checks after `recheck_s` in case an announcement is lost. Redis being unreachable raises
`QuotaUnavailable`: running on without the shared limits would break them for every other worker. `check()`
asks once before a run sends anything; every connection and answer has a timeout (`CONNECT_TIMEOUT_S`,
`ANSWER_TIMEOUT_S`), so a Redis lost mid-run stops the run in seconds instead of hanging it. Giving a slot
back never fails: one that cannot be given back is logged and returns on its own when its lease runs out.

Without a request-rate cap (`Limits.auto`) no request is entered in the window: the slots and the shared
pause still hold. A cap the engine adopts (`adopt`) applies to this process's requests from then on; the
ones it had answered within the window are entered, dated at their answers, before it sends another: the
API counted them, or a second full window would follow the 429. Each process that meets the API's limit
adopts its own reading of it and enters its own requests. A 429 still pauses every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.typing import EncodableT

from promptgrid.aio import cancellable, in_background, wait_ended, wait_event
from promptgrid.errors import QuotaUnavailable
from promptgrid.locations import redact_url
from promptgrid.quota.base import REQUEST_KINDS, pauses_polls
from promptgrid.quota.redis_scripts import PAUSE, RENEW, SEED, SETTLE, TAKE_REQUEST, TAKE_SLOT

if TYPE_CHECKING:
    from promptgrid.quota.base import Limits

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A 429 without Retry-After while no cap is known: how long every process pauses.
_UNCAPPED_PAUSE_S = 1.0
# Redis answers in milliseconds; a connection or answer slower than these means it is gone.
CONNECT_TIMEOUT_S = 3.0
ANSWER_TIMEOUT_S = 5.0


class SharedReceipt:
    """One admitted request; `settle()` it when its answer or failure is in. Settling twice is harmless."""

    __slots__ = ("_budget", "member", "settled")

    def __init__(self, budget: RedisBudget, member: str):
        self._budget = budget
        self.member = member
        self.settled = False

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            self._budget._settle_receipt(self.member)


class RedisBudget:
    """The engine's Budget, kept in Redis so every process sharing `namespace` shares the limits."""

    def __init__(
        self,
        limits: Limits,
        url: str,
        namespace: str = "default",
        *,
        lease_s: float = 30.0,
        recheck_s: float = 0.5,
        guard_s: float | None = None,
        unsettled_s: float | None = None,
        default_pause_s: float | None = None,
        max_connections: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.lease_s = lease_s
        self._clock = clock  # the clock of the answer times `adopt` is given
        self.recheck_s = recheck_s
        self._given = (guard_s, unsettled_s, default_pause_s)
        self._apply(limits)
        self._where = redact_url(url)
        # A bounded pool: thousands of waiting callers must not become thousands of connections.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=ANSWER_TIMEOUT_S * 2,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=ANSWER_TIMEOUT_S,
        )
        self._redis = aioredis.Redis.from_pool(pool)
        prefix = f"promptgrid:quota:{namespace}:"
        self._window_key = prefix + "window"
        self._paused_key = prefix + "paused_until"
        self._creates_paused_key = prefix + "creates_paused_until"
        self._slots_key = prefix + "slots"
        self._released_channel = prefix + "released"
        self._take_request = self._redis.register_script(TAKE_REQUEST)
        self._pause = self._redis.register_script(PAUSE)
        self._take_slot = self._redis.register_script(TAKE_SLOT)
        self._renew = self._redis.register_script(RENEW)
        self._settle = self._redis.register_script(SETTLE)
        self._seed_script = self._redis.register_script(SEED)
        # Requests answered before a cap was adopted, by member, on `clock` (None: not answered yet), to be
        # entered before the next request; and, while no cap is known, the requests not answered yet.
        self._seed: dict[str, float | None] = {}
        self._answered: tuple[float, list[float]] | None = None  # adopted at, requests answered by then
        self._open: dict[str, str] = {}  # member: kind
        self._seeding = asyncio.Lock()
        self._name = uuid.uuid4().hex  # the prefix of this budget's entries in the window
        self._background: set[asyncio.Task[None]] = set()  # settles and hand-backs under way
        self._unfinished: set[asyncio.Future[Any]] = set()  # calls whose caller was cancelled (`_run`)
        self._settled = asyncio.Event()
        self._held: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._released = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._release_failed = False
        self._lost = False  # the last call to Redis failed
        # One caller per kind asks Redis at a time and the rest queue here, first come first served: the
        # ones behind would only be told to wait as long. Kinds queue apart so polls never wait on creates.
        self._askers = {kind: asyncio.Lock() for kind in (*REQUEST_KINDS, "slot")}

    def _apply(self, limits: Limits) -> None:
        guard_s, unsettled_s, default_pause_s = self._given
        self.limits = limits
        # LocalBudget's margins: the guard covers rounding only, since entries are dated at their answer.
        self.guard_s = guard_s if guard_s is not None else min(0.1, max(0.005, limits.window_s * 0.005))
        self.unsettled_s = unsettled_s if unsettled_s is not None else limits.window_s
        # A 429 without Retry-After: one request's share of the window, LocalBudget's first backoff step.
        self.default_pause_s = default_pause_s or limits.floor_interval_s or _UNCAPPED_PAUSE_S

    async def check(self) -> None:
        """QuotaUnavailable, naming the server (never its password), unless Redis answers now."""
        await self._run(self._redis.ping())  # type: ignore[arg-type,unused-ignore]  # typed as a union

    def adopt(self, limits: Limits, answered: Sequence[float] = ()) -> None:
        """Keep this process's requests to `limits`; before its next one, replace its entries answered by
        now in the shared window by `answered` (times on `clock`; all that `limits` counts, such as polls
        a creates-only cap left out), and at a first cap enter those still unanswered."""
        first = not self.limits.capped
        self._apply(limits)
        if not limits.capped:
            return
        now = self._clock()
        horizon = now - limits.window_s - self.guard_s
        self._answered = (now, [t for t in answered if t > horizon])
        if first:
            for member, kind in self._open.items():
                if limits.counts(kind):
                    self._seed[member] = None  # dated at its answer when its receipt is settled
            self._open.clear()

    async def _enter_seed(self) -> None:
        """Enter what `adopt` was given in the shared window, once, before any more requests are admitted."""
        async with self._seeding:
            if not self._seed and self._answered is None:
                return
            # Ages taken before asking: Redis dates each entry later by the trip there, never earlier than
            # its answer, so it leaves the window no sooner than the API's own count of it does.
            now, sent, answered = self._clock(), dict(self._seed), self._answered
            span = self.limits.window_s + self.guard_s
            # Ours answered by the adoption (less a guard: counted twice rather than not at all) are replaced.
            replace_s = -1.0 if answered is None else now - answered[0] + self.guard_s
            args: list[EncodableT] = [_us(span), _us(span * 2 + self.unsettled_s), f"{self._name}:"]
            args.append(round(replace_s * 1_000_000))
            for n, at in enumerate(answered[1] if answered else ()):
                args += [f"{self._name}:answered:{n}", round(max(0.0, now - at) * 1_000_000)]
            for member, answered_at in sent.items():
                # One not answered yet is entered as if answered `unsettled_s` from now, like an admission.
                age_s = -self.unsettled_s if answered_at is None else max(0.0, now - answered_at)
                args += [member, round(age_s * 1_000_000)]
            entered = await self._call(self._seed_script, [self._window_key], args)
            log.debug("entered %d requests from before the cap in the shared window", entered)
            if self._answered is answered:
                self._answered = None
            # One added meanwhile goes with the next request; one answered meanwhile may have been entered
            # unanswered: date it now.
            for member, answered_at in sent.items():
                if self._seed.pop(member) != answered_at:
                    self._settle_soon(member)

    async def take_request(self, kind: str) -> SharedReceipt | None:
        """Wait until one more request fits the shared window and no shared pause is on, then count it.

        Returns a receipt to settle when the answer is in, or None for a request that does not count.
        """
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {REQUEST_KINDS}")
        keys = [self._window_key, self._paused_key, self._creates_paused_key]
        async with self._askers[kind]:
            while True:
                if self._seed or self._answered is not None:
                    await self._enter_seed()
                # Read each time: a cap adopted while this request waited out a pause counts it.
                counts, capped = self.limits.counts(kind), self.limits.capped
                window = [self.limits.requests or 0, _us(self.limits.window_s), _us(self.guard_s)]
                member = f"{self._name}:{uuid.uuid4().hex}"
                args: list[EncodableT] = [*window, member, "1" if counts else "0", _us(self.unsettled_s)]
                args.append("1" if kind == "create" else "0")
                settled = self._settled
                try:
                    wait_us = await self._call(self._take_request, keys, args)
                except asyncio.CancelledError:
                    self._settle_soon(member)  # in case Redis admitted it: date it now, not a window on
                    raise
                if wait_us == 0 and (capped or not self.limits.capped):
                    return self._admitted(member, kind, counts, capped)
                if wait_us == 0:
                    continue  # admitted uncounted as a cap was adopted: ask again under it, not send now
                # The wait is exact unless the oldest entry is unsettled; a settle here, or the recheck,
                # asks again sooner.
                await wait_event(settled, min(wait_us / 1e6, self._request_recheck_s()))

    def _admitted(self, member: str, kind: str, counts: bool, capped: bool) -> SharedReceipt | None:
        """The receipt of a request admitted as `counts` under a cap (`capped`) or none."""
        if capped:
            return SharedReceipt(self, member) if counts else None
        self._open[member] = kind  # a cap adopted before its answer counts it
        return SharedReceipt(self, member)

    def _request_recheck_s(self) -> float:
        return max(0.005, min(self.recheck_s, self.limits.floor_interval_s or self.recheck_s))

    def _settle_receipt(self, member: str) -> None:
        if self._open.pop(member, None) is not None:
            return  # no cap yet: nothing entered it
        if member in self._seed:
            self._seed[member] = self._clock()  # entered with the seed, dated at this answer
        self._settle_soon(member)  # dates it if the seed has already entered it

    def _settle_soon(self, member: str) -> None:
        in_background(self._settle_now(member), self._background)

    async def _settle_now(self, member: str) -> None:
        await wait_ended(self._unfinished, ANSWER_TIMEOUT_S)  # a cancelled admission may be entering it
        try:
            await self._call(self._settle, [self._window_key], [member])
        except QuotaUnavailable as exc:
            # Unsettled, the entry still leaves the window `unsettled_s` after admission: safe, slower.
            log.warning("could not date a request at its answer: %s", exc)
        self._settled, settled = asyncio.Event(), self._settled
        settled.set()

    async def on_throttled(self, retry_after_s: float | None, kind: str) -> None:
        """Pause every process sharing this quota for `retry_after_s` (or the default pause): its creates
        only after a create's 429 while polls are not known to count, else every kind."""
        pause_s = retry_after_s if retry_after_s and retry_after_s > 0 else self.default_pause_s
        key = self._paused_key if pauses_polls(self.limits, kind) else self._creates_paused_key
        await self._call(self._pause, [key], [_us(pause_s)])

    async def take_slot(self) -> str:
        """Wait for one of the shared in-flight slots; the token returned releases it."""
        token = uuid.uuid4().hex
        self._ensure_listener()
        async with self._askers["slot"]:
            try:
                return await self._wait_for_slot(token)
            except asyncio.CancelledError:
                # Cancelled while Redis may yet grant the slot: hand it back once it has answered rather
                # than leave it to block everyone until its lease runs out.
                in_background(self._hand_back(token), self._background)
                raise

    async def _hand_back(self, token: str) -> None:
        await wait_ended(self._unfinished, ANSWER_TIMEOUT_S)
        await self.release_slot(token)

    async def _wait_for_slot(self, token: str) -> str:
        while True:
            # Taken before asking, so a release announced while the script runs still wakes this waiter.
            released = self._released
            args: list[EncodableT] = [self.limits.max_in_flight, _us(self.lease_s), token]
            wait_us = await self._call(self._take_slot, [self._slots_key], args)
            if wait_us == 0:
                self._held.add(token)
                self._ensure_renewer()
                return token
            await wait_event(released, min(wait_us / 1e6, self.recheck_s))

    async def release_slot(self, token: str) -> None:
        """Give the slot back and wake the processes waiting for one; never raises.

        Called in `finally` blocks while another error may be on its way out: an unreachable Redis must
        not hide it. A slot not given back returns on its own once its lease (`lease_s`) runs out.
        """
        self._held.discard(token)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._slots_key, token)
                pipe.publish(self._released_channel, "1")
                await self._run(pipe.execute())
        except QuotaUnavailable as exc:
            if not self._release_failed:
                self._release_failed = True
                log.warning(
                    "could not give an in-flight slot back (it returns within %g s): %s", self.lease_s, exc
                )

    async def aclose(self) -> None:
        """Stop renewing, give back any slot still held, and close the connections."""
        self._closing = True
        await wait_ended(self._background, ANSWER_TIMEOUT_S * 2)  # settles, hand-backs
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await wait_ended(self._unfinished, ANSWER_TIMEOUT_S)  # before closing the connections they hold
        with contextlib.suppress(QuotaUnavailable):
            if not self._lost:  # else each would wait out a timeout: their leases expire on their own
                for token in list(self._held):
                    await self.release_slot(token)
            await self._stop_listener()
        await self._redis.aclose()

    async def _stop_listener(self) -> None:
        # Cancelling a task blocked in redis-py's get_message can deadlock its pubsub.aclose() (redis-py
        # #3941), so the listener is woken with one more announcement and left to end by itself.
        if self._listener is None or self._listener.done():
            return
        await self._run(self._redis.publish(self._released_channel, "closing"))
        done, _ = await asyncio.wait([self._listener], timeout=self.recheck_s + 1)
        if not done:
            self._listener.cancel()

    async def _call(self, script: AsyncScript, keys: list[str], args: Sequence[EncodableT]) -> int:
        return int(await self._run(script(keys=keys, args=args)))

    async def _run(self, awaitable: Awaitable[_T]) -> _T:
        try:
            answer = await cancellable(awaitable, self._unfinished)  # redis-py can swallow a cancel
        except (RedisError, OSError) as exc:
            self._lost = True
            raise QuotaUnavailable(f"the shared quota at {self._where} is unreachable: {exc}") from None
        self._lost = False
        return answer

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_leases())

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen_for_releases())

    async def _renew_leases(self) -> None:
        # Renewing at a third of the lease survives two missed renewals before a live holder loses a slot.
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            try:
                lost = await self._call(self._renew, [self._slots_key], [_us(self.lease_s), *self._held])
            except QuotaUnavailable as exc:
                log.warning("could not renew in-flight leases: %s", exc)
                continue
            if lost:
                log.warning("%d in-flight lease(s) expired before renewal; the limit may be exceeded", lost)

    async def _listen_for_releases(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._released_channel)
            while not self._closing:
                message = await pubsub.get_message(timeout=self.recheck_s)
                if message is not None:
                    self._released, announced = asyncio.Event(), self._released
                    announced.set()
        except (RedisError, OSError) as exc:
            # Waiters fall back to re-checking every `recheck_s`; the quota itself stays correct.
            log.warning("release announcements stopped: %s", redact_url(str(exc)))
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated in some redis-py releases


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))
