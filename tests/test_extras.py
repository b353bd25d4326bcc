"""Session.extras (A1111's Extras tab, "Upscale"): where the picture is saved and what its PNG holds, as A1111's
run_postprocessing writes it, and errors before any work. The sizes and fields themselves are checked against
A1111's code in tests/test_sd_upscale_a1111.py."""

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from nbdiffuse import Session


@pytest.fixture
def session(tmp_path):
    return Session(outputs_dir=tmp_path / "outputs", progress=False)


def test_saved_as_a1111_numbered_in_extras_images_with_the_source_text_kept(session, tmp_path):
    source = tmp_path / "generated.png"
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1")
    info.add_text("Comment", "mine")
    Image.new("RGB", (40, 24), "teal").save(source, pnginfo=info)
    out = session.extras(source, upscaler_1="Lanczos", upscaling_resize=2)
    assert out.image.size == (80, 48)
    assert out.infotext == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert out.path == tmp_path / "outputs" / "extras-images" / "00000.png"  # no dated folder, no seed
    with Image.open(out.path) as saved:
        saved.load()
        # the source's own chunks (parameters moved last), then postprocessing and extras (A1111's pnginfo)
        assert list(saved.text) == ["Comment", "parameters", "postprocessing", "extras"]
        assert saved.text["parameters"] == "a cat\nSteps: 20, Sampler: Euler a, Seed: 1"
        assert saved.text["postprocessing"] == saved.text["extras"] == out.infotext
    again = session.extras(Image.new("RGB", (16, 16)), resize_mode=1, upscaling_resize_w=40, upscaling_resize_h=24,
                           upscaler_1="Nearest", upscaler_2="Lanczos", upscaler_2_visibility=0.5)
    assert again.path.name == "00001.png" and again.image.size == (40, 24)
    assert again.infotext == ("Postprocess upscale to: 40x24, Postprocess crop to: 40x24, Postprocess upscaler: "
                              "Nearest, Postprocess upscaler 2: Lanczos")


def test_upscaler_1_none_changes_nothing_and_writes_no_fields(session):
    picture = Image.new("RGB", (20, 10), "red")
    out = session.extras(picture, upscaler_1="None", upscaler_2="Lanczos", upscaler_2_visibility=1.0)
    assert out.image.size == (20, 10) and out.infotext == "" and out.fields == {}


@pytest.mark.parametrize("kwargs, message", [
    (dict(resize_mode=2), "resize_mode"),
    (dict(upscaler_1="Latent"), "latent upscaler"),
    (dict(upscaler_2="Lanczoss"), "Unknown upscaler"),
    (dict(upscaler_2_visibility=1.5), "upscaler_2_visibility"),
    (dict(upscaling_resize=0), "upscaling_resize"),
    (dict(resize_mode=1, upscaling_resize_w=0), "upscaling_resize_w"),
    (dict(max_side_length=-8), "max_side_length"),
])
def test_bad_arguments_are_refused_before_any_work(session, kwargs, message):
    with pytest.raises(ValueError, match=message):
        session.extras(Image.new("RGB", (8, 8)), **kwargs)
    assert not (session.outputs_dir / "extras-images").exists()


def test_a_missing_file_is_named(session, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        session.extras(tmp_path / "nothing.png")
