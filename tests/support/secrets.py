"""Where a test looks for a leaked API key: what was printed, the output, and Prefect's own files."""

from __future__ import annotations

from pathlib import Path


def assert_key_nowhere(api_key: str, printed: str, output: Path) -> list[Path]:
    """Fail if the key is in `printed`, a file of `output` or a file of Prefect's home or database;
    returns Prefect's files (the database among them), for a test to look further."""
    assert api_key not in printed
    for path in output.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME

    database = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    folders = {Path(PREFECT_HOME.value())} | {Path(part).parent for part in database.split("///")[1:]}
    files = [path for folder in folders if folder.exists() for path in folder.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in files), "the Prefect database was not found"
    for path in files:
        assert api_key.encode() not in path.read_bytes(), path
    return files
