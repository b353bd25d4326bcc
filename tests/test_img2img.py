"""img2img and loopback: A1111's step rule, resize modes, extra noise, batches, infotexts, bad inputs."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from nbdiffuse import infotext
from nbdiffuse.jobs.driver import plan_pass, run_pass
from nbdiffuse.jobs.img2img import (
    img2img_step_counts,
    img2img_steps,
    loopback_denoising,
    loopback_steps,
)
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.upscalers import resize_image
from nbdiffuse.models.vae import encode
from nbdiffuse.prompts.conditioning import TextEncoder
from nbdiffuse.sampling.base import StepState
from nbdiffuse.sampling.base import run_to_end as run
from nbdiffuse.sampling.denoiser import Denoiser
from nbdiffuse.sampling.noise import randn
from nbdiffuse.sampling.registry import SAMPLERS
from nbdiffuse.sampling.schedules import compute_sigmas

BASE = dict(prompt="a red circle", negative_prompt="blue", steps=10, width=64, height=64, seed=7,
            sampler_name="Euler")


class Jobs:
    """What ``Session.img2img`` / ``Session.loopback`` do, as plain calls."""

    def __init__(self, bundle, outputs_dir=None):
        self.bundle, self.encoder, self.outputs_dir = bundle, TextEncoder(bundle), outputs_dir

    def img2img(self, init_images=None, hooks=(), **params):
        p = GenerationParams.from_kwargs(**params)
        return run(img2img_steps(self.bundle, p, self.encoder, init_images, hooks=hooks,
                                 outputs_dir=self.outputs_dir))

    def loopback(self, init_images=None, loops=4, final_denoising_strength=0.5, denoising_curve="Linear",
                 **params):
        p = GenerationParams.from_kwargs(**params)
        return run(loopback_steps(self.bundle, p, self.encoder, init_images, loops=loops,
                                  final_denoising_strength=final_denoising_strength,
                                  denoising_curve=denoising_curve, outputs_dir=self.outputs_dir))


@pytest.fixture
def jobs(sd1, tmp_path):
    return Jobs(sd1, tmp_path / "outputs")


def gradient(w=64, h=64):
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return Image.fromarray(np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                                           np.full((h, w, 1), 128.0)], axis=2).astype(np.uint8))


# ------------------------------------------------------------------------------------------ the step rule

@pytest.mark.parametrize("denoise", [0.0, 0.3, 0.75, 0.999, 1.0])
def test_step_rule_runs_t_enc_plus_one_steps_at_the_end_of_the_schedule(jobs, denoise):
    sigmas = []
    r = jobs.img2img([gradient()], **BASE, denoising_strength=denoise, hooks=[lambda s: sigmas.append(s.sigma)])
    t_enc = int(min(denoise, 0.999) * 10)
    assert r.timings["model_calls"] == t_enc + 1 == len(sigmas)  # Euler: one model call per step
    want = compute_sigmas("Uniform", 10, jobs.bundle.sigmas)[10 - t_enc - 1:-1]
    assert torch.allclose(torch.tensor(sigmas), want, rtol=1e-6)


def test_step_counts():
    assert img2img_step_counts(20, 0.75) == (20, 15)
    assert img2img_step_counts(20, 1.0) == (20, 19)
    assert img2img_step_counts(20, 0.0) == (20, 0)
    assert img2img_step_counts(10, 0.45, fixed_steps=True) == (22, 9)


def test_second_order_sampler_counts_calls_twice(jobs):
    r = jobs.img2img([gradient()], **{**BASE, "sampler_name": "Heun"}, denoising_strength=0.5)
    assert r.timings["model_calls"] == 2 * 6 - 1  # Heun: 6 steps, the last to sigma 0 is one call


# ------------------------------------------------------------------------------------------ start latent

def fake_spec():
    def sampler(model, x, sigmas, *, noise=None):
        yield StepState(0, 1, float(sigmas[0]), 0.0, x, x)
        return x

    return dataclasses.replace(SAMPLERS["Euler"], name="fake", func=sampler)


@pytest.mark.parametrize("extra", [0.0, 0.25])
def test_start_latent_is_init_plus_noise_times_sigma0_plus_extra_noise(sd1, extra):
    enc = TextEncoder(sd1)
    p = GenerationParams(**BASE, extra_noise=extra, subseed=3)
    sigmas = compute_sigmas("Karras", 10, sd1.sigmas)[4:]
    plan = dataclasses.replace(plan_pass(sd1, p, enc, "a", "", sigmas, extra_noise=p.extra_noise),
                               spec=fake_spec(), options={}, cfg_scale=7.0)
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    gen = run_pass(plan, Denoiser(sd1.unet, sd1.alphas_cumprod), [7, 8], [3, 4], (4, 8, 8), init=init)
    x = run(gen).x
    noise = torch.stack([randn(7, (4, 8, 8)), randn(8, (4, 8, 8))])
    assert torch.allclose(x, init + noise * sigmas[0] + noise * extra, atol=1e-5)


def test_extra_noise_in_infotext_and_changes_the_image(jobs):
    a = jobs.img2img([gradient()], **BASE, denoising_strength=0.5)
    b = jobs.img2img([gradient()], **BASE, denoising_strength=0.5, extra_noise=0.2)
    assert not torch.equal(a.latents, b.latents)
    pa, pb = infotext.parse(a.infotexts[0]), infotext.parse(b.infotexts[0])
    assert pa["Denoising strength"] == "0.5" and "Extra noise" not in pa
    assert pb["Extra noise"] == "0.2"
    assert infotext.to_params(b.infotexts[0])["extra_noise"] == 0.2


def test_encode_uses_the_posterior_mean_deterministically(sd1):
    a, b = encode(sd1, [gradient()]), encode(sd1, [gradient()])
    assert torch.equal(a, b) and a.shape == (1, 4, 8, 8)


# ------------------------------------------------------------------------------------------ resize modes

def test_resize_modes_like_a1111():
    im = Image.new("RGB", (100, 50), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 50))  # a blue band on the left
    just = resize_image(0, im, 64, 64)
    assert just.size == (64, 64) and just.getpixel((1, 32))[2] > 200  # stretched: band still at the edge
    crop = resize_image(1, im, 64, 64)  # cover 128x64 then crop centred: the band is cut off
    assert crop.size == (64, 64) and crop.getpixel((1, 32))[0] > 200
    fill = resize_image(2, im, 64, 64)  # fit 64x32 centred, rows above/below filled from the edge rows
    assert fill.size == (64, 64)
    a = np.asarray(fill)
    assert np.array_equal(a[0], a[15]) and np.abs(a[16].astype(int) - a[15]).max() < 40
    assert np.array_equal(a[-1], a[48])


def test_resize_mode_3_is_a_bilinear_latent_resize(jobs, sd1):
    small = gradient(32, 32)
    p = GenerationParams(**BASE, resize_mode=3)
    from nbdiffuse.jobs.img2img import init_latents

    want = torch.nn.functional.interpolate(encode(sd1, [small]), size=(8, 8), mode="bilinear")
    assert torch.equal(init_latents(sd1, p, [small]), want)
    r = jobs.img2img([small], **BASE, resize_mode=3, denoising_strength=0.3)
    assert r.images[0].size == (64, 64)


# ------------------------------------------------------------------------------------------ batches, seeds

def test_one_init_image_fills_the_batch_with_seed_plus_i(jobs):
    batch = jobs.img2img([gradient()], **BASE, batch_size=2, denoising_strength=0.6)
    single = jobs.img2img([gradient()], **{**BASE, "seed": 8}, denoising_strength=0.6)
    assert batch.seeds == [7, 8] and len(batch.images) == 2
    assert torch.equal(batch.latents[1], single.latents[0])


def test_one_image_each_and_n_iter(jobs):
    images = [gradient(), gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    r = jobs.img2img(images, **BASE, batch_size=2, n_iter=2, denoising_strength=0.3)
    assert r.seeds == [7, 8, 9, 10] and len(r.images) == 4
    assert r.paths[0].parent.parent.name == "img2img-images"
    assert infotext.read_png(r.paths[0]) == r.infotexts[0]
    again = jobs.img2img(images[1], **{**BASE, "seed": 8}, denoising_strength=0.3)
    assert torch.equal(r.latents[1], again.latents[0])


@pytest.mark.parametrize("batch_size", [2, 3])
def test_every_image_of_a_batch_reproduces_alone_from_its_infotext_pixel_for_pixel(jobs, batch_size):
    # different init images, encoded one at a time (as A1111 does): a batched VAE encode rounds differently
    images = [gradient(128, 128), gradient(128, 128).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              gradient(128, 128).transpose(Image.Transpose.FLIP_TOP_BOTTOM)][:batch_size]
    r = jobs.img2img(images, **{**BASE, "width": 128, "height": 128, "steps": 6, "sampler_name": "DPM++ 2M SDE",
                                "subseed": 3, "subseed_strength": 0.4}, batch_size=batch_size, denoising_strength=0.6)
    for i in range(batch_size):
        alone = jobs.img2img(images[i], **infotext.to_params(r.infotexts[i]))
        assert alone.subseeds == [3 + i] and alone.infotexts[0] == r.infotexts[i]
        assert torch.equal(alone.latents[0], r.latents[i]), i
        assert np.array_equal(np.asarray(alone.images[0]), np.asarray(r.images[i])), i


def test_same_inputs_same_pixels(jobs):
    a = jobs.img2img([gradient()], **{**BASE, "sampler_name": "Euler a"}, denoising_strength=0.5)
    b = jobs.img2img([gradient()], **{**BASE, "sampler_name": "Euler a"}, denoising_strength=0.5)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


@pytest.mark.parametrize("images, kw, error, match", [
    (None, {}, ValueError, "needs an init image"),
    ([], {}, ValueError, "needs an init image"),
    ([gradient(), gradient(), gradient()], dict(batch_size=2), ValueError, "batch_size=3"),
    (["/nonexistent.png"], {}, FileNotFoundError, "nonexistent"),
    ([np.zeros((8, 8, 3))], {}, TypeError, "PIL images"),
    ([gradient()], dict(denoising_strength=2), ValueError, "denoising_strength"),
    ([gradient()], dict(resize_mode=4), ValueError, "resize_mode"),
])
def test_bad_img2img_inputs_fail_before_work(jobs, images, kw, error, match):
    calls = []
    with pytest.raises(error, match=match):
        jobs.img2img(images, hooks=[calls.append], **{**BASE, **kw})
    assert not calls


# ------------------------------------------------------------------------------------------ loopback

def test_loopback_denoising_curves():
    assert loopback_denoising(0, 4, 0.8, 0.2) == 0.8
    assert loopback_denoising(3, 4, 0.8, 0.2) == pytest.approx(0.2)
    assert loopback_denoising(1, 3, 0.8, 0.2, "Linear") == pytest.approx(0.5)
    assert loopback_denoising(1, 3, 0.8, 0.2, "Aggressive") < 0.5 < loopback_denoising(1, 3, 0.8, 0.2, "Lazy")
    assert loopback_denoising(0, 1, 0.8, 0.2) == 0.8


def test_loopback_feeds_each_output_back_with_the_next_seed(jobs):
    r = jobs.loopback([gradient()], loops=3, final_denoising_strength=0.3, **{**BASE, "steps": 4},
                      denoising_strength=0.7)
    assert r.seeds == [7, 8, 9] and len(r.images) == 3
    strengths = [infotext.parse(t)["Denoising strength"] for t in r.infotexts]
    assert strengths == ["0.7", "0.5", "0.3"]
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Final denoising strength"] == "0.3" and parsed["Denoising curve"] == "Linear"
    second = jobs.img2img([r.images[0]], **{**BASE, "steps": 4, "seed": 8}, denoising_strength=0.5)
    assert torch.allclose(second.latents[0], r.latents[1], atol=1e-4)


def test_loopback_with_n_iter_keeps_the_last_image_of_each_batch(jobs):
    r = jobs.loopback([gradient()], loops=2, **{**BASE, "steps": 2, "n_iter": 2})
    assert r.seeds == [8, 10] and len(r.images) == 2


def test_loopback_bad_inputs(jobs):
    with pytest.raises(ValueError, match="loops"):
        jobs.loopback([gradient()], loops=0, **BASE)
    with pytest.raises(ValueError, match="denoising_curve"):
        jobs.loopback([gradient()], denoising_curve="Steep", **BASE)
    with pytest.raises(ValueError, match="init image"):
        jobs.loopback(None, **BASE)
