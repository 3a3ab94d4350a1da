"""Running a spec from Python: the command line's run (sandbox, settings, the generate flow), callable from
a script and from inside an event loop that is already running, as a Jupyter notebook's is.

asyncio allows one running loop per thread, and a notebook's cell already runs inside one: there the flow
runs on a loop of its own in a worker thread, with the caller's context (Prefect's settings, where progress
goes), while the cell waits for it. Interrupting the cell cancels the run, as Ctrl-C does on the command
line, and what was already paid for stays journaled for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from promptgrid.api.reach import check_reachable
from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.progress import PROGRESS_STREAM
from promptgrid.errors import InvalidInput
from promptgrid.notebook.specs import SpecSource, effective_spec, load_spec, spec_file_name
from promptgrid.settings import API_KEY_ENV, read_api_settings
from promptgrid.spec.overrides import spec_overrides
from promptgrid.spec.plan import check_run_size

T = TypeVar("T")

# The sandbox's clock runs this many times faster than real time unless told otherwise (as `--sandbox`).
SANDBOX_TIME_SCALE = 10.0
WAIT_STEP_S = 0.1


@dataclass(frozen=True)
class RunSummary:
    """What one `run` did: jobs by outcome, requests sent, where the output and report are.

    `ok` is what the command line's exit code 0 means: the run ended Completed (no more jobs failed than the
    spec's `fail_when` allows, no shard failed, the API did not stop it) and no job failed in an earlier
    run. The reasons of failed jobs are rows of the manifest (`read_manifest`).
    """

    output: str
    planned: int  # jobs this run set out to do (the spec's, less those already in the manifest)
    succeeded: int
    failed: int
    skipped: int  # jobs already in the manifest, left alone
    previously_failed: int  # of the skipped: those whose latest outcome is a failure
    api_requests: int
    run_id: str | None = None  # None when nothing was left to do and no flow ran
    report: str | None = None  # the HTML report's URI, when one was written
    fail_when: str = "any"  # the spec's `fail_when`: how many failures make the run Failed
    problem: str | None = None  # why the run counts as failed, when Prefect ended it Failed

    @property
    def ok(self) -> bool:
        """True when the run ended Completed and no job failed earlier (unless `fail_when` is `never`)."""
        return self.problem is None and not (self.previously_failed and self.fail_when != "never")

    @classmethod
    def from_flow(cls, summary: Mapping[str, Any], problem: str | None = None) -> RunSummary:
        known = {field.name for field in fields(cls)}
        values = {"planned": 0, **{name: value for name, value in summary.items() if name in known}}
        return cls(**values, problem=problem)

    def __str__(self) -> str:
        from promptgrid.cli.run import describe_summary

        text = describe_summary(
            {"output": self.output, "report": self.report, **{f: getattr(self, f) for f in _COUNTS}}
        )
        return text if self.problem is None else f"{text}\nthe run failed: {self.problem}"


_COUNTS = ("succeeded", "failed", "skipped", "previously_failed", "api_requests")


def run(
    spec: SpecSource,
    *,
    sandbox: bool = False,
    output: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
    time_scale: float | None = None,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    report: bool = True,
) -> RunSummary:
    """Generate every image of a spec that its output does not have yet, and return what the run did.

    The same run as `promptgrid run SPEC`: the spec and the settings are checked first (InvalidInput lists
    every problem, nothing is sent), jobs already in the manifest are skipped, so running a spec again
    creates nothing it already has (and does not even start Prefect). `sandbox=True` starts the local
    stand-in API for the run (its images are sandbox renders); otherwise the key is read from
    EACHLABS_API_KEY. `output`, `api_base`, `rate_limit` ("auto", "60/60s"), `max_concurrent` and
    `polls_count` override the spec's keys of those names, and the environment's (EACHLABS_API_BASE, ...).

    `time_scale` says how many times faster than real time the API's clock runs: 10 for `sandbox=True`
    unless given, 1 for a real API. The rate limit's window and the engine's clocks shrink by it.

    Works from a script and inside a notebook's running event loop alike; progress lines go to stdout.
    Raises `promptgrid.errors.ApiUnreachable` when the API cannot be reached at all (nothing was sent).
    """
    if sandbox and api_base:
        raise InvalidInput(["run: give sandbox=True or api_base, not both"])
    scale = time_scale if time_scale is not None else SANDBOX_TIME_SCALE if sandbox else 1.0
    if not scale > 0:
        raise InvalidInput([f"run: time_scale must be above 0, got {time_scale!r}"])
    loaded = load_spec(spec)
    overrides = spec_overrides(output, api_base, rate_limit, max_concurrent, polls_count)
    checked = effective_spec(loaded, overrides)  # a bad setting stops here, before anything starts
    check_run_size(checked)  # so does a run larger than max_jobs
    if not sandbox and read_api_settings().api_key is None:
        raise InvalidInput([f"{API_KEY_ENV} is not set: export your Eachlabs API key, or pass sandbox=True"])
    from promptgrid.cli.run import api_for_run, nothing_left

    done = nothing_left(checked)
    if done is not None:
        return RunSummary.from_flow(done)
    if not sandbox:
        check_reachable(checked.api.base_url)
    limit = checked.api.rate_limit
    if scale != 1.0 and limit.requests is not None:  # auto needs no scaling: it reads the API's limits
        rate_limit = f"{limit.requests}/{limit.window_s / scale:g}s"
    from promptgrid.flows.generate import generate

    with api_for_run(sandbox, scale) as sandbox_url, _prefect_api():
        start_flow = functools.partial(
            generate,
            spec_path=str(spec_file_name(loaded)),
            spec_text=loaded.source_text,
            output=output,
            api_base=sandbox_url or api_base,
            rate_limit=rate_limit,
            max_concurrent=max_concurrent,
            polls_count=polls_count,
            price_per_image=price_per_image,
            time_scale=scale,
            report=report,
            return_state=True,
        )
        token = PROGRESS_STREAM.set(sys.stdout)
        try:
            failed, result, message = run_blocking(lambda: _flow_outcome(start_flow()))
        finally:
            PROGRESS_STREAM.reset(token)
    if isinstance(result, BaseException):
        raise result
    return RunSummary.from_flow(result, problem=message if failed else None)


# One embedded Prefect server for the whole process (a notebook's kernel), started by the first run that
# needs one, since starting it takes seconds; like the command line's, it dies with the process.
_server: Any = None
_server_lock = threading.Lock()


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """Point Prefect at PREFECT_API_URL when it is set, else at this process's embedded server."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from promptgrid.cli.prefect_server import start_embedded_server

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
