"""Upscalers for hires fix and img2img: A1111's six latent modes, its pixel upscalers, and model files.

Latent upscalers (A1111 ``shared.latent_upscale_modes``) are one call of ``torch.nn.functional.interpolate`` to
``(to_y // 8, to_x // 8)``. :data:`LATENT_EXTRA_MODES` adds ``"Latent (bislerp)"`` (an nbdiffuse extra, from
ComfyUI; A1111 cannot reproduce an image made with it): along each axis it takes the same two neighbours and
weights as bilinear, but interpolates each pixel's channel vector *spherically* in direction and *linearly* in
norm, so an upscaled latent keeps its vectors' lengths instead of shrinking them where neighbours disagree.

Pixel upscalers work on PIL images: ``"None"`` (Lanczos straight to the target size), ``"Lanczos"``,
``"Nearest"``, and ESRGAN-family model files (RealESRGAN, ESRGAN, SwinIR, ... anything ``spandrel`` loads; the
optional ``upscale`` extra) given by path or registered by name with :func:`register_upscaler`.
:func:`upscale_image` follows A1111's ``Upscaler.upscale``: up to three passes of the upscaler until the image
reaches ``scale`` (rounded down to a multiple of 8), then Lanczos to that size; ``resize_image`` then Lanczos-es to
the exact target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from ..suggest import suggest

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST

#: A1111's latent upscale modes: name -> (interpolate mode, antialias).
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
#: nbdiffuse's extra latent modes (not in A1111).
LATENT_EXTRA_MODES: tuple[str, ...] = ("Latent (bislerp)",)
#: A1111's built-in pixel upscalers.
PIXEL_UPSCALERS: tuple[str, ...] = ("None", "Lanczos", "Nearest")
#: File types a model upscaler may have.
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")

_REGISTERED: dict[str, Path] = {}
_MODEL_CACHE: dict[tuple[str, float], torch.nn.Module] = {}


def register_upscaler(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None) -> str:
    """Make a model file usable as ``hr_upscaler=name`` (the name defaults to the file's stem, as A1111 names
    them). Returns the name."""
    if path is None:
        path = Path(name_or_path)
        name = path.stem
    else:
        name, path = str(name_or_path), Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upscaler model {path}: no such file")
    _REGISTERED[name] = path
    return name


def available_upscalers() -> list[str]:
    """Every name ``hr_upscaler`` accepts right now (a model file's path is accepted too)."""
    return [*LATENT_UPSCALE_MODES, *LATENT_EXTRA_MODES, *PIXEL_UPSCALERS, *_REGISTERED]


def is_latent(name: str | None) -> bool:
    return name is None or name in LATENT_UPSCALE_MODES or name in LATENT_EXTRA_MODES


def resolve_upscaler(name: str | os.PathLike | None) -> str:
    """Check an upscaler name: ``None`` is ``"Latent"``; a known name or an existing model file passes (a path is
    returned as a string); anything else raises ``ValueError`` listing the available ones, closest first."""
    if name is None:
        return "Latent"
    text = str(name)
    if text in LATENT_UPSCALE_MODES or text in LATENT_EXTRA_MODES or text in PIXEL_UPSCALERS or text in _REGISTERED:
        return text
    lowered = {n.lower(): n for n in available_upscalers()}
    if text.lower() in lowered:
        return lowered[text.lower()]
    path = Path(text).expanduser()
    if path.suffix.lower() in MODEL_SUFFIXES and path.is_file():
        return str(path)
    hint = suggest(text, available_upscalers())
    where = (" No such model file either." if path.suffix.lower() in MODEL_SUFFIXES else
             " A model upscaler (ESRGAN, RealESRGAN, SwinIR, ...) can be given as a path to its file.")
    raise ValueError(f"Unknown upscaler {text!r}.{hint}{where} Available upscalers: "
                     f"{', '.join(available_upscalers())}.")


# ----------------------------------------------------------------------------------------------------- latent

def _bislerp_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Bislerp along one spatial ``dim`` (2 = rows, 3 = columns) of ``(N, C, H, W)``."""
    n_in = x.shape[dim]
    pos = (torch.arange(size, dtype=torch.float64) + 0.5) * (n_in / size) - 0.5  # bilinear, align_corners=False
    pos = pos.clamp(0, n_in - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    t = (pos - i0).to(x.dtype)
    shape = [1, 1, 1, 1]
    shape[dim] = size
    t = t.view(shape)
    a, b = x.index_select(dim, i0), x.index_select(dim, i1)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    small = so.abs() < 1e-4
    wa = torch.where(small, 1 - t, torch.sin((1 - t) * omega) / torch.where(small, 1.0, so))
    wb = torch.where(small, t, torch.sin(t * omega) / torch.where(small, 1.0, so))
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return direction * ((1 - t) * na + t * nb)


def bislerp(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` latents to ``size = (h, w)``: bilinear sample positions and weights, but each
    pixel's C-vector is slerped in direction and lerped in norm (columns first, then rows)."""
    x = latents.float()
    x = _bislerp_axis(x, int(size[1]), 3)
    x = _bislerp_axis(x, int(size[0]), 2)
    return x.to(latents.dtype)


def upscale_latents(latents: torch.Tensor, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """Latents ``(N, C, H, W)`` resized to ``size = (h, w)`` by a latent mode's name (A1111: one ``interpolate``)."""
    if mode in LATENT_EXTRA_MODES:
        return bislerp(latents, size)
    if mode not in LATENT_UPSCALE_MODES:
        raise ValueError(f"{mode!r} is not a latent upscale mode: {', '.join(LATENT_UPSCALE_MODES)}, "
                         f"{', '.join(LATENT_EXTRA_MODES)}")
    interp, antialias = LATENT_UPSCALE_MODES[mode]
    return torch.nn.functional.interpolate(latents, size=tuple(size), mode=interp, antialias=antialias)


# ------------------------------------------------------------------------------------------------------ pixels

def load_model(path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an upscaler model file with ``spandrel`` (cached by path and mtime). Returns a module mapping
    ``(1, 3, H, W)`` in [0, 1] to ``(1, 3, sH, sW)`` with a ``scale`` attribute."""
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    try:
        import spandrel
    except ImportError as e:
        raise ImportError(f"Upscaler model files need the optional 'spandrel' package (pip install spandrel "
                          f"torchvision; spandrel imports torchvision): {e}") from None
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    model = descriptor.model.eval().requires_grad_(False)
    model.scale = descriptor.scale
    _MODEL_CACHE.clear()  # keep one model in memory at a time
    _MODEL_CACHE[key] = model
    return model


@torch.no_grad()
def _model_pass(model, image: Image.Image, device=None) -> Image.Image:
    import numpy as np

    param = next(iter(model.parameters()), None)
    device = device or (param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None else torch.float32
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    y = model(x.to(device, dtype)).float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((y * 255).round().astype(np.uint8))


def upscale_image(image: Image.Image, scale: float, name: str) -> Image.Image:
    """A1111's ``Upscaler.upscale``: repeat the upscaler (at most 3 times) until the image is at least
    ``scale`` times larger, rounded down to a multiple of 8, then Lanczos to exactly that size."""
    dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
    if name == "Lanczos" or name == "Nearest":
        resample = LANCZOS if name == "Lanczos" else NEAREST

        def step(im):
            return im.resize((int(im.width * scale), int(im.height * scale)), resample=resample)
    else:
        model = load_model(_REGISTERED.get(name, name))

        def step(im):
            return _model_pass(model, im)
    for i in range(3):
        if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
            break
        before = image.size
        image = step(image)
        if image.size == before:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=LANCZOS)
    return image


def _resize(image: Image.Image, w: int, h: int, upscaler: str | None) -> Image.Image:
    if upscaler is None or upscaler == "None" or image.mode == "L" or is_latent(upscaler):
        return image.resize((w, h), resample=LANCZOS)
    scale = max(w / image.width, h / image.height)
    if scale > 1.0:
        image = upscale_image(image, scale, upscaler)
    if image.size != (w, h):
        image = image.resize((w, h), resample=LANCZOS)
    return image


RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def resize_image(mode: int, image: Image.Image, width: int, height: int, upscaler: str | None = None) -> Image.Image:
    """A1111's ``images.resize_image``: 0 just resize (stretch), 1 crop and resize (cover, centred crop),
    2 resize and fill (fit, centred, the borders filled by stretching the image's edge rows/columns).
    Mode 3 (latent upscale) resizes in latent space, so here it is mode 0."""
    image = image.convert("RGB")
    if mode in (0, 3):
        return _resize(image, width, height, upscaler)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = _resize(image, src_w, src_h, upscaler)
        out = Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out
    if mode != 2:
        raise ValueError(f"resize_mode={mode!r}: must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}), "
                         f"2 ({RESIZE_MODES[2]}) or 3 ({RESIZE_MODES[3]})")
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _resize(image, src_w, src_h, upscaler)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                      box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill + src_w, 0))
    return out
