"""Probes: exactly the modules and steps asked for, cond/uncond split right, budget held, no hook left behind."""

import warnings

import pytest
import torch

from nbdiffuse.inspect import Probe
from nbdiffuse.viz.activations import activation_grid

PARAMS = dict(prompt="a red circle", negative_prompt="blurry", steps=4, seed=5, width=64, height=64,
              sampler_name="Euler")


def _no_hooks_left(unet):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


def test_exact_modules_and_steps_and_cond_uncond_rows(session):
    unet = session.model.unet
    raw = []  # every call's full output of one probed module, to check the split against
    handle = unet.mid_block.attentions[0].register_forward_hook(lambda m, a, out: raw.append(out[0].clone()))
    try:
        with Probe(session, modules=["mid_block.attentions.0", lambda name, m: name == "up_blocks.1.attentions.1"],
                   steps=[1, 3]) as probe:
            session.txt2img(batch_size=2, **PARAMS)
    finally:
        handle.remove()
    assert set(probe.activations) == {"mid_block.attentions.0", "up_blocks.1.attentions.1"}
    for per_step in probe.activations.values():
        assert set(per_step) == {1, 3}
    assert len(raw) == 8  # Euler: one model call per step, one UNet forward [cond, uncond] per image
    for step in (1, 3):
        got = probe.activations["mid_block.attentions.0"][step]
        first, second = raw[2 * step], raw[2 * step + 1]
        assert got["cond"].device.type == "cpu" and got["cond"].shape[0] == 2
        assert torch.equal(got["cond"], torch.stack([first[0], second[0]]))
        assert torch.equal(got["uncond"], torch.stack([first[1], second[1]]))
    assert _no_hooks_left(unet) and session.hooks == []

    rows = probe.summary()
    assert len(rows) == 4 and {r["step"] for r in rows} == {1, 3}
    assert all(r["diff_rms"] > 0 for r in rows)
    assert "<table" in rows._repr_html_() and "mid_block.attentions.0" in str(rows)
    fig = activation_grid(probe, "up_blocks.1.attentions.1", 3, which="diff", channels=8)
    assert len(fig.axes) == 9


def test_class_name_input_capture_cfg1_and_second_order(session):
    with Probe(session, modules="Transformer2DModel", capture="input") as probe:
        session.txt2img(**dict(PARAMS, steps=2, cfg_scale=1.0, sampler_name="Heun"))
    assert set(probe.activations) == {"down_blocks.0.attentions.0", "mid_block.attentions.0",
                                      "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"}
    for per_step in probe.activations.values():
        assert set(per_step) == {0, 1}  # Heun calls twice per step: the first call of each step is kept
        assert all(a["uncond"] is None and a["cond"].shape[0] == 1 for a in per_step.values())
    assert probe.norms("mid_block.attentions.0").keys() == {0, 1}


def test_no_hook_left_after_an_exception(session):
    def boom(state):
        if state.i == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with Probe(session, modules="Transformer2DModel", capture="input") as probe:
            session.txt2img(hooks=[boom], **PARAMS)
    assert probe.activations["mid_block.attentions.0"].keys() == {0, 1}
    assert _no_hooks_left(session.model.unet) and session.hooks == []


def test_memory_budget_stops_capturing_with_a_warning(session):
    one = 2 * 32 * 8 * 8 * 4  # cond + uncond rows of down_blocks.0.attentions.0 at 64x64, float32
    with pytest.warns(UserWarning, match="memory budget reached"):
        with Probe(session, modules="down_blocks.0.attentions.0", budget_bytes=int(2.5 * one)) as probe:
            session.txt2img(**PARAMS)
    assert probe.truncated and probe.bytes <= probe.budget_bytes
    assert set(probe.activations["down_blocks.0.attentions.0"]) == {0, 1}
    assert "TRUNCATED" in repr(probe)


def test_selector_errors(session):
    with pytest.raises(ValueError, match="matches nothing"):
        with Probe(session, modules="NoSuchBlock"):
            pass
    with pytest.raises(ValueError, match="capture"):
        Probe(session, capture="weights")
    assert _no_hooks_left(session.model.unet)


def test_bundle_with_explicit_step_hook(sd1):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from nbdiffuse import Session

        s = Session(outputs_dir=None, progress=False)
        s.load(sd1)
        with Probe(sd1, modules="mid_block.attentions.0") as probe:  # a bare bundle: no session.hooks to use
            s.txt2img(hooks=[probe.step_hook], **dict(PARAMS, steps=2))
    assert set(probe.activations["mid_block.attentions.0"]) == {0, 1}
