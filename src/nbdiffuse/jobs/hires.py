"""Hires fix: A1111's txt2img second pass, and the same pass on an earlier result (A1111's ✨ button).

The story of one batch (A1111 ``StableDiffusionProcessingTxt2Img.sample_hr_pass``):

1. Target size (:attr:`GenerationParams.hr_upscale_to`): ``int(w * hr_scale), int(h * hr_scale)``, or from
   ``hr_resize_x/y`` (one side 0 keeps the aspect ratio; both set scales to *cover* the box and crops later).
2. Upscale the first pass's latents to ``(to_y // 8, to_x // 8)``: a latent mode is one ``interpolate`` call;
   any other upscaler decodes to 8-bit images, upscales them in pixels and VAE-encodes the result.
3. Crop centred in latent units (``truncate = (to - target) // 8``; rows ``[ty // 2 : H - (ty + 1) // 2]``).
4. Fresh noise from the same seeds (a new generator per seed, as for the first pass, at the hires shape).
5. An img2img pass of ``hr_second_pass_steps`` (0: ``steps``) steps: a schedule of ``int(steps / min(denoise,
   0.999))`` steps of which the last ``steps`` run, from ``x = latents + noise * sigma0 (+ noise * extra_noise)``,
   with the hires prompt (``hr_prompt``, default the prompt) whose ``[a:b:N]`` fractions run from 1 to 2.
   A timestep sampler (DDIM, DDIM CFG++, PLMS, UniPC) runs A1111's img2img on its own grid instead
   (:func:`~nbdiffuse.jobs.img2img.img2img_grid` with ``t_enc = steps - 1``): ``steps - 2`` steps for DDIM and
   PLMS, ``steps - 1`` for UniPC.

An inpainting model (9-channel UNet) also gets A1111's image conditioning for the second pass, from the upscaled
latents or pixels (:func:`~nbdiffuse.jobs.inpainting_model.hires_conditioning`), cropped like them.

Deviation from A1111, output format kept: with ``denoising_strength=0`` A1111 asks for a 0-step schedule and
fails; here the second pass is skipped and the upscaled latents are decoded as they are.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.vae import decode, encode
from ..prompts.conditioning import TextEncoder
from ..prompts.styles import Style
from ..sampling.base import StepState
from ..sampling.denoiser import Denoiser
from ..sampling.registry import SAMPLERS
from .driver import (
    Hook,
    JobControl,
    PassOutcome,
    PassPlan,
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
from .guards import JobInterrupted
from .img2img import img2img_noise_sigma, img2img_schedule, img2img_sigmas
from .inpainting_model import hires_conditioning, mask_weight, mask_weight_fields
from .params import GenerationParams
from .result import Result
from .tiling import circular_padding
from .upscalers import Upscalers, is_latent, resize_image, upscale_latents

DEFAULT_DENOISING = 0.7  # A1111's hires fix default

# The fields hires_fix() may change on the earlier result's parameters.
HIRES_FIELDS = ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
                "denoising_strength", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
                "extra_noise", "tiling")


def crop_latents(latents: torch.Tensor, truncate_x: int, truncate_y: int) -> torch.Tensor:
    """A1111's centred crop of ``truncate_x`` columns and ``truncate_y`` rows (latent units); the odd one comes
    off the end."""
    h, w = latents.shape[-2:]
    return latents[..., truncate_y // 2:h - (truncate_y + 1) // 2, truncate_x // 2:w - (truncate_x + 1) // 2]


@dataclass
class HiresPlan:
    """Everything the second pass needs, computed once per job."""

    bundle: object
    pass_plan: PassPlan
    denoising: float
    upscaler: str
    upscale_to: tuple[int, int]
    truncate: tuple[int, int]
    steps: int  # hires steps requested (the pass runs exactly these)
    upscalers: Upscalers | None = None  # what loads a model upscaler (a session's session.upscalers)
    mask_weight: float | None = None  # an inpainting model's "Conditional mask weight" (None: not one)
    switch: object = None  # the refiner switch of this pass (a jobs.refiner.PassSwitch), or None


def hires_sigmas(bundle, p: GenerationParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas the second pass runs, the whole schedule they are the tail of)`` (A1111's rule: the last
    ``hr_second_pass_steps`` of ``int(steps / denoising_strength)`` steps)."""
    denoising = p.denoising_strength if p.denoising_strength is not None else DEFAULT_DENOISING
    spec = SAMPLERS[p.hr_sampler_used]
    steps = p.hr_steps_used
    return (img2img_sigmas(p.hr_scheduler_used, steps, denoising, bundle, spec, fixed_steps=True),
            img2img_schedule(p.hr_scheduler_used, steps, denoising, bundle, spec, fixed_steps=True))


