"""Step-through debugging: Debugger drives the ordinary txt2img generator, so stepping changes nothing."""

import pytest
import torch

from nbdiffuse.inspect import Debugger

PARAMS = dict(prompt="a red circle", negative_prompt="blurry", steps=4, seed=11, width=64, height=64)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_stepping_then_finishing_is_bit_identical(session, sampler):
    params = dict(PARAMS, sampler_name=sampler)
    reference = session.txt2img(**params)
    dbg = Debugger(session, **params)
    assert "not started" in dbg._repr_html_()
    dbg.step()
    assert dbg.state.step == 1 and dbg.state.total == 4
    dbg.step(1)
    dbg.run_to(3)
    assert dbg.state.step == 3
    result = dbg.finish()
    assert dbg.finished and session.last_result is result
    assert torch.equal(result.latents, reference.latents)
    assert result.images[0].tobytes() == reference.images[0].tobytes()


def test_state_preview_and_panel(session):
    dbg = Debugger(session, **PARAMS).step(2)
    state = dbg.state
    assert state.i == 1 and state.extra["cond"].shape == state.x.shape == state.extra["uncond"].shape
    assert not torch.equal(state.extra["cond"], state.extra["uncond"])
    image = dbg.preview()
    assert image.size == (8, 8)  # the cheap preview is at latent resolution
    assert dbg.preview(which="x").size == (8, 8)
    assert dbg.preview(method="full").size == (64, 64)
    panel = dbg._repr_html_()
    assert "step 2 of 4" in panel and "sigma" in panel and "data:image/png;base64," in panel
    dbg.close()


def test_hook_zeroing_the_last_step_gives_a_zero_latent(session):
    def zero_last(state):
        if state.i == state.total - 1:
            return torch.zeros_like(state.x)

    result = session.txt2img(hooks=[zero_last], **PARAMS)
    assert torch.count_nonzero(result.latents) == 0


def test_set_latent_changes_the_trajectory_like_a_replacing_hook(session):
    def halve_at_2(state):
        if state.i == 1:
            return state.x * 0.5

    expected = session.txt2img(hooks=[halve_at_2], **PARAMS)
    dbg = Debugger(session, **PARAMS).run_to(2)
    dbg.set_latent(dbg.state.x * 0.5)
    assert "latent replaced" in repr(dbg)
    assert torch.equal(dbg.finish().latents, expected.latents)

    dbg = Debugger(session, **PARAMS).run_to(4)  # after the last step: the decoded latent itself
    dbg.set_latent(torch.zeros_like(dbg.state.x))
    assert torch.count_nonzero(dbg.finish().latents) == 0


def test_set_latent_errors(session):
    dbg = Debugger(session, **PARAMS)
    with pytest.raises(RuntimeError, match="take a step"):
        dbg.set_latent(torch.zeros(1, 4, 8, 8))
    dbg.step()
    with pytest.raises(ValueError, match="expected shape"):
        dbg.set_latent(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="past the last step"):
        dbg.run_to(9)
    dbg.close()


@pytest.mark.parametrize("returned,error,message", [
    (lambda s: s.x.numpy(), TypeError, r"Hook .*bad_hook returned a ndarray at step 0: a hook returns None"),
    (lambda s: "x", TypeError, r"returned a str"),
    (lambda s: s.x[:1].repeat(2, 1, 1, 1), ValueError, r"shape \(2, 4, 8, 8\) at step 0: it must be shaped like "
                                                       r"state.x \(1, 4, 8, 8\)"),
    (lambda s: s.x * float("nan"), ValueError, r"returned a latent with NaN/inf values at step 0"),
])
def test_a_bad_hook_return_is_refused_at_once_naming_the_hook(session, returned, error, message):
    calls = []

    def bad_hook(state):
        calls.append(state.i)
        return returned(state)

    with pytest.raises(error, match=message):
        session.txt2img(hooks=[bad_hook], **PARAMS)
    assert calls == [0]  # refused at the first step, not after the UNet choked on it
    assert torch.isfinite(session.txt2img(**PARAMS).latents).all()  # the session goes on
