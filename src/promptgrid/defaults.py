"""Values promptgrid falls back to when neither a flag, the environment nor the spec sets them."""

from __future__ import annotations

API_BASE = "https://api.eachlabs.ai"
MODEL = "stable-diffusion-3-5-large"
# The create body's `version`: ignored by the API today, required by older servers and SDKs.
MODEL_VERSION = "0.0.1"
# The indicative price of one SD3.5 Large image, for estimates and for runs whose API reports no cost.
PRICE_PER_IMAGE_USD = 0.065
# The quota the model page states. A spec's `api.rate_limit` defaults to auto (no cap until the API shows
# one); an explicit `api.rate_limit` and `api.max_concurrent` override these.
RATE_LIMIT_REQUESTS = 60
RATE_LIMIT_WINDOW_S = 60.0
MAX_CONCURRENT = 10
# The API's own timeout for a prediction: one still running past it is stuck.
PREDICTION_DEADLINE_S = 300.0
# What a prediction typically takes on the real API, for estimates before anything is measured.
TYPICAL_LATENCY_S = 8.0
# The longest prompt a rendered template may make: Stability's own API for SD3.5 caps prompts at 10,000
# characters, and Eachlabs publishes no cap of its own.
MAX_PROMPT_CHARS = 10_000
# Overall deadlines, besides the per-read timeouts: one API request, one output download.
REQUEST_DEADLINE_S = 120.0
DOWNLOAD_DEADLINE_S = 120.0
# The output lease: how long a run's claim on its output lasts unless renewed (it is renewed every third).
OUTPUT_LEASE_TTL_S = 60.0
