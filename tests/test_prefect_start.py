"""Starting or finding the Prefect server under load: the wait follows the server's progress, not a clock.

Stand-in servers are real processes: one that burns CPU before it answers (a slow start on a busy
machine), one that sleeps without answering (stuck), one that exits; and a `prefect server start
--background` of this PREFECT_HOME is stood in for by its pid file and a health endpoint.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from promptgrid.runs.prefect_server import _wait_until_serving, running_server_url
from tests.support.processes import free_port

# Answers GET /api/health with 200 once it has used `busy` seconds of CPU (0: at once).
_SLOW_SERVER = """
import http.server, sys, time
port, busy = int(sys.argv[1]), float(sys.argv[2])
while time.process_time() < busy:
    pass
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@contextlib.contextmanager
def stand_in(script: str, *args: str) -> Iterator[SimpleNamespace]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", script, str(port), *args])
    try:
        yield SimpleNamespace(server_process=process, api_url=f"http://127.0.0.1:{port}/api")
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_server_that_keeps_working_is_waited_for_past_the_no_progress_limit():
    with stand_in(_SLOW_SERVER, "3") as server:
        started = time.monotonic()
        assert _wait_until_serving(server, time.monotonic() + 120, stalled_s=1.5) == ""
        assert time.monotonic() - started >= 1.5  # longer than a server may go without progress


def test_a_server_that_makes_no_progress_is_given_up_on_early():
    with stand_in("import time; time.sleep(60)", "") as server:
        failure = _wait_until_serving(server, time.monotonic() + 120, stalled_s=0.75)
    assert failure == "its process made no progress for 0.75 s"


def test_a_server_that_died_is_reported_with_its_exit_code():
    with stand_in("import sys; sys.exit(5)", "") as server:
        failure = _wait_until_serving(server, time.monotonic() + 120, stalled_s=30)
    assert failure == "its process exited with code 5"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("alive", [True, False])
def test_a_background_server_of_this_prefect_home_is_reused_while_it_runs(tmp_path, alive):
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_API_PORT, temporary_settings

    port = free_port()
    httpd = http.server.HTTPServer(("127.0.0.1", port), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    (tmp_path / "server.pid").write_text(str(os.getpid() if alive else dead.pid))
    try:
        with temporary_settings(updates={PREFECT_HOME: str(tmp_path), PREFECT_SERVER_API_PORT: port}):
            found = running_server_url()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert found == (f"http://127.0.0.1:{port}/api" if alive else None)
