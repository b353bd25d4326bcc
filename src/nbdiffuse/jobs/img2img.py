"""img2img and loopback: start from images instead of noise, A1111's way.

An init image is resized to ``width x height`` (``resize_mode``: 0 Just resize, 1 Crop and resize, 2 Resize and
fill; 3 encodes it at its own size and resizes the *latents* bilinearly), VAE-encoded (the latent distribution's
mean, see :func:`~nbdiffuse.models.vae.encode`), noised to the schedule's starting sigma and denoised:

* A1111's step rule (``setup_img2img_steps``): ``t_enc = int(min(denoise, 0.999) * steps)``; of a ``steps``-step
  schedule the last ``t_enc + 1`` steps run (``sigmas[steps - t_enc - 1:]``). So ``denoising_strength=1`` runs
  all ``steps`` steps from almost pure noise and 0 still runs one step at the smallest sigma.
* ``x = init + noise * sigma0``, plus ``noise * extra_noise`` (the same noise tensor) when ``extra_noise > 0``.
* The timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) follow A1111's ``sample_img2img`` on their own grid
  instead: see :func:`img2img_grid`.
* Noise from one CPU generator per image seed (``seed + i``), as in txt2img.

Batches (A1111 ``StableDiffusionProcessingImg2Img.init``): one init image is repeated ``batch_size`` times; ``k``
images with ``1 < k <= batch_size`` make a batch of ``k``, one each; more images than ``batch_size`` is an error.
Every ``n_iter`` batch starts from the same init latents with the next seeds. Images go to ``img2img-images/``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.inpainting import inpainting_conditioning
from ..models.vae import encode
from ..prompts.conditioning import TextEncoder
from ..prompts.styles import Style
from ..sampling.base import StepState
from ..sampling.noise import ImageNoise, fix_seed, image_seeds
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import TimestepGrid, compute_sigmas
from .driver import (
    Hook,
    JobControl,
    LatentBlend,
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
from .inpainting_model import mask_weight_fields
from .params import GenerationParams
from .refiner import no_refiner_model, refiner_fields
from .result import Result
from .tiling import circular_padding
from .upscalers import resize_image

DEFAULT_DENOISING = 0.75  # A1111's img2img default
DENOISING_CURVES = ("Linear", "Aggressive", "Lazy")


def img2img_step_counts(steps: int, denoising: float, fixed_steps: bool = False) -> tuple[int, int]:
    """A1111's ``setup_img2img_steps``: ``(schedule steps, t_enc)``; the pass runs ``t_enc + 1`` steps.

    Plain img2img: ``(steps, int(min(denoise, 0.999) * steps))``. ``fixed_steps`` (the hires pass, and A1111's
    "img2img: do exactly the amount of steps the slider specifies"): ``(int(steps / min(denoise, 0.999)),
    steps - 1)``, i.e. exactly ``steps`` steps at the end of a longer schedule.
    """
    if not 0.0 <= denoising <= 1.0:
        raise ValueError(f"denoising_strength={denoising!r} is not valid: it must be a number between 0 and 1.")
    if fixed_steps:
        if denoising <= 0:
            raise ValueError("denoising_strength=0 with fixed steps is an empty schedule")
        return int(steps / min(denoising, 0.999)), steps - 1
    return steps, int(min(denoising, 0.999) * steps)


def img2img_sigmas(scheduler: str, steps: int, denoising: float, bundle, spec, *,
                   fixed_steps: bool = False) -> torch.Tensor:
    """The sigmas an img2img (or, with ``fixed_steps``, hires) pass runs: ``compute_sigmas(total)[total - t_enc
    - 1:]`` (k-diffusion's rule), or for the timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) the sigmas of
    :func:`img2img_grid`. With ``fixed_steps`` and ``denoising=0`` it is ``[0]``: nothing to run."""
    if fixed_steps and denoising == 0:
        return torch.zeros(1)
    if spec.grid is not None:
        return img2img_grid(steps, denoising, bundle, spec, fixed_steps=fixed_steps).sigmas
    total, t_enc = img2img_step_counts(steps, denoising, fixed_steps)
    return img2img_schedule(scheduler, steps, denoising, bundle, spec, fixed_steps=fixed_steps)[total - t_enc - 1:]


def img2img_schedule(scheduler: str, steps: int, denoising: float, bundle, spec, *,
                     fixed_steps: bool = False) -> torch.Tensor:
    """The whole schedule :func:`img2img_sigmas` is the tail of (``[0]`` when that is empty). A1111 spans the SDE
    samplers' Brownian trees over it (``create_noise_sampler(x, sigmas, p)`` gets the whole ``sigmas``)."""
    if fixed_steps and denoising == 0:
        return torch.zeros(1)
    total, _ = img2img_step_counts(steps, denoising, fixed_steps)
    if spec.grid is not None:
        return spec.grid(total, bundle.sigmas).sigmas
    return compute_sigmas(scheduler, total, bundle.sigmas, arch=bundle.arch,
                          discard_penultimate=spec.discard_penultimate)


def img2img_grid(steps: int, denoising: float, bundle, spec, *, fixed_steps: bool = False) -> TimestepGrid:
    """A timestep sampler's img2img (or, with ``fixed_steps``, hires) pass, as A1111's ``sample_img2img`` runs it:
    ``spec.grid(total, t_enc=t_enc)`` with :func:`img2img_step_counts`. The init latents are noised to the grid's
    ``noise_sigma`` (the timestep at index ``t_enc``), and sampling starts one grid point lower, at ``sigmas[0]``:
    DDIM and PLMS run ``t_enc - 1`` steps, UniPC ``t_enc`` (``denoising_strength=0.6`` at 8 steps: 3 and 4)."""
    total, t_enc = img2img_step_counts(steps, denoising, fixed_steps)
    return spec.grid(total, bundle.sigmas, t_enc=t_enc)


def img2img_noise_sigma(steps: int, denoising: float, bundle, spec, *, fixed_steps: bool = False) -> float | None:
    """The sigma a timestep sampler's pass noises its init latents to (:func:`img2img_grid`); None for the other
    samplers (they noise to the first sigma they run) and for an empty hires pass."""
    if spec.grid is None or (fixed_steps and denoising == 0):
        return None
    return img2img_grid(steps, denoising, bundle, spec, fixed_steps=fixed_steps).noise_sigma


def _as_image(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"init_images: {str(image)!r} is not an image file")
        try:
            image = Image.open(image)
            image.load()
        except OSError as e:
            raise ValueError(f"init_images: cannot read {str(image)!r} as an image ({e})") from None
    if not isinstance(image, Image.Image):
        raise TypeError(f"init_images: expected PIL images or image file paths, got {type(image).__name__}")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as the RGB picture a user sees: transparency over white (A1111's img2img background colour),
    16-bit and 32-bit integer images scaled from their full range, float images from 0..1 (or 0..255).

    Pillow's own ``convert("RGB")`` clips 16-bit values at 255 (mid-grey becomes white); this does not.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        a = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        elif image.mode.startswith("I;16") or np.max(a, initial=0) > 255:
            scale = 255.0 / 65535.0
        else:
            scale = 1.0
        a = np.nan_to_num(a * scale, nan=0.0).clip(0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # A1111's img2img_background_color
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ValueError(f"init_images: cannot convert a {image.mode} image to RGB ({e}); save it as RGB first"
                         ) from None


def prepare_init_images(p: GenerationParams, init_images) -> tuple[GenerationParams, list[Image.Image]]:
    """Check the init images against ``batch_size`` (A1111's rules) before any work; returns the parameters
    with the batch size actually used and the images as RGB."""
    if init_images is None or isinstance(init_images, (Image.Image, str, Path)):
        init_images = [init_images] if init_images is not None else []
    if not isinstance(init_images, (list, tuple)):
        raise TypeError(f"init_images: expected a PIL image, an image file path or a list of them, got "
                        f"{type(init_images).__name__}")
    images = [_as_image(im) for im in init_images]
    if not images:
        raise ValueError("img2img needs an init image: pass init_images=[PIL image, ...] (or file paths).")
    small = [im.size for im in images if min(im.size) < 16]
    if p.resize_mode == 3 and small:
        raise ValueError(f"init_images: an image of {small[0][0]}x{small[0][1]} is too small for resize_mode=3 (latent "
                         "upscale encodes it at its own size): give at least 16x16, or use resize_mode 0, 1 or 2.")
    if len(images) > 1:
        if len(images) > p.batch_size:
            raise ValueError(f"img2img got {len(images)} init images but batch_size={p.batch_size}: pass "
                             f"batch_size={len(images)} (one image each) or a single image (repeated batch_size "
                             "times).")
        p = p.replace(batch_size=len(images))
    return p, images


def init_latents(bundle, p: GenerationParams, images: Sequence[Image.Image]) -> torch.Tensor:
    """The batch's init latents: images resized (``resize_mode``) and VAE-encoded, one per batch slot."""
    factor = bundle.vae_scale_factor
    if p.resize_mode == 3:
        zs = [torch.nn.functional.interpolate(encode(bundle, [im]), size=(p.height // factor, p.width // factor),
                                              mode="bilinear") for im in images]
        z = torch.cat(zs)
    else:
        z = encode(bundle, [resize_image(p.resize_mode, im, p.width, p.height) for im in images])
    if z.shape[0] == 1 and p.batch_size > 1:
        z = z.repeat(p.batch_size, 1, 1, 1)
    return z


def img2img_steps(bundle, p: GenerationParams, encoder: TextEncoder, init_images, *, mask=None, latent_mask=None,
                  hooks: Sequence[Hook] = (), control: JobControl | None = None,
                  outputs_dir: str | Path | None = None, progress: Progress | None = None,
                  styles: Mapping[str, Style] | None = None,
                  infotext_extra: Mapping | None = None,
                  infotext_lead: Mapping | None = None, refiner=None) -> Generator[StepState, None, Result]:
    """Run img2img for ``p`` from ``init_images`` on ``bundle``: yields every step, returns the :class:`Result`
    (``p.denoising_strength`` None means 0.75). ``infotext_extra`` adds fields to every infotext;
    ``infotext_lead`` adds fields before the job's own (a script's, set before A1111's ``process_images``).

    ``mask`` (white: inpaint) makes it A1111's inpainting, with ``p``'s mask fields (:mod:`nbdiffuse.masks`
    prepares the mask and the picture); ``latent_mask`` is A1111's ``p.latent_mask`` (the outpainting scripts'
    second mask, for the masked content and the latent blend). ``result.inpaint`` keeps each init image's
    :class:`~nbdiffuse.masks.PreparedMask`. ``refiner``: the model the sampling switches to
    (:class:`~nbdiffuse.jobs.refiner.Refiner`; A1111's step rule counts the ``t_enc + 1`` steps that run)."""
    p, images = prepare_init_images(p, init_images)
    prepared = prepare_masks(p, images, mask, latent_mask, bundle.vae_scale_factor)
    with circular_padding(bundle, p.tiling):
        return (yield from _img2img(bundle, p, encoder, images, prepared, hooks=hooks, control=control,
                                    outputs_dir=outputs_dir, progress=progress, styles=styles,
                                    infotext_extra=infotext_extra, infotext_lead=infotext_lead, refiner=refiner))


def prepare_masks(p: GenerationParams, images: Sequence[Image.Image], mask, latent_mask, factor: int = 8):
    """Each init image's :class:`~nbdiffuse.masks.PreparedMask` (A1111's mask part of img2img's ``init``), or None
    without a mask. Checked before any model work."""
    if mask is None:
        if latent_mask is not None:
            raise ValueError("latent_mask needs a mask: pass mask=... too (A1111 uses it only when inpainting).")
        return None
    from .. import masks

    return [masks.prepare(image, mask, width=p.width, height=p.height, resize_mode=p.resize_mode,
                          mask_blur_x=p.mask_blur_x, mask_blur_y=p.mask_blur_y, mask_round=mask_round(p),
                          inpainting_mask_invert=p.inpainting_mask_invert, inpainting_fill=p.inpainting_fill,
                          inpaint_full_res=p.inpaint_full_res, inpaint_full_res_padding=p.inpaint_full_res_padding,
                          latent_size=(p.width // factor, p.height // factor), latent_mask=latent_mask)
            for image in images]


def mask_round(p: GenerationParams) -> bool:
    """A1111's ``mask_round`` as the job runs it: Soft inpainting's ``process()`` turns it off (fractional masks)."""
    return p.mask_round and p.soft_inpainting is None


def inpaint_fields(p: GenerationParams, prepared) -> dict:
    """The keys A1111's img2img ``init`` and ``sample`` add after ``Denoising strength``, in its order."""
    fields: dict = {}
    if prepared is not None:
        if p.inpainting_mask_invert:
            fields["Mask mode"] = "Inpaint not masked"
        if p.mask_blur_x > 0 or p.mask_blur_y > 0:
            fields["Mask blur"] = p.mask_blur  # None (not written) when x and y differ, as A1111's property
        if prepared[0].mask is not None:  # not a blank "Only masked" mask (then A1111 falls back to img2img)
            if p.inpaint_full_res:
                fields["Inpaint area"] = "Only masked"
                fields["Masked area padding"] = p.inpaint_full_res_padding
            fields["Masked content"] = {0: "fill", 2: "latent noise", 3: "latent nothing"}.get(p.inpainting_fill)
    if p.noise_multiplier != 1.0:
        fields["Noise multiplier"] = p.noise_multiplier
    return fields


def _img2img(bundle, p, encoder, images, prepared, *, hooks, control, outputs_dir, progress, styles,
             infotext_extra, infotext_lead=None, refiner=None):
    no_refiner_model(p, refiner)
    control = control or JobControl()
    start = time.perf_counter()
    timings = new_timings()
    notes: list[str] = []
    spec = SAMPLERS[p.sampler_name]
    denoising = p.denoising_strength if p.denoising_strength is not None else DEFAULT_DENOISING
    styled_prompt, styled_negative, prompt, negative = styled_prompts(p, styles, notes, applied_names(bundle))
    seed, subseed = fix_seed(p.seed), fix_seed(p.subseed)
    all_seeds, all_subseeds = image_seeds(seed, subseed, p.subseed_strength, p.total_images)
    inpainting = prepared is not None and prepared[0].mask is not None
    if prepared is not None and prepared[0].comment:
        notes.append(prepared[0].comment)
    if prepared is not None and not inpainting:  # a blank mask with "Only masked": A1111's plain img2img
        images = [prep.image for prep in prepared]
    if inpainting and not prepared[0].mask.getbbox():
        notes.append("The mask is empty (no white pixel): nothing was inpainted and the picture comes back as it "
                     "was. Paint the region to change in white (or use inpainting_mask_invert=1).")

    t = time.perf_counter()
    sigmas = img2img_sigmas(p.scheduler_used, p.steps, denoising, bundle, spec)
    plan = plan_pass(bundle, p, encoder, prompt, negative, sigmas, name="img2img",
                     tree_sigmas=img2img_schedule(p.scheduler_used, p.steps, denoising, bundle, spec),
                     noise_sigma=img2img_noise_sigma(p.steps, denoising, bundle, spec), extra_noise=p.extra_noise)
    plan = replace(plan, noise_multiplier=p.noise_multiplier)
    switch = None
    if refiner is not None:
        switch = refiner.pass_switch(p, prompt, negative, hires_pass=False,
                                     total_steps=spec.total_steps(img2img_step_counts(p.steps, denoising)[1] + 1))
    init = init_latents(bundle, p, [prep.image for prep in prepared] if inpainting else images)
    image_cond = inpainting_image_cond(bundle, p, images, prepared if inpainting else None, tuple(init.shape[-2:]))
    blend = None
    if inpainting:
        init, blend = masked_init(bundle, p, init, prepared, all_seeds)
    timings["encode_s"] += time.perf_counter() - t
    shape = tuple(init.shape[1:])
    denoiser = denoiser_for(bundle)
    inpaint_extra = inpaint_fields(p, prepared)
    weight = mask_weight_fields(bundle, p, "img2img")
    overlay_masks: list = []
    scripts = p.soft_inpainting.infotext_fields() if inpainting and p.soft_inpainting is not None else {}
    scripts = {**(infotext_lead or {}), **scripts}

    def sample(n, seeds, subseeds):
        outcome = took((yield from run_pass(plan, denoiser, seeds, subseeds, shape, init=init, hooks=hooks,
                                            control=control, progress=progress, extra={"iteration": n},
                                            blend=blend, image_cond=image_cond, switch=switch)),
                       notes, timings)
        return outcome.x, outcome.interrupted

    def save(x, seeds, subseeds):
        finish = overlay_for(p, images, prepared, x, init, blend, overlay_masks) if inpainting else None
        return decode_and_save(bundle, x, seeds, lambda i: infotext_fields(
            p, bundle, seeds[i], subseeds[i], spec.func, job="img2img", denoising=denoising,
            extra={**(infotext_extra or {}), **refiner_fields(p, refiner)}, encoder=encoder, scripts=scripts,
            inpaint={**inpaint_extra, **weight}), (styled_prompt, styled_negative),
            "img2img-images", outputs_dir, notes, timings, control, finish=finish)

    done = yield from run_batches(seed_batches(all_seeds, all_subseeds, p.batch_size), sample, save, control, notes)
    finish_timings(timings, start, denoiser, bundle.device, notes)
    if refiner is not None:
        timings["model_calls"] += refiner.denoiser.calls
    result = done.result(p, timings, notes, (0, *shape))
    result.inpaint = prepared if inpainting else None
    result.overlay_masks = overlay_masks[:len(result.images)] if inpainting and p.overlay_inpaint else None
    return result


def inpainting_image_cond(bundle, p: GenerationParams, images: Sequence[Image.Image], prepared,
                          latent_hw: tuple[int, int]) -> torch.Tensor | None:
    """An inpainting checkpoint's extra UNet input for the batch (A1111's ``img2img_image_conditioning`` of the
    pictures it encodes: the prepared, filled ones when inpainting, else ``images`` resized): the processed mask
    (all ones without a mask: the whole picture is made) and the masked pictures' latents, with "Conditional mask
    weight"; None for other models."""
    if not bundle.is_inpainting:
        return None
    sources = ([prep.image for prep in prepared] if prepared is not None else
               [im if p.resize_mode == 3 else resize_image(p.resize_mode, im, p.width, p.height) for im in images])
    pictures = list(sources) * (p.batch_size if len(sources) == 1 else 1)
    mask = prepared[0].mask if prepared is not None else None
    return inpainting_conditioning(bundle, pictures, latent_hw, mask, p.inpainting_mask_weight, mask_round(p))


def masked_init(bundle, p: GenerationParams, init: torch.Tensor, prepared, all_seeds: Sequence[int]):
    """The init latents with A1111's latent "Masked content" applied, and the :class:`LatentBlend` of the pass.

    ``latent noise``: ``init * mask + noise * nmask``, the noise the *first* batch's seeds draw first (A1111 makes
    it once for the job from ``all_seeds[0:batch]``: "this needs to be fixed", says its code); ``latent
    nothing``: ``init * mask``. One latent mask for the batch (A1111's ``nmask``: one mask, every image)."""
    latmask = torch.from_numpy(prepared[0].latent_mask).to(device=init.device, dtype=torch.float32)
    nmask = latmask[None].expand(init.shape[1], *latmask.shape)
    if p.inpainting_fill == 2:
        rng = ImageNoise(tuple(init.shape[1:]), list(all_seeds[:init.shape[0]]), None, 0.0, None,
                         downscale=bundle.vae_scale_factor, source=p.randn_source, device=init.device)
        init = init * (1 - nmask) + rng.first().to(init.device) * nmask
    elif p.inpainting_fill == 3:
        init = init * (1 - nmask)
    return init, LatentBlend(init, nmask, p.soft_inpainting)


def overlay_for(p: GenerationParams, images: Sequence[Image.Image], prepared, x: torch.Tensor, init: torch.Tensor,
                blend, used: list | None = None):
    """``finish(i, image)`` for :func:`decode_and_save`: A1111's ``apply_overlay`` (the result pasted back into
    the picture, the original over it outside the mask) with each image's overlay, or with soft inpainting's
    adaptive composite (the original wherever the latents barely changed). ``used`` collects the mask each image
    was composited with."""
    from .. import masks

    overlays = [prep.overlay for prep in prepared]
    if p.soft_inpainting is not None:  # the extension's post_sample: the original pictures, no hole, as the base
        from .soft_inpainting import adaptive_masks

        paste_to = prepared[0].paste_to
        originals = [image if paste_to is not None or p.resize_mode == 3 else
                     resize_image(p.resize_mode, image, p.width, p.height) for image in images]
        if len(originals) == 1:
            originals = originals * len(x)
        composites, overlays = adaptive_masks(p.soft_inpainting, blend.nmask, init[:len(x)], x, originals,
                                              p.width, p.height, paste_to)
    else:
        composites = [prep.mask_for_overlay for prep in prepared]

    def finish(i: int, image: Image.Image) -> Image.Image:
        if not p.overlay_inpaint:  # A1111 then returns the sampled picture as it is (the crop, for "only masked")
            return image
        k = i % len(overlays)
        if used is not None:
            used.append(composites[k % len(composites)])
        return masks.apply_overlay(image, prepared[k % len(prepared)].paste_to, overlays[k])

    return finish


def loopback_denoising(loop: int, loops: int, initial: float, final: float, curve: str = "Linear") -> float:
    """A1111's loopback script: the denoising strength of loop ``loop`` (0-based) of ``loops``: from ``initial``
    to ``final`` along ``curve`` ("Linear", "Aggressive" = sine, fast first; "Lazy" = 1 - cosine, slow first)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        strength = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        strength = 1 - math.cos(progress * math.pi * 0.5)
    else:
        strength = progress
    return initial + (final - initial) * strength


def loopback_steps(bundle, p: GenerationParams, encoder: TextEncoder, init_images, *, loops: int = 4,
                   final_denoising_strength: float = 0.5, denoising_curve: str = "Linear", mask=None,
                   hooks: Sequence[Hook] = (), control: JobControl | None = None,
                   outputs_dir: str | Path | None = None, progress: Progress | None = None,
                   styles: Mapping[str, Style] | None = None) -> Generator[StepState, None, Result]:
    """A1111's Loopback script: img2img ``loops`` times, each output the next input.

    Each loop uses the next seed (``seed, seed + 1, ...``, continuing across ``n_iter`` batches) and the
    denoising strength :func:`loopback_denoising` gives for it (``denoising_strength`` -> ``final_denoising_
    strength``); every ``n_iter`` batch restarts from the init image and the initial strength. Batch size is 1.
    Like A1111, the result holds every loop's image when ``n_iter == 1``, else the last image of each batch (all
    are saved). Infotexts add ``Final denoising strength`` and ``Denoising curve``. With a ``mask`` every loop
    inpaints the same region of the previous loop's picture (A1111 keeps ``p.image_mask`` across loops).
    """
    if not isinstance(loops, int) or isinstance(loops, bool) or loops < 1:
        raise ValueError(f"loops={loops!r} is not valid: it must be an integer >= 1.")
    if not (isinstance(final_denoising_strength, (int, float)) and 0 <= final_denoising_strength <= 1):
        raise ValueError(f"final_denoising_strength={final_denoising_strength!r} is not valid: it must be a "
                         "number between 0 and 1.")
    if denoising_curve not in DENOISING_CURVES:
        raise ValueError(f"denoising_curve={denoising_curve!r} is not valid: it must be one of "
                         f"{', '.join(DENOISING_CURVES)}.")
    p1 = p.replace(batch_size=1, n_iter=1)
    _, images = prepare_init_images(p1, init_images)
    if len(images) != 1:
        raise ValueError(f"loopback takes one init image, got {len(images)}")
    control = control or JobControl()
    initial = p.denoising_strength if p.denoising_strength is not None else DEFAULT_DENOISING
    extra = {"Final denoising strength": float(final_denoising_strength), "Denoising curve": denoising_curve}
    seed = seed0 = fix_seed(p.seed)
    kept: list[Result] = []
    all_results: list[Result] = []
    interrupted = False
    for _ in range(p.n_iter):
        image, last = images[0], None
        denoising = initial
        for i in range(loops):
            loop_p = p1.replace(seed=seed, denoising_strength=denoising)
            r = yield from img2img_steps(bundle, loop_p, encoder, [image], mask=mask, hooks=hooks, control=control,
                                         outputs_dir=outputs_dir, progress=progress, styles=styles,
                                         infotext_extra=extra)
            all_results.append(r)
            if r.interrupted or control.interrupt.is_set():
                interrupted = True
                break
            seed += 1
            denoising = loopback_denoising(i + 1, loops, initial, float(final_denoising_strength),
                                           denoising_curve)
            if control.skip.is_set():
                break
            last, image = r, r.image
            if p.n_iter == 1:
                kept.append(r)
        if p.n_iter > 1 and last is not None and not control.skip.is_set() and not interrupted:
            kept.append(last)
        if interrupted:
            break
    timings = {key: sum(r.timings.get(key, 0.0) for r in all_results)
               for key in ("encode_s", "sample_s", "decode_s", "save_s", "total_s", "model_calls")}
    notes = list(dict.fromkeys(w for r in all_results for w in r.warnings))
    latents = torch.cat([r.latents for r in kept]) if kept else torch.empty(0)
    return Result([im for r in kept for im in r.images], [t for r in kept for t in r.infotexts],
                  [s for r in kept for s in r.seeds], [s for r in kept for s in r.subseeds], latents,
                  p.replace(seed=seed0), timings,
                  [q for r in kept for q in r.paths], interrupted, notes)
