"""promptgrid's version, read once from the installed distribution (a marker when run from a bare tree)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("promptgrid")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0.0.0+source"
