"""Tests that need a system package (fonts, Chromium, redis-server) say which one, and how to install it.

A test marked `@pytest.mark.needs("chromium")` skips where the package is missing, its reason the exact
Debian command that installs it, so `make test` passes on a fresh machine with Python and make. CI installs
them all and sets PROMPTGRID_REQUIRE_SYSTEM=1 (`.ci/run`): there a missing package fails the test instead,
so nothing is skipped unnoticed.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable

import pytest

REQUIRE_ENV = "PROMPTGRID_REQUIRE_SYSTEM"
# A Japanese prompt and an em dash: what the contact sheets must draw with a font that has them.
CJK_SAMPLE = "富士山の夕焼け—水彩画"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@functools.cache
def wide_fonts_missing() -> str | None:
    """Why the installed fonts cannot draw a CJK prompt (fontconfig missing, or no font covers it)."""
    from promptgrid.report.fonts import installed_faces

    if shutil.which("fc-match") is None:
        return "fontconfig is not installed"
    faces = installed_faces()
    missing = [char for char in CJK_SAMPLE if not any(face.covers(char) for face in faces)]
    return f"no installed font draws {''.join(missing)!r}" if missing else None


def _program_missing(*names: str) -> Callable[[], str | None]:
    def check() -> str | None:
        found = any(shutil.which(name) for name in names)
        return None if found else f"{names[0]} is not installed"

    return check


# Each system package a test may need: (why it is missing, or None when present; the install command).
PACKAGES: dict[str, tuple[Callable[[], str | None], str]] = {
    "chromium": (_program_missing("chromium", "chromium-browser"), "apt-get install chromium"),
    "redis-server": (_program_missing("redis-server"), "apt-get install redis-server"),
    "cjk-fonts": (
        wide_fonts_missing,
        "apt-get install fontconfig fonts-noto-core fonts-noto-cjk fonts-dejavu-core",
    ),
}


def missing_reason(package: str) -> str | None:
    """None when `package` is usable here; else what is missing and the command that installs it."""
    if package not in PACKAGES:
        raise ValueError(f"unknown system package {package!r}; known: {', '.join(PACKAGES)}")
    check, install = PACKAGES[package]
    problem = check()
    return None if problem is None else f"{problem} (install it with: {install})"


def check_needs(item: pytest.Item) -> None:
    """Skip (or, under PROMPTGRID_REQUIRE_SYSTEM=1, fail) a test whose system packages are missing."""
    for marker in item.iter_markers("needs"):
        for package in marker.args:
            reason = missing_reason(package)
            if reason is None:
                continue
            if os.environ.get(REQUIRE_ENV) == "1":
                pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
            pytest.skip(reason)
