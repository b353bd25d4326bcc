"""Inpainting as a job (A1111's img2img with a mask): paste-back, the per-step latent blend, masked content, noise
multiplier, infotext keys both ways, bad masks. The mask arrays themselves are checked against A1111's own code in
tests/test_masks_a1111.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from nbdiffuse import Session, infotext, masks
from nbdiffuse.jobs.img2img import masked_init
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.models.vae import encode

BLUE_PROMPT = "a large blue square in the centre on a white background"


def _job(toy, red, mask, **kw):
    params = dict(prompt=BLUE_PROMPT, seed=1, steps=8, denoising_strength=1.0, inpaint_full_res=False)
    return toy.img2img([red], mask=mask, **{**params, **kw})


def _unet_inputs(toy):
    """Every UNet call's input latents (the scaled x the model sees), via a forward pre-hook."""
    seen = []
    handle = toy.model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("full_res", [False, True])
def test_pixels_outside_the_mask_are_the_init_image_exactly(toy, red, full_res):
    mask = masks.rectangle((64, 64), (8, 8, 40, 40))
    r = _job(toy, red, mask, inpaint_full_res=full_res, inpaint_full_res_padding=8, mask_blur=2)
    out, before = np.asarray(r.image).astype(int), np.asarray(red).astype(int)
    overlay_mask = np.asarray(r.inpaint[0].mask_for_overlay)
    assert r.image.size == red.size
    assert (overlay_mask == 0).sum() > 1000
    assert np.array_equal(out[overlay_mask == 0], before[overlay_mask == 0])  # the overlay: exact
    assert np.abs(out - before)[overlay_mask == 255].mean() > 40  # and the masked region did change
    assert (r.inpaint[0].crop_region is not None) == full_res


def test_a_masked_region_prompted_blue_turns_blue_and_the_rest_keeps_its_colour(toy, red):
    mask = masks.ellipse((64, 64), (12, 12, 52, 52))
    r = _job(toy, red, mask, inpainting_fill=1, mask_blur=0)
    out, before = np.asarray(r.image).astype(int), np.asarray(red).astype(int)
    inside = np.asarray(mask) == 255
    assert before[inside].mean(0)[0] > 150 > before[inside].mean(0)[2]  # it was red
    r_, g_, b_ = out[inside].mean(0)
    assert b_ > 150 and b_ > r_ + 50  # now blue
    assert np.array_equal(out[~inside], before[~inside])


def test_without_the_overlay_the_vae_round_trip_shows_outside_the_mask(toy, red):
    mask = masks.rectangle((64, 64), (16, 16, 48, 48))
    on, off = (_job(toy, red, mask, overlay_inpaint=o) for o in (True, False))
    keep = np.asarray(on.inpaint[0].mask_for_overlay) == 0
    a, b, c = (np.asarray(im).astype(int) for im in (on.image, off.image, red))
    assert np.array_equal(a[keep], c[keep])
    assert np.abs(b - c)[keep].max() > 0  # decoded latents, not the original pixels
    assert torch.equal(on.latents, off.latents)


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_every_step_blends_the_x0_prediction_with_the_clean_init_latents(toy, red, sampler):
    """A1111's CFGDenoiser: ``denoised * nmask + init_latent * mask`` after every model call, and the same blend of
    the final latents; seen by a step hook."""
    mask = masks.rectangle((64, 64), (16, 8, 48, 40))
    seen = []
    r = _job(toy, red, mask, sampler_name=sampler, denoising_strength=0.8, hooks=[lambda s: seen.append(s)])
    prep = r.inpaint[0]
    init = encode(toy.model, [prep.image]).cpu()
    keep = torch.from_numpy(prep.latent_mask == 0).expand_as(init[0])
    assert 0 < keep.float().mean() < 1
    for state in seen:
        assert torch.equal(state.denoised.cpu()[0][keep], init[0][keep])
    assert torch.equal(r.latents[0][keep], init[0][keep])
    assert not torch.equal(r.latents[0][~keep], init[0][~keep])


def test_timestep_samplers_blend_the_model_input_instead(toy, red):
    """DDIM, PLMS, UniPC (A1111's mask_before_denoising): the known region of what the UNet sees is the clean init
    latent (in VP scale, which is what the UNet takes), not the noised one."""
    mask = masks.rectangle((64, 64), (16, 8, 48, 40))
    seen, handle = _unet_inputs(toy)
    try:
        r = _job(toy, red, mask, sampler_name="DDIM", denoising_strength=0.8, cfg_scale=1.0)
    finally:
        handle.remove()
    prep = r.inpaint[0]
    init = encode(toy.model, [prep.image]).cpu()[0]
    keep = torch.from_numpy(prep.latent_mask == 0).expand_as(init)
    assert len(seen) >= 5
    for x_in in seen:
        torch.testing.assert_close(x_in[0].float().cpu()[keep], init[keep], atol=1e-5, rtol=1e-5)
        assert (x_in[0].float().cpu()[~keep] - init[~keep]).abs().max() > 0.1


