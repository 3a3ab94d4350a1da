"""The Prefect server a command runs its flows on: the user's, or one started here.

A server already there is used: the one PREFECT_API_URL names, else one `prefect server start --background`
runs for this PREFECT_HOME (its `server.pid`, at the address PREFECT_SERVER_API_HOST/PORT give).

Otherwise one is started. Prefect on its own starts an "ephemeral" server process the first time a flow asks
for an API and stops it at interpreter exit, which a killed command never reaches: the server (~220 MiB)
then runs on forever. The server started here is the same one (Prefect's own `SubprocessASGIServer`, same
app and settings), launched so that the kernel kills it when this process dies however it dies (Linux
`PR_SET_PDEATHSIG`). A busy machine starts it slowly, so the wait adapts to progress: it goes on while the
server process lives and keeps using CPU (up to `START_BOUND_S`), and gives up early only when the process
died or made no progress for `STALLED_START_S`; failing, it says what to do rather than show a traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from promptgrid.errors import RunFailed

# ~5 s on an idle 2-core machine; a few minutes at a load of 13 on 2 cores. Past this, however busy the
# server still is, the start has failed.
START_BOUND_S = 600.0
# A server process using no CPU for this long is stuck, not slow.
STALLED_START_S = 60.0
# Tries on a fresh port when the server died at start (another process took its port, exit code 3).
START_ATTEMPTS = 3
HEALTH_TIMEOUT_S = 5.0
HINT = (
    "start a server once with `prefect server start --background` (runs that share its PREFECT_HOME use "
    "it), or point runs at one with `export PREFECT_API_URL=http://127.0.0.1:4200/api`, then run the "
    "command again"
)

# Runs in the server's process before uvicorn: ask the kernel to kill it when its parent dies, then check
# the parent did not die before the request took effect (its children would be adopted by then).
_LAUNCHER = """
import ctypes, os, runpy, signal, sys
parent = int(sys.argv[1])
prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
if prctl is not None:
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _embedded_server_class() -> Any:
    """Prefect's subprocess server, launched through `_LAUNCHER` (imported late: Prefect is slow to load)."""
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class EmbeddedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # The command and environment of Prefect 3.8's own `_run_uvicorn_command`, behind the launcher.
            app = ["--app-dir", str(prefect.__module_path__.parent), "--factory"]
            app += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
            app += ["--log-level", "error", "--lifespan", "on"]
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            return subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(os.getpid()), *app], env=env)

    return EmbeddedServer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded_server(
    bound_s: float = START_BOUND_S, stalled_s: float = STALLED_START_S, attempts: int = START_ATTEMPTS
) -> Any:
    """A started server that dies with this process; RunFailed with a hint when it does not answer."""
    server_class = _embedded_server_class()
    started = time.monotonic()
    failure = ""
    for _ in range(attempts):
        server = server_class(port=_free_port())
        server.running = True
        server.server_process = server._run_uvicorn_command()
        failure = _wait_until_serving(server, started + bound_s, stalled_s)
        if not failure:
            atexit.register(server.stop)  # a clean stop at exit; the kernel's kill covers any other end
            return server
        server.stop()
        if "exited with code 3" not in failure:
            break  # only a port taken meanwhile (uvicorn's exit code 3) is worth another try
    waited = time.monotonic() - started
    raise RunFailed(f"the embedded Prefect server did not start ({failure}; {waited:.0f} s). {HINT}")


def _wait_until_serving(server: Any, deadline: float, stalled_s: float) -> str:
    """'' once the server answers; else why not: it died, it stopped progressing, or the bound passed."""
    process = server.server_process
    cpu, progressed_at = _cpu_ticks(process.pid), time.monotonic()
    with httpx.Client(timeout=HEALTH_TIMEOUT_S) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.api_url}/health").status_code == 200:
                    return ""
            if (code := process.poll()) is not None:
                return f"its process exited with code {code}"
            now, ticks = time.monotonic(), _cpu_ticks(process.pid)
            if ticks != cpu:
                cpu, progressed_at = ticks, now
            if now - progressed_at > stalled_s:
                return f"its process made no progress for {stalled_s:g} s"
            if now > deadline:
                return "it was still starting when the wait ran out"
            time.sleep(0.25)


def _cpu_ticks(pid: int) -> int:
    """CPU time a process (and its waited-for children) used so far, in clock ticks; 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(value) for value in fields[11:15])
    except (OSError, ValueError, IndexError):
        return 0


def running_server_url() -> str | None:
    """The API of a `prefect server start --background` running for this PREFECT_HOME, if it answers."""
    from prefect.settings import PREFECT_HOME, get_current_settings

    try:
        pid = int((Path(PREFECT_HOME.value()) / "server.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    api = get_current_settings().server.api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    url = f"http://{host}:{api.port}/api"
    return url if _answers(url) else None


def _answers(api_url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the URL of the Prefect API the flows of this command report to.

    PREFECT_API_URL (the user's server) wins, then a background server of this PREFECT_HOME; otherwise a
    server is started here, shared with anything in this process that asks Prefect for its ephemeral
    server, and stopped at exit or when this process dies.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield str(configured)
        return
    running = running_server_url()
    if running is not None:
        with temporary_settings(updates={PREFECT_API_URL: running}):
            yield running
        return
    server = start_embedded_server()
    SubprocessASGIServer._instances[None] = server
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield str(server.api_url)
