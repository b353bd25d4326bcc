"""Inpainting checkpoints (9-channel UNets): loading from single files and diffusers folders, A1111's image
conditioning (txt2img's grey image and all-ones mask, the hires pass's, the masked image), the UNet input it makes,
and "Conditional mask weight" in the infotext.

The expected conditionings are computed here straight from the diffusers VAE (``vae.encode(...).latent_dist.mean``
times the scaling factor), not through nbdiffuse's encode path.
"""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from nbdiffuse import Session
from nbdiffuse.infotext import to_params
from nbdiffuse.models import inpainting_conditioning, load_checkpoint, save_checkpoint
from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.testing import tiny_checkpoint, tiny_sd1, tiny_sdxl

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inpaint")
    return {arch: tiny_checkpoint(d / f"{arch}-inpainting.safetensors", arch, inpainting=True)
            for arch in ("sd1", "sd2", "sdxl")}


def vae_latents(bundle, pixels):
    """The oracle: diffusers' VAE mean times the scaling factor, one image at a time."""
    vae = bundle.vae
    with torch.no_grad():
        return torch.cat([vae.encode(p[None]).latent_dist.mean for p in pixels]) * vae.config.scaling_factor


def unet_inputs(bundle):
    """Record every UNet call's input (the latents plus any extra channels)."""
    seen = []
    handle = bundle.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen, handle


def with_channels(path, dst, channels):
    """A copy of the checkpoint at ``path`` whose UNet takes ``channels`` input channels (an instruct-pix2pix
    shaped file for 8)."""
    tensors = load_file(path)
    w = tensors[CONV_IN]
    tensors[CONV_IN] = torch.cat([w, w[:, :1]], 1)[:, :channels].contiguous()
    save_file(tensors, dst)
    return dst


# ---------------------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_inpainting_checkpoint_loads_with_nine_input_channels(files, arch):
    assert load_file(files[arch])[CONV_IN].shape[1] == 9  # the LDM key A1111 tests
    bundle = load_checkpoint(files[arch], hash=False)
    assert bundle.arch == arch and bundle.is_inpainting and bundle.info["inpainting"] is True
    assert bundle.unet.config.in_channels == 9 and bundle.latent_channels == 4
    assert bundle.info["variant"].endswith("inpainting")


def test_text_to_image_checkpoint_is_not_inpainting(tmp_path):
    bundle = load_checkpoint(tiny_checkpoint(tmp_path / "plain.safetensors"), hash=False)
    assert not bundle.is_inpainting and bundle.info["inpainting"] is False and bundle.latent_channels == 4


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_inpainting_checkpoint_round_trips_through_the_key_map(files, arch, tmp_path):
    bundle = load_checkpoint(files[arch], hash=False)
    again = save_checkpoint(bundle, tmp_path / "again.safetensors")
    a, b = load_file(files[arch]), load_file(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sd2_inpainting_is_epsilon_without_the_v_test(files, tmp_path):
    # no metadata: A1111 picks v2-inpainting-inference.yaml (eps) for a 9-channel SD2 UNet before any v test
    bare = tmp_path / "512-inpainting.safetensors"
    save_file(load_file(files["sd2"]), bare)
    bundle = load_checkpoint(bare, hash=False)
    assert bundle.prediction_type == "epsilon" and "inpainting" in bundle.info["prediction_source"]
    assert bundle.native_size == (512, 512)


def test_session_load_says_it_is_an_inpainting_model(files, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    bundle = s.load(files["sd1"], hash=False)
    assert bundle.is_inpainting and "inpainting model" in bundle.info["load_line"]


def test_instruct_pix2pix_checkpoint_is_refused_by_name(files, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    s.load(tiny_sd1())
    ip2p = with_channels(files["sd1"], tmp_path / "ip2p.safetensors", 8)
    with pytest.raises(ModelLoadError, match="8 input channels: an instruct-pix2pix model") as e:
        s.load(ip2p)
    assert "ip2p.safetensors" in str(e.value)
    assert s.model is not None and not s.model.is_inpainting  # the previous model stays loaded


def test_other_input_channel_counts_are_refused(files, tmp_path):
    odd = with_channels(files["sd1"], tmp_path / "odd.safetensors", 7)
    with pytest.raises(ModelLoadError, match=r"7 input / 4 output channels.*inpainting \(9/4\)"):
        load_checkpoint(odd, hash=False)


def test_diffusers_inpainting_folder_loads_and_instruct_pix2pix_folder_is_refused(tmp_path):
    from nbdiffuse.models.loading import load_diffusers_folder
    from nbdiffuse.testing import save_diffusers

    folder = save_diffusers(tiny_sdxl(inpainting=True), tmp_path / "sdxl-inpainting-0.1")
    bundle = load_diffusers_folder(folder)
    assert bundle.arch == "sdxl" and bundle.is_inpainting and bundle.info["inpainting"] is True

    config = folder / "unet" / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "in_channels": 8}))
    with pytest.raises(ValueError, match="instruct-pix2pix"):
        load_diffusers_folder(folder)


