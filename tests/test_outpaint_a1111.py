"""Outpainting geometry, A1111's tile grids and mk2's noise against A1111's own scripts
(tests/fixtures/a1111/outpaint_a1111.npz/.json, made by make_soft_inpaint.py: A1111's poor_mans_outpainting.py and
outpainting_mk_2.py run with a stand-in process_images that records what each script hands it and returns the init
image inverted; see the README there).
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from nbdiffuse.io.grid import combine_grid, split_grid
from nbdiffuse.jobs.outpaint import DIRECTIONS, expansion, matched_noise, mk2_step, poor_mans_canvas, poor_mans_tiles

HERE = Path(__file__).parent / "fixtures" / "a1111"
FIXTURE = np.load(HERE / "outpaint_a1111.npz")
META = json.loads((HERE / "outpaint_a1111.json").read_text())


def png(key: str) -> Image.Image:
    return Image.open(io.BytesIO(FIXTURE[key].tobytes()))


def same(image: Image.Image, key: str) -> None:
    expected = png(key)
    assert image.size == expected.size and image.mode == expected.mode, key
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected), err_msg=key)


@pytest.mark.parametrize("case", META["poor"], ids=lambda c: c["name"])
def test_poor_mans_tiles_masks_and_result_equal_a1111(case):
    name, pixels, blur = case["name"], case["pixels"], case["mask_blur"]
    stored = f"poor/{name}/init" in FIXTURE.files
    init = png(f"poor/{name}/init") if stored else Image.new("RGB", tuple(case["size"]))
    e = expansion(init.size, pixels, case["direction"])
    canvas, mask, latent = poor_mans_canvas(init, e, blur)
    tile_w, tile_h = case["tile"]
    grids = [split_grid(im, tile_w, tile_h, pixels) for im in (canvas, mask, latent)]
    kept = poor_mans_tiles(grids[0], e)
    calls = case["calls"]
    assert len(kept) == len(calls)
    for k, ((r, c), call) in enumerate(zip(kept, calls)):
        tile, tile_mask, tile_latent = (g.tiles[r][2][c][2] for g in grids)
        assert (tile.size, call["width"], call["height"]) == (tuple(call["init_size"]), tile_w, tile_h)
        assert ImageOps.invert(tile_mask).getbbox() == (tuple(call["mask_bbox"]) if call["mask_bbox"] else None)
        assert ImageOps.invert(tile_latent).getbbox() == (tuple(call["latent_bbox"]) if call["latent_bbox"] else None)
        assert call["mask_blur"] == 2 * blur and call["inpainting_fill"] == case["fill"]
        assert call["inpaint_full_res"] is False and call["seed"] == case["seed"] + k  # A1111: seed + 1 per tile
        if stored:
            same(tile, f"poor/{name}/{k}/init")
            same(tile_mask, f"poor/{name}/{k}/mask")
            same(tile_latent, f"poor/{name}/{k}/latent_mask")
        grids[0].tiles[r][2][c][2] = ImageOps.invert(tile)  # what the stand-in process_images returned
    assert e.size == tuple(case["result_size"])
    if stored:
        same(combine_grid(grids[0]), f"poor/{name}/result")


def test_poor_mans_worked_example():
    e = expansion((500, 300), 100)
    assert (e.size, e.left, e.right, e.up, e.down) == ((704, 512), 102, 102, 106, 106)


MK2 = [c for c in META["mk2"] if "error" not in c]


@pytest.mark.parametrize("case", MK2, ids=lambda c: c["name"])
def test_mk2_steps_equal_a1111(case):
    name, direction = case["name"], case["direction"]
    picture = png(f"mk2/{name}/init")
    e = expansion(picture.size, case["pixels"], direction)
    blur_x = case["mask_blur"] if e.left or e.right else 0
    blur_y = case["mask_blur"] if e.up or e.down else 0
    sides = [side for side in DIRECTIONS if getattr(e, side) > 0]
    assert len(sides) == len(case["calls"])
    for k, (side, call) in enumerate(zip(sides, case["calls"])):
        step = mk2_step(picture.size, side, getattr(e, side), tuple(case["job"]), blur_x, blur_y)
        noised = matched_noise(np.asarray(step.canvas(picture)) / 255.0, np.asarray(step.mask()) / 255.0,
                               case["noise_q"], case["color_variation"])
        canvas = Image.fromarray(np.clip(noised * 255.0, 0.0, 255.0).astype(np.uint8), "RGB")
        init = canvas.crop(step.crop)
        same(init, f"mk2/{name}/{k}/init")  # the canvas with the noise fill, as the job starts from it
        assert step.job_size == (call["width"], call["height"])
        same(step.mask().crop(step.crop), f"mk2/{name}/{k}/mask")
        same(step.latent_mask(), f"mk2/{name}/{k}/latent_mask")
        assert (call["mask_blur_x"], call["mask_blur_y"]) == (4 * blur_x, 4 * blur_y)
        assert call["inpainting_fill"] == 1 and call["inpaint_full_res"] is False and call["seed"] == case["seed"]
        canvas.paste(ImageOps.invert(init), step.paste_at)
        picture = canvas.crop((0, 0, *step.result_size))
    same(picture, f"mk2/{name}/result")


def test_mk2_refuses_a_step_longer_than_the_job_where_a1111_fails():
    case = next(c for c in META["mk2"] if c["name"] == "too_far")
    assert "y1 must be greater than or equal to y0" in case["error"]  # A1111's own failure, deep in PIL
    e = expansion(tuple(case["size"]), case["pixels"], case["direction"])
    mk2_step(tuple(case["size"]), "left", e.left, tuple(case["job"]), case["mask_blur"], case["mask_blur"])
    grown = (case["size"][0] + e.left, case["size"][1])
    with pytest.raises(ValueError, match="height.*64"):
        mk2_step(grown, "down", e.down, tuple(case["job"]), case["mask_blur"], case["mask_blur"])


@pytest.mark.parametrize("k", range(len(META["noise"])))
def test_matched_noise_equals_a1111(k):
    case = META["noise"][k]
    out = matched_noise(FIXTURE[f"noise/{k}/image"], FIXTURE[f"noise/{k}/mask"], case["noise_q"],
                        case["color_variation"])
    # exactly: numpy 2's FFT and scikit-image 0.26 give here what numpy 1.26 and scikit-image 0.21 gave A1111
    np.testing.assert_array_equal(out, FIXTURE[f"noise/{k}/out"])


@pytest.mark.parametrize("case", META["grids"], ids=lambda c: "{}x{}-{}".format(*c["size"], c["overlap"]))
def test_split_grid_positions_equal_a1111(case):
    grid = split_grid(Image.new("RGB", tuple(case["size"])), *case["tile"], case["overlap"])
    assert [[y, h, [[x, w] for x, w, _ in row]] for y, h, row in grid.tiles] == case["rows"]


def test_combine_grid_equals_a1111():
    grid = split_grid(png("grid/src"), 64, 48, 16)
    for r, (_, _, row) in enumerate(grid.tiles):
        for c, tile in enumerate(row):
            tile[2] = ImageOps.invert(tile[2]) if (r + c) % 2 else tile[2].rotate(180)
    same(combine_grid(grid), "grid/combined")


def test_split_grid_refuses_an_overlap_as_wide_as_a_tile():
    with pytest.raises(ValueError, match="overlap"):
        split_grid(Image.new("RGB", (100, 100)), 64, 64, 64)


# ------------------------------------------------------------------ the jobs against the scripts, end to end


@pytest.fixture
def recorded(monkeypatch):
    """The stand-in the fixture's process_images was: record each img2img job, return its init images inverted."""
    import nbdiffuse.jobs.img2img as img2img_module
    from nbdiffuse.jobs.result import Result

    calls = []

    def fake(bundle, p, encoder, init_images, *, mask=None, latent_mask=None, **kw):
        calls.append(dict(p=p, init=list(init_images), mask=mask, latent_mask=latent_mask))
        images = [ImageOps.invert(im.convert("RGB")).resize((p.width, p.height)) for im in init_images]
        seeds = [p.seed + i for i in range(len(images))]
        return Result(images, [f"seed {p.seed}"] * len(images), seeds, seeds, torch.empty(0), p)
        yield  # a job generator

    monkeypatch.setattr(img2img_module, "img2img_steps", fake)
    return calls


