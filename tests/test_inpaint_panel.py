"""The img2img tab's inpainting: its controls at A1111's UI defaults, the mask painter, the mask upload, and the exact
``session.img2img`` call the panel makes; driven from Python as a browser drives it (set ``.value``, click)."""

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_panel import small, upload

from nbdiffuse import Session
from nbdiffuse.ui import MaskPainter, Panel

ROOT = Path(__file__).resolve().parent.parent


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def stroke_png(size=(64, 64), box=(10, 20, 30, 40)) -> bytes:
    """What the painter's front-end sends after a stroke: an RGBA PNG, opaque where painted, antialiased edges."""
    big = Image.new("RGBA", (size[0] * 4, size[1] * 4), (0, 0, 0, 0))
    ImageDraw.Draw(big).ellipse([4 * c for c in box], fill=(255, 64, 160, 255))
    return png(big.resize(size, Image.Resampling.BOX))  # soft (partly transparent) edge pixels, as a canvas draws


class RecordingSession(Session):
    """img2img calls are recorded and answered by a txt2img with the same settings (the real job is tested in
    test_img2img / test_inpainting)."""

    def img2img(self, init_images=None, *, hooks=None, **params):
        self.calls.append({"init_images": init_images, **params})
        kept = {k: v for k, v in params.items() if k in ("prompt", "steps", "width", "height", "seed")}
        return self.txt2img(hooks=hooks, **kept)


@pytest.fixture
def recording(sd1):
    session = RecordingSession(outputs_dir=None, progress=False)
    session.calls = []
    session.load(sd1)
    panel = Panel(session, lang="en")
    yield session, panel
    panel.close()


@pytest.fixture
def panel(session):
    p = Panel(session, lang="en")
    yield p
    p.close()


def test_img2img_controls_start_at_a1111s_ui_defaults(panel):
    ui = panel.w
    assert ui.img2img_mode.value == "img2img" and [label for label, _ in ui.img2img_mode.options] == \
        ["img2img", "Inpaint", "Inpaint upload"]
    # A1111 modules/ui.py: Resize mode radio, type="index", value "Just resize"
    assert ui.resize_mode.options == (("Just resize", 0), ("Crop and resize", 1), ("Resize and fill", 2),
                                      ("Just resize (latent upscale)", 3))
    assert ui.resize_mode.value == 0 and ui.extra_noise.value == 0.0
    assert (ui.extra_noise.min, ui.extra_noise.max, ui.extra_noise.step) == (0.0, 1.0, 0.01)
    # A1111's settings "Noise multiplier for img2img" (0..1.5 / 0.001) and "Inpainting conditioning mask strength"
    # (0..1 / 0.01), both 1.0, and "Overlay original for inpaint" (on)
    noise, weight = ui.initial_noise_multiplier, ui.inpainting_mask_weight
    assert (noise.value, noise.min, noise.max, noise.step) == (1.0, 0.0, 1.5, 0.001)
    assert (weight.value, weight.min, weight.max, weight.step) == (1.0, 0.0, 1.0, 0.01)
    assert ui.overlay_inpaint.value is True
    # the inpaint controls: A1111's UI defaults (its API's are fill / only masked / padding 0)
    assert (ui.mask_blur.value, ui.mask_blur.min, ui.mask_blur.max, ui.mask_blur.step) == (4, 0, 64, 1)
    assert ui.inpainting_mask_invert.options == (("Inpaint masked", 0), ("Inpaint not masked", 1))
    assert ui.inpainting_mask_invert.value == 0
    assert ui.inpainting_fill.options == (("fill", 0), ("original", 1), ("latent noise", 2), ("latent nothing", 3))
    assert ui.inpainting_fill.value == 1
    assert ui.inpaint_full_res.options == (("Whole picture", False), ("Only masked", True))
    assert ui.inpaint_full_res.value is False
    padding = ui.inpaint_full_res_padding
    assert (padding.value, padding.min, padding.max, padding.step) == (32, 0, 256, 4)
    # soft inpainting: the accordion's checkbox, off, and the six sliders with the script's labels, ranges, defaults
    assert ui.soft_inpainting.value is False and ui.soft_inpainting.description == "Soft inpainting"
    sliders = {name: (s.description, s.value, s.min, s.max, s.step) for name, s in ui.soft_sliders.items()}
    assert sliders == {
        "mask_blend_power": ("Schedule bias", 1, 0, 8, 0.1),
        "mask_blend_scale": ("Preservation strength", 0.5, 0, 8, 0.05),
        "inpaint_detail_preservation": ("Transition contrast boost", 4, 1, 32, 0.5),
        "composite_mask_influence": ("Mask influence", 0, 0, 1, 0.05),
        "composite_difference_threshold": ("Difference threshold", 0.5, 0, 8, 0.25),
        "composite_difference_contrast": ("Difference contrast", 2, 0, 8, 0.25),
    }


