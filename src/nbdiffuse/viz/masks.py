"""Seeing what inpainting did with a mask: :func:`show_mask`.

A1111 turns the mask you paint into several others before anything is sampled (``nbdiffuse.masks.prepare``, kept
on an inpainting job's ``result.inpaint``): your mask made binary (and inverted for "Inpaint not masked"), blurred
by "Mask blur", cut to the crop region for "Only masked" and resized to the job size, and shrunk to the latent
grid, where it decides which latents are re-drawn at every step. :func:`show_mask` draws them side by side with
the picture the crop region was taken from and the picture that was VAE-encoded.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot (nothing global, no backend needed).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .latents import _figure

#: The panels of :func:`show_mask`, in order.
PANELS = ("your mask", "blurred mask", "crop region", "job-size mask", "latent mask", "encoded picture")


def _prepared(result, i: int):
    """``(prepared mask, params or None, picture or None)`` of init image ``i`` of a Result, or of a PreparedMask."""
    if hasattr(result, "binary") and hasattr(result, "latent_mask"):  # a PreparedMask itself
        return result, None, None
    inpaint = getattr(result, "inpaint", None)
    if inpaint is None:
        raise ValueError("show_mask: this result holds no masks (result.inpaint is None): it is no inpainting job. "
                         "Inpaint with session.img2img(init_images=[...], mask=...), or pass an "
                         "nbdiffuse.masks.prepare(...) result")
    if not -len(inpaint) <= i < len(inpaint):
        raise IndexError(f"show_mask: i={i}, but the job had {len(inpaint)} init image(s) (result.inpaint); "
                         f"use 0 to {len(inpaint) - 1}")
    images = getattr(result, "images", [])
    return inpaint[i], getattr(result, "params", None), (images[i] if -len(images) <= i < len(images) else None)


def _show(ax, image, title: str, **kwargs) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="#6b7280")
    else:
        array = np.asarray(image)
        ax.imshow(array, interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=8)


def _size(image) -> str:
    return "" if image is None else f"{image.width}x{image.height}"


def show_mask(result, i: int = 0, *, picture: Image.Image | None = None, title: str | None = None):
    """A figure of what inpainting made of the mask of init image ``i``: your mask (binary, after "Inpaint not
    masked"), the blurred mask ("Mask blur"), the crop region drawn on the picture ("Only masked"; "Whole picture"
    has none), the job-size mask (the crop resized to width x height), the latent mask (1 = re-drawn) and the
    picture that was VAE-encoded (cropped, resized and filled by "Masked content").

    ``result``: an inpainting job's Result (its ``result.inpaint[i]``; the picture is its image ``i``) or an
    ``nbdiffuse.masks.PreparedMask`` (the picture is then its overlay, the original with a hole where it is
    re-drawn). ``picture`` replaces that picture. Masks show in grey (white = inpaint, 0..255; the latent mask
    0..1).

    >>> from PIL import Image
    >>> from nbdiffuse import masks
    >>> from nbdiffuse.viz import show_mask
    >>> image = Image.new("RGB", (128, 96), (200, 30, 30))
    >>> prepared = masks.prepare(image, masks.ellipse((128, 96), (40, 30, 72, 54)), width=64, height=64,
    ...                          inpaint_full_res=True, inpaint_full_res_padding=8)
    >>> fig = show_mask(prepared)
    >>> fig.axes[2].get_title()
    'crop region (Only masked): (22, 8, 90, 76)'
    >>> mask = masks.ellipse((128, 96), (40, 30, 72, 54))
    >>> show_mask(session.img2img(init_images=[image], mask=mask, denoising_strength=0.6))  # doctest: +SKIP
    """
    prep, params, shown = _prepared(result, i)
    if picture is None:
        picture = shown if shown is not None else prep.overlay
    fig = _figure(figsize=(10.5, 7.2), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255}

    inverted = params is not None and params.inpainting_mask_invert
    _show(axes[0], prep.binary, f"your mask{' (inverted)' if inverted else ''} {_size(prep.binary)}", **grey)
    blur = f" (Mask blur {params.mask_blur_x}" + (f"/{params.mask_blur_y})" if params.mask_blur_y != params.mask_blur_x
                                                  else ")") if params is not None else ""
    _show(axes[1], prep.blurred, f"blurred mask{blur}", **grey)

    if prep.crop_region is not None:
        x1, y1, x2, y2 = prep.crop_region
        crop_title = f"crop region (Only masked): {prep.crop_region}"
    elif prep.comment:
        crop_title = "no crop: blank mask, plain img2img"
    else:
        crop_title = "Whole picture (no crop)"
    _show(axes[2], picture, crop_title)
    if prep.crop_region is not None and picture is not None and picture.size == prep.binary.size:
        from matplotlib.patches import Rectangle

        # pixel (x, y) is drawn centred on (x, y): the region [x1, x2) spans x1 - 0.5 .. x2 - 0.5
        axes[2].add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="#22d3ee",
                                    linewidth=1.5))

    _show(axes[3], prep.mask, f"job-size mask {_size(prep.mask)}", **grey)
    lat = prep.latent_mask
    lat_title = "latent mask" if lat is None else f"latent mask {lat.shape[1]}x{lat.shape[0]} (1 = re-drawn)"
    _show(axes[4], lat, lat_title, cmap="gray", vmin=0.0, vmax=1.0)
    fill = "" if params is None else {0: " (fill)", 1: " (original)", 2: " (fill; latent noise)",
                                      3: " (fill; latent nothing)"}[params.inpainting_fill]
    _show(axes[5], prep.image, f"encoded picture {_size(prep.image)}{fill}")

    heading = title or (f"inpainting mask of init image {i}" + (f": {prep.comment}" if prep.comment else ""))
    fig.suptitle(heading, fontsize=10)
    return fig
