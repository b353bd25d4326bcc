"""SoftInpainting settings: A1111's names, defaults, slider ranges, API args and infotext keys.

The expected keys and defaults are those of A1111's extension (``extensions-builtin/soft-inpainting/scripts/
soft_inpainting.py`` at AUTOMATIC1111 e147b57: ``default = SoftInpaintingSettings(1, 0.5, 4, 0, 0.5, 2)``,
``gen_param_labels``, the sliders' minimum/maximum, ``ui()``'s return order).
"""

import pytest

from nbdiffuse.io.infotext import format_value
from nbdiffuse.jobs.soft_inpainting import INFOTEXT_KEYS, SoftInpainting

A1111_INFOTEXT = ("Soft inpainting enabled: True, Soft inpainting schedule bias: 1, "
                  "Soft inpainting preservation strength: 0.5, Soft inpainting transition contrast boost: 4, "
                  "Soft inpainting mask influence: 0, Soft inpainting difference threshold: 0.5, "
                  "Soft inpainting difference contrast: 2")


def test_defaults_are_a1111s():
    s = SoftInpainting()
    assert (s.mask_blend_power, s.mask_blend_scale, s.inpaint_detail_preservation, s.composite_mask_influence,
            s.composite_difference_threshold, s.composite_difference_contrast) == (1, 0.5, 4, 0, 0.5, 2)


def test_infotext_keys_values_and_order_as_a1111_writes_them():
    text = ", ".join(f"{k}: {format_value(v)}" for k, v in SoftInpainting().infotext_fields().items())
    assert text == A1111_INFOTEXT


@pytest.mark.parametrize("name, low, high", [
    ("mask_blend_power", 0, 8), ("mask_blend_scale", 0, 8), ("inpaint_detail_preservation", 1, 32),
    ("composite_mask_influence", 0, 1), ("composite_difference_threshold", 0, 8),
    ("composite_difference_contrast", 0, 8)])
def test_slider_ranges_are_enforced_with_the_field_named(name, low, high):
    assert getattr(SoftInpainting(**{name: low}), name) == low
    assert getattr(SoftInpainting(**{name: high}), name) == high
    for bad in (low - 0.01, high + 0.01, float("nan"), "1", True):
        with pytest.raises(ValueError, match=name):
            SoftInpainting(**{name: bad})


def test_from_args_reads_the_api_list_in_ui_order():
    s = SoftInpainting.from_args([True, 2, 1.5, 8, 0.25, 1, 3])
    assert s == SoftInpainting(2, 1.5, 8, 0.25, 1, 3)
    assert SoftInpainting.from_args([True, 0.5]) == SoftInpainting(mask_blend_power=0.5)  # the rest: defaults
    assert SoftInpainting.from_args([False, 2, 1.5]) is None
    assert SoftInpainting.from_args([]) is None
    assert SoftInpainting.from_args({"args": [True]}) == SoftInpainting()
    assert SoftInpainting.from_alwayson_scripts({"Soft Inpainting": {"args": [True, 3]}}).mask_blend_power == 3
    assert SoftInpainting.from_alwayson_scripts({"ADetailer": {"args": []}}) is None
    assert SoftInpainting.from_args(SoftInpainting(3).args()) == SoftInpainting(3)


def test_from_args_refuses_bad_lists_clearly():
    with pytest.raises(ValueError, match="at most 7"):
        SoftInpainting.from_args([True] + [1] * 7)
    with pytest.raises(ValueError, match="enabled"):
        SoftInpainting.from_args(["yes"])
    with pytest.raises(ValueError, match="a list"):
        SoftInpainting.from_args("True")
    with pytest.raises(ValueError, match="inpaint_detail_preservation"):
        SoftInpainting.from_args([True, 1, 0.5, 0.5])


def test_from_infotext_round_trips_and_keeps_missing_keys_at_default():
    s = SoftInpainting(0.5, 2, 16, 1, 4, 0.25)
    parsed = {k: format_value(v) for k, v in s.infotext_fields().items()}  # strings, as A1111's parser gives
    assert SoftInpainting.from_infotext(parsed) == s
    assert SoftInpainting.from_infotext(s.infotext_fields()) == s
    assert SoftInpainting.from_infotext({"Soft inpainting enabled": "True"}) == SoftInpainting()
    assert SoftInpainting.from_infotext({"Soft inpainting enabled": "False"}) is None
    assert SoftInpainting.from_infotext({"Soft inpainting schedule bias": "2"}) is None
    assert set(INFOTEXT_KEYS) == set(s.infotext_fields()) - {"Soft inpainting enabled"}
    with pytest.raises(ValueError, match="Soft inpainting difference contrast"):
        SoftInpainting.from_infotext({"Soft inpainting enabled": "True", "Soft inpainting difference contrast": "x"})
