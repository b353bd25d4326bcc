"""Upscalers for hires fix and img2img: A1111's six latent modes, its pixel upscalers, and model files.

Latent upscalers (A1111 ``shared.latent_upscale_modes``) are one call of ``torch.nn.functional.interpolate`` to
``(to_y // 8, to_x // 8)``. :data:`LATENT_EXTRA_MODES` adds ``"Latent (bislerp)"`` (an nbdiffuse extra, from
ComfyUI; A1111 cannot reproduce an image made with it): along each axis it takes the same two neighbours and
weights as bilinear, but interpolates each pixel's channel vector *spherically* in direction and *linearly* in
norm, so an upscaled latent keeps its vectors' lengths instead of shrinking them where neighbours disagree.

Pixel upscalers work on PIL images: ``"None"`` (Lanczos straight to the target size), ``"Lanczos"``,
``"Nearest"``, and ESRGAN-family model files (ESRGAN, RealESRGAN, DAT, HAT, SwinIR, ... anything in ``spandrel``'s
main registry; :func:`import_spandrel` says how it is installed) given by path or registered by name in a session's
:class:`Upscalers` (``session.upscalers.register(path)``; a session also finds those in its models folder, named by
file stem). :func:`upscale_image` follows A1111's ``Upscaler.upscale``: up to three passes of the upscaler until the
image reaches ``scale`` (rounded down to a multiple of 8), then Lanczos to that size; ``resize_image`` then
Lanczos-es to the exact target. A model pass is tiled as A1111 tiles the model's family (:data:`TILING`,
:func:`upscale_with_model`) and fed B, G, R channels as A1111 feeds them (``Upscalers(a1111_bgr=False)``: R, G, B,
spandrel's own order).
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

    def __init__(self, *, extra_arches: bool = False, a1111_bgr: bool = True):
        self.files: dict[str, Path] = {}  # registered name -> model file
        self._loaded: tuple[tuple, object] | None = None  # ((path, mtime, extra_arches), model)
        #: spandrel_extra_arches' architectures too (:data:`EXTRA_ARCH_LICENCES`: none allows commercial use)
        self.extra_arches = extra_arches
        #: feed models B, G, R as A1111 does (spandrel's contract, and ComfyUI, is R, G, B)
        self.a1111_bgr = a1111_bgr
        #: family -> (method, tile, overlap): A1111's ESRGAN_tile, DAT_tile, SWIN_tile, SCUNET_tile settings
        self.tiling: dict[str, tuple[str, int, int]] = dict(TILING)

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
        key = (str(path.resolve()), path.stat().st_mtime, self.extra_arches)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the previous model goes before the next one loads
            self._loaded = (key, load_model(path, extra_arches=True) if self.extra_arches else load_model(path))
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

#: A1111's tile settings per upscaler family: (method, tile, overlap). ``"grid"`` is ``upscale_with_model`` (PIL
#: ``split_grid`` -> the model per tile -> ``combine_grid``, feathered over ``overlap x scale`` pixels; settings
#: ESRGAN_tile / DAT_tile, also used by RealESRGAN and HAT); ``"average"`` is ``tiled_upscale_2`` (torch tiles whose
#: overlapping outputs are averaged; SWIN_tile, SCUNET_tile). A tile of 0 runs the whole picture at once.
TILING: dict[str, tuple[str, int, int]] = {
    "ESRGAN": ("grid", 192, 8), "DAT": ("grid", 192, 8), "HAT": ("grid", 192, 8),
    "SwinIR": ("average", 192, 8), "ScuNET": ("average", 256, 8),
}
#: A1111's model folders -> the family whose upscaler lists their files (A1111 picks the code by folder).
FOLDER_FAMILY = {"esrgan": "ESRGAN", "realesrgan": "ESRGAN", "dat": "DAT", "hat": "HAT", "swinir": "SwinIR",
                 "scunet": "ScuNET"}
#: spandrel architecture names -> family, for files outside A1111's folders (ComfyUI's upscale_models/, a path).
ARCH_FAMILY = {"SwinIR": "SwinIR", "Swin2SR": "SwinIR", "SCUNet": "ScuNET", "DAT": "DAT", "HAT": "HAT"}
#: spandrel_extra_arches' architectures and their licences (none allows commercial use).
EXTRA_ARCH_LICENCES = ("CodeFormer (S-Lab 1.0, non-commercial), SRFormer and MAT (CC BY-NC 4.0), AdaCode "
                       "(CC BY-NC-SA 4.0), DDColor (academic and non-commercial), M3SNet, Restormer, MPRNet and "
                       "MIRNet2 (academic public licence), FeMaSR (see its licence)")
_INSTALL = ("pip install spandrel einops --no-deps (--no-deps: spandrel's torchvision requirement would pull "
            "a torch of its own; nbdiffuse imports spandrel without torchvision)")


def _torchvision_stand_in() -> dict:
    """Modules standing in for torchvision while spandrel imports: spandrel imports three names from
    ``torchvision.transforms.functional`` at import time and uses them only when LaMa (an inpainter) or
    RestoreFormer (a face restorer) runs; no upscaler touches them."""
    import types

    def unavailable(*args, **kwargs):
        raise ImportError("This spandrel architecture (LaMa or RestoreFormer) needs a working torchvision, which "
                          "is missing or was built for another torch")

    tv, transforms, functional = (types.ModuleType(n) for n in
                                  ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"))
    functional.rotate = functional.normalize = unavailable
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    tv.transforms, transforms.functional = transforms, functional
    return {m.__name__: m for m in (tv, transforms, functional)}


def import_spandrel():
    """``import spandrel``, also where torchvision cannot be imported (not installed, or PyPI's torchvision wheel,
    whose C++ ops are built for the CUDA torch, beside a CPU torch: ``RuntimeError: operator torchvision::nms does
    not exist``). spandrel needs torchvision only for LaMa and RestoreFormer; while it imports, stand-in modules
    take torchvision's place, and they are removed right after.

    >>> import_spandrel().ModelLoader  # doctest: +SKIP
    <class 'spandrel.__helpers.loader.ModelLoader'>
    """
    import sys

    if "spandrel" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]  # a half-imported torchvision
            stand_in = _torchvision_stand_in()
            sys.modules.update(stand_in)
            try:
                import spandrel  # noqa: F401
            except ImportError as e:
                raise ImportError(f"Upscaler model files need the optional 'spandrel' package: {_INSTALL}: "
                                  f"{e}") from None
            finally:
                for name in stand_in:
                    sys.modules.pop(name, None)
    try:
        import spandrel
    except ImportError as e:
        raise ImportError(f"Upscaler model files need the optional 'spandrel' package: {_INSTALL}: {e}") from None
    return spandrel


def family_of(path: str | os.PathLike, architecture: str) -> str:
    """The A1111 upscaler family that runs a model file (a key of :data:`TILING`): by A1111's folder the file is
    in, else by spandrel's ``architecture`` name (SwinIR, SCUNet, DAT, HAT; anything else runs as ESRGAN does).

    >>> family_of("models/SwinIR/x.pth", "ESRGAN"), family_of("models/upscale_models/x.pth", "SwinIR")
    ('SwinIR', 'SwinIR')
    """
    folder = Path(path).parent.name.lower()
    return FOLDER_FAMILY.get(folder) or ARCH_FAMILY.get(architecture, "ESRGAN")


def load_model(path: str | os.PathLike, *, extra_arches: bool = False):
    """Load an upscaler model file with ``spandrel.ModelLoader().load_from_file`` (:meth:`Upscalers.model` keeps
    it): spandrel's main registry (permissive licences) only, unless ``extra_arches=True`` adds
    ``spandrel_extra_arches`` (:data:`EXTRA_ARCH_LICENCES`: not for commercial use). Returns spandrel's
    ``ImageModelDescriptor``: called on ``(1, 3, H, W)`` in [0, 1] it gives ``(1, 3, sH, sW)``; ``.scale``,
    ``.architecture.name``; ``.family`` is added (:func:`family_of`)."""
    spandrel = import_spandrel()
    loader = spandrel.ModelLoader()
    if extra_arches:
        try:
            import spandrel_extra_arches
        except ImportError as e:
            raise ImportError(f"extra_arches=True needs the 'spandrel_extra_arches' package (pip install "
                              f"spandrel_extra_arches --no-deps); its architectures are {EXTRA_ARCH_LICENCES}: "
                              f"{e}") from None
        registry = spandrel.ArchRegistry()
        registry.add(*spandrel.MAIN_REGISTRY, *spandrel_extra_arches.EXTRA_REGISTRY)
        loader = spandrel.ModelLoader(registry=registry)
    try:
        descriptor = loader.load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        hint = ("" if extra_arches else f" If it is one of spandrel_extra_arches' architectures "
                f"({EXTRA_ARCH_LICENCES}; none may be used commercially), opt in with extra_arches=True "
                f"(session.upscalers.extra_arches = True).")
        raise ValueError(f"upscaler model {path}: spandrel does not recognise its architecture.{hint}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"upscaler model {path}: a {descriptor.architecture.name} model "
                         f"({type(descriptor).__name__}) is not an image-to-image upscaler")
    descriptor.model.eval().requires_grad_(False)
    descriptor.family = family_of(path, descriptor.architecture.name)
    return descriptor


def _param(model):
    module = getattr(model, "model", model)
    return next(iter(module.parameters()), None) if isinstance(module, torch.nn.Module) else None


def _to_tensor(image: Image.Image, bgr: bool, like) -> torch.Tensor:
    """A1111's ``pil_image_to_torch_bgr`` (``bgr=True``): ``(1, 3, H, W)`` in [0, 1], channels B, G, R."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"))
    if bgr:
        arr = arr[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)) / 255)[None]
    return x.to(like.device, like.dtype) if like is not None else x.float()