def _run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("case", [c for c in META["poor"] if f"poor/{c['name']}/init" in FIXTURE.files],
                         ids=lambda c: c["name"])
def test_poor_mans_job_runs_the_tiles_a1111_runs(case, recorded):
    from nbdiffuse.jobs.outpaint import poor_mans_outpainting_steps
    from nbdiffuse.jobs.params import GenerationParams

    name = case["name"]
    p = GenerationParams(width=case["tile"][0], height=case["tile"][1], seed=case["seed"], n_iter=3, batch_size=2)
    result = _run(poor_mans_outpainting_steps(None, p, None, png(f"poor/{name}/init"), pixels=case["pixels"],
                                              mask_blur=case["mask_blur"], inpainting_fill=case["fill"],
                                              direction=case["direction"]))
    assert len(recorded) == len(case["calls"])
    for k, (ours, theirs) in enumerate(zip(recorded, case["calls"])):
        q = ours["p"]
        assert (q.seed, q.width, q.height, q.batch_size, q.n_iter) == (theirs["seed"], theirs["width"],
                                                                      theirs["height"], 1, 1)
        assert (q.mask_blur, q.inpainting_fill, q.inpaint_full_res) == (theirs["mask_blur"],
                                                                         theirs["inpainting_fill"], False)
        same(ours["init"][0], f"poor/{name}/{k}/init")
        same(ours["mask"], f"poor/{name}/{k}/mask")
        same(ours["latent_mask"], f"poor/{name}/{k}/latent_mask")
    same(result.image, f"poor/{name}/result")
    assert (result.seeds, result.infotexts) == ([case["result_seed"]], [case["result_info"]])


