"""The house rules a change can break without failing any behaviour: one installed name, modules of a
readable size, every package installed, every error code documented."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from promptgrid.types import ErrorCode

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's source lives (pyproject.toml's package-dir).
SOURCE_ROOTS = {
    "promptgrid": ROOT / "src" / "promptgrid",
    "promptgrid.tasks": ROOT / "tasks",
    "promptgrid.flows": ROOT / "flows",
    "promptgrid.sandbox": ROOT / "sandbox",
}
MAX_MODULE_LINES = 400


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_folders() -> set[str]:
    found = set()
    for name, root in SOURCE_ROOTS.items():
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((name, *relative)))
    return found


def test_every_package_folder_is_installed():
    assert set(pyproject()["tool"]["setuptools"]["packages"]) == package_folders()


def test_package_dir_maps_the_stage_folders_under_promptgrid():
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    assert {name: ROOT / path for name, path in mapping.items()} == SOURCE_ROOTS


def test_no_module_is_over_the_size_guideline():
    long = {
        str(path.relative_to(ROOT)): lines
        for root in SOURCE_ROOTS.values()
        for path in root.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_every_error_code_is_explained_in_the_docs():
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert [code.value for code in ErrorCode if f"`{code.value}`" not in text] == []


@pytest.mark.integration  # builds a wheel
def test_the_wheel_installs_one_top_level_name(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("promptgrid-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"promptgrid"}
    assert "promptgrid/tasks/engine/engine.py" in names and "promptgrid/flows/generate.py" in names
