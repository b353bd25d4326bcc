"""Soft inpainting's functions against A1111's own (tests/fixtures/a1111/soft_inpaint_a1111.npz, made by
make_soft_inpaint.py from A1111's extensions-builtin/soft-inpainting/scripts/soft_inpainting.py; see the README there).
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbdiffuse.jobs import soft_inpainting as si
from nbdiffuse.jobs.soft_inpainting import SoftInpainting, adaptive_masks, latent_blend, modified_nmask

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "a1111" / "soft_inpaint_a1111.npz")
META = json.loads(str(FIXTURE["meta"]))
SETTINGS = [SoftInpainting(*s) for s in META["settings"]]
NMASK = torch.from_numpy(FIXTURE["nmask"])


def png(key: str) -> Image.Image:
    return Image.open(io.BytesIO(FIXTURE[key].tobytes()))


@pytest.mark.parametrize("i", range(len(SETTINGS)))
def test_modified_nmask_equals_a1111(i):
    for j, sigma in enumerate(FIXTURE["sigmas"]):
        ours = modified_nmask(SETTINGS[i], NMASK, torch.tensor(sigma))
        np.testing.assert_array_equal(ours.numpy(), FIXTURE[f"modified_nmask/{i}/{j}"])
        # a plain number is taken as the float32 sigma A1111 has
        np.testing.assert_array_equal(modified_nmask(SETTINGS[i], NMASK, float(sigma)).numpy(),
                                      FIXTURE[f"modified_nmask/{i}/{j}"])


@pytest.mark.parametrize("i", range(len(SETTINGS)))
def test_latent_blend_equals_a1111_and_leaves_its_inputs(i):
    a, b = torch.from_numpy(FIXTURE["blend_a"]), torch.from_numpy(FIXTURE["blend_b"])
    a0, b0 = a.clone(), b.clone()
    sigmas = FIXTURE["sigmas"][[0, 3]]
    for j, sigma in enumerate(sigmas):
        t = modified_nmask(SETTINGS[i], NMASK, torch.tensor(sigma))
        np.testing.assert_array_equal(latent_blend(SETTINGS[i], a[:1], b[:1], t).numpy(),
                                      FIXTURE[f"latent_blend/{i}/{j}/b1"])
        np.testing.assert_array_equal(latent_blend(SETTINGS[i], a, b, t).numpy(), FIXTURE[f"latent_blend/{i}/{j}/b2"])
    t_batch = torch.from_numpy(FIXTURE["blend_t_batch"])
    np.testing.assert_array_equal(latent_blend(SETTINGS[i], a, b, t_batch).numpy(), FIXTURE[f"latent_blend/{i}/tb"])
    assert torch.equal(a, a0) and torch.equal(b, b0)


def test_gaussian_kernel_equals_a1111():
    np.testing.assert_array_equal(si._gaussian_kernel(1.5, 2), FIXTURE["kernel"])


@pytest.mark.parametrize("lo, hi", [(0.9, 1.0), (0.25, 0.75), (0.0, 1.0), (0.0, 0.05)])
def test_vectorised_histogram_filter_equals_a1111s_loops(lo, hi):
    out = si._weighted_histogram_filter(FIXTURE["filter_in"], FIXTURE["kernel"], lo, hi)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, FIXTURE[f"filter/{lo}/{hi}"])


@pytest.mark.parametrize("name", ["whole", "whole_b2", "only_masked"])
@pytest.mark.parametrize("i", range(len(SETTINGS)))
def test_adaptive_masks_equal_a1111(name, i):
    case = META["adaptive"][name]
    batch = case["batch"]
    orig = torch.from_numpy(FIXTURE["adaptive_orig"])[:batch]
    processed = torch.from_numpy(FIXTURE["adaptive_processed"])[:batch]
    full = png(f"adaptive/{name}/overlay_in").convert("RGBA")
    inputs = [full] * batch
    paste_to = tuple(case["paste_to"]) if case["paste_to"] else None
    masks, overlays = adaptive_masks(SETTINGS[i], NMASK, orig, processed, inputs, case["width"], case["height"],
                                     paste_to)
    assert inputs == [full] * batch  # A1111 replaces the list's items; ours returns new ones
    for k in range(batch):
        expected = np.asarray(png(f"adaptive/{name}/{i}/mask{k}"))
        assert masks[k].mode == "L" and masks[k].size == full.size
        np.testing.assert_array_equal(np.asarray(masks[k]), expected)
        if i == 0:
            np.testing.assert_array_equal(np.asarray(overlays[k]), np.asarray(png(f"adaptive/{name}/0/overlay{k}")))


def test_adaptive_masks_keep_the_original_where_little_changed():
    orig = torch.zeros(1, 4, 12, 16)
    new = orig.clone()
    new[:, :, :, :8] = 2.0  # the left half changed a lot, the right half not at all
    masks, overlays = adaptive_masks(SoftInpainting(), torch.ones(4, 12, 16), orig, new,
                                     [Image.new("RGB", (128, 96), "white")], 128, 96)
    m, alpha = np.asarray(masks[0]), np.asarray(overlays[0])[:, :, 3]
    # 255: the new picture shows; the max-like filter widens the changed area by a latent pixel or two
    assert m[:, :56].min() >= 250 and m[:, 104:].max() <= 5
    assert alpha[:, :56].max() <= 5 and alpha[:, 104:].min() >= 250  # the original shows where nothing changed
