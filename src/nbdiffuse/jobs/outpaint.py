"""Outpainting: A1111's "Poor man's outpainting" and "Outpainting mk2" scripts (``scripts/poor_mans_outpainting.py``,
``scripts/outpainting_mk_2.py``).

This module holds their geometry as pure functions (how far each side grows, the black canvas, the masks, which
tiles are redrawn, each mk2 step's crop) and mk2's noise fill (:func:`matched_noise`); ``tests/test_outpaint_a1111.py``
compares them with what A1111's scripts hand to ``process_images``.

>>> e = expansion((500, 300), 100)
>>> e.size, (e.left, e.right, e.up, e.down)
((704, 512), (102, 102, 106, 106))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io.grid import Grid

__all__ = ["DIRECTIONS", "Expansion", "Mk2Step", "expansion", "matched_noise", "mk2_plan", "mk2_step",
           "outpaint_method", "outpainting_mk2_steps", "poor_mans_canvas", "poor_mans_outpainting_steps",
           "poor_mans_tiles"]

DIRECTIONS = ("left", "right", "up", "down")  # A1111's checkbox choices, and mk2's order of steps


def _directions(direction) -> tuple[str, ...]:
    if isinstance(direction, str):
        direction = (direction,)
    direction = tuple(direction)
    bad = [d for d in direction if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"outpainting direction: got {bad[0]!r}; expected some of {', '.join(DIRECTIONS)}")
    return direction


@dataclass(frozen=True)
class Expansion:
    """How a picture grows: the new size (a multiple of 64 each way) and the pixels added on each side."""

    target_w: int
    target_h: int
    left: int
    right: int
    up: int
    down: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the grown picture."""
        return self.target_w, self.target_h


