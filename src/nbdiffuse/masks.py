"""Inpainting masks as A1111 1.10 makes them: pure functions on PIL images and numpy arrays.

A mask is white (255) where the picture is repainted and black (0) where it is kept. :func:`prepare` is the mask
part of A1111's ``StableDiffusionProcessingImg2Img.init`` for one init image, step by step:

1. :func:`binary_mask` (A1111 ``create_binary_mask``: an RGBA mask with transparency is read from its alpha,
   thresholded at 128 when ``mask_round``; anything else is converted to grey), inverted for "Inpaint not masked";
2. :func:`blur`: ``cv2.GaussianBlur`` along x, then along y (kernel ``2 * int(2.5 * blur + 0.5) + 1``);
3. "Only masked" (``inpaint_full_res``): :func:`crop_region` of the blurred mask grown by the padding,
   :func:`expand_crop_region` to the job's aspect ratio, the crop of mask and picture resized to the job size
   ("resize and fill"); a blank mask falls back to plain img2img with A1111's comment. "Whole picture": the mask is
   resized with the job's ``resize_mode`` and the overlay mask is the mask doubled (so its soft edge is half as wide);
4. the overlay (the original with a hole where the mask is), :func:`fill` ("fill", "latent noise", "latent
   nothing" start from the picture blurred into the hole), and :func:`latent_mask` (the job-size mask resized to the
   latent, bicubic, rounded when ``mask_round``).

After decoding, :func:`apply_overlay` pastes the result back (:func:`uncrop`) and lays the overlay on top, so that
the pixels outside the (blurred) mask are the original's.

>>> from nbdiffuse import masks
>>> from PIL import Image
>>> picture = Image.new("RGB", (1024, 1024), "grey")
>>> p = masks.prepare(picture, masks.rectangle((1024, 1024), (200, 200, 264, 232)), width=512, height=512,
...                   inpaint_full_res_padding=32, mask_blur_x=0, mask_blur_y=0)
>>> p.crop_region, p.paste_to, p.image.size, p.latent_mask.shape
((168, 152, 296, 280), (168, 152, 128, 128), (512, 512), (64, 64))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from .jobs.upscalers import resize_image

__all__ = ["BLANK_MASK_COMMENT", "INPAINTING_FILL", "PreparedMask", "rectangle", "ellipse", "from_alpha",
           "as_mask", "binary_mask", "blur", "crop_region", "expand_crop_region", "fill", "latent_mask", "uncrop",
           "apply_overlay", "prepare"]

#: A1111's comment (and log line) when "Only masked" meets a blank mask and the job falls back to plain img2img
#: (its spelling kept).
BLANK_MASK_COMMENT = 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'
#: ``inpainting_fill`` values, as A1111's "Masked content" radio and infotext name them.
INPAINTING_FILL = ("fill", "original", "latent noise", "latent nothing")

Box = tuple[int, int, int, int]


@dataclass
class PreparedMask:
    """Everything A1111's img2img init makes of a mask for one init image (see :func:`prepare`).

    ``image`` is the RGB picture at the job size that is VAE-encoded (cropped and resized for "Only masked",
    filled unless "original"); ``mask`` the job-size mask (A1111's ``image_mask``) and ``latent_mask`` its float32
    (h, w) latent version (A1111's ``latmask`` before it is tiled over the channels: 1 = repaint); ``overlay`` the
    original as RGBA with a transparent hole, ``mask_for_overlay`` the mask that cut it; ``crop_region`` (x1, y1, x2,
    y2) and ``paste_to`` (x, y, w, h) for "Only masked"; ``blurred`` the full-size blurred mask, ``binary`` the
    user's mask after :func:`binary_mask` and inversion; ``comment`` A1111's blank-mask note, else None. After the
    blank-mask fallback ``mask``, ``latent_mask``, ``overlay`` and ``mask_for_overlay`` are None (plain img2img).

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> p = masks.prepare(Image.new("RGB", (64, 64)), Image.new("L", (64, 64)), width=64, height=64)
    >>> p.comment == masks.BLANK_MASK_COMMENT, p.mask
    (True, None)
    """

    image: Image.Image
    mask: Image.Image | None
    latent_mask: np.ndarray | None
    mask_for_overlay: Image.Image | None
    overlay: Image.Image | None
    crop_region: Box | None
    paste_to: Box | None
    blurred: Image.Image
    binary: Image.Image
    comment: str | None = None


# ---------------------------------------------------------------------------------------------- making masks


def _check_size(size, name: str = "size") -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={size!r}: give (width, height) in pixels") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{name}={size!r}: width and height must be positive")
    return w, h


def _check_box(box) -> Box:
    try:
        x1, y1, x2, y2 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise TypeError(f"box={box!r}: give (x1, y1, x2, y2), the right and bottom edges excluded as in "
                        f"PIL's crop") from None
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box={box!r}: x2 must be greater than x1 and y2 greater than y1")
    return x1, y1, x2, y2


def rectangle(size: tuple[int, int], box: Box) -> Image.Image:
    """An "L" mask of ``size`` (width, height), white inside ``box`` (x1, y1, x2, y2; x2 and y2 excluded, as in
    PIL's ``crop``) and black elsewhere. A box reaching outside the picture is clipped.

    >>> from nbdiffuse import masks
    >>> m = masks.rectangle((96, 64), (10, 20, 30, 40))
    >>> m.mode, m.size, m.getbbox()
    ('L', (96, 64), (10, 20, 30, 40))
    """
    size, (x1, y1, x2, y2) = _check_size(size), _check_box(box)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((x1, y1, x2 - 1, y2 - 1), fill=255)
    return mask


def ellipse(size: tuple[int, int], box: Box) -> Image.Image:
    """An "L" mask of ``size`` (width, height), white inside the ellipse inscribed in ``box`` (x1, y1, x2, y2;
    x2 and y2 excluded) and black elsewhere.

    >>> from nbdiffuse import masks
    >>> m = masks.ellipse((96, 64), (10, 20, 50, 40))
    >>> m.getbbox(), m.getpixel((30, 30)), m.getpixel((10, 20))
    ((10, 20, 50, 40), 255, 0)
    """
    size, (x1, y1, x2, y2) = _check_size(size), _check_box(box)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((x1, y1, x2 - 1, y2 - 1), fill=255)
    return mask


def from_alpha(image: Image.Image, *, repaint: str = "transparent") -> Image.Image:
    """The "L" mask held in an image's transparency.

    ``repaint="transparent"`` (default): the erased (transparent) pixels are repainted (255 - alpha), which is what
    an image with a region rubbed out in an editor means. ``repaint="opaque"``: the opaque pixels are repainted
    (the alpha itself); that is how A1111 reads an RGBA *mask* (its brush strokes), and what passing such a mask
    straight to ``mask=`` does (:func:`binary_mask`). Soft alpha stays soft.

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> picture = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    >>> picture.paste((0, 0, 0, 0), (8, 8, 24, 24))            # rub out a square
    >>> masks.from_alpha(picture).getbbox()
    (8, 8, 24, 24)
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"from_alpha: expected a PIL image with transparency, got {type(image).__name__}")
    if repaint not in ("transparent", "opaque"):
        raise ValueError(f"repaint={repaint!r}: must be 'transparent' or 'opaque'")
    if not image.has_transparency_data:
        raise ValueError(f"from_alpha: this {image.mode} image has no transparency; give an RGBA/LA image (or a "
                         f"palette image with a transparent colour), or pass the mask itself as mask=")
    alpha = image.convert("RGBA").getchannel("A")
    return ImageOps.invert(alpha) if repaint == "transparent" else alpha


def _array_to_image(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[2] in (3, 4)):
        raise ValueError(f"{name}: an array mask must be (height, width) (or (h, w, 1|3|4)), got shape {a.shape}")
    if a.dtype == np.bool_:
        return Image.fromarray(a.astype(np.uint8) * 255)
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise ValueError(f"{name}: the float array holds NaN; give values in 0..1 (1 = repaint)")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"{name}: a float array must hold values in 0..1 (1 = repaint), got "
                             f"{a.min():g}..{a.max():g}; for 0..255 values give a uint8 array")
        return Image.fromarray(np.round(a * 255).astype(np.uint8))
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{name}: an integer array must hold values in 0..255 (255 = repaint), got "
                             f"{a.min()}..{a.max()}")
        return Image.fromarray(a.astype(np.uint8))
    raise TypeError(f"{name}: an array of {a.dtype} cannot be a mask; give bool, 0..1 float or 0..255 integers")


