"""nbdiffuse.masks against A1111 1.10's own mask code (fixtures/a1111/inpaint_a1111.*, made by make_inpaint.py).

A1111 ran with Pillow 9.5.0 (its pin), numpy 1.26.2 and opencv 4.10; these tests run with whatever Pillow is
installed (13 when written): every array is compared exactly, so a Pillow resampling or blur change shows up here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nbdiffuse import masks

HERE = Path(__file__).parent / "fixtures" / "a1111"
META = json.loads((HERE / "inpaint_a1111.json").read_text(encoding="utf8"))
with np.load(HERE / "inpaint_a1111.npz") as _z:
    ARRAYS = dict(_z)


def a1111(name: str) -> np.ndarray:
    return ARRAYS[META["same_as"].get(name, name)]


def assert_equal(ours, name: str) -> None:
    ours, theirs = np.asarray(ours), a1111(name)
    assert ours.shape == theirs.shape, name
    diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
    assert diff.max() == 0, f"{name}: {np.count_nonzero(diff)} values differ, by up to {diff.max()}"


def fake_result(w: int, h: int) -> Image.Image:
    # the generator's "decoded" picture: a pattern unlike the init picture
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([(x * 7) % 256, (y * 11) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8))


@pytest.mark.parametrize("case", META["binary_mask"], ids=lambda c: f"{c['input']}-round{c['round']}")
def test_binary_mask_is_create_binary_mask(case):
    out = masks.binary_mask(Image.fromarray(a1111(f"bm_in_{case['input']}")), round=case["round"])
    assert out.mode == case["mode"] == "L"
    assert_equal(out, f"bm_out_{case['input']}_{int(case['round'])}")


def test_crop_region_and_expansion_are_a1111s_on_worked_and_random_cases():
    assert sum(c["doc"] for c in META["crop_regions"]) == 5 and sum(c["pad"] == 0 for c in META["crop_regions"]) >= 5
    for c in META["crop_regions"]:
        (iw, ih), (x1, y1, x2, y2) = c["image_size"], c["box"]
        m = np.zeros((ih, iw), np.uint8)
        m[y1:y2, x1:x2] = 255
        region = masks.crop_region(Image.fromarray(m), c["pad"])
        assert list(region) == c["crop_region"], c
        assert list(masks.expand_crop_region(region, *c["size"], iw, ih)) == c["expanded"], c


def test_the_worked_examples_of_the_notes_are_what_a1111_init_gives():
    # INPAINT-UPSCALE.md §1.6 was transcribed; A1111's init() agrees on every row (paste_to column).
    doc = [[168, 152, 128, 128], [0, 0, 221, 332], [868, 42, 156, 156], [68, 0, 864, 800], [10, 10, 10, 10]]
    assert [c["paste_to"] for c in META["doc_init"]] == doc
    for c in META["doc_init"]:
        (iw, ih), (x1, y1, x2, y2), f = c["image_size"], c["box"], c["fields"]
        p = masks.prepare(Image.new("RGB", (iw, ih), "grey"), masks.rectangle((iw, ih), (x1, y1, x2, y2)),
                          width=f["width"], height=f["height"], inpaint_full_res_padding=f["inpaint_full_res_padding"],
                          mask_blur_x=0, mask_blur_y=0, inpainting_fill=f["inpainting_fill"])
        assert list(p.paste_to) == c["paste_to"] and list(p.image.size) == c["encoded_size"]


@pytest.mark.parametrize("name", ["drawn", "soft"])
def test_fill_is_masking_fill(name):
    assert_equal(masks.fill(Image.fromarray(a1111("picture")), Image.fromarray(a1111(f"mask_{name}"))), f"fill_{name}")


def _inputs(case):
    pictures = {"picture": Image.fromarray(a1111("picture")),
                "picture_rgba": Image.fromarray(a1111("picture_rgba"), "RGBA")}
    mask = {"drawn": lambda: Image.fromarray(a1111("mask_drawn")),
            "drawn_small": lambda: Image.fromarray(a1111("mask_drawn_small")),
            "soft_alpha": lambda: Image.fromarray(a1111("mask_soft_alpha"), "RGBA"),
            "blank": lambda: Image.new("L", pictures["picture"].size, 0)}[case["mask"]]()
    fields = dict(case["fields"])
    if "mask_blur" in fields:  # A1111's mask_blur sets both axes
        fields["mask_blur_x"] = fields["mask_blur_y"] = fields.pop("mask_blur")
    if "latent_mask" in fields:  # A1111's p.latent_mask, an image
        fields["latent_mask"] = Image.fromarray(a1111(f"mask_{fields['latent_mask']}"))
    return pictures[case["picture"]], mask, fields


@pytest.mark.parametrize("name", list(META["init"]))
def test_prepare_is_a1111_img2img_init(name):
    case = META["init"][name]
    picture, mask, fields = _inputs(case)
    p = masks.prepare(picture, mask, **fields)

    assert_equal(p.image, f"{name}_image")  # what A1111 VAE-encodes
    assert (list(p.paste_to) if p.paste_to else None) == case["paste_to"]
    assert p.comment == (case["comments"][0] if case["comments"] else None)
    if case["image_mask_mode"] is None:  # the blank-mask fallback: plain img2img
        assert p.mask is p.latent_mask is p.overlay is p.mask_for_overlay is p.crop_region is None
        return
    if p.paste_to:
        x, y, w, h = p.paste_to
        assert p.crop_region == (x, y, x + w, y + h)
    assert_equal(p.mask, f"{name}_mask")
    assert p.latent_mask.dtype == np.float32 and [4, *p.latent_mask.shape] == case["latent_shape"]
    np.testing.assert_array_equal(p.latent_mask, a1111(f"{name}_latent_mask"))  # float32, exactly
    assert_equal(p.mask_for_overlay, f"{name}_mask_for_overlay")
    assert p.overlay.mode == "RGBA"
    assert_equal(p.overlay, f"{name}_overlay")
    if case["fields"].get("inpaint_full_res", True):
        assert_equal(p.blurred, f"{name}_mask_for_overlay")  # only masked: the overlay mask is the blurred mask
    result = fake_result(fields["width"], fields["height"])
    assert_equal(masks.apply_overlay(result, p.paste_to, p.overlay), f"{name}_applied")
    if f"{name}_uncrop" in ARRAYS:
        assert_equal(masks.uncrop(result, p.overlay.size, p.paste_to), f"{name}_uncrop")


def test_the_fixture_covers_what_the_issue_asks():
    cases = META["init"].values()
    f = [c["fields"] for c in cases]
    assert {x.get("inpainting_fill", 0) for x in f} == {0, 1, 2, 3}
    assert {x.get("resize_mode", 0) for x in f if x.get("inpaint_full_res") is False} == {0, 1, 2, 3}
    assert {x.get("mask_blur", 4) for x in f} >= {0, 1, 2, 4, 8}
    assert any(x.get("mask_blur_x", 4) != x.get("mask_blur_y", 4) for x in f)
    assert any(x.get("mask_round") is False for x in f) and any(x.get("inpainting_mask_invert") for x in f)
    assert {c["mask"] for c in cases} == {"drawn", "drawn_small", "soft_alpha", "blank"}
    assert any("latent_mask" in x for x in f)
    assert META["libraries"]["Pillow"] == "9.5.0"
