"""Whether a prediction the API reports was made from the inputs a create sent: compared as sent, not guessed.

Every input that was sent must be in the prediction's echoed inputs, equal as it was sent: a string as the
same string ("10" is not "1e1"), a number by value (the API may echo it as a JSON number or as text, and the
model's schema made it a number before it was sent), a boolean as a boolean. An input image is its URL:
the same URL, or the same staged file (`inputs/<sha256>.<ext>`, whose name is its content's hash) wherever
it was served from, since a staged file is served from another address on every run. Nothing is ignored; a
null that was sent matches a null or an absent input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

# A staged input image's name: the hash of its content (promptgrid.output.keys.input_key).
_STAGED = re.compile(r"/inputs/([0-9a-f]{64}\.(?:png|jpg|webp))$")


def same_inputs(sent: Mapping[str, Any], echoed: Mapping[str, Any]) -> bool:
    """Whether `echoed` (what the API reports a prediction was made from) is every input in `sent`."""
    for name, value in sent.items():
        if value is None and echoed.get(name) is None:
            continue
        if name not in echoed or not same_value(value, echoed[name]):
            return False
    return True


def same_value(sent: Any, echoed: Any) -> bool:
    """One input compared as it was sent (see the module docstring)."""
    if isinstance(sent, bool) or isinstance(echoed, bool):
        return isinstance(sent, bool) and isinstance(echoed, bool) and sent is echoed
    if isinstance(sent, str):
        return isinstance(echoed, str) and (echoed == sent or _same_staged_image(sent, echoed))
    if isinstance(sent, int | float):
        number = _number(echoed)
        return number is not None and number == sent
    if isinstance(sent, list | tuple):
        return (
            isinstance(echoed, list | tuple)
            and len(sent) == len(echoed)
            and all(same_value(a, b) for a, b in zip(sent, echoed, strict=True))
        )
    if isinstance(sent, Mapping):
        return isinstance(echoed, Mapping) and set(sent) == set(echoed) and same_inputs(sent, echoed)
    return bool(sent == echoed)


def _number(value: Any) -> float | None:
    """A number echoed as a JSON number or as its text; None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _same_staged_image(sent: str, echoed: str) -> bool:
    """Two URLs of one staged input file (named by its content's hash), served from different addresses."""
    staged = staged_image(sent)
    return staged is not None and staged == staged_image(echoed)


def staged_image(url: str) -> str | None:
    """The staged file a URL serves (`<sha256>.<ext>`), or None for any other URL."""
    if not url.startswith(("http://", "https://")):
        return None
    found = _STAGED.search(urlsplit(url).path)
    return found.group(1) if found else None