def test_noise_multiplier_scales_the_first_noise(toy, red):
    """``initial_noise_multiplier=0``: the first UNet input is the init latents themselves (x = init + 0 * sigma)."""
    seen, handle = _unet_inputs(toy)
    try:
        r = toy.img2img([red], prompt="a cat", seed=1, steps=4, denoising_strength=0.5, cfg_scale=1.0,
                        initial_noise_multiplier=0.0, sampler_name="Euler")
    finally:
        handle.remove()
    init = encode(toy.model, [red]).cpu()[0]
    sigma0 = float(toy.sigmas(img2img=True, steps=4, denoising_strength=0.5, sampler_name="Euler")["first pass"][0])
    torch.testing.assert_close(seen[0][0].float().cpu(), init / (1 + sigma0**2) ** 0.5, atol=1e-5, rtol=1e-5)
    assert "Noise multiplier: 0" in r.infotexts[0]


def test_latent_noise_is_the_first_batchs_first_draw_for_every_batch(toy, red):
    """A1111 draws "latent noise" once per job from ``all_seeds[0:batch]`` (torch.randn from a CPU generator per
    seed), so every n_iter batch starts from the first batch's noise ("this needs to be fixed", says its code)."""
    p = GenerationParams(width=64, height=64, seed=10, batch_size=2, n_iter=2, inpainting_fill=2,
                         inpaint_full_res=False)
    prep = masks.prepare(red, masks.rectangle((64, 64), (0, 0, 32, 64)), width=64, height=64,
                         inpaint_full_res=False, inpainting_fill=2)
    init = encode(toy.model, [prep.image, prep.image])
    out, _ = masked_init(toy.model, p, init, [prep], [10, 11, 12, 13])
    hole = torch.from_numpy(prep.latent_mask == 1)
    for i, seed in enumerate([10, 11]):
        expected = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(out[i][:, hole], expected[:, hole])
        assert torch.equal(out[i][:, ~hole], init[i][:, ~hole])


def test_latent_nothing_zeroes_the_hole(toy, red):
    p = GenerationParams(width=64, height=64, inpainting_fill=3, inpaint_full_res=False)
    prep = masks.prepare(red, masks.rectangle((64, 64), (0, 0, 32, 64)), width=64, height=64,
                         inpaint_full_res=False, inpainting_fill=3)
    init = encode(toy.model, [prep.image])
    out, blend = masked_init(toy.model, p, init, [prep], [1])
    hole = torch.from_numpy(prep.latent_mask == 1)
    assert torch.count_nonzero(out[0][:, hole]) == 0
    assert torch.equal(out[0][:, ~hole], init[0][:, ~hole])
    assert blend.soft is None


# A1111 1.10 writes these keys (init() and sample() of StableDiffusionProcessingImg2Img) only when they differ from
# its defaults, after "Denoising strength" and in this order.
@pytest.mark.parametrize("kw, expected", [
    (dict(mask_blur=4, inpainting_fill=1, inpaint_full_res=False), ["Mask blur: 4"]),
    (dict(mask_blur=0, inpainting_fill=1, inpaint_full_res=False), []),
    (dict(mask_blur_x=4, mask_blur_y=2, inpainting_fill=1, inpaint_full_res=False), []),
    (dict(mask_blur=4, inpainting_fill=0, inpaint_full_res=True, inpaint_full_res_padding=32),
     ["Mask blur: 4", "Inpaint area: Only masked", "Masked area padding: 32", "Masked content: fill"]),
    (dict(mask_blur=2, inpainting_fill=2, inpaint_full_res=False, inpainting_mask_invert=1),
     ["Mask mode: Inpaint not masked", "Mask blur: 2", "Masked content: latent noise"]),
    (dict(mask_blur=0, inpainting_fill=3, inpaint_full_res=False, initial_noise_multiplier=0.8),
     ["Masked content: latent nothing", "Noise multiplier: 0.8"]),
])
def test_infotext_keys_as_a1111_writes_them(toy, red, kw, expected):
    r = toy.img2img([red], mask=masks.rectangle((64, 64), (16, 16, 40, 40)), prompt="x", seed=1, steps=2,
                    denoising_strength=0.5, **kw)
    line = r.infotexts[0].splitlines()[-1]
    pairs = [part.strip() for part in line.split(",")]
    after = pairs[pairs.index("Denoising strength: 0.5") + 1:]
    written = [q for q in after if q.split(":")[0] in ("Mask mode", "Mask blur", "Inpaint area",
                                                      "Masked area padding", "Masked content", "Noise multiplier")]
    assert written == expected
    # and reading the text back gives the job's settings (A1111's parse defaults for what was left out)
    params = infotext.to_params(r.infotexts[0])
    again = GenerationParams.from_kwargs(**{k: v for k, v in params.items() if k in GenerationParams().to_dict()})
    p = r.params
    for name in ("inpainting_fill", "inpaint_full_res", "inpainting_mask_invert", "noise_multiplier"):
        assert getattr(again, name) == getattr(p, name), name
    if p.mask_blur_x == p.mask_blur_y and p.mask_blur_x:
        assert again.mask_blur_x == p.mask_blur_x
    if p.inpaint_full_res:
        assert again.inpaint_full_res_padding == p.inpaint_full_res_padding


