"""Secrets scrubbed from every string promptgrid stores or prints, whatever that string's source.

The API key is registered here when it is read (`promptgrid.settings.ApiKey`). From then on `scrub` replaces
it with `***` in every spelling an API or a file could carry it in: as written; percent-encoded (each
character as itself or `%XX`, either case); and inside base64, whatever text surrounds it (`Authorization:
Basic base64(user:key)`), in both alphabets. A key inside base64 lands at one of three alignments to the
encoding's 3-byte groups; for each, the characters that encode the key alone are the same whatever
surrounds it, and those are what is masked (the one or two characters at each edge, shared with the
neighbouring text, give away at most a few bits). Every log record the process creates is scrubbed too:
the record factory is wrapped once, so Prefect's handlers, which ship records to its database, only ever
see the scrubbed text. An API that echoes the key therefore cannot get it into the manifest, the report,
stderr, the logs or Prefect's database.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from typing import Any

MASK = "***"
# A shorter "secret" would mangle ordinary text; real keys are far longer.
MIN_SECRET_LENGTH = 8
_URLSAFE = str.maketrans("+/", "-_")

_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None
_ordered: tuple[str, ...] = ()  # the forms as written, longest first
_lock = threading.Lock()
_factory_installed = False


def add_secret(value: str) -> None:
    """Scrub `value` (in every spelling `secret_forms` gives) from everything the process stores or prints."""
    global _secrets, _pattern, _ordered
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets = _secrets | secret_forms(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))
        _pattern = re.compile("|".join(_tolerant(form) for form in _ordered))
        _install_record_factory()


def secret_forms(value: str) -> frozenset[str]:
    """`value` itself and the part of any base64 text that can only come from it, at each of the three
    alignments, in the standard and the URL-safe alphabet."""
    data = value.encode("utf-8")
    forms = {value}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start = -(-8 * offset // 6)  # the first character holding no bit of the bytes before the key
        end = 8 * (offset + len(data)) // 6  # past the last one holding no bit of the bytes after it
        core = encoded[start:end]
        forms |= {core, core.translate(_URLSAFE)}
    return frozenset(forms)


def _tolerant(form: str) -> str:
    """A pattern for `form` with any of its characters percent-encoded (hex in either case), and a `/`
    also as JSON's escaped `\\/`."""
    parts = []
    for char in form:
        encoded = urllib.parse.quote(char, safe="") if not char.isascii() else f"%{ord(char):02X}"
        hex_any_case = re.sub(r"[A-F]", lambda m: f"[{m.group()}{m.group().lower()}]", encoded)
        spellings = [re.escape(char), hex_any_case] + ([r"\\/"] if char == "/" else [])
        parts.append(f"(?:{'|'.join(spellings)})")
    return "".join(parts)


def scrub(text: str) -> str:
    """`text` with every registered secret, in any of its spellings, replaced by `***`."""
    pattern, forms = _pattern, _ordered
    if pattern is None:
        return text
    if "%" in text or "\\/" in text:
        return pattern.sub(MASK, text)
    # Nothing percent-encoded or escaped: only a form as written can be here, and looking for each
    # is some 50 times faster than the pattern (this runs on every string of every manifest row).
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def scrub_any(value: Any) -> Any:
    """A string scrubbed; any other value as it is."""
    return scrub(value) if isinstance(value, str) and _pattern is not None else value


def _install_record_factory() -> None:
    """Wrap logging's record factory once: each record's message is formatted and scrubbed at birth."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _pattern is None:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let logging report it as it always does
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            # Formatted now, so the traceback text a handler prints or ships is scrubbed too.
            text = logging.Formatter().formatException(record.exc_info)
            if scrub(text) != text:
                record.exc_text = scrub(text)
        return record

    logging.setLogRecordFactory(scrubbed_record)
    _factory_installed = True
