"""Seeing SD upscale's tiles: :func:`show_tiles`.

SD upscale (A1111's script; ``session.sd_upscale``) cuts the upscaled picture into img2img-sized tiles that are
spread evenly, so neighbours usually overlap by more than the ``overlap`` asked; each tile is redrawn alone (it sees
nothing of the others: the "lost attention" to the rest of the picture) with its own seed, and the tiles are joined
with a linear feather over only the first ``overlap`` pixels of each later tile. Seams show where two tiles drew
different things and the feather is too narrow to hide it.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot (nothing global, no backend needed).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .latents import _figure

_COLOURS = ("#22d3ee", "#f97316", "#a3e635", "#e879f9", "#facc15", "#60a5fa", "#f87171", "#34d399")


def _plan_and_picture(source, i, width, height, overlap):
    from ..jobs.sd_upscale import TilePlan, tile_plan

    if isinstance(source, TilePlan):
        return source, None
    plan = getattr(source, "sd_upscale", None)
    if plan is not None:
        images = getattr(source, "images", [])
        if not -len(images) <= i < len(images) and images:
            raise IndexError(f"show_tiles: i={i}, but the result holds {len(images)} picture(s); use 0 to "
                             f"{len(images) - 1}")
        return plan, (images[i] if images else None)
    if isinstance(source, Image.Image):
        if width is None or height is None:
            raise ValueError("show_tiles: for a picture, give the tile size: width=..., height=... (SD upscale's "
                             "img2img width and height), and overlap=...")
        return tile_plan(source.size, int(width), int(height), int(overlap)), source
    raise TypeError(f"show_tiles: expected an SD upscale Result (session.sd_upscale), a picture or a TilePlan, got "
                    f"{type(source).__name__}" + (" without tiles (result.sd_upscale is None: it is no SD upscale "
                                                  "job)" if hasattr(source, "images") else ""))


def actual_overlaps(plan) -> tuple[int | None, int | None]:
    """The smallest overlap between neighbouring columns and rows (None with one column or row): at least the
    asked overlap, more when the tiles had to be spread.

    >>> from nbdiffuse.jobs.sd_upscale import tile_plan
    >>> actual_overlaps(tile_plan((1536, 1024), 512, 512, 64))
    (170, 256)
    """
    def along(starts, size):
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        return size - max(gaps) if gaps else None

    return along(plan.xs, plan.tile[0]), along(plan.ys, plan.tile[1])


def show_tiles(source, i: int = 0, *, width: int | None = None, height: int | None = None, overlap: int = 64,
               seeds: bool = True, title: str | None = None):
    """A figure of SD upscale's tile grid on the picture: each tile's outline (numbered in the order img2img drew
    them, with its seed), the areas two or more tiles cover shaded, and dashed lines where each later tile's
    feather (the first ``overlap`` pixels, a linear blend) ends: past them that tile is pasted as it is.

    ``source``: an SD upscale Result (``result.sd_upscale``; picture ``i`` is drawn, with the seeds of round ``i``),
    a picture (then give the tile ``width``, ``height`` and ``overlap``: where A1111 would cut it) or a
    :class:`~nbdiffuse.jobs.sd_upscale.TilePlan`.

    >>> from PIL import Image
    >>> from nbdiffuse.viz import show_tiles
    >>> fig = show_tiles(Image.new("RGB", (160, 96), "white"), width=64, height=64, overlap=16)
    >>> fig.axes[0].get_title()
    '3x2 tiles of 64x64 on 160x96, overlap 16 (feather); actual overlap 16 x 32 px'
    >>> show_tiles(session.sd_upscale([picture], upscaler="Lanczos", width=64, height=64, overlap=16))
    ...                                                                           # doctest: +SKIP
    """
    from matplotlib.patches import Rectangle

    plan, picture = _plan_and_picture(source, i, width, height, overlap)
    w, h = plan.size
    tw, th = plan.tile
    fig = _figure(figsize=(7.5, 7.5 * h / max(w, 1) + 0.6), layout="constrained")
    ax = fig.subplots()
    ax.set_xticks([])
    ax.set_yticks([])
    if picture is not None:
        ax.imshow(np.asarray(picture.convert("RGB")), interpolation="nearest")
    else:
        ax.imshow(np.full((h, w, 3), 235, dtype=np.uint8))
    cover = np.zeros((h, w), dtype=np.int32)
    for x, y in plan.positions():
        cover[max(y, 0):max(y + th, 0), max(x, 0):max(x + tw, 0)] += 1
    shade = np.zeros((h, w, 4), dtype=np.float32)
    shade[cover > 1] = (1.0, 1.0, 1.0, 0.35)
    ax.imshow(shade, interpolation="nearest")
    round_seeds = plan.seeds[i] if seeds and -len(plan.seeds) <= i < len(plan.seeds) else None
    for k, (x, y) in enumerate(plan.positions()):
        colour = _COLOURS[k % len(_COLOURS)]
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), tw, th, fill=False, edgecolor=colour, linewidth=1.6))
        label = f"{k}" + (f"  seed {round_seeds[k]}" if round_seeds is not None and k < len(round_seeds) else "")
        ax.text(max(x, 0) + 2, max(y, 0) + 2, label, color=colour, fontsize=7, va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    if plan.overlap > 0:
        for x in plan.xs[1:]:
            ax.axvline(x + plan.overlap - 0.5, color="black", linestyle="--", linewidth=0.8)
        for y in plan.ys[1:]:
            ax.axhline(y + plan.overlap - 0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ox, oy = actual_overlaps(plan)
    actual = " x ".join("-" if o is None else str(o) for o in (ox, oy))
    ax.set_title(title or f"{plan.cols}x{plan.rows} tiles of {tw}x{th} on {w}x{h}, overlap {plan.overlap} "
                          f"(feather); actual overlap {actual} px", fontsize=9)
    return fig
