"""Template specs run end to end against the sandbox: every variable in the manifest, a rerun adds nothing."""

from __future__ import annotations

import asyncio
import os
from itertools import product
from pathlib import Path

import pytest

from promptgrid.flows.generate import generate
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from promptgrid.spec.sources import sample_values
from tests.support.processes import promptgrid

pytestmark = pytest.mark.integration  # the Prefect test server, the installed command

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KEY = "pg-template-key-51e0"
SPEC = """\
name: template-run
model: stable-diffusion-3-5-large
template: "a {subject} in {setting}, {lighting}"
inputs: {output_format: png, steps: 20}
sweep:
  subject: [fox, owl]
  setting: {file: settings.txt}
  lighting: {sample: 2, from: [dawn, noon, dusk, night]}
  cfg: [2.5, 4.0]
seeds: [1, 2]
"""


@pytest.mark.usefixtures("prefect_harness")
def test_a_template_run_stores_each_variable_and_a_rerun_creates_nothing(
    tmp_path, sandbox_factory, monkeypatch
):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    sandbox = sandbox_factory(api_key=KEY)
    (tmp_path / "settings.txt").write_text("# places\nsnow\nsand\n", encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + f"output: {tmp_path / 'out'}\n", encoding="utf-8")
    params = {"spec_path": str(spec), "api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}

    first = asyncio.run(generate(**params))

    lighting = sample_values(["dawn", "noon", "dusk", "night"], 2)
    expected = {
        (f"a {subject} in {setting}, {light}", cfg, seed): (subject, setting, light)
        for subject, setting, light, cfg, seed in product(
            ["fox", "owl"], ["snow", "sand"], lighting, [2.5, 4.0], [1, 2]
        )
    }
    assert first.succeeded == len(expected) == 32 and first.failed == 0
    rows = read_manifest(open_sink(str(tmp_path / "out"))).to_pylist()
    found = {(r["prompt"], r["cfg"], r["seed"]): (r["subject"], r["setting"], r["lighting"]) for r in rows}
    assert found == expected
    assert {row["template"] for row in rows} == {"a {subject} in {setting}, {lighting}"}

    second = asyncio.run(generate(**params))

    assert second.skipped == 32 and second.succeeded == 0
    assert sandbox.stats()["creates"] == 32 and sandbox.stats()["duplicate_creates"] == 0


@pytest.mark.slow
def test_the_example_recipe_runs_against_the_sandbox_and_reports_by_variable(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    # Its own Prefect home: the session's test server keeps a database in the shared one. A loaded
    # machine can take longer than Prefect's default 20 s to start the embedded server.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    env.pop("PREFECT_API_URL", None)
    done = promptgrid(
        "run", str(CONFIGS / "dataset-recipe.yaml"), "--sandbox", "--sandbox-time-scale", "100",
        "--output", str(out), "--no-report", env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "36 images generated, 0 failed" in done.stdout
    rows = read_manifest(open_sink(str(out))).to_pylist()
    distinct = [len({row[name] for row in rows}) for name in ("subject", "setting", "lighting")]
    assert len(rows) == 36 and distinct == [3, 3, 2]

    report = promptgrid("report", str(out), "--across", "subject", "--down", "setting", env=env, timeout=120)

    assert report.returncode == 0, report.stderr
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert html.count('<section class="prompt"') == 2  # one subject x setting table per lighting
    assert "<th>subject a red fox</th>" in html and "<th>setting a snowy forest</th>" in html
