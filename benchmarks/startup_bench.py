"""How long `promptgrid run` takes to get going, and to say there is nothing to do.

Against a baseline measured in the same process, `promptgrid --help` (the interpreter and the command's
imports, the floor of any command), it prints, each the median of ROUNDS:

- Prefect's own ephemeral server start (what a flow call did before) and the embedded server promptgrid now
  starts (the same app behind a launcher that ties it to its parent), from launch to a healthy API;
- a first run of JOBS jobs against the sandbox (`promptgrid sandbox`, its own process, x100 time), whole;
- the same command run again, when every job is in the manifest: no Prefect at all;
- the same with `--sandbox` (the README's quick start): the output's record of a spec with nothing left
  answers before a sandbox starts (promptgrid.runs.settled);
- a run against a port where nothing listens: how fast an unreachable API is reported.

    python benchmarks/startup_bench.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from support import free_port, sandbox_process

ROUNDS = 3
JOBS = 4
KEY = "startup-bench-key"
CLI = [sys.executable, "-m", "promptgrid.cli"]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_of(action: Callable[[], object]) -> float:
    return statistics.median(timed(action) for _ in range(ROUNDS))


def command(*args: str, env: dict[str, str], expect: int = 0) -> None:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != expect:
        raise RuntimeError(f"promptgrid {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")


def server_start(embedded: bool) -> None:
    """Start one server and stop it; Prefect's default or promptgrid's embedded one."""
    from prefect.server.api.server import SubprocessASGIServer

    from promptgrid.runs.prefect_server import start_embedded_server

    if embedded:
        server = start_embedded_server()
    else:
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=120)
    server.stop()


def write_spec(folder: Path, index: int) -> Path:
    (folder / "p.csv").write_text("prompt\n" + "".join(f"p{n}\n" for n in range(JOBS // 2)), encoding="utf-8")
    spec = folder / f"s{index}.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: p.csv\ninputs: {output_format: jpg}\nseeds: [1, 2]\n"
        f"output: {folder / f'out-{index}'}\napi: {{rate_limit: 60/0.6s}}\n",
        encoding="utf-8",
    )
    return spec


def main() -> None:
    home = tempfile.mkdtemp(prefix="startup-bench-prefect-")
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    os.environ.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    baseline = median_of(lambda: command("--help", env=env))
    prefect_default = median_of(lambda: server_start(embedded=False))
    embedded = median_of(lambda: server_start(embedded=True))
    folder = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    with sandbox_process("--time-scale", "100", "--api-key", KEY) as url:
        run_env = {**env, "EACHLABS_API_KEY": KEY, "EACHLABS_API_BASE": url}
        specs = [write_spec(folder, n) for n in range(ROUNDS)]
        first = statistics.median(
            timed(lambda s=s: command("run", str(s), "--no-report", env=run_env)) for s in specs
        )
        rerun = median_of(lambda: command("run", str(specs[0]), "--no-report", env=run_env))
    sandboxed = write_spec(folder, ROUNDS + 1)
    sandbox_args = ("run", str(sandboxed), "--sandbox", "--time-scale", "100", "--no-report")
    command(*sandbox_args, env=env)
    sandbox_rerun = median_of(lambda: command(*sandbox_args, env=env))
    dead_env = {**env, "EACHLABS_API_KEY": KEY, "EACHLABS_API_BASE": f"http://127.0.0.1:{free_port()}"}
    fresh = write_spec(folder, ROUNDS)  # nothing of it done, so the run has to reach the API
    unreachable = median_of(lambda: command("run", str(fresh), "--no-report", env=dead_env, expect=1))
    rows = [
        ("baseline `promptgrid --help`", baseline, ""),
        ("Prefect's ephemeral server, launch to healthy", prefect_default, ""),
        ("embedded server, launch to healthy", embedded, f"{embedded / prefect_default:.2f}x Prefect's"),
        (f"first run of {JOBS} jobs, whole command", first, f"{first / baseline:.1f}x baseline"),
        (
            "rerun with nothing to do",
            rerun,
            f"{rerun / baseline:.1f}x baseline, {rerun / first:.2f}x first run",
        ),
        ("rerun with nothing to do, `--sandbox`", sandbox_rerun, f"{sandbox_rerun / baseline:.1f}x baseline"),
        ("unreachable API, to exit 1", unreachable, f"{unreachable / baseline:.1f}x baseline"),
    ]
    print(f"median of {ROUNDS} rounds each")
    for label, seconds, ratio in rows:
        print(f"{label:<48} {seconds:6.2f} s  {ratio}")


if __name__ == "__main__":
    main()
