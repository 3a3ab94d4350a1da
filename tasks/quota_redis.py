"""A request budget shared by every worker process through one Redis: sliding window, leased slots, pause.

Three keys under `promptgrid:quota:{namespace}:` hold the shared state, each changed only by an atomic Lua
script reading Redis TIME, so every process judges time by one clock:

- `window`  a sorted set of admitted requests scored by admission time: a request is admitted while fewer
  than `limits.requests` entries are younger than `limits.window_s` (plus `guard_s`) and the newest is at
  least `spacing_s` old; otherwise the script answers how long to wait. Guard and spacing are LocalBudget's,
  for the same reasons (tasks/budget.py).
- `slots`   a sorted set of in-flight tokens scored by lease expiry. A holder renews its leases while it
  holds them; a killed worker stops renewing, so its slots return after at most `lease_s`.
- `paused_until`  a timestamp set when any process meets a 429: every process waits it out.

Releases are announced on a pub/sub channel so slot waiters wake at once instead of polling; a waiter still
re-checks after `recheck_s` in case an announcement is lost. Redis being unreachable raises
`QuotaUnavailable`: running on without the shared limits would break them for every other worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tasks.budget import REQUEST_KINDS

if TYPE_CHECKING:
    from tasks.budget import Limits

log = logging.getLogger(__name__)

# Times are microseconds of Redis TIME (exact in a Lua double until the year 2255).
# KEYS: window, paused_until. ARGV: limit, window_us, guard_us, member, counts (1/0), spacing_us.
# Returns 0 when admitted, else the microseconds to wait before asking again.
_TAKE_REQUEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return paused - now end
if ARGV[5] == '0' then return 0 end
local span = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - span))
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and now < tonumber(newest[2]) + tonumber(ARGV[6]) then
  return tonumber(newest[2]) + tonumber(ARGV[6]) - now
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(span * 2 / 1000))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + span + 1 - now)
"""

# KEYS: paused_until. ARGV: pause_us. Only ever pushes the pause later.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], until_us, 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 0
"""

# KEYS: slots. ARGV: max_in_flight, lease_us, token. Returns 0 when the slot is taken, else us until the
# earliest lease could expire (an upper bound on the wait; a release usually wakes the waiter sooner).
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 0
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
"""

# KEYS: slots. ARGV: lease_us, token... Extends only leases still present; returns how many were lost.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lost = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i]) == 0 then
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then lost = lost + 1 end
  end
end
return lost
"""


class QuotaUnavailable(RuntimeError):
    """The shared quota's Redis could not be reached; the message names the server, never a password."""


def redact_url(url: str) -> str:
    """The URL with any user name or password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class RedisBudget:
    """The engine's Budget, kept in Redis so every process sharing `namespace` shares the limits.

    `guard_s` widens the window a little: a request admitted here reaches the API a few milliseconds later,
    and unequal delays could otherwise squeeze one window's worth plus one into the API's own window.
    """

    def __init__(
        self,
        limits: Limits,
        url: str,
        namespace: str = "default",
        *,
        lease_s: float = 30.0,
        recheck_s: float = 0.5,
        guard_s: float | None = None,
        spacing_s: float | None = None,
        default_pause_s: float | None = None,
        max_connections: int = 16,
    ):
        self.limits = limits
        self.lease_s = lease_s
        self.recheck_s = recheck_s
        self.guard_s = guard_s if guard_s is not None else min(0.5, max(0.02, limits.window_s * 0.02))
        self.spacing_s = spacing_s if spacing_s is not None else limits.floor_interval_s / 8
        # A 429 without Retry-After: one request's share of the window, LocalBudget's first backoff step.
        self.default_pause_s = default_pause_s or limits.floor_interval_s
        self._where = redact_url(url)
        # A bounded pool: thousands of waiting callers must not become thousands of connections.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
        self._redis = aioredis.Redis.from_pool(pool)
        prefix = f"promptgrid:quota:{namespace}:"
        self._window_key = prefix + "window"
        self._paused_key = prefix + "paused_until"
        self._slots_key = prefix + "slots"
        self._released_channel = prefix + "released"
        self._take_request = self._redis.register_script(_TAKE_REQUEST)
        self._pause = self._redis.register_script(_PAUSE)
        self._take_slot = self._redis.register_script(_TAKE_SLOT)
        self._renew = self._redis.register_script(_RENEW)
        self._held: set[str] = set()
        self._renewer: asyncio.Task | None = None
        self._released = asyncio.Event()
        self._listener: asyncio.Task | None = None
        self._closing = False
        self._cleanup: asyncio.Task | None = None
        # One caller per kind asks Redis at a time and the rest queue here, first come first served: the
        # ones behind would only be told to wait as long. Kinds queue apart so polls never wait on creates.
        self._askers = {kind: asyncio.Lock() for kind in (*REQUEST_KINDS, "slot")}

    async def take_request(self, kind: str) -> None:
        """Wait until one more request fits the shared window and no shared pause is on, then count it."""
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {REQUEST_KINDS}")
        counts = "0" if kind == "poll" and not self.limits.polls_count else "1"
        window = [self.limits.requests, _us(self.limits.window_s), _us(self.guard_s)]
        args = [*window, None, counts, _us(self.spacing_s)]
        async with self._askers[kind]:
            while True:
                args[3] = uuid.uuid4().hex
                wait_us = await self._call(self._take_request, [self._window_key, self._paused_key], args)
                if wait_us == 0:
                    return
                await asyncio.sleep(wait_us / 1e6)

    async def on_throttled(self, retry_after_s: float | None) -> None:
        """Pause every process sharing this quota for `retry_after_s` (or the default pause)."""
        pause_s = retry_after_s if retry_after_s and retry_after_s > 0 else self.default_pause_s
        await self._call(self._pause, [self._paused_key], [_us(pause_s)])

    async def take_slot(self) -> str:
        """Wait for one of the shared in-flight slots; the token returned releases it."""
        token = uuid.uuid4().hex
        self._ensure_listener()
        async with self._askers["slot"]:
            try:
                return await self._wait_for_slot(token)
            except asyncio.CancelledError:
                # Cancelled while Redis may have granted the slot: hand it back rather than leave it to
                # block everyone until its lease runs out.
                self._cleanup = asyncio.create_task(self.release_slot(token))
                raise

    async def _wait_for_slot(self, token: str) -> str:
        while True:
            # Taken before asking, so a release announced while the script runs still wakes this waiter.
            released = self._released
            args = [self.limits.max_in_flight, _us(self.lease_s), token]
            wait_us = await self._call(self._take_slot, [self._slots_key], args)
            if wait_us == 0:
                self._held.add(token)
                self._ensure_renewer()
                return token
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), min(wait_us / 1e6, self.recheck_s))

    async def release_slot(self, token: str) -> None:
        """Give the slot back and wake the processes waiting for one."""
        self._held.discard(token)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._slots_key, token)
            pipe.publish(self._released_channel, "1")
            await self._run(pipe.execute())

    async def aclose(self) -> None:
        """Stop renewing, give back any slot still held, and close the connections."""
        self._closing = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(QuotaUnavailable):
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

    async def _call(self, script, keys: list[str], args: list) -> int:
        return int(await self._run(script(keys=keys, args=args)))

    async def _run(self, awaitable):
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise QuotaUnavailable(f"the shared quota at {self._where} is unreachable: {exc}") from None

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
                await pubsub.aclose()


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))
