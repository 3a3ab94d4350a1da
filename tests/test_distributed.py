"""Two Prefect process workers share one key's quota through Redis: a real server, real workers, the sandbox.

The deployments come from deployments/prefect.yaml as operators deploy them. One spec is run twice: first as
one flow run on one worker with its own in-memory budget (the baseline), then split into two shards that the
two workers run at once, sharing the quota through Redis. The sandbox (one per phase, so each has a fresh
per-key window) is the judge: no 429, the window and in-flight limits never exceeded, no input created twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest
import yaml

from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from promptgrid.sandbox.server import SandboxConfig, running_sandbox
from tests.support.processes import die_with_parent, free_port, running_redis_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# A window of 3 s and predictions of ~0.4 s. The budgets' guard against send-to-receipt jitter is 2% of the
# window (60 ms here, 0.5 s at the real quota); faster scales would test scheduler hiccups, not the quota.
TIME_SCALE = 20.0
# Enough work (~2 requests per image, ~6 windows) that the quota, not flow start-up, sets the pace, and
# the second shard starts while the first is still running.
PROMPTS = [f"a lighthouse at dusk, study {n}" for n in range(10)]
SEEDS = [1, 2, 3, 4]
CFG = [3.0, 4.5]
STEPS = [20, 28]
JOBS = len(PROMPTS) * len(SEEDS) * len(CFG) * len(STEPS)
RUN_DEADLINE_S = 90.0
SANDBOX_KEY = "sandbox-test-key"

pytestmark = [
    pytest.mark.integration,  # a real prefect server, workers and redis-server
    pytest.mark.slow,
    pytest.mark.needs("redis-server"),
    pytest.mark.timeout(300),
]


@dataclass
class Cluster:
    api_url: str
    redis_url: str
    worker_logs: list[Path]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (flow runs may leave their worker's process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A process in its own group, killed with everything below it when the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        yield process
    finally:
        below = descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_healthy(url: str, process: subprocess.Popen, log: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prefect server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)  # bounded wait for the server to come up
    pytest.fail(f"prefect server not healthy after {deadline_s} s: {log.read_text()[-2000:]}")


def prefect_cli(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def deploy_all(env: dict[str, str], api_url: str) -> None:
    """`prefect deploy` every deployment of deployments/prefect.yaml, as the runbook says, all at once.

    With FastAPI 0.154 the 3.8.8 server answers 422 to the CLI's closing "any workers online?" question
    (it sends `limit: null`), so the CLI exits 1 after creating the deployment; `--all` would stop after
    the first. Hence one `--name` per deployment, and the server is asked what exists.
    """
    names = [
        d["name"] for d in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    ]
    base = [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml"]
    runs = [
        subprocess.Popen(
            base + ["--name", n], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for n in names
    ]
    outputs = [run.communicate(timeout=120)[0].decode(errors="replace") for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0 or "workers/filter" in output, output[-3000:]
    with httpx.Client(base_url=api_url, timeout=10) as api:
        found = call(api, "POST", "/deployments/filter", json={}).json()
    assert sorted(d["name"] for d in found) == sorted(names)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        "PROMPTGRID_ROOT": str(ROOT),
        "EACHLABS_API_KEY": SANDBOX_KEY,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("EACHLABS_API_BASE", None)
    server_log = home / "server.log"
    server_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(running_redis_server())
        server = stack.enter_context(started(server_cmd + ["--no-ui"], env, server_log))
        wait_healthy(api_url, server, server_log, deadline_s=90)
        prefect_cli(["work-pool", "create", "promptgrid", "--type", "process"], env)
        deploy_all(env, api_url)
        logs = []
        for name in ("worker-a", "worker-b"):
            log = home / f"{name}.log"
            command = [str(BIN / "prefect"), "worker", "start", "--pool", "promptgrid", "--type", "process"]
            # One flow run per worker at a time, so two shards submitted together land on both workers.
            stack.enter_context(started(command + ["--name", name, "--limit", "1"], env, log))
            logs.append(log)
        yield Cluster(api_url, redis_url, logs)


def write_spec(folder: Path, base_url: str, quota_url: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.csv").write_text("prompt\n" + "".join(f'"{p}"\n' for p in PROMPTS))
    api = {"base_url": base_url, "rate_limit": f"60/{60 / TIME_SCALE:g}s", "max_concurrent": 10}
    if quota_url:
        api["quota_url"] = quota_url
    spec = {
        "name": "distributed",
        "model": "stable-diffusion-3-5-large",
        "prompts": "prompts.csv",
        "inputs": {"output_format": "jpg", "output_quality": 60, "aspect_ratio": "1:1"},
        "sweep": {"cfg": CFG, "steps": STEPS},
        "seeds": SEEDS,
        "output": str(folder / "out"),
        "api": api,
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder / "spec.yaml"


def call(api: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    """One request to the Prefect server, retried while SQLite answers 503 (database locked), as
    Prefect's own client does; bounded to a few seconds."""
    for pause in (0.2, 0.5, 1.0, 2.0, 4.0):
        response = api.request(method, url, **kwargs)
        if response.status_code != 503:
            return response.raise_for_status()
        time.sleep(pause)
    return api.request(method, url, **kwargs).raise_for_status()


