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


def test_emphasis_mode_changes_the_image_and_round_trips_through_the_infotext(session):
    original = session.txt2img(prompt="a (red:1.6) circle", **{k: v for k, v in BASE.items() if k != "prompt"})
    nonorm = session.txt2img(prompt="a (red:1.6) circle", emphasis="No norm",
                             **{k: v for k, v in BASE.items() if k != "prompt"})
    assert not np.array_equal(np.asarray(original.images[0]), np.asarray(nonorm.images[0]))
    assert infotext.parse(nonorm.infotexts[0])["Emphasis"] == "No norm"
    assert "Emphasis" not in infotext.parse(original.infotexts[0])
    again = session.txt2img(**infotext.to_params(nonorm.infotexts[0]))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(nonorm.images[0]))


def test_a_refiner_model_says_it_cannot_generate_yet(sdxl):
    import dataclasses

    from nbdiffuse import Session

    s = Session(outputs_dir=None, progress=False)
    s.load(dataclasses.replace(sdxl, arch="sdxl_refiner"))
    import pytest

    with pytest.raises(ValueError, match="refiner"):
        s.txt2img(prompt="x", steps=2, width=64, height=64)


def test_live_preview_parameter_reports_every_n_steps(session, monkeypatch):
    shown = []
    monkeypatch.setattr("nbdiffuse.inspect.previews.PreviewHook._show", lambda self: shown.append(self.last))
    r = session.txt2img(preview=2, **BASE)
    assert len(shown) == 2 and shown[0].size == (8, 8)
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(session.txt2img(**BASE).images[0]))
