"""The sandbox's settings: limits, latency and fault rates, all in "real API" seconds, and its clock.

Two descriptions of the API's limits can be served (`limit_model`):

- "page", the model page's: per key, at most `rate_limit` requests in any trailing `window_s` (polls and
  cancels counted unless told otherwise) and `max_in_flight` predictions in flight.
- "docs", the current documentation's: no request-rate limit; `max_in_flight` is the organisation's cap on
  concurrent executions, shared by every key and by `held_by_others` slots other keys occupy; its 429s speak
  of "concurrent executions", and only executions finishing clear them.

Either way `payment_limit` can add 402s (the executions in flight cost more than the balance), and
`cancel_ignored_rate` makes cancels best effort, as the API says they are.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from promptgrid.defaults import PRICE_PER_IMAGE_USD

# Retryable provider failures and final ones, in the proportions the sandbox draws them.
DEFAULT_ERROR_CODES: tuple[tuple[str, bool], ...] = (
    ("PROVIDER_SERVER_ERROR", True),
    ("PROVIDER_RATE_LIMIT", True),
    ("PROVIDER_REJECTED", False),
)


LIMIT_MODELS = ("page", "docs")


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves. Durations are the real API's; `time_scale` divides every one of them."""

    time_scale: float = 1.0
    limit_model: str = "page"
    rate_limit: int = 60  # the page model's; the docs model has no request-rate limit
    window_s: float = 60.0
    max_in_flight: int = 10  # per key (page) or for the whole organisation (docs)
    polls_count: bool = True
    cancels_count: bool = True
    retry_after: bool = True  # whether 429s say when to come back (the docs call it optional)
    held_by_others: int = 0  # in-flight slots other keys of the organisation occupy
    payment_limit: int | None = None  # 402 for a create while this many predictions are in flight
    # The errors page's 429s that name no limit: every create answered a bare 429 (no rate, no slots named,
    # no Retry-After), or more creates than `burst_limit` in one second answered "too many executions were
    # started at once" (transient: neither a rate nor slots).
    bare_429: bool = False
    burst_limit: int | None = None
    # Share of cancels the API acknowledges but does not carry out: the prediction runs on, holding its slot,
    # and ends as it would have (a success is billed); one that would never finish ends `cancelled_late_s` on.
    cancel_ignored_rate: float = 0.0
    cancel_late_s: float = 30.0
    latency_median_s: float = 8.0
    latency_sigma: float = 0.25
    # A heavy tail: this share of predictions takes 1x to `latency_tail_factor`x (log-uniform) longer.
    latency_tail_rate: float = 0.0
    latency_tail_factor: float = 5.0
    # Share of the latency a prediction spends `created` (queued) before it is `processing`.
    queue_share: float = 0.1
    api_key: str | None = field(default=None, repr=False)
    seed: int = 0
    create_5xx_rate: float = 0.0
    get_5xx_rate: float = 0.0
    drop_rate: float = 0.0
    # Of the creates whose connection is dropped, the share that did create a prediction first.
    drop_after_create_share: float = 0.5
    # Creates whose prediction is made (and billed) and then answered 500 "Failed to create prediction"; and
    # creates whose answer is held back `held_answer_s`, then the connection dropped (a lost answer).
    create_made_5xx_rate: float = 0.0
    create_held_rate: float = 0.0
    held_answer_s: float = 30.0
    error_rate: float = 0.0
    error_codes: tuple[tuple[str, bool], ...] = DEFAULT_ERROR_CODES
    never_finish_rate: float = 0.0
    url_lifetime_s: float = 3600.0
    # A slow output host: outputs are sent one byte every `output_drip_s` (0: at once).
    output_drip_s: float = 0.0
    # GET /v1/executions: absent (404, as on servers that never had it), or failing a share of the time
    # (500), since Eachlabs has called the listing unreliable.
    executions_endpoint: bool = True
    executions_fail_rate: float = 0.0
    # A busy organisation: other members' executions of the model asked for, newer than ours (listed ahead),
    # and `total_count` capped at `executions_count_cap` (then `total_capped: true`: a lower bound).
    foreign_executions: int = 0
    executions_count_cap: int | None = None
    # A lagging listing: it shows each prediction as it stood `executions_lag_s` (API seconds) before.
    executions_lag_s: float = 0.0
    # A misbehaving API: error answers and failed predictions echo the caller's key in codes and messages.
    echo_key: bool = False
    cost_per_image_usd: float = PRICE_PER_IMAGE_USD
    # The API's variants: which model slug spelling it knows ("any", "dotted", "dashed"), whether it reads
    # only `Authorization: Bearer`, which model endpoints answer ("model": GET /v1/model, "openapi": the
    # per-model OpenAPI document; the others answer 503), the word for success ("completed" in the Python
    # docs), errors as the minimal `{error}`, and outputs `size_delta_px` off the expected size each way.
    slug_spelling: str = "any"
    bearer_only: bool = False
    model_endpoints: tuple[str, ...] = ("model", "openapi")
    success_status: str = "success"
    minimal_errors: bool = False
    size_delta_px: int = 0
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.time_scale <= 0:
            problems.append("time_scale must be positive")
        if self.rate_limit < 1 or self.window_s <= 0:
            problems.append("rate_limit must be at least 1 and window_s positive")
        if self.max_in_flight < 1:
            problems.append("max_in_flight must be at least 1")
        if self.limit_model not in LIMIT_MODELS:
            problems.append(f"limit_model must be one of {', '.join(LIMIT_MODELS)}")
        if not 0 <= self.held_by_others <= self.max_in_flight:
            problems.append("held_by_others must be between 0 and max_in_flight")
        if self.payment_limit is not None and self.payment_limit < 1:
            problems.append("payment_limit must be at least 1")
        if self.burst_limit is not None and self.burst_limit < 1:
            problems.append("burst_limit must be at least 1")
        if self.cancel_late_s < 0 or self.latency_tail_factor < 1:
            problems.append("cancel_late_s must be >= 0 and latency_tail_factor >= 1")
        if self.latency_median_s < 0 or self.latency_sigma < 0 or self.url_lifetime_s <= 0:
            problems.append("latency_median_s and latency_sigma must be >= 0, url_lifetime_s positive")
        if self.output_drip_s < 0 or self.held_answer_s < 0 or self.executions_lag_s < 0:
            problems.append("output_drip_s, held_answer_s and executions_lag_s must be >= 0")
        if self.foreign_executions < 0 or (self.executions_count_cap or 1) < 1:
            problems.append("foreign_executions must be >= 0 and executions_count_cap at least 1")
        rates = (
            *("create_5xx_rate", "get_5xx_rate", "drop_rate", "error_rate", "never_finish_rate"),
            *("cancel_ignored_rate", "latency_tail_rate", "executions_fail_rate"),
            *("create_made_5xx_rate", "create_held_rate"),
        )
        for name in (*rates, "drop_after_create_share", "queue_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if not self.error_codes:
            problems.append("error_codes must name at least one code")
        if self.slug_spelling not in ("any", "dotted", "dashed"):
            problems.append("slug_spelling must be any, dotted or dashed")
        if set(self.model_endpoints) - {"model", "openapi"}:
            problems.append("model_endpoints may name only model and openapi")
        if self.success_status not in ("success", "completed", "succeeded"):
            problems.append("success_status must be success, completed or succeeded")
        if self.size_delta_px < -200:
            problems.append("size_delta_px must be at least -200")
        if problems:
            raise ValueError("; ".join(problems))

    def scaled(self, seconds: float) -> float:
        """A duration of the real API as the sandbox's clock runs it."""
        return seconds / self.time_scale

    @property
    def rate_limited(self) -> bool:
        """Whether requests are limited per window (the page model) or only executions in flight (docs)."""
        return self.limit_model == "page"

    @property
    def window(self) -> float:
        return self.scaled(self.window_s)

    @property
    def url_lifetime(self) -> float:
        return self.scaled(self.url_lifetime_s)


class ManualClock:
    """A clock tests move by hand, so windows and latencies pass without waiting them out."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def system_clock() -> float:
    return time.monotonic()
