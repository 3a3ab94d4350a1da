"""The Prefect server a command runs its flows on: the user's (PREFECT_API_URL), or one started here.

Prefect on its own starts an "ephemeral" server process the first time a flow asks for an API and stops it
at interpreter exit, which a killed command never reaches: the server (~220 MiB) then runs on forever. The
server started here is the same one (Prefect's own `SubprocessASGIServer`, same app and settings), launched
so that the kernel kills it when this process dies however it dies (Linux `PR_SET_PDEATHSIG`). Its start
gets a timeout for a busy machine and one retry, and fails with a hint rather than Prefect's traceback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from promptgrid.errors import RunFailed

# Seconds one start may take: ~5 s on an idle 2-core machine, several times that while it is busy.
STARTUP_TIMEOUT_S = 60
START_ATTEMPTS = 2

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


def start_embedded_server(timeout_s: int = STARTUP_TIMEOUT_S, attempts: int = START_ATTEMPTS) -> Any:
    """A started server that dies with this process; RunFailed with a hint when no attempt answers."""
    server_class = _embedded_server_class()
    failure = ""
    for _ in range(attempts):
        server = server_class(port=_free_port())
        try:
            server.start(timeout=timeout_s)
            return server
        except Exception as exc:  # Prefect raises RuntimeError or httpx errors; the next try may work
            failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            server.stop()
    raise RunFailed(
        f"the embedded Prefect server did not start within {timeout_s} s, {attempts} times ({failure}). "
        "The machine may be busy: run the command again, or start a server once with "
        "`prefect server start` and point runs at it with "
        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
    )


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the URL of the Prefect API the flows of this command report to.

    PREFECT_API_URL (the user's server) wins; otherwise a server is started here, shared with anything in
    this process that asks Prefect for its ephemeral server, and stopped at exit or when this process dies.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield str(configured)
        return
    server = start_embedded_server()
    SubprocessASGIServer._instances[None] = server
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield str(server.api_url)
