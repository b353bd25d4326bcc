"""The conditioning the UNet sees at each model call is the scheduled one, as A1111 counts calls."""

import pytest
import torch


def capture_contexts(session, **params):
    seen = []

    def pre_hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    handle = session.model.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        session.txt2img(**params)
    finally:
        handle.remove()
    return seen


BASE = dict(negative_prompt="", width=64, height=64, seed=1, cfg_scale=5.0)


def which(ctx, options):
    for name, ref in options.items():
        if torch.allclose(ctx, ref, atol=1e-6):
            return name
    return "?"


def test_prompt_edit_switches_after_its_step(session):
    enc = session.encoder
    red, blue = enc.encode("red ball").context, enc.encode("blue ball").context
    seen = capture_contexts(session, prompt="[red:blue:2] ball", steps=5, sampler_name="Euler", **BASE)
    # batch = [cond, uncond]; A1111 uses the first entry whose end step >= call index (0-based): calls 0..2 red
    assert [which(c[0], {"red": red, "blue": blue}) for c in seen] == ["red", "red", "red", "blue", "blue"]


def test_second_order_samplers_count_schedule_steps_double(session):
    enc = session.encoder
    red, blue = enc.encode("red ball").context, enc.encode("blue ball").context
    # Heun at 4 steps: schedule over 8 "steps", 7 model calls; [red:blue:0.5] -> red up to call index 4.
    seen = capture_contexts(session, prompt="[red:blue:0.5] ball", steps=4, sampler_name="Heun", **BASE)
    assert len(seen) == 7
    assert [which(c[0], {"red": red, "blue": blue}) for c in seen] == ["red"] * 5 + ["blue"] * 2


def test_alternation_alternates_per_call_with_a1111s_offset(session):
    enc = session.encoder
    red, blue = enc.encode("red ball").context, enc.encode("blue ball").context
    seen = capture_contexts(session, prompt="[red|blue] ball", steps=4, sampler_name="Euler", **BASE)
    # Schedule [(1, red), (2, blue), (3, red), (4, blue)] read with A1111's 0-based call counter: call 0 and 1
    # both fall in "end step 1", so A1111 renders red, red, blue, red. We match it, quirk included.
    assert [which(c[0], {"red": red, "blue": blue}) for c in seen] == ["red", "red", "blue", "red"]


def test_negative_prompt_is_scheduled_too(session):
    enc = session.encoder
    a, b = enc.encode("blurry").context, enc.encode("noisy").context
    seen = capture_contexts(session, prompt="ball", steps=4, sampler_name="Euler",
                            **{**BASE, "negative_prompt": "[blurry:noisy:1]"})
    assert [which(c[1], {"a": a, "b": b}) for c in seen] == ["a", "a", "b", "b"]


def test_and_parts_run_in_one_batch_and_shorter_uncond_is_padded(session):
    long_prompt = "red ball BREAK big AND tree :0.5"
    seen = capture_contexts(session, prompt=long_prompt, steps=2, sampler_name="Euler", **BASE)
    assert seen[0].shape[0] == 3 and seen[0].shape[1] == 154
    empty = session.encoder.encode("").context
    assert torch.allclose(seen[0][2, 77:], empty, atol=1e-6)  # uncond padded with the empty prompt's chunk
    assert torch.allclose(seen[0][1, 77:], empty, atol=1e-6)  # the short AND part too


@pytest.mark.parametrize("prompt", ["(red:1.4) ball", "[red:blue:0.5] ball", "a BREAK b", "x AND y"])
def test_prompt_syntax_reproduces_from_infotext(session, prompt):
    from nbdiffuse import infotext

    r = session.txt2img(prompt=prompt, steps=3, **BASE)
    again = session.txt2img(**infotext.to_params(r.infotexts[0]))
    assert torch.equal(r.latents, again.latents)