def as_mask(value, size: tuple[int, int] | None = None, *, round: bool = True, name: str = "mask") -> Image.Image:
    """The "L" mask (255 = repaint) from a PIL image, a numpy array (bool, 0..1 float, 0..255 integers) or an image
    file path, read as A1111 reads an uploaded mask (:func:`binary_mask`: an RGBA image with transparency gives its
    alpha, thresholded at 128 when ``round``). With ``size`` (width, height) a mask of another size is refused.

    >>> import numpy as np
    >>> from nbdiffuse import masks
    >>> a = np.zeros((64, 96), bool); a[8:24, 16:48] = True
    >>> m = masks.as_mask(a, (96, 64))
    >>> m.mode, m.getbbox()
    ('L', (16, 8, 48, 24))
    """
    if isinstance(value, (str, os.PathLike)):
        try:
            with Image.open(value) as f:
                value = f.copy()
        except FileNotFoundError:
            raise FileNotFoundError(f"{name}: no such file {os.fspath(value)!r}") from None
        except OSError as e:
            raise ValueError(f"{name}: {os.fspath(value)!r} is not an image Pillow can read ({e})") from None
    if isinstance(value, np.ndarray):
        value = _array_to_image(value, name)
    elif not isinstance(value, Image.Image):
        raise TypeError(f"{name}: expected a PIL image, a numpy array or an image file path, got "
                        f"{type(value).__name__}")
    if value.mode in ("I", "F") or value.mode.startswith("I;16"):
        raise ValueError(f"{name}: a {value.mode} (16/32-bit) image cannot be a mask; convert it to 8-bit 'L' "
                         f"(255 = repaint) first")
    if size is not None:
        size = _check_size(size)
        if value.size != size:
            raise ValueError(f"{name} is {value.size[0]}x{value.size[1]} but the picture is {size[0]}x{size[1]}: "
                             f"give a mask of the picture's size (e.g. mask.resize(picture.size))")
    return binary_mask(value, round=round)