# --------------------------------------------------------------------------------------------- conditioning

def test_inpainting_conditioning_is_the_mask_then_the_masked_image_latents():
    bundle = tiny_sd1(inpainting=True)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(64, 64)
    mask[8:40, 16:64] = 0.8  # rounds to 1
    mask[40:48] = 0.3  # rounds to 0
    cond = inpainting_conditioning(bundle, image, (8, 8), mask)
    hard = (mask > 0.5).float()
    expected_mask = F.interpolate(hard[None, None], size=(8, 8), mode="nearest")
    assert torch.equal(cond[:, :1], expected_mask.expand(2, -1, -1, -1))
    assert torch.allclose(cond[:, 1:], vae_latents(bundle, image * (1 - hard)), atol=1e-5)


def test_inpainting_conditioning_weight_lerps_towards_the_whole_image():
    bundle = tiny_sd1(inpainting=True)
    torch.manual_seed(1)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.ones(64, 64)
    cond = inpainting_conditioning(bundle, image, (8, 8), mask, weight=0.25)
    assert torch.allclose(cond[:, 1:], vae_latents(bundle, image * 0.75), atol=1e-5)
    soft = torch.full((64, 64), 0.4)
    kept = inpainting_conditioning(bundle, image, (8, 8), soft, round_mask=False)
    assert torch.allclose(kept[:, :1], torch.full((1, 1, 8, 8), 0.4))
    assert torch.allclose(kept[:, 1:], vae_latents(bundle, image * 0.6), atol=1e-5)


def test_sdxl_inpainting_conditioning_always_rounds_the_mask():
    bundle = tiny_sdxl(inpainting=True)
    soft = torch.full((64, 64), 0.4)
    cond = inpainting_conditioning(bundle, torch.zeros(1, 3, 64, 64), (8, 8), soft, round_mask=False)
    assert torch.equal(cond[:, :1], torch.zeros(1, 1, 8, 8))


def test_inpainting_conditioning_rejects_a_mask_of_another_size():
    with pytest.raises(ValueError, match=r"mask is \(32, 32\), the source image \(64, 64\)"):
        inpainting_conditioning(tiny_sd1(inpainting=True), torch.zeros(1, 3, 64, 64), (8, 8), torch.ones(32, 32))


# ------------------------------------------------------------------------------------------------------ jobs

