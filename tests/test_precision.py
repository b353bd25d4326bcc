"""Issue 17, precision: the dtype policy per device (said at load and in the repr), float32 attention where a model
needs it, NaN/inf seen on every element of every step's latent and of each decoded image, and a VAE that fails in
half precision decoded again, that image only, with the infotext saying so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbdiffuse import Session, infotext
from nbdiffuse.jobs.nancheck import FiniteWatch, NonFiniteLatents
from nbdiffuse.models import tiny_sd1, tiny_sd2
from nbdiffuse.models.precision import (
    Policy,
    choose_dtypes,
    loading_dtypes,
    set_upcast_attention,
    upcast_is_on,
    vae_fallbacks,
)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
SAFE_VAE, UNSAFE_VAE = {"force_upcast": False}, {"force_upcast": True}
SMALL = dict(prompt="a red circle", steps=3, width=64, height=64, seed=3)


# ------------------------------------------------------------------------------------------------ the policy
@pytest.mark.parametrize("device,capability,vae_config,overrides,expected", [
    # CPU: float32 everywhere, bfloat16 when asked, float16 VAE only when safe or asked for
    ("cpu", None, None, {}, (F32, F32, F32)),
    ("cpu", None, None, {"dtype": BF16}, (BF16, BF16, BF16)),
    ("cpu", None, UNSAFE_VAE, {"dtype": F16}, (F16, F16, BF16)),
    ("cpu", None, SAFE_VAE, {"dtype": F16}, (F16, F16, F16)),
    # CUDA: UNet and text encoders float16; the VAE bfloat16 on compute capability >= 8, else float32, float16
    # when its config says it is safe
    ("cuda", (9, 0), None, {}, (F16, F16, BF16)),
    ("cuda", (8, 0), UNSAFE_VAE, {}, (F16, F16, BF16)),
    ("cuda", (7, 5), UNSAFE_VAE, {}, (F16, F16, F32)),
    ("cuda", (6, 1), None, {}, (F16, F16, F32)),
    ("cuda", (7, 5), SAFE_VAE, {}, (F16, F16, F16)),
    ("cuda", (8, 9), SAFE_VAE, {}, (F16, F16, F16)),
    ("cuda", (8, 9), {}, {}, (F16, F16, BF16)),  # no key: diffusers' default force_upcast=True
    # the user's dtype and per-component overrides win
    ("cuda", (7, 5), None, {"dtype": F32}, (F32, F32, F32)),
    ("cuda", (8, 0), None, {"dtype": BF16}, (BF16, BF16, BF16)),
    ("cuda", (7, 5), None, {"vae_dtype": F16}, (F16, F16, F16)),
    ("cuda", (8, 0), SAFE_VAE, {"vae_dtype": F32, "unet_dtype": BF16}, (BF16, F16, F32)),
    ("cuda", (8, 0), None, {"dtype": F32, "text_encoder_dtype": F16}, (F32, F16, F32)),
])
def test_policy_for_every_device_capability_and_vae_config(device, capability, vae_config, overrides, expected):
    p = choose_dtypes(device, capability, vae_config, overrides)
    assert (p.unet, p.text_encoder, p.vae) == expected
    assert p.dtype_of("text_encoder_2") == p.text_encoder
    line = p.describe()
    assert line.startswith("Precision: ") and "\n" not in line
    for dtype in set(expected):
        assert str(dtype).replace("torch.", "") in line


def test_the_policy_says_why_the_vae_differs():
    assert "compute capability 7.5 has no bfloat16" in choose_dtypes("cuda", (7, 5)).describe()
    assert "compute capability 8.6 has bfloat16" in choose_dtypes("cuda", (8, 6)).describe()
    assert "force_upcast: false" in choose_dtypes("cuda", (7, 5), SAFE_VAE).describe()
    assert choose_dtypes("cpu").describe() == "Precision: float32 (the CPU default)"
    with pytest.raises(ValueError, match="unknown precision setting"):
        choose_dtypes("cpu", overrides={"vae": F16})


@pytest.mark.parametrize("unet_config,overrides,on", [
    ({"upcast_attention": True}, {}, True),  # SD2.x-v's config, UNet in float16 on CUDA
    ({"upcast_attention": True}, {"dtype": F32}, False),  # float32 has the range
    ({"upcast_attention": True}, {"dtype": BF16}, False),
    ({"upcast_attention": False}, {}, False),
    (None, {}, False),
    ({"upcast_attention": True}, {"upcast_attention": False}, False),  # the user decides for every model
    (None, {"upcast_attention": True, "dtype": F32}, True),
])
def test_attention_upcast_where_the_model_asks_for_it_in_float16(unet_config, overrides, on):
    p = choose_dtypes("cuda", (8, 0), None, overrides, unet_config)
    assert p.upcast_attention is on
    assert ("attention upcast to float32" in p.describe()) is on


def test_weights_load_in_float32_when_the_vae_dtype_waits_for_its_config():
    provisional = choose_dtypes("cuda", (8, 0))
    assert loading_dtypes(provisional).vae == F32  # a safe VAE will be float16: cast once, from float32
    assert loading_dtypes(provisional, {"vae_dtype": BF16}).vae == BF16
    assert loading_dtypes(choose_dtypes("cpu")) == choose_dtypes("cpu")


def test_vae_fallbacks_go_to_bfloat16_then_float32():
    cpu = torch.device("cpu")
    assert vae_fallbacks(F16, cpu) == [BF16, F32]
    assert vae_fallbacks(BF16, cpu) == [F32]
    assert vae_fallbacks(F32, cpu) == []


# ----------------------------------------------------------------------------------------- the Session
def test_session_says_its_policy_at_load_and_in_its_repr():
    s = Session(outputs_dir=None, progress=False)
    assert repr(s).startswith("Session(no model, cpu, float32")  # other settings may follow
    bundle = s.load(tiny_sd1())
    assert repr(s).startswith("Session(tiny-sd1, cpu, float32")
    assert "Precision: float32 (the CPU default)" in bundle.info["load_line"]
    assert isinstance(s.precision, Policy) and s.precision.vae == F32

    s = Session(outputs_dir=None, progress=False, dtype=F16)
    bundle = s.load(tiny_sd2())  # SD2-v: its config upcasts attention
    assert (bundle.unet.dtype, bundle.text_encoders[0].dtype, bundle.vae.dtype) == (F16, F16, BF16)
    assert repr(s).startswith("Session(tiny-sd2, cpu, UNet float16 · text encoders float16 · VAE bfloat16 · "
                              "upcast attention")
    assert "attention upcast to float32" in bundle.info["load_line"] and upcast_is_on(bundle.unet)


def test_bfloat16_on_the_cpu_matches_float32_within_tolerance():
    """bfloat16 keeps 8 bits of mantissa: on the tiny SD1 model, 3 Euler steps, the 8-bit pixels stay within a
    mean of 2 levels and a maximum of 24 levels of float32's."""
    images = {}
    for dtype in (F32, BF16):
        s = Session(outputs_dir=None, progress=False, dtype=dtype)
        bundle = s.load(tiny_sd1())
        assert {p.dtype for m in (bundle.unet, bundle.vae, *bundle.text_encoders) for p in m.parameters()} == {dtype}
        r = s.txt2img(sampler_name="Euler", **SMALL)
        assert not r.warnings
        images[dtype] = np.asarray(r.images[0]).astype(int)
    diff = np.abs(images[F32] - images[BF16])
    assert diff.mean() <= 2.0 and diff.max() <= 24


