"""nbdiffuse.masks: the mask helpers, the inputs a mask may be, and the errors a user can cause.

How the pipeline matches A1111 is tests/test_masks_a1111.py (A1111's own code as the oracle).
"""

import numpy as np
import pytest
from PIL import Image

from nbdiffuse import masks


def test_rectangle_covers_the_box_with_right_and_bottom_edges_excluded():
    m = np.asarray(masks.rectangle((20, 10), (2, 3, 7, 9)))
    assert m.shape == (10, 20) and set(np.unique(m)) == {0, 255}
    assert (m[3:9, 2:7] == 255).all() and m.sum() == 255 * 5 * 6


def test_rectangle_reaching_outside_is_clipped():
    assert masks.rectangle((20, 10), (-5, -5, 4, 50)).getbbox() == (0, 0, 4, 10)


def test_ellipse_is_inscribed_in_its_box_and_symmetric():
    m = np.asarray(masks.ellipse((40, 30), (4, 6, 36, 26)))
    assert masks.ellipse((40, 30), (4, 6, 36, 26)).getbbox() == (4, 6, 36, 26)
    assert m[16, 20] == 255 and m[6, 4] == 0 and m[25, 35] == 0  # centre in, corners out
    inner = m[6:26, 4:36]
    assert (inner == inner[::-1]).all() and (inner == inner[:, ::-1]).all()


@pytest.mark.parametrize("helper", [masks.rectangle, masks.ellipse])
def test_shape_helpers_refuse_empty_boxes_and_bad_sizes(helper):
    with pytest.raises(ValueError, match=r"box=\(5, 5, 5, 9\): x2 must be greater than x1"):
        helper((10, 10), (5, 5, 5, 9))
    with pytest.raises(TypeError, match="give \\(x1, y1, x2, y2\\)"):
        helper((10, 10), (1, 2, 3))
    with pytest.raises(ValueError, match="width and height must be positive"):
        helper((0, 10), (1, 1, 2, 2))


def test_from_alpha_repaints_the_transparent_pixels_by_default_and_the_opaque_on_request():
    picture = Image.new("RGBA", (16, 8), (10, 20, 30, 255))
    picture.paste((0, 0, 0, 0), (2, 2, 6, 5))
    picture.putpixel((10, 4), (0, 0, 0, 100))  # soft alpha stays soft
    m = masks.from_alpha(picture)
    assert m.mode == "L" and m.getbbox() == (2, 2, 11, 5) and m.getpixel((10, 4)) == 155
    assert masks.from_alpha(picture, repaint="opaque").getpixel((0, 0)) == 255
    assert masks.from_alpha(picture, repaint="opaque").getpixel((3, 3)) == 0


def test_from_alpha_refuses_an_opaque_image_and_says_what_to_give():
    with pytest.raises(ValueError, match="this RGB image has no transparency; give an RGBA/LA image"):
        masks.from_alpha(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match="repaint='holes': must be 'transparent' or 'opaque'"):
        masks.from_alpha(Image.new("RGBA", (4, 4)), repaint="holes")


def test_as_mask_reads_bool_float_and_uint8_arrays():
    b = np.zeros((6, 8), bool)
    b[1:3, 2:5] = True
    assert masks.as_mask(b).getbbox() == (2, 1, 5, 3) and masks.as_mask(b).getpixel((2, 1)) == 255
    f = np.full((6, 8), 0.5)
    assert masks.as_mask(f).getpixel((0, 0)) == 128  # 0.5 * 255 rounded
    u = np.arange(48, dtype=np.uint8).reshape(6, 8)
    np.testing.assert_array_equal(np.asarray(masks.as_mask(u)), u)  # an L mask is taken as it is, not rounded
    np.testing.assert_array_equal(np.asarray(masks.as_mask(u[:, :, None])), u)


def test_as_mask_reads_files_and_keeps_an_rgba_masks_alpha(tmp_path):
    stroke = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    stroke.putpixel((3, 3), (255, 255, 255, 200))
    stroke.save(tmp_path / "m.png")
    assert masks.as_mask(tmp_path / "m.png").getpixel((3, 3)) == 255  # alpha > 128 -> 255
    assert masks.as_mask(str(tmp_path / "m.png"), round=False).getpixel((3, 3)) == 200


def test_as_mask_errors_name_the_input_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="mask is 8x6 but the picture is 16x12: give a mask of the picture's size"):
        masks.as_mask(np.zeros((6, 8), bool), (16, 12))
    with pytest.raises(ValueError, match="holds NaN"):
        masks.as_mask(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="values in 0..1 .* got 0..2"):
        masks.as_mask(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="0..255 .* got -1..3"):
        masks.as_mask(np.array([[-1, 3]]))
    with pytest.raises(ValueError, match=r"must be \(height, width\)"):
        masks.as_mask(np.zeros((2, 3, 4, 5)))
    with pytest.raises(TypeError, match="expected a PIL image, a numpy array or an image file path, got list"):
        masks.as_mask([[0, 1]])
    with pytest.raises(FileNotFoundError, match="no such file"):
        masks.as_mask(tmp_path / "missing.png")
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(ValueError, match="is not an image Pillow can read"):
        masks.as_mask(tmp_path / "x.png")
    with pytest.raises(ValueError, match="16/32-bit"):
        masks.as_mask(Image.new("I;16", (4, 4)))


