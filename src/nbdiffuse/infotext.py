"""A1111 infotext, public side: read, write, and turn into generation parameters.

>>> from nbdiffuse import infotext
>>> params = infotext.to_params(infotext.read_png("00012-1957970079.png"))  # doctest: +SKIP
>>> session.txt2img(**params)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .io.infotext import build_fields, format, parse, png_info, read_png
from .io.keys import (
    EXPECTED,
    INFOTEXT_FIELDS,
    INPAINT_DEFAULTS,
    SOFT_INPAINTING_ENABLED,
    SOFT_INPAINTING_KEYS,
    SPECIAL_KEYS,
)

# A1111's parse reads a size only as WIDTHxHEIGHT; "Seed resize from: -1x-1" (off) is read too.
_RE_SIZE = re.compile(r"^(-?\d+)x(-?\d+)$")

__all__ = ["build_fields", "format", "parse", "png_info", "read_png", "to_params"]


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


def _inpainting_params(res: Mapping[str, Any], params: dict[str, Any]) -> None:
    """An img2img infotext's inpainting fields: the keys A1111 left out at its defaults read as its parse assumes
    them (Masked content "original", Inpaint area "Whole picture", padding 32; A1111's paste sets its inpainting
    controls so from every infotext), and Soft inpainting's settings."""
    img2img = "denoising_strength" in params and not params.get("enable_hr")
    if img2img or any(key in res for key in ("Mask blur", "Mask mode", "Masked content", "Inpaint area",
                                              "Masked area padding")):
        for key, value in INPAINT_DEFAULTS.items():
            if res.get(key) is None:
                name, convert = INFOTEXT_FIELDS[key]
                params[name] = convert(value)
    enabled = res.get(SOFT_INPAINTING_ENABLED)
    if enabled is not None and str(enabled).strip().lower() == "true":
        soft = {}
        for name, key in SOFT_INPAINTING_KEYS.items():
            if res.get(key) is not None:
                try:
                    soft[name] = float(res[key])
                except (TypeError, ValueError):
                    raise ValueError(f"Infotext {key}: {_shown(res[key])} is not a number.") from None
        params["soft_inpainting"] = soft


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
    for key, (name, convert) in INFOTEXT_FIELDS.items():
        if key in res and res[key] is not None:
            try:
                params[name] = convert(res[key])
            except (TypeError, ValueError, OverflowError) as e:
                expected = EXPECTED.get(convert, "a valid value")
                raise ValueError(f"Infotext {key}: {_shown(res[key])} is not a valid value for {name}: it must be "
                                 f"{expected}.") from e

    sampler, schedule = (res.get(SPECIAL_KEYS[name]) for name in ("sampler_name", "scheduler"))
    if sampler:
        params["sampler_name"], params["scheduler"] = _sampler_and_scheduler(str(sampler).strip(), schedule)
    elif schedule:
        params["scheduler"] = str(schedule).strip()

    hr_sampler, hr_schedule = (res.get(SPECIAL_KEYS[name]) for name in ("hr_sampler_name", "hr_scheduler"))
    if hr_sampler and str(hr_sampler).strip() != "Use same sampler":
        params["hr_sampler_name"], params["hr_scheduler"] = _sampler_and_scheduler(
            str(hr_sampler).strip(), hr_schedule)
    elif hr_schedule and str(hr_schedule).strip() != "Use same scheduler":
        params["hr_scheduler"] = str(hr_schedule).strip()

    # Pre-1.0 "First pass size" infotexts arrive here as Size = first pass, Hires resize = final size (see parse).
    # A resize of 0x0 is A1111's "no resize" default (parse(..., defaults=True)), not a second pass.
    if "hr_scale" in params or params.get("hr_resize_x") or params.get("hr_resize_y"):
        params["enable_hr"] = True
    _inpainting_params(res, params)
    # A1111 writes "RNG" only when it is not its default, GPU: no key means the noise came from torch.randn on CUDA
    from .sampling.noise import resolve_randn_source

    rng = res.get(SPECIAL_KEYS["randn_source"])
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