def test_a1111_inpainting_infotext_reads_with_its_parse_defaults():
    # a real A1111 1.8 parameter line (INPAINT-UPSCALE.md §1.1) and one with no inpainting key but Mask blur
    text = ("a cat\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: "
            "abc, Denoising strength: 0.45, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, "
            "Masked content: fill, Version: v1.8.0")
    p = infotext.to_params(text)
    assert (p["mask_blur"], p["inpaint_full_res"], p["inpaint_full_res_padding"], p["inpainting_fill"],
            p["inpainting_mask_invert"]) == (4, True, 32, 0, 0)
    p = infotext.to_params("a cat\nSteps: 30, Seed: 1, Size: 512x512, Denoising strength: 0.45, Mask blur: 8")
    # what A1111's parse assumes: Masked content original, Inpaint area Whole picture, padding 32
    assert (p["inpainting_fill"], p["inpaint_full_res"], p["inpaint_full_res_padding"]) == (1, False, 32)
    with pytest.raises(ValueError, match="Masked content"):
        infotext.to_params("a\nSteps: 2, Seed: 1, Size: 64x64, Masked content: lots")


def test_blank_mask_with_only_masked_falls_back_to_img2img_like_a1111(toy, red):
    blank = Image.new("L", (64, 64), 0)
    with pytest.warns(UserWarning, match="mask is blank"):
        r = toy.img2img([red], mask=blank, prompt=BLUE_PROMPT, seed=1, steps=4, denoising_strength=0.5,
                        inpaint_full_res=True)
    plain = toy.img2img([red], prompt=BLUE_PROMPT, seed=1, steps=4, denoising_strength=0.5)
    assert r.inpaint is None
    assert np.array_equal(np.asarray(r.image), np.asarray(plain.image))
    assert "Inpaint area" not in r.infotexts[0]


def test_empty_mask_on_the_whole_picture_returns_the_picture_and_says_so(toy, red):
    with pytest.warns(UserWarning, match="empty"):
        r = toy.img2img([red], mask=Image.new("L", (64, 64), 0), prompt=BLUE_PROMPT, seed=1, steps=4,
                        denoising_strength=0.5, inpaint_full_res=False)
    assert np.array_equal(np.asarray(r.image), np.asarray(red))


@pytest.mark.parametrize("mask, match", [
    ("no/such/mask.png", "mask"),
    (np.zeros((64, 64, 7)), "mask"),
    (12, "mask"),
])
def test_bad_masks_fail_before_any_model_call(toy, red, mask, match):
    seen, handle = _unet_inputs(toy)
    try:
        with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match):
            toy.img2img([red], mask=mask, prompt="x", steps=2)
    finally:
        handle.remove()
    assert seen == []


def test_latent_mask_needs_a_mask(toy, red):
    from nbdiffuse.jobs.img2img import prepare_masks

    with pytest.raises(ValueError, match="latent_mask needs a mask"):
        prepare_masks(GenerationParams(), [red], None, Image.new("L", (64, 64), 255))