@pytest.mark.parametrize("case", MK2, ids=lambda c: c["name"])
def test_mk2_job_runs_the_steps_a1111_runs(case, recorded):
    from nbdiffuse.jobs.outpaint import outpainting_mk2_steps
    from nbdiffuse.jobs.params import GenerationParams

    name = case["name"]
    p = GenerationParams(width=case["job"][0], height=case["job"][1], seed=case["seed"])
    result = _run(outpainting_mk2_steps(None, p, None, png(f"mk2/{name}/init"), pixels=case["pixels"],
                                        mask_blur=case["mask_blur"], direction=case["direction"],
                                        noise_q=case["noise_q"], color_variation=case["color_variation"]))
    assert len(recorded) == len(case["calls"])
    for k, (ours, theirs) in enumerate(zip(recorded, case["calls"])):
        q = ours["p"]
        assert (q.seed, q.width, q.height) == (theirs["seed"], theirs["width"], theirs["height"])
        assert (q.mask_blur_x, q.mask_blur_y, q.inpainting_fill, q.inpaint_full_res) == (
            theirs["mask_blur_x"], theirs["mask_blur_y"], theirs["inpainting_fill"], False)
        same(ours["init"][0], f"mk2/{name}/{k}/init")
        same(ours["mask"], f"mk2/{name}/{k}/mask")
        same(ours["latent_mask"], f"mk2/{name}/{k}/latent_mask")
    same(result.image, f"mk2/{name}/result")
    assert (result.seeds, result.infotexts) == ([case["result_seed"]], [case["result_info"]])


def test_mk2_job_refuses_before_any_job_where_a1111_fails(recorded):
    from nbdiffuse.jobs.outpaint import outpainting_mk2_steps
    from nbdiffuse.jobs.params import GenerationParams

    case = next(c for c in META["mk2"] if c["name"] == "too_far")
    p = GenerationParams(width=case["job"][0], height=case["job"][1], seed=case["seed"])
    with pytest.raises(ValueError, match="job's height is 64"):
        _run(outpainting_mk2_steps(None, p, None, Image.new("RGB", tuple(case["size"])), pixels=case["pixels"],
                                   mask_blur=case["mask_blur"], direction=case["direction"]))
    assert recorded == [] and len(case["calls"]) == 1  # A1111 ran (and wasted) its left step first


def test_mk2_job_grows_a_batch_side_by_side_and_repeats_for_n_iter(recorded):
    from nbdiffuse.jobs.outpaint import outpainting_mk2_steps
    from nbdiffuse.jobs.params import GenerationParams

    case = MK2[0]
    p = GenerationParams(width=case["job"][0], height=case["job"][1], seed=case["seed"], batch_size=2, n_iter=2)
    result = _run(outpainting_mk2_steps(None, p, None, png(f"mk2/{case['name']}/init"), pixels=case["pixels"],
                                        mask_blur=case["mask_blur"], direction=case["direction"],
                                        noise_q=case["noise_q"], color_variation=case["color_variation"]))
    # A1111: each direction is one job of batch_size pictures, the whole run repeated n_iter times, p.seed kept
    assert len(recorded) == 2 * len(case["calls"])
    assert all(len(c["init"]) == 2 and c["p"].batch_size == 2 and c["p"].seed == case["seed"] for c in recorded)
    assert len(result.images) == 4 and result.seeds == [case["seed"]] * 4
    for image in result.images:
        same(image, f"mk2/{case['name']}/result")
