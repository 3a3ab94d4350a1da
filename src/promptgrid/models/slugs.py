"""Model slugs and their two spellings: the dotted one a model page's snippet writes (`3.5`) and the dashed
one its URL uses (`3-5`).

Which spelling the live API knows is asked, never assumed (`promptgrid.api.resolve`); the dashed
spelling is only promptgrid's own name for a model, the one job ids hash, so both spellings make the same
jobs.
"""

from __future__ import annotations

import re

_DOT_BETWEEN_DIGITS = re.compile(r"(?<=\d)\.(?=\d)")
_DASH_BETWEEN_DIGITS = re.compile(r"(?<=\d)-(?=\d)")


def canonical_slug(slug: str) -> str:
    """promptgrid's name for a model: the slug with every dot between two digits made a dash."""
    return _DOT_BETWEEN_DIGITS.sub("-", slug.strip())


def dotted_slug(slug: str) -> str:
    """The slug with every dash between two digits made a dot (`stable-diffusion-3.5-large`)."""
    return _DASH_BETWEEN_DIGITS.sub(".", slug.strip())


def spellings(slug: str) -> list[str]:
    """The slug as written first, then its other spelling when it has one (dotted <-> dashed)."""
    written = slug.strip()
    other = canonical_slug(written) if _DOT_BETWEEN_DIGITS.search(written) else dotted_slug(written)
    return [written] if other == written else [written, other]
