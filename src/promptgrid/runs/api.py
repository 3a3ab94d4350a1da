"""Which API a run talks to: the configured one (its key required, its reachability checked before anything
starts), or a sandbox started for the run; and the limits a run keeps to on a faster clock."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from promptgrid.runs.options import ApiOptions
from promptgrid.settings import API_KEY_ENV, ApiSettings, require_api_key
from promptgrid.spec.schema import ApiConfig


def require_key_unless_sandbox(options: ApiOptions, settings: ApiSettings, sandbox_hint: str) -> None:
    """InvalidInput (exit 2) when no key is set for an API other than a sandbox started for the run."""
    if not options.sandbox:
        require_api_key(settings, sandbox_hint)


def check_api(options: ApiOptions, base_url: str) -> None:
    """ApiUnreachable at once, naming the URL, when the configured API cannot be reached (Prefect's import
    and start-up take seconds); a sandbox started for the run needs no check."""
    if not options.sandbox:
        from promptgrid.api.reach import check_reachable  # httpx: only where an API is asked

        check_reachable(base_url)


@contextlib.contextmanager
def api_for_run(options: ApiOptions, say: Callable[[str], None]) -> Iterator[str | None]:
    """Yield the API base URL to use: a freshly started sandbox's, or None for the configured API.

    The sandbox gets a key made up for this run, so a real key in the environment is never sent to it.
    """
    if not options.sandbox:
        yield None
        return
    from promptgrid.sandbox.server import SandboxConfig, running_sandbox

    key = f"sandbox-{secrets.token_hex(12)}"
    saved = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = key
    try:
        with running_sandbox(SandboxConfig(time_scale=options.scale, api_key=key)) as sandbox:
            say(f"sandbox API at {sandbox.url} (x{options.scale:g} time): images are sandbox renders")
            yield sandbox.url
    finally:
        if saved is None:
            os.environ.pop(API_KEY_ENV, None)
        else:
            os.environ[API_KEY_ENV] = saved


def run_settings(
    options: ApiOptions, api: ApiConfig, sandbox_url: str | None
) -> tuple[ApiOptions, dict[str, tuple[Any, str]]]:
    """The options a run goes on with, and the settings they replace (value, origin) for the settings table:
    the sandbox's URL, and an explicit rate limit's window shrunk by the clock's speed (`auto` needs no
    scaling: it reads the API's own limits)."""
    replaced: dict[str, tuple[Any, str]] = {}
    base, rate_limit = options.api_base, options.rate_limit
    if sandbox_url:
        base = sandbox_url
        replaced["api.base_url"] = (base, "--sandbox")
    limit = api.rate_limit
    if options.scale != 1.0 and limit.requests is not None:
        rate_limit = f"{limit.requests}/{limit.window_s / options.scale:g}s"
        replaced["api.rate_limit"] = (rate_limit, f"x{options.scale:g} time")
    changed = ApiOptions(base, rate_limit, options.max_concurrent, options.polls_count, False, options.scale)
    return changed, replaced
