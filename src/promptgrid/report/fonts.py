"""Text in the contact sheets in any script: each character drawn with the first font of a chain that has it.

Pillow draws a string with one font and shows a box for each character that font lacks, and a prompt may be
Japanese, Arabic or carry an em dash. The chain is fontconfig's own fallback order for sans-serif
(`fc-match --sort`), each font with the characters fontconfig says it covers, so every character finds an
installed font that has it (Debian: fonts-noto-core, fonts-noto-cjk, fonts-dejavu-core). Without fontconfig
the chain is Pillow's built-in font alone.
"""

from __future__ import annotations

import bisect
import functools
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from PIL import ImageDraw, ImageFont

Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont
Ink: TypeAlias = tuple[int, int, int]
FAMILY = "sans-serif"
_SCALABLE = (".ttf", ".otf", ".ttc")


@dataclass(frozen=True)
class FontFace:
    """One font file (and face index in a collection) and the code points it covers, as sorted ranges."""

    path: str
    index: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def covers(self, char: str) -> bool:
        point = ord(char)
        at = bisect.bisect_right(self.starts, point) - 1
        return at >= 0 and point <= self.ends[at]


def parse_charset(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """fontconfig's charset (`20-7e a0-377 384 ...`, hex) as sorted range starts and ends."""
    starts, ends = [], []
    for part in text.split():
        low, _, high = part.partition("-")
        starts.append(int(low, 16))
        ends.append(int(high or low, 16))
    return tuple(starts), tuple(ends)


@functools.lru_cache(maxsize=4)
def installed_faces(family: str = FAMILY) -> tuple[FontFace, ...]:
    """The scalable fonts fontconfig would fall back through for `family`, best first; () without it."""
    if shutil.which("fc-match") is None:
        return ()
    try:
        listing = subprocess.run(
            ["fc-match", "--sort", "--format=%{file}|%{index}|%{charset}\n", family],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    faces = []
    for line in listing.splitlines():
        path, _, rest = line.partition("|")
        index, _, charset = rest.partition("|")
        if path.lower().endswith(_SCALABLE) and charset.strip():
            faces.append(FontFace(path, int(index or 0), *parse_charset(charset)))
    return tuple(faces)


class FontChain:
    """Fonts of one pixel size; `draw_text` and `length` split a string into runs, one font per run."""

    def __init__(self, size: int, faces: Sequence[FontFace] | None = None):
        self.size = size
        self.faces = tuple(installed_faces() if faces is None else faces)
        self._fonts: dict[int, Font] = {}
        self._chosen: dict[str, Font] = {}
        self.primary = self._font(0) if self.faces else ImageFont.load_default(size=size)

    def _font(self, position: int) -> Font:
        if position not in self._fonts:
            face = self.faces[position]
            self._fonts[position] = ImageFont.truetype(face.path, self.size, index=face.index)
        return self._fonts[position]

    def font_for(self, char: str) -> Font:
        """The first font of the chain that has `char`; the primary font when none has it."""
        if char not in self._chosen:
            found = (p for p, face in enumerate(self.faces) if face.covers(char) and not char.isspace())
            position = next(found, None)
            self._chosen[char] = self.primary if position is None else self._font(position)
        return self._chosen[char]

    def runs(self, text: str) -> list[tuple[str, Font]]:
        runs: list[tuple[str, Font]] = []
        for char in text:
            font = self.font_for(char)
            if runs and runs[-1][1] is font:
                runs[-1] = (runs[-1][0] + char, font)
            else:
                runs.append((char, font))
        return runs

    def length(self, text: str) -> float:
        return float(sum(font.getlength(run) for run, font in self.runs(text)))

    def draw_text(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: Ink) -> None:
        """Draw one line, its top at `xy`; runs in different fonts share the primary font's baseline."""
        x, y = xy
        baseline = y + self._ascent()
        for run, font in self.runs(text):
            draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
            x += font.getlength(run)

    def draw_lines(
        self,
        draw: ImageDraw.ImageDraw,
        xy: tuple[float, float],
        lines: Sequence[str],
        fill: Ink,
        spacing: int,
    ) -> None:
        x, y = xy
        for line in lines:
            self.draw_text(draw, (x, y), line, fill)
            y += self.size + spacing

    def _ascent(self) -> int:
        if isinstance(self.primary, ImageFont.FreeTypeFont):
            return int(self.primary.getmetrics()[0])
        return self.size


@functools.lru_cache(maxsize=8)
def font_chain(size: int) -> FontChain:
    """The chain for a pixel size, built once per process (fontconfig is asked once)."""
    return FontChain(size)