@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_txt2img_gives_the_unet_a_grey_image_and_an_all_ones_mask(files, arch, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    bundle = s.load(files[arch], hash=False)
    seen, handle = unet_inputs(bundle)
    try:
        result = s.txt2img(prompt="a red square", negative_prompt="blue", steps=3, width=64, height=80, seed=7,
                           batch_size=2, cfg_scale=5)
    finally:
        handle.remove()
    assert len(result.images) == 2 and result.images[0].size == (64, 80)
    grey = vae_latents(bundle, torch.zeros(1, 3, 80, 64))[0]
    assert seen and all(x.shape[1:] == (9, 10, 8) for x in seen)
    for x in seen:  # every row: the positive and the negative one of each image
        assert torch.equal(x[:, 4], torch.ones_like(x[:, 4]))
        assert torch.allclose(x[:, 5:], grey.expand(len(x), -1, -1, -1), atol=1e-5)


def test_txt2img_with_hires_runs_the_second_pass_with_the_hires_size_conditioning(files, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    bundle = s.load(files["sd1"], hash=False)
    seen, handle = unet_inputs(bundle)
    try:
        result = s.txt2img(prompt="a cat", steps=3, width=64, height=64, seed=3, enable_hr=True, hr_scale=1.5,
                           denoising_strength=0.6)
    finally:
        handle.remove()
    assert result.images[0].size == (96, 96)
    second = [x for x in seen if x.shape[-1] == 12]
    assert second and all(x.shape[1] == 9 for x in seen)
    grey = vae_latents(bundle, torch.zeros(1, 3, 96, 96))[0]
    for x in second:
        assert torch.equal(x[:, 4], torch.ones_like(x[:, 4]))
        assert torch.allclose(x[:, 5:], grey.expand(len(x), -1, -1, -1), atol=1e-5)


def test_hires_pass_with_a_mask_weight_below_one_encodes_the_decoded_upscale(files, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    bundle = s.load(files["sd1"], hash=False)
    first = s.txt2img(prompt="a cat", steps=3, width=64, height=64, seed=5, inpainting_mask_weight=0.5)
    seen, handle = unet_inputs(bundle)
    try:
        s.hires_fix(first, hr_upscaler="Latent (nearest)", hr_scale=2, denoising_strength=0.5)
    finally:
        handle.remove()
    z = F.interpolate(first.latents, size=(16, 16), mode="nearest")
    with torch.no_grad():
        pixels = bundle.vae.decode(z / bundle.vae.config.scaling_factor).sample
    expected = vae_latents(bundle, torch.lerp(pixels, pixels * 0, 0.5))[0]
    assert seen and all(x.shape[1:] == (9, 16, 16) for x in seen)
    for x in seen:
        assert torch.equal(x[:, 4], torch.ones_like(x[:, 4]))
        assert torch.allclose(x[:, 5:], expected.expand(len(x), -1, -1, -1), atol=1e-4)


def test_hires_with_a_cropping_resize_crops_the_conditioning_too(files, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    bundle = s.load(files["sdxl"], hash=False)
    seen, handle = unet_inputs(bundle)
    try:
        result = s.txt2img(prompt="a cat", steps=3, width=64, height=64, seed=3, enable_hr=True,
                           hr_upscaler="Lanczos", hr_resize_x=96, hr_resize_y=80, denoising_strength=0.5)
    finally:
        handle.remove()
    assert result.images[0].size == (96, 80)
    assert seen[-1].shape[1:] == (9, 10, 12)


# -------------------------------------------------------------------------------------------------- infotext

def weight_key(text):
    m = re.search(r"Conditional mask weight: ([^,]+)", text)
    return m and m[1]


def test_conditional_mask_weight_is_written_as_a1111_does(files, tmp_path):
    s = Session(outputs_dir=tmp_path / "out", progress=False)
    args = dict(prompt="a cat", steps=2, width=64, height=64, seed=1)
    s.load(files["sd1"], hash=False)
    text = s.txt2img(**args, inpainting_mask_weight=0.75).infotexts[0]
    assert weight_key(text) == "0.75"
    assert to_params(text)["inpainting_mask_weight"] == 0.75
    # its slot: after Denoising strength, before Clip skip (A1111's create_infotext)
    text = s.txt2img(**args, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, clip_skip=2).infotexts[0]
    assert text.index("Denoising strength") < text.index("Conditional mask weight") < text.index("Clip skip")
    # SDXL inpainting: txt2img's conditioning is not A1111's "inpainting conditioning" (its key is crossattn) ...
    s.load(files["sdxl"], hash=False)
    assert weight_key(s.txt2img(**args).infotexts[0]) is None
    assert weight_key(s.txt2img(**args, enable_hr=True, hr_scale=1.5, denoising_strength=0.5).infotexts[0]) is None
    # ... but its hires pass encodes the upscaled image with a pixel upscaler, or with a latent one below weight 1
    assert weight_key(s.txt2img(**args, enable_hr=True, hr_scale=1.5, denoising_strength=0.5,
                                hr_upscaler="Lanczos").infotexts[0]) is not None
    assert weight_key(s.txt2img(**args, enable_hr=True, hr_scale=1.5, denoising_strength=0.5,
                                inpainting_mask_weight=0.5).infotexts[0]) == "0.5"
    # an ordinary model: never
    s.load(tiny_sd1())
    assert weight_key(s.txt2img(**args, enable_hr=True, hr_scale=1.5, denoising_strength=0.5).infotexts[0]) is None