# ------------------------------------------------------------------------------------------ A1111's pipeline


def binary_mask(image: Image.Image, round: bool = True) -> Image.Image:
    """A1111's ``create_binary_mask``: an RGBA mask whose alpha is not all 255 gives its alpha channel (with
    ``round``, 255 where alpha > 128 and 0 elsewhere); any other image is converted to "L" as it is (an "L" or RGB
    mask is not thresholded).

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> stroke = Image.new("RGBA", (8, 8), (0, 0, 0, 0)); stroke.putpixel((1, 1), (255, 255, 255, 200))
    >>> masks.binary_mask(stroke).getpixel((1, 1)), masks.binary_mask(stroke, round=False).getpixel((1, 1))
    (255, 200)
    """
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round else alpha
    return image.convert("L")


def _kernel_size(sigma: float) -> int:
    return 2 * int(2.5 * sigma + 0.5) + 1


def blur(mask: Image.Image, x: float, y: float | None = None) -> Image.Image:
    """A1111's mask blur: ``cv2.GaussianBlur`` of the 8-bit mask along x with sigma ``x`` and a kernel of
    ``2 * int(2.5 * x + 0.5) + 1`` pixels (reflect-101 border), then along y with ``y`` (default: ``x``). A blur of
    0 (or less) leaves that axis alone.

    >>> from nbdiffuse import masks
    >>> m = masks.blur(masks.rectangle((64, 64), (24, 24, 40, 40)), 4)
    >>> m.getbbox(), m.getpixel((32, 32))
    ((14, 14, 50, 50), 235)
    """
    y = x if y is None else y
    a = np.array(mask.convert("L"))
    if x > 0:
        a = cv2.GaussianBlur(a, (_kernel_size(x), 1), x)
    if y > 0:
        a = cv2.GaussianBlur(a, (1, _kernel_size(y)), y)
    return Image.fromarray(a)


