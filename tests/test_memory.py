"""Memory modes (full/medvram/lowvram/auto), VAE tiled decode, the memory line, and memory returned on unload.

There is no GPU here: the offload hooks run with the CPU as their "device" (``OFFLOAD_DEVICE_TYPES`` patched to
include it), which moves nothing but runs every hook and the bookkeeping of which unit is resident; the CUDA test
skips without CUDA.
"""

import gc
import weakref

import numpy as np
import pytest
import torch

from nbdiffuse import Session
from nbdiffuse.jobs import memory_stats
from nbdiffuse.models import memory
from nbdiffuse.models.memory import Offload, choose_memory_mode, plan_memory, wants_vae_tiling

GB = 2**30
PARAMS = dict(prompt="a red circle", negative_prompt="blue", steps=3, seed=5, sampler_name="Euler")


@pytest.fixture
def offload_on_cpu(monkeypatch):
    monkeypatch.setattr(memory, "OFFLOAD_DEVICE_TYPES", ("cuda", "xpu", "cpu"))


def fresh_sd1():
    from nbdiffuse.models import tiny_sd1

    return tiny_sd1()  # not the shared fixture: these tests hook and move its modules


# ---------------------------------------------------------------------------------------------- choosing a mode

def test_auto_picks_full_when_the_model_fits_with_room_to_run():
    assert choose_memory_mode(24 * GB, 7 * GB, 5 * GB)[0] == "full"
    assert choose_memory_mode(8 * GB, 7 * GB, 5 * GB)[0] == "medvram"  # 7 + 1.5 GB reserve > 8
    assert choose_memory_mode(6 * GB, 7 * GB, 5 * GB)[0] == "lowvram"


def test_auto_says_why_with_the_numbers_it_used():
    mode, why = choose_memory_mode(8 * GB, 7 * GB, 5 * GB)
    assert mode == "medvram" and "8.0 GB free" in why and "7.0 GB" in why and "5.0 GB" in why


def test_plan_on_cuda_reads_the_model_size(sd1):
    sizes = memory.component_bytes(sd1)
    assert set(sizes) == {"unet", "vae", "text_encoder"} and all(v > 0 for v in sizes.values())
    total = sum(sizes.values())
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert plan_memory("auto", cuda, sd1, free_bytes=total + 2 * GB).mode == "full"
    assert plan_memory("auto", cuda, sd1, free_bytes=GB).mode == "lowvram"
    assert plan_memory("medvram", cuda, sd1).mode == "medvram"


def test_modes_are_accepted_on_the_cpu_and_say_they_do_nothing():
    with pytest.warns(UserWarning, match="lowvram has no effect on cpu"):
        s = Session(device="cpu", outputs_dir=None, progress=False, memory="lowvram")
    assert s.memory == "lowvram" and s.memory_plan.mode == "full"
    assert "no effect" in str(s.memory_plan)
    s = Session(device="cpu", outputs_dir=None, progress=False)
    assert s.memory == "auto" and str(s.memory_plan) == "memory: full (auto: cpu: the model is in RAM)"


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'auto', 'full', 'medvram', 'lowvram'"):
        Session(device="cpu", outputs_dir=None, memory="highvram")
    s = Session(device="cpu", outputs_dir=None)
    with pytest.raises(ValueError, match="not a memory mode"):
        s.memory = "low"


# ---------------------------------------------------------------------------------------------- offloading

def test_medvram_keeps_one_component_resident_and_changes_no_pixel(offload_on_cpu):
    full = Session(device="cpu", outputs_dir=None, progress=False)
    full.load(fresh_sd1())
    s = Session(device="cpu", outputs_dir=None, progress=False, memory="medvram")
    s.load(fresh_sd1())
    offload = s._offload
    assert offload is not None and offload.units() == ["text_encoder", "unet", "vae"]
    assert s.model.device == torch.device("cpu") and "medvram" in s.model.info["memory"]
    a, b = full.txt2img(**PARAMS), s.txt2img(**PARAMS)
    # the text encoder runs, then the UNet (resident for every step), then the VAE
    assert offload.moves == ["text_encoder", "unet", "vae"]
    assert torch.equal(a.latents, b.latents) and a.infotexts == b.infotexts
    assert a.images[0].tobytes() == b.images[0].tobytes()
    s.memory = "full"
    assert s._offload is None and not hasattr(s.model.unet, "_hf_hook")
    assert s.model.execution_device is None and str(s.memory_plan) == "memory: full"


def test_lowvram_streams_the_unet_block_by_block(offload_on_cpu):
    from nbdiffuse.models import tiny_sdxl

    full = Session(device="cpu", outputs_dir=None, progress=False)
    full.load(tiny_sdxl())
    s = Session(device="cpu", outputs_dir=None, progress=False, memory="lowvram")
    s.load(tiny_sdxl())
    offload = s._offload
    blocks = [u for u in offload.units() if u.startswith("unet.")]
    assert len(blocks) >= 10 and "unet" not in offload.units()
    assert {"text_encoder", "text_encoder_2", "vae"} <= set(offload.units())
    a, b = full.txt2img(**PARAMS), s.txt2img(**PARAMS)
    unet_moves = [m for m in offload.moves if m.startswith("unet.")]
    assert len(unet_moves) == len(blocks) * PARAMS["steps"]  # every block comes in once per UNet call
    assert sorted(unet_moves[:len(blocks)]) == sorted(blocks)
    assert torch.equal(a.latents, b.latents)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    s.unload()


