"""The panel's Extras tab, driven from Python the way a browser drives it: upload a picture, set the controls,
click Generate; the tab calls session.extras (no model needed) and shows the picture and its postprocessing text."""

import io

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_panel import upload

from nbdiffuse import Session
from nbdiffuse.jobs.extras import extras_upscale
from nbdiffuse.ui import Panel


@pytest.fixture
def panel(tmp_path):
    p = Panel(Session(outputs_dir=tmp_path / "outputs", progress=False), lang="en")
    yield p
    p.close()


def png_with_parameters(size=(40, 24)) -> bytes:
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1")
    buf = io.BytesIO()
    y, x = np.mgrid[0:size[1], 0:size[0]]
    Image.fromarray(np.stack([x * 6, y * 10, x + y], -1).astype(np.uint8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_the_tab_starts_at_session_extras_defaults(panel):
    assert panel.w.tabs.get_title(2) == "Extras"
    assert panel.extras_params == {"upscaler_1": "Lanczos", "upscaler_2": "None", "upscaler_2_visibility": 0.0,
                                   "resize_mode": 0, "upscaling_resize": 2.0, "max_side_length": 0,
                                   "upscaling_resize_w": 512, "upscaling_resize_h": 512, "upscaling_crop": True}
    assert "Latent" not in panel.w.extras_upscaler_1.options  # latent modes are hires fix only
    assert panel.w.scale_to_box.layout.display == "none"
    zh = Panel(panel.session, lang="zh")
    assert zh.w.tabs.get_title(2) == "后期处理 (Extras)"
    zh.close()


def test_generate_upscales_the_uploaded_picture_and_saves_it_with_its_text(panel):
    data = png_with_parameters()
    upload(panel.w.extras_upload, "cat.png", data)
    assert panel.extras_image.size == (40, 24) and panel.w.extras_source.layout.display == ""
    panel.w.upscaling_resize.value = 2.5
    panel.w.extras_upscaler_2.value = "Nearest"
    panel.w.upscaler_2_visibility.value = 0.25
    panel.w.generate_extras.click()
    out = panel.extras_result
    expected = extras_upscale(Image.open(io.BytesIO(data)), upscaler_1="Lanczos", upscaler_2="Nearest",
                              upscaler_2_visibility=0.25, upscaling_resize=2.5)
    assert np.array_equal(np.asarray(out.image), np.asarray(expected.image)) and out.image.size == (96, 56)
    assert out.infotext == ("Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos, "
                            "Postprocess upscaler 2: Nearest")
    assert out.infotext in panel.w.extras_info.value and "extras-images" in panel.w.extras_info.value
    assert panel.w.extras_output.layout.display == "" and panel.w.extras_output.value
    with Image.open(out.path) as saved:
        saved.load()
        assert saved.text["parameters"].startswith("a cat") and saved.text["extras"] == out.infotext


def test_scale_to_shows_its_controls_and_crops_to_the_size(panel):
    upload(panel.w.extras_upload, "cat.png", png_with_parameters())
    panel.w.extras_resize_mode.value = 1
    assert panel.w.scale_to_box.layout.display == "" and panel.w.scale_by_box.layout.display == "none"
    panel.w.upscaling_resize_w.value = 104
    panel.w.upscaling_resize_h.value = 64
    panel.w.generate_extras.click()
    assert panel.extras_result.image.size == (104, 64)
    assert panel.extras_result.fields["Postprocess crop to"] == "104x64"


def test_without_a_picture_it_says_so(panel):
    panel.w.generate_extras.click()
    assert panel.extras_result is None and "Choose a picture first" in panel.error
