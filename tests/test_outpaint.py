"""Outpainting as jobs on the toy model (Session.outpaint): A1111's canvas size, the original kept where A1111 keeps
it, the seeds each tile or direction gets, the saved infotext, and errors before any model work. The geometry
itself is checked against A1111's scripts in tests/test_outpaint_a1111.py."""

import numpy as np
import pytest
from PIL import Image

import nbdiffuse.jobs.img2img as img2img_module
from nbdiffuse import infotext
from nbdiffuse.jobs.outpaint import expansion

BASE = dict(prompt="a red circle on a white background", steps=3, denoising_strength=0.8)


@pytest.fixture
def jobs(monkeypatch):
    """Every img2img job an outpainting script runs: its parameters, init image and masks."""
    seen = []
    real = img2img_module.img2img_steps

    def spy(bundle, p, encoder, init_images, **kw):
        seen.append(dict(p=p, init=init_images, mask=kw.get("mask"), latent_mask=kw.get("latent_mask")))
        return real(bundle, p, encoder, init_images, **kw)

    monkeypatch.setattr(img2img_module, "img2img_steps", spy)
    return seen


def test_poor_mans_grows_to_a1111s_size_keeps_the_original_and_gives_each_tile_the_next_seed(toy, red, jobs):
    r = toy.outpaint([red], pixels=16, direction=["right"], seed=10, **BASE)
    e = expansion(red.size, 16, ["right"])
    assert r.image.size == e.size == (128, 64)  # 64 + 16, rounded up to a multiple of 64
    # tiles of 64x64 overlapping by 16 at x = 0, 32, 64; the first lies inside the picture and is not redrawn
    assert len(jobs) == 2 and [j["p"].seed for j in jobs] == [10, 11]
    assert all(j["p"].mask_blur == 8 and j["p"].inpainting_fill == 0 and not j["p"].inpaint_full_res for j in jobs)
    assert [j["init"][0].size for j in jobs] == [(64, 64), (64, 64)]
    # the picture's own pixels far from the new edge (mask inset 8, blur 8: 21-pixel kernel) are the original's
    out, before = np.asarray(r.image).astype(int), np.asarray(red).astype(int)
    assert np.array_equal(out[:, :32], before[:, :32])
    assert np.abs(out[:, 80:] - 0).mean() > 20  # the black canvas was painted over
    assert r.seeds == [10] and len(r.images) == 1
    fields = infotext.parse(r.infotexts[0])
    assert (fields["Seed"], fields["Size-1"], fields["Mask blur"], fields["Masked content"]) == ("10", "64", "8",
                                                                                                 "fill")
    assert r.paths[0].parent.parent.name == "img2img-images"
    assert infotext.read_png(r.paths[0]) == r.infotexts[0]


def test_mk2_grows_each_direction_in_order_with_the_same_seed_and_keeps_the_original(toy, red, jobs):
    r = toy.outpaint([red], method="mk2", pixels=8, mask_blur=1, direction=["up", "left"], seed=5, **BASE)
    e = expansion(red.size, 8, ["up", "left"])
    assert r.image.size == e.size == (128, 128)
    assert [j["p"].seed for j in jobs] == [5, 5]  # A1111's mk2 keeps p.seed for every direction
    assert [(j["p"].width, j["p"].height) for j in jobs] == [(64, 64), (128, 64)]  # left, then up
    assert all((j["p"].mask_blur_x, j["p"].mask_blur_y, j["p"].inpainting_fill) == (4, 4, 1) for j in jobs)
    out = np.asarray(r.image).astype(int)
    # the original sits at (left, up) = (64, 64) and the strips redrawn lie outside it, so it is kept exactly but
    # for its first row and column: A1111's canvas mask starts mask_blur (1) pixels inside the picture, the noise
    # fill covers that band, and here no job redraws it (each strip is exactly the new area)
    assert np.array_equal(out[65:, 65:], np.asarray(red).astype(int)[1:, 1:])
    assert not np.array_equal(out[64, 64:], np.asarray(red).astype(int)[0])
    assert r.seeds == [5] and "Mask blur: 4" in r.infotexts[0]


def test_outpainting_errors_come_before_any_model_work(toy, red, jobs):
    with pytest.raises(ValueError, match="smaller than the tile size"):
        toy.outpaint([red], pixels=64, **BASE)
    with pytest.raises(ValueError, match="job's height is 64"):
        toy.outpaint([Image.new("RGB", (80, 48))], method="mk2", pixels=40, mask_blur=4, direction=["left", "down"],
                     width=128, height=64, **BASE)
    with pytest.raises(ValueError, match="multiple of 8"):
        toy.outpaint([Image.new("RGB", (100, 64))], method="mk2", pixels=8, direction=["left", "right"], width=128,
                     height=64, **BASE)  # the left step's job would be 114 wide
    with pytest.raises(ValueError, match="method"):
        toy.outpaint([red], method="mk3", **BASE)
    with pytest.raises(ValueError, match="direction"):
        toy.outpaint([red], direction=["sideways"], **BASE)
    with pytest.raises(ValueError, match="one init image"):
        toy.outpaint([red, red], pixels=16, **BASE)
    assert jobs == []
