"""Secrets scrubbed from every string promptgrid stores or prints, whatever that string's source.

The API key is registered here when it is read (`promptgrid.settings.ApiKey`). From then on `scrub` replaces
it (and its URL-encoded form) with `***`, and so does every log record the process creates: the record
factory is wrapped once, so Prefect's handlers, which ship records to its database, only ever see the
scrubbed text. An API that echoes the key inside an error code or message therefore cannot get it into the
manifest, the report, stderr, the logs or Prefect's database.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Any

MASK = "***"
# A shorter "secret" would mangle ordinary text; real keys are far longer.
MIN_SECRET_LENGTH = 8

_secrets: frozenset[str] = frozenset()
_lock = threading.Lock()
_factory_installed = False


def add_secret(value: str) -> None:
    """Scrub `value` (and its URL-encoded spelling) from everything the process stores or prints."""
    global _secrets
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
    with _lock:
        _secrets = _secrets | forms
        _install_record_factory()


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_any(value: Any) -> Any:
    """A string scrubbed; any other value as it is."""
    return scrub(value) if isinstance(value, str) and _secrets else value


def _install_record_factory() -> None:
    """Wrap logging's record factory once: each record's message is formatted and scrubbed at birth."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _secrets:
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
