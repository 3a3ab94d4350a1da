"""The output lease: one writer per output (per shard of it), so two runs never pay for the same jobs.

A lease (`lease/shard-<i>-of-<n>.json`) names its holder: the run, the host and process, since when, and
until when it holds. It is taken atomically (`promptgrid.output.lease_stores`), renewed every third of
its lifetime while the run lives, and released when the run ends. Another run finds it held and stops at
once, naming the holder, or waits for it. A holder is gone when its lease expired, or, on this machine, when
its process is dead (after `kill -9` the next run need not wait out the lifetime). Shards `i of n` and `j of
n` never overlap; any other pair of leases does, so a run checks the other leases once it holds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from promptgrid.defaults import OUTPUT_LEASE_TTL_S
from promptgrid.errors import InvalidInput, OutputInUse, OutputLeaseLost
from promptgrid.output.lease_stores import lease_store
from promptgrid.output.sinks.base import Sink

_NAME = re.compile(r"^shard-(\d+)-of-(\d+)$")
Clock = Callable[[], datetime]


def lease_name(shard_index: int = 0, shard_count: int = 1) -> str:
    return f"shard-{shard_index}-of-{shard_count}"


def overlaps(a: str, b: str) -> bool:
    """Whether two leases cover common jobs: shards of one split never do; anything else may."""
    first, second = _NAME.match(a), _NAME.match(b)
    if first is None or second is None:
        return True
    return a == b or first.group(2) != second.group(2)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when."""

    run_id: str
    host: str
    pid: int
    process: str  # the process's identity on its host: boot, pid namespace, start time
    started_at: datetime
    expires_at: datetime
    token: str

    def to_json(self) -> bytes:
        fields: dict[str, Any] = asdict(self)
        fields.update(started_at=self.started_at.isoformat(), expires_at=self.expires_at.isoformat())
        return json.dumps(fields, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            fields["started_at"] = datetime.fromisoformat(fields["started_at"])
            fields["expires_at"] = datetime.fromisoformat(fields["expires_at"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError):
            return None  # a torn or foreign record holds nothing

    def gone(self, now: datetime) -> bool:
        """Expired, or its process on this very machine is no longer running."""
        return now >= self.expires_at or (self.host == socket.gethostname() and not _alive(self))

    def describe(self, now: datetime) -> str:
        since = self.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        age = max(0, int((now - self.started_at).total_seconds()))
        return f"run {self.run_id} (pid {self.pid} on {self.host}) since {since} ({age} s ago)"


class OutputLease:
    """One run's claim on one output (or shard of it): take, keep renewed, release."""

    def __init__(
        self,
        sink: Sink,
        name: str,
        run_id: str,
        *,
        ttl_s: float = OUTPUT_LEASE_TTL_S,
        clock: Clock | None = None,
    ):
        self.sink, self.name, self.run_id, self.ttl_s = sink, name, run_id, ttl_s
        self.store = lease_store(sink)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.lost = threading.Event()
        self._holder: Holder | None = None
        self._version = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        # One change of the record at a time: the run (rename) and its renewing thread both renew, and two
        # renewals from one stale version would have the loser take its own holder's write for a takeover.
        self._changing = threading.RLock()

    def try_take(self) -> Holder | None:
        """Take the lease if free (or its holder gone); else return who holds this or an overlapping one."""
        try:
            in_way = self._take_own()
            if in_way is None:
                in_way = self._overlapping_holder()
                if in_way is not None:
                    self.release()
        except OSError as exc:  # a file where the folder should be, a read-only folder, /proc, ...
            where = exc.filename or self.sink.root
            problem = f"output {self.sink.root}: cannot write there ({where}: {exc.strerror})"
            raise InvalidInput([problem]) from None
        return in_way

    def take(self, *, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lease; OutputInUse when held, unless `wait`, which polls until it is free."""
        told = False
        while True:
            holder = self.try_take()
            if holder is None:
                return
            held = f"output {self.sink.root} is in use by {holder.describe(self.clock())}"
            if not wait:
                raise OutputInUse([f"{held}; wait for it with --wait, or stop that run"])
            if on_wait is not None and not told:
                on_wait(f"{held}; waiting until it is free")
                told = True
            # Jittered, so two waiting runs that found each other do not keep colliding.
            time.sleep(min(5.0, self.ttl_s / 4) * (0.5 + secrets.randbelow(1000) / 1000))

    def _take_own(self) -> Holder | None:
        now = self.clock()
        mine = Holder(
            self.run_id, socket.gethostname(), os.getpid(), _process_identity(os.getpid()),
            now, now + timedelta(seconds=self.ttl_s), secrets.token_hex(8),
        )  # fmt: skip
        version = self.store.create(self.name, mine.to_json())
        if version is None:
            current = self.store.read(self.name)
            if current is None:  # released between our two steps: try again from the start
                return self._take_own()
            holder = Holder.from_json(current[0])
            if holder is not None and not holder.gone(now):
                return holder
            version = self.store.replace(self.name, mine.to_json(), current[1])
            if version is None:  # another run changed it first: look again
                return self._take_own()
        self._holder, self._version = mine, version
        return None

    def _overlapping_holder(self) -> Holder | None:
        now = self.clock()
        for other in self.store.names():
            if other == self.name or not overlaps(self.name, other):
                continue
            current = self.store.read(other)
            holder = Holder.from_json(current[0]) if current else None
            if holder is not None and not holder.gone(now):
                return holder
        return None

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer ours (taken over after it expired)."""
        with self._changing:
            if self._holder is None:
                return False
            renewed = replace(self._holder, expires_at=self.clock() + timedelta(seconds=self.ttl_s))
            version = self.store.replace(self.name, renewed.to_json(), self._version)
            if version is None:
                version = self._still_ours(renewed)
            if version is None:
                return False
            self._holder, self._version = renewed, version
            return True

    def _still_ours(self, renewed: Holder) -> str | None:
        """After a refused replace: the record's version when it still carries our token, written again.

        A write the store took but answered as failed (an S3 retry that met its own first PUT) changes the
        version under us; only another holder's token means the lease was lost.
        """
        current = self.store.read(self.name)
        holder = Holder.from_json(current[0]) if current else None
        if current is None or holder is None or holder.token != renewed.token:
            return None
        return self.store.replace(self.name, renewed.to_json(), current[1])

    def rename(self, run_id: str) -> None:
        """Name another run as the holder (the run that took over a lease its command line took)."""
        self.run_id = run_id
        if self._holder is not None:
            self._holder = replace(self._holder, run_id=run_id)
            with contextlib.suppress(Exception):  # the next renewal writes it anyway
                self.renew()

    def check(self) -> None:
        """Raise OutputLeaseLost once the lease could not be kept: nothing more may be sent."""
        if self.lost.is_set():
            raise OutputLeaseLost(
                f"the lease on {self.sink.root} expired before it could be renewed; another run may hold "
                "the output now, so this run sends nothing more (rerun it to continue)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=30)
        with self._changing:
            if self._holder is not None:
                with contextlib.suppress(Exception):  # an unreleased lease expires on its own
                    self.store.delete(self.name, self._version)
                self._holder = None

    def start_renewing(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="output-lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        # Ticks are a third of the lifetime apart from the start of one renewal to the next, not from its
        # end: a store slowed down by a busy machine then costs no lifetime beyond its own delay.
        interval = self.ttl_s / 3
        next_at = time.monotonic() + interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at = time.monotonic() + interval
            try:
                kept: bool | None = self.renew()
            except Exception:  # the store is unreachable for now: try again at the next tick
                kept = None
            holder = self._holder
            if kept is False or (kept is None and holder is not None and self.clock() >= holder.expires_at):
                self.lost.set()
                return

    def __enter__(self) -> OutputLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def holding(lease: OutputLease) -> Iterator[OutputLease]:
    """Keep a taken lease renewed for the block, and release it after."""
    lease.start_renewing()
    try:
        yield lease
    finally:
        lease.release()


def _process_identity(pid: int) -> str:
    """Boot, pid namespace and start time: equal only for the very same process on the same machine."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat(f"/proc/{pid}/ns/pid").st_ino
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{boot}:{namespace}:{started}"


def _alive(holder: Holder) -> bool:
    """Whether a holder recorded on this host still runs; when that cannot be told, it is taken as alive."""
    mine = _process_identity(os.getpid())
    if not holder.process or not mine:
        return True
    boot, namespace, _ = holder.process.split(":")
    if f"{boot}:{namespace}" != mine.rsplit(":", 1)[0]:
        return True  # another boot or another pid namespace (a container): only expiry can tell
    return _process_identity(holder.pid) == holder.process


def check_writable(sink: Sink) -> None:
    """Before anything is sent: InvalidInput, with a sentence, when the output cannot be written."""
    if sink.folder is not None:
        path = sink.folder
        if path.exists() and not path.is_dir():
            raise InvalidInput(
                [f"output {path} is a file, not a folder: give a folder or s3://bucket/prefix"]
            )
        created = [folder for folder in (path, *path.parents) if not folder.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".promptgrid-probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InvalidInput([f"output {path}: cannot write there ({exc.strerror or exc})"]) from None
        finally:  # a check leaves no trace: the folders it made go again (the run makes them for real)
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        return
    try:
        lease_store(sink).names()
    except Exception as exc:  # botocore's: no bucket, no access, no endpoint
        if type(exc).__module__.split(".")[0] != "botocore":
            raise
        raise InvalidInput([f"output {sink.root}: cannot reach it ({exc})"]) from None


_handed_over: dict[tuple[str, str], OutputLease] = {}


def hand_over(lease: OutputLease) -> None:
    """Leave a lease taken early (by the command line, before Prefect starts) for the run to claim."""
    _handed_over[(lease.sink.root, lease.name)] = lease


def claim_handed_over(sink: Sink, name: str, run_id: str) -> OutputLease | None:
    """The lease this process already took for this output, now renamed after the run; None if none."""
    lease = _handed_over.pop((sink.root, name), None)
    if lease is not None:
        lease.rename(run_id)
    return lease


async def take_lease(
    sink: Sink, name: str, run_id: str, *, wait: bool, on_wait: Callable[[str], None] | None = None
) -> OutputLease:
    """The run's lease: the one its command line already took, else taken now (OutputInUse if held)."""
    lease = claim_handed_over(sink, name, run_id)
    if lease is None:
        lease = OutputLease(sink, name, run_id)
        await asyncio.to_thread(lease.take, wait=wait, on_wait=on_wait)
    return lease


def wait_until_unheld(
    sink: Sink, *, wait: bool = False, on_wait: Callable[[str], None] | None = None
) -> None:
    """For a reader that needs the output at rest (an export): OutputInUse while a live run holds any lease
    of it; with `wait`, return once none does. The reader takes no lease: runs may start after it began."""
    store, told = lease_store(sink), False
    while True:
        now = datetime.now(UTC)
        try:
            holders = [Holder.from_json(found[0]) for name in store.names() if (found := store.read(name))]
        except Exception as exc:  # botocore's: the reader's own open reports an unreachable output
            if type(exc).__module__.split(".")[0] != "botocore":
                raise
            return
        live = [holder for holder in holders if holder is not None and not holder.gone(now)]
        if not live:
            return
        held = f"output {sink.root} is being written by {live[0].describe(now)}"
        if not wait:
            raise OutputInUse([f"{held}; export it once that run ends, or wait for it with --wait"])
        if on_wait is not None and not told:
            on_wait(f"{held}; waiting until it ends")
            told = True
        time.sleep(5.0)