def test_per_component_overrides_on_the_cpu():
    s = Session(outputs_dir=None, progress=False, unet_dtype=BF16, vae_dtype=F16)
    bundle = s.load(tiny_sd1())
    assert (bundle.unet.dtype, bundle.text_encoders[0].dtype, bundle.vae.dtype) == (BF16, F32, F16)
    assert len(s.txt2img(**SMALL).images) == 1


def test_upcast_attention_gives_the_same_picture_in_float32():
    """The float32 attention processor computes what diffusers' SDPA processor does (float32 in, float32 out)."""
    s = Session(outputs_dir=None, progress=False)
    s.load(tiny_sd2())
    plain = s.txt2img(**SMALL)
    assert set_upcast_attention(s.model.unet, True) > 0
    upcast = s.txt2img(**SMALL)
    set_upcast_attention(s.model.unet, False)
    assert not upcast_is_on(s.model.unet)
    torch.testing.assert_close(upcast.latents, plain.latents, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ NaN/inf in the UNet
def test_finite_watch_names_the_first_bad_step():
    watch = FiniteWatch(torch.device("cpu"))
    x = torch.zeros(1, 4, 8, 8)
    assert watch.see(x, 0) is None
    x[0, 3, 7, 7] = float("inf")  # one element of 256
    assert watch.see(x, 1) == 1
    assert watch.see(torch.zeros(1), 2) == 1 and watch.first_bad() == 1
    assert FiniteWatch(torch.device("cpu")).first_bad(x, 5) == 5


def test_a_unet_failure_stops_at_its_step_and_says_what_to_try(session):
    """A UNet that overflows from its third call on: the job stops at step 3 (not at the end), names the UNet
    and its dtype, and suggests what to try."""
    calls = []

    def overflow_from_third_call(module, args, output):
        calls.append(1)
        return (output[0] * float("inf"),) if len(calls) >= 3 else None

    handle = session.model.unet.register_forward_hook(overflow_from_third_call)
    try:
        with pytest.raises(NonFiniteLatents, match=r"The UNet produced NaN/inf latents at step 3 of 6 of the "
                                                   r"txt2img pass although it ran in float32") as caught:
            session.txt2img(sampler_name="Euler", **{**SMALL, "steps": 6})
    finally:
        handle.remove()
    assert caught.value.step == 2
    assert len(calls) == 3  # stopped there: no UNet call after the bad step


def test_nan_injected_by_a_hook_in_place_is_caught_at_the_next_step(session):
    """A hook that writes inf into the latent in place (a returned latent is refused at once, see test_debug)."""
    def poison(state):
        if state.i == 1:
            state.x[0, 0, 0, 0] = float("inf")

    with pytest.raises(NonFiniteLatents, match="at step 3 of 4") as caught:
        session.txt2img(sampler_name="Euler", hooks=[poison], **{**SMALL, "steps": 4})
    assert caught.value.step == 2


def test_half_precision_unet_failure_suggests_upcast_and_bfloat16():
    s = Session(outputs_dir=None, progress=False, dtype=BF16)
    s.load(tiny_sd1())
    handle = s.model.unet.register_forward_hook(lambda m, a, out: (out[0] * float("nan"),))
    try:
        with pytest.raises(NonFiniteLatents, match=r"at step 1 of 3 of the txt2img pass in bfloat16.*"
                                                   r"upcast_attention=True.*dtype=torch.float32"):
            s.txt2img(**SMALL)
    finally:
        handle.remove()


# -------------------------------------------------------------------------------------- NaN/inf in the VAE
def _vae_session(**kw) -> Session:
    s = Session(outputs_dir=None, progress=False, **kw)
    s.load(tiny_sd1())
    return s


def test_a_vae_that_fails_in_float16_is_decoded_again_for_that_image_only():
    """NaN injected into the decoder's output while it runs in float16: each image is decoded again in bfloat16
    (float32's range), said in a warning, the Result's warnings and that image's infotext; the VAE keeps its
    float16 weights, bit for bit."""
    s = _vae_session(vae_dtype=F16)
    vae = s.model.vae
    weights = {k: v.clone() for k, v in vae.state_dict().items()}

    def nan_in_half(module, args, output):
        return output * float("nan") if output.dtype == F16 else None

    handle = vae.decoder.register_forward_hook(nan_in_half)
    try:
        with pytest.warns(UserWarning, match="in float16; the image was decoded again in bfloat16"):
            r = s.txt2img(batch_size=2, **SMALL)
    finally:
        handle.remove()
    assert len(r.images) == 2 and all(np.asarray(im).std() > 0 for im in r.images)  # not black
    assert [infotext.parse(t).get("VAE upcast") for t in r.infotexts] == ["bfloat16", "bfloat16"]
    assert sum("decoded again in bfloat16" in w for w in r.warnings) == 1
    assert vae.dtype == F16 and all(torch.equal(v, weights[k]) for k, v in vae.state_dict().items())
    again = s.txt2img(**infotext.to_params(r.infotexts[0]))  # the key sets nothing when read back
    assert "VAE upcast" not in again.infotexts[0]


def test_a_vae_that_really_overflows_in_float16_is_decoded_again():
    """No injection: the decoder's first convolution scaled by 1e5 overflows float16's 65504 (inf, then NaN in
    the GroupNorm after it); bfloat16 has the range, and the GroupNorm undoes the scale."""
    s = _vae_session(vae_dtype=F16)
    with torch.no_grad():
        s.model.vae.decoder.conv_in.weight.mul_(1e5)
        s.model.vae.decoder.conv_in.bias.mul_(1e5)
    with pytest.warns(UserWarning, match="decoded again in bfloat16"):
        r = s.txt2img(**SMALL)
    assert infotext.parse(r.infotexts[0])["VAE upcast"] == "bfloat16"
    assert np.asarray(r.images[0]).std() > 0


def test_an_image_decoded_without_trouble_has_no_upcast_key(session):
    r = session.txt2img(**SMALL)
    assert "VAE upcast" not in r.infotexts[0] and not r.warnings


def test_nan_in_a_later_batch_keeps_the_finished_batches(session):
    """NaN in batch 2 of 3 stops the job there, and the images of batch 1 are not lost; the message is a warning."""
    def poison(state):
        if state.extra["iteration"] == 1 and state.i == 1:
            state.x[0, 0, 0, 0] = float("nan")

    with pytest.warns(UserWarning, match=r"at step 3 of 4 .*Kept the 2 image\(s\) of the batches before it"):
        r = session.txt2img(sampler_name="Euler", hooks=[poison], **{**SMALL, "steps": 4, "batch_size": 2,
                                                                      "n_iter": 3})
    assert r.interrupted and len(r.images) == 2 and r.seeds == [r.seeds[0], r.seeds[0] + 1]
    assert torch.isfinite(r.latents).all()