def test_session_steps_takes_a_mask_and_hooks_see_every_step(toy, red):
    run = toy.steps(init_images=[red], mask=masks.rectangle((64, 64), (0, 0, 32, 32)), prompt=BLUE_PROMPT,
                    seed=1, steps=4, denoising_strength=1.0, inpaint_full_res=False)
    states = list(run)
    assert len(states) == 4
    assert run.result.inpaint is not None


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_an_inpainting_checkpoint_gets_the_mask_and_the_masked_picture(tmp_path, weight):
    """A 9-channel UNet sees, after the latents, A1111's ``inpainting_image_conditioning``: the processed mask
    (nearest-resized to the latents, rounded) and the VAE latents of ``lerp(img, img * (1 - mask), weight)``."""
    from nbdiffuse.testing import tiny_sd1

    s = Session(outputs_dir=tmp_path, progress=False)
    bundle = s.load(tiny_sd1(inpainting=True))
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    seen, handle = _unet_inputs(s)
    try:
        r = s.img2img([picture], mask=masks.rectangle((64, 64), (0, 0, 32, 64)), prompt="x", seed=1, steps=2,
                      denoising_strength=0.5, inpaint_full_res=False, inpainting_fill=1, mask_blur=0,
                      inpainting_mask_weight=weight)
    finally:
        handle.remove()
    x_in = seen[0].float().cpu()
    assert x_in.shape[1] == 9
    prep = r.inpaint[0]
    m = torch.from_numpy(np.asarray(prep.mask, dtype=np.float32) / 255).round()[None, None]
    expected_mask = torch.nn.functional.interpolate(m, size=(8, 8))[0, 0]
    pixels = torch.from_numpy(np.asarray(prep.image, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    masked = pixels + (pixels * (1 - m) - pixels) * weight
    expected_latents = encode(bundle, masked).cpu()[0]
    for row in x_in:  # cond and uncond rows get the same conditioning
        assert torch.equal(row[4], expected_mask)
        torch.testing.assert_close(row[5:], expected_latents, atol=1e-5, rtol=1e-5)
    assert f"Conditional mask weight: {weight:g}" in r.infotexts[0]


def test_soft_inpainting_runs_as_a1111s_extension(toy, red):
    """Soft inpainting: fractional masks (A1111's process() turns mask_round off), the per-step blend keeps the
    unmasked latents (t = 0 there), no final blend, and the final composite is the adaptive mask (gradual, wider
    than the blurred mask, 0 far from the change); its keys come with the payload A1111's API takes."""
    picture = red.resize((128, 128))
    mask = masks.ellipse((128, 128), (40, 40, 88, 88))
    seen = []
    kw = dict(prompt=BLUE_PROMPT, seed=1, steps=6, denoising_strength=0.75, inpaint_full_res=False, mask_blur=4,
              inpainting_fill=1, width=128, height=128)
    soft = toy.img2img([picture], mask=mask, hooks=[seen.append],
                       alwayson_scripts={"Soft inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}, **kw)
    plain = toy.img2img([picture], mask=mask, **kw)
    lat = soft.inpaint[0].latent_mask
    assert ((lat > 0) & (lat < 1)).any()  # not rounded
    assert set(np.unique(plain.inpaint[0].latent_mask)) <= {0.0, 1.0}
    init = seen[0].extra["init"].cpu()[0]
    keep = torch.from_numpy(lat == 0).expand_as(init)
    for state in seen:
        torch.testing.assert_close(state.denoised.cpu()[0][keep], init[keep], atol=1e-4, rtol=1e-4)
    composite = np.asarray(soft.overlay_masks[0]).astype(int)
    doubled = np.asarray(plain.overlay_masks[0]).astype(int)
    assert ((composite > 0) & (composite < 255)).sum() > 3 * ((doubled > 0) & (doubled < 255)).sum()
    assert (composite == 0).sum() > 1000  # far from the change the original is pasted back
    out, before = np.asarray(soft.image).astype(int), np.asarray(picture).astype(int)
    assert np.array_equal(out[composite == 0], before[composite == 0])
    line = soft.infotexts[0].splitlines()[-1]
    assert ("Soft inpainting enabled: True, Soft inpainting schedule bias: 1, Soft inpainting preservation strength: "
            "0.5, Soft inpainting transition contrast boost: 4, Soft inpainting mask influence: 0, Soft inpainting "
            "difference threshold: 0.5, Soft inpainting difference contrast: 2, Mask blur: 4") in line
    assert infotext.to_params(soft.infotexts[0])["soft_inpainting"]["inpaint_detail_preservation"] == 4.0


def test_loopback_inpaints_the_same_region_every_loop(toy, red):
    mask = masks.rectangle((64, 64), (16, 16, 48, 48))
    r = toy.loopback([red], loops=3, mask=mask, prompt=BLUE_PROMPT, seed=1, steps=4, denoising_strength=0.8,
                     inpaint_full_res=False, mask_blur=0)
    keep = np.asarray(mask) == 0
    assert len(r.images) == 3
    for image in r.images:  # every loop pastes the (unchanged) surroundings back
        assert np.array_equal(np.asarray(image)[keep], np.asarray(red)[keep])
    assert all("Mask blur" not in t and "Masked content: fill" in t for t in r.infotexts)
