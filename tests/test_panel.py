"""The control panel, driven from Python the way a browser drives it: set `.value`, `button.click()`, wait."""

import datetime
import time
from pathlib import Path

import numpy as np
import pytest

from nbdiffuse import Session
from nbdiffuse.ui import Panel
from nbdiffuse.ui.images import png_bytes, preview_image

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def pixels(result):
    return [np.asarray(image) for image in result.images]


def small(panel, **more):
    """Fast settings for the tiny model, set through the widgets as a user would."""
    panel.w.prompt.value = "a red circle"
    panel.w.steps.value = 3
    panel.w.width.value = 64
    panel.w.height.value = 64
    for name, value in more.items():
        getattr(panel.w, name).value = value


def upload(widget, name: str, data: bytes) -> None:
    """What the browser sends for one uploaded file: ipywidgets 8's tuple of dicts, or 7.x's read-only dict."""
    import ipywidgets

    if int(ipywidgets.__version__.split(".")[0]) >= 8:
        widget.value = ({"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
                         "last_modified": NOW},)
    else:
        widget.set_trait("value", {name: {"metadata": {"name": name, "type": "image/png", "size": len(data)},
                                          "content": data}})


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture
def panel(session):
    p = Panel(session, lang="en")
    yield p
    if p.running:
        p.stop()
        p.wait(60)
    p.close()


def test_generate_button_gives_the_same_pixels_and_infotexts_as_txt2img(panel, session):
    small(panel, negative_prompt="blurry", sampler_name="Euler a", seed=1234, cfg_scale=5.5, batch_size=2,
          n_iter=2)
    panel.w.generate.click()
    result = panel.wait(120)
    assert panel.error is None
    again = session.txt2img(**panel.params)
    assert len(result.images) == 4
    assert all(np.array_equal(a, b) for a, b in zip(pixels(result), pixels(again), strict=True))
    assert result.infotexts == again.infotexts
    assert result.seeds == [1234, 1235, 1236, 1237]
    assert panel.w.progress.value == panel.w.progress.max == 3 * 2
    assert panel.w.preview.value  # the live preview was shown
    assert panel.w.status.value.startswith("Done: 4 image(s).")
    cards = panel.w.gallery.children[0].children[1].children
    assert len(cards) == 4
    assert "Seed: 1234" in cards[0].children[1].value  # the infotext under the image
    assert cards[0].children[0].value == png_bytes(result.images[0])
    assert not panel.w.generate.disabled and panel.w.stop.disabled


def test_controls_start_at_the_parameters_defaults(panel, session):
    from nbdiffuse.jobs.params import GenerationParams

    d = GenerationParams()
    for name in ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed",
                 "batch_size", "n_iter", "enable_hr", "hr_scale", "hr_second_pass_steps"):
        assert getattr(panel.w, name).value == getattr(d, name), name
    assert (panel.w.width.value, panel.w.height.value) == session.model.native_size  # a session's jobs' default
    # the fields whose default is None ("the job's default"): what the jobs use for None
    assert (panel.w.hr_upscaler.value, panel.w.denoising_strength.value, panel.w.img2img_strength.value) == \
        ("Latent", 0.7, 0.75)


def test_the_progress_bar_counts_every_step_of_the_job(panel):
    small(panel, sampler_name="Heun", n_iter=2, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2)
    panel.w.generate.click()
    result = panel.wait(120)
    assert panel.error is None, panel.error
    assert panel.w.progress.max == panel.w.progress.value == result.params.total_steps == (3 + 2) * 2


