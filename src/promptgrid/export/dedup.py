"""Near-duplicate images: a perceptual hash per image (imagehash's pHash) and an index of the kept ones.

Two images are near-duplicates when their 64-bit pHashes differ in at most `distance` bits. The index
splits each hash into `distance + 1` blocks: by the pigeonhole principle two hashes within the distance
agree exactly on at least one block, so a lookup compares only the hashes sharing a block with the new
one, not every hash kept so far.
"""

from __future__ import annotations

import io
from itertools import pairwise

import imagehash
from PIL import Image

HASH_BITS = 64
MAX_DISTANCE = 32


def perceptual_hash(data: bytes) -> int:
    """The image's 64-bit pHash (8x8 DCT of a 32x32 greyscale copy), as an integer."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (64, 64))  # JPEGs decode at a reduced size: the hash looks at 32x32 anyway
        value = imagehash.phash(image)
    return int(str(value), 16)


def hash_text(value: int) -> str:
    return f"{value:016x}"


class NearDuplicateIndex:
    """The hashes of the images kept so far, and which job each came from."""

    def __init__(self, distance: int):
        if not 0 <= distance <= MAX_DISTANCE:
            raise ValueError(f"distance must be 0 to {MAX_DISTANCE} bits, not {distance}")
        self.distance = distance
        blocks = distance + 1
        edges = [round(HASH_BITS * n / blocks) for n in range(blocks + 1)]
        self._blocks = [(low, (1 << (high - low)) - 1) for low, high in pairwise(edges)]
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._blocks]
        self.hashes: list[int] = []
        self.jobs: list[str] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def match(self, value: int) -> str | None:
        """The job of a kept image within the distance of `value`, or None."""
        seen: set[int] = set()
        for table, (shift, mask) in zip(self._tables, self._blocks, strict=True):
            for index in table.get((value >> shift) & mask, ()):
                if index not in seen:
                    seen.add(index)
                    if (self.hashes[index] ^ value).bit_count() <= self.distance:
                        return self.jobs[index]
        return None

    def add(self, value: int, job_id: str) -> None:
        index = len(self.hashes)
        self.hashes.append(value)
        self.jobs.append(job_id)
        for table, (shift, mask) in zip(self._tables, self._blocks, strict=True):
            table.setdefault((value >> shift) & mask, []).append(index)

    def keep_if_new(self, value: int, job_id: str) -> str | None:
        """Keep the image unless it is a near-duplicate; returns the earlier job it duplicates, if any."""
        earlier = self.match(value)
        if earlier is None:
            self.add(value, job_id)
        return earlier
