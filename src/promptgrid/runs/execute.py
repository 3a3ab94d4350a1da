"""Running a flow to its end from synchronous code, on the Prefect API this process uses: from a script or
the command line, and from inside an event loop that is already running, as a Jupyter notebook's is.

asyncio allows one running loop per thread, and a notebook's cell already runs inside one: there the flow
runs on a loop of its own in a worker thread, with the caller's context (Prefect's settings, where progress
goes), while the cell waits for it. Interrupting it cancels the run, as Ctrl-C does on the command line,
and what was already paid for stays journaled for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from promptgrid import interrupts
from promptgrid.errors import PromptgridError, RunInterrupted
from promptgrid.run_summary import RunSummary

T = TypeVar("T")

WAIT_STEP_S = 0.1


def run_flow(start: Callable[[], Awaitable[Any]]) -> RunSummary:
    """Run a flow (`start` calls it with return_state=True) and return its summary.

    Ctrl-C from a script or the command line stops the run gracefully (a second stops it at once) and raises
    RunInterrupted; an exception the flow ended with is raised as it is.
    """
    graceful = _no_running_loop() and threading.current_thread() is threading.main_thread()
    with interrupts.ctrl_c_stops_runs() if graceful else contextlib.nullcontext(), _prefect_api():
        failed, result, message = run_blocking(lambda: _flow_outcome(start()))
    stopped = isinstance(result, PromptgridError) and not isinstance(result, RunInterrupted)
    if stopped and interrupts.stop_requested():  # what Ctrl-C tore down fails in its own words
        raise RunInterrupted(str(result)) from result
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, RunSummary):
        raise TypeError(f"the flow ended without a run summary: {result!r}")
    return result.with_problem(message) if failed and result.problem is None else result


def _no_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


# One embedded Prefect server for the whole process (a command's, or a notebook kernel's), started by the
# first run that needs one, since starting it takes seconds; it dies with the process however that ends.
_server: Any = None
_server_lock = threading.Lock()


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """Point Prefect at PREFECT_API_URL when it is set, else at this process's embedded server."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from promptgrid.runs.prefect_server import start_embedded_server

    global _server
    if PREFECT_API_URL.value():
        yield
        return
    with _server_lock:
        if _server is None:
            _server = start_embedded_server()
            SubprocessASGIServer._instances[None] = _server
    with temporary_settings(updates={PREFECT_API_URL: _server.api_url}):
        yield


async def _flow_outcome(flow_call: Awaitable[Any]) -> tuple[bool, Any, str | None]:
    """Await the flow's final state: whether it failed, its result (the summary, or the exception), why."""
    state = await flow_call
    result = await state.aresult(raise_on_failure=False)
    return bool(state.is_failed()), result, state.message


def run_blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code, even when this thread's event loop is running.

    Without a running loop it runs here (`asyncio.run`); inside one (a notebook cell) it runs on a new loop
    in a worker thread that carries this context, while this thread waits. KeyboardInterrupt cancels it,
    waits for it to wind down, and is raised again.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    return _in_worker_thread(make)


@dataclass
class _Worker:
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    value: Any = None
    error: BaseException | None = None


def _in_worker_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    worker = _Worker()
    ready, finished = threading.Event(), threading.Event()

    async def main() -> T:
        worker.loop, worker.task = asyncio.get_running_loop(), asyncio.current_task()
        ready.set()
        return await make()

    def target() -> None:
        try:
            worker.value = asyncio.run(main())
        except BaseException as exc:  # handed to the waiting thread, which raises it
            worker.error = exc
        finally:
            ready.set()
            finished.set()

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(target,), name="promptgrid-run", daemon=True
    )
    thread.start()
    # Waiting on an event, not on Thread.join: an interrupt inside join() can leave the thread marked as
    # stopped while it still runs (CPython's bpo-45274 recovery), and a later join() would not wait.
    try:
        while not finished.wait(WAIT_STEP_S):  # short waits, so an interrupt is seen however it comes
            pass
    except KeyboardInterrupt:
        ready.wait()
        if worker.loop is not None and worker.task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to cancel
                worker.loop.call_soon_threadsafe(worker.task.cancel)
        finished.wait()
        raise
    thread.join()
    if worker.error is not None:
        raise worker.error
    value: T = worker.value
    return value