def test_the_gallery_keeps_png_bytes_and_infotexts_not_results(panel):
    import dataclasses

    import torch
    from PIL import Image

    from nbdiffuse.jobs.result import Result

    small(panel, batch_size=2, seed=3)
    panel.w.generate.click()
    result = panel.wait(60)
    job = panel.gallery.newest
    assert [p.infotext for p in job.pictures] == result.infotexts and job.seeds == [3, 4]
    assert all(np.array_equal(np.asarray(p.image), a) for p, a in zip(job.pictures, pixels(result), strict=True))
    held = [getattr(job, f.name) for f in dataclasses.fields(job)] + \
        [getattr(p, f.name) for p in job.pictures for f in dataclasses.fields(p)]
    assert not any(isinstance(v, (Result, torch.Tensor, Image.Image)) for v in held)


def test_params_is_exactly_the_txt2img_call_and_copy_as_code_shows_it(panel):
    small(panel, seed=7)
    assert panel.params == {"prompt": "a red circle", "negative_prompt": "", "sampler_name": "DPM++ 2M",
                            "scheduler": "Automatic", "steps": 3, "cfg_scale": 7.0, "width": 64, "height": 64,
                            "seed": 7, "batch_size": 1, "n_iter": 1}
    calls = []

    class Recorder:
        def txt2img(self, **kwargs):
            calls.append(kwargs)

    assert panel.w.code.value == panel.code
    exec(panel.w.code.value, {"session": Recorder()})
    assert calls == [panel.params]


def test_stop_during_a_long_job_interrupts_it_and_the_panel_stays_usable(panel):
    small(panel, steps=1000, n_iter=3)
    panel.w.generate.click()
    wait_for(lambda: panel.w.progress.value >= 2)
    assert panel.running and not panel.w.stop.disabled and panel.w.generate.disabled
    start = time.monotonic()
    panel.w.stop.click()
    result = panel.wait(60)
    assert time.monotonic() - start < 30
    assert result.interrupted
    assert panel.w.progress.value < 1000  # nowhere near the 3000 steps asked for
    assert panel.w.status.value.startswith("Stopped:")
    assert "(interrupted)" in panel.w.gallery.children[0].children[0].value
    small(panel, steps=2, n_iter=1)  # usable again
    panel.w.generate.click()
    assert not panel.wait(60).interrupted


def test_stop_clicked_before_the_first_step_still_stops(panel):
    small(panel, steps=1000)
    panel.w.generate.click()
    panel.w.stop.click()
    assert panel.wait(60).interrupted


def test_token_counter_updates_on_every_change(panel, session):
    assert panel.w.prompt_tokens.value == "0/75"
    panel.w.prompt.value = "a red circle"
    assert panel.w.prompt_tokens.value == str(session.count_tokens("a red circle")) == "3/75"
    long = ", ".join(["red circle"] * 30)
    panel.w.prompt.value = long
    assert panel.w.prompt_tokens.value == str(session.count_tokens(long))
    assert panel.w.prompt_tokens.value.endswith("/150")
    panel.w.negative_prompt.value = "blue, green"
    assert panel.w.negative_tokens.value == "3/75"


INFOTEXT = ("a yellow star\nNegative prompt: blurry, red\nSteps: 12, Sampler: DPM++ 2M Karras, CFG scale: 5.5, "
            "Seed: 4242, Size: 96x128, Model hash: 0123456789, Model: toy, Clip skip: 2, Version: v1.10.0")


def test_pasting_an_infotext_fills_every_control(panel):
    panel.w.paste_text.value = INFOTEXT
    panel.w.paste.click()
    ui = panel.w
    assert (ui.prompt.value, ui.negative_prompt.value) == ("a yellow star", "blurry, red")
    assert (ui.steps.value, ui.sampler_name.value, ui.scheduler.value) == (12, "DPM++ 2M", "Automatic")
    assert (ui.cfg_scale.value, ui.seed.value, ui.width.value, ui.height.value) == (5.5, 4242, 96, 128)
    assert panel.params["clip_skip"] == 2  # no control for it: kept, shown, and in the code
    assert "clip_skip=2" in ui.extra.value and "clip_skip=2" in ui.code.value
    assert panel.error is None and "Filled the controls" in ui.paste_status.value

    panel.paste_infotext("a blue square\nSteps: 300, Sampler: Euler a, Schedule type: Exponential, CFG scale: 7, "
                         "Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent")
    assert ui.negative_prompt.value == "" and "clip_skip" not in panel.params  # reset like A1111's paste
    assert ui.steps.value == 300  # not clamped to the slider's 150
    assert (ui.sampler_name.value, ui.scheduler.value) == ("Euler a", "Exponential")
    assert ui.enable_hr.value and ui.denoising_strength.value == 0.5 and ui.hr_scale.value == 2.0
    assert panel.params["enable_hr"] is True and panel.params["hr_upscaler"] == "Latent"


