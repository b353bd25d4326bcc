"""A1111 infotext, public side: read, write, and turn into generation parameters.

>>> from nbdiffuse import infotext
>>> params = infotext.to_params(infotext.read_png("00012-1957970079.png"))  # doctest: +SKIP
>>> session.txt2img(**params)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .io.infotext import build_fields, format, parse, png_info, read_png

# A1111's parse reads a size only as WIDTHxHEIGHT; "Seed resize from: -1x-1" (off) is read too.
_RE_SIZE = re.compile(r"^(-?\d+)x(-?\d+)$")

__all__ = ["build_fields", "format", "parse", "png_info", "read_png", "to_params"]


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        word = v.strip().lower()
        if word not in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            raise ValueError(word)
        return word in ("true", "1", "yes", "on")
    return bool(v)


def _int(v: Any) -> int:
    if isinstance(v, str):
        v = v.strip()
        try:
            return int(v)
        except ValueError:
            v = float(v)  # "20.0", "1e3"; a number past float's range reads as inf
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(v)
    return int(v)


def _float(v: Any) -> float:
    x = float(v.strip() if isinstance(v, str) else v)
    if not math.isfinite(x):
        raise ValueError(x)
    return x


def _float_or_inf(v: Any) -> float:
    x = float(v.strip() if isinstance(v, str) else v)
    if math.isnan(x):
        raise ValueError(x)
    return x


def _str(v: Any) -> str:
    return str(v)


def _styles(v: Any) -> list[str]:
    if isinstance(v, str):
        v = json.loads(v)
    return [str(s) for s in v]


# infotext key -> (API field, converter). "Eta" is listed after "Eta DDIM" so it wins when both appear.
_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "Prompt": ("prompt", _str),
    "Negative prompt": ("negative_prompt", _str),
    "Steps": ("steps", _int),
    "CFG scale": ("cfg_scale", _float),
    "Seed": ("seed", _int),
    "Variation seed": ("subseed", _int),
    "Variation seed strength": ("subseed_strength", _float),
    "Seed resize from-1": ("seed_resize_from_w", _int),
    "Seed resize from-2": ("seed_resize_from_h", _int),
    "Size-1": ("width", _int),
    "Size-2": ("height", _int),
    "Denoising strength": ("denoising_strength", _float),
    "Clip skip": ("clip_skip", _int),
    "Eta DDIM": ("eta", _float),
    "Eta": ("eta", _float),
    "Sigma churn": ("s_churn", _float),
    "Sigma tmin": ("s_tmin", _float),
    "Sigma tmax": ("s_tmax", _float_or_inf),  # inf: no upper bound, A1111's default
    "Sigma noise": ("s_noise", _float),
    "Hires upscale": ("hr_scale", _float),
    "Hires resize-1": ("hr_resize_x", _int),
    "Hires resize-2": ("hr_resize_y", _int),
    "Hires steps": ("hr_second_pass_steps", _int),
    "Hires upscaler": ("hr_upscaler", _str),
    "Hires prompt": ("hr_prompt", _str),
    "Hires negative prompt": ("hr_negative_prompt", _str),
    "Extra noise": ("extra_noise", _float),
    "Tiling": ("tiling", _bool),
    "Styles array": ("styles", _styles),
    "Emphasis": ("emphasis", _str),
}


# What each converter accepts, for the error message.
_EXPECTED: dict[Callable[[Any], Any], str] = {
    _int: "a whole number", _float: "a finite number", _float_or_inf: "a number (inf: no limit)",
    _bool: "True or False", _styles: "a JSON list of style names",
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _sampler_and_scheduler(name: str, schedule: Any) -> tuple[str, str]:
    """``("DPM++ 2M Karras", None)`` -> ``("DPM++ 2M", "Automatic")`` (Karras is its default).

    As in A1111's paste (``get_sampler_and_scheduler``) a schedule glued to the name wins over ``Schedule type``
    (A1111's parse reports a missing one as "Automatic"); unknown samplers are kept as given."""
    from .sampling.registry import SAMPLERS, resolve_sampler

    explicit = str(schedule).strip() if schedule not in (None, "") else None
    try:
        sampler, glued = resolve_sampler(name)
    except ValueError:
        return name, explicit or "Automatic"
    if glued is None:
        return sampler, explicit or "Automatic"
    return sampler, "Automatic" if glued == SAMPLERS[sampler].default_scheduler else glued


def to_params(text_or_dict: str | bytes | Mapping[str, Any], styles: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """Map an infotext (text, or :func:`parse`'s dict) onto ``Session.txt2img`` / A1111 API fields.

    Only keys present in the infotext appear in the result (plus ``scheduler`` with a sampler,
    ``enable_hr`` with hires keys, and always ``randn_source``: a missing ``RNG`` means A1111's default "GPU").
    Values are converted to int/float/bool/list; keys the API has no
    field for (Model, Model hash, Version, Lora hashes, ...) are left out.
    Raises ``ValueError`` naming the key for a value that cannot be converted (``Steps: many``, ``Seed: inf``,
    ``CFG scale: nan``, ``Size: 64``: A1111 reads a size only as ``WIDTHxHEIGHT``), never dropping it; the ranges
    (``Steps: 1e9``) are checked by ``txt2img`` and the panel before any model work. Bytes are read as
    :func:`parse` reads them (UTF-8, or UTF-16 with a byte order mark).

    The values are A1111's reading of the text (:func:`parse`): a pre-1.0 ``First pass size`` gives the first
    pass as ``width``/``height`` and the old ``Size`` as ``hr_resize_x``/``hr_resize_y`` with ``enable_hr``;
    a ``Hypernet`` is in the prompt as ``<hypernet:name:strength>``. The compatibility keys an old ``Version``
    implies (``Downcast alphas_cumprod``, ``Old prompt editing timelines``, ``Pad conds v0``) have no field.

    The prompt in an infotext already has its styles applied. With ``styles`` (a name -> Style mapping,
    e.g. ``session.styles``) the styles named in ``Styles array`` are taken back out of the prompts, as A1111's
    paste does, and returned in ``styles``; without it ``styles`` is left out, so the styled prompt alone
    reproduces the image.

    >>> p = to_params("a cat\\nNegative prompt: blurry\\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, "
    ...               "Seed: 1, Size: 512x768")
    >>> p["prompt"], p["sampler_name"], p["scheduler"], p["width"], p["height"], p["randn_source"]
    ('a cat', 'DPM++ 2M', 'Automatic', 512, 768, 'GPU')
    """
    if isinstance(text_or_dict, str | bytes | bytearray):
        res = parse(text_or_dict)
    elif isinstance(text_or_dict, Mapping):
        res = dict(text_or_dict)
    else:
        raise TypeError(f"to_params takes an infotext (str or bytes) or parse()'s dict, not "
                        f"{type(text_or_dict).__name__}.")
    # A size parse could not split (A1111 skips it and keeps the size it had: a different picture), or one in a
    # parsed dict from elsewhere.
    for key in ("Size", "Seed resize from", "Hires resize"):
        value = res.get(key)
        if value in (None, "") or f"{key}-1" in res:
            continue
        m = _RE_SIZE.match(value.strip()) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"Infotext {key}: {_shown(value)} is not a size: write it as WIDTHxHEIGHT, "
                             f"like {key}: 512x768 (A1111 reads no other form).")
        res[f"{key}-1"], res[f"{key}-2"] = m.groups()

    params: dict[str, Any] = {}
    for key, (name, convert) in _FIELDS.items():
        if key in res and res[key] is not None:
            try:
                params[name] = convert(res[key])
            except (TypeError, ValueError, OverflowError) as e:
                expected = _EXPECTED.get(convert, "a valid value")
                raise ValueError(f"Infotext {key}: {_shown(res[key])} is not a valid value for {name}: it must be "
                                 f"{expected}.") from e

    if res.get("Sampler"):
        params["sampler_name"], params["scheduler"] = _sampler_and_scheduler(
            str(res["Sampler"]).strip(), res.get("Schedule type"))
    elif res.get("Schedule type"):
        params["scheduler"] = str(res["Schedule type"]).strip()

    hr_sampler = res.get("Hires sampler")
    hr_schedule = res.get("Hires schedule type")
    if hr_sampler and str(hr_sampler).strip() != "Use same sampler":
        params["hr_sampler_name"], params["hr_scheduler"] = _sampler_and_scheduler(
            str(hr_sampler).strip(), hr_schedule)
    elif hr_schedule and str(hr_schedule).strip() != "Use same scheduler":
        params["hr_scheduler"] = str(hr_schedule).strip()

    # Pre-1.0 "First pass size" infotexts arrive here as Size = first pass, Hires resize = final size (see parse).
    # A resize of 0x0 is A1111's "no resize" default (parse(..., defaults=True)), not a second pass.
    if "hr_scale" in params or params.get("hr_resize_x") or params.get("hr_resize_y"):
        params["enable_hr"] = True
    # A1111 writes "RNG" only when it is not its default, GPU: no key means the noise came from torch.randn on CUDA
    from .sampling.noise import resolve_randn_source

    rng = res.get("RNG")
    try:
        params["randn_source"] = resolve_randn_source(rng if rng not in (None, "") else "GPU")
    except ValueError as e:
        raise ValueError(f"Infotext RNG: {rng!r} is not a valid value for randn_source: use GPU, CPU or NV.") from e
    named = params.pop("styles", None)
    if named and styles is not None:
        from .prompts.styles import extract_styles

        found, prompt, negative = extract_styles(params.get("prompt", ""), params.get("negative_prompt", ""),
                                                 {k: v for k, v in styles.items() if k in named})
        if found:
            params["styles"], params["prompt"], params["negative_prompt"] = found, prompt, negative
    return params
