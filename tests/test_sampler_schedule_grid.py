"""Every sampler x every schedule x 1, 2, 3 steps, on the real SD sigma table, with the job's noise sources."""

import pytest
import torch
from conftest import drive

from nbdiffuse.models.bundle import scaled_linear_alphas_cumprod
from nbdiffuse.sampling.noise import BrownianNoise, ImageNoise
from nbdiffuse.sampling.registry import SAMPLERS
from nbdiffuse.sampling.schedules import SCHEDULES, compute_sigmas

AC = scaled_linear_alphas_cumprod()
MODEL_SIGMAS = ((1 - AC) / AC) ** 0.5


class GaussianDenoiser:
    """The exact denoiser of N(0.3, 0.5^2) data, with CFG++'s uncond hook."""

    last_uncond = None

    def __call__(self, x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        out = (0.25 * x + s**2 * 0.3) / (0.25 + s**2)
        self.last_uncond = out * 0.9
        return out


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("scheduler", list(SCHEDULES))
def test_sampler_with_schedule_runs_at_one_two_three_steps(sampler, scheduler):
    spec = SAMPLERS[sampler]
    for arch in ("sd1", "sdxl"):
        for steps in (1, 2, 3):
            sigmas = compute_sigmas(scheduler, steps, MODEL_SIGMAS, arch=arch,
                                    discard_penultimate=spec.discard_penultimate)
            shape = (4, 4, 4)
            rng = ImageNoise(shape, [1, 2])
            x = rng.first() * sigmas[0]
            positive = sigmas[sigmas > 0]
            noise = (BrownianNoise(shape, [1, 2], float(positive.min()), float(positive.max())) if spec.brownian
                     else (lambda a=None, b=None, r=rng: r.next()))
            model = GaussianDenoiser()
            options = dict(spec.options)
            if spec.needs_uncond:
                options["uncond"] = lambda m=model: m.last_uncond
            gen = spec.func(model, x, sigmas, noise=noise, **options)
            out, states = drive(gen)
            assert states, (sampler, scheduler, steps)
            assert torch.isfinite(out).all(), (sampler, scheduler, arch, steps)
            # The data's mean is 0.3: a finished sample lands near it, not at the initial noise scale.
            assert abs(out.mean().item() - 0.3) < 1.0, (sampler, scheduler, arch, steps)


@pytest.mark.parametrize("sampler", [name for name, spec in SAMPLERS.items() if spec.grid is not None])
def test_timestep_sampler_on_its_a1111_grid_runs_at_one_two_three_steps(sampler):
    """The jobs run DDIM, DDIM CFG++, PLMS and UniPC on A1111's grid (no step to sigma 0), txt2img and img2img."""
    spec = SAMPLERS[sampler]
    for steps in (1, 2, 3):
        for t_enc in sorted({0, 1, steps - 1} & set(range(steps)), key=int) + [None]:
            grid = spec.grid(steps, MODEL_SIGMAS, t_enc=t_enc)
            sigmas = grid.sigmas
            assert (sigmas > 0).all() and (sigmas[:-1] > sigmas[1:]).all(), (sampler, steps, t_enc)
            shape = (4, 4, 4)
            rng = ImageNoise(shape, [1, 2])
            x = rng.first() * (1 + sigmas[0] ** 2) ** 0.5
            model = GaussianDenoiser()
            options = dict(spec.options)
            if spec.needs_uncond:
                options["uncond"] = lambda m=model: m.last_uncond
            gen = spec.func(model, x, sigmas, noise=lambda a=None, b=None, r=rng: r.next(), **options)
            out, states = drive(gen)
            out = out / (1 + sigmas[-1] ** 2) ** 0.5
            assert len(states) == len(sigmas) - 1, (sampler, steps, t_enc)
            assert torch.isfinite(out).all(), (sampler, steps, t_enc)
            if t_enc is None and sigmas[0] > 10:  # from pure noise (DDIM's 2 or 3 steps start at t 501 / 667)
                assert abs(out.mean().item() - 0.3) < 0.2, (sampler, steps)
