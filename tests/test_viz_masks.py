"""viz.show_mask: each panel shows the array the inpainting job used, and the crop region is drawn where it is."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from nbdiffuse import masks
from nbdiffuse.viz import show_mask


def picture(size=(96, 80)) -> Image.Image:
    image = Image.new("RGB", size, (235, 235, 235))
    ImageDraw.Draw(image).rectangle((10, 10, 60, 50), fill=(200, 30, 30))
    return image


def shown(ax) -> np.ndarray:
    [image] = ax.images
    return np.asarray(image.get_array())


def test_each_panel_shows_the_jobs_own_mask_arrays(session):
    init = picture()
    result = session.img2img(init_images=[init], mask=masks.ellipse(init.size, (40, 30, 70, 50)), steps=2,
                             width=64, height=64, seed=1, inpaint_full_res=True, inpaint_full_res_padding=8,
                             mask_blur=3)
    prep = result.inpaint[0]
    fig = show_mask(result)
    axes = fig.axes[:6]
    assert np.array_equal(shown(axes[0]), np.asarray(prep.binary))
    assert np.array_equal(shown(axes[1]), np.asarray(prep.blurred)) and "Mask blur 3" in axes[1].get_title()
    assert np.array_equal(shown(axes[2]), np.asarray(result.images[0]))
    assert np.array_equal(shown(axes[3]), np.asarray(prep.mask)) and "64x64" in axes[3].get_title()
    assert np.array_equal(shown(axes[4]), prep.latent_mask) and shown(axes[4]).shape == (8, 8)
    assert np.array_equal(shown(axes[5]), np.asarray(prep.image))
    # the crop region as a rectangle on the picture, around every pixel the blurred mask reaches
    [rect] = axes[2].patches
    x1, y1, x2, y2 = prep.crop_region
    assert rect.get_xy() == (x1 - 0.5, y1 - 0.5) and (rect.get_width(), rect.get_height()) == (x2 - x1, y2 - y1)
    ys, xs = np.nonzero(np.asarray(prep.blurred))
    left, right = rect.get_x(), rect.get_x() + rect.get_width()
    top, bottom = rect.get_y(), rect.get_y() + rect.get_height()
    assert left < xs.min() and xs.max() < right and top < ys.min() and ys.max() < bottom
    assert str(prep.crop_region) in axes[2].get_title()
    fig.savefig(io.BytesIO(), format="png")  # it draws


def test_whole_picture_has_no_crop_region(session):
    init = picture((64, 64))
    result = session.img2img(init_images=[init], mask=masks.rectangle((64, 64), (16, 16, 40, 40)), steps=2,
                             width=64, height=64, seed=1, inpaint_full_res=False)
    fig = show_mask(result)
    assert not fig.axes[2].patches and "Whole picture" in fig.axes[2].get_title()
    assert np.array_equal(shown(fig.axes[4]), result.inpaint[0].latent_mask)


def test_a_prepared_mask_shows_its_overlay_and_a_blank_mask_says_so():
    init = picture()
    prep = masks.prepare(init, masks.rectangle(init.size, (30, 20, 50, 40)), width=64, height=64,
                         inpaint_full_res=True, inpaint_full_res_padding=4)
    fig = show_mask(prep)
    assert np.array_equal(shown(fig.axes[2]), np.asarray(prep.overlay))  # the original with its hole
    blank = masks.prepare(init, Image.new("L", init.size), width=64, height=64, inpaint_full_res=True)
    fig = show_mask(blank)
    assert blank.comment in fig.get_suptitle()
    assert not fig.axes[3].images and not fig.axes[4].images and fig.axes[3].texts[0].get_text() == "none"


def test_a_result_without_masks_is_refused_with_the_fix(session):
    result = session.txt2img(prompt="a red circle", steps=1, width=64, height=64, seed=1)
    with pytest.raises(ValueError, match=r"mask=\.\.\."):
        show_mask(result)
    init = picture((64, 64))
    inpainted = session.img2img(init_images=[init], mask=masks.rectangle((64, 64), (16, 16, 40, 40)), steps=1,
                                width=64, height=64, seed=1)
    with pytest.raises(IndexError, match="1 init image"):
        show_mask(inpainted, i=1)
