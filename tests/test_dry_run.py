"""`promptgrid run SPEC --dry-run` end to end: the plan's figures, flag overrides, and exit 2 on bad input.

The API base points at a live sandbox on loopback, so "nothing was sent" is checked by its request counters.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptgrid.api.polling import PollPolicy
from promptgrid.cli import app
from promptgrid.engine.estimate import estimate_run, expected_polls, format_duration
from promptgrid.errors import InvalidInput
from promptgrid.spec.load import load_spec
from promptgrid.spec.plan import plan_jobs
from promptgrid.spec.schema import ApiConfig
from tests.support.processes import promptgrid

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def no_requests(sandbox) -> bool:
    return sum(sandbox.stats()["requests"].values()) == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return promptgrid("run", *args, timeout=60)


@pytest.mark.integration  # the installed command, in a process of its own
def test_the_demo_dry_run_prints_the_plan_and_sends_nothing(sandbox) -> None:
    done = run_cli(str(CONFIGS / "demo.yaml"), "--dry-run", "--api-base", sandbox.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "jobs: 24 (8 per row; 0 identical jobs collapsed)" in out
    assert "3 rows, 3 distinct prompts" in out
    polls = math.ceil(24 * expected_polls(False))  # counted polls: the thrifty targets
    assert f"24 creates + ~{polls} polls = ~{24 + polls}; ~{24 + polls} count toward the limit" in out
    assert "cost: $1.56 at $0.065 per image" in out
    assert out.count("stable-diffusion-3-5-large  prompt=") == 3  # the sample jobs
    assert "nothing was sent to the API" in out
    assert no_requests(sandbox)


def test_flags_override_the_spec_in_the_plan(tmp_path: Path) -> None:
    shutil.copy(CONFIGS / "demo.yaml", tmp_path / "demo.yaml")
    shutil.copy(CONFIGS / "demo-prompts.csv", tmp_path / "demo-prompts.csv")
    args = ["run", str(tmp_path / "demo.yaml"), "--dry-run", "--output", "s3://bucket/demo", "--rate-limit"]
    args += ["60/6s", "--max-concurrent", "2", "--no-polls-count", "--price-per-image", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "output: s3://bucket/demo" in result.output
    assert "60 requests per 6 s, 2 in flight" in result.output
    assert "~24 count toward the limit (polls do not count" in result.output
    assert "bound by concurrency" in result.output
    assert "cost: $12.00 at $0.5 per image" in result.output


def test_a_bad_flag_value_is_invalid_input() -> None:
    result = CliRunner().invoke(app, ["run", str(CONFIGS / "demo.yaml"), "--dry-run", "--rate-limit", "lots"])
    assert isinstance(result.exception, InvalidInput)
    assert "api.rate_limit" in str(result.exception)


BAD_CASES = {
    "typo'd key": (
        "model: stable-diffusion-3-5-large\nprompts: grid.csv\nseed: [1]\n",
        "prompt\na\n",
        "'seed'",
    ),
    "bad cell": (
        "model: stable-diffusion-3-5-large\nprompts: grid.csv\n",
        "prompt,cfg\na,3\nb,-2\n",
        "line 3",
    ),
    "unknown model": ("model: sd-xl\nprompts: grid.csv\n", "prompt\na\n", "unknown model 'sd-xl'"),
    "bucketless output": (
        "model: stable-diffusion-3-5-large\nprompts: grid.csv\noutput: s3://\n",
        "prompt\na\n",
        "output",
    ),
    "non-utf8 grid": ("model: stable-diffusion-3-5-large\nprompts: grid.csv\n", b"prompt\n\xff\n", "line 2"),
}


@pytest.mark.integration  # the installed command, in a process of its own
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path: Path, sandbox, case: str) -> None:
    spec, grid, expected = BAD_CASES[case]
    (tmp_path / "spec.yaml").write_text(spec, encoding="utf-8")
    (tmp_path / "grid.csv").write_bytes(grid if isinstance(grid, bytes) else grid.encode("utf-8"))
    done = run_cli(str(tmp_path / "spec.yaml"), "--dry-run", "--api-base", sandbox.url)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and expected in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert no_requests(sandbox)


@pytest.mark.integration  # the installed command, in a process of its own
def test_a_bad_spec_without_dry_run_also_exits_2_before_any_request(tmp_path: Path, sandbox) -> None:
    (tmp_path / "spec.yaml").write_text(
        "model: stable-diffusion-3-5-large\nprompts: grid.csv\n", encoding="utf-8"
    )
    (tmp_path / "grid.csv").write_text("prompt,steps\na,500\n", encoding="utf-8")
    done = run_cli(str(tmp_path / "spec.yaml"), "--api-base", sandbox.url)
    assert done.returncode == 2 and "column steps: '500'" in done.stderr
    assert no_requests(sandbox)


def test_the_time_estimate_follows_the_binding_limit() -> None:
    api = ApiConfig.model_validate({"rate_limit": "60/60s"})  # 10 in flight, polls count
    counted = estimate_run(600, api, 0.065, latency_s=8.0, polls_per_image=2.0)
    assert counted.counted_requests == 1800 and counted.bound_by == "rate limit"
    assert counted.seconds == pytest.approx(600 * 3 + 8)
    free = estimate_run(600, api.model_copy(update={"polls_count": False}), 0.065)
    assert free.counted_requests == 600 and free.seconds == pytest.approx(600 + 8)
    fast = ApiConfig.model_validate({"rate_limit": "60/1s"})
    assert estimate_run(100, fast, 0.065).bound_by == "concurrency"
    assert estimate_run(100, fast, 0.065).seconds == pytest.approx(100 / (10 / 8.0) + 8)
    assert counted.cost_usd == pytest.approx(39.0)
    assert format_duration(3725) == "1h02m" and format_duration(72) == "1m12s" and format_duration(5) == "5s"


def test_the_larger_example_plans_648_jobs() -> None:
    plan = plan_jobs(load_spec(CONFIGS / "cfg-steps-study.yaml"))
    assert (plan.total_jobs, plan.rows, plan.variants_per_row) == (648, 12, 54)


def test_expected_polls_follow_the_engines_poll_targets() -> None:
    assert expected_polls(True) > expected_polls(False)  # free polls are spent to free slots sooner
    assert expected_polls(False, PollPolicy(first_hit=0.5, second_hit=0.5)) == pytest.approx(2.0)
    # Free polls: the schedule's spend per prediction, fewer when it is told to spend fewer.
    assert 5 < expected_polls(True) < 12
    assert expected_polls(True, PollPolicy(fine_polls=4.0)) < expected_polls(True)


def test_under_auto_the_time_is_the_in_flight_bounds_and_the_page_limits_is_given_beside_it() -> None:
    auto = ApiConfig()
    assert str(auto.rate_limit) == "auto"
    estimate = estimate_run(600, auto, 0.065, latency_s=8.0)
    assert estimate.bound_by == "concurrency" and estimate.seconds == pytest.approx(600 / (10 / 8.0) + 8)
    assert estimate.counted_requests == 600  # nothing is known to count polls
    assert estimate.seconds_at_page_limit == pytest.approx(600 * (2 + 0.125) + 8)
