"""txt2img: text -> conditioning -> our sampling loop -> VAE decode -> saved images with infotexts.

:func:`txt2img_steps` is a generator: it yields a :class:`StepState` after every sampler step (hooks already
applied) and returns the finished :class:`Result`. Running to the end is a loop over it; stepping through a
generation is the same generator driven with ``next()``. The loop itself is :mod:`nbdiffuse.jobs.driver`'s.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path

import torch

from ..models.inpainting import txt2img_conditioning
from ..prompts.conditioning import TextEncoder
from ..prompts.styles import Style
from ..sampling.base import StepState
from ..sampling.noise import fix_seed, image_seeds
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import compute_sigmas
from .driver import (
    Hook,
    JobControl,
    Progress,
    applied_names,
    decode_and_save,
    denoiser_for,
    finish_timings,
    new_timings,
    plan_pass,
    run_batches,
    run_pass,
    seed_batches,
    styled_prompts,
    took,
)
from .fields import infotext_fields
from .hires import hires_pass, plan_hires
from .inpainting_model import mask_weight_fields
from .params import GenerationParams
from .refiner import Refiner, no_refiner_model, refiner_fields
from .result import Result
from .tiling import circular_padding
from .upscalers import Upscalers, is_latent


def first_pass_sigmas(bundle, p: GenerationParams) -> torch.Tensor:
    """The sigmas txt2img's first pass runs: the schedule type's, or for a timestep sampler (DDIM, PLMS, UniPC)
    A1111's own grid, whatever the schedule type."""
    spec = SAMPLERS[p.sampler_name]
    if spec.grid is not None:
        return spec.grid(p.steps, bundle.sigmas).sigmas
    return compute_sigmas(p.scheduler_used, p.steps, bundle.sigmas, arch=bundle.arch,
                          discard_penultimate=spec.discard_penultimate)


def txt2img_steps(bundle, p: GenerationParams, encoder: TextEncoder, *, hooks: Sequence[Hook] = (),
                  control: JobControl | None = None, outputs_dir: str | Path | None = None,
                  progress: Progress | None = None, styles: Mapping[str, Style] | None = None,
                  upscalers: Upscalers | None = None, refiner: Refiner | None = None
                  ) -> Generator[StepState, None, Result]:
    """Run txt2img for ``p`` on ``bundle``: yields every step (both passes with hires fix), returns the
    :class:`Result`. With ``p.tiling`` the UNet and VAE pad circularly for the whole job. ``upscalers`` loads a
    model ``hr_upscaler`` (a session's ``session.upscalers``). ``refiner``: the model the sampling switches to
    (:mod:`nbdiffuse.jobs.refiner`; its settings come from ``p``)."""
    with circular_padding(bundle, p.tiling):
        return (yield from _txt2img(bundle, p, encoder, hooks=hooks, control=control, outputs_dir=outputs_dir,
                                    progress=progress, styles=styles, upscalers=upscalers, refiner=refiner))


def _txt2img(bundle, p, encoder, *, hooks, control, outputs_dir, progress, styles, upscalers, refiner):
    no_refiner_model(p, refiner)
    control = control or JobControl()
    start = time.perf_counter()
    timings = new_timings()
    notes: list[str] = []
    spec = SAMPLERS[p.sampler_name]
    styled_prompt, styled_negative, prompt, negative = styled_prompts(p, styles, notes, applied_names(bundle))
    seed, subseed = fix_seed(p.seed), fix_seed(p.subseed)
    all_seeds, all_subseeds = image_seeds(seed, subseed, p.subseed_strength, p.total_images)

    t = time.perf_counter()
    plan = plan_pass(bundle, p, encoder, prompt, negative, first_pass_sigmas(bundle, p))
    switch = refiner.pass_switch(p, prompt, negative, total_steps=spec.total_steps(p.steps),
                                 hires_pass=False) if refiner is not None else None
    hires = plan_hires(bundle, p, encoder, styles, notes, upscalers, refiner=refiner) if p.enable_hr else None
    factor = bundle.vae_scale_factor
    shape = (bundle.latent_channels, p.height // factor, p.width // factor)
    # an inpainting model makes the whole picture: A1111's grey image and all-ones mask
    image_cond = txt2img_conditioning(bundle, shape[1:]) if bundle.is_inpainting else None
    timings["encode_s"] += time.perf_counter() - t
    infotext_extra = mask_weight_fields(bundle, p, "txt2img", is_latent(hires.upscaler) if hires else None)

    denoiser = denoiser_for(bundle)
    denoising = hires.denoising if hires is not None else None

    def sample(n, seeds, subseeds):
        extra = {"iteration": n}
        first = took((yield from run_pass(plan, denoiser, seeds, subseeds, shape, hooks=hooks, control=control,
                                          progress=progress, extra=extra, image_cond=image_cond, switch=switch)),
                     notes, timings)
        if first.x is None or hires is None:
            return first.x, first.interrupted
        second = took((yield from hires_pass(hires, denoiser, first.x, seeds, subseeds,
                                             first_pass_stopped=first.stopped, hooks=hooks, control=control,
                                             progress=progress, extra=extra)), notes, timings)
        return second.x, first.interrupted or control.interrupt.is_set()

    def save(x, seeds, subseeds):
        return decode_and_save(bundle, x, seeds, lambda i: infotext_fields(
            p, bundle, seeds[i], subseeds[i], spec.func, encoder=encoder, denoising=denoising,
            extra={**infotext_extra, **refiner_fields(p, refiner)}),
            (styled_prompt, styled_negative), "txt2img-images", outputs_dir, notes, timings, control)

    done = yield from run_batches(seed_batches(all_seeds, all_subseeds, p.batch_size), sample, save, control, notes)
    finish_timings(timings, start, denoiser, bundle.device, notes)
    if refiner is not None:
        timings["model_calls"] += refiner.denoiser.calls
    w, h = p.hr_size if p.enable_hr else (p.width, p.height)
    return done.result(p, timings, notes, (0, shape[0], h // factor, w // factor))
