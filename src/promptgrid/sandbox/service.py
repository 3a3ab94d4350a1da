"""What the sandbox answers to each API call, decided against its limits, faults and predictions.

Every method runs on the server's event loop and does its checks and bookkeeping without awaiting in
between, so a limit is checked and the request recorded as one step: no two requests can both take the
last slot of a window.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from promptgrid.aio import in_background
from promptgrid.sandbox.config import SandboxConfig
from promptgrid.sandbox.executions import list_page, parse_query
from promptgrid.sandbox.faults import CreateFault, Dice, GetFault
from promptgrid.sandbox.limits import Admission
from promptgrid.sandbox.models import SandboxModel, find_model
from promptgrid.sandbox.predictions import TERMINAL, Counters, Prediction, input_hash
from promptgrid.sandbox.render import RenderCache, image_size, render, render_key
from promptgrid.sandbox.replies import Reply, error

INPUT_IMAGE_MAX_BYTES = 20 * 1024 * 1024
INPUT_IMAGE_TIMEOUT_S = 10.0


def presented_key(headers: Mapping[str, str], bearer_only: bool = False) -> str:
    """The key the caller sent (X-API-Key or a Bearer token; with `bearer_only`, Bearer alone), or ""."""
    key = "" if bearer_only else headers.get("x-api-key", "").strip()
    if not key:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
    return key


def key_owner(headers: Mapping[str, str], required_key: str | None, bearer_only: bool = False) -> str | None:
    """Who is calling (a digest of the key, so the key itself is never kept), or None when not allowed.

    The key is read from `X-API-Key` or `Authorization: Bearer`; with `bearer_only`, from Bearer alone.
    """
    key = presented_key(headers, bearer_only)
    if not key:
        return None
    if required_key is not None and not hmac.compare_digest(key.encode(), required_key.encode()):
        return None
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SandboxService:
    """The sandbox's state: predictions, per-key limits, counters, dice and rendered images."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self.epoch = time.time() - clock()  # sandbox clock + epoch = wall-clock time, for the listing
        self.dice = Dice(config)
        self.counters = Counters()
        self.renders = RenderCache()
        self.predictions: dict[str, Prediction] = {}
        self.admission = Admission(config, self.predictions, lambda: self.counters)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the server starts

    # --- create -------------------------------------------------------------------------------------

    def create(self, owner: str, body: bytes) -> Reply:
        now = self.clock()
        parsed = self._parse_create(body)
        refusal = self.admission.create(owner, not isinstance(parsed, Reply), now)
        if refusal:
            return refusal
        if isinstance(parsed, Reply):
            return parsed
        fault = self.dice.create_fault()
        if fault is not CreateFault.NONE:
            self.counters.faults[f"create_{fault.value}"] += 1
        if fault is CreateFault.SERVER_ERROR:
            return error(self.dice.server_error_status(), "Failed to create prediction")
        if fault is CreateFault.DROP_BEFORE:
            return Reply(drop=True)
        prediction = self._start(owner, *parsed, now)
        if fault is CreateFault.DROP_AFTER:
            return Reply(drop=True)
        if fault is CreateFault.MADE_THEN_5XX:
            return error(500, "Failed to create prediction")
        if fault is CreateFault.HELD:
            return Reply(drop=True, hold_s=self.config.scaled(self.config.held_answer_s))
        return Reply(
            200,
            {
                "status": "success",
                "message": "Prediction created successfully",
                "predictionID": prediction.id,
            },
        )

    def _parse_create(self, body: bytes) -> Reply | tuple[SandboxModel, dict[str, Any], dict[str, Any]]:
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return error(400, "Invalid JSON body")
        if not isinstance(payload, dict):
            return error(400, "The body must be a JSON object with model, version and input")
        # Anything but a string, or a spelling this API does not know, is no model: 404, nothing created.
        model = find_model(payload.get("model"), self.config.slug_spelling)
        if model is None:
            return error(404, "Model not found", model=payload.get("model"))
        raw = payload.get("input")
        if not isinstance(raw, dict):
            return error(
                400, "Invalid input for model", message="input: expected a JSON object", fields=["input"]
            )
        inputs, problems = model.schema.check(raw)
        if problems:
            return error(
                400,
                "Invalid input for model",
                message="; ".join(str(p) for p in problems),
                fields=[p.field for p in problems],
                details=[{"field": p.field, "value": p.value, "allowed": p.allowed} for p in problems],
            )
        return model, raw, inputs

    def _start(
        self, owner: str, model: SandboxModel, raw: dict[str, Any], inputs: dict[str, Any], now: float
    ) -> Prediction:
        digest = input_hash(model.slug, inputs)
        resolved = dict(inputs)
        if resolved.get("seed") is None and "seed" in model.schema.properties:
            resolved["seed"] = self.dice.random_seed()
        fate = self.dice.fate()
        if fate.never_finishes:
            self.counters.faults["never_finish"] += 1
        if fate.error_code is not None:
            self.counters.faults["prediction_error"] += 1
        prediction = Prediction(
            id=str(uuid.uuid4()),
            owner=owner,
            model=model.slug,
            raw_input=raw,
            inputs=resolved,
            created_at=now,
            fate=fate,
            output_format=str(resolved.get("output_format") or "webp"),
            size=None if resolved.get("image") else model.size(resolved, self.config.size_delta_px),
            input_pending=bool(resolved.get("image")),
            outputs=int(resolved.get("num_images") or 1) if model.output_type == "array" else 0,
        )
        self.predictions[prediction.id] = prediction
        self.counters.record_create(prediction, digest, self.admission.started(prediction, now))
        if prediction.input_pending:
            in_background(self._fetch_input(prediction), self._tasks)
        return prediction

    async def _fetch_input(self, prediction: Prediction) -> None:
        """Image-to-image: the output takes the input's pixel size; an input that cannot be read fails it."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=INPUT_IMAGE_TIMEOUT_S, follow_redirects=True)
        try:
            response = await self._http.get(prediction.inputs["image"])
            response.raise_for_status()
            if len(response.content) > INPUT_IMAGE_MAX_BYTES:
                raise ValueError("the image is larger than 20 MB")
            prediction.size = image_size(response.content)
        except (httpx.HTTPError, ValueError, OSError) as exc:
            prediction.input_failure = type(exc).__name__ + (
                f" (HTTP {exc.response.status_code})" if isinstance(exc, httpx.HTTPStatusError) else ""
            )
        finally:
            prediction.input_pending = False

    # --- get and cancel -----------------------------------------------------------------------------

    def get(self, owner: str, prediction_id: str, base_url: str) -> Reply:
        now = self.clock()
        refusal = self.admission.request(owner, self.config.polls_count, now)
        if refusal:
            return refusal
        fault = self.dice.get_fault()
        if fault is not GetFault.NONE:
            self.counters.faults[f"get_{fault.value}"] += 1
        if fault is GetFault.DROP:
            return Reply(drop=True)
        if fault is GetFault.SERVER_ERROR:
            return error(self.dice.server_error_status(), "Internal server error")
        prediction = self.predictions.get(prediction_id)
        if prediction is None or prediction.owner != owner:
            return error(404, "Prediction not found")
        return Reply(200, self._describe(prediction, base_url, now))

    def cancel(self, owner: str, prediction_id: str) -> Reply:
        now = self.clock()
        refusal = self.admission.request(owner, self.config.cancels_count, now)
        if refusal:
            return refusal
        prediction = self.predictions.get(prediction_id)
        if prediction is None or prediction.owner != owner:
            return error(404, "Prediction not found")
        status = prediction.status(now)
        if status in TERMINAL:
            body = {"status": status, "message": "Prediction already finished", "predictionID": prediction.id}
            return Reply(200, body)
        if self.dice.cancel_ignored():
            # Acknowledged, not carried out: it runs on, holding its slot, and ends as it would have.
            self.counters.cancels_ignored += 1
            prediction.cancel_ignored = True
            if prediction.fate.never_finishes:
                prediction.cancelled_at = now + self.config.scaled(self.config.cancel_late_s)
                self.admission.cancelled(prediction)
        else:
            prediction.cancelled_at = now
            self.admission.cancelled(prediction)
        body = {
            "status": "cancelled",
            "message": "Prediction canceled successfully",
            "predictionID": prediction.id,
        }
        return Reply(200, body)

    def executions(self, owner: str, params: Mapping[str, str], base_url: str) -> Reply:
        """GET /v1/executions: the whole organisation's predictions (every key's), one page."""
        now = self.clock()
        refusal = self.admission.request(owner, self.config.polls_count, now)
        if refusal:
            return refusal
        if not self.config.executions_endpoint:
            return error(404, "Not found")
        if self.dice.listing_fails():
            self.counters.faults["executions_error"] += 1
            return error(500, "Failed to list executions")
        query = parse_query(params, self.config.slug_spelling)
        if isinstance(query, str):
            return error(400, "Invalid query", message=query)
        page = list_page(
            self.predictions.values(),
            query,
            now=now,
            epoch=self.epoch,
            base_url=base_url,
            cost_usd=self.config.cost_per_image_usd,
            foreign=self.config.foreign_executions,
            count_cap=self.config.executions_count_cap,
            spelling=self.config.slug_spelling,
            lag_s=self.config.scaled(self.config.executions_lag_s),
        )
        return Reply(200, page)

    def _describe(self, prediction: Prediction, base_url: str, now: float) -> dict[str, Any]:
        status = prediction.status(now)
        output: Any = None
        if status == "success":
            output = prediction.output_value(base_url)
        elif status == "error":
            output = prediction.error_output()
            if self.config.minimal_errors:
                output = {"error": output["error_message"]}
        ended = status in ("success", "error")
        api_url = f"{base_url}/v1/prediction/{prediction.id}"
        return {
            "id": prediction.id,
            "input": prediction.raw_input,
            "status": self.config.success_status if status == "success" else status,
            "output": output,
            "logs": "sandbox render\n" if status == "success" else "",
            "metrics": {
                "predict_time": round(prediction.fate.run_s, 4) if ended else None,
                "cost": self.config.cost_per_image_usd * prediction.images if status == "success" else 0.0,
            },
            "urls": {"get": api_url, "cancel": f"{api_url}/cancel"},
        }

    # --- outputs, stats -----------------------------------------------------------------------------

    async def output(self, name: str) -> tuple[int, bytes | dict[str, Any], str]:
        """The image behind an output URL, rendered in a worker thread and cached per render key; an array
        model's output `<id>.<index>.<format>` is image `index` of its prediction, each one different."""
        prediction_id, _, fmt = name.rpartition(".")
        prediction_id, _, index = prediction_id.partition(".")
        prediction = self.predictions.get(prediction_id)
        now = self.clock()
        if prediction is None or fmt != prediction.output_format or prediction.status(now) != "success":
            return 404, {"error": "Output not found"}, ""
        if (index or prediction.outputs) and not (index.isdigit() and int(index) < prediction.outputs):
            return 404, {"error": "Output not found"}, ""
        if prediction.output_expired(now, self.config.url_lifetime):
            return 410, {"error": "Output expired"}, ""
        assert prediction.size is not None  # a success has its size, read from any input image it needed
        inputs = (
            {**prediction.inputs, "output_index": int(index)} if index and int(index) else prediction.inputs
        )
        key = render_key(prediction.model, inputs, prediction.size)
        data = self.renders.get(key)
        if data is None:
            data = await asyncio.to_thread(render, key, inputs, prediction.size)
            self.renders.put(key, data)
        return 200, data, fmt

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters.snapshot(self.clock()),
            "held_by_others": self.admission.held_by_others,
            "cancel_late_s": self.config.scaled(self.config.cancel_late_s),  # an ignored cancel's delay
        }

    def reset(self) -> None:
        self.counters = Counters()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