def test_a_bad_infotext_shows_the_error_and_changes_nothing(panel):
    before = panel.params
    panel.w.paste_text.value = "a cat\nSteps: many, Sampler: Euler, Seed: 1"
    panel.w.paste.click()
    assert "Steps" in panel.error and panel.w.error.layout.display != "none"
    assert panel.params == before
    with pytest.raises(ValueError, match="width"):
        panel.set_params(width=65)
    assert panel.params == before


def test_uploading_an_a1111_png_reruns_that_image(panel, session):
    original = session.txt2img(prompt="a green cross", steps=3, width=64, height=64, seed=99, sampler_name="Euler")
    data = Path(original.paths[0]).read_bytes()
    upload(panel.w.upload, "00000-99.png", data)
    assert panel.error is None
    assert (panel.w.prompt.value, panel.w.seed.value, panel.w.sampler_name.value) == ("a green cross", 99, "Euler")
    assert panel.w.paste_text.value == original.infotexts[0]
    panel.w.generate.click()
    again = panel.wait(60)
    assert np.array_equal(pixels(again)[0], pixels(original)[0])
    assert again.infotexts == original.infotexts


def test_uploading_an_image_without_infotext_says_so(panel):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    upload(panel.w.upload, "x.png", buf.getvalue())
    assert "no infotext" in panel.error


def test_api_errors_show_in_the_panel_which_stays_usable(panel, tmp_path):
    empty = Panel(Session(outputs_dir=None, progress=False), lang="en")
    empty.w.generate.click()
    assert "No model" in empty.error and not empty.running
    empty.close()

    small(panel)
    panel.set_params(styles=["no such style"])  # valid parameters; the job itself fails
    panel.w.generate.click()
    assert panel.wait(60) is None
    assert "no such style" in panel.error and "no such style" in panel.w.error.value
    assert not panel.w.generate.disabled
    panel.w.clear_extra.click()
    panel.w.generate.click()
    assert panel.wait(60) is not None and panel.error is None and panel.w.error.layout.display == "none"


def test_gallery_use_seed_and_reuse_last_seed(panel):
    small(panel, batch_size=2)
    panel.w.generate.click()
    result = panel.wait(60)
    panel.w.seed.value = 5
    panel.w.reuse_seed.click()
    assert panel.w.seed.value == result.seeds[0]
    card = panel.w.gallery.children[0].children[1].children[1]
    use_seed = card.children[2].children[0]
    use_seed.click()
    assert panel.w.seed.value == result.seeds[1]
    panel.w.random_seed.click()
    assert panel.w.seed.value == -1


class Img2ImgSession(Session):
    """A session whose img2img, hires fix and debugger calls are recorded (the real ones are tested elsewhere)."""

    calls: list

    def img2img(self, *, init_images, denoising_strength, hooks=None, **params):
        self.calls.append(("img2img", init_images, denoising_strength))
        return self.txt2img(hooks=hooks, **params)

    def hires_fix(self, result=None, *, indices=None, hooks=None, **changes):
        self.calls.append(("hires_fix", result, indices, changes))
        return result

    def debug(self, **params):
        self.calls.append(("debug", params))
        return "debugger"


