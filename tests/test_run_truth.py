"""`promptgrid run` as a user types it tells the truth fast: where its settings came from, an unreachable API
in seconds, nothing to do without starting Prefect, and no Prefect server left behind by `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from promptgrid.output.journal import Journal
from promptgrid.output.manifest.read import part_keys, read_manifest
from promptgrid.output.sinks import open_sink
from tests.support.processes import CLI, free_port, promptgrid

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the installed command, in a process of its own

KEY = "pg-truth-key-3b8e"


def write_spec(folder: Path, prompts: int = 3) -> Path:
    lines = "".join(f"prompt number {n}\n" for n in range(prompts))
    (folder / "p.csv").write_text("prompt\n" + lines, encoding="utf-8")
    spec = folder / "s.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: p.csv\ninputs: {output_format: jpg}\nseeds: [1, 2]\n"
        f"output: {folder / 'out'}\n",
        encoding="utf-8",
    )
    return spec


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EACHLABS_", "PROMPTGRID_"))}
    env.pop("PREFECT_API_URL", None)
    home = tmp_path / "prefect-home"
    return {**env, "EACHLABS_API_KEY": KEY, "PREFECT_HOME": str(home), **extra}


def test_eachlabs_api_base_alone_points_a_run_at_the_sandbox_then_a_rerun_skips_prefect(
    tmp_path, sandbox_factory
):
    sandbox = sandbox_factory(api_key=KEY)
    spec = write_spec(tmp_path)
    env = environment(tmp_path, EACHLABS_API_BASE=sandbox.url, PROMPTGRID_RATE_LIMIT="60/0.6s")

    first = promptgrid("run", str(spec), "--no-report", env=env)

    assert first.returncode == 0, first.stderr
    assert sandbox.stats()["creates"] == 6
    assert f"api.base_url        {sandbox.url}  (EACHLABS_API_BASE)" in first.stderr
    assert "60/0.6s  (PROMPTGRID_RATE_LIMIT)" in first.stderr

    fresh_home = tmp_path / "prefect-home-rerun"  # a Prefect server started on it would create its database
    started = time.monotonic()
    rerun_env = {**env, "PREFECT_HOME": str(fresh_home), "PYTHONPROFILEIMPORTTIME": "1"}
    again = promptgrid("run", str(spec), "--no-report", env=rerun_env)
    took = time.monotonic() - started  # with the import log's small cost
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines() if "import time:" in line
    ]

    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 6 jobs are in the manifest already" in again.stderr
    assert sandbox.stats()["creates"] == 6
    assert not fresh_home.exists() or not any(fresh_home.iterdir()), "Prefect was started for nothing"
    assert "typer" in imported and not [name for name in imported if name.split(".")[0] == "prefect"]
    print(f"rerun with nothing to do took {took:.2f} s")  # benchmarks/startup_bench.py measures it


def test_an_unreachable_api_ends_the_run_in_seconds_naming_the_url_and_marking_nothing(
    tmp_path, sandbox_factory
):
    spec = write_spec(tmp_path, prompts=10)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every connection is refused
    env = environment(tmp_path, EACHLABS_API_BASE=dead)

    started = time.monotonic()
    result = promptgrid("run", str(spec), "--no-report", env=env, timeout=120)
    took = time.monotonic() - started

    assert result.returncode == 1, result.stderr
    assert f"cannot reach the API at {dead}" in result.stderr and "ConnectError" in result.stderr
    assert "Traceback" not in result.stderr
    print(f"unreachable API: exit 1 after {took:.1f} s")
    sink = open_sink(str(tmp_path / "out"))
    assert not part_keys(sink) or read_manifest(sink).num_rows == 0  # no job marked as attempted
    assert Journal(sink, writer_id="check").uncertain() == set()  # no create left looking unknown

    sandbox = sandbox_factory(api_key=KEY)  # the API is back: the rerun sends every job, once
    env = environment(tmp_path, EACHLABS_API_BASE=sandbox.url, PROMPTGRID_RATE_LIMIT="60/0.6s")
    rerun = promptgrid("run", str(spec), "--no-report", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert sandbox.stats()["creates"] == 20 and read_manifest(sink).num_rows == 20


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_command_leaves_no_prefect_server_behind(tmp_path, sandbox_factory):
    sandbox = sandbox_factory(api_key=KEY, time_scale=1.0)  # real latency: the run is still going
    spec = write_spec(tmp_path, prompts=20)
    env = environment(tmp_path, EACHLABS_API_BASE=sandbox.url)
    run = subprocess.Popen(
        [str(CLI), "run", str(spec), "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the test can kill the command alone, not its process group
    )
    try:
        deadline = time.monotonic() + 180
        while sandbox.stats()["creates"] == 0:
            assert run.poll() is None, "the run ended before it created anything"
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        servers = children_of(run.pid)
        assert servers, "the run has no child process: where is its Prefect server?"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in servers), "the Prefect server outlived the killed command"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