def crop_region(mask: Image.Image, pad: int = 0) -> Box | None:
    """A1111's ``masking.get_crop_region_v2``: the bounding box (x1, y1, x2, y2) of the mask's non-zero pixels,
    grown by ``pad`` on each side and clamped to the mask; None for a blank mask.

    >>> from nbdiffuse import masks
    >>> masks.crop_region(masks.rectangle((512, 512), (10, 10, 20, 20)), 32)
    (0, 0, 52, 52)
    """
    if not isinstance(mask, Image.Image):
        mask = Image.fromarray(mask)
    box = mask.getbbox()
    if not box:
        return None
    if not pad:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(region: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """A1111's ``masking.expand_crop_region``: grow the short side of ``region`` so that it has the job's aspect
    ratio ``width / height`` (the difference, truncated, split ``d // 2`` before and the rest after), shift it back
    inside the image, then clamp. At the image's edges the result can keep another aspect ratio.

    >>> from nbdiffuse import masks
    >>> masks.expand_crop_region((168, 168, 296, 264), 512, 512, 1024, 1024)
    (168, 152, 296, 280)
    """
    x1, y1, x2, y2 = region
    ratio_region = (x2 - x1) / (y2 - y1)
    ratio = width / height
    if ratio_region > ratio:
        diff = int((x2 - x1) / ratio - (y2 - y1))
        y1, y2 = y1 - diff // 2, y2 + diff - diff // 2
        if y2 >= image_height:
            y1, y2 = y1 - (y2 - image_height), image_height
        if y1 < 0:
            y1, y2 = 0, y2 - y1
        y2 = min(y2, image_height)
    else:
        diff = int((y2 - y1) * ratio - (x2 - x1))
        x1, x2 = x1 - diff // 2, x2 + diff - diff // 2
        if x2 >= image_width:
            x1, x2 = x1 - (x2 - image_width), image_width
        if x1 < 0:
            x1, x2 = 0, x2 - x1
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's ``masking.fill`` ("Masked content: fill"): the picture outside ``mask`` blurred into the masked
    area, by alpha-compositing Gaussian blurs of radius 256, 64, 16 (twice), 4 (four times), 2 (twice) and 0 of the
    premultiplied picture-with-a-hole. Outside the mask the picture is unchanged.

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> picture = Image.new("RGB", (64, 64), (200, 30, 30))
    >>> masks.fill(picture, masks.rectangle((64, 64), (16, 16, 48, 48))).getpixel((32, 32))
    (199, 30, 30)
    """
    if image.size != mask.size:
        raise ValueError(f"fill: the picture is {image.width}x{image.height} but the mask "
                         f"{mask.width}x{mask.height}; they must have the same size")
    out = Image.new("RGBA", image.size)
    hole = Image.new("RGBa", image.size)
    hole.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = hole.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def latent_mask(mask: Image.Image, size: tuple[int, int], round: bool = True) -> np.ndarray:
    """A1111's latent mask: ``mask`` (RGB copy) resized to ``size`` (latent width, height) with PIL's bicubic
    filter, divided by 255 and, with ``round``, rounded (``np.around``: 0.5 goes to 0). float32 (h, w), 1 = repaint.

    >>> from nbdiffuse import masks
    >>> masks.latent_mask(masks.rectangle((64, 64), (0, 0, 32, 64)), (8, 8))[0]
    array([1., 1., 1., 1., 0., 0., 0., 0.], dtype=float32)
    """
    small = mask.convert("RGB").resize(tuple(size), resample=Image.Resampling.BICUBIC)
    a = np.array(small, dtype=np.float32)[:, :, 0] / 255
    return np.around(a) if round else a


_latent_mask = latent_mask  # prepare() takes A1111's p.latent_mask under that name


def uncrop(image: Image.Image, size: tuple[int, int], paste_to: Box) -> Image.Image:
    """A1111's ``processing.uncrop``: ``image`` resized to (w, h) of ``paste_to`` (x, y, w, h) with "crop and
    resize", pasted at (x, y) on a transparent RGBA canvas of ``size``.

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> canvas = masks.uncrop(Image.new("RGB", (64, 64), "red"), (100, 80), (10, 20, 32, 32))
    >>> canvas.mode, canvas.size, canvas.getbbox()
    ('RGBA', (100, 80), (10, 20, 42, 52))
    """
    x, y, w, h = paste_to
    canvas = Image.new("RGBA", tuple(size))
    canvas.paste(resize_image(1, image, w, h), (x, y))
    return canvas


def apply_overlay(image: Image.Image, paste_to: Box | None, overlay: Image.Image | None) -> Image.Image:
    """A1111's ``processing.apply_overlay`` (its first return value): for "Only masked" the job-size result is
    put back in place (:func:`uncrop`), then the overlay (the original with a hole) is composited on top, so that
    outside the blurred mask the picture is the original. Without an overlay the image is returned as it is.

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> picture = Image.new("RGB", (64, 64), "blue")
    >>> p = masks.prepare(picture, masks.rectangle((64, 64), (16, 16, 48, 48)), width=64, height=64)
    >>> out = masks.apply_overlay(Image.new("RGB", (64, 64), "red"), p.paste_to, p.overlay)
    >>> out.getpixel((0, 0)), out.getpixel((32, 32))
    ((0, 0, 255), (255, 0, 0))
    """
    if overlay is None:
        return image
    if paste_to is not None:
        image = uncrop(image, overlay.size, paste_to)
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


# -------------------------------------------------------------------------------------------------- prepare


def _resize_mask(mode: int, mask: Image.Image, width: int, height: int) -> Image.Image:
    # A1111's resize_image on a mask: Lanczos whatever the img2img upscaler ("L" images never go through it), and
    # mode 3 (latent upscale) falls into its last branch, "resize and fill".
    return resize_image(2 if mode == 3 else mode, mask, width, height).convert("L")


def _flatten(image: Image.Image) -> Image.Image:
    # A1111's images.flatten onto img2img_background_color (#ffffff): a paste with the image as its own mask.
    if image.mode != "RGBA" and image.has_transparency_data:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, "#ffffff")
        background.paste(image, mask=image)
        image = background
    return image.convert("RGB")


def _hole(image: Image.Image, mask: Image.Image) -> Image.Image:
    # The overlay: the picture, premultiplied, pasted through the inverted mask onto transparency.
    out = Image.new("RGBa", image.size)
    out.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return out.convert("RGBA")


def prepare(init_image: Image.Image, mask, *, width: int, height: int, resize_mode: int = 0,
            mask_blur_x: float = 4, mask_blur_y: float = 4, mask_round: bool = True, inpainting_mask_invert: int = 0,
            inpainting_fill: int = 0, inpaint_full_res: bool = True, inpaint_full_res_padding: int = 0,
            latent_size: tuple[int, int] | None = None, upscaler: str | None = None, upscalers=None,
            latent_mask=None) -> PreparedMask:
    """The mask part of A1111's img2img init for one init image (defaults: A1111's API defaults).

    ``mask`` is anything :func:`as_mask` takes. Order as A1111: :func:`binary_mask`, inversion
    (``inpainting_mask_invert``), :func:`blur` (x then y); then "Only masked" (``inpaint_full_res``): the crop
    region of the blurred mask with ``inpaint_full_res_padding``, :func:`expand_crop_region` to ``width/height``,
    the mask crop resized to the job size with "resize and fill" (a blank mask: plain img2img, ``comment`` says
    so); or "Whole picture": the mask resized with ``resize_mode`` and the overlay mask doubled. The init image is
    flattened onto white, resized with ``resize_mode`` (whole picture) or cropped and resized with "resize and
    fill" (only masked; ``upscaler``, a name ``nbdiffuse.jobs.upscalers`` knows, enlarges it as A1111's
    ``upscaler_for_img2img`` does), and filled (:func:`fill`) unless ``inpainting_fill == 1`` ("original").
    ``latent_size`` (width, height; default the job size // 8) is the size of :func:`latent_mask`. A separate
    ``latent_mask`` (A1111's ``p.latent_mask``, job-sized: the outpainting scripts' second mask) replaces the
    processed mask for the fill and the latent mask, as in A1111.

    A mask of another size than the picture is resized with the picture in "Whole picture" (as A1111 does); for
    "Only masked" it is refused (A1111 would cut the picture at the mask's coordinates).

    >>> from nbdiffuse import masks
    >>> from PIL import Image
    >>> p = masks.prepare(Image.new("RGB", (512, 512)), masks.rectangle((512, 512), (0, 0, 40, 300)),
    ...                   width=512, height=768, inpaint_full_res_padding=32)
    >>> p.crop_region, p.mask.size
    ((0, 0, 228, 342), (512, 768))
    """
    if not isinstance(init_image, Image.Image):
        raise TypeError(f"init_image: expected a PIL image, got {type(init_image).__name__}")
    width, height = _check_size((width, height), "width, height")
    if resize_mode not in (0, 1, 2, 3):
        raise ValueError(f"resize_mode={resize_mode!r}: must be 0 (just resize), 1 (crop and resize), 2 (resize and "
                         f"fill) or 3 (just resize, latent upscale)")
    if inpainting_fill not in (0, 1, 2, 3):
        raise ValueError(f"inpainting_fill={inpainting_fill!r}: must be 0 (fill), 1 (original), 2 (latent noise) "
                         f"or 3 (latent nothing)")
    if inpaint_full_res_padding < 0:
        raise ValueError(f"inpaint_full_res_padding={inpaint_full_res_padding!r}: the padding is in pixels, 0 or more")
    latent_size = (width // 8, height // 8) if latent_size is None else _check_size(latent_size, "latent_size")
    binary = as_mask(mask, round=mask_round)
    if inpaint_full_res and binary.size != init_image.size:
        raise ValueError(f"mask is {binary.width}x{binary.height} but the init image is {init_image.width}x"
                         f"{init_image.height}: 'Only masked' (inpaint_full_res=True) finds the crop region in the "
                         f"mask's pixels and cuts it from the image, so they must have the same size. Resize the mask "
                         f"(mask.resize(image.size)) or use 'Whole picture' (inpaint_full_res=False), where the mask "
                         f"is resized with resize_mode as A1111 does")
    if (not inpaint_full_res and resize_mode == 3 and inpainting_fill != 1
            and init_image.size != (width, height)):
        # A1111 leaves the picture at its size for mode 3 and masking.fill then fails on the job-size mask.
        raise ValueError(f"resize_mode=3 (latent upscale) with inpainting_fill={inpainting_fill} "
                         f"({INPAINTING_FILL[inpainting_fill]}) and 'Whole picture' needs an init image of the job "
                         f"size {width}x{height} (it is {init_image.width}x{init_image.height}); use resize_mode 0, "
                         f"inpainting_fill=1 (original) or 'Only masked'")

    if inpainting_mask_invert:
        binary = ImageOps.invert(binary)
    blurred = blur(binary, mask_blur_x, mask_blur_y)

    region = paste_to = comment = None
    if inpaint_full_res:
        mask_for_overlay = blurred
        region = crop_region(blurred, inpaint_full_res_padding)
        if region:
            region = expand_crop_region(region, width, height, blurred.width, blurred.height)
            x1, y1, x2, y2 = region
            job_mask = _resize_mask(2, blurred.crop(region), width, height)
            paste_to = (x1, y1, x2 - x1, y2 - y1)
        else:
            job_mask = mask_for_overlay = None
            comment = BLANK_MASK_COMMENT
    else:
        job_mask = _resize_mask(resize_mode, blurred, width, height)
        doubled = np.clip(np.asarray(job_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
        mask_for_overlay = Image.fromarray(doubled)

    image = _flatten(init_image)
    if region is None and resize_mode != 3:
        image = resize_image(resize_mode, image, width, height, upscaler, upscalers)

    overlay = None
    if job_mask is not None:
        if mask_for_overlay.size != image.size:
            mask_for_overlay = _resize_mask(resize_mode, mask_for_overlay, image.width, image.height)
        overlay = _hole(image, mask_for_overlay)

    if region is not None:
        image = resize_image(2, image.crop(region), width, height, upscaler, upscalers)

    lat = None
    if job_mask is not None:
        source = job_mask if latent_mask is None else as_mask(latent_mask, None, round=mask_round, name="latent_mask")
        if inpainting_fill != 1:
            image = fill(image, source)
        lat = _latent_mask(source, latent_size, round=mask_round)

    return PreparedMask(image=image, mask=job_mask, latent_mask=lat, mask_for_overlay=mask_for_overlay,
                        overlay=overlay, crop_region=region, paste_to=paste_to, blurred=blurred, binary=binary,
                        comment=comment)
