"""Grid image assembly with A1111-style row/column labels, any script (CJK included), never crashing on a glyph."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Fonts that cover CJK, looked for on the system (Debian's fonts-noto-cjk, fonts-wqy-*, Droid fallback).
_CJK_CANDIDATES = ("NotoSansCJK", "NotoSansSC", "NotoSerifCJK", "SourceHanSans", "wqy-zenhei", "wqy-microhei",
                   "DroidSansFallback", "SimHei", "msyh", "PingFang")


@functools.lru_cache(maxsize=1)
def _font_paths() -> tuple[str | None, str | None]:
    """(latin font, CJK-capable font or None), found without any download."""
    from matplotlib import font_manager

    latin = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    cjk = None
    for path in font_manager.findSystemFonts():
        if any(c.lower() in Path(path).name.lower() for c in _CJK_CANDIDATES):
            cjk = path
            break
    return latin, cjk


@functools.lru_cache(maxsize=8)
def _cmap(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    try:
        font = TTFont(path, fontNumber=0, lazy=True)
        return frozenset(font.getBestCmap() or {})
    except Exception:  # an unreadable font file covers nothing
        return frozenset()


def label_font(text: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font that can draw ``text``; warns (once per text) when no installed font covers every character."""
    latin, cjk = _font_paths()
    needed = {ord(ch) for ch in text if not ch.isspace()}
    for path in (latin, cjk):
        if path and needed <= _cmap(path):
            return ImageFont.truetype(path, size)
    missing = "".join(sorted({chr(c) for c in needed - _cmap(latin or "")}))[:20]
    warnings.warn(f"No installed font covers the characters {missing!r} in grid label {text[:40]!r}; they show as "
                  "boxes. Install a CJK font (e.g. Debian's fonts-noto-cjk) for such labels.", stacklevel=3)
    path = cjk or latin
    return ImageFont.truetype(path, size) if path else ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _draw_label(draw, box, text: str, font_size: int, highlight: bool) -> None:
    x0, y0, x1, y1 = box
    font = label_font(text, font_size)
    lines = _wrap(draw, text, font, max(x1 - x0 - 8, 8))
    line_h = int(font_size * 1.2)
    y = y0 + max(0, ((y1 - y0) - line_h * len(lines)) // 2)
    for line in lines:
        w = draw.textlength(line, font=font)
        draw.text((x0 + (x1 - x0 - w) / 2, y), line, font=font, fill=(0, 0, 0) if highlight else (110, 110, 110))
        y += line_h


def grid_layout(col_widths: Sequence[int], row_heights: Sequence[int], labelled: bool, font_size: int = 24,
                title: bool = False) -> tuple[int, int, int, int]:
    """``(width, height, left margin, top margin)`` of a labelled grid, for planning before rendering."""
    left = font_size * 8 if labelled else 0
    top = int(font_size * 3.6) + 4 if labelled else 0
    if title:
        top += font_size * 2
    return sum(col_widths) + left, sum(row_heights) + top, left, top


def draw_grid(cells: Sequence[Sequence[Image.Image | None]], col_labels: Sequence[str], row_labels: Sequence[str],
              *, col_highlight: Sequence[bool] = (), row_highlight: Sequence[bool] = (), title: str | None = None,
              font_size: int = 24, cell_sizes: tuple[Sequence[int], Sequence[int]] | None = None) -> Image.Image:
    """Assemble ``cells[row][col]`` (None = not generated yet: drawn grey) into one labelled image.

    Columns are as wide as their widest image and rows as tall as their tallest, so cells of different sizes
    (a Size axis) still line up. Labels are A1111-style: column values on top, row values on the left, the
    ones that differ from the base parameters in black, the rest in grey.
    """
    rows, cols = len(cells), len(cells[0]) if cells else 0
    if cell_sizes is None:
        col_w = [max((cells[r][c].width for r in range(rows) if cells[r][c] is not None), default=64)
                 for c in range(cols)]
        row_h = [max((cells[r][c].height for c in range(cols) if cells[r][c] is not None), default=64)
                 for r in range(rows)]
    else:
        col_w, row_h = list(cell_sizes[0]), list(cell_sizes[1])
    labelled = any(col_labels) or any(row_labels)
    width, height, left, top = grid_layout(col_w, row_h, labelled, font_size, title is not None)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if title is not None:
        _draw_label(draw, (0, 0, width, font_size * 2), title, font_size, True)
    label_top = top - (int(font_size * 3.6) + 4)
    x = left
    for c in range(cols):
        if col_labels:
            hl = col_highlight[c] if c < len(col_highlight) else True
            _draw_label(draw, (x, label_top, x + col_w[c], top), col_labels[c], font_size, hl)
        x += col_w[c]
    y = top
    for r in range(rows):
        if row_labels:
            hl = row_highlight[r] if r < len(row_highlight) else True
            _draw_label(draw, (0, y, left, y + row_h[r]), row_labels[r], font_size, hl)
        x = left
        for c in range(cols):
            image = cells[r][c]
            if image is None:
                draw.rectangle((x, y, x + col_w[c] - 1, y + row_h[r] - 1), fill=(225, 225, 225))
            else:
                grid.paste(image.convert("RGB"), (x, y))
            x += col_w[c]
        y += row_h[r]
    return grid