def test_the_resident_unit_is_sent_back_before_the_next_one_comes_in(offload_on_cpu):
    bundle = fresh_sd1()
    offload = Offload(bundle, "medvram", torch.device("cpu"))
    sent_back = []
    real_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        if args and str(args[0]) == "cpu" and module is offload.resident:
            sent_back.append(module)
        return real_to(module, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        ids = torch.zeros(1, 77, dtype=torch.long)
        bundle.text_encoders[0](ids)
        bundle.vae.decode(torch.zeros(1, 4, 8, 8))
    finally:
        torch.nn.Module.to = real_to
        offload.remove()
    assert sent_back == [bundle.text_encoders[0]]
    assert offload.moves == ["text_encoder", "vae"]


def test_load_vae_keeps_the_mode(offload_on_cpu):
    from nbdiffuse.models import tiny_sd1

    s = Session(device="cpu", outputs_dir=None, progress=False, memory="medvram")
    s.load(fresh_sd1())
    s.load_vae(tiny_sd1().vae)
    assert s._offload.units()[-1] == "vae" and hasattr(s.model.vae, "_hf_hook")
    s.load_vae(None)
    assert hasattr(s.model.vae, "_hf_hook")
    s.unload()


# ---------------------------------------------------------------------------------------------- VAE tiling

def test_vae_tiling_auto_only_when_the_decode_would_not_fit(sd1):
    vae = sd1.vae
    small, large = (1, 4, vae.tile_latent_min_size, vae.tile_latent_min_size), (1, 4, 64, 64)
    assert not wants_vae_tiling(vae, small, True)  # one tile: nothing to split
    assert wants_vae_tiling(vae, large, True)
    assert not wants_vae_tiling(vae, large, False, free_bytes=0)  # False: A1111's decode, whatever it costs
    assert not wants_vae_tiling(vae, large, "auto", free_bytes=100 * GB)
    assert wants_vae_tiling(vae, large, "auto", free_bytes=memory.vae_decode_bytes(large, torch.float32) - 1)
    with pytest.raises(ValueError):
        wants_vae_tiling(vae, large, "yes")


def test_tiled_decode_is_noted_in_the_infotext_and_close_to_the_whole_decode():
    s = Session(device="cpu", outputs_dir=None, progress=False, vae_tiling=False)
    s.load(fresh_sd1())
    params = dict(PARAMS, width=128, height=128)  # latent 16x16, the tiny VAE's tile is 8x8
    whole = s.txt2img(**params)
    s.vae_tiling = True
    tiled = s.txt2img(**params)
    assert "VAE tiling: True" in tiled.infotexts[0] and "VAE tiling" not in whole.infotexts[0]
    assert torch.equal(whole.latents, tiled.latents)
    a = torch.from_numpy(np.asarray(whole.images[0], dtype=np.float32))
    b = torch.from_numpy(np.asarray(tiled.images[0], dtype=np.float32))
    # blended overlapping tiles: near the whole decode, not equal (the tiny random VAE's 64-pixel tiles are small
    # beside its receptive field, so the seams show more than a real VAE's 512-pixel tiles do)
    assert 0 < (a - b).abs().mean() < 16


# ---------------------------------------------------------------------------------------------- the memory line

def test_every_result_has_a_memory_line_on_the_cpu_it_is_the_peak_rss(session):
    r = session.txt2img(**PARAMS)
    assert r.timings["memory"].startswith("RAM: ") and "peak RSS" in r.timings["memory"]
    assert r.timings["memory_bytes"]["peak_rss"] > 50 * 2**20
    assert r.timings["memory"] in r.info


def test_cuda_line_has_a1111s_meaning_and_format(monkeypatch):
    stats = {"active_bytes.all.peak": 3 * GB + 1, "reserved_bytes.all.peak": 4 * GB,
             "allocated_bytes.all.peak": 3 * GB}
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: stats)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * GB, 80 * GB))
    numbers = memory_stats.memory_numbers(torch.device("cuda"))
    assert numbers["active"] == 3 * GB + 1 and numbers["used"] == 20 * GB and numbers["total"] == 80 * GB
    # A is the *active* peak, rounded up to MiB as A1111 does (3 GiB + 1 byte shows as 3.00 GB + 1 MiB)
    assert memory_stats.memory_line(numbers) == "A: 3.00 GB, R: 4.00 GB, Sys: 20.0/80 GB (25.0%)"


def test_the_panel_status_shows_the_memory_line_on_its_own_line(session):
    from nbdiffuse.ui import Panel

    panel = Panel(session)
    panel._show_result(session.txt2img(**PARAMS))
    assert "<br/>RAM: " in panel.w.status.value


# ---------------------------------------------------------------------------------------------- memory returned

def _refs(bundle):
    return [weakref.ref(m) for m in (bundle.unet, bundle.vae, *bundle.text_encoders)]


@pytest.mark.parametrize("mode", ["full", "medvram", "lowvram"])
def test_unload_and_switching_models_free_every_component(offload_on_cpu, mode):
    s = Session(device="cpu", outputs_dir=None, progress=False, memory=mode)
    bundle = fresh_sd1()
    s.load(bundle)
    s.txt2img(**PARAMS)
    first = _refs(bundle)
    del bundle
    s.load(fresh_sd1())  # a model switch
    gc.collect()
    assert all(r() is None for r in first), f"{mode}: the previous model is still referenced"
    second = _refs(s.model)
    s.unload()
    gc.collect()
    assert all(r() is None for r in second), f"{mode}: unload() left the model referenced"
    assert s._offload is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["full", "medvram", "lowvram"])
def test_unload_returns_gpu_memory(mode):
    s = Session(device="cuda", outputs_dir=None, progress=False, memory=mode)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    s.load(fresh_sd1())
    r = s.txt2img(**PARAMS)
    assert r.timings["memory"].startswith("A: ")
    if mode != "full":
        assert torch.cuda.memory_allocated() - before < memory.module_bytes(s.model.unet)
    s.unload()
    gc.collect()
    assert torch.cuda.memory_allocated() == before
