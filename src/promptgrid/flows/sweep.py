"""The sweep flow: a study described by typed parameters (a form in the Prefect UI) instead of a spec file."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.planning import RunPlan, Selection
from promptgrid.engine.resolution import read_run_spec
from promptgrid.flows.generate import current_run_id
from promptgrid.run_summary import RunSummary
from promptgrid.settings import environment_overrides
from promptgrid.tasks.pipeline import as_is, run_plan
from promptgrid.tasks.resolution import resolve_spec_models


class SweepRequest(BaseModel):
    """A cfg × steps × seed × prompt study; every field becomes a field of the deployment's form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("ui-sweep", description="A name for the study")
    model: Literal["stable-diffusion-3-5-large", "stable-diffusion-3-5-large-turbo"] = (
        "stable-diffusion-3-5-large"
    )
    prompts: list[str] = Field(..., min_length=1, description="One job per prompt and parameter combination")
    cfg: list[float] = Field([3.5], min_length=1, description="Guidance scales to sweep")
    steps: list[int] = Field([28], min_length=1, description="Sampler steps to sweep")
    seeds: list[int] = Field([1], min_length=1, description="Seeds, fixed before the run")
    aspect_ratio: str = "1:1"
    output_format: Literal["webp", "jpg", "png"] = "webp"
    output: str = Field(..., description="A local folder or s3://bucket/prefix")
    api_base: str | None = Field(None, description="The API's base URL; the public API when empty")
    rate_limit: str = Field(
        "auto", description="auto (learned from the API), or requests/window such as 60/60s"
    )
    max_concurrent: int = Field(10, ge=1)
    quota_url: str | None = Field(None, description="redis:// URL of the quota shared by all workers")

    def spec_document(self, prompts_file: str) -> dict[str, Any]:
        api: dict[str, Any] = {"rate_limit": self.rate_limit, "max_concurrent": self.max_concurrent}
        if self.api_base:
            api["base_url"] = self.api_base
        if self.quota_url:
            api["quota_url"] = self.quota_url
        return {
            "name": self.name,
            "model": self.model,
            "prompts": prompts_file,
            "inputs": {"aspect_ratio": self.aspect_ratio, "output_format": self.output_format},
            "sweep": {"cfg": self.cfg, "steps": self.steps},
            "seeds": self.seeds,
            "output": self.output,
            "api": api,
        }


@flow(name="sweep")
async def sweep(
    request: SweepRequest, price_per_image: float = PRICE_PER_IMAGE_USD, time_scale: float = 1.0
) -> State[RunSummary]:
    """Run the study the form describes, through the same validation and pipeline as a spec file."""
    with tempfile.TemporaryDirectory(prefix="promptgrid-sweep-") as folder:
        with open(Path(folder) / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["prompt"])
            writer.writerows([prompt] for prompt in request.prompts)
        spec_file = Path(folder) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(request.spec_document("prompts.csv"), sort_keys=False))
        # The form's empty fields fall back to the environment, as a spec's absent keys do.
        unset = {"api.base_url": request.api_base, "api.quota_url": request.quota_url}
        environment = {k: v for k, v in environment_overrides().items() if k in unset and not unset[k]}
        parsed = read_run_spec(spec_file, {}, environment)
        spec, models = await resolve_spec_models(as_is(parsed), time_scale=time_scale)
        return await run_plan(
            RunPlan.from_spec(spec, models),
            Selection(),
            price_per_image=price_per_image,
            time_scale=time_scale,
            run_id=current_run_id(),
        )
