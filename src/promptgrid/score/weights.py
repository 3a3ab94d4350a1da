"""Where learned metrics' weights come from: a local folder, or a Hugging Face repository id fetched once.

A repository is downloaded with huggingface_hub's `snapshot_download` into its usual cache (so later runs
read it from disk, and `HF_HUB_OFFLINE=1` works once it is there), and only the files promptgrid reads:
the JSON configs, the tokenizer, and the ONNX files of one layout (docs/scores.md). Both need the
optional extra: `pip install 'promptgrid[scores]'`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from promptgrid.errors import InvalidInput

DEFAULT_CLIP = "Xenova/clip-vit-base-patch32"
INSTALL_HINT = "install the optional extra: pip install 'promptgrid[scores]'"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SPLIT_FILES = ("text_model.onnx", "vision_model.onnx")
COMBINED_FILE = "model.onnx"
AESTHETIC_FILE = "aesthetic.onnx"
_SMALL_FILES = ["*.json", "*.txt"]


def require(module: str) -> Any:
    """Import an optional dependency of the learned metrics; InvalidInput naming the extra when missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidInput([f"learned metrics need {module}: {INSTALL_HINT}"]) from None


def locate(where: str, files: list[list[str]], what: str) -> Path:
    """The local folder holding a model: `where` itself, or the cached snapshot of a repository id.

    `files` are alternative sets of ONNX file names; a repository is fetched with the first set it has.
    """
    folder = Path(where).expanduser()
    if folder.is_dir():
        return folder
    if not _REPO_ID.match(where):
        raise InvalidInput([f"{what}: {where!r} is neither a folder nor a Hugging Face repository id"])
    hub = require("huggingface_hub")
    for names in files:
        patterns = _SMALL_FILES + [pattern for name in names for pattern in (name, f"onnx/{name}")]
        try:
            folder = Path(hub.snapshot_download(repo_id=where, allow_patterns=patterns))
        except Exception as exc:  # huggingface_hub's: offline, no such repository, no access
            raise InvalidInput(
                [f"{what}: cannot fetch {where!r} from the Hugging Face Hub ({exc})"]
            ) from None
        if all(find_file(folder, name) for name in names):
            return folder
    return folder


def find_file(folder: Path, name: str) -> Path | None:
    """`name` at the folder's top, or under `onnx/` (the layout transformers.js exports use)."""
    for candidate in (folder / name, folder / "onnx" / name):
        if candidate.is_file():
            return candidate
    return None


def fingerprint(paths: list[Path]) -> str:
    """A short fingerprint of model files (names and sizes): other weights mean other scores."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:10]
