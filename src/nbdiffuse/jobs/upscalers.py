"""Upscalers for hires fix and img2img: A1111's six latent modes, its pixel upscalers, and model files.

Latent upscalers (A1111 ``shared.latent_upscale_modes``) are one call of ``torch.nn.functional.interpolate`` to
``(to_y // 8, to_x // 8)``. :data:`LATENT_EXTRA_MODES` adds ``"Latent (bislerp)"`` (an nbdiffuse extra, from
ComfyUI; A1111 cannot reproduce an image made with it): along each axis it takes the same two neighbours and
weights as bilinear, but interpolates each pixel's channel vector *spherically* in direction and *linearly* in
norm, so an upscaled latent keeps its vectors' lengths instead of shrinking them where neighbours disagree.

Pixel upscalers work on PIL images: ``"None"`` (Lanczos straight to the target size), ``"Lanczos"``,
``"Nearest"``, and ESRGAN-family model files (RealESRGAN, ESRGAN, SwinIR, ... anything ``spandrel`` loads; the
optional ``upscale`` extra) given by path or registered by name in a session's :class:`Upscalers`
(``session.upscalers.register(path)``; a session also finds those in its models folder).
:func:`upscale_image` follows A1111's ``Upscaler.upscale``: up to three passes of the upscaler until the image
reaches ``scale`` (rounded down to a multiple of 8), then Lanczos to that size; ``resize_image`` then Lanczos-es to
the exact target.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
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


def available_upscalers(registered: Iterable[str] = ()) -> list[str]:
    """Every name ``hr_upscaler`` accepts: the built-in ones, then ``registered`` (a model file's path is accepted
    too).

    >>> available_upscalers(["4x-UltraSharp"])[-4:]
    ['None', 'Lanczos', 'Nearest', '4x-UltraSharp']
    """
    return [*LATENT_UPSCALE_MODES, *LATENT_EXTRA_MODES, *PIXEL_UPSCALERS, *registered]


def is_latent(name: str | None) -> bool:
    return name is None or name in LATENT_UPSCALE_MODES or name in LATENT_EXTRA_MODES


def resolve_upscaler(name: str | os.PathLike | None, registered: Collection[str] = ()) -> str:
    """Check an upscaler name: ``None`` is ``"Latent"``; a built-in name, one of ``registered`` or an existing
    model file passes (a path is returned as a string); anything else raises ``ValueError`` listing the available
    ones, closest first.

    >>> resolve_upscaler("lanczos")
    'Lanczos'
    """
    if name is None:
        return "Latent"
    text = str(name)
    available = available_upscalers(registered)
    if text in available:
        return text
    lowered = {n.lower(): n for n in available}
    if text.lower() in lowered:
        return lowered[text.lower()]
    path = Path(text).expanduser()
    if path.suffix.lower() in MODEL_SUFFIXES and path.is_file():
        return str(path)
    hint = suggest(text, available)
    where = (" No such model file either." if path.suffix.lower() in MODEL_SUFFIXES else
             " A model upscaler (ESRGAN, RealESRGAN, SwinIR, ...) can be given as a path to its file.")
    raise ValueError(f"Unknown upscaler {text!r}.{hint}{where} Available upscalers: {', '.join(available)}.")


class Upscalers:
    """A session's upscaler models (``session.upscalers``): model files registered by name, and the one model kept
    in memory (``free()``, which ``session.unload()`` calls, lets it go). Two sessions never see each other's.

    >>> ups = Upscalers()
    >>> ups.resolve("lanczos")
    'Lanczos'
    >>> ups.register("models/ESRGAN/4x-UltraSharp.pth")  # doctest: +SKIP
    '4x-UltraSharp'
    """

    def __init__(self):
        self.files: dict[str, Path] = {}  # registered name -> model file
        self._loaded: tuple[tuple[str, float], torch.nn.Module] | None = None  # ((path, mtime), model)

    def register(self, name_or_path: str | os.PathLike, path: str | os.PathLike | None = None) -> str:
        """Make a model file usable as ``hr_upscaler=name`` (the name defaults to the file's stem, as A1111 names
        them). Returns the name."""
        if path is None:
            path = Path(name_or_path)
            name = path.stem
        else:
            name, path = str(name_or_path), Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"upscaler model {path}: no such file")
        self.files[name] = path
        return name

    def names(self) -> list[str]:
        """Every name ``hr_upscaler`` accepts in this session right now (a model file's path is accepted too)."""
        return available_upscalers(self.files)

    def resolve(self, name: str | os.PathLike | None) -> str:
        """:func:`resolve_upscaler` with this session's registered names."""
        return resolve_upscaler(name, self.files)

    def model(self, name: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model of a registered name or a model file's path (:func:`load_model`), loaded once: the last one
        used stays in memory (keyed by path and mtime), never more than one."""
        path = Path(self.files.get(str(name), name))
        key = (str(path.resolve()), path.stat().st_mtime)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the previous model goes before the next one loads
            self._loaded = (key, load_model(path))
        return self._loaded[1]

    def free(self) -> None:
        """Let the loaded upscaler model go (it loads again when next used)."""
        self._loaded = None


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
    """Load an upscaler model file with ``spandrel`` (:meth:`Upscalers.model` keeps it). Returns a module mapping
    ``(1, 3, H, W)`` in [0, 1] to ``(1, 3, sH, sW)`` with a ``scale`` attribute."""
    try:
        import spandrel
    except ImportError as e:
        raise ImportError(f"Upscaler model files need the optional 'spandrel' package (pip install spandrel "
                          f"torchvision; spandrel imports torchvision): {e}") from None
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    model = descriptor.model.eval().requires_grad_(False)
    model.scale = descriptor.scale
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


def upscale_image(image: Image.Image, scale: float, name: str, upscalers: Upscalers | None = None) -> Image.Image:
    """A1111's ``Upscaler.upscale``: repeat the upscaler (at most 3 times) until the image is at least
    ``scale`` times larger, rounded down to a multiple of 8, then Lanczos to exactly that size. A model upscaler
    (a name registered in ``upscalers``, or a file's path) is loaded through ``upscalers`` (default: a new one)."""
    dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
    if name == "Lanczos" or name == "Nearest":
        resample = LANCZOS if name == "Lanczos" else NEAREST

        def step(im):
            return im.resize((int(im.width * scale), int(im.height * scale)), resample=resample)
    else:
        model = (upscalers if upscalers is not None else Upscalers()).model(name)

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


def _resize(image: Image.Image, w: int, h: int, upscaler: str | None, upscalers: Upscalers | None) -> Image.Image:
    if upscaler is None or upscaler == "None" or image.mode == "L" or is_latent(upscaler):
        return image.resize((w, h), resample=LANCZOS)
    scale = max(w / image.width, h / image.height)
    if scale > 1.0:
        image = upscale_image(image, scale, upscaler, upscalers)
    if image.size != (w, h):
        image = image.resize((w, h), resample=LANCZOS)
    return image


RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def resize_image(mode: int, image: Image.Image, width: int, height: int, upscaler: str | None = None,
                 upscalers: Upscalers | None = None) -> Image.Image:
    """A1111's ``images.resize_image``: 0 just resize (stretch), 1 crop and resize (cover, centred crop),
    2 resize and fill (fit, centred, the borders filled by stretching the image's edge rows/columns).
    Mode 3 (latent upscale) resizes in latent space, so here it is mode 0. A model ``upscaler`` is loaded through
    ``upscalers`` (:func:`upscale_image`)."""
    image = image.convert("RGB")
    if mode in (0, 3):
        return _resize(image, width, height, upscaler, upscalers)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = _resize(image, src_w, src_h, upscaler, upscalers)
        out = Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out
    if mode != 2:
        raise ValueError(f"resize_mode={mode!r}: must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}), "
                         f"2 ({RESIZE_MODES[2]}) or 3 ({RESIZE_MODES[3]})")
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _resize(image, src_w, src_h, upscaler, upscalers)
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
