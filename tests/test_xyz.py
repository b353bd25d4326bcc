"""X/Y/Z plots: A1111's value syntax, the plan made before any model call, the grid run, interruption."""

import warnings

import numpy as np
import pytest
from PIL import Image

from nbdiffuse.io.grid import draw_grid, label_font
from nbdiffuse.jobs.xyz import expand_floats, expand_ints, final_size, plan_xyz, split_values

BASE = dict(prompt="a red circle", negative_prompt="", steps=3, width=64, height=64, seed=5)


@pytest.mark.parametrize("text,expected", [
    ("1, 2, 3", [1, 2, 3]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-5 (+2)", [1, 3, 5]),
    ("10-1 (-3)", [10, 7, 4]),  # A1111: range(start, end + 1, step), so a falling range stops short
    ("1-10 [4]", [1, 4, 7, 10]),
    ("1-3, 7, 9-10", [1, 2, 3, 7, 9, 10]),
])
def test_int_values_follow_a1111_ranges(text, expected):
    assert expand_ints(split_values(text)) == expected


@pytest.mark.parametrize("text,expected", [
    ("0.5, 1.5", [0.5, 1.5]),
    ("1-2", [1.0, 2.0]),
    ("0.5-1.5 (+0.5)", [0.5, 1.0, 1.5]),
    ("1-2 [3]", [1.0, 1.5, 2.0]),
    ("3-9 (+3)", [3.0, 6.0, 9.0]),
])
def test_float_values_follow_a1111_ranges(text, expected):
    assert expand_floats(split_values(text)) == pytest.approx(expected)


def test_quoted_values_keep_their_commas():
    assert split_values('"a, b", c, "d"') == ["a, b", "c", "d"]


def test_plan_counts_images_and_grid_size():
    plan = plan_xyz(("Sampler", "Euler a, DPM++ 2M, DDIM"), ("CFG Scale", "3-9 (+3)"), **BASE, batch_size=2)
    assert len(plan.cells) == 9 and plan.count == 18
    assert plan.cells[(1, 2, 0)]["sampler_name"] == "DPM++ 2M" and plan.cells[(1, 2, 0)]["cfg_scale"] == 9.0
    w, h = plan.grid_sizes[0]
    assert w >= 3 * 64 and h >= 3 * 64


def test_plan_counts_hires_and_size_axes_unlike_a1111():
    plan = plan_xyz(("Size", "64x64, 128x96"), None, **{**BASE, "enable_hr": True, "hr_scale": 2.0})
    assert plan.sizes[(0, 0, 0)] == (128, 128) and plan.sizes[(1, 0, 0)] == (256, 192)
    assert final_size({"width": 512, "height": 512, "enable_hr": True, "hr_resize_x": 1920, "hr_resize_y": 1080}) \
        == (1920, 1080)
    assert final_size({"width": 512, "height": 768, "enable_hr": True, "hr_resize_x": 1024}) == (1024, 1536)


def test_too_large_grid_is_refused_before_any_model_call_with_the_fix(session):
    calls = []
    session.hooks.append(lambda s: calls.append(1))
    with pytest.raises(ValueError, match=r"Nothing was generated.*split by Z"):
        session.xyz(("Seed", "1-10"), ("Steps", "1-10"), ("CFG Scale", "1-3"),
                    **{**BASE, "width": 1024, "height": 1024}, limit_mp=200)
    assert calls == []


def test_unknown_axis_and_bad_values_fail_at_once_naming_them():
    with pytest.raises(ValueError, match=r"Unknown axis type 'Sampelr'.*Did you mean 'Sampler'"):
        plan_xyz(("Sampelr", "Euler"), None, **BASE)
    with pytest.raises(ValueError, match="Axis 'Steps'"):
        plan_xyz(("Steps", "a, b"), None, **BASE)
    with pytest.raises(ValueError, match="Unknown sampler"):
        plan_xyz(("Sampler", "Euler, Eulr"), None, **BASE)
    with pytest.raises(ValueError, match=r"Grid cell \(Steps: 0\)"):
        plan_xyz(("Steps", "0, 1"), None, **BASE)


def test_prompt_search_replace_and_order():
    plan = plan_xyz(("Prompt S/R", "red, blue, <lora:x:0.5> red"), None, **BASE)
    assert [plan.cells[(i, 0, 0)]["prompt"] for i in range(3)] == [
        "a red circle", "a blue circle", "a <lora:x:0.5> red circle"]
    with pytest.raises(ValueError, match="neither the prompt"):
        plan_xyz(("Prompt S/R", "green, blue"), None, **BASE)
    order = plan_xyz(("Prompt order", "red, circle"), None, **BASE)
    assert [order.cells[(i, 0, 0)]["prompt"] for i in range(2)] == ["a red circle", "a circle red"]


def test_costly_axes_iterate_outermost():
    plan = plan_xyz(("Sampler", "Euler, DDIM"), ("Steps", "2, 3"), **BASE)
    assert plan.order[:2] == [(0, 0, 0), (1, 0, 0)]  # x fastest, like A1111
    with pytest.raises(ValueError, match="models folder"):
        plan_xyz(("Checkpoint name", "a, b"), None, **BASE)
    plan = plan_xyz(("Steps", "2, 3"), ("Checkpoint name", "a, b"), checkpoints=["a", "b"], **BASE)
    assert [k[1] for k in plan.order] == [0, 0, 1, 1]  # checkpoint (y) changes least often


def test_grid_cell_equals_plain_txt2img(session):
    grid = session.xyz(("Sampler", "Euler a, DPM++ 2M"), ("CFG Scale", "3, 7"), **BASE)
    assert grid.done == 4 and not grid.interrupted
    cell = grid.cells[1][0][0]
    plain = session.txt2img(**{**BASE, "sampler_name": "DPM++ 2M", "cfg_scale": 3.0})
    assert np.array_equal(np.asarray(cell.images[0]), np.asarray(plain.images[0]))
    assert grid.infotext == grid.cells[0][0][0].infotexts[0]
    assert grid.grid.size == tuple(grid.plan.grid_sizes[0])
    assert grid.paths and grid.paths[0].parent.parent.name == "txt2img-grids"


def test_grid_reuses_prompt_encodings(session):
    session.encoder.cache.clear()
    before = session.encoder.calls
    session.txt2img(**BASE)
    one_job = session.encoder.calls - before
    session.encoder.cache.clear()
    before = session.encoder.calls
    session.xyz(("Seed", "1, 2, 3"), ("CFG Scale", "3, 5"), **BASE)
    assert session.encoder.calls - before == one_job  # six cells, one prompt: encoded once


def test_interrupted_grid_keeps_finished_cells_and_resumes(session):
    def hook(state):
        if len(done) == 2 and state.i == 1:
            session.interrupt()

    done = []
    session.hooks.append(lambda s: done.append(1) if s.i == s.total - 1 else None)
    session.hooks.append(hook)
    grid = session.xyz(("Seed", "1, 2, 3, 4"), None, **BASE)
    assert grid.interrupted and grid.done == 2
    assert grid.cells[0][0][0] is not None and grid.cells[3][0][0] is None
    session.hooks.clear()
    grid.resume()
    assert not grid.interrupted and grid.done == 4


def test_checkpoint_axis_switches_models_and_loads_the_grid_s_model_again(sd1, tmp_path):
    import torch

    from nbdiffuse import Session
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.testing import tiny_sd1

    folder = tmp_path / "webui" / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    other = tiny_sd1()
    with torch.no_grad():
        other.unet.conv_out.bias += 0.5
    save_checkpoint(tiny_sd1(), folder / "a.safetensors")
    save_checkpoint(other, folder / "b.safetensors")
    s = Session(outputs_dir=None, progress=False, models_dir=tmp_path / "webui")
    s.load(sd1)
    grid = s.xyz(("Checkpoint name", "a.safetensors, b.safetensors"), ("Seed", "1, 2"), show=False, **BASE)
    assert grid.done == 4 and s.model is sd1  # the model the grid started with, loaded again
    a, b = (np.asarray(grid.cells[i][0][0].images[0]) for i in (0, 1))
    assert not np.array_equal(a, b)
    assert grid.cells[1][0][0].infotexts[0] != grid.cells[0][0][0].infotexts[0]  # each names its model
    s.load("b.safetensors")
    assert np.array_equal(np.asarray(s.txt2img(**{**BASE, "seed": 1}).images[0]), b)


def test_cjk_labels_render_or_warn_but_never_crash():
    img = Image.new("RGB", (32, 32), (255, 0, 0))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        grid = draw_grid([[img, None]], ["Prompt S/R: 红色的圆", "x"], ["行 1"])
    assert grid.size[0] >= 64
    label_font("plain ascii", 12)


@pytest.mark.parametrize("text", ["1-2 (+0)", "5-1 (-0)"])
def test_a_zero_step_is_refused_naming_the_value(text):
    with pytest.raises(ValueError, match=r"step of 0"):
        expand_ints([text])
    with pytest.raises(ValueError, match=r"step of 0"):
        expand_floats([text.replace("1", "1.0")])


def test_huge_ranges_are_counted_before_they_are_expanded():
    # Expanding any of these would take minutes and gigabytes: the refusal comes from the count alone.
    for text in ["1-100000000 (+1)", "1-10 [100000000]"]:
        with pytest.raises(ValueError, match=r"expands to 100,000,000 values"):
            expand_ints([text])
        with pytest.raises(ValueError, match=r"expands to"):
            expand_floats([text])
    # a grid of many small axes is refused from the counts, before a million cells are built
    with pytest.raises(ValueError, match=r"1,000,000 cells"):
        plan_xyz(("Seed", "1-10000"), ("CFG Scale", "1-100"), **BASE)
    with pytest.raises(ValueError, match=r"at least .* MP"):
        plan_xyz(("Seed", "1-5000"), None, **{**BASE, "width": 512, "height": 512})


@pytest.mark.parametrize("spec", ["Seed", ("Seed",), ("Seed", "1", "2"), (3, "1, 2")])
def test_a_malformed_axis_gets_a_message_not_an_unpacking_error(spec):
    with pytest.raises(ValueError, match=r"An axis (is a pair|type is a name)"):
        plan_xyz(spec, None, **BASE)


def test_time_estimate_counts_each_cells_calls_sizes_and_hires():
    from nbdiffuse.jobs.xyz import estimate_seconds

    cell = dict(prompt="a", steps=10, width=64, height=64, sampler_name="Euler")
    low, mid, high = estimate_seconds([cell], [1e-6, 3e-6, 2e-6], 0.0)
    assert (low, mid, high) == pytest.approx((10 * 4096e-6, 10 * 4096 * 2e-6, 10 * 4096 * 3e-6))
    second_order = estimate_seconds([{**cell, "sampler_name": "Heun"}], [1e-6], 0.0)[1]
    assert second_order == pytest.approx(2 * 10 * 4096e-6)
    hires = estimate_seconds([{**cell, "enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 5}], [1e-6], 1e-7)
    assert hires[1] == pytest.approx(10 * 4096e-6 + 5 * 4 * 4096e-6 + 4 * 4096e-7)  # decode at the hires size
    batch = estimate_seconds([{**cell, "batch_size": 2, "n_iter": 3}], [1e-6], 0.0)[1]
    assert batch == pytest.approx(6 * 10 * 4096e-6)


def test_time_estimate_leaves_out_the_warm_up_step_and_gives_a_range(session):
    import time

    def slow_first_step(state):  # a first step 3 s slower than the rest, as a cold GPU or a busy machine gives
        if state.i == 0:
            time.sleep(3.0)

    session.hooks.append(slow_first_step)
    plan = session.plan_xyz(("Seed", "1"), None, **{**BASE, "steps": 3, "sampler_name": "Euler"})
    low, high = plan.seconds_range
    assert low <= plan.seconds_estimate <= high
    # timing the whole probe (the old way) says at least 3 steps x (3 s / 2 calls) = 4.5 s
    assert plan.seconds_estimate < 3.0
    assert "estimated time about" in plan._repr_html_()


def test_a_random_seed_is_drawn_once_for_the_whole_grid_unless_kept_at_minus_one():
    """A1111's X/Y/Z plot calls modules.processing.fix_seed(p) before the cells ("Keep -1 for seeds" off): every
    cell gets the same seed and variation seed, so cells differ only by their axes."""
    plan = plan_xyz(x=("Steps", "1, 2, 3"), y=("CFG Scale", "3, 7"), prompt="a", width=64, height=64)
    seeds = {(c["seed"], c["subseed"]) for c in plan.cells.values()}
    assert len(seeds) == 1 and -1 not in next(iter(seeds))
    kept = plan_xyz(x=("Steps", "1, 2, 3"), prompt="a", width=64, height=64, no_fixed_seeds=True)
    assert all(c.get("seed", -1) == -1 and c.get("subseed", -1) == -1 for c in kept.cells.values())
    given = plan_xyz(x=("Steps", "1, 2"), prompt="a", width=64, height=64, seed=5, subseed=9)
    assert {(c["seed"], c["subseed"]) for c in given.cells.values()} == {(5, 9)}
