"""promptgrid: prompt grids to image datasets through a hosted text-to-image prediction API.

The Python API, for notebooks and scripts (docs/python.md):

    spec = promptgrid.load_spec("study.yaml")        # checked as `promptgrid run` checks it
    print(promptgrid.plan(spec))                     # jobs, requests, time and cost; nothing sent
    summary = promptgrid.run(spec, sandbox=True)     # the run; from a script or a running notebook
    df = promptgrid.read_manifest(summary)           # pandas, one row per image
    promptgrid.contact_sheet(df, rows="steps", cols="cfg")
    promptgrid.open_image(df.iloc[0])

Importing promptgrid stays cheap: each name loads its module (and Prefect, pandas, Pillow) when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from promptgrid.version import VERSION as __version__

if TYPE_CHECKING:
    from promptgrid.notebook.frames import read_manifest
    from promptgrid.notebook.pictures import ManifestRow, contact_sheet, open_image
    from promptgrid.notebook.runs import run
    from promptgrid.notebook.specs import Plan, load_spec, plan
    from promptgrid.run_summary import RunSummary
    from promptgrid.spec.schema import SweepSpec

# Each public name and the module it lives in, imported on first use (PEP 562).
_PUBLIC = {
    "load_spec": "promptgrid.notebook.specs",
    "plan": "promptgrid.notebook.specs",
    "Plan": "promptgrid.notebook.specs",
    "run": "promptgrid.notebook.runs",
    "RunSummary": "promptgrid.run_summary",
    "read_manifest": "promptgrid.notebook.frames",
    "contact_sheet": "promptgrid.notebook.pictures",
    "open_image": "promptgrid.notebook.pictures",
    "ManifestRow": "promptgrid.notebook.pictures",
    "SweepSpec": "promptgrid.spec.schema",
}

__all__ = [
    "ManifestRow",
    "Plan",
    "RunSummary",
    "SweepSpec",
    "__version__",
    "contact_sheet",
    "load_spec",
    "open_image",
    "plan",
    "read_manifest",
    "run",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'promptgrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
