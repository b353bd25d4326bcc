"""SD upscale (Session.sd_upscale, A1111's scripts/sd_upscale.py) on the toy model: the tiles each img2img job gets,
their seeds, the joined picture's size and infotext, n_iter, an interrupt keeping the finished tiles, and errors
before any model work. The tile positions of INPAINT-UPSCALE.md §3 are checked on tile_plan (split_grid itself is
compared with A1111's on fixtures in tests/test_outpaint_a1111.py)."""

import numpy as np
import pytest
from PIL import Image

import nbdiffuse.jobs.img2img as img2img_module
from nbdiffuse import infotext
from nbdiffuse.io.infotext import CORE_ORDER
from nbdiffuse.jobs.sd_upscale import tile_plan, tile_seeds, upscaled_size

BASE = dict(prompt="a red circle on a white background", steps=2, denoising_strength=0.5)


@pytest.fixture
def jobs(monkeypatch):
    """Every img2img job SD upscale runs: its parameters, init tiles and Result."""
    seen = []
    real = img2img_module.img2img_steps

    def spy(bundle, p, encoder, init_images, **kw):
        job = dict(p=p, init=list(init_images), kw=kw)
        seen.append(job)
        job["result"] = yield from real(bundle, p, encoder, init_images, **kw)
        return job["result"]

    monkeypatch.setattr(img2img_module, "img2img_steps", spy)
    return seen


@pytest.mark.parametrize("size, tile, cols, rows, xs, ys", [
    # INPAINT-UPSCALE.md §3's worked tile positions (transcribed from A1111's split_grid arithmetic, overlap 64)
    ((1024, 1024), (512, 512), 3, 3, [0, 256, 512], [0, 256, 512]),
    ((1536, 1024), (512, 512), 4, 3, [0, 341, 682, 1024], [0, 256, 512]),
    ((2048, 2048), (512, 512), 5, 5, [0, 384, 768, 1152, 1536], [0, 384, 768, 1152, 1536]),
    ((1024, 1536), (768, 768), 2, 3, [0, 256], [0, 384, 768]),
    ((400, 400), (512, 512), 1, 1, [-112], [-112]),
])
def test_tile_plan_matches_a1111s_worked_positions(size, tile, cols, rows, xs, ys):
    plan = tile_plan(size, *tile, 64)
    assert (plan.cols, plan.rows, plan.xs, plan.ys) == (cols, rows, xs, ys)


def test_tile_seeds_and_upscaled_size_follow_a1111s_rules():
    # after each batch A1111 sets p.seed = processed.seed + 1: batch j, index k -> seed + n + j + k
    assert tile_seeds(10, 5, batch_size=2) == [10, 11, 11, 12, 12]
    assert tile_seeds(10, 3, batch_size=1, n=2) == [12, 13, 14]
    assert upscaled_size((100, 60), 2.5, "None") == (100, 60)  # "None" ignores the scale factor (#1585)
    assert upscaled_size((100, 60), 2.5, "Lanczos") == (248, 144)  # int(w*s)//8*8


def test_lanczos_x2_tiles_seeds_size_and_infotext(toy, red, jobs):
    r = toy.sd_upscale([red], upscaler="Lanczos", scale_factor=2.0, overlap=16, width=64, height=64, batch_size=2,
                       seed=40, **BASE)
    assert r.image.size == (128, 128)
    plan = r.sd_upscale
    assert (plan.xs, plan.ys, plan.tile, plan.overlap) == ([0, 32, 64], [0, 32, 64], (64, 64), 16)
    # 9 tiles, 2 per job: 5 jobs, the seed rising by one after each; the last tile is alone, repeated to the batch
    assert [j["p"].seed for j in jobs] == [40, 41, 42, 43, 44]
    assert [j["p"].batch_size for j in jobs] == [2] * 5
    assert [len(j["init"]) for j in jobs] == [2, 2, 2, 2, 1]
    assert all(j["kw"]["outputs_dir"] is None for j in jobs)  # tiles are not saved
    # each job's init tiles are the Lanczos-upscaled picture's crops at the plan's positions
    big = red.resize((128, 128), Image.Resampling.LANCZOS)
    crops = [big.crop((x, y, x + 64, y + 64)) for x, y in plan.positions()]
    tiles = [t for j in jobs for t in j["init"]]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(tiles, crops))
    assert plan.seeds == [[40, 41, 41, 42, 42, 43, 43, 44, 44]]
    assert [s for j in jobs for s in j["result"].seeds] == [40, 41, 41, 42, 42, 43, 43, 44, 44, 45]
    # the first tile's top-left quarter lies under no other tile: it is that tile's output as is
    first = np.asarray(jobs[0]["result"].images[0])
    assert np.array_equal(np.asarray(r.image)[:32, :32], first[:32, :32])
    # the joined picture keeps the first job's infotext: Size = tile size, the two script keys leading the extras
    fields = infotext.parse(r.infotexts[0])
    assert r.infotexts[0] == jobs[0]["result"].infotexts[0]
    assert (fields["Seed"], fields["Size-1"], fields["Size-2"]) == ("40", "64", "64")
    assert (fields["SD upscale overlap"], fields["SD upscale upscaler"]) == ("16", "Lanczos")
    extras = [k for k in fields if k not in (*CORE_ORDER, "Prompt", "Negative prompt", "Size-1", "Size-2")]
    assert extras[:2] == ["SD upscale overlap", "SD upscale upscaler"], fields
    assert r.seeds == [40] and r.paths[0].parent.parent.name == "img2img-images"
    assert infotext.read_png(r.paths[0]) == r.infotexts[0]