def test_gallery_buttons_call_the_api_for_their_image(sd1):
    session = Img2ImgSession(outputs_dir=None, progress=False)
    session.calls = []
    session.load(sd1)
    panel = Panel(session, lang="en")
    small(panel, batch_size=2, seed=10)
    panel.w.generate.click()
    first = panel.wait(60)
    buttons = panel.w.gallery.children[0].children[1].children[1].children[2].children
    assert [b.description for b in buttons] == ["use seed", "send to img2img", "✨ hires fix this",
                                                "open step-through debugger here"]
    buttons[2].click()
    panel.wait(60)
    assert session.calls[0][:3] == ("hires_fix", first, [1])
    buttons[1].click()
    assert panel.w.tabs.selected_index == 1 and panel.w.init_image.value
    panel.w.img2img_strength.value = 0.5
    panel.w.generate_img2img.click()
    panel.wait(60)
    name, init, strength = session.calls[1]
    assert (name, strength) == ("img2img", 0.5) and np.array_equal(np.asarray(init[0]), pixels(first)[1])
    # under an older job, ✨ is hidden and does nothing (the panel keeps the newest job's latents only) ...
    assert buttons[2].layout.display == "none"
    buttons[2].click()
    assert panel.wait(60) is not None and len(session.calls) == 2
    # ... while the debugger needs no latents: it reruns the image from its seed and parameters
    buttons[3].click()
    assert session.calls[2][0] == "debug" and session.calls[2][1]["seed"] == 11
    assert session.calls[2][1]["batch_size"] == 1
    panel.close()


def test_chinese_labels_keep_a1111_names(session, monkeypatch):
    panel = Panel(session, lang="zh")
    assert panel.w.generate.description == "生成 (Generate)"
    assert panel.w.steps.description == "迭代步数 (Steps)"
    assert "Euler a" in panel.w.sampler_name.options and "Karras" in panel.w.scheduler.options
    assert panel.w.tabs.get_title(0) == "文生图 (txt2img)"
    panel.close()
    monkeypatch.setenv("LANGUAGE", "zh_CN:zh")
    assert Panel(session).lang == "zh"
    monkeypatch.setenv("LANGUAGE", "en_US")
    assert Panel(session).lang == "en"
    with pytest.raises(ValueError, match="lang"):
        Panel(session, lang="fr")


def test_cheap_preview_uses_a1111_factors():
    latent = np.zeros((4, 2, 2), dtype=np.float32)
    latent[0] = 1.0
    import torch

    image = np.asarray(preview_image(torch.from_numpy(latent)))
    assert image.shape == (2, 2, 3)
    assert tuple(image[0, 0]) == tuple(round((0.5 + 0.5 * f) * 255) for f in (0.298, 0.207, 0.208))


def test_big_images_are_sent_under_the_message_limit():
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    assert len(data) < 700_000


def test_the_panel_carries_its_shipped_styles(panel):
    css = (ROOT / "src" / "nbdiffuse" / "ui" / "static" / "panel.css").read_text(encoding="utf-8")
    assert ".nbd-panel" in css and css in panel.widget.children[0].value


def test_only_the_ui_package_imports_widget_libraries():
    offenders = [p for p in (ROOT / "src" / "nbdiffuse").rglob("*.py")
                 if "ui" not in p.relative_to(ROOT / "src" / "nbdiffuse").parts[:1]
                 and any(s in p.read_text(encoding="utf-8") for s in ("import ipywidgets", "import anywidget"))]
    assert offenders == []


def test_hires_controls_show_only_when_hires_fix_is_on(panel):
    assert panel.w.hires_box.layout.display == "none" and "enable_hr" not in panel.params
    panel.w.enable_hr.value = True
    assert panel.w.hires_box.layout.display == ""
    assert panel.params["enable_hr"] is True and panel.params["hr_upscaler"] == "Latent"
    assert "enable_hr=True" in panel.w.code.value


