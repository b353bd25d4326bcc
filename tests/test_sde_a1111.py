"""SDE samplers through our driver, seed for seed as A1111 runs them (issue 14, part 1).

The oracle is k-diffusion's own sampler functions (tests/reference, MIT) driven the way A1111's
``sd_samplers_kdiffusion`` drives them: the starting latent from one CPU generator per seed, and
``noise_sampler=BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=<the batch's seeds>)``
over the *whole* schedule (for the hires pass too, whose steps are the schedule's tail:
``create_noise_sampler(x, sigmas, p)`` gets the full ``sigmas``). Our side is the txt2img job itself. Both sides
share only the model (our Denoiser + CFGDenoiser on a tiny SD1 UNet, the same prompts) and the schedule; the noise,
the sampler and the driving are independent. Final latents must agree to 1e-5 relative.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nbdiffuse.jobs.driver import plan_pass
from nbdiffuse.jobs.hires import plan_hires
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.txt2img import txt2img_steps
from nbdiffuse.prompts.conditioning import TextEncoder
from nbdiffuse.sampling.base import run_to_end as run
from nbdiffuse.sampling.denoiser import Denoiser
from nbdiffuse.sampling.guidance import CFGDenoiser
from nbdiffuse.sampling.registry import SAMPLERS
from nbdiffuse.sampling.schedules import compute_sigmas

_REF = Path(__file__).parent / "reference" / "k_diffusion_sampling.py"
_spec = importlib.util.spec_from_file_location("k_diffusion_sampling_ref", _REF)
kd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kd)

REL_TOL = 1e-5
# A1111's sampler table: name -> (k-diffusion function, options A1111 passes)
KD = {
    "DPM++ SDE": (kd.sample_dpmpp_sde, {}),
    "DPM++ 2M SDE": (kd.sample_dpmpp_2m_sde, {}),
    "DPM++ 2M SDE Heun": (kd.sample_dpmpp_2m_sde, {"solver_type": "heun"}),
    "DPM++ 3M SDE": (kd.sample_dpmpp_3m_sde, {}),
}
BASE = dict(prompt="a red circle", negative_prompt="blurry", steps=6, width=64, height=64, seed=321,
            cfg_scale=7.0)


def a1111_noise(seeds, shape):
    """A1111's ImageRNG.first() with RNG source CPU: one fresh CPU generator per seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def a1111_pass(name, plan, denoiser, x, sigmas, seeds):
    """k-diffusion's sampler as A1111 calls it, with the Brownian trees over ``sigmas`` (the whole schedule) and
    the steps of ``plan.sigmas`` (its tail)."""
    func, options = KD[name]
    guider = CFGDenoiser(denoiser, plan.conds, plan.uncond, plan.cfg_scale, time_ids=plan.time_ids, empty=plan.empty)
    noise_sampler = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's round-off warnings, as in A1111
        return func(guider, x, plan.sigmas, noise_sampler=noise_sampler, disable=True, **options)


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", sorted(KD))
@pytest.mark.parametrize("batch_size", [1, 3])
def test_txt2img_and_hires_final_latents_match_a1111_k_diffusion(sd1, name, batch_size):
    bundle, encoder = sd1, TextEncoder(sd1)
    p = GenerationParams.from_kwargs(**BASE, sampler_name=name, batch_size=batch_size)
    ph = p.replace(enable_hr=True, hr_scale=1.5, denoising_strength=0.55, hr_second_pass_steps=4)
    seeds = [p.seed + i for i in range(batch_size)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our driver keeps torchsde quiet
        ours = run(txt2img_steps(bundle, p, encoder)).latents
        ours_hr = run(txt2img_steps(bundle, ph, encoder)).latents

    denoiser = Denoiser(bundle.unet, bundle.alphas_cumprod, bundle.prediction_type)
    spec = SAMPLERS[name]
    sigmas = compute_sigmas(p.scheduler_used, p.steps, bundle.sigmas, arch=bundle.arch,
                            discard_penultimate=spec.discard_penultimate)
    plan = plan_pass(bundle, p, encoder, p.prompt, p.negative_prompt, sigmas)
    x = a1111_noise(seeds, (4, 8, 8)) * sigmas[0]
    first = a1111_pass(name, plan, denoiser, x, sigmas, seeds)
    assert rel_diff(ours, first) < REL_TOL

    # hires: A1111's latent upscale, fresh noise from the same seeds, the tail of int(4 / 0.55) = 7 steps
    hires = plan_hires(bundle, ph, encoder)
    total = int(4 / 0.55)
    whole = compute_sigmas(ph.hr_scheduler_used, total, bundle.sigmas, arch=bundle.arch,
                           discard_penultimate=spec.discard_penultimate)
    assert torch.equal(hires.pass_plan.sigmas, whole[total - 4:])
    z = F.interpolate(first, size=(12, 12), mode="bilinear")
    xi = z + a1111_noise(seeds, (4, 12, 12)) * whole[total - 4]
    second = a1111_pass(name, hires.pass_plan, denoiser, xi, whole, seeds)
    assert rel_diff(ours_hr, second) < REL_TOL


def test_the_hires_trees_span_the_whole_schedule_not_its_tail(sd1):
    """The tree interval changes the numbers: trees over the tail alone would not be A1111's hires noise."""
    bundle, encoder = sd1, TextEncoder(sd1)
    ph = GenerationParams.from_kwargs(**BASE, sampler_name="DPM++ 2M SDE", enable_hr=True, hr_scale=1.5,
                                      denoising_strength=0.55, hr_second_pass_steps=4)
    hires = plan_hires(bundle, ph, encoder)
    tail = hires.pass_plan.sigmas
    whole = hires.pass_plan.tree_sigmas
    assert whole.max() > tail.max()
    x = torch.zeros(1, 4, 12, 12)
    over_whole = kd.BrownianTreeNoiseSampler(x, whole[whole > 0].min(), whole.max(), seed=[321])
    over_tail = kd.BrownianTreeNoiseSampler(x, tail[tail > 0].min(), tail.max(), seed=[321])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not torch.allclose(over_whole(tail[0], tail[1]), over_tail(tail[0], tail[1]), atol=1e-3)