def test_each_mode_shows_its_own_controls(panel):
    ui = panel.w
    shown = lambda box: box.layout.display != "none"  # noqa: E731
    assert not shown(ui.painter_box) and not shown(ui.mask_upload_box) and not shown(ui.inpaint_controls)
    assert shown(ui.resize_mode) and shown(ui.extra_noise)
    ui.img2img_mode.value = "inpaint"
    assert shown(ui.painter_box) and not shown(ui.mask_upload_box) and shown(ui.inpaint_controls)
    assert not shown(ui.init_image)  # the painter shows the image
    ui.img2img_mode.value = "inpaint_upload"
    assert not shown(ui.painter_box) and shown(ui.mask_upload_box) and shown(ui.inpaint_controls)
    assert not shown(ui.init_image)  # no image chosen yet: no empty picture
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    assert shown(ui.init_image)
    assert not shown(ui.soft_box)
    ui.soft_inpainting.value = True
    assert shown(ui.soft_box)
    ui.img2img_mode.value = "img2img"
    assert not shown(ui.inpaint_controls) and shown(ui.init_image)


def test_img2img_mode_calls_img2img_with_resize_mode_and_extra_noise(recording):
    session, panel = recording
    small(panel, seed=3)
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    panel._send_to_img2img(init)
    panel.w.resize_mode.value = 2
    panel.w.extra_noise.value = 0.25
    panel.w.img2img_strength.value = 0.4
    panel.w.generate_img2img.click()
    assert panel.wait(60) is not None and panel.error is None, panel.error
    [call] = session.calls
    assert call["init_images"][0] is init
    assert {k: call[k] for k in ("resize_mode", "extra_noise", "denoising_strength")} == \
        {"resize_mode": 2, "extra_noise": 0.25, "denoising_strength": 0.4}
    assert "mask" not in call and "mask_blur" not in call and "soft_inpainting" not in call
    assert call == {**panel.img2img_params, "init_images": [init]}


