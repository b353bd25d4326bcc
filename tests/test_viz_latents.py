"""nbdiffuse.viz.latents: channel views, cheap RGB, metrics, the upscaler comparison and the hires story."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from nbdiffuse.inspect.previews import LATENT_RGB_FACTORS
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.txt2img import txt2img_steps
from nbdiffuse.prompts.conditioning import TextEncoder
from nbdiffuse.sampling.base import run_to_end as run
from nbdiffuse.viz.latents import (
    approx_rgb,
    compare_upscalers,
    explain_hires,
    psnr,
    show_latents,
    ssim,
)

matplotlib.use("Agg")
BASE = dict(prompt="a red circle", steps=3, width=64, height=64, seed=5, sampler_name="Euler")


@pytest.fixture(scope="module")
def first(sd1):
    return run(txt2img_steps(sd1, GenerationParams(**BASE), TextEncoder(sd1)))


def test_approx_rgb_is_a1111s_cheap_formula():
    z = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    m = torch.tensor(LATENT_RGB_FACTORS["sd1"])
    want = ((torch.einsum("chw,cr->hwr", z, m) * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().numpy()
    assert np.array_equal(np.asarray(approx_rgb(z)), want)
    assert LATENT_RGB_FACTORS["sdxl"][0] == [0.3448, 0.4168, 0.4395]
    assert approx_rgb(z[None], "sdxl").size == (5, 3)


def test_show_latents_has_four_channels_with_ranges_and_a_preview(first):
    fig = show_latents(first)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sum(t.startswith("channel") for t in titles) == 4 and any("approx" in t for t in titles)
    z = first.latents[0]
    assert f"{z[2].min():.2f}" in titles[2]
    with pytest.raises(ValueError, match="latents shaped"):
        show_latents(torch.zeros(3))


def test_psnr_and_ssim():
    g = np.random.default_rng(0)
    a = Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    noisy = Image.fromarray(np.clip(np.asarray(a, dtype=int) + g.integers(-20, 21, (32, 32, 3)), 0, 255)
                            .astype(np.uint8))
    very = Image.fromarray(np.clip(np.asarray(a, dtype=int) + g.integers(-80, 81, (32, 32, 3)), 0, 255)
                           .astype(np.uint8))
    assert 1 > ssim(a, noisy) > ssim(a, very) and psnr(a, noisy) > psnr(a, very) > 0
    flat = Image.new("RGB", (32, 32), (100, 100, 100))
    assert ssim(flat, flat) == pytest.approx(1.0)


def test_compare_upscalers_table(sd1, first):
    c = compare_upscalers(sd1, first, scale=2)
    modes = [r["mode"] for r in c.rows]
    assert modes[:6] == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                         "Latent (nearest)", "Latent (nearest-exact)"] and modes[6] == "Latent (bislerp)"
    rows = {r["mode"]: r for r in c.rows}
    std = float(first.latents[0].std())
    assert all(r["std first pass"] == pytest.approx(std) for r in c.rows)
    assert rows["Latent"]["std upscaled"] < std  # bilinear averaging lowers the spread
    assert rows["Latent (nearest)"]["std upscaled"] == pytest.approx(std, rel=3e-3)  # copies (std is unbiased)
    assert rows["Latent (bislerp)"]["std upscaled"] > rows["Latent"]["std upscaled"]
    assert all(0 < r["SSIM"] <= 1 and r["PSNR"] > 0 and 0 < r["SSIM 1 step"] <= 1 for r in c.rows)
    assert c.images["Latent"][0].size == (128, 128) and c.reference.size == (128, 128)
    assert "<table" in c._repr_html_() and "Latent (bicubic)" in repr(c)


def test_explain_hires_from_params_and_from_a_result(sd1, first):
    e = explain_hires(sd1, **BASE, hr_scale=2, denoising_strength=0.5, hr_second_pass_steps=3, snapshots=2)
    titles = [ax.get_title() for ax in e.figure.axes]
    assert titles[0].startswith("1. first pass") and titles[-1].startswith("direct 128x128")
    assert sum(t.startswith("4. pass 2") for t in titles) == 2
    assert e.final.image.size == e.direct.image.size == (128, 128)
    e2 = explain_hires(sd1, first, hr_upscaler="Latent (nearest)")
    assert e2.first is first and e2.final.seeds == first.seeds
    with pytest.raises(TypeError, match="only hires parameters"):
        explain_hires(sd1, first, steps=5)
