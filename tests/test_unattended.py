"""`promptgrid run` left alone: a shared quota that is not there or goes away, SIGTERM, and a spend cap.

Each case is the real command in a process of its own against the sandbox on loopback (and a throwaway
redis-server where one is needed); the sandbox counts what was created, the output says what was kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter

import pytest

from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from tests.support.processes import free_port, promptgrid, running_redis_server
from tests.test_run_safety import (
    KEY,
    TIME_SCALE,
    against,
    environment,
    finish,
    rerun_then_backfill_unknown_creates,
    start_run,
    successes_per_job,
    wait_for_images,
    write_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

NOISE = ("Traceback", "Task exception was never retrieved", "was never awaited")


def with_quota(spec, url: str) -> None:
    spec.write_text(spec.read_text() + f"api: {{quota_url: '{url}'}}\n", encoding="utf-8")


def test_an_unreachable_shared_quota_exits_1_within_seconds_naming_it_and_sends_nothing(tmp_path, sandbox):
    spec = write_spec(tmp_path, prompts=3)
    with_quota(spec, f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    result = promptgrid("run", str(spec), *against(sandbox), env=environment(tmp_path / "home"))
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert took < 15, took
    last = result.stderr.strip().splitlines()[-1]
    assert "shared quota at redis://***@127.0.0.1:" in last and "redis-server --port 6379" in last
    assert "hunter2" not in result.stderr + result.stdout
    assert not any(noise in result.stderr for noise in NOISE)
    assert sandbox.stats()["creates"] == 0


def test_a_shared_quota_lost_mid_run_stops_it_cleanly_and_the_rerun_pays_nothing_twice(
    tmp_path, sandbox_factory
):
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE)
    spec = write_spec(tmp_path, prompts=30)
    out = tmp_path / "out"
    with contextlib.ExitStack() as redis_server:
        with_quota(spec, redis_server.enter_context(running_redis_server()))
        run = start_run(spec, tmp_path / "home-1", *against(sandbox))
        wait_for_images(out, 10, run)
    lost_at = time.monotonic()  # the redis-server is killed as its block ends
    code, text = finish(run)
    took = time.monotonic() - lost_at
    assert code == 1, text
    assert took < 15, took
    assert "shared quota" in text and "unreachable" in text
    assert not any(noise in text for noise in NOISE), text
    rows = read_manifest(open_sink(str(out))).to_pylist()
    assert len(rows) >= 10 and {row["status"] for row in rows} == {"success"}
    assert sandbox.stats()["creates"] < 60, "the run finished before the quota was lost"

    write_spec(tmp_path, prompts=30)  # the same jobs, on this process's own quota
    code, text = finish(start_run(spec, tmp_path / "home-2", *against(sandbox)))
    assert code == 0, text
    stats = sandbox.stats()
    assert stats["creates"] == 60 and stats["duplicate_creates"] == 0
    assert set(successes_per_job(out).values()) == {1}


def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_rerun_finishes_cleanly(tmp_path, sandbox_factory):
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE)
    spec = write_spec(tmp_path, prompts=30)
    out = tmp_path / "out"
    run = start_run(spec, tmp_path / "home-1", *against(sandbox))
    wait_for_images(out, 10, run)
    os.kill(run.pid, signal.SIGTERM)  # what `timeout`, systemd and a Prefect worker send: the process only
    stopped_at = time.monotonic()
    code, text = finish(run)
    took = time.monotonic() - stopped_at

    assert code == 130, text
    assert took < 10, took
    assert "interrupted (SIGTERM)" in text and not any(noise in text for noise in NOISE), text
    assert sandbox.stats()["creates"] < 60, "the run finished before SIGTERM"

    code, text = rerun_then_backfill_unknown_creates(spec, out, tmp_path, sandbox)
    assert code == 0, text
    rows = read_manifest(open_sink(str(out))).to_pylist()
    assert len(rows) == 60 and {row["status"] for row in rows} == {"success"}
    stats = sandbox.stats()
    assert stats["creates"] == 60 and stats["duplicate_creates"] == 0
    assert set(successes_per_job(out).values()) == {1}


def test_a_cost_cap_of_ten_images_sends_at_most_ten_creates_and_says_what_was_spent(
    tmp_path, sandbox_factory
):
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE)  # $0.065 an image
    spec = write_spec(tmp_path, prompts=15)
    dry = promptgrid("run", str(spec), "--dry-run", "--max-cost", "0.65", env=environment(tmp_path / "home"))
    assert dry.returncode == 0 and "cost: $1.95 at $0.065 per image; cap: max_cost $0.65" in dry.stdout

    code, text = finish(start_run(spec, tmp_path / "home", *against(sandbox), "--max-cost", "0.65"))
    assert code == 1, text
    assert sandbox.stats()["creates"] <= 10
    assert "spend cap reached" in text and "$0.65 spent of max_cost $0.65" in text  # the summary's
    codes = Counter(row["error_code"] for row in read_manifest(open_sink(str(tmp_path / "out"))).to_pylist())
    assert codes[None] == sandbox.stats()["creates"] and codes["BUDGET_EXHAUSTED"] > 0
    assert not any(noise in text for noise in NOISE), text
