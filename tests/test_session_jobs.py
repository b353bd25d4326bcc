"""The Session entry points of img2img, loopback and the hires-fix button (the jobs have their own tests)."""

import numpy as np
from PIL import Image

from nbdiffuse import infotext

BASE = dict(prompt="a red circle", negative_prompt="", steps=4, width=64, height=64, seed=3)


def test_img2img_saves_under_img2img_images_and_writes_denoising_strength(session):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    r = session.img2img(init_images=[init], denoising_strength=0.5, **BASE)
    assert r.paths[0].parent.parent.name == "img2img-images"
    assert infotext.parse(r.infotexts[0])["Denoising strength"] == "0.5"
    again = session.img2img(init_images=[init], **infotext.to_params(r.infotexts[0]))
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(again.images[0]))


def test_hires_fix_button_equals_enable_hr_in_one_go(session):
    first = session.txt2img(**BASE)
    fixed = session.hires_fix(first, hr_scale=1.5, denoising_strength=0.6, hr_upscaler="Latent")
    direct = session.txt2img(**BASE, enable_hr=True, hr_scale=1.5, denoising_strength=0.6, hr_upscaler="Latent")
    assert fixed.images[0].size == (96, 96)
    assert np.array_equal(np.asarray(fixed.images[0]), np.asarray(direct.images[0]))


def test_loopback_feeds_each_output_back(session):
    init = Image.new("RGB", (64, 64), (30, 30, 200))
    r = session.loopback(init_images=[init], loops=3, denoising_strength=0.5, **BASE)
    assert len(r.images) == 3
    assert not np.array_equal(np.asarray(r.images[0]), np.asarray(r.images[2]))


def test_step_through_img2img(session):
    init = Image.new("RGB", (64, 64), (30, 200, 30))
    run = session.steps(init_images=[init], denoising_strength=0.5, **BASE)
    states = list(run)
    assert states and run.result is not None and len(run.result.images) == 1
