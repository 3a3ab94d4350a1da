"""Ctrl-C or SIGTERM during a run: the first saves what is in progress and stops, a second stops at once.

SIGTERM is what a Prefect worker (cancelling a flow run), systemd and `timeout` send: it stops a run exactly
as Ctrl-C does. The command line installs the handler (`ctrl_c_stops_runs`) around a run, and the run
installs it again inside its flow (`stop_signals_handled`), where Prefect put its own. A run registers
what stops its work (`on_stop`) and says when everything it had is saved (`mark_saved`). Whatever else is
still busy afterwards (Prefect recording the run's end, a server that went away with the same signal), the
process exits with 130 a moment after the save, and at the latest `GRACE_S` after the first signal: a stop
never hangs. Before such a forced exit the process's own child processes are terminated, so none outlives it.
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
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
AFTER_SAVED_S = 1.5  # how long the process may then spend on bookkeeping (Prefect's) before it exits

_requested = threading.Event()
_saved = threading.Event()
_stops: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = {}
_tokens = itertools.count()
_lock = threading.Lock()
_asked_by: list[str] = []  # how the stop was asked for: "Ctrl-C" or the signal's name
_command = threading.Event()  # a command line's handler is around the run (ctrl_c_stops_runs)
# Set by Prefect's runner in the process it starts for a flow run (a worker's, or `flow.serve`'s).
RUNNER_FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"


def stop_requested() -> bool:
    """Whether Ctrl-C (or SIGTERM) asked the run to stop."""
    return _requested.is_set()


def stop_cause() -> str:
    """What asked the run to stop: "Ctrl-C", "SIGTERM"; "Ctrl-C" when nothing did yet."""
    return _asked_by[0] if _asked_by else "Ctrl-C"


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
    """Handle SIGINT and SIGTERM for the block (from the main thread): stop runs gracefully, then at once."""
    _requested.clear()
    _saved.clear()
    _asked_by.clear()
    previous = {signum: signal.signal(signum, _handle_stop) for signum in STOP_SIGNALS}
    _command.set()
    try:
        yield
    finally:
        _command.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def stop_signals_handled() -> Iterator[None]:
    """Within a flow run, make SIGINT and SIGTERM stop it gracefully again (from the main thread only).

    Prefect's flow engine installs its own SIGTERM handler around every flow run, which would crash the run
    mid-write; this puts the graceful stop back for the block, and Prefect's after it. A run in a worker's
    process (no command line around it) gets the graceful stop from here too. A script's run is left to
    Python's own Ctrl-C: the process is the script's.
    """
    ours = _command.is_set() or bool(os.environ.get(RUNNER_FLOW_RUN_ENV))
    if not ours or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handle_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _handle_stop(signum: int, frame: FrameType | None) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    if _requested.is_set():
        _say(f"stopped at once (second {name}); rerun the same command to continue")
        _exit_now()
    _requested.set()
    _asked_by.append(name)
    with _lock:
        stops = list(_stops.values())
    threading.Thread(target=_watchdog, name="stop-watchdog", daemon=True).start()
    if not stops:  # nothing running yet (start-up): stop as Python does on Ctrl-C
        _saved.set()
        raise KeyboardInterrupt
    again = "press Ctrl-C again" if signum == signal.SIGINT else f"send {name} again"
    _say(f"interrupted ({name}): saving what is in progress ({again} to stop at once)")
    # Logging off: what other parts of the process report while they are torn down is noise now.
    logging.disable(logging.CRITICAL)
    for loop, callback in stops:
        with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile has nothing to stop
            loop.call_soon_threadsafe(callback)


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
