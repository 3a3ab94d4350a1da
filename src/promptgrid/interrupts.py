"""Ctrl-C during a run: the first one saves what is in progress and stops, a second one stops at once.

The command line installs the handler (`ctrl_c_stops_runs`) around a run; a run registers what stops its
work (`on_stop`) and says when everything it had is saved (`mark_saved`). Whatever else is still busy
afterwards (Prefect recording the run's end, a server that went away with the same Ctrl-C), the process
exits with 130 a moment after the save, and at the latest `GRACE_S` after the first Ctrl-C: a stop never
hangs. Before such a forced exit the process's own child processes are terminated, so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_CODE = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
GRACE_S = 8.0  # the first Ctrl-C's limit for saving the writes in progress
AFTER_SAVED_S = 1.5  # how long the process may then spend on bookkeeping (Prefect's) before it exits

_requested = threading.Event()
_saved = threading.Event()
_stops: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = {}
_tokens = itertools.count()
_lock = threading.Lock()


def stop_requested() -> bool:
    """Whether Ctrl-C asked the run to stop."""
    return _requested.is_set()


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, a Ctrl-C calls `callback` on the running event loop; call inside a coroutine."""
    loop = asyncio.get_running_loop()
    with _lock:
        token = next(_tokens)
        _stops[token] = (loop, callback)
    if _requested.is_set():
        loop.call_soon(callback)
    try:
        yield
    finally:
        with _lock:
            _stops.pop(token, None)


async def until_done_or_stopped(work: asyncio.Task[Any]) -> bool:
    """Wait for `work`; True when Ctrl-C stopped it first (it is then cancelled, and not waited for)."""
    stopped = asyncio.Event()

    def stop() -> None:
        stopped.set()
        work.cancel()

    with on_stop(stop):
        waiter = asyncio.create_task(stopped.wait())
        try:
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller itself is cancelled: so is its work
            work.cancel()
            raise
        finally:
            waiter.cancel()
    return stopped.is_set()


def mark_saved() -> None:
    """Everything the run had is saved: an interrupted process may now exit."""
    _saved.set()


@contextlib.contextmanager
def ctrl_c_stops_runs() -> Iterator[None]:
    """Handle SIGINT for the block (from the main thread): stop runs gracefully, then at once."""
    _requested.clear()
    _saved.clear()

    def handler(signum: int, frame: FrameType | None) -> None:
        if _requested.is_set():
            _say("stopped at once (second Ctrl-C); rerun the same command to continue")
            _exit_now()
        _requested.set()
        with _lock:
            stops = list(_stops.values())
        threading.Thread(target=_watchdog, name="ctrl-c-watchdog", daemon=True).start()
        if not stops:  # nothing running yet (start-up): stop as Python always does
            _saved.set()
            raise KeyboardInterrupt
        _say("interrupted: saving what is in progress (press Ctrl-C again to stop at once)")
        # Logging off: what other parts of the process report while they are torn down is noise now.
        logging.disable(logging.CRITICAL)
        for loop, callback in stops:
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile has nothing to stop
                loop.call_soon_threadsafe(callback)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        logging.disable(logging.NOTSET)


def _watchdog() -> None:
    if not _saved.wait(GRACE_S):
        _say(f"stopped: the writes in progress did not finish within {GRACE_S:g} s")
    else:
        time.sleep(AFTER_SAVED_S)  # the process normally ends before this; else it is stuck elsewhere
        _say("stopped; rerun the same command to continue")
    _exit_now()


def _exit_now() -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    terminate_children()
    os._exit(EXIT_CODE)


def terminate_children() -> None:
    """SIGTERM every direct child of this process (Linux; elsewhere nothing), so none outlives it."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                os.kill(int(stat.parent.name), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue


def _say(text: str) -> None:
    # os.write, not print: a signal handler may interrupt a print to the same stream mid-way.
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode("utf-8", errors="replace"))
