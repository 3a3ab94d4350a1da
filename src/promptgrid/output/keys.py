"""The layout of keys inside an output: where images, manifest parts, journal records and inputs live.

Every key is built from a small safe alphabet, so any prompt text or grid value gives a key that cannot
leave the output (no `..`, no `/` of its own, no odd characters) and is the same on every run.
"""

from __future__ import annotations

import re
import unicodedata

from promptgrid.types import Job

IMAGES_PREFIX = "images/"
MANIFEST_PREFIX = "manifest/"
JOURNAL_PREFIX = "journal/"
INPUTS_PREFIX = "inputs/"
MODELS_PREFIX = "models/"
SPEC_KEY = "spec.yaml"
SETTLED_KEY = "settled.json"  # when a spec last had nothing left (promptgrid.runs.settled)

SLUG_MAX = 48
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9._-]+")
# The API's names for an encoding differ from the file extensions people expect in a few cases.
_EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp", "tif": "tiff"}
_OTHER_EXTENSION = re.compile(r"^[a-z0-9]{2,5}$")  # any other image format Pillow reads (gif, bmp, ...)


def slugify(text: str, *, max_len: int = SLUG_MAX, fallback: str = "x") -> str:
    """An ascii slug of [a-z0-9-], at most `max_len` long: accents folded, everything else turned to `-`."""
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_SLUG.sub("-", folded.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or fallback


def safe_token(text: str, *, max_len: int = 64, fallback: str = "x") -> str:
    """An identifier (job id, run id, worker id) made safe as one key segment; ids already safe stay as is."""
    token = _NOT_TOKEN.sub("-", str(text)).strip(".-")[:max_len]
    return token or fallback


def image_extension(image_format: str) -> str:
    """The file extension for an image encoding (`jpeg` and `jpg` are both `jpg`)."""
    name = image_format.lower().lstrip(".")
    if name in _EXTENSIONS:
        return _EXTENSIONS[name]
    if _OTHER_EXTENSION.match(name):
        return name
    raise ValueError(f"unknown image format {image_format!r}; expected a name such as webp, jpg, png")


def image_key(job: Job, image_format: str, output_index: int = 0) -> str:
    """`images/<model>/<prompt-slug>/<job_id>.<ext>`: readable, and stable because the job id is.

    A prediction's further outputs (`num_images` > 1) are `<job_id>-<index>.<ext>`; the first keeps the
    plain name, so outputs written before several images were kept stay where their rows point.
    """
    prompt = str(job.inputs.get("prompt") or "")
    model = slugify(job.model, fallback="model")
    suffix = f"-{int(output_index)}" if output_index else ""
    name = f"{safe_token(job.job_id)}{suffix}.{image_extension(image_format)}"
    return f"{IMAGES_PREFIX}{model}/{slugify(prompt, fallback='prompt')}/{name}"


def manifest_part_key(run_id: str, worker_id: str, sequence: int) -> str:
    """A part name unique per writer, so several workers can add parts to one output without clashing."""
    return f"{MANIFEST_PREFIX}part-{safe_token(run_id)}-{safe_token(worker_id)}-{sequence:06d}.parquet"


def model_key(model: str) -> str:
    """Where a run keeps the schema its model was checked against: `models/<model>.json`."""
    return f"{MODELS_PREFIX}{slugify(model, max_len=96, fallback='model')}.json"


def input_key(sha256_hex: str, extension: str) -> str:
    """Where a local input image is staged: named by content, so it is uploaded once however often used."""
    return f"{INPUTS_PREFIX}{sha256_hex}.{image_extension(extension)}"
