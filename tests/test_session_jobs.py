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


def test_live_preview_parameter_reports_every_n_steps(session, monkeypatch):
    shown = []
    monkeypatch.setattr("nbdiffuse.inspect.previews.PreviewHook._show", lambda self: shown.append(self.last))
    r = session.txt2img(preview=2, **BASE)
    assert len(shown) == 2 and shown[0].size == (8, 8)
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(session.txt2img(**BASE).images[0]))


def test_width_and_height_default_to_the_models_native_size():
    from nbdiffuse import Session
    from nbdiffuse.testing import tiny_sd1
    from nbdiffuse.ui import Panel

    bundle = tiny_sd1()
    bundle.unet.register_to_config(sample_size=12)  # as if trained at 96x96: the size comes from the model
    s = Session(outputs_dir=None, progress=False)
    s.load(bundle)
    assert bundle.native_size == (96, 96)
    r = s.txt2img(prompt="a red circle", steps=2, seed=1)
    assert r.images[0].size == (96, 96) and infotext.parse(r.infotexts[0])["Size"] == "96x96"
    again = s.txt2img(**infotext.to_params(r.infotexts[0]))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(r.images[0]))
    # explicit values (any A1111 payload) are kept; a missing one is the native size
    assert s.txt2img(prompt="x", steps=1, width=64, height=128).images[0].size == (64, 128)
    assert s.txt2img(prompt="x", steps=1, width=64).images[0].size == (64, 96)
    assert s.txt2img(prompt="x", steps=1, enable_hr=True, hr_scale=1.5).images[0].size == (144, 144)
    # img2img resizes the init image to width x height as A1111 does, and those default the same way
    init = Image.new("RGB", (40, 56), (200, 30, 30))
    assert s.img2img(init_images=[init], prompt="x", steps=2).images[0].size == (96, 96)
    plan = s.plan_xyz(("Steps", "1, 2"), None, prompt="x", estimate=False)
    assert set(plan.sizes.values()) == {(96, 96)} and all(c["width"] == 96 for c in plan.cells.values())
    panel = Panel(s)
    assert (panel.w.width.value, panel.w.height.value) == (96, 96) and panel.params["width"] == 96
    panel.close()


def test_panel_sliders_follow_a_model_change_unless_the_user_moved_them(tmp_path):
    from nbdiffuse import Session
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.testing import tiny_sd1
    from nbdiffuse.ui import Panel

    big = tiny_sd1()
    big.unet.register_to_config(sample_size=12)
    files = {"small": save_checkpoint(tiny_sd1(), tmp_path / "small.safetensors"),
             "big": save_checkpoint(big, tmp_path / "big.safetensors")}
    s = Session(outputs_dir=None, progress=False)
    s.load(files["small"])
    panel = Panel(s)
    assert (panel.w.width.value, panel.w.height.value) == (64, 64)
    panel._load_model(str(files["big"]))
    panel.wait(60)
    assert s.model.native_size == (96, 96) and (panel.w.width.value, panel.w.height.value) == (96, 96)
    panel.w.width.value = 128  # the user's choice stays
    panel._load_model(str(files["small"]))
    panel.wait(60)
    assert s.model.native_size == (64, 64) and (panel.w.width.value, panel.w.height.value) == (128, 96)
    panel.close()
