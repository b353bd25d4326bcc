"""Sizes no interrupt could stop are refused up front; an interrupt reaches inside a running UNet call."""

import threading

import pytest
import torch

from nbdiffuse.jobs.guards import JobInterrupted, check_size, interruptible, job_cost


@pytest.fixture(scope="module")
def toy():
    from nbdiffuse import Session

    s = Session(outputs_dir=None, progress=False)
    s.load("toy")
    return s


@pytest.mark.parametrize("size", [dict(width=10**6, height=64), dict(width=8000, height=8000)])
def test_a_size_whose_attention_would_run_for_an_hour_is_refused_before_any_model_call(toy, size):
    calls = []
    with pytest.raises(ValueError, match=r"The size \d+x\d+ is too large for this model on cpu: its first "
                                         r"self-attention spans 1,000,000 tokens"):
        toy.txt2img(prompt="a red circle", steps=2, hooks=[calls.append], **size)
    assert calls == []
    with pytest.raises(ValueError, match=r"The hires size 8000x8000 is too large"):
        toy.txt2img(prompt="a red circle", steps=2, width=64, height=64, enable_hr=True, hr_resize_x=8000,
                    hr_resize_y=8000, hooks=[calls.append])
    assert calls == []
    assert len(toy.txt2img(prompt="a red circle", steps=1, width=64, height=64).images) == 1  # still usable


def test_sizes_people_use_pass_and_the_cost_follows_the_first_attention_level(toy, sd1, sdxl):
    check_size(toy.model, 2048, 2048)
    check_size(sd1, 1024, 1024)
    # SD1's first level has attention at the latent's size, SDXL's first attention comes after one downsample
    assert job_cost(sd1.unet, 512, 512)[0] == 64 * 64
    assert job_cost(sdxl.unet, 1024, 1024)[0] == 64 * 64


def test_a_memory_the_device_does_not_have_is_refused(sd1, monkeypatch):
    import nbdiffuse.jobs.guards as guards

    monkeypatch.setattr(guards, "available_memory", lambda device: 10 * 2**20)
    with pytest.raises(ValueError, match=r"GiB of UNet activations on cpu, more than the 0.0 GiB free"):
        check_size(sd1, 2048, 2048)


def test_interrupt_from_another_thread_lands_inside_the_running_unet_call(session):
    unet = session.model.unet
    blocks = [m for m in unet.modules() if type(m).__name__ in ("BasicTransformerBlock", "ResnetBlock2D")]
    assert len(blocks) >= 4
    inside, go_on = threading.Event(), threading.Event()
    ran_after: list[str] = []

    def pause_in_first_block(module, args):
        if not inside.is_set():
            inside.set()
            assert go_on.wait(30)  # the main thread interrupts now, while this UNet call is under way

    def count(module, args, output):
        if inside.is_set() and go_on.is_set():
            ran_after.append(type(module).__name__)

    handles = [blocks[0].register_forward_pre_hook(pause_in_first_block)]
    handles += [b.register_forward_hook(count) for b in blocks[1:]]
    results = []
    worker = threading.Thread(target=lambda: results.append(session.txt2img(
        prompt="a red circle", steps=3, width=64, height=64, seed=1)))
    try:
        worker.start()
        assert inside.wait(30)
        session.interrupt()
        go_on.set()
        worker.join(60)
    finally:
        for h in handles:
            h.remove()
    result = results[0]
    assert result.interrupted and result.images == []  # stopped inside the first step: nothing to keep
    assert ran_after == []  # no block after the one running when the interrupt came
    assert not any(m._forward_pre_hooks for m in blocks)  # the guard's hooks are gone
    assert len(session.txt2img(prompt="a red circle", steps=2, width=64, height=64).images) == 1


def test_the_guard_raises_only_while_the_flag_is_set():
    conv = torch.nn.Sequential()
    event = threading.Event()
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None)
    conv.add_module("block", block)
    x = torch.randn(1, 32, 4, 4)
    with interruptible(conv, event):
        block(x, None)
        event.set()
        with pytest.raises(JobInterrupted):
            block(x, None)
    block(x, None)  # hooks removed on exit