def test_blur_kernel_sizes_follow_a1111s_formula():
    # A single white pixel spreads over the kernel: 2 * int(2.5 * sigma + 0.5) + 1 pixels per axis at most.
    dot = Image.new("L", (400, 9), 0)
    dot.putpixel((200, 4), 255)
    for sigma, k in ((1, 7), (2, 11), (4, 21), (8, 41), (16, 81)):
        spread = masks.blur(dot, sigma, 0).getbbox()
        assert spread[2] - spread[0] <= k and spread[1:4:2] == (4, 5)


def test_blur_of_zero_changes_nothing_and_y_defaults_to_x():
    m = masks.rectangle((32, 32), (8, 8, 24, 24))
    assert masks.blur(m, 0) .tobytes() == m.tobytes()
    assert masks.blur(m, 3).tobytes() == masks.blur(m, 3, 3).tobytes() != masks.blur(m, 3, 0).tobytes()


def test_crop_region_of_a_blank_mask_is_none_and_pad_zero_is_the_bbox():
    assert masks.crop_region(Image.new("L", (8, 8))) is None
    assert masks.crop_region(masks.rectangle((64, 64), (10, 12, 20, 30)), 0) == (10, 12, 20, 30)
    assert masks.crop_region(np.asarray(masks.rectangle((64, 64), (10, 12, 20, 30))), 50) == (0, 0, 64, 64)


def test_latent_mask_rounds_half_down_only_when_asked():
    m = Image.new("L", (16, 16), 128)  # 128 / 255 = 0.502 -> rounds to 1; 127 -> 0
    assert masks.latent_mask(m, (2, 2)).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert masks.latent_mask(Image.new("L", (16, 16), 127), (2, 2)).sum() == 0
    soft = masks.latent_mask(m, (2, 2), round=False)
    assert soft.dtype == np.float32 and np.allclose(soft, 128 / 255)


def test_fill_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="the picture is 8x8 but the mask 4x4"):
        masks.fill(Image.new("RGB", (8, 8)), Image.new("L", (4, 4)))


def test_apply_overlay_keeps_the_original_outside_the_mask_exactly():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    p = masks.prepare(original, masks.ellipse((64, 48), (20, 10, 44, 38)), width=64, height=64,
                      inpaint_full_res_padding=4)
    result = masks.apply_overlay(Image.new("RGB", (64, 64), (0, 255, 0)), p.paste_to, p.overlay)
    outside = np.asarray(p.blurred) == 0
    np.testing.assert_array_equal(np.asarray(result)[outside], np.asarray(original)[outside])
    assert (np.asarray(result)[np.asarray(p.blurred) == 255] == (0, 255, 0)).all()
    assert masks.apply_overlay(original, None, None) is original


def test_prepare_blank_mask_in_only_masked_falls_back_to_img2img_with_a1111s_comment():
    p = masks.prepare(Image.new("RGB", (32, 32), "red"), np.zeros((32, 32), bool), width=64, height=64)
    assert p.comment == 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'
    assert p.mask is None and p.latent_mask is None and p.overlay is None and p.image.size == (64, 64)
    whole = masks.prepare(Image.new("RGB", (32, 32)), np.zeros((32, 32), bool), width=64, height=64,
                          inpaint_full_res=False)
    assert whole.comment is None and whole.latent_mask.sum() == 0  # A1111 runs; nothing is repainted


def test_prepare_whole_picture_resizes_a_mask_of_another_size_but_only_masked_refuses_it():
    picture, small = Image.new("RGB", (64, 48)), masks.rectangle((32, 24), (8, 8, 16, 16))
    assert masks.prepare(picture, small, width=64, height=48, inpaint_full_res=False).mask.size == (64, 48)
    with pytest.raises(ValueError, match=r"mask is 32x24 but the init image is 64x48: 'Only masked' .* or use 'Whole "
                                         r"picture' \(inpaint_full_res=False\), where the mask is resized"):
        masks.prepare(picture, small, width=64, height=48)


def test_prepare_checks_its_arguments_before_working():
    picture, m = Image.new("RGB", (16, 16)), masks.rectangle((16, 16), (4, 4, 8, 8))
    with pytest.raises(ValueError, match="inpainting_fill=4: must be 0 \\(fill\\), 1 \\(original\\)"):
        masks.prepare(picture, m, width=16, height=16, inpainting_fill=4)
    with pytest.raises(ValueError, match="resize_mode=5"):
        masks.prepare(picture, m, width=16, height=16, resize_mode=5)
    with pytest.raises(ValueError, match="padding is in pixels"):
        masks.prepare(picture, m, width=16, height=16, inpaint_full_res_padding=-1)
    with pytest.raises(TypeError, match="init_image: expected a PIL image, got ndarray"):
        masks.prepare(np.zeros((16, 16, 3)), m, width=16, height=16)
    # A1111 crashes here (masking.fill on a picture and a mask of different sizes); we say why first.
    with pytest.raises(ValueError, match=r"resize_mode=3 .* needs an init image of the job size 8x8 \(it is 16x16\)"):
        masks.prepare(picture, m, width=8, height=8, inpaint_full_res=False, resize_mode=3)


def test_prepare_flattens_transparency_onto_white():
    picture = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    p = masks.prepare(picture, masks.rectangle((16, 16), (0, 0, 2, 2)), width=16, height=16,
                      inpaint_full_res=False, inpainting_fill=1)
    assert p.image.getpixel((8, 8)) == (255, 255, 255) and p.overlay.getpixel((8, 8)) == (255, 255, 255, 255)
