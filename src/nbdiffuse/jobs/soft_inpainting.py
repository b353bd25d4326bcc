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

__all__ = ["SoftInpainting"]

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