def _to_image(x: torch.Tensor, bgr: bool) -> Image.Image:
    """A1111's ``torch_bgr_to_pil_image``: clamp to [0, 1], x255, round, flip BGR back to RGB."""
    import numpy as np

    arr = (255.0 * np.moveaxis(x[0].float().cpu().clamp(0, 1).numpy(), 0, 2)).round().astype(np.uint8)
    if bgr:
        arr = arr[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


class _Tiles:
    """Per-tile progress and the interrupt check between tiles."""

    def __init__(self, total: int, progress, interrupt):
        self.total, self.done, self.progress, self.interrupt = total, 0, progress, interrupt

    def check(self):
        stop = self.interrupt() if callable(self.interrupt) else (self.interrupt is not None
                                                                   and self.interrupt.is_set())
        if stop:
            from .guards import JobInterrupted
            raise JobInterrupted(f"upscale interrupted after {self.done} of {self.total} tiles")

    def tick(self):
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


@torch.no_grad()
def upscale_with_model(model, image: Image.Image, *, tile: int, overlap: int, method: str = "grid",
                       a1111_bgr: bool = True, progress=None, interrupt=None) -> Image.Image:
    """One pass of a model upscaler over ``image`` as A1111 runs it.

    ``method="grid"`` (ESRGAN, RealESRGAN, DAT, HAT): :func:`~nbdiffuse.io.grid.split_grid` into ``tile``-sized
    tiles overlapping by ``overlap``, each tile through the model, :func:`~nbdiffuse.io.grid.combine_grid` with the
    overlap (and so the feather) times the scale. ``method="average"`` (SwinIR, ScuNET; A1111's
    ``tiled_upscale_2``): tiles of ``min(tile, h, w)`` at a stride of ``tile - overlap`` (the last flush with the
    edge), overlapping outputs averaged. ``tile=0``: the whole picture at once. ``a1111_bgr`` feeds the model B, G, R
    channels as A1111 does (spandrel's models expect R, G, B; ``False`` gives what ComfyUI gives).
    ``progress(done, total)`` is called after each tile; ``interrupt`` (a ``threading.Event`` or a callable) is
    checked before each tile and raises :class:`~nbdiffuse.jobs.guards.JobInterrupted`.

    >>> from PIL import Image
    >>> double = lambda x: torch.nn.functional.interpolate(x, scale_factor=2)
    >>> upscale_with_model(double, Image.new("RGB", (40, 30)), tile=16, overlap=4).size
    (80, 60)
    """
    from ..io.grid import Grid, combine_grid, split_grid

    like = _param(model)
    if tile <= 0:
        ticks = _Tiles(1, progress, interrupt)
        ticks.check()
        out = _to_image(model(_to_tensor(image, a1111_bgr, like)), a1111_bgr)
        ticks.tick()
        return out
    if method == "grid":
        grid = split_grid(image, tile, tile, overlap)
        ticks = _Tiles(grid.tile_count, progress, interrupt)
        rows, s = [], 1
        for y, h, row in grid.tiles:
            new_row = []
            for x, w, piece in row:
                ticks.check()
                out = _to_image(model(_to_tensor(piece, a1111_bgr, like)), a1111_bgr)
                s = out.width // piece.width
                new_row.append([x * s, w * s, out])
                ticks.tick()
            rows.append([y * s, h * s, new_row])
        return combine_grid(Grid(rows, grid.tile_w * s, grid.tile_h * s, grid.image_w * s, grid.image_h * s,
                                 grid.overlap * s))
    if method != "average":
        raise ValueError(f"upscale method {method!r}: expected 'grid' or 'average'")
    x = _to_tensor(image, a1111_bgr, like)
    _, c, h, w = x.shape
    size = min(tile, h, w)
    stride = size - overlap
    if stride <= 0:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile ({size} px)")
    ys = list(range(0, h - size, stride)) + [h - size]
    xs = list(range(0, w - size, stride)) + [w - size]
    ticks = _Tiles(len(ys) * len(xs), progress, interrupt)
    result = weights = None
    for top in ys:
        for left in xs:
            ticks.check()
            out = model(x[..., top:top + size, left:left + size])
            s = out.shape[-1] // size
            if result is None:
                result = torch.zeros(1, c, h * s, w * s, dtype=out.dtype, device=out.device)
                weights = torch.zeros_like(result)
            result[..., top * s:(top + size) * s, left * s:(left + size) * s] += out
            weights[..., top * s:(top + size) * s, left * s:(left + size) * s] += 1
            ticks.tick()
    return _to_image(result / weights, a1111_bgr)


def _model_pass(model, image: Image.Image, upscalers: Upscalers | None = None, progress=None,
                interrupt=None) -> Image.Image:
    """One pass of a loaded model with its family's tiling (``upscalers.tiling`` overrides :data:`TILING`)."""
    family = getattr(model, "family", "ESRGAN")
    tiling = upscalers.tiling if upscalers is not None else TILING
    method, tile, overlap = tiling.get(family, TILING["ESRGAN"])
    bgr = upscalers.a1111_bgr if upscalers is not None else True
    return upscale_with_model(model, image, tile=tile, overlap=overlap, method=method, a1111_bgr=bgr,
                              progress=progress, interrupt=interrupt)


def upscale_image(image: Image.Image, scale: float, name: str, upscalers: Upscalers | None = None, *,
                  progress=None, interrupt=None) -> Image.Image:
    """A1111's ``Upscaler.upscale``: run the upscaler (at most 3 times) until the image is at least ``scale``
    times larger, rounded down to a multiple of 8 (a pass that leaves the size unchanged, a 1x model's, stops),
    then Lanczos to exactly that size. A model upscaler (a name registered in ``upscalers``, or a file's path) is
    loaded through ``upscalers`` (default: a new one) and tiled as its family is in A1111 (:func:`upscale_with_model`;
    ``progress(done, total)`` per tile of a pass, ``interrupt`` checked between tiles).

    >>> from PIL import Image
    >>> upscale_image(Image.new("RGB", (100, 60)), 2.5, "Lanczos").size
    (248, 144)
    """
    dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
    if name == "Lanczos" or name == "Nearest":
        resample = LANCZOS if name == "Lanczos" else NEAREST

        def step(im):
            return im.resize((int(im.width * scale), int(im.height * scale)), resample=resample)
    else:
        upscalers = upscalers if upscalers is not None else Upscalers()
        model = upscalers.model(name)

        def step(im):
            return _model_pass(model, im, upscalers, progress, interrupt)
    for i in range(3):
        if i == 0 and scale != 1 and image.width >= dest_w and image.height >= dest_h:
            break  # A1111 1.10: no pass when the picture is already that large (a scale below 1, or ~1 after rounding)
        before = image.size
        image = step(image)
        if image.size == before or (image.width >= dest_w and image.height >= dest_h):
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=LANCZOS)
    return image