def expansion(size: tuple[int, int], pixels: int, direction: Sequence[str] = DIRECTIONS) -> Expansion:
    """Both scripts' sizes: ``pixels`` asked on each chosen side, the total rounded up to a multiple of 64, the
    extra split between left and right (and up and down) in proportion, left/up taking the floor.

    >>> expansion((512, 512), 128, ["left"])
    Expansion(target_w=640, target_h=512, left=128, right=0, up=0, down=0)
    """
    direction = _directions(direction)
    w, h = size
    left, right, up, down = (pixels if d in direction else 0 for d in DIRECTIONS)
    target_w = math.ceil((w + left + right) / 64) * 64
    target_h = math.ceil((h + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - w) // (left + right)
    if right > 0:
        right = target_w - w - left
    if up > 0:
        up = up * (target_h - h) // (up + down)
    if down > 0:
        down = target_h - h - up
    return Expansion(target_w, target_h, left, right, up, down)


def _rect_mask(mode: str, size: tuple[int, int], box) -> Image.Image:
    mask = Image.new(mode, size, "white")
    ImageDraw.Draw(mask).rectangle(box, fill="black")  # PIL's rectangle includes its right and bottom edges
    return mask


# ------------------------------------------------------------------------------------ poor man's outpainting


def poor_mans_canvas(init: Image.Image, e: Expansion, mask_blur: int = 4) -> tuple[Image.Image, Image.Image,
                                                                                     Image.Image]:
    """Poor man's canvas, mask and latent mask: the picture on black at (left, up); the mask white (repaint)
    except the picture's rectangle, shrunk by ``2 * mask_blur`` on the grown sides; the latent mask the same
    rectangle shrunk by ``mask_blur // 2``. The script then blurs the mask by ``2 * mask_blur``.

    >>> from PIL import Image
    >>> canvas, mask, latent = poor_mans_canvas(Image.new("RGB", (64, 64), "red"), expansion((64, 64), 32), 4)
    >>> canvas.size, canvas.getpixel((0, 0)), mask.getpixel((40, 40)), mask.getpixel((33, 40))
    ((128, 128), (0, 0, 0), 0, 255)
    """
    canvas = Image.new("RGB", e.size)
    canvas.paste(init, (e.left, e.up))
    w, h = e.size

    def box(inset):
        return (e.left + (inset if e.left > 0 else 0), e.up + (inset if e.up > 0 else 0),
                w - e.right - (inset if e.right > 0 else 0), h - e.down - (inset if e.down > 0 else 0))

    return canvas, _rect_mask("L", e.size, box(mask_blur * 2)), _rect_mask("L", e.size, box(mask_blur // 2))


def poor_mans_tiles(grid: Grid, e: Expansion) -> list[tuple[int, int]]:
    """(row, column) of each tile poor man's outpainting redraws, in its order: every tile not wholly inside the
    original picture.

    >>> from PIL import Image
    >>> from nbdiffuse.io.grid import split_grid
    >>> e = expansion((512, 512), 128)
    >>> poor_mans_tiles(split_grid(Image.new("RGB", e.size), 512, 512, 128), e)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    keep = []
    for r, (y, h, row) in enumerate(grid.tiles):
        for c, (x, w, _) in enumerate(row):
            inside = x >= e.left and x + w <= e.target_w - e.right and y >= e.up and y + h <= e.target_h - e.down
            if not inside:
                keep.append((r, c))
    return keep


# ------------------------------------------------------------------------------------------- outpainting mk2


@dataclass(frozen=True)
class Mk2Step:
    """One direction of outpainting mk2 (``expand`` in A1111's script).

    ``result_size``: the picture after this step (input plus ``pixels`` on ``side``); ``canvas_size``: that rounded
    up to 64 (the black canvas the picture and the noise are laid on); ``mask_box``: the kept (black) rectangle of
    the canvas mask; ``crop``: the part of the canvas that is redrawn, (x1, y1, x2, y2); ``job_size``: the img2img
    width and height; ``latent_box``: the kept rectangle of the latent mask (``job_size``); ``paste_at``: where the
    result goes back on the canvas before it is cropped to ``result_size``.
    """

    side: str
    pixels: int
    offset: tuple[int, int]
    result_size: tuple[int, int]
    canvas_size: tuple[int, int]
    mask_box: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]
    job_size: tuple[int, int]
    latent_box: tuple[int, int, int, int]
    paste_at: tuple[int, int]

    def canvas(self, picture: Image.Image) -> Image.Image:
        """The picture on black at ``offset`` (the new strip left black)."""
        canvas = Image.new("RGB", self.canvas_size)
        canvas.paste(picture, self.offset)
        return canvas

    def mask(self) -> Image.Image:
        """The canvas mask (RGB, white = repaint), before the crop."""
        return _rect_mask("RGB", self.canvas_size, self.mask_box)

    def latent_mask(self) -> Image.Image:
        """The latent mask (RGB, ``job_size``)."""
        return _rect_mask("RGB", self.job_size, self.latent_box)


def mk2_step(size: tuple[int, int], side: str, pixels: int, job_size: tuple[int, int], mask_blur_x: int,
             mask_blur_y: int) -> Mk2Step:
    """The geometry of one mk2 direction for a picture of ``size``; ``job_size`` is the img2img size the user set
    (the redrawn strip is at most that wide or tall); ``mask_blur_x`` / ``mask_blur_y`` are the script's mask blur
    on the axes being grown (0 on the others); the job blurs the mask by 4 times that.

    >>> s = mk2_step((512, 512), "left", 128, (512, 512), 8, 0)
    >>> s.canvas_size, s.crop, s.job_size, s.mask_box
    ((640, 512), (0, 0, 512, 512), (512, 512), (136, 0, 640, 512))
    """
    left, right, top, bottom = (side == d for d in DIRECTIONS)
    if not (left or right or top or bottom):
        raise ValueError(f"outpainting mk2 side: got {side!r}; expected one of {', '.join(DIRECTIONS)}")
    horiz, vert = left or right, top or bottom
    px_h, px_v = (pixels if horiz else 0), (pixels if vert else 0)
    res_w, res_h = size[0] + px_h, size[1] + px_v
    canvas_w, canvas_h = math.ceil(res_w / 64) * 64, math.ceil(res_h / 64) * 64
    mask_box = (pixels + mask_blur_x if left else 0, pixels + mask_blur_y if top else 0,
                canvas_w - pixels - mask_blur_x if right else res_w,
                canvas_h - pixels - mask_blur_y if bottom else res_h)
    target_w = min(job_size[0], size[0] + px_h) if horiz else canvas_w
    target_h = min(job_size[1], size[1] + px_v) if vert else canvas_h
    crop = (0 if left else canvas_w - target_w, 0 if top else canvas_h - target_h,
            target_w if left else canvas_w, target_h if top else canvas_h)
    mask_w, mask_h = crop[2] - crop[0], crop[3] - crop[1]  # the latent mask is drawn on the cropped mask's size
    latent_box = (pixels + mask_blur_x * 2 if left else 0, pixels + mask_blur_y * 2 if top else 0,
                  mask_w - pixels - mask_blur_x * 2 if right else res_w,
                  mask_h - pixels - mask_blur_y * 2 if bottom else res_h)
    for box, where in ((mask_box, "mask"), (latent_box, "latent mask")):
        if box[2] < box[0] or box[3] < box[1]:
            # A1111 fails here inside PIL ("x1/y1 must be greater than or equal to x0/y0")
            axis, job = ("width", job_size[0]) if horiz else ("height", job_size[1])
            blur = mask_blur_x if horiz else mask_blur_y
            raise ValueError(
                f"outpainting mk2: the {side} step adds {pixels} px (the new size is rounded up to a multiple of 64), "
                f"but the job's {axis} is {job} px: its {where} would keep nothing of the picture with a mask blur "
                f"of {blur}. Make the job {axis} at least {pixels + 2 * blur}, or expand by fewer pixels")
    paste_at = (0 if left else canvas_w - target_w, 0 if top else canvas_h - target_h)
    return Mk2Step(side, pixels, (px_h if left else 0, px_v if top else 0), (res_w, res_h), (canvas_w, canvas_h),
                   mask_box, crop, (target_w, target_h), latent_box, paste_at)


def _fft2(data: np.ndarray, inverse: bool = False) -> np.ndarray:
    # g-diffuser's helpers (via A1111): an ortho-normalised 2-D FFT per channel, shifted before and after
    fft = np.fft.ifft2 if inverse else np.fft.fft2
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = fft(np.fft.fftshift(data[:, :, c]), norm="ortho")
        out[:, :, c] = np.fft.ifftshift(out[:, :, c])
    return out


def _falloff_window(rows: int, cols: int, std: float = 3.14) -> np.ndarray:
    # A1111's _get_gaussian_window(..., mode=1) (not a Gaussian, as its comment says)
    scale_x, scale_y = float(rows / min(rows, cols)), float(cols / min(rows, cols))
    x = (np.arange(rows) / rows * 2.0 - 1.0) * scale_x
    fy = (np.arange(cols) / cols * 2.0 - 1.0) * scale_y
    return (1 / ((x[:, None] ** 2 + 1.0) * (fy[None, :] ** 2 + 1.0))) ** (std / 3.14)


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0,
                  color_variation: float = 0.05) -> np.ndarray:
    """A1111's ``get_matched_noise`` (from g-diffuser-bot): noise for the area to outpaint whose spectrum follows
    the known picture's, histogram-matched to the known pixels (``skimage.exposure.match_histograms``), pasted
    where ``mask`` is white; the known pixels are kept. The noise comes from ``np.random.default_rng(0)``, so the
    fill is the same every time.

    ``image``, ``mask``: float64 (h, w, 3) in 0..1 (the mask white = new). ``noise_q``: the fall-off exponent
    (lower = more detail); ``color_variation``: how colourful the starting noise is. Returns float64 (h, w, 3) in
    0..1.

    >>> import numpy as np
    >>> img = np.random.default_rng(1).random((8, 8, 3)); img[:, 4:] = 0.0
    >>> m = np.zeros((8, 8, 3)); m[:, 4:] = 1.0
    >>> out = matched_noise(img, m)
    >>> bool((out[:, :4] == img[:, :4]).all()), bool((out[:, 4:] > 0).any()), out.shape
    (True, True, (8, 8, 3))
    """
    from skimage.exposure import match_histograms

    rows, cols, channels = image.shape
    grey = np.sum(mask, axis=2) / 3.0
    img_mask, ref_mask = grey > 1e-6, grey < 1e-3
    windowed = image * (1.0 - np.repeat(grey[:, :, None], 3, axis=2))
    windowed /= np.max(windowed)
    windowed += np.average(image) * mask  # the masked area filled with the average colour, for a better spectrum
    src_fft = _fft2(windowed)
    src_dist = np.absolute(src_fft)
    src_phase = src_fft / src_dist

    rng = np.random.default_rng(0)
    window = _falloff_window(rows, cols)
    noise = rng.random((rows, cols, channels))
    noise_grey = np.sum(noise, axis=2) / 3.0
    noise *= color_variation
    for c in range(channels):
        noise[:, :, c] += (1.0 - color_variation) * noise_grey
    noise_fft = _fft2(noise)
    for c in range(channels):
        noise_fft[:, :, c] *= window
    noise = np.real(_fft2(noise_fft, inverse=True))
    shaped_fft = _fft2(noise)
    shaped_fft[:, :, :] = np.absolute(shaped_fft[:, :, :]) ** 2 * (src_dist ** noise_q) * src_phase

    shaped = np.real(_fft2(shaped_fft, inverse=True))
    shaped -= np.min(shaped)
    shaped /= np.max(shaped)
    reference = image[:] * 1.0 - 0.0  # A1111's contrast adjustment with its brightness variation fixed at 0
    shaped[img_mask, :] = match_histograms(shaped[img_mask, :] ** 1.0, reference[ref_mask, :], channel_axis=1)
    shaped = image[:] * (1.0 - mask) + shaped * mask
    return np.clip(shaped, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------- the jobs


def _check_script_args(pixels: int, mask_blur: int, direction) -> tuple[str, ...]:
    if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 1:
        raise ValueError(f"outpainting pixels: got {pixels!r}; expected a whole number of pixels >= 1 (A1111's "
                         "slider: 8 to 256)")
    if not isinstance(mask_blur, int) or isinstance(mask_blur, bool) or not 0 <= mask_blur <= 64:
        raise ValueError(f"outpainting mask_blur: got {mask_blur!r}; expected a whole number from 0 to 64")
    direction = _directions(direction)
    if not direction:
        raise ValueError(f"outpainting direction: nothing to grow; name some of {', '.join(DIRECTIONS)}")
    return direction


def _one_init_image(p, init_image):
    from .img2img import prepare_init_images

    if isinstance(init_image, (list, tuple)) and len(init_image) > 1:
        raise ValueError(f"outpainting takes one init image (A1111's scripts use the first), got {len(init_image)}")
    return prepare_init_images(p.replace(batch_size=1, n_iter=1), init_image)[1][0]


def _gather(p, results: list, images, infotexts, seeds, subseeds, outputs_dir, interrupted: bool):
    """One Result for a script's pictures: each saved under img2img-images with the first job's infotext and seed
    (A1111's ``Processed(p, images, initial_seed, initial_info)``), timings summed over the jobs."""
    from ..io.outputs import save_image
    from .result import Result

    timings = {key: sum(r.timings.get(key, 0.0) for r in results)
               for key in ("encode_s", "sample_s", "decode_s", "save_s", "total_s", "model_calls")}
    notes = list(dict.fromkeys(w for r in results for w in r.warnings))
    paths = []
    for image, text, seed in zip(images, infotexts, seeds):
        path = None
        if outputs_dir is not None:
            try:
                path = save_image(image, Path(outputs_dir) / "img2img-images", seed=seed, infotext=text)
            except OSError as e:
                notes.append(f"Could not save images to {Path(outputs_dir) / 'img2img-images'} ({type(e).__name__}: "
                             f"{e}); they are kept in the Result: result.save(folder) writes them elsewhere.")
        paths.append(path)
    return Result(list(images), list(infotexts), list(seeds), list(subseeds), torch.empty(0),
                  p.replace(seed=seeds[0]) if seeds else p, timings, paths, interrupted, notes)


def poor_mans_outpainting_steps(bundle, p, encoder, init_image, *, pixels: int = 128, mask_blur: int = 4,
                                inpainting_fill: int = 0, direction: Sequence[str] = DIRECTIONS, hooks=(),
                                control=None, outputs_dir=None, progress=None, styles=None):
    """A1111's "Poor man's outpainting": the picture on a black canvas grown by ``pixels`` on each ``direction``
    side (rounded up to a multiple of 64), cut into ``p.width`` x ``p.height`` tiles overlapping by ``pixels``;
    every tile not wholly inside the picture is inpainted ("Whole picture", mask blur ``2 * mask_blur``, masked
    content ``inpainting_fill``), one img2img job each with the next seed (``seed``, ``seed + 1``, ...); the tiles
    are joined with :func:`~nbdiffuse.io.grid.combine_grid`. The one picture is saved with the first tile's
    infotext and seed, as A1111 does; batch size and ``n_iter`` are 1, as A1111 sets them. Yields every step,
    returns the :class:`~nbdiffuse.jobs.result.Result`.
    """
    from ..io.grid import combine_grid, split_grid
    from .img2img import img2img_steps

    direction = _check_script_args(pixels, mask_blur, direction)
    if pixels >= min(p.width, p.height):
        raise ValueError(f"poor man's outpainting: pixels={pixels} must be smaller than the tile size "
                         f"{p.width}x{p.height} (the tiles overlap by that much): expand by fewer pixels or raise "
                         "width/height")
    tile_p = p.replace(batch_size=1, n_iter=1, mask_blur=mask_blur * 2, inpainting_fill=inpainting_fill,
                       inpaint_full_res=False)
    init = _one_init_image(p, init_image)
    e = expansion(init.size, pixels, direction)
    canvas, mask, latent = poor_mans_canvas(init, e, mask_blur)
    grids = [split_grid(im, p.width, p.height, pixels) for im in (canvas, mask, latent)]
    work = poor_mans_tiles(grids[0], e)
    results, seed, interrupted = [], p.seed, False
    for r, c in work:
        tile, tile_mask, tile_latent = (g.tiles[r][2][c][2] for g in grids)
        if interrupted:
            grids[0].tiles[r][2][c][2] = Image.new("RGB", (p.width, p.height))  # A1111: a missing tile is black
            continue
        res = yield from img2img_steps(bundle, tile_p.replace(seed=seed), encoder, [tile], mask=tile_mask,
                                       latent_mask=tile_latent, hooks=hooks, control=control, outputs_dir=None,
                                       progress=progress, styles=styles)
        results.append(res)
        interrupted = res.interrupted or not res.images or (control is not None and control.interrupt.is_set())
        if res.images:
            grids[0].tiles[r][2][c][2] = res.image
            seed = res.seeds[0] + 1
        else:
            grids[0].tiles[r][2][c][2] = Image.new("RGB", (p.width, p.height))
    if not results or not results[0].images:
        return _gather(tile_p, results, [], [], [], [], outputs_dir, True)
    first = results[0]
    return _gather(tile_p, results, [combine_grid(grids[0])], [first.infotexts[0]], [first.seeds[0]],
                   [first.subseeds[0]], outputs_dir, interrupted)


def mk2_plan(size: tuple[int, int], job_size: tuple[int, int], pixels: int, mask_blur: int,
             direction: Sequence[str] = DIRECTIONS) -> list[Mk2Step]:
    """Every direction of an mk2 run in A1111's order (left, right, up, down), each from the size the previous one
    left; refuses, before any work, a step whose masks would be empty (where A1111 fails) or whose img2img size is
    not a multiple of 8 of at least 64 (A1111 fails there when it pastes the result back).

    >>> [(s.side, s.job_size) for s in mk2_plan((512, 512), (512, 512), 128, 8, ["left", "down"])]
    [('left', (512, 512)), ('down', (640, 512))]
    """
    direction = _check_script_args(pixels, mask_blur, direction)
    e = expansion(size, pixels, direction)
    blur_x = mask_blur if e.left or e.right else 0
    blur_y = mask_blur if e.up or e.down else 0
    steps = []
    for side in DIRECTIONS:
        if getattr(e, side) > 0:
            step = mk2_step(size, side, getattr(e, side), job_size, blur_x, blur_y)
            w, h = step.job_size
            if w % 8 or h % 8 or min(w, h) < 64:
                raise ValueError(
                    f"outpainting mk2: the {side} step would run img2img at {w}x{h}, which is not a multiple of 8 of "
                    f"at least 64 (the picture is {size[0]}x{size[1]}, growing by {getattr(e, side)} px there). "
                    "Start from a picture whose sides are multiples of 8, or change pixels or the job width/height")
            steps.append(step)
            size = step.result_size
    return steps


def outpainting_mk2_steps(bundle, p, encoder, init_image, *, pixels: int = 128, mask_blur: int = 8,
                          direction: Sequence[str] = DIRECTIONS, noise_q: float = 1.0, color_variation: float = 0.05,
                          hooks=(), control=None, outputs_dir=None, progress=None, styles=None):
    """A1111's "Outpainting mk2": one direction after the other (left, right, up, down), each an img2img inpainting
    job ("Whole picture", masked content "original", mask blur 4 x ``mask_blur`` on the axes being grown) of the
    strip at the new edge, at most ``p.width`` / ``p.height`` deep, whose new part starts as :func:`matched_noise`.
    ``batch_size`` pictures are grown side by side; ``n_iter`` repeats the whole run. Every job keeps ``p.seed``
    (a fixed seed gives every direction, and every ``n_iter`` round, the same noise; -1 draws a new one for each
    job), as A1111's script does. Every picture is saved with the first job's infotext and seed. Yields every step,
    returns the :class:`~nbdiffuse.jobs.result.Result`.
    """
    from .img2img import img2img_steps

    for name, value, hi in (("noise_q", noise_q, 4.0), ("color_variation", color_variation, 1.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= hi:
            raise ValueError(f"outpainting mk2 {name}: got {value!r}; expected a number from 0 to {hi}")
    init = _one_init_image(p, init_image)
    plan = mk2_plan(init.size, (p.width, p.height), pixels, mask_blur, direction)
    blur_x = mask_blur if any(s.side in ("left", "right") for s in plan) else 0
    blur_y = mask_blur if any(s.side in ("up", "down") for s in plan) else 0
    job_p = p.replace(n_iter=1, mask_blur=None, mask_blur_x=blur_x * 4, mask_blur_y=blur_y * 4, inpainting_fill=1,
                      inpaint_full_res=False)
    results, finished, interrupted = [], [], False
    for _ in range(p.n_iter):
        pictures = [init] * p.batch_size
        for step in plan:
            canvases = []
            for picture in pictures:
                canvas = step.canvas(picture)
                with np.errstate(divide="ignore", invalid="ignore"):
                    noised = matched_noise(np.asarray(canvas) / 255.0, np.asarray(step.mask()) / 255.0, noise_q,
                                           color_variation)
                # an all-black picture has no spectrum to match (0/0): black, as A1111's NaN-to-uint8 cast gives
                noised = np.nan_to_num(noised, nan=0.0)
                canvases.append(Image.fromarray(np.clip(noised * 255.0, 0.0, 255.0).astype(np.uint8), "RGB"))
            res = yield from img2img_steps(
                bundle, job_p.replace(width=step.job_size[0], height=step.job_size[1]), encoder,
                [c.crop(step.crop) for c in canvases], mask=step.mask().crop(step.crop),
                latent_mask=step.latent_mask(), hooks=hooks, control=control, outputs_dir=None, progress=progress,
                styles=styles)
            results.append(res)
            if res.interrupted or len(res.images) < len(canvases) or (control is not None
                                                                        and control.interrupt.is_set()):
                interrupted = True
                break
            for canvas, image in zip(canvases, res.images):
                canvas.paste(image, step.paste_at)
            pictures = [canvas.crop((0, 0, *step.result_size)) for canvas in canvases]
        if interrupted:
            break
        finished += pictures
    if not finished:
        return _gather(job_p, results, [], [], [], [], outputs_dir, True)
    first = results[0]
    n = len(finished)
    return _gather(job_p.replace(width=first.params.width, height=first.params.height), results, finished,
                   [first.infotexts[0]] * n, [first.seeds[0]] * n, [first.subseeds[0]] * n, outputs_dir, interrupted)


METHODS = {"poor man's": "poor man's", "poor man's outpainting": "poor man's", "poor mans": "poor man's",
           "mk2": "mk2", "outpainting mk2": "mk2"}


def outpaint_method(method: str) -> str:
    """``"poor man's"`` or ``"mk2"`` from what a user may call them (A1111's script titles too).

    >>> outpaint_method("Outpainting mk2"), outpaint_method("Poor man's outpainting")
    ('mk2', "poor man's")
    """
    key = method.strip().lower().replace("\u2019", "'") if isinstance(method, str) else None
    if key not in METHODS:
        raise ValueError(f"outpaint method: got {method!r}; expected \"poor man's\" (A1111's Poor man's outpainting) "
                         "or \"mk2\" (Outpainting mk2)")
    return METHODS[key]