def test_none_ignores_the_scale_factor_and_n_iter_repeats_with_the_next_seed(toy, red, jobs):
    init = red.resize((96, 96))
    r = toy.sd_upscale([init], upscaler="None", scale_factor=3.0, overlap=16, width=64, height=64, n_iter=2, seed=7,
                       **BASE)
    assert [im.size for im in r.images] == [(96, 96), (96, 96)]  # not 288x288: A1111 ignores the factor
    assert (r.sd_upscale.xs, r.sd_upscale.ys) == ([0, 32], [0, 32])
    assert [j["p"].seed for j in jobs] == [7, 8, 9, 10, 8, 9, 10, 11]  # round n starts at seed + n
    assert r.seeds == [7, 8] and r.infotexts[0] == r.infotexts[1]  # both carry the first job's infotext
    assert infotext.parse(r.infotexts[0])["SD upscale upscaler"] == "None"
    assert len([p for p in r.paths if p is not None]) == 2


def test_interrupt_keeps_finished_tiles_and_leaves_the_rest_black(toy, red, jobs, monkeypatch):
    real = img2img_module.img2img_steps  # the spy

    def stop_before_third(bundle, p, encoder, init_images, **kw):
        if len(jobs) == 2:
            toy.interrupt()
        return (yield from real(bundle, p, encoder, init_images, **kw))

    monkeypatch.setattr(img2img_module, "img2img_steps", stop_before_third)
    r = toy.sd_upscale([red], upscaler="Nearest", scale_factor=2.0, overlap=16, width=64, height=64, seed=1,
                       n_iter=2, **BASE)
    assert r.interrupted and len(r.images) == 1  # the second round never starts
    assert len(jobs) == 3 and not jobs[2]["result"].images
    out = np.asarray(r.image)
    tile0, tile1 = (np.asarray(j["result"].images[0]) for j in jobs[:2])
    assert np.array_equal(out[:32, :32], tile0[:32, :32])  # tile (0, 0) alone there
    assert np.array_equal(out[:32, 48:64], tile1[:32, 16:32])  # tile (32, 0) past the feather, before tile (64, 0)
    assert not out[:, 96:].any() and not out[96:, :].any()  # only unfinished tiles cover these: black


def test_errors_come_before_any_model_work(toy, red, jobs):
    with pytest.raises(ValueError, match="overlap=64 must be smaller than the tile size"):
        toy.sd_upscale([red], overlap=64, width=64, height=64, **BASE)
    with pytest.raises(ValueError, match="latent upscaler"):
        toy.sd_upscale([red], upscaler="Latent", overlap=16, width=64, height=64, **BASE)
    with pytest.raises(ValueError, match="Unknown upscaler"):
        toy.sd_upscale([red], upscaler="Lanczoz", overlap=16, width=64, height=64, **BASE)
    with pytest.raises(ValueError, match="scale_factor"):
        toy.sd_upscale([red], upscaler="Lanczos", scale_factor=0, overlap=16, width=64, height=64, **BASE)
    assert jobs == []


def test_a_model_upscaler_is_named_by_its_file_stem_and_an_interrupt_stops_it_between_its_tiles(toy, red, jobs,
                                                                                                  tmp_path):
    import torch

    from nbdiffuse.jobs import upscalers
    from nbdiffuse.jobs.driver import JobControl
    from nbdiffuse.jobs.params import GenerationParams
    from nbdiffuse.jobs.sd_upscale import sd_upscale_steps

    pytest.importorskip("einops")
    try:
        upscalers.import_spandrel()
    except ImportError as e:
        pytest.skip(f"spandrel not installed: {e}")
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    path = tmp_path / "4x-Tiny.pth"
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict(), path)
    r = toy.sd_upscale([red], upscaler=str(path), scale_factor=2.0, overlap=0, width=64, height=64, seed=3, **BASE)
    assert r.image.size == (128, 128) and len(jobs) == 4  # one 4x pass, Lanczos down to 2x; 2x2 tiles
    assert infotext.parse(r.infotexts[0])["SD upscale upscaler"] == "4x-Tiny"  # A1111 names it by its stem
    control = JobControl()
    control.interrupt.set()
    gen = sd_upscale_steps(toy.model, GenerationParams.from_kwargs(width=64, height=64, **BASE), toy.encoder, [red],
                           upscaler=str(path), overlap=0, control=control)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    result = stop.value.value
    assert result.interrupted and result.images == [] and len(jobs) == 4  # no tile was redrawn