def _resize(image: Image.Image, w: int, h: int, upscaler: str | None, upscalers: Upscalers | None,
            **tiles) -> Image.Image:
    if upscaler is None or upscaler == "None" or image.mode == "L" or is_latent(upscaler):
        return image.resize((w, h), resample=LANCZOS)
    scale = max(w / image.width, h / image.height)
    if scale > 1.0:
        image = upscale_image(image, scale, upscaler, upscalers, **tiles)
    if image.size != (w, h):
        image = image.resize((w, h), resample=LANCZOS)
    return image


RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def resize_image(mode: int, image: Image.Image, width: int, height: int, upscaler: str | None = None,
                 upscalers: Upscalers | None = None, *, progress=None, interrupt=None) -> Image.Image:
    """A1111's ``images.resize_image``: 0 just resize (stretch), 1 crop and resize (cover, centred crop),
    2 resize and fill (fit, centred, the borders filled by stretching the image's edge rows/columns).
    Mode 3 (latent upscale) resizes in latent space, so here it is mode 0. A model ``upscaler`` is loaded through
    ``upscalers`` (:func:`upscale_image`, which takes ``progress`` and ``interrupt``)."""
    image = image.convert("RGB")
    tiles = {"progress": progress, "interrupt": interrupt}
    if mode in (0, 3):
        return _resize(image, width, height, upscaler, upscalers, **tiles)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = _resize(image, src_w, src_h, upscaler, upscalers, **tiles)
        out = Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out
    if mode != 2:
        raise ValueError(f"resize_mode={mode!r}: must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}), "
                         f"2 ({RESIZE_MODES[2]}) or 3 ({RESIZE_MODES[3]})")
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _resize(image, src_w, src_h, upscaler, upscalers, **tiles)
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