def test_xyz_tab_shows_the_plan_then_runs_the_grid(panel, session):
    small(panel, steps=2)
    panel.w.xyz_axes[0].value, panel.w.xyz_values[0].value = "Steps", "1, 2"
    panel.w.xyz_axes[1].value, panel.w.xyz_values[1].value = "CFG Scale", "3, 7"
    panel.w.xyz_plan.click()
    assert panel.error is None, panel.error
    assert "2 × 2 × 1 cells" in panel.w.xyz_info.value and "4 images" in panel.w.xyz_info.value
    panel.w.xyz_run.click()
    grid = panel.wait(120)
    assert panel.error is None, panel.error
    assert panel.w.xyz_grid.value and panel.w.status.value.startswith("Done: 4") and grid.done == 4
    panel.w.xyz_values[0].value = "1, x"
    panel.w.xyz_plan.click()
    assert "Steps" in panel.error  # the API's message, in the panel


def test_xyz_tab_fills_the_grid_cell_by_cell_and_passes_the_ray_box_on(panel, session, monkeypatch):
    small(panel, steps=2)
    panel.w.xyz_axes[0].value, panel.w.xyz_values[0].value = "Steps", "1, 2, 3"
    seen, shown = [], panel._grid_progress

    def progress(grid):
        shown(grid)
        seen.append((grid.done, panel.w.progress.value, panel.w.progress.max, len(panel.w.xyz_grid.value)))

    monkeypatch.setattr(panel, "_grid_progress", progress)
    panel.w.xyz_run.click()
    assert panel.wait(120).done == 3 and panel.error is None, panel.error
    assert [s[:3] for s in seen[:3]] == [(1, 1, 3), (2, 2, 3), (3, 3, 3)] and all(s[3] > 0 for s in seen)
    # the box asks the session for Ray workers (the session's call itself is tested in test_fanout.py)
    calls = []
    for name in ("xyz", "plan_xyz"):
        original = getattr(session, name)
        monkeypatch.setattr(session, name, lambda *a, _f=original, _n=name, **k: calls.append((_n, k["executor"]))
                            or _f(*a, **{**k, "executor": None}))
    panel.w.xyz_plan.click()
    panel.w.xyz_run.click()
    panel.wait(120)
    panel.w.xyz_ray.value = True
    assert panel.xyz_executor == "ray"
    panel.w.xyz_plan.click()
    panel.w.xyz_run.click()
    panel.wait(120)
    before, after = calls[:calls.index(("plan_xyz", "ray"))], calls[calls.index(("plan_xyz", "ray")):]
    assert {e for _, e in before} == {None} and ("xyz", None) in before, calls
    assert ("xyz", "ray") in after and panel.error is None, (calls, panel.error)


def test_both_languages_label_everything():
    from nbdiffuse.ui.labels import EN, ZH

    assert set(EN) == set(ZH)


def test_gallery_keeps_the_last_jobs(session):
    panel = Panel(session, lang="en", gallery_jobs=2)
    small(panel, steps=1)
    for seed in (1, 2, 3):
        panel.w.seed.value = seed
        panel.w.generate.click()
        panel.wait(60)
    assert [job.seeds for job in panel.gallery.jobs] == [[3], [2]]
    newest_card = panel.w.gallery.children[0].children[1].children[0]
    assert len(panel.w.gallery.children) == 2 and "Seed: 3" in newest_card.children[1].value
    panel.close()


class ModelsSession(Session):
    """A session whose model folders list a few names; load(name) is recorded (the real one is tested elsewhere)."""

    def models(self):
        return {"checkpoints": ["anything-v3.safetensors"], "loras": ["detail"], "vae": ["kl-f8.safetensors"],
                "embeddings": ["bad"]}

    def load_vae(self, vae):
        self.vae_loaded = vae
        return self.model

    def load(self, model, **kwargs):
        if isinstance(model, str):
            self.loaded = model
            return self.model
        return super().load(model, **kwargs)