def plan_hires(bundle, p: GenerationParams, encoder: TextEncoder, styles: Mapping[str, Style] | None = None,
               notes: list[str] | None = None, upscalers: Upscalers | None = None, refiner=None) -> HiresPlan:
    """The second pass of ``p``: its sigmas (A1111's rule), hires prompt conditioning, sampler and options; with a
    ``refiner`` (:class:`~nbdiffuse.jobs.refiner.Refiner`) the switch to it, with the hires prompts at the hires
    size (A1111's ``calculate_hr_conds`` on the refiner)."""
    denoising = p.denoising_strength if p.denoising_strength is not None else DEFAULT_DENOISING
    spec1, spec2 = SAMPLERS[p.sampler_name], SAMPLERS[p.hr_sampler_used]
    steps = p.hr_steps_used
    sigmas, whole = hires_sigmas(bundle, p)
    hp = p.replace(prompt=p.hr_prompt or p.prompt, negative_prompt=p.hr_negative_prompt or p.negative_prompt)
    own_notes: list[str] = []
    _, _, prompt, negative = styled_prompts(hp, styles, own_notes, applied_names(bundle))
    if notes is not None:
        notes.extend(n for n in own_notes if n not in notes)
    first_total, hires_total = spec1.total_steps(p.steps), spec2.total_steps(steps)
    plan = plan_pass(bundle, p, encoder, prompt, negative, sigmas, sampler_name=spec2.name,
                     size=p.hr_upscale_to, schedule_steps=first_total, hires_steps=hires_total, name="hires",
                     tree_sigmas=whole, extra_noise=p.extra_noise,
                     noise_sigma=img2img_noise_sigma(steps, denoising, bundle, spec2, fixed_steps=True))
    switch = None
    if refiner is not None:  # A1111's step rule counts the launched sampling's calls: the hires steps
        switch = refiner.pass_switch(p, prompt, negative, total_steps=hires_total, hires_pass=True,
                                     sampler_name=spec2.name, size=p.hr_upscale_to, schedule_steps=first_total,
                                     hires_steps=hires_total)
    return HiresPlan(bundle, plan, denoising, p.hr_upscaler or "Latent", p.hr_upscale_to, p.hr_truncate, steps,
                     upscalers, mask_weight(bundle, p), switch)


