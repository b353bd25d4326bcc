"""Grid image assembly with A1111-style row/column labels, any script (CJK included), never crashing on a glyph;
and A1111's overlapping tile grids (``split_grid`` / ``combine_grid``, used by outpainting and SD upscale)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------------ A1111's tile grids


@dataclass
class Grid:
    """Overlapping tiles of one picture, laid out as A1111's ``images.Grid``.

    ``tiles`` is a list of rows ``[y, tile_h, [[x, tile_w, tile image], ...]]``; replace a row's tile images (same
    size) and :func:`combine_grid` joins them back.
    """

    tiles: list
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int

    @property
    def tile_count(self) -> int:
        """How many tiles the grid holds."""
        return sum(len(row[2]) for row in self.tiles)

    def positions(self) -> list[tuple[int, int]]:
        """Each tile's top-left corner (x, y), row by row."""
        return [(x, y) for y, _, row in self.tiles for x, _, _ in row]


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """A1111's ``images.split_grid``: ``image`` cut into ``tile_w`` x ``tile_h`` tiles that overlap by at least
    ``overlap`` pixels, spread evenly (the last row and column end at the image's edge). A picture smaller than a
    tile gives one tile at a negative offset, padded with black, as in A1111.

    >>> from PIL import Image
    >>> split_grid(Image.new("RGB", (1536, 1024)), 512, 512, 64).positions()[:4]
    [(0, 0), (341, 0), (682, 0), (1024, 0)]
    """
    for name, value in (("tile_w", tile_w), ("tile_h", tile_h), ("overlap", overlap)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"split_grid {name}: got {value!r}; expected a whole number of pixels")
    if overlap < 0 or overlap >= min(tile_w, tile_h):
        raise ValueError(f"split_grid overlap: got {overlap}; expected 0 <= overlap < the tile size "
                         f"({tile_w}x{tile_h}): lower the overlap or use bigger tiles")
    w, h = image.size
    cols = math.ceil((w - overlap) / (tile_w - overlap))
    rows = math.ceil((h - overlap) / (tile_h - overlap))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        row_tiles = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            row_tiles.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, row_tiles])
    return grid


def _ramp(overlap: int, size: tuple[int, int], horizontal: bool) -> Image.Image:
    # A1111's make_mask_image: 0..255 over the overlap, float32 then truncated to uint8
    r = np.arange(overlap, dtype=np.float32)
    r = (r.reshape((1, overlap)).repeat(size[1], axis=0) if horizontal
         else r.reshape((overlap, 1)).repeat(size[0], axis=1))
    return Image.fromarray((r * 255 / overlap).astype(np.uint8), "L")


def combine_grid(grid: Grid) -> Image.Image:
    """A1111's ``images.combine_grid``: the tiles pasted back, each one after the first of a row (and each row
    after the first) blended in over its first ``overlap`` pixels by a linear ramp; the rest is pasted opaque.

    >>> from PIL import Image
    >>> picture = Image.effect_noise((200, 150), 40).convert("RGB")
    >>> combine_grid(split_grid(picture, 64, 64, 16)).tobytes() == picture.tobytes()
    True
    """
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    if grid.overlap > 0:
        mask_w = _ramp(grid.overlap, (grid.overlap, grid.tile_h), horizontal=True)
        mask_h = _ramp(grid.overlap, (grid.image_w, grid.overlap), horizontal=False)
    for y, h, row in grid.tiles:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0:
                line.paste(tile, (0, 0))
                continue
            if grid.overlap > 0:
                line.paste(tile.crop((0, 0, grid.overlap, h)), (x, 0), mask=mask_w)
            line.paste(tile.crop((grid.overlap, 0, w, h)), (x + grid.overlap, 0))
        if y == 0:
            combined.paste(line, (0, 0))
            continue
        if grid.overlap > 0:
            combined.paste(line.crop((0, 0, line.width, grid.overlap)), (0, y), mask=mask_h)
        combined.paste(line.crop((0, grid.overlap, line.width, h)), (0, y + grid.overlap))
    return combined