def test_models_tab_lists_loads_and_inserts(sd1):
    session = ModelsSession(outputs_dir=None, progress=False)
    session.load(sd1)
    panel = Panel(session, lang="en")
    assert "anything-v3.safetensors" in panel.w.checkpoint.options
    panel.w.checkpoint.value = "anything-v3.safetensors"
    panel.w.load.click()
    panel.wait(30)
    assert session.loaded == "anything-v3.safetensors"
    assert "Loaded anything-v3.safetensors" in panel.w.model_status.value
    panel.w.prompt.value = "a cat"
    panel.w.insert_lora.click()
    panel.w.insert_embedding.click()
    assert panel.w.prompt.value == "a cat, <lora:detail:1>, bad"
    assert panel.w.vae.options == ("Automatic", "kl-f8.safetensors")
    panel.w.vae.value = "kl-f8.safetensors"
    panel.w.apply_vae.click()
    assert session.vae_loaded == "kl-f8.safetensors" and "kl-f8" in panel.w.model_status.value
    panel.w.vae.value = "Automatic"
    panel.w.apply_vae.click()
    assert session.vae_loaded is None
    panel.close()


def test_img2img_tab_gives_the_same_pixels_as_img2img(panel, session):
    small(panel, seed=5)
    panel.w.generate.click()
    first = panel.wait(60)
    card = panel.w.gallery.children[0].children[1].children[0]
    send = [b for b in card.children[2].children if b.description == "send to img2img"][0]
    send.click()
    assert panel.w.tabs.selected_index == 1
    panel.w.img2img_strength.value = 0.5
    panel.w.generate_img2img.click()
    result = panel.wait(60)
    assert panel.error is None, panel.error
    again = session.img2img(init_images=[first.images[0]], denoising_strength=0.5, **panel.params)
    assert np.array_equal(pixels(result)[0], pixels(again)[0]) and result.infotexts == again.infotexts


def test_hires_fix_this_runs_the_second_pass_on_that_image(panel):
    small(panel, seed=5, batch_size=2)
    panel.w.generate.click()
    panel.wait(60)
    panel.w.hr_scale.value = 2.0
    panel.w.hr_second_pass_steps.value = 2
    card = panel.w.gallery.children[0].children[1].children[1]
    [b for b in card.children[2].children if "hires" in b.description][0].click()
    result = panel.wait(60)
    assert panel.error is None, panel.error
    assert result.seeds == [6] and result.images[0].size == (128, 128)
    assert "Hires upscale: 2" in result.infotexts[0]


def test_the_sessions_registered_upscalers_are_choices(session, tmp_path):
    model = tmp_path / "4x-Fake.pth"
    model.write_bytes(b"not loaded by this test")
    session.upscalers.register(model)
    panel = Panel(session, lang="en")
    assert "4x-Fake" in panel.w.hr_upscaler.options
    panel.set_params(enable_hr=True, hr_upscaler="4x-Fake")  # valid for this session's jobs, so for its panel
    assert panel.params["hr_upscaler"] == "4x-Fake"
    other = Panel(Session(outputs_dir=None, progress=False), lang="en")
    assert "4x-Fake" not in other.w.hr_upscaler.options
    with pytest.raises(ValueError, match="4x-Fake"):
        other.set_params(enable_hr=True, hr_upscaler="4x-Fake")
    panel.close()
    other.close()


def test_the_models_folders_upscalers_are_choices_from_the_start(sd1, tmp_path):
    folder = tmp_path / "webui" / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    (folder / "4x_Folder.pth").write_bytes(b"not loaded by this test")
    session = Session(outputs_dir=None, progress=False, models_dir=tmp_path / "webui")
    session.load(sd1)
    panel = Panel(session, lang="en")
    assert "4x_Folder" in panel.w.hr_upscaler.options  # before any job named it
    panel.set_params(enable_hr=True, hr_upscaler="4x_Folder")
    assert panel.params["hr_upscaler"] == "4x_Folder"
    panel.close()
