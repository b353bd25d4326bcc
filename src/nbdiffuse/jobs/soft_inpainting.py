"""Soft inpainting: A1111's built-in "Soft inpainting" extension (1.8+), its settings and its pure functions.

The settings carry A1111's script names and defaults (``SoftInpaintingSettings(1, 0.5, 4, 0, 0.5, 2)``); the
per-step blend (:func:`modified_nmask`, :func:`latent_blend`) and the final composite (:func:`adaptive_masks`) do
what the extension's ``get_modified_nmask``, ``latent_blend`` and ``apply_adaptive_masks`` do
(``extensions-builtin/soft-inpainting/scripts/soft_inpainting.py``; ``tests/test_soft_inpainting_a1111.py`` compares
them with that file's own outputs).

>>> s = SoftInpainting(mask_blend_scale=1.0)
>>> s.mask_blend_power, s.mask_blend_scale, list(s.infotext_fields())[:2]
(1.0, 1.0, ['Soft inpainting enabled', 'Soft inpainting schedule bias'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from .upscalers import resize_image

__all__ = ["SoftInpainting", "adaptive_masks", "latent_blend", "modified_nmask"]

ENABLED_KEY = "Soft inpainting enabled"
SCRIPT_TITLE = "Soft inpainting"  # the alwayson_scripts key (A1111 matches titles case-insensitively)

# field -> (infotext key, slider minimum, slider maximum), in A1111's order (its ui() return and infotext order)
_FIELDS: dict[str, tuple[str, float, float]] = {
    "mask_blend_power": ("Soft inpainting schedule bias", 0, 8),
    "mask_blend_scale": ("Soft inpainting preservation strength", 0, 8),
    "inpaint_detail_preservation": ("Soft inpainting transition contrast boost", 1, 32),
    "composite_mask_influence": ("Soft inpainting mask influence", 0, 1),
    "composite_difference_threshold": ("Soft inpainting difference threshold", 0, 8),
    "composite_difference_contrast": ("Soft inpainting difference contrast", 0, 8),
}
_UI_LABELS = {
    "mask_blend_power": "Schedule bias", "mask_blend_scale": "Preservation strength",
    "inpaint_detail_preservation": "Transition contrast boost", "composite_mask_influence": "Mask influence",
    "composite_difference_threshold": "Difference threshold", "composite_difference_contrast": "Difference contrast",
}


@dataclass(frozen=True)
class SoftInpainting:
    """A1111's soft inpainting settings (its script's names, defaults and slider ranges).

    ``mask_blend_power`` "Schedule bias" (0..8), ``mask_blend_scale`` "Preservation strength" (0..8),
    ``inpaint_detail_preservation`` "Transition contrast boost" (1..32), ``composite_mask_influence`` "Mask
    influence" (0..1), ``composite_difference_threshold`` "Difference threshold" (0..8),
    ``composite_difference_contrast`` "Difference contrast" (0..8).

    >>> SoftInpainting().inpaint_detail_preservation
    4.0
    >>> SoftInpainting(composite_mask_influence=2)
    Traceback (most recent call last):
    ...
    ValueError: soft inpainting composite_mask_influence ("Mask influence"): got 2; expected a number from 0 to 1
    """

    mask_blend_power: float = 1.0
    mask_blend_scale: float = 0.5
    inpaint_detail_preservation: float = 4.0
    composite_mask_influence: float = 0.0
    composite_difference_threshold: float = 0.5
    composite_difference_contrast: float = 2.0

    def __post_init__(self):
        for name, (_, lo, hi) in _FIELDS.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
            if not ok:
                raise ValueError(f'soft inpainting {name} ("{_UI_LABELS[name]}"): got {value!r}; '
                                 f"expected a number from {lo} to {hi}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> SoftInpainting | None:
        """Settings from an A1111 ``alwayson_scripts={"Soft inpainting": {"args": [...]}}`` list, or None when off.

        The order is the script's ``ui()``: enabled, schedule bias, preservation strength, transition contrast
        boost, mask influence, difference threshold, difference contrast. Missing trailing values take the
        defaults, as A1111's API fills a script's arguments from its UI defaults.

        >>> SoftInpainting.from_args([True, 1, 0.5, 4, 0, 0.5, 2]) == SoftInpainting()
        True
        >>> SoftInpainting.from_args([False]) is None
        True
        """
        if isinstance(args, Mapping):
            args = args.get("args", [])
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise ValueError(f"soft inpainting args: got {args!r}; expected a list [enabled, schedule bias, "
                             "preservation strength, transition contrast boost, mask influence, difference "
                             "threshold, difference contrast]")
        if len(args) > 1 + len(_FIELDS):
            raise ValueError(f"soft inpainting args: got {len(args)} values; the script takes at most "
                             f"{1 + len(_FIELDS)} (enabled, then {', '.join(_FIELDS)})")
        if not args:
            return None
        enabled = args[0]
        if not isinstance(enabled, (bool, int)) or isinstance(enabled, float):
            raise ValueError(f"soft inpainting args[0] (enabled): got {enabled!r}; expected True or False")
        if not enabled:
            return None
        return cls(**dict(zip(_FIELDS, args[1:])))

    @classmethod
    def from_alwayson_scripts(cls, scripts: Mapping[str, Any] | None) -> SoftInpainting | None:
        """The soft inpainting entry of an A1111 ``alwayson_scripts`` mapping (title matched case-insensitively).

        >>> SoftInpainting.from_alwayson_scripts({"soft inpainting": {"args": [True]}})
        SoftInpainting(mask_blend_power=1.0, mask_blend_scale=0.5, inpaint_detail_preservation=4.0, \
composite_mask_influence=0.0, composite_difference_threshold=0.5, composite_difference_contrast=2.0)
        """
        for title, entry in (scripts or {}).items():
            if str(title).lower() == SCRIPT_TITLE.lower():
                return cls.from_args(entry.get("args", []) if isinstance(entry, Mapping) else entry)
        return None

    def args(self) -> list[Any]:
        """The ``alwayson_scripts`` args list A1111 takes for these settings (enabled first).

        >>> SoftInpainting().args()
        [True, 1.0, 0.5, 4.0, 0.0, 0.5, 2.0]
        """
        return [True, *(getattr(self, name) for name in _FIELDS)]

    def infotext_fields(self) -> dict[str, Any]:
        """The infotext keys A1111 writes (``add_generation_params``), in its order.

        >>> SoftInpainting().infotext_fields()["Soft inpainting transition contrast boost"]
        4.0
        """
        return {ENABLED_KEY: True, **{key: getattr(self, name) for name, (key, _, _) in _FIELDS.items()}}

    @classmethod
    def from_infotext(cls, fields: Mapping[str, Any]) -> SoftInpainting | None:
        """Settings from parsed infotext fields, or None when ``Soft inpainting enabled`` is absent or False.

        Values may be strings (as A1111's parser returns them) or numbers; a key that is missing keeps its
        default, as pasting into A1111's default UI does.

        >>> SoftInpainting.from_infotext({"Soft inpainting enabled": "True",
        ...                               "Soft inpainting preservation strength": "1.5"}).mask_blend_scale
        1.5
        >>> SoftInpainting.from_infotext({"Steps": "20"}) is None
        True
        """
        enabled = fields.get(ENABLED_KEY)
        if isinstance(enabled, str):
            word = enabled.strip().lower()
            if word not in ("true", "false"):
                raise ValueError(f"infotext {ENABLED_KEY!r}: got {enabled!r}; expected True or False")
            enabled = word == "true"
        if not enabled:
            return None
        values = {}
        for name, (key, _, _) in _FIELDS.items():
            if key in fields:
                raw = fields[key]
                try:
                    value = float(raw.strip() if isinstance(raw, str) else raw)
                except (TypeError, ValueError):
                    raise ValueError(f"infotext {key!r}: got {raw!r}; expected a number") from None
                if not math.isfinite(value):
                    raise ValueError(f"infotext {key!r}: got {raw!r}; expected a finite number")
                values[name] = value
        return cls(**values)


#: infotext key -> SoftInpainting field, for the infotext reader (``Soft inpainting enabled`` decides on/off).
INFOTEXT_KEYS: dict[str, str] = {key: name for name, (key, _, _) in _FIELDS.items()}


# ---------------------------------------------------------------------------------------- the per-step blend


def _float64(t: torch.Tensor) -> torch.dtype:
    # A1111's torch_utils.float64: float64 where the device has it (not mps or xpu)
    return torch.float32 if t.device.type in ("mps", "xpu") else torch.float64


def modified_nmask(settings: SoftInpainting, nmask: torch.Tensor, sigma) -> torch.Tensor:
    """A1111's ``get_modified_nmask``: ``nmask ** (sigma ** schedule_bias * preservation_strength)``.

    ``nmask`` is the latent mask (1 = repaint, fractional at a blurred edge); ``sigma`` the step's noise level (A1111
    passes ``sigma[0]`` of the denoiser's float32 sigmas; a number is made that same float32 tensor). At high sigma
    the partly masked latents lean to the original, at low sigma to the new picture.

    >>> import torch
    >>> modified_nmask(SoftInpainting(), torch.tensor([0.0, 0.25, 1.0]), 4.0)  # 0.25 ** (4 * 0.5)
    tensor([0.0000, 0.0625, 1.0000])
    """
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(sigma, dtype=torch.float32, device=nmask.device)
    return torch.pow(nmask, (sigma ** settings.mask_blend_power) * settings.mask_blend_scale)


def latent_blend(settings: SoftInpainting, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A1111's ``latent_blend``: ``a`` (the original latent) and ``b`` (the denoised one) mixed by ``t`` per
    element, and each latent pixel's length over the channels set to the blend of the two lengths raised to the
    "transition contrast boost" (``inpaint_detail_preservation``): ``((|a|^p (1-t) + |b|^p t)^(1/p)``, in float64.

    ``a``, ``b``: (batch, channels, h, w); ``t``: (channels, h, w) or (batch, channels, h, w), its first channel
    weighing the lengths. Inputs are not modified.

    >>> import torch
    >>> a, b = torch.ones(1, 4, 2, 2), -torch.ones(1, 4, 2, 2)
    >>> latent_blend(SoftInpainting(), a, b, torch.full((4, 2, 2), 0.5))[0, :, 0, 0]  # lerp is 0: length kept
    tensor([0., 0., 0., 0.])
    """
    if t.dim() == 3:
        t2, t3 = t.unsqueeze(0), t[0].unsqueeze(0).unsqueeze(0)
    else:
        t2, t3 = t, t[:, 0][:, None]
    interp = a * (1 - t2) + b * t2
    wide = _float64(interp)
    p = settings.inpaint_detail_preservation
    current = torch.norm(interp, p=2, dim=1, keepdim=True).to(wide).add_(0.00001)
    desired = torch.norm(a, p=2, dim=1, keepdim=True).to(wide).pow_(p) * (1 - t3)
    desired.add_(torch.norm(b, p=2, dim=1, keepdim=True).to(wide).pow_(p) * t3).pow_(1 / p)
    return interp * desired.div_(current).to(interp.dtype)


# ------------------------------------------------------------------------------------- the final composite


def _gaussian_kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A1111's ``get_gaussian_kernel``: a (2r+1)^2 Gaussian, 1 at the centre, tapered to 0 one pixel past ``radius``."""
    zero = math.exp(-((radius + 1.0) ** 2) / (stddev * stddev))
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    sq = d[:, None] ** 2.0 + d[None, :] ** 2.0
    kernel = (np.exp(-sq / (stddev * stddev)) - zero) * (1 / (1 - zero))
    return np.maximum(0.0, kernel)


def _weighted_histogram_filter(img: np.ndarray, kernel: np.ndarray, percentile_min: float, percentile_max: float,
                               min_width: float = 1.0) -> np.ndarray:
    """A1111's ``weighted_histogram_filter`` for every pixel at once: the kernel-weighted values of a pixel's
    neighbourhood (cut at the borders) stacked in value order (ties in window order), and the weighted mean of the
    slice of that stack from ``percentile_min`` to ``percentile_max`` of its height (at least ``min_width`` high).
    The sums run in A1111's order, so the result is the same float32 array."""
    h, w = img.shape
    r = kernel.shape[0] // 2
    padded = np.zeros((h + 2 * r, w + 2 * r), dtype=img.dtype)
    padded[r:r + h, r:r + w] = img
    inside = np.zeros(padded.shape, dtype=bool)
    inside[r:r + h, r:r + w] = True
    offsets = [(dy, dx) for dy in range(kernel.shape[0]) for dx in range(kernel.shape[1])]  # A1111's window order
    values = np.stack([padded[dy:dy + h, dx:dx + w] for dy, dx in offsets], axis=-1).astype(np.float64)
    weights = np.stack([np.where(inside[dy:dy + h, dx:dx + w], kernel[dy, dx], 0.0) for dy, dx in offsets], axis=-1)
    order = np.argsort(values, axis=-1, kind="stable")  # outside cells weigh 0: where they sort changes no sum
    values = np.take_along_axis(values, order, axis=-1)
    weights = np.take_along_axis(weights, order, axis=-1)
    tops = np.add.accumulate(weights, axis=-1)  # sequential, like A1111's running sum
    bottoms = np.concatenate([np.zeros((h, w, 1)), tops[..., :-1]], axis=-1)
    total = tops[..., -1]
    lo, hi = total * percentile_min, total * percentile_max
    narrow = hi - lo < min_width
    centre = (lo + hi) / 2
    lo = np.where(narrow, centre - min_width / 2, lo)
    hi = np.where(narrow, centre + min_width / 2, hi)
    over = narrow & (hi > total)
    lo, hi = np.where(over, total - min_width, lo), np.where(over, total, hi)
    under = narrow & (lo < 0)
    lo, hi = np.where(under, 0.0, lo), np.where(under, min_width, hi)
    lo, hi = lo[..., None], hi[..., None]
    overlaps = (lo < tops) & (hi > bottoms)
    width = np.where(overlaps, np.minimum(hi, tops) - np.maximum(lo, bottoms), 0.0)
    value = np.add.accumulate(values * width, axis=-1)[..., -1]
    value_weight = np.add.accumulate(width, axis=-1)[..., -1]
    out = np.where(value_weight != 0, value / np.where(value_weight != 0, value_weight, 1.0), 0.0)
    return out.astype(img.dtype)


def _smootherstep(x):
    return x * x * x * (x * (6 * x - 15) + 10)


def _uncrop(mask: Image.Image, size: tuple[int, int], paste_to) -> Image.Image:
    # A1111's processing.uncrop: "crop and resize" to (w, h), pasted at (x, y) on a transparent canvas
    x, y, w, h = paste_to
    canvas = Image.new("RGBA", tuple(size))
    canvas.paste(resize_image(1, mask, w, h), (x, y))
    return canvas


def adaptive_masks(settings: SoftInpainting, nmask: torch.Tensor, latent_orig: torch.Tensor,
                   latent_processed: torch.Tensor, overlay_images: Sequence[Image.Image], width: int, height: int,
                   paste_to=None) -> tuple[list[Image.Image], list[Image.Image]]:
    """A1111's ``apply_adaptive_masks``: where the final latents barely moved from the original ones, paste the
    original pixels back.

    Per image: the latent distance ``|processed - orig|`` over the channels, a max-like (90-100th percentile) then a
    median-like (25-75th) weighted-histogram filter over a 5x5 tapered Gaussian, then the original's opacity
    ``1 - smootherstep(1 / (1 + (d / (threshold * s)) ** contrast))`` where ``s`` comes from the mask and the "mask
    influence" (``s`` = 1 at influence 0); that is made a W x H mask ("resize and fill"), blurred (PIL
    ``GaussianBlur(4)``) and, for "Only masked", put in place at ``paste_to`` (x, y, w, h) on the full picture.

    ``nmask``: the latent mask, (channels, h, w) or (batch, channels, h, w) as A1111 has it; ``overlay_images``: the
    original pictures (full size, no hole). Returns ``(masks_for_overlay, overlay_images)``: each mask is "L", 255
    where the new picture shows, and each overlay the original, RGBA, transparent there (A1111's
    ``mask_for_overlay`` in "L", and its ``overlay_image``). The input list is not changed.

    >>> import torch
    >>> from PIL import Image
    >>> orig = torch.zeros(1, 4, 8, 8)
    >>> new = orig.clone(); new[:, :, :, 4:] = 3.0  # the right half changed a lot
    >>> masks, overlays = adaptive_masks(SoftInpainting(), torch.ones(4, 8, 8), orig, new,
    ...                                  [Image.new("RGB", (64, 64), "white")], 64, 64)
    >>> masks[0].getpixel((2, 32)), masks[0].getpixel((62, 32)), overlays[0].getpixel((2, 32))[3]  # blurred edges
    (3, 254, 252)
    """
    latent_mask = (nmask[0] if nmask.dim() == 3 else nmask[:, 0]).float()
    scalar = 1 - (torch.clamp(latent_mask, min=0, max=1) ** (settings.mask_blend_scale / 2))
    scalar = 0.5 * (1 - settings.composite_mask_influence) + scalar * settings.composite_mask_influence
    scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
    distances = torch.norm(latent_processed - latent_orig, p=2, dim=1)
    kernel = _gaussian_kernel(1.5, 2)
    masks, overlays = [], []
    for i, (distance, overlay) in enumerate(zip(distances, overlay_images)):
        d = distance.float().cpu().numpy()
        d = _weighted_histogram_filter(d, kernel, 0.9, 1.0)
        d = _weighted_histogram_filter(d, kernel, 0.25, 0.75)
        s = (scalar[i] if scalar.shape[0] > i else scalar[0]) if scalar.ndim == 3 else scalar
        with np.errstate(divide="ignore", over="ignore"):  # a threshold of 0 gives inf: the new picture, as in A1111
            d = d / (settings.composite_difference_threshold * s)
            d = 1 - _smootherstep(1 / (1 + d ** settings.composite_difference_contrast))
        mask = Image.fromarray((255.0 * d).astype(np.uint8))
        mask = resize_image(2, mask, width, height).convert("L")
        mask = mask.filter(ImageFilter.GaussianBlur(radius=4))
        if paste_to is not None:
            mask = _uncrop(mask, overlay.size, paste_to).convert("L")
        masks.append(mask)
        masked = Image.new("RGBa", overlay.size)
        masked.paste(overlay.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
        overlays.append(masked.convert("RGBA"))
    return masks, overlays
