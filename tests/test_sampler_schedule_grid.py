"""Every sampler x every schedule x 1, 2, 3 steps, on the real SD sigma table, with the job's noise sources."""

import pytest
import torch

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
            states = []
            try:
                while True:
                    states.append(next(gen))
            except StopIteration as stop:
                out = stop.value
            assert states, (sampler, scheduler, steps)
            assert torch.isfinite(out).all(), (sampler, scheduler, arch, steps)
            # The data's mean is 0.3: a finished sample lands near it, not at the initial noise scale.
            assert abs(out.mean().item() - 0.3) < 1.0, (sampler, scheduler, arch, steps)
