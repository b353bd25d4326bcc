"""img2img init images in every PIL mode a user may hand in, and inputs that are not images at all."""

import io

import numpy as np
import pytest
from PIL import Image

from nbdiffuse.jobs.img2img import prepare_init_images, to_rgb
from nbdiffuse.jobs.params import GenerationParams

P = GenerationParams.from_kwargs(prompt="x", width=64, height=64)
GREY16 = np.full((8, 8), 32896, np.uint16)  # 50 % grey in 16 bits (= 128 in 8 bits)


def _png_roundtrip(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


@pytest.mark.parametrize("make", [
    lambda: _png_roundtrip(Image.fromarray(GREY16)),  # a 16-bit PNG opens as I;16
    lambda: Image.fromarray(GREY16.astype(np.int32)),  # mode I holding 16-bit values
    lambda: Image.new("I", (8, 8), 128),  # mode I holding 8-bit values
    lambda: Image.fromarray(np.full((8, 8), 128 / 255, np.float32)),  # mode F in 0..1
    lambda: Image.fromarray(np.full((8, 8), 128.0, np.float32)),  # mode F in 0..255
    lambda: Image.new("L", (8, 8), 128),
    lambda: Image.new("CMYK", (8, 8), (127, 127, 127, 0)),
    lambda: Image.new("LA", (8, 8), (128, 255)),
    lambda: Image.new("RGBA", (8, 8), (128, 128, 128, 255)),
    lambda: Image.new("YCbCr", (8, 8), (128, 128, 128)),
])
def test_mid_grey_stays_mid_grey_in_every_mode(make):
    image = make()
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (8, 8, 3)
    assert abs(rgb.mean() - 128) <= 1, (image.mode, rgb.mean())


def test_transparency_is_composited_over_white_as_a1111_does():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert np.asarray(to_rgb(p)).min() == 255
    assert np.asarray(to_rgb(Image.new("LA", (8, 8), (0, 0)))).min() == 255
    half = np.asarray(to_rgb(Image.new("RGBA", (8, 8), (0, 0, 0, 128))))
    assert 120 <= half.mean() <= 130


def test_a_16_bit_png_file_path_loads_as_the_picture_it_is(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(GREY16).save(path)
    _, images = prepare_init_images(P, str(path))
    assert abs(np.asarray(images[0]).mean() - 128) <= 1


@pytest.mark.parametrize("bad,message", [
    (3, r"init_images: expected a PIL image.*got int"),
    ({"a": 1}, r"init_images: expected a PIL image.*got dict"),
    ([3], r"init_images: expected PIL images or image file paths, got int"),
])
def test_values_that_are_not_images_are_refused_naming_the_field(bad, message):
    with pytest.raises(TypeError, match=message):
        prepare_init_images(P, bad)


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init_images: '.*nope.png' is not an image file"):
        prepare_init_images(P, str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read '.*bad.png' as an image"):
        prepare_init_images(P, bad)


def test_a_tiny_init_image_with_latent_resize_is_refused_before_the_vae():
    p3 = P.replace(resize_mode=3)
    with pytest.raises(ValueError, match=r"an image of 1x1 is too small for resize_mode=3"):
        prepare_init_images(p3, Image.new("RGB", (1, 1)))
    prepare_init_images(P, Image.new("RGB", (1, 1)))  # the other modes resize it to the job size first
