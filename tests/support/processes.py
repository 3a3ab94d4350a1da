"""Real processes the tests start: the `promptgrid` command, a throwaway redis-server, free loopback ports."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

PR_SET_PDEATHSIG = 1
# The installed console script, beside the interpreter running the tests.
CLI = Path(sys.executable).with_name("promptgrid")


def promptgrid(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `promptgrid ARGS` as a user types it; its output is captured as text."""
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """Runs in a child before exec: the kernel kills it if the test process dies without tearing down."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def running_redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, nothing persisted; yields its URL."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="promptgrid-redis-")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
        + ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.02)  # waiting for the server to bind, bounded at 4 s
        client.close()
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
