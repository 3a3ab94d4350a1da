"""Where a test looks for a leaked API key: what was printed, the output, and Prefect's own files; in every
spelling an API could echo it in."""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path


def key_forms(api_key: str) -> set[str]:
    """The key as sent, percent-encoded, and the part of base64 that encodes only it, for the key at each
    of the three alignments to base64's 3-byte groups, in both alphabets (and those percent-encoded)."""
    forms = {api_key, urllib.parse.quote(api_key, safe=""), urllib.parse.quote_plus(api_key)}
    for lead in ("", "a", "ab"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            # Groups 2 to the one before last hold key bytes only, aligned as in any text where the key
            # starts `len(lead)` bytes into a group.
            middle = encode(f"{lead}{api_key}".encode()).decode()[4:-4]
            forms |= {middle, urllib.parse.quote(middle, safe="")}
    return forms


def find_key(api_key: str, data: str | bytes) -> list[str]:
    """The spellings of the key found in `data`."""
    text = data if isinstance(data, str) else data.decode("latin-1")
    return sorted(form for form in key_forms(api_key) if form in text)


def assert_key_nowhere(api_key: str, printed: str, output: Path) -> list[Path]:
    """Fail if the key, in any spelling, is in `printed`, a file of `output` or a file of Prefect's home or
    database; returns Prefect's files (the database among them), for a test to look further."""
    assert find_key(api_key, printed) == []
    for path in output.rglob("*"):
        if path.is_file():
            assert find_key(api_key, path.read_bytes()) == [], path
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME

    database = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    folders = {Path(PREFECT_HOME.value())} | {Path(part).parent for part in database.split("///")[1:]}
    files = [path for folder in folders if folder.exists() for path in folder.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in files), "the Prefect database was not found"
    for path in files:
        assert find_key(api_key, path.read_bytes()) == [], path
    return files
