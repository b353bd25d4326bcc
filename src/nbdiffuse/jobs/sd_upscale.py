"""SD upscale: A1111's img2img script ``scripts/sd_upscale.py``.

The picture is upscaled with a pixel upscaler (``"None"`` keeps its size: A1111 ignores the scale factor then),
cut into img2img-sized tiles that overlap (:func:`~nbdiffuse.io.grid.split_grid`), every tile redrawn by img2img
(``batch_size`` tiles per job) and the tiles joined again (:func:`~nbdiffuse.io.grid.combine_grid`, a linear
feather over ``overlap`` pixels). Each tile sees only itself, which is why SD upscale "loses attention to the
rest of the image": nothing tells a tile what its neighbours drew.

>>> plan = tile_plan((1536, 1024), 512, 512, 64)
>>> plan.cols, plan.rows, plan.xs, plan.ys
(4, 3, [0, 341, 682, 1024], [0, 256, 512])
>>> tile_seeds(100, 5, batch_size=2)
[100, 101, 101, 102, 102]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from PIL import Image

from ..io.grid import combine_grid, split_grid
from ..sampling.noise import fix_seed
from .driver import JobControl
from .guards import JobInterrupted

__all__ = ["TilePlan", "check_upscaler", "plan_sd_upscale", "sd_upscale_steps", "tile_plan", "tile_seeds",
           "upscaled_size"]


@dataclass(frozen=True)
class TilePlan:
    """Where SD upscale's tiles lie on the upscaled picture (A1111's ``split_grid``), and what each got.

    ``size``: the upscaled picture (width, height); ``tile``: the tile (width, height) = the img2img size;
    ``overlap``: the asked overlap (the feather width; tiles spread evenly, so they often overlap more);
    ``xs`` / ``ys``: the columns' and rows' left/top edges (negative when the picture is smaller than a tile: the
    tile is padded with black); ``seeds``: each tile's seed, row by row, for each ``n_iter`` round.
    """

    size: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    xs: list[int]
    ys: list[int]
    seeds: list[list[int]] = field(default_factory=list)
    upscaler: str = "None"
    scale_factor: float = 1.0

    @property
    def cols(self) -> int:
        """Tiles per row."""
        return len(self.xs)

    @property
    def rows(self) -> int:
        """Rows of tiles."""
        return len(self.ys)

    def positions(self) -> list[tuple[int, int]]:
        """Each tile's top-left corner (x, y), row by row (the order img2img draws them)."""
        return [(x, y) for y in self.ys for x in self.xs]


def tile_plan(size: tuple[int, int], tile_w: int, tile_h: int, overlap: int) -> TilePlan:
    """The tiles A1111's ``split_grid`` cuts a picture of ``size`` into (``cols = ceil((w - overlap) / (tile_w -
    overlap))``, spread evenly, the last one ending at the edge).

    >>> tile_plan((400, 400), 512, 512, 64).positions()
    [(-112, -112)]
    """
    grid = split_grid(Image.new("1", tuple(size)), tile_w, tile_h, overlap)
    return TilePlan(tuple(size), (tile_w, tile_h), overlap, [x for x, _, _ in grid.tiles[0][2]],
                    [y for y, _, _ in grid.tiles])