def test_a_painted_stroke_is_the_mask_of_the_inpaint_call(recording):
    session, panel = recording
    small(panel, seed=3)
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    upload(panel.w.init_upload, "init.png", png(init))
    panel.w.img2img_mode.value = "inpaint"
    painter = panel.w.painter
    assert (painter.width, painter.height) == (64, 64) and painter.image  # the painter shows the init image
    stroke = stroke_png()
    painter.set_state({"mask": memoryview(stroke)})  # the front-end's message after a stroke (one binary buffer)
    panel.w.generate_img2img.click()
    assert panel.wait(60) is not None and panel.error is None, panel.error
    [call] = session.calls
    expected = np.asarray(Image.open(io.BytesIO(stroke)).getchannel("A"))
    assert call["mask"].mode == "L" and np.array_equal(np.asarray(call["mask"]), expected)
    assert 0 < expected.min(initial=255, where=expected > 0) < 255  # soft edges reach A1111's threshold as sent
    assert np.array_equal(np.asarray(call["init_images"][0]), np.asarray(init))
    # every inpainting control is sent, at A1111's UI defaults
    assert {k: call[k] for k in ("mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                                 "inpaint_full_res_padding", "soft_inpainting")} == \
        {"mask_blur": 4, "inpainting_mask_invert": 0, "inpainting_fill": 1, "inpaint_full_res": False,
         "inpaint_full_res_padding": 32, "soft_inpainting": None}


def test_inpaint_controls_and_soft_inpainting_reach_the_call(recording):
    session, panel = recording
    small(panel)
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    ui = panel.w
    ui.img2img_mode.value = "inpaint"
    ui.painter.set_mask(np.pad(np.full((8, 8), 255, np.uint8), 28))
    ui.mask_blur.value, ui.inpainting_mask_invert.value, ui.inpainting_fill.value = 8, 1, 2
    ui.inpaint_full_res.value, ui.inpaint_full_res_padding.value = True, 64
    ui.soft_inpainting.value = True
    ui.soft_sliders["composite_mask_influence"].value = 0.5
    ui.generate_img2img.click()
    assert panel.wait(60) is not None and panel.error is None, panel.error
    call = session.calls[0]
    assert (call["mask_blur"], call["inpainting_mask_invert"], call["inpainting_fill"], call["inpaint_full_res"],
            call["inpaint_full_res_padding"]) == (8, 1, 2, True, 64)
    assert call["soft_inpainting"] == {"mask_blend_power": 1.0, "mask_blend_scale": 0.5,
                                       "inpaint_detail_preservation": 4.0, "composite_mask_influence": 0.5,
                                       "composite_difference_threshold": 0.5, "composite_difference_contrast": 2.0}
    assert np.asarray(call["mask"])[28:36, 28:36].min() == 255 and np.asarray(call["mask"]).sum() == 64 * 255


def test_an_uploaded_mask_png_is_the_mask_of_inpaint_upload(recording):
    session, panel = recording
    small(panel)
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    panel.w.img2img_mode.value = "inpaint_upload"
    panel.w.generate_img2img.click()
    assert "mask PNG" in panel.error and not session.calls  # said before anything runs
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    upload(panel.w.mask_upload, "mask.png", png(mask))
    assert panel.w.mask_preview.value and panel.w.mask_preview.layout.display != "none"
    panel.w.generate_img2img.click()
    assert panel.wait(60) is not None and panel.error is None, panel.error
    sent = session.calls[0]["mask"]
    # kept as A1111's upload field holds it (RGBA); its grey levels are the mask
    assert sent.mode == "RGBA" and np.array_equal(np.asarray(sent.convert("L")), np.asarray(mask))


def test_inpaint_without_a_painted_mask_says_so_and_runs_nothing(recording):
    session, panel = recording
    small(panel)
    panel.w.img2img_mode.value = "inpaint"
    panel.w.generate_img2img.click()
    assert "init image" in panel.error  # the image first
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    panel.w.generate_img2img.click()
    assert "Paint the area" in panel.error and not panel.running and not session.calls
    panel.w.painter.set_state({"mask": memoryview(png(Image.new("RGBA", (64, 64))))})  # "Clear" sends a blank PNG
    panel.w.generate_img2img.click()
    assert "Paint the area" in panel.error and not session.calls


def test_a_new_init_image_clears_the_painted_mask(panel):
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    panel.w.painter.set_state({"mask": memoryview(stroke_png())})
    panel.w.img2img_mode.value = "inpaint"
    assert panel.mask is not None
    panel._send_to_img2img(Image.new("RGB", (96, 64)))
    assert panel.mask is None and (panel.w.painter.width, panel.w.painter.height) == (96, 64)


def test_copy_as_code_shows_the_img2img_call_after_the_img2img_tab(recording):
    session, panel = recording
    small(panel, seed=9)
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    panel.w.img2img_mode.value = "inpaint"
    panel.w.painter.set_state({"mask": memoryview(stroke_png())})
    panel.w.inpaint_full_res.value = True
    assert panel.w.tabs.selected_index == 1 and panel.w.code.value == panel.img2img_code
    assert "mask=panel.mask" in panel.w.code.value and "inpaint_full_res=True" in panel.w.code.value
    exec(panel.w.code.value, {"session": session, "panel": panel})
    [call] = session.calls
    assert {k: v for k, v in call.items() if k not in ("init_images", "mask")} == \
        {k: v for k, v in panel.img2img_params.items() if k not in ("init_images", "mask")}
    assert np.array_equal(np.asarray(call["mask"]), np.asarray(panel.mask))
    panel.w.tabs.selected_index = 0
    assert panel.w.code.value.startswith("result = session.txt2img(")


def test_set_params_sets_the_img2img_controls(panel):
    panel.set_params(resize_mode=1, extra_noise=0.1)
    assert (panel.w.resize_mode.value, panel.w.extra_noise.value) == (1, 0.1)
    assert "resize_mode" not in panel.params  # an img2img control, not an extra txt2img field
    with pytest.raises(ValueError, match="resize_mode"):
        panel.set_params(resize_mode=7)
    assert panel.w.resize_mode.value == 1


def test_the_painter_keeps_its_mask_as_the_image_size_alpha():
    painter = MaskPainter()
    painter.set_image(Image.new("RGB", (80, 48)))
    assert painter.mask_image() is None
    painter.set_state({"mask": memoryview(stroke_png((80, 48)))})
    mask = painter.mask_image()
    assert mask.size == (80, 48) and mask.getbbox() == Image.open(io.BytesIO(stroke_png((80, 48)))).getbbox()
    painter.clear()
    assert painter.mask_image() is None and painter.mask == b""
    with pytest.raises(ValueError, match="48x48 but the image to paint on is 80x48"):
        painter.set_mask(Image.new("L", (48, 48), 255))
    rgba = Image.new("RGBA", (80, 48), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 200), (0, 0, 40, 48))
    painter.set_mask(rgba)  # an RGBA mask: its alpha, as A1111's create_binary_mask reads it
    assert np.array_equal(np.asarray(painter.mask_image()), np.asarray(rgba.getchannel("A")))
    import traitlets

    with pytest.raises(traitlets.TraitError, match="brush_size"):
        painter.brush_size = 0
    painter.close()


