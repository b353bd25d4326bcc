"""A1111's Extras tab, its "Upscale" postprocessing (``scripts/postprocessing_upscale.py``, run by
``modules/postprocessing.py``): upscaler 1, optionally blended with upscaler 2, "Scale by" (with a max side length)
or "Scale to" (with crop to fit), and the ``postprocessing`` text A1111 writes into the PNG.

Face restoration (GFPGAN, CodeFormer) is not here yet.

>>> from PIL import Image
>>> out = extras_upscale(Image.new("RGB", (100, 60)), upscaler_1="Lanczos", upscaling_resize=2.5)
>>> out.image.size, out.infotext
((248, 144), 'Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos')
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..io.inline import data_uri

__all__ = ["ExtrasResult", "RESIZE_MODES", "extras_upscale", "limit_size_by_one_dimension",
           "open_picture", "postprocessing_infotext", "save_extras"]

#: Extras' two resize tabs, by ``resize_mode``.
RESIZE_MODES = ("Scale by", "Scale to")


@dataclass
class ExtrasResult:
    """An Extras picture: ``image``, its postprocessing ``infotext`` (also in the PNG's ``postprocessing`` and
    ``extras`` chunks), the same as ``fields`` and where it was saved (``path``, None when not saved).

    >>> from PIL import Image
    >>> ExtrasResult(Image.new("RGB", (8, 8)), "Postprocess upscaler: Nearest").image.size
    (8, 8)
    """

    image: Image.Image
    infotext: str
    fields: dict = field(default_factory=dict)
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def _repr_html_(self) -> str:
        src, note = data_uri(self.image)  # an upscaled PNG is often several MB: keep the output under 1 MB
        shown = (f'<div style="color:#6b7280">Shown as {html.escape(note)} to keep this output under 1 MB (.image '
                 "and the saved file are the full PNG)</div>" if note else "")
        warn = "".join(f'<div style="color:#b45309">&#9888; {html.escape(w)}</div>' for w in self.warnings)
        return (f'<figure style="margin:4px"><img src="{src}" width="{self.image.width}" style="max-width:100%"/>'
                f'<figcaption><pre style="white-space:pre-wrap;font-size:11px">{html.escape(self.infotext)}</pre>'
                f"</figcaption></figure>{shown}{warn}")


def limit_size_by_one_dimension(w: float, h: float, limit: float) -> tuple[int, int]:
    """A1111's ``limit_size_by_one_dimention``: the longer side brought down to ``limit`` (the other scaled with
    floor division), when it is over it.

    >>> limit_size_by_one_dimension(2000, 1000, 1024), limit_size_by_one_dimension(600.0, 900.0, 512)
    ((1024, 512), (341, 512))
    """
    if h > w and h > limit:
        w = limit * w // h
        h = limit
    elif w > limit:
        h = limit * h // w
        w = limit
    return int(w), int(h)


def _quote(value) -> str:
    # A1111's infotext_utils.quote inside f"{k}: {quote(v)}"
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def postprocessing_infotext(fields: dict) -> str:
    """The text A1111's ``run_postprocessing`` writes: ``k: v`` pairs (``k`` alone when ``k == v``), None skipped.

    >>> postprocessing_infotext({"Postprocess upscale to": "500x300", "Postprocess upscaler": "Lanczos"})
    'Postprocess upscale to: 500x300, Postprocess upscaler: Lanczos'
    """
    return ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)


def _check(upscaler_2_visibility, upscaling_resize, upscaling_resize_w, upscaling_resize_h, resize_mode,
           max_side_length) -> None:
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if resize_mode not in (0, 1):
        raise ValueError(f"extras resize_mode: got {resize_mode!r}; expected 0 ({RESIZE_MODES[0]}, by "
                         f"upscaling_resize) or 1 ({RESIZE_MODES[1]}, to upscaling_resize_w x upscaling_resize_h)")
    if not number(upscaler_2_visibility) or not 0 <= upscaler_2_visibility <= 1:
        raise ValueError(f"extras upscaler_2_visibility: got {upscaler_2_visibility!r}; expected a number from 0 "
                         "to 1 (how much of upscaler 2 is blended in)")
    if resize_mode == 0 and (not number(upscaling_resize) or not upscaling_resize > 0):
        raise ValueError(f"extras upscaling_resize: got {upscaling_resize!r}; expected a scale > 0 (A1111's slider: "
                         "1 to 8)")
    if resize_mode == 1:
        for name, v in (("upscaling_resize_w", upscaling_resize_w), ("upscaling_resize_h", upscaling_resize_h)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"extras {name}: got {v!r}; expected a whole number of pixels >= 1 (A1111's "
                                 "slider: 64 to 8192)")
    if not isinstance(max_side_length, int) or isinstance(max_side_length, bool) or max_side_length < 0:
        raise ValueError(f"extras max_side_length: got {max_side_length!r}; expected a whole number of pixels, "
                         "0 for no limit")


def _upscale_one(image, fields, name, upscalers, mode, by, max_side, to_w, to_h, crop):
    """A1111's ``ScriptPostprocessingUpscale.upscale``: the size rules, the upscaler, the crop; fills ``fields``."""
    from .upscalers import upscale_image

    if mode == 1:
        by = max(to_w / image.width, to_h / image.height)
        fields["Postprocess upscale to"] = f"{to_w}x{to_h}"
    else:
        fields["Postprocess upscale by"] = by
        if max_side != 0 and max(*image.size) * by > max_side:
            mode, crop = 1, False
            to_w, to_h = limit_size_by_one_dimension(image.width * by, image.height * by, max_side)
            by = max(to_w / image.width, to_h / image.height)
            fields["Max side length"] = max_side
    image = upscale_image(image, by, name, upscalers)
    if mode == 1 and crop:
        cropped = Image.new("RGB", (to_w, to_h))
        cropped.paste(image, box=(to_w // 2 - image.width // 2, to_h // 2 - image.height // 2))
        image = cropped
        fields["Postprocess crop to"] = f"{image.width}x{image.height}"
    return image


def extras_upscale(image: Image.Image, *, upscaler_1: str = "Lanczos", upscaler_2: str = "None",
                   upscaler_2_visibility: float = 0.0, upscaling_resize: float = 2.0, upscaling_resize_w: int = 512,
                   upscaling_resize_h: int = 512, upscaling_crop: bool = True, resize_mode: int = 0,
                   max_side_length: int = 0, upscalers=None) -> ExtrasResult:
    """A1111's Extras "Upscale" on one picture (not saved; ``Session.extras`` saves it).

    ``resize_mode=0`` ("Scale by"): ``upscaling_resize`` times, and when ``max_side_length`` is set and the result
    would be longer than that, to the size that fits it (no crop). ``resize_mode=1`` ("Scale to"): by the larger of
    the two ratios to ``upscaling_resize_w x upscaling_resize_h``, then, with ``upscaling_crop``, pasted centred on
    a black canvas of exactly that size. Each upscale is A1111's ``Upscaler.upscale``, so its size is rounded down to
    a multiple of 8 (a "Scale to" size that is not one shows black edges, as in A1111). With ``upscaler_2`` and
    ``upscaler_2_visibility > 0`` the picture is upscaled a second time from the original and blended in
    (``Image.blend``). ``upscaler_1="None"`` does nothing (A1111 writes no fields then).

    >>> from PIL import Image
    >>> out = extras_upscale(Image.new("RGB", (100, 60)), resize_mode=1, upscaling_resize_w=500,
    ...                      upscaling_resize_h=300)
    >>> out.image.size, list(out.fields)
    ((500, 300), ['Postprocess upscale to', 'Postprocess crop to', 'Postprocess upscaler'])
    """
    from .sd_upscale import check_upscaler

    _check(upscaler_2_visibility, upscaling_resize, upscaling_resize_w, upscaling_resize_h, resize_mode,
           max_side_length)
    names = [check_upscaler(n, upscalers) for n in (upscaler_1, upscaler_2)]
    if image.mode not in ("RGB", "RGBA"):
        from .img2img import to_rgb

        image = to_rgb(image)
    fields: dict = {}
    args = (upscalers, resize_mode, float(upscaling_resize), max_side_length, upscaling_resize_w,
            upscaling_resize_h, bool(upscaling_crop))
    if names[0] == "None":
        return ExtrasResult(image, "", fields)
    out = _upscale_one(image, fields, names[0], *args)
    fields["Postprocess upscaler"] = _label(names[0], upscalers)
    if names[1] != "None" and upscaler_2_visibility > 0:
        second = _upscale_one(image, fields, names[1], *args)
        if out.mode != second.mode:
            second = second.convert(out.mode)
        out = Image.blend(out, second, upscaler_2_visibility)
        fields["Postprocess upscaler 2"] = _label(names[1], upscalers)
    return ExtrasResult(out, postprocessing_infotext(fields), fields)


def _label(name: str, upscalers) -> str:
    known = upscalers.files if upscalers is not None else {}
    if name in ("None", "Lanczos", "Nearest") or name in known:
        return name
    return Path(name).stem  # A1111 names a model upscaler by its file's stem


def open_picture(image) -> Image.Image:
    """A PIL image, or an image file opened with its PNG text kept (Extras keeps a picture's own infotext).

    >>> open_picture(Image.new("RGB", (4, 4))).size
    (4, 4)
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"extras image: {str(image)!r} is not an image file")
        try:
            with Image.open(image) as opened:
                opened.load()
                return opened.copy()
        except OSError as e:
            raise ValueError(f"extras image: cannot read {str(image)!r} as an image ({e})") from None
    if not isinstance(image, Image.Image):
        raise TypeError(f"extras image: expected a PIL image or an image file path, got {type(image).__name__}")
    return image


# A1111's read_info_from_image drops these before keeping a picture's PNG info
_IGNORED_INFO_KEYS = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                      "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
                      "photoshop"}


def save_extras(result: ExtrasResult, source: Image.Image, outputs_dir: str | os.PathLike) -> ExtrasResult:
    """Save ``result`` as A1111's Extras does: ``outputs_dir/extras-images/NNNNN.png`` with the source picture's own
    text chunks (its ``parameters`` last), then ``postprocessing`` and ``extras``, both the infotext."""
    from ..io.outputs import save_postprocessed

    chunks = {k: v for k, v in (source.info or {}).items() if k not in _IGNORED_INFO_KEYS and isinstance(v, str)}
    parameters = chunks.pop("parameters", None)
    if parameters:
        chunks["parameters"] = parameters
    chunks["postprocessing"] = result.infotext
    chunks["extras"] = result.infotext
    folder = Path(outputs_dir) / "extras-images"
    try:
        result.path = save_postprocessed(result.image, folder, chunks)
    except OSError as e:
        result.warnings.append(f"Could not save the picture to {folder} ({type(e).__name__}: {e}); it is kept in "
                               "the result: result.image.save(path) writes it elsewhere.")
    return result