def tile_seeds(seed: int, tiles: int, batch_size: int = 1, n: int = 0) -> list[int]:
    """Each tile's seed in round ``n`` of ``n_iter``: A1111 starts the round at ``seed + n`` and, after each batch,
    sets the seed to the batch's first seed + 1, while seeds rise by 1 within a batch; so tile ``k`` of batch ``j``
    gets ``seed + n + j + k`` (seeds repeat across batches when ``batch_size > 1``).

    >>> tile_seeds(7, 4, batch_size=1, n=1)
    [8, 9, 10, 11]
    """
    return [seed + n + i // batch_size + i % batch_size for i in range(tiles)]


def _check(overlap, scale_factor, p) -> None:
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        raise ValueError(f"sd_upscale overlap: got {overlap!r}; expected a whole number of pixels >= 0 (A1111's "
                         "slider: 0 to 256, default 64)")
    if overlap >= min(p.width, p.height):
        raise ValueError(f"sd_upscale overlap={overlap} must be smaller than the tile size {p.width}x{p.height} "
                         "(the img2img width and height): lower the overlap or raise width/height")
    if not isinstance(scale_factor, (int, float)) or isinstance(scale_factor, bool) or not scale_factor > 0:
        raise ValueError(f"sd_upscale scale_factor: got {scale_factor!r}; expected a number > 0 (A1111's slider: "
                         "1 to 4, default 2)")


def check_upscaler(name: str, upscalers=None) -> str:
    """The pixel upscaler SD upscale and Extras accept (A1111's ``sd_upscalers``: None, Lanczos, Nearest and model
    files); latent modes are refused.

    >>> check_upscaler("lanczos")
    'Lanczos'
    """
    from .upscalers import Upscalers, is_latent

    resolved = (upscalers if upscalers is not None else Upscalers()).resolve(name if name is not None else "None")
    if is_latent(resolved):
        raise ValueError(f"upscaler {name!r} is a latent upscaler (hires fix only); SD upscale and Extras take a "
                         "pixel upscaler: None, Lanczos, Nearest or an upscaler model file")
    return resolved


def plan_sd_upscale(p, init_image, *, overlap: int = 64, scale_factor: float = 2.0, upscaler: str = "None",
                    upscalers=None) -> tuple[Image.Image, str, TilePlan]:
    """Check an SD upscale job before any work: returns the flattened init picture, the upscaler's resolved name
    and the :class:`TilePlan` of the upscaled picture (seeds not yet drawn)."""
    from .outpaint import _one_init_image

    _check(overlap, scale_factor, p)
    name = check_upscaler(upscaler, upscalers)
    init = _one_init_image(p, init_image)
    plan = tile_plan(upscaled_size(init.size, scale_factor, name), p.width, p.height, overlap)
    if min(plan.size) < 1:
        raise ValueError(f"sd_upscale: a {init.width}x{init.height} picture scaled by {scale_factor} is empty "
                         "(sizes round down to a multiple of 8): raise scale_factor")
    return init, name, plan


def sd_upscale_steps(bundle, p, encoder, init_image, *, overlap: int = 64, scale_factor: float = 2.0,
                     upscaler: str = "None", upscalers=None, hooks=(), control: JobControl | None = None,
                     outputs_dir=None, progress=None, styles=None):
    """A1111's SD upscale script on one picture: yields every step, returns the
    :class:`~nbdiffuse.jobs.result.Result` with one picture per ``n_iter`` round (saved under img2img-images).

    The seed is fixed first; the picture is flattened and upscaled ``scale_factor`` times by ``upscaler`` (not with
    ``"None"``), cut into ``p.width x p.height`` tiles overlapping by ``overlap``, and each tile redrawn by img2img,
    ``p.batch_size`` tiles per job, with the seeds of :func:`tile_seeds` (round ``n`` starts at ``seed + n``). The
    joined picture gets the first job's infotext (its ``Size`` is the tile size), whose first extra fields are
    ``SD upscale overlap`` and ``SD upscale upscaler``, as A1111 writes them. An interrupt keeps the finished tiles
    and leaves the others black (A1111's missing tiles), and ends the job. ``result.sd_upscale`` is the
    :class:`TilePlan` (:func:`nbdiffuse.viz.show_tiles` draws it).
    """
    from .img2img import img2img_steps
    from .outpaint import _gather
    from .upscalers import PIXEL_UPSCALERS, upscale_image

    init, name, plan = plan_sd_upscale(p, init_image, overlap=overlap, scale_factor=scale_factor,
                                       upscaler=upscaler, upscalers=upscalers)
    control = control or JobControl()
    seed, subseed = fix_seed(p.seed), fix_seed(p.subseed)
    known = upscalers.files if upscalers is not None else {}
    label = name if name in PIXEL_UPSCALERS or name in known else _stem(name)  # A1111: a model file's stem
    tile_p = p.replace(n_iter=1, seed=seed, subseed=subseed)
    try:  # a model upscaler checks the interrupt between its tiles
        picture = init if name == "None" else upscale_image(init, float(scale_factor), name, upscalers,
                                                            interrupt=control.interrupt)
    except JobInterrupted:
        result = _gather(tile_p, [], [], [], [], [], outputs_dir, True)
        result.sd_upscale = replace(plan, upscaler=label, scale_factor=float(scale_factor))
        return result
    grid = split_grid(picture, p.width, p.height, overlap)
    work = [tile for _, _, row in grid.tiles for _, _, tile in row]
    batch = p.batch_size
    batches = math.ceil(len(work) / batch)
    lead = {"SD upscale overlap": overlap, "SD upscale upscaler": label}
    results, pictures, seeds, round_seeds, first_info, interrupted = [], [], [], [], None, False
    for n in range(p.n_iter):
        start = seed + n
        job_seed, done = start, []
        for i in range(batches):
            chunk = work[i * batch:(i + 1) * batch]
            # A1111 keeps p.batch_size: a last, shorter chunk of one tile is repeated to fill the batch
            res = yield from img2img_steps(bundle, tile_p.replace(seed=job_seed, batch_size=batch), encoder, chunk,
                                           hooks=hooks, control=control, outputs_dir=None, progress=progress,
                                           styles=styles, infotext_lead=lead)
            results.append(res)
            if first_info is None and res.infotexts:
                first_info = res.infotexts[0]
            done += res.images[:len(chunk)]
            job_seed += 1  # A1111: p.seed = processed.seed + 1
            if res.interrupted or len(res.images) < len(chunk) or control.interrupt.is_set():
                interrupted = True
                break
        round_seeds.append(tile_seeds(seed, len(work), batch, n))
        if not done:
            break
        k = 0
        for _, _, row in grid.tiles:
            for tile in row:
                tile[2] = done[k] if k < len(done) else Image.new("RGB", (p.width, p.height))  # A1111: black
                k += 1
        pictures.append(combine_grid(grid))
        seeds.append(start)
        if interrupted:
            break
    if not pictures:
        result = _gather(tile_p, results, [], [], [], [], outputs_dir, True)
    else:
        result = _gather(tile_p, results, pictures, [first_info] * len(pictures), seeds, [subseed] * len(pictures),
                         outputs_dir, interrupted)
    result.params = p.replace(seed=seed, subseed=subseed)
    result.sd_upscale = replace(plan, seeds=round_seeds, upscaler=label, scale_factor=float(scale_factor))
    return result


def _stem(name: str) -> str:
    from pathlib import Path

    return Path(name).stem  # A1111 names a model upscaler by its file's stem


def upscaled_size(size: Sequence[int], scale_factor: float, upscaler: str) -> tuple[int, int]:
    """The picture's size after SD upscale's upscaler: unchanged with ``"None"`` (A1111 ignores the scale factor),
    else ``int(w * s) // 8 * 8`` x ``int(h * s) // 8 * 8`` (A1111's ``Upscaler.upscale``).

    >>> upscaled_size((300, 200), 2.0, "None"), upscaled_size((300, 203), 1.5, "Lanczos")
    ((300, 200), (448, 304))
    """
    w, h = size
    if upscaler == "None":
        return int(w), int(h)
    return int((w * scale_factor) // 8 * 8), int((h * scale_factor) // 8 * 8)