def test_the_brush_follows_the_image_size_until_someone_chooses_one():
    painter = MaskPainter()
    painter.set_image(Image.new("RGB", (64, 64)))
    assert painter.brush_size == 4  # a sixteenth of the longer side
    painter.set_image(Image.new("RGB", (1024, 512)))
    assert painter.brush_size == 64
    painter.set_state({"brush_size": 20})  # the widget's slider
    painter.set_image(Image.new("RGB", (512, 512)))
    assert painter.brush_size == 20
    assert MaskPainter(brush_size=7).brush_size == 7
    painter.close()


def test_the_painters_module_is_valid_javascript_with_a_render():
    js = (ROOT / "src" / "nbdiffuse" / "ui" / "static" / "painter.js").read_text(encoding="utf-8")
    assert MaskPainter()._esm == js and "export default { render }" in js
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser test runs the module)")
    check = subprocess.run([node, "--input-type=module", "--check"], input=js, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_a_mask_of_the_wrong_size_is_refused_in_the_panel_before_sampling(panel):
    small(panel)
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    panel.w.img2img_mode.value = "inpaint_upload"
    panel.w.inpaint_full_res.value = True
    upload(panel.w.mask_upload, "mask.png", png(Image.new("L", (32, 32), 255)))
    panel.w.generate_img2img.click()
    assert panel.wait(60) is None
    assert "32x32" in panel.error and "64x64" in panel.error and panel.w.progress.value == 0
    assert not panel.w.generate_img2img.disabled


def test_without_the_painter_the_upload_mode_still_works(sd1, monkeypatch):
    monkeypatch.setitem(sys.modules, "nbdiffuse.ui.painter", None)  # `from .painter import ...` fails
    session = RecordingSession(outputs_dir=None, progress=False)
    session.calls = []
    session.load(sd1)
    panel = Panel(session, lang="en")
    assert "anywidget" in panel.w.painter.value and "Inpaint upload" in panel.w.painter.value
    small(panel)
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    panel.w.img2img_mode.value = "inpaint"
    panel.w.generate_img2img.click()
    assert "Paint the area" in panel.error
    panel.w.img2img_mode.value = "inpaint_upload"
    upload(panel.w.mask_upload, "mask.png", png(Image.new("L", (64, 64), 255)))
    panel.w.generate_img2img.click()
    assert panel.wait(60) is not None and panel.error is None, panel.error
    assert session.calls[0]["mask"].size == (64, 64)
    panel.close()


def test_chinese_labels_name_the_inpaint_controls_with_a1111s_words(session):
    panel = Panel(session, lang="zh")
    assert panel.w.mask_blur.description == "蒙版边缘模糊度 (Mask blur)"
    assert [label for label, _ in panel.w.img2img_mode.options][1] == "局部重绘 (Inpaint)"
    assert panel.w.inpainting_fill.options[1] == ("original", 1)  # A1111's values, as in infotexts
    assert panel.w.painter.labels["erase"] == "橡皮擦 (Erase)"
    panel.close()


def test_set_params_sets_the_inpaint_controls(recording):
    session, panel = recording
    panel.set_params(mask_blur=12, inpainting_fill=3, inpaint_full_res=1, inpaint_full_res_padding=8,
                     inpainting_mask_invert=1, initial_noise_multiplier=0.9, overlay_inpaint=False,
                     soft_inpainting={"mask_blend_power": 2.0})
    ui = panel.w
    assert (ui.mask_blur.value, ui.inpainting_fill.value, ui.inpaint_full_res.value,
            ui.inpaint_full_res_padding.value, ui.inpainting_mask_invert.value) == (12, 3, True, 8, 1)
    assert ui.initial_noise_multiplier.value == 0.9 and ui.overlay_inpaint.value is False
    assert ui.soft_inpainting.value and ui.soft_sliders["mask_blend_power"].value == 2.0
    assert not {"mask_blur", "inpainting_fill", "soft_inpainting"} & panel.params.keys()  # controls, not extras
    with pytest.raises(ValueError, match="inpainting_fill"):
        panel.set_params(inpainting_fill=4)
    assert ui.inpainting_fill.value == 3
    panel.set_params(soft_inpainting=None)
    assert not ui.soft_inpainting.value
    panel.set_params(soft_inpainting=True)  # the API's "on, with A1111's defaults"
    assert ui.soft_inpainting.value and ui.soft_sliders["mask_blend_power"].value == 1.0
    # a blur per axis has no slider: it is kept, used instead of the slider's, and dropped when the slider moves
    panel.set_params(mask_blur_x=2, mask_blur_y=6)
    panel._send_to_img2img(Image.new("RGB", (64, 64)))
    ui.img2img_mode.value = "inpaint_upload"
    upload(ui.mask_upload, "mask.png", png(Image.new("L", (64, 64), 255)))
    params = panel.img2img_params
    assert (params["mask_blur_x"], params["mask_blur_y"]) == (2, 6) and "mask_blur" not in params
    ui.mask_blur.value = 5
    assert "mask_blur_x" not in panel.img2img_params and panel.img2img_params["mask_blur"] == 5


def test_pasting_an_inpaint_infotext_fills_the_inpaint_controls(panel):
    panel.paste_infotext("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, "
                         "Denoising strength: 0.5, Soft inpainting enabled: True, Soft inpainting schedule bias: 2, "
                         "Soft inpainting preservation strength: 0.5, Soft inpainting transition contrast boost: 4, "
                         "Soft inpainting mask influence: 0, Soft inpainting difference threshold: 0.5, "
                         "Soft inpainting difference contrast: 2, Mask blur: 8, Inpaint area: Only masked, "
                         "Masked area padding: 16, Masked content: fill, Noise multiplier: 0.8")
    ui = panel.w
    assert panel.error is None
    assert (ui.mask_blur.value, ui.inpaint_full_res.value, ui.inpaint_full_res_padding.value,
            ui.inpainting_fill.value, ui.initial_noise_multiplier.value) == (8, True, 16, 0, 0.8)
    assert ui.soft_inpainting.value and ui.soft_sliders["mask_blend_power"].value == 2
    assert ui.img2img_strength.value == 0.5
    # an infotext without them: A1111's paste defaults (Inpaint masked, original, Whole picture, 32; soft off)
    panel.paste_infotext("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    assert (ui.inpainting_mask_invert.value, ui.inpainting_fill.value, ui.inpaint_full_res.value,
            ui.inpaint_full_res_padding.value, ui.soft_inpainting.value) == (0, 1, False, 32, False)
    assert ui.initial_noise_multiplier.value == 1.0  # a setting the first infotext overrode, back to A1111's


def test_inpaint_generate_gives_the_same_pixels_as_img2img_with_a_mask(panel, session):
    small(panel, seed=5, prompt="a blue square")
    init = Image.new("RGB", (64, 64), (235, 235, 235))
    ImageDraw.Draw(init).ellipse((8, 8, 56, 56), fill=(200, 30, 30))
    panel._send_to_img2img(init)
    panel.w.img2img_mode.value = "inpaint"
    panel.w.painter.set_state({"mask": memoryview(stroke_png(box=(16, 24, 48, 40)))})
    panel.w.inpainting_fill.value = 0
    panel.w.soft_inpainting.value = True
    panel.w.generate_img2img.click()
    result = panel.wait(60)
    assert panel.error is None, panel.error
    again = session.img2img(**panel.img2img_params)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(again.images[0]))
    assert result.infotexts == again.infotexts
    # A1111's UI defaults went in: no "Inpaint area" / "Masked area padding" keys (whole picture), fill written
    assert "Mask blur: 4" in result.infotexts[0] and "Masked content: fill" in result.infotexts[0]
    assert "Inpaint area" not in result.infotexts[0] and "Soft inpainting enabled: True" in result.infotexts[0]
    assert result.inpaint[0].crop_region is None and result.inpaint[0].binary.size == (64, 64)
