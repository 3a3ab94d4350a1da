"""Which slug each model's creates are sent with during a run, and what a create answered 404 changes.

A create the API answers 404 (model not found) was refused, so it created and billed nothing and may be sent
again. The first such answer for a model makes the run resolve that model again, once: the model endpoint is
asked for every spelling not yet refused (or, when it is unavailable, the other spelling is simply tried). If
that finds nothing, or the new slug is refused too, the model is missing: its jobs fail with MODEL_NOT_FOUND
and no further create is sent for it. Many jobs refused at once cause one resolution, not one each.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping

from promptgrid.api.gateway import Gateway
from promptgrid.api.resolve import ModelEndpoints
from promptgrid.errors import ApiError
from promptgrid.models.slugs import spellings


class ModelRoutes:
    """promptgrid's name of each model -> the slug sent; one more resolution per model after a 404."""

    def __init__(self, slugs: Mapping[str, str] | None = None, *, retry_s: float = 1.0):
        self.retry_s = retry_s
        self._slugs = dict(slugs or {})
        self._refused: defaultdict[str, list[str]] = defaultdict(list)
        self._resolved_again: set[str] = set()
        self._missing: dict[str, str] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def slug_for(self, model: str) -> str:
        return self._slugs.get(model, model)

    def missing(self, model: str) -> str | None:
        """Why no create is sent for this model any more, or None while it may be."""
        return self._missing.get(model)

    async def after_not_found(self, gateway: Gateway, model: str, refused: str) -> str | None:
        """The slug to send instead of `refused`, or None when the model's jobs must fail (see `missing`);
        the model is looked up again through `gateway`."""
        async with self._locks[model]:
            if model in self._missing:
                return None
            current = self.slug_for(model)
            if refused != current:  # another job already moved on while this one's create was out
                return current
            self._refused[model].append(refused)
            if model not in self._resolved_again:
                self._resolved_again.add(model)
                found = await self._resolve_again(gateway, model, refused)
                if found is not None:
                    self._slugs[model] = found
                    return found
            tried = " and then ".join(repr(slug) for slug in self._refused[model])
            self._missing[model] = (
                f"the API answered 404 (model not found) to creates for {tried}, after resolving the model "
                "again; a refused create creates and bills nothing. Check the slug "
                f"(`promptgrid models show {model}`)"
            )
            return None

    async def _resolve_again(self, gateway: Gateway, model: str, refused: str) -> str | None:
        """A spelling not refused yet that the API knows; when its endpoint cannot say, one not denied."""
        refused_before = self._refused[model]
        candidates = list(dict.fromkeys([*spellings(refused), *spellings(model)]))
        denied: set[str] = set()
        endpoints = ModelEndpoints(gateway, retry_s=self.retry_s)
        try:
            for slug in candidates:
                answer = await endpoints.ask(slug)
                if answer.schema is not None and slug not in refused_before:
                    return slug
                if answer.not_found:
                    denied.add(slug)
                elif answer.schema is None:
                    break  # the endpoint is of no use now: try what is left blindly
        except ApiError:
            pass  # the same: a create's 404 is the only answer there is
        untried = [slug for slug in candidates if slug not in refused_before and slug not in denied]
        return untried[0] if untried else None