def upscale_for_hires(plan: HiresPlan, latents: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """Steps 2-3: the first pass's latents upscaled to the hires size (latent or pixel upscaler), cropped."""
    return crop_latents(_upscaled(plan, latents, notes)[0], *plan.truncate)


def _upscaled(plan: HiresPlan, latents: torch.Tensor, notes: list[str], interrupt=None
              ) -> tuple[torch.Tensor, list | None]:
    """Step 2: the upscaled latents, not yet cropped, and the upscaled images a pixel upscaler made (else None).
    ``interrupt`` (an Event) stops a model upscaler between its tiles (``JobInterrupted``)."""
    bundle = plan.bundle
    factor = bundle.vae_scale_factor
    to_x, to_y = plan.upscale_to
    if is_latent(plan.upscaler):
        return upscale_latents(latents.float(), plan.upscaler, (to_y // factor, to_x // factor)), None
    images = decode(bundle, latents, notes)
    images = [resize_image(0, im, to_x, to_y, plan.upscaler, plan.upscalers, interrupt=interrupt) for im in images]
    return encode(bundle, images), images


def hires_pass(plan: HiresPlan, denoiser: Denoiser, latents: torch.Tensor, seeds: Sequence[int],
               subseeds: Sequence[int], *, first_pass_stopped: bool = False, hooks: Sequence[Hook] = (),
               control: JobControl | None = None, progress: Progress | None = None,
               extra: Mapping | None = None) -> Generator[StepState, None, PassOutcome]:
    """The second pass of one batch: yields its steps, returns its outcome (``x``: the hires latents).

    When the first pass was stopped (interrupt/skip) the second pass is not run: the first pass's x0 estimate
    is only upscaled, so every image of a job has the same size."""
    notes: list[str] = []
    try:  # a stopped first pass is still upscaled (every image the same size); else Stop reaches between tiles
        upscaled, images = _upscaled(plan, latents, notes,
                                     None if first_pass_stopped or control is None else control.interrupt)
    except JobInterrupted:
        notes.append(f"Interrupted while upscaling with {plan.upscaler}: kept the images of the batches before.")
        return PassOutcome(None, True, True, notes=notes)
    z = crop_latents(upscaled, *plan.truncate)
    if first_pass_stopped:
        notes.append("The first pass was stopped early: its images were upscaled without the second pass.")
        return PassOutcome(z, notes=notes)
    if plan.denoising == 0:
        return PassOutcome(z, notes=notes)
    image_cond = None
    if plan.mask_weight is not None:
        image_cond = crop_latents(hires_conditioning(plan.bundle, upscaled, images, plan.mask_weight),
                                  *plan.truncate)
    outcome = yield from run_pass(plan.pass_plan, denoiser, seeds, subseeds, tuple(z.shape[1:]), init=z,
                                  hooks=hooks, control=control, progress=progress, extra=extra, image_cond=image_cond,
                                  switch=plan.switch)
    outcome.notes = notes + outcome.notes
    if outcome.x is None:
        outcome.x = z
    return outcome


def hires_fix_steps(bundle, result: Result, encoder: TextEncoder, *, hooks: Sequence[Hook] = (),
                    control: JobControl | None = None, outputs_dir: str | Path | None = None,
                    progress: Progress | None = None,
                    styles: Mapping[str, Style] | None = None, indices: Sequence[int] | None = None,
                    upscalers: Upscalers | None = None, refiner=None, **changes) -> Generator[StepState, None, Result]:
    """A1111's ✨ (upscale an earlier txt2img result): the hires pass on ``result``'s first-pass latents with its
    seeds. ``changes`` may set the hires fields (``hr_scale``, ``hr_upscaler``, ``denoising_strength``, ...);
    ``indices`` picks images (default all). Differs from A1111 in one way, for the better: A1111 re-encodes the
    saved 8-bit image for latent upscalers, here the exact first-pass latents are used. ``refiner``
    (:class:`~nbdiffuse.jobs.refiner.Refiner`, for the result's ``refiner_checkpoint``): the hires pass switches to
    it where ``hires_fix_refiner_pass`` lets the second pass switch."""
    unknown = sorted(set(changes) - set(HIRES_FIELDS))
    if unknown:
        raise TypeError(f"hires_fix: {', '.join(map(repr, unknown))} cannot be changed here; "
                        f"allowed: {', '.join(HIRES_FIELDS)}")
    if result.params.enable_hr:
        raise ValueError("hires_fix: this result already went through hires fix (its latents are the second "
                         "pass's); run it on a result made without enable_hr.")
    if len(result) == 0 or result.latents.shape[0] == 0:
        raise ValueError("hires_fix: the result has no images")
    picked = list(range(len(result))) if indices is None else [int(i) for i in indices]
    bad = [i for i in picked if not 0 <= i < len(result)]
    if bad:
        raise ValueError(f"hires_fix: indices {bad} out of range for a result of {len(result)} images")
    known = tuple(upscalers.files) if upscalers is not None else result.params.known_upscalers
    p = result.params.replace(enable_hr=True, known_upscalers=known, **changes)
    seeds = [result.seeds[i] for i in picked]
    subseeds = [result.subseeds[i] for i in picked]
    p = p.replace(seed=seeds[0], subseed=subseeds[0])
    latents = result.latents[picked]
    with circular_padding(bundle, p.tiling):
        return (yield from _hires_fix(bundle, p, encoder, latents, seeds, subseeds, hooks=hooks, control=control,
                                      outputs_dir=outputs_dir, progress=progress, styles=styles,
                                      upscalers=upscalers, refiner=refiner))


def _hires_fix(bundle, p, encoder, latents, seeds, subseeds, *, hooks, control, outputs_dir, progress, styles,
               upscalers, refiner):
    from .refiner import refiner_fields

    control = control or JobControl()
    start = time.perf_counter()
    timings = new_timings()
    notes: list[str] = []
    styled_prompt, styled_negative, _, _ = styled_prompts(p, styles, notes, applied_names(bundle))
    t = time.perf_counter()
    plan = plan_hires(bundle, p, encoder, styles, notes, upscalers, refiner=refiner)
    timings["encode_s"] += time.perf_counter() - t
    denoiser = denoiser_for(bundle)
    func = SAMPLERS[p.sampler_name].func

    def sample(n, seeds, subseeds):
        first = n * p.batch_size
        z = latents[first:first + len(seeds)].to(bundle.device)
        outcome = took((yield from hires_pass(plan, denoiser, z, seeds, subseeds, hooks=hooks, control=control,
                                              progress=progress, extra={"iteration": n})), notes, timings)
        return outcome.x, control.interrupt.is_set()

    def save(x, seeds, subseeds):
        return decode_and_save(bundle, x, seeds, lambda i: infotext_fields(
            p, bundle, seeds[i], subseeds[i], func, denoising=plan.denoising, encoder=encoder,
            extra={**mask_weight_fields(bundle, p, "txt2img", is_latent(plan.upscaler)), **refiner_fields(p, refiner)}),
            (styled_prompt, styled_negative), "txt2img-images", outputs_dir, notes, timings, control)

    done = yield from run_batches(seed_batches(seeds, subseeds, p.batch_size), sample, save, control, notes)
    finish_timings(timings, start, denoiser, bundle.device, notes)
    if refiner is not None:
        timings["model_calls"] += refiner.denoiser.calls
    return done.result(p, timings, notes, (0, *latents.shape[1:]))
