"""A1111's infotext keys and the API fields they carry: the one table both directions use.

Writing (:func:`nbdiffuse.jobs.fields.infotext_fields`) names each key through :data:`KEY_OF`; reading
(:func:`nbdiffuse.infotext.to_params`) converts each key of :data:`INFOTEXT_FIELDS` to its field. A size is one key
(``Size: 512x768``) read as two (``Size-1``, ``Size-2``, as A1111's parse splits it). The sampler, schedule and
RNG keys (:data:`SPECIAL_KEYS`) need more than a conversion (a schedule glued to a sampler's name, "Use same
sampler", A1111's default source) and are read by ``to_params`` itself.

>>> KEY_OF["cfg_scale"], KEY_OF["width"], INFOTEXT_FIELDS["Hires steps"][0]
('CFG scale', 'Size', 'hr_second_pass_steps')
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

__all__ = ["ETA_DDIM", "EXPECTED", "INFOTEXT_FIELDS", "INPAINT_DEFAULTS", "KEY_OF", "SOFT_INPAINTING_ENABLED",
           "SOFT_INPAINTING_KEYS", "SPECIAL_KEYS", "VAE_TILING_KEY"]


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


def _choice(*words: str) -> Callable[[Any], int]:
    """A1111's radio value as the index its API takes (``Masked content: latent noise`` -> 2)."""
    def convert(v: Any) -> int:
        if isinstance(v, str) and v.strip() in words:
            return words.index(v.strip())
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(words):
            return v
        raise ValueError(v)

    convert.expected = " or ".join(words)
    return convert


def _inpaint_area(v: Any) -> bool:
    return bool(_INPAINT_AREA(v))


_INPAINT_AREA = _choice("Whole picture", "Only masked")
_MASK_MODE = _choice("Inpaint masked", "Inpaint not masked")
_MASKED_CONTENT = _choice("fill", "original", "latent noise", "latent nothing")

# infotext key -> (API field, converter). "Eta" is listed after "Eta DDIM" so it wins when both appear.
INFOTEXT_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
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
    # inpainting (A1111 writes them only when they differ from its defaults; to_params fills those in)
    "Mask blur": ("mask_blur", _int),
    "Mask mode": ("inpainting_mask_invert", _MASK_MODE),
    "Inpaint area": ("inpaint_full_res", _inpaint_area),
    "Masked area padding": ("inpaint_full_res_padding", _int),
    "Masked content": ("inpainting_fill", _MASKED_CONTENT),
    "Noise multiplier": ("initial_noise_multiplier", _float),
    "Conditional mask weight": ("inpainting_mask_weight", _float),
    # SDXL refiner (written only when the switch happened; "Refiner" is the checkpoint's "name [hash]")
    "Refiner": ("refiner_checkpoint", _str),
    "Refiner switch at": ("refiner_switch_at", _float),
    "Refiner switch by sampling steps": ("refiner_switch_by_sample_steps", _bool),
    "Hires refiner": ("hires_fix_refiner_pass", _str),
}

#: What A1111's parse assumes for the inpainting keys a text lacks (``infotext_utils.py``): its UI's defaults.
INPAINT_DEFAULTS: dict[str, Any] = {
    "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
    "Masked area padding": 32,
}
#: A1111's Soft inpainting script: ``Soft inpainting enabled: True`` and one key per setting (its script's names).
SOFT_INPAINTING_ENABLED = "Soft inpainting enabled"
SOFT_INPAINTING_KEYS: dict[str, str] = {
    "mask_blend_power": "Soft inpainting schedule bias",
    "mask_blend_scale": "Soft inpainting preservation strength",
    "inpaint_detail_preservation": "Soft inpainting transition contrast boost",
    "composite_mask_influence": "Soft inpainting mask influence",
    "composite_difference_threshold": "Soft inpainting difference threshold",
    "composite_difference_contrast": "Soft inpainting difference contrast",
}


# What each converter accepts, for the error message.
EXPECTED: dict[Callable[[Any], Any], str] = {
    _int: "a whole number", _float: "a finite number", _float_or_inf: "a number (inf: no limit)",
    _bool: "True or False", _styles: "a JSON list of style names", _inpaint_area: _INPAINT_AREA.expected,
    _MASK_MODE: _MASK_MODE.expected, _MASKED_CONTENT: _MASKED_CONTENT.expected,
}

#: Fields whose key needs more than a converter to read (see the module's docstring): field -> key.
SPECIAL_KEYS: dict[str, str] = {
    "sampler_name": "Sampler", "scheduler": "Schedule type", "hr_sampler_name": "Hires sampler",
    "hr_scheduler": "Hires schedule type", "randn_source": "RNG",
}
#: Written (``VAE tiling: True``) when an image was VAE-decoded in tiles: how the pixels were made, not a job field
#: (tiling is the session's ``vae_tiling`` setting, see :func:`nbdiffuse.models.memory.wants_vae_tiling`), so reading
#: it back sets nothing. A1111 never tiles.
VAE_TILING_KEY = "VAE tiling"
#: Written (``VAE upcast: float32``) on an image whose VAE decode gave NaN/inf and was redone in that dtype
#: (:func:`nbdiffuse.models.vae.decode`): how the pixels were made, not a job field, so reading it sets nothing.
VAE_UPCAST_KEY = "VAE upcast"
#: A1111 writes DDIM's eta under its own key (and reads both into ``eta``).
ETA_DDIM = "Eta DDIM"
#: API field -> the infotext key it is written under (a size's two fields share one key).
KEY_OF: dict[str, str] = {
    **{field: key.removesuffix("-1").removesuffix("-2") for key, (field, _) in INFOTEXT_FIELDS.items()},
    **SPECIAL_KEYS,
}
