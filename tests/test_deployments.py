"""deployments/prefect.yaml names flows that load, parameters they accept, one schedule and one backfill."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from promptgrid.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


@pytest.fixture(scope="module")
def flows(deployments) -> dict:
    entrypoints = {d["entrypoint"] for d in deployments}
    return {e: load_flow_from_entrypoint(e) for e in entrypoints}


def test_every_entrypoint_loads_and_accepts_its_parameters(deployments, flows):
    assert {d["entrypoint"] for d in deployments} >= {
        "promptgrid.flows.generate:generate",
        "promptgrid.flows.sweep:sweep",
        "promptgrid.flows.backfill:backfill",
    }
    for deployment in deployments:
        flow = flows[deployment["entrypoint"]]
        given = deployment.get("parameters") or {}
        schema = parameter_schema(flow)
        assert set(given) <= set(schema.properties), deployment["name"]
        if not set(schema.required) - set(given):
            flow.validate_parameters(given)  # a deployment that can run unattended must be complete
        assert deployment["work_pool"]["name"] == "promptgrid"
    # The scheduled run has nobody to fill in a form: its parameters must be complete.
    nightly = next(d for d in deployments if d["name"] == "nightly")
    assert not set(parameter_schema(flows[nightly["entrypoint"]]).required) - set(nightly["parameters"])


def test_one_deployment_is_scheduled_and_its_spec_is_valid(deployments):
    scheduled = [d for d in deployments if d.get("schedules")]
    assert [d["name"] for d in scheduled] == ["nightly"]
    (nightly,) = scheduled
    for schedule in nightly["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    # Overlapping runs would both see the same jobs as missing and create them twice.
    assert nightly["concurrency_limit"] == 1
    # It runs on a machine with nothing else installed: no Redis named. The shared sample says it needs one.
    spec = load_spec(ROOT / nightly["parameters"]["spec_path"])
    assert spec.api.quota_url is None
    shared_path = ROOT / "deployments" / "specs" / "nightly-shared.yaml"
    assert load_spec(shared_path).api.quota_url is not None
    assert "redis-server --port 6379 --save ''" in shared_path.read_text()


def test_one_deployment_is_the_backfill(deployments):
    backfills = [d for d in deployments if d["entrypoint"] == "promptgrid.flows.backfill:backfill"]
    assert [d["name"] for d in backfills] == ["backfill"]
    assert "ops" in backfills[0]["tags"]
    assert not backfills[0].get("schedules")


def test_the_sweep_form_is_typed(flows):
    schema = parameter_schema(flows["promptgrid.flows.sweep:sweep"]).model_dump_for_openapi()
    request = schema["properties"]["request"]
    assert request.get("$ref", "").endswith("/SweepRequest") or request.get("allOf")
    fields = schema["definitions"]["SweepRequest"]["properties"]
    assert {"prompts", "cfg", "steps", "seeds", "output", "quota_url"} <= set(fields)
    assert fields["cfg"]["items"]["type"] == "number"
    assert fields["steps"]["items"]["type"] == "integer"


def test_no_deployment_carries_the_api_key():
    text = PREFECT_FILE.read_text()
    for line in text.splitlines():
        if "EACHLABS_API_KEY" in line:
            assert line.lstrip().startswith("#"), "the key belongs in the worker's environment"
