"""Metrics that need no model weights, computed from an image's pixels and bytes with numpy and Pillow.

Each is a plain, documented formula, so two runs (or two machines) give the same number:
sharpness is the variance of the Laplacian of the luma (0-255 scale), colourfulness Hasler and
Süsstrunk's M3 (2003), brightness the mean luma and contrast its standard deviation (RMS contrast, both
0-1), entropy the Shannon entropy of the 8-bit luma histogram in bits, bytes per pixel the stored file's
size over its pixel count, and `phash` imagehash's 64-bit perceptual hash (as 16 hex digits), from which
near-duplicate groups and seed diversity are derived (`promptgrid.score.sets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
from PIL import Image

PIXEL_METRICS = ("sharpness", "colourfulness", "brightness", "contrast", "entropy", "bytes_per_pixel")
# Bump when a formula changes: every image is scored again by the next `promptgrid score`.
PIXELS_VERSION = "1"


@dataclass(frozen=True)
class ScoreItem:
    """One stored image to score: its key, the prompt it was made from, its bytes and decoded pixels."""

    job_id: str
    output_index: int
    sha256: str
    prompt: str
    data: bytes
    image: Image.Image


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array (0-255 floats)."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.asarray(rgb @ weights, dtype=np.float64)


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: edges and fine detail raise it, blur lowers it."""
    if min(grey.shape) < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * centre
    return float(laplacian.var())


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Süsstrunk's M3: spread and mean of the red-green and yellow-blue opponent channels."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.hypot(rg.std(), yb.std())
    mean = np.hypot(rg.mean(), yb.mean())
    return float(spread + 0.3 * mean)


def entropy(grey: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin luma histogram: 0 for a flat image, at most 8."""
    counts = np.bincount(np.clip(grey, 0, 255).astype(np.uint8).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: a flat image gives 0.0, not -0.0


def pixel_metrics(item: ScoreItem) -> dict[str, Any]:
    """Every weightless metric of one image, and its perceptual hash."""
    rgb = np.asarray(item.image.convert("RGB"), dtype=np.float64)
    grey = luma(rgb)
    width, height = item.image.size
    return {
        "sharpness": sharpness(grey),
        "colourfulness": colourfulness(rgb),
        "brightness": float(grey.mean() / 255),
        "contrast": float(grey.std() / 255),
        "entropy": entropy(grey),
        "bytes_per_pixel": len(item.data) / max(1, width * height),
        "phash": str(imagehash.phash(item.image)),
    }


class PixelScorer:
    """The weightless metrics: cheap, deterministic, no extra install."""

    name = "pixels"
    version = PIXELS_VERSION

    def score(self, items: list[ScoreItem]) -> list[dict[str, Any]]:
        return [pixel_metrics(item) for item in items]
