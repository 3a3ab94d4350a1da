"""Whether the API can be reached at all, asked once before a run starts anything else.

One GET of the base URL, without the key: any HTTP answer (even a 404) proves the host resolves and
accepts connections. A DNS failure or a refused or timed-out connection is ApiUnreachable, the same error
the engine raises when a run's first requests cannot connect, so both read alike.
"""

from __future__ import annotations

import httpx

from promptgrid.errors import ApiUnreachable

PROBE_TIMEOUT_S = 10.0
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)


def check_reachable(
    base_url: str, *, timeout_s: float = PROBE_TIMEOUT_S, transport: httpx.BaseTransport | None = None
) -> None:
    """Return when the API at `base_url` answers anything; raise ApiUnreachable when it cannot be reached."""
    try:
        with httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False) as client:
            client.get(base_url.rstrip("/") + "/")
    except _UNREACHABLE as exc:
        raise ApiUnreachable(base_url.rstrip("/"), f"{type(exc).__name__}: {exc}") from None
    except httpx.HTTPError:
        return  # it connected: whatever went wrong after is for the run's own requests to meet
