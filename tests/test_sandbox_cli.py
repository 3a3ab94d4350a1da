"""`promptgrid sandbox` prints the URL it listens on, serves the API, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.integration  # the installed command, in a process of its own


def test_cli_serves_until_interrupted():
    command = [sys.executable, "-m", "promptgrid.cli", "sandbox", "--port", "0", "--time-scale", "100"]
    command += ["--api-key", "cli-secret", "--rate-limit", "30"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = [process.stdout.readline() for _ in range(5)]
        assert banner[0].startswith("Sandbox API listening on http://127.0.0.1:")
        url = banner[0].split()[-1]
        body = {"model": "stable-diffusion-3-5-large", "version": "0.0.1", "input": {"prompt": "a kite"}}
        with httpx.Client(base_url=url, headers={"X-API-Key": "cli-secret"}, timeout=5) as client:
            assert (
                client.post("/v1/prediction/", json=body, headers={"X-API-Key": "other"}).status_code == 401
            )
            assert client.post("/v1/prediction/", json=body).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert time.monotonic() - started < 5
    assert "Traceback" not in err
    assert "cli-secret" not in "".join(banner) + out + err
    assert "30 requests per 0.6 s" in banner[1]


def test_cli_rejects_impossible_options():
    command = [sys.executable, "-m", "promptgrid.cli", "sandbox", "--error-rate", "1.5"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 2
    assert "error_rate must be between 0 and 1" in finished.stderr


def test_cli_reports_a_taken_port_without_a_traceback():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        command = [sys.executable, "-m", "promptgrid.cli", "sandbox", "--port", port]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in finished.stderr and "Traceback" not in finished.stderr