def run_shards(cluster: Cluster, spec: Path, shard_count: int) -> list[str]:
    """Start one `generate/on-demand` run per shard, wait for all; return their ids."""
    with httpx.Client(base_url=cluster.api_url, timeout=10) as api:
        deployment = call(api, "GET", "/deployments/name/generate/on-demand").json()
        ids = []
        for shard in range(shard_count):
            parameters = {
                "spec_path": str(spec),
                "time_scale": TIME_SCALE,
                "shard_index": shard,
                "shard_count": shard_count,
            }
            url = f"/deployments/{deployment['id']}/create_flow_run"
            ids.append(call(api, "POST", url, json={"parameters": parameters}).json()["id"])
        deadline = time.monotonic() + RUN_DEADLINE_S
        states = {}
        while time.monotonic() < deadline:
            states = {i: call(api, "GET", f"/flow_runs/{i}").json()["state"]["type"] for i in ids}
            if all(state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for state in states.values()):
                break
            time.sleep(0.5)  # polling the server for the runs' end, bounded by RUN_DEADLINE_S
    assert set(states.values()) == {"COMPLETED"}, f"flow runs ended {states}; logs: {worker_tails(cluster)}"
    return ids


def worker_tails(cluster: Cluster) -> str:
    return "\n".join(log.read_text(errors="replace")[-3000:] for log in cluster.worker_logs)


def images_per_second(output: Path) -> float:
    """Images over the span from the first create sent to the last image stored, from the manifest."""
    table = read_manifest(open_sink(str(output)))
    assert table.num_rows == JOBS
    assert set(table.column("status").to_pylist()) == {"success"}
    start = pc.min(table.column("submitted_at")).as_py()
    for run_id in sorted(set(table.column("run_id").to_pylist())):
        rows = table.filter(pc.equal(table.column("run_id"), run_id))
        first = (pc.min(rows.column("submitted_at")).as_py() - start).total_seconds()
        last = (pc.max(rows.column("completed_at")).as_py() - start).total_seconds()
        print(f"  run {run_id}: {rows.num_rows} images from {first:.2f} s to {last:.2f} s")
    span = pc.max(table.column("completed_at")).as_py() - start
    return table.num_rows / span.total_seconds()


def ran(run_id: str, log: str) -> bool:
    """Whether the worker writing `log` ran the flow run: it took it up and did not lose the claim."""
    return run_id in log and f"Aborted submission of flow run '{run_id}'" not in log


def sandbox_config() -> SandboxConfig:
    return SandboxConfig(time_scale=TIME_SCALE, api_key=SANDBOX_KEY)


# A throughput ratio on a shared 2-core machine: one measurement can lose a second to a neighbour's CPU
# burst, so a pair below the mark is measured once more; every limit is asserted on every pair.
THROUGHPUT_ATTEMPTS = 2


def test_two_workers_share_one_quota(cluster, tmp_path):
    ratios = []
    for attempt in range(THROUGHPUT_ATTEMPTS):
        ratios.append(measure_alone_and_shared(cluster, tmp_path / f"attempt-{attempt}"))
        if ratios[-1] >= 0.9:
            break
    assert max(ratios) >= 0.9, f"two workers reached {ratios} of one worker's images/s"


def measure_alone_and_shared(cluster: Cluster, folder: Path) -> float:
    """One worker alone, then two sharing one Redis quota: the limits held, and the throughput ratio."""
    with running_sandbox(sandbox_config()) as alone:
        run_shards(cluster, write_spec(folder / "alone", alone.url, None), shard_count=1)
        alone_stats = alone.stats()
        baseline = images_per_second(folder / "alone" / "out")
    with running_sandbox(sandbox_config()) as shared:
        ids = run_shards(cluster, write_spec(folder / "shared", shared.url, cluster.redis_url), shard_count=2)
        stats = shared.stats()
        together = images_per_second(folder / "shared" / "out")
    print(f"images/s: one worker alone {baseline:.2f}, two workers sharing {together:.2f}")
    for name, figures in (("alone", alone_stats), ("shared", stats)):
        brief = {k: figures[k] for k in ("requests", "throttled", "max_window_requests", "max_in_flight")}
        print(name, brief)
    # Each shard ran on its own worker (both may try to claim a run; the one that loses logs "Aborted").
    logs = [log.read_text(errors="replace") for log in cluster.worker_logs]
    assert sorted(sum(ran(run_id, log) for log in logs) for run_id in ids) == [1, 1]
    assert all(any(ran(run_id, log) for run_id in ids) for log in logs)
    # The sandbox refuses anything over the limits with a 429: none means the shared budget held them.
    assert stats["throttled"] == 0
    assert stats["max_window_requests"] <= 60
    assert stats["max_in_flight"] <= 10
    assert stats["creates"] == JOBS
    assert stats["duplicate_creates"] == 0
    return together / baseline
