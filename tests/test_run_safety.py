"""`promptgrid run` as people break it: two at once, `kill -9`, Ctrl-C, an unusable output, leftovers.

Each case is the real command in a process (and session) of its own against the sandbox on loopback, its
embedded Prefect server included; the sandbox counts what was created, the output says what was kept.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from promptgrid.output.manifest.read import read_manifest, read_parts
from promptgrid.output.sinks import open_sink
from tests.support.processes import promptgrid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]  # real runs, killed and interrupted

TIME_SCALE = 20.0
KEY = "pg-safety-key-3e8d1c"
RUN_TIMEOUT_S = 300


def write_spec(folder: Path, prompts: int, seeds: int = 2, output: str | None = None) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([f"a paper boat, study {n}"] for n in range(prompts))
    spec = folder / "spec.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: prompts.csv\ninputs: {output_format: jpg}\n"
        f"seeds: {list(range(1, seeds + 1))}\noutput: {output or folder / 'out'}\n",
        encoding="utf-8",
    )
    return spec


def environment(home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "EACHLABS_API_KEY": KEY,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Several embedded servers may start at once on a loaded machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_API_URL", None)
    return env


def start_run(spec: Path, home: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "promptgrid.cli", "run", str(spec), *args]
    return subprocess.Popen(
        command,
        env=environment(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def against(sandbox) -> list[str]:
    return ["--api-base", sandbox.url, "--rate-limit", f"60/{60 / TIME_SCALE:g}s"]


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, output.decode(errors="replace")


def images_on_disk(out: Path) -> dict[str, Path]:
    return {path.stem: path for path in (out / "images").rglob("*.jpg")} if (out / "images").exists() else {}


def wait_for_images(out: Path, count: int, process: subprocess.Popen[bytes], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while len(images_on_disk(out)) < count:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode(errors="replace"))
        assert time.monotonic() < deadline, "the run never stored enough images"
        time.sleep(0.05)


def successes_per_job(out: Path) -> Counter[str]:
    raw = read_parts(open_sink(str(out)), columns=["job_id", "status"]).to_pylist()
    return Counter(row["job_id"] for row in raw if row["status"] == "success")


@pytest.mark.slow
def rerun_then_backfill_unknown_creates(spec: Path, out: Path, folder: Path, sandbox) -> tuple[int, str]:
    """Rerun after a signal stopped a run; when the signal caught a create after its first byte left and the
    listing shows nothing of it (it may never have reached the API), the rerun names it
    CREATE_OUTCOME_UNKNOWN and fails rather than re-send it on a guess: the documented backfill makes it."""
    code, text = finish(start_run(spec, folder / "home-2", *against(sandbox)))
    unknown = [row for row in read_manifest(open_sink(str(out))).to_pylist() if row["status"] != "success"]
    if not unknown:
        return code, text
    assert code == 1 and {row["error_code"] for row in unknown} == {"CREATE_OUTCOME_UNKNOWN"}, text
    where = "error_code = 'CREATE_OUTCOME_UNKNOWN'"
    backfill = promptgrid(
        *("backfill", str(out), "--where", where, *against(sandbox)),
        env=environment(folder / "home-3"),
        timeout=300,
    )
    return backfill.returncode, backfill.stdout + backfill.stderr


def test_two_runs_started_together_create_each_prediction_once(tmp_path, sandbox_factory):
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE)
    spec = write_spec(tmp_path, prompts=15)
    first = start_run(spec, tmp_path / "home-a", *against(sandbox))
    second = start_run(spec, tmp_path / "home-b", *against(sandbox))
    results = [finish(first), finish(second)]

    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(text for code, text in results if code == 2)
    assert "is in use by run" in refused and " since " in refused and "Traceback" not in refused
    stats = sandbox.stats()
    assert stats["creates"] == 30 and stats["duplicate_creates"] == 0
    assert set(successes_per_job(tmp_path / "out").values()) == {1}
    assert len(successes_per_job(tmp_path / "out")) == 30


@pytest.mark.slow
def test_kill_9_then_a_run_after_the_links_expired_keeps_every_stored_image(tmp_path, sandbox_factory):
    # Output links live 40 API seconds (2 s here); the rerun starts long after they are gone.
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE, url_lifetime_s=40.0)
    spec = write_spec(tmp_path, prompts=30)
    out = tmp_path / "out"
    first = start_run(spec, tmp_path / "home-1", *against(sandbox))
    try:
        wait_for_images(out, 12, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        first.stdout.close()
    stored = images_on_disk(out)
    assert len(stored) < 60, "the run finished before it could be killed"
    time.sleep(2.5)  # past the links' lifetime, so nothing stored can be fetched again

    code, text = finish(start_run(spec, tmp_path / "home-2", *against(sandbox)))

    rows = {row["job_id"]: row for row in read_manifest(open_sink(str(out))).to_pylist()}
    for job_id, path in stored.items():
        assert rows[job_id]["status"] == "success", (job_id, rows[job_id]["error_code"])
        assert Path(rows[job_id]["image_uri"]) == path
    assert sandbox.stats()["duplicate_creates"] == 0
    assert set(successes_per_job(out).values()) == {1}
    # Only predictions created but not yet stored at the kill can have lost their output: the 10 in flight,
    # and those past their slot whose output was being fetched or stored (a listing shows several ends at
    # once); the run keeps at most max_concurrent + its queue (10 + 10) jobs going.
    lost = [row for row in rows.values() if row["status"] != "success"]
    assert all(row["error_code"] in ("OUTPUT_EXPIRED", "CREATE_OUTCOME_UNKNOWN") for row in lost), lost
    assert len(lost) <= 20 and code == (1 if lost else 0), text


@pytest.mark.slow
def test_ctrl_c_stops_within_10_s_with_130_and_the_rerun_finishes_cleanly(tmp_path, sandbox_factory):
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE)
    spec = write_spec(tmp_path, prompts=30)
    out = tmp_path / "out"
    run = start_run(spec, tmp_path / "home-1", *against(sandbox))
    wait_for_images(out, 10, run)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal does: the whole process group
    interrupted_at = time.monotonic()
    code, text = finish(run)
    took = time.monotonic() - interrupted_at

    assert code == 130, text
    assert took < 10, took
    assert "Traceback" not in text and "interrupted" in text
    assert sandbox.stats()["creates"] < 60, "the run finished before Ctrl-C"

    code, text = rerun_then_backfill_unknown_creates(spec, out, tmp_path, sandbox)
    assert code == 0, text
    rows = read_manifest(open_sink(str(out))).to_pylist()
    assert len(rows) == 60 and {row["status"] for row in rows} == {"success"}
    stats = sandbox.stats()
    assert stats["creates"] == 60 and stats["duplicate_creates"] == 0
    assert set(successes_per_job(out).values()) == {1}


@pytest.mark.parametrize("where", ["a-file", "/proc/promptgrid-out"])
def test_an_unusable_output_exits_2_with_a_sentence_before_anything_is_sent(tmp_path, sandbox, where):
    target = tmp_path / where if not where.startswith("/") else Path(where)
    if where == "a-file":
        target.write_text("not a folder")
    spec = write_spec(tmp_path, prompts=2, output=str(target))
    result = promptgrid("run", str(spec), "--api-base", sandbox.url, env=environment(tmp_path / "home"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: output ") and "Traceback" not in result.stderr
    assert sum(sandbox.stats()["requests"].values()) == 0


def leftovers(session: int, marker: str) -> list[tuple[int, str]]:
    """Processes of the run's session, or carrying its unique PREFECT_HOME in their environment."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            sid = os.getsid(int(proc.name))
            environ = (proc / "environ").read_bytes()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if sid == session or marker.encode() in environ:
            found.append((int(proc.name), command))
    return found


@pytest.mark.slow
def test_no_promptgrid_or_prefect_process_outlives_a_kill_9(tmp_path):
    home = tmp_path / "prefect-home-of-this-run"
    spec = write_spec(tmp_path, prompts=20)
    run = start_run(spec, home, "--sandbox", "--sandbox-time-scale", str(TIME_SCALE))
    try:
        wait_for_images(tmp_path / "out", 4, run)
        assert leftovers(run.pid, str(home)), "the run's processes were not found"
    finally:
        os.kill(run.pid, signal.SIGKILL)  # the command only, as an OOM killer or `kill -9 PID` does
        run.wait(timeout=30)
        run.stdout.close()
    deadline = time.monotonic() + 15
    while (left := leftovers(run.pid, str(home))) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert not left, f"left running after kill -9: {left}"  # the sandbox, Prefect's server, anything
    finally:
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
