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
SRC = ROOT / "src"
PACKAGE = SRC / "promptgrid"
MAX_MODULE_LINES = 400


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_module_lives_at_its_import_path():
    # One root: the installed packages are exactly the folders under src/promptgrid, found by setuptools.
    assert pyproject()["tool"]["setuptools"]["packages"]["find"] == {"where": ["src"]}
    stray = [p.name for p in (ROOT / "tasks", ROOT / "flows", ROOT / "sandbox") if p.exists()]
    assert stray == []
    missing_init = [
        str(folder.relative_to(ROOT))
        for folder in PACKAGE.rglob("*")
        if folder.is_dir()
        and folder.name != "__pycache__"
        and any(folder.glob("*.py"))
        and not (folder / "__init__.py").exists()
    ]
    assert missing_init == []


def test_every_module_in_tasks_defines_a_prefect_task():
    # tasks/ means what Prefect means by it: each module holds @tasks the flows call, so the UI shows them.
    import importlib

    from prefect import Task

    modules = sorted(p for p in (PACKAGE / "tasks").glob("*.py") if p.name != "__init__.py")
    assert modules
    without = [
        path.name
        for path in modules
        if not any(
            isinstance(value, Task)
            for value in vars(importlib.import_module(f"promptgrid.tasks.{path.stem}")).values()
        )
    ]
    assert without == []


def test_flows_hold_only_flows_and_the_faces_share_one_run_service():
    from prefect import Flow

    flows = sorted(p for p in (PACKAGE / "flows").glob("*.py") if p.name != "__init__.py")
    for path in flows:
        text = path.read_text(encoding="utf-8")
        assert "@task" not in text, path.name
        assert "@flow" in text, path.name
    import promptgrid.flows.generate as generate

    assert isinstance(generate.generate, Flow)
    faces = {"cli": PACKAGE / "cli", "notebook": PACKAGE / "notebook"}
    for face, folder in faces.items():
        other = "notebook" if face == "cli" else "cli"
        for path in folder.glob("*.py"):
            assert f"promptgrid.{other}" not in path.read_text(encoding="utf-8"), path


def test_no_module_reads_the_version_from_the_package_face():
    readers = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if "promptgrid.__version__" in path.read_text(encoding="utf-8")
    ]
    assert readers == []


def test_no_module_is_over_the_size_guideline():
    long = {
        str(path.relative_to(ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_every_error_code_is_explained_in_the_docs():
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert [code.value for code in ErrorCode if f"`{code.value}`" not in text] == []


@pytest.mark.integration  # builds a wheel
@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("promptgrid-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"promptgrid"}
    assert "promptgrid/engine/engine.py" in names and "promptgrid/flows/generate.py" in names
