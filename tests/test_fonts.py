"""Contact sheets draw any script: Japanese and an em dash come out as glyphs, not missing-glyph boxes.

Needs fontconfig and wide-coverage fonts (Debian: fonts-noto-core, fonts-noto-cjk, fonts-dejavu-core): without
them the font tests skip with that install command, and fail under CI (`.ci/run` installs them).
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageDraw

from promptgrid.report.fonts import FontChain, installed_faces, parse_charset
from promptgrid.report.layout import build_grids
from promptgrid.report.sheets import TITLE_PX, draw_contact_sheet

PROMPT = "富士山の夕焼け — 水彩画"
NOWHERE = "\U0010fffd"  # a private-use code point no font draws: whatever a font shows for it is its box


def glyph(font, char: str) -> Image.Image:
    image = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(image).text((8, 8), char, fill=255, font=font)
    return image


@pytest.mark.needs("cjk-fonts")
def test_fontconfig_offers_fonts_for_japanese_and_punctuation():
    faces = installed_faces()
    assert faces, "fontconfig found no scalable fonts: install fonts-noto-core/-cjk, fonts-dejavu-core"
    for char in PROMPT.replace(" ", ""):
        assert any(face.covers(char) for face in faces), f"no installed font has {char!r}"


@pytest.mark.needs("cjk-fonts")
def test_every_character_is_drawn_with_a_font_that_has_it_not_as_the_missing_glyph_box():
    chain = FontChain(24)
    for char in PROMPT.replace(" ", ""):
        font = chain.font_for(char)
        drawn, box = glyph(font, char), glyph(font, NOWHERE)
        assert drawn.getbbox() is not None, f"{char!r} drew nothing"
        assert ImageChops.difference(drawn, box).getbbox() is not None, f"{char!r} drew the missing-glyph box"


@pytest.mark.needs("cjk-fonts")
def test_a_contact_sheet_shows_a_japanese_prompt_in_its_title(tmp_path):
    def sheet(prompt: str) -> Image.Image:
        rows = [
            {"job_id": f"j{n}", "prompt": prompt, "cfg": cfg, "seed": 1, "status": "failed", "model": "m"}
            for n, cfg in enumerate([2.5, 4.0])
        ]
        image = Image.open(io.BytesIO(draw_contact_sheet(build_grids(rows, None, None)[0], {})))
        image.save(tmp_path / f"sheet-{len(prompt)}-{ord(prompt[0])}.png")  # kept for a person to look at
        return image.convert("L").crop((0, 0, image.width, TITLE_PX))

    shown = sheet(PROMPT)
    boxes = sheet("".join(char if char == " " else NOWHERE for char in PROMPT))
    assert ImageChops.difference(shown, boxes).getbbox() is not None


def test_fontconfig_charsets_parse_into_ranges():
    starts, ends = parse_charset("20-7e a0-377 2014 3040-309f")
    assert starts == (0x20, 0xA0, 0x2014, 0x3040) and ends == (0x7E, 0x377, 0x2014, 0x309F)
