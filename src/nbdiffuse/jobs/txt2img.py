"""txt2img: text -> conditioning -> our sampling loop -> VAE decode -> saved images with infotexts.

:func:`txt2img_steps` is a generator: it yields a :class:`StepState` after every sampler step (hooks already
applied) and returns the finished :class:`Result`. Running to the end is a loop over it; stepping through a
generation is the same generator driven with ``next()``.
"""

from __future__ import annotations

import inspect
import json
import math
import threading
import time
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..io.infotext import build_fields
from ..io.infotext import format as format_infotext
from ..io.outputs import save_image
from ..models.lora import lora_hashes
from ..prompts.conditioning import TextEncoder
from ..prompts.parser import Style, apply_styles, extract_extra_networks
from ..sampling.base import StepState
from ..sampling.denoiser import Denoiser
from ..sampling.guidance import CFGDenoiser
from ..sampling.noise import GPU_EMULATED_NOTE, BrownianNoise, ImageNoise, fix_seed, gpu_is_emulated, image_seeds
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import compute_sigmas
from .guards import JobInterrupted, interruptible
from .params import GenerationParams
from .result import Result
from .tiling import circular_padding

Hook = Callable[[StepState], "torch.Tensor | None"]


@dataclass
class JobControl:
    """Flags another thread may set; the loop reads them after every step."""

    interrupt: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)


def sampler_options(p: GenerationParams, func: Callable) -> dict:
    """The keyword options A1111 would pass this sampler function."""
    accepted = inspect.signature(func).parameters
    opts = {}
    if "eta" in accepted:
        opts["eta"] = p.eta if p.eta is not None else accepted["eta"].default
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
        if name in accepted:
            opts[name] = getattr(p, name)
    return opts


def infotext_fields(p: GenerationParams, bundle, seed: int, subseed: int, func: Callable, *,
                    job: str = "txt2img", denoising: float | None = None, extra: Mapping | None = None,
                    encoder: TextEncoder | None = None) -> dict:
    """A1111's parameter line for one image, in A1111's key order.

    ``job`` is "txt2img" (hires fields when ``p.enable_hr``), or "img2img" (``Denoising strength`` and
    ``Extra noise``); ``denoising`` is the strength actually used; ``extra`` adds fields (loopback's) after the
    job's own. LoRAs merged into ``bundle`` for this job give ``Lora hashes``; embeddings ``encoder`` used give
    ``TI hashes``.
    """
    core = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        # A1111 names the schedule it resolved "Automatic" to only for samplers that have a default one; for the
        # others (Euler, LMS, Heun, ...) "Automatic" means the model's own and is written as such
        "Schedule type": p.scheduler_used if SAMPLERS[p.sampler_name].default_scheduler else p.scheduler,
        "CFG scale": p.cfg_scale,
        "Seed": seed,
        "Size": f"{p.width}x{p.height}",
        "Model hash": bundle.hash,
        "Model": bundle.name,
        "VAE hash": bundle.info.get("vae_hash") if _external_vae(bundle) else None,
        "VAE": Path(bundle.info["vae"]).stem if _external_vae(bundle) else None,
        "Variation seed": subseed if p.subseed_strength else None,
        "Variation seed strength": p.subseed_strength or None,
        "Seed resize from": (f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
                             if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None),
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
        "Tiling": True if p.tiling else None,
    }
    fields: dict = {}
    hires = job == "txt2img" and p.enable_hr
    if hires or job == "img2img":
        fields["Denoising strength"] = denoising
    if hires:  # A1111's insertion order (txt2img init, then calculate_target_resolution)
        if p.hr_sampler_name is not None and p.hr_sampler_name != p.sampler_name:
            fields["Hires sampler"] = p.hr_sampler_name
        if p.hr_prompt and p.hr_prompt != p.prompt:
            fields["Hires prompt"] = p.hr_prompt
        if p.hr_negative_prompt and p.hr_negative_prompt != p.negative_prompt:
            fields["Hires negative prompt"] = p.hr_negative_prompt
        if p.hr_scheduler_used != p.scheduler_used and SAMPLERS[p.hr_sampler_used].grid is None:
            fields["Hires schedule type"] = p.hr_scheduler_used
        if p.hr_resize_x == 0 and p.hr_resize_y == 0:
            fields["Hires upscale"] = p.hr_scale
        else:
            fields["Hires resize"] = f"{p.hr_resize_x}x{p.hr_resize_y}"
        if p.hr_second_pass_steps:
            fields["Hires steps"] = p.hr_second_pass_steps
        if p.hr_upscaler is not None:
            fields["Hires upscaler"] = p.hr_upscaler
    if p.emphasis != "Original":
        fields["Emphasis"] = p.emphasis
    if bundle.applied_loras:
        fields["Lora hashes"] = lora_hashes(bundle.applied_loras)
    if encoder is not None and encoder.used_embeddings:
        fields["TI hashes"] = encoder.ti_hashes
    accepted = inspect.signature(func).parameters
    if p.eta is not None and "eta" in accepted and p.eta != accepted["eta"].default:
        fields["Eta DDIM" if p.sampler_name == "DDIM" else "Eta"] = p.eta
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
    keys = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
    for name, key in keys.items():
        if name in accepted and getattr(p, name) != defaults[name]:
            fields[key] = getattr(p, name)
    if (hires or job == "img2img") and p.extra_noise > 0:
        fields["Extra noise"] = p.extra_noise
    fields.update(extra or {})
    if p.styles:
        fields["Styles array"] = json.dumps(list(p.styles), ensure_ascii=False)
    # A1111 writes the key only when the source is not its default "GPU" (and reads a missing key as "GPU")
    fields["RNG"] = p.randn_source if p.randn_source != "GPU" else None
    fields["Version"] = f"nbdiffuse {__version__}"
    return build_fields(core, fields)


def _external_vae(bundle) -> bool:
    return bundle.info.get("vae") not in (None, "checkpoint")


def apply_styled(p: GenerationParams, styles: Mapping[str, Style]) -> tuple[str, str]:
    """The prompt and negative prompt with ``p.styles`` applied (unknown names fail before any work)."""
    unknown = [name for name in p.styles if name not in styles]
    if unknown:
        known = ", ".join(styles) or "none loaded (session.load_styles(path) reads an A1111 styles.csv)"
        raise ValueError(f"styles: unknown style(s) {', '.join(map(repr, unknown))}; available: {known}")
    return apply_styles(p.prompt, p.negative_prompt, list(p.styles), styles)


def vae_scaling(vae) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a VAE: latents = (encoded - shift) * scale (SD's 0.18215, no shift)."""
    config = vae.config
    return float(getattr(config, "scaling_factor", 0.18215)), float(getattr(config, "shift_factor", None) or 0.0)


def _note_once(notes: list[str], note: str) -> None:
    """Add ``note`` unless the job already said it (images are decoded and saved one at a time)."""
    if note not in notes:
        notes.append(note)


@torch.no_grad()
def decode(bundle, latents: torch.Tensor, warnings_out: list[str]) -> list[Image.Image]:
    """VAE-decode latents to PIL images; a NaN decode in half precision is redone in float32 (and kept so).

    One image at a time, as A1111 does (``decode_latent_batch``): a batched convolution rounds differently from a
    single one, and image i of a batch must equal, pixel for pixel, the image made alone from its infotext.
    """
    vae = bundle.vae
    scale, shift = vae_scaling(vae)

    def run() -> torch.Tensor:
        z = (latents / scale + shift).to(device=vae.device, dtype=vae.dtype)
        return torch.cat([vae.decode(z[i:i + 1], return_dict=False)[0].float() for i in range(len(z))])

    pixels = run()
    if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
        vae.to(torch.float32)
        _note_once(warnings_out, "The VAE produced NaNs in half precision; decoded again in float32 (the VAE "
                                 "stays in float32 for this session).")
        pixels = run()
    if not torch.isfinite(pixels).all():
        _note_once(warnings_out, "The VAE produced NaN/inf pixels even in float32: the latents are broken; "
                                 "the affected pixels are black.")
        pixels = torch.nan_to_num(pixels, nan=-1.0, posinf=1.0, neginf=-1.0)
    pixels = ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((px * 255).round().astype(np.uint8)) for px in pixels]


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (all the same size) -> ``(N, 3, H, W)`` float32 in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2.0 - 1.0


@torch.no_grad()
def encode(bundle, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """VAE-encode PIL images (or ``(N, 3, H, W)`` pixels in [-1, 1]) to scaled latents (float32, on the device).

    Uses the mean of the VAE's latent distribution. A1111 (``get_first_stage_encoding``) draws a *sample* from it
    with the global, unseeded RNG, so its img2img is not exactly reproducible; SD's VAE posterior is so narrow
    (std ~1e-3 of the latent's) that the mean is the same image, and it is deterministic. One image at a time, as
    A1111's ``images_tensor_to_samples`` does, so an image's latents do not depend on the batch it came in.
    """
    vae = bundle.vae
    scale, shift = vae_scaling(vae)
    pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    mean = torch.cat([vae.encode(pixels[i:i + 1], return_dict=False)[0].mean for i in range(len(pixels))])
    return ((mean.float() - shift) * scale).to(bundle.device)


@dataclass
class PassPlan:
    """One sampling pass: sampler, its options, the sigmas to run, the conditioning and the guidance scale."""

    spec: object
    options: dict
    sigmas: torch.Tensor
    conds: list
    uncond: list
    empty: torch.Tensor | None
    cfg_scale: float
    time_ids: torch.Tensor
    name: str = "txt2img"
    # The whole schedule ``sigmas`` was cut from (img2img, hires): A1111 spans the SDE samplers' Brownian trees
    # over it, not over the tail that runs. None: ``sigmas`` itself.
    tree_sigmas: torch.Tensor | None = None
    # Timestep samplers' img2img / hires passes: the sigma the init latents are noised to, one point of A1111's
    # grid above ``sigmas[0]`` (schedules.TimestepGrid). None: ``sigmas[0]``.
    noise_sigma: float | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass
class PassOutcome:
    """What :func:`run_pass` returns: the latents (``None`` when a KeyboardInterrupt came before the first step),
    whether the job was interrupted, and whether the pass stopped early (interrupt or skip)."""

    x: torch.Tensor | None
    interrupted: bool = False
    stopped: bool = False


def plan_pass(bundle, p: GenerationParams, encoder: TextEncoder, prompt: str, negative: str, sigmas: torch.Tensor,
              *, sampler_name: str | None = None, size: tuple[int, int] | None = None,
              schedule_steps: int | None = None, hires_steps: int | None = None, name: str = "txt2img",
              tree_sigmas: torch.Tensor | None = None, noise_sigma: float | None = None) -> PassPlan:
    """Encode the prompts (A1111's schedules over ``schedule_steps``, or the hires rule with ``hires_steps``)
    and gather the sampler's options for a pass over ``sigmas`` (cut from ``tree_sigmas``, if given)."""
    spec = SAMPLERS[sampler_name or p.sampler_name]
    if schedule_steps is None:
        schedule_steps = spec.total_steps(p.steps)
    conds = encoder.conds(prompt, schedule_steps, p.clip_skip, hires_steps=hires_steps)
    uncond = encoder.uncond(negative, schedule_steps, p.clip_skip, hires_steps=hires_steps)
    empty = encoder.empty(p.clip_skip)
    w, h = size or (p.width, p.height)
    time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=bundle.device)
    options = {**spec.options, **sampler_options(p, spec.func)}
    return PassPlan(spec, options, sigmas.to(bundle.device), conds, uncond, empty, p.cfg_scale / spec.cfg_divisor,
                    time_ids, name, tree_sigmas, noise_sigma)


def checked_replacement(hook: Hook, out, state: StepState) -> torch.Tensor:
    """A latent a hook returned, checked at once (not steps later, deep inside the UNet) and named by its hook."""
    name = getattr(hook, "__qualname__", None) or repr(hook)
    x = state.x
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"Hook {name} returned a {type(out).__name__} at step {state.i}: a hook returns None "
                        f"(observe only) or a torch.Tensor shaped like state.x {tuple(x.shape)}")
    if out.shape != x.shape:
        raise ValueError(f"Hook {name} returned a tensor of shape {tuple(out.shape)} at step {state.i}: it must be "
                         f"shaped like state.x {tuple(x.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError(f"Hook {name} returned a latent with NaN/inf values at step {state.i}; nothing after it "
                         "could be a picture")
    return out.to(device=x.device, dtype=x.dtype)


def run_pass(plan: PassPlan, denoiser: Denoiser, p: GenerationParams, seeds: Sequence[int],
             subseeds: Sequence[int], shape: Sequence[int], *, init: torch.Tensor | None = None,
             extra_noise: float = 0.0, downscale: int = 8, hooks: Sequence[Hook] = (),
             control: JobControl | None = None, progress: Callable[[StepState], None] | None = None,
             notes: list[str] | None = None, timings: dict | None = None,
             extra: Mapping | None = None) -> Generator[StepState, None, PassOutcome]:
    """Sample one batch: yields every step (hooks applied), returns a :class:`PassOutcome`.

    Noise comes from one generator per seed, of ``p.randn_source`` (A1111's ImageRNG, recreated for every pass;
    Brownian trees over the whole schedule, ``plan.tree_sigmas``, for the SDE samplers): ``x = noise *
    sigmas[0]`` from scratch, or with ``init`` latents (img2img, hires pass) ``x = init + noise * sigmas[0]``
    plus ``noise * extra_noise`` (A1111's "Extra noise": the same noise tensor).

    The timestep samplers (``spec.grid``: DDIM, DDIM CFG++, PLMS, UniPC) work, as A1111 does, on the VP latent
    ``x_vp = x / sqrt(1 + sigma^2)``: they start from the noise itself (``x_vp = noise``) or from the init latents
    noised to ``plan.noise_sigma`` (``x_vp = (init + noise * (noise_sigma + extra_noise)) / sqrt(1 +
    noise_sigma^2)``: A1111's ``x sqrt(abar) + noise sqrt(1 - abar) + noise * extra * sqrt(abar)``), and the pass
    returns their last latent in VP scale (A1111 decodes it, still slightly noisy), not the last x0 estimate.
    """
    control = control or JobControl()
    notes = notes if notes is not None else []
    timings = timings if timings is not None else {"sample_s": 0.0}
    spec, sigmas = plan.spec, plan.sigmas
    device = sigmas.device
    if gpu_is_emulated(p.randn_source, device) and GPU_EMULATED_NOTE not in notes:
        notes.append(GPU_EMULATED_NOTE)
    rng = ImageNoise(shape, seeds, subseeds, p.subseed_strength, (p.seed_resize_from_w, p.seed_resize_from_h),
                     downscale=downscale, source=p.randn_source, device=device)
    noise0 = rng.first().to(device)
    if spec.grid is not None:
        x_vp = noise0
        if init is not None:
            s = plan.noise_sigma if plan.noise_sigma is not None else float(sigmas[0])
            x_vp = (init.to(device=device, dtype=torch.float32) + noise0 * (s + extra_noise)) / math.sqrt(1 + s**2)
        x = x_vp * math.sqrt(1 + float(sigmas[0]) ** 2)
    elif init is None:
        x = noise0 * sigmas[0]
    else:
        x = init.to(device=device, dtype=torch.float32) + noise0 * sigmas[0]
        if extra_noise > 0:
            x = x + noise0 * extra_noise
    if spec.brownian:
        full = plan.tree_sigmas if plan.tree_sigmas is not None else sigmas
        brownian = BrownianNoise(shape, seeds, full[full > 0].min(), full.max(), source=p.randn_source,
                                 device=device)

        def noise(sigma, sigma_next):
            return brownian(sigma, sigma_next).to(device)
    else:
        def noise(sigma=None, sigma_next=None):
            return rng.next().to(device)
    denoiser.vp_time = spec.grid is not None  # UniPC evaluates the model between table timesteps, the VP way
    guider = CFGDenoiser(denoiser, plan.conds, plan.uncond, plan.cfg_scale, time_ids=plan.time_ids,
                         empty=plan.empty, need_uncond=spec.needs_uncond)
    run_options = dict(plan.options)
    if spec.needs_uncond:
        run_options["uncond"] = lambda: guider.last_uncond
    gen = spec.func(guider, x, sigmas, noise=noise, **run_options)

    t = time.perf_counter()
    state = None
    outcome = PassOutcome(None)
    guard = interruptible(denoiser.unet, control.interrupt)  # an interrupt reaches inside a long UNet call
    guard.__enter__()
    try:
        with torch.no_grad():
            state = next(gen)
        while True:
            state.extra.update(cond=guider.last_cond, uncond=guider.last_uncond, seeds=list(seeds),
                               **{"pass": plan.name}, **(extra or {}))
            replacement = None
            for hook in hooks:
                out = hook(state)
                if out is not None:
                    replacement = state.x = checked_replacement(hook, out, state)
            if progress is not None:
                progress(state)
            yield state
            if control.interrupt.is_set() or control.skip.is_set():
                outcome = PassOutcome(state.denoised, control.interrupt.is_set(), True)
                break
            with torch.no_grad():
                state = gen.send(replacement)
    except StopIteration as stop:
        x_end = stop.value
        if spec.grid is not None:
            x_end = x_end / math.sqrt(1 + float(sigmas[-1]) ** 2)
        outcome = PassOutcome(x_end)
    except (KeyboardInterrupt, JobInterrupted) as stop:
        control.interrupt.set()
        if state is not None and isinstance(stop, KeyboardInterrupt):
            notes.append("Interrupted by the kernel: kept the finished images and the current x0 estimate.")
        outcome = PassOutcome(state.denoised if state is not None else None, True, True)
    finally:
        guard.__exit__(None, None, None)
        gen.close()
        timings["sample_s"] = timings.get("sample_s", 0.0) + time.perf_counter() - t
    if outcome.x is not None and not torch.isfinite(outcome.x).all():
        notes.append(nan_note(denoiser.dtype))
    return outcome


def nan_note(dtype: torch.dtype) -> str:
    """What to say when the sampled latents hold NaN/inf: half precision is a suspect only in half precision."""
    if dtype == torch.float32:
        return ("The sampled latents hold NaN/inf values although the UNet ran in float32, so precision is not the "
                "cause: look at what feeds the model (an extreme CFG scale, LoRA weight or emphasis, a hook's "
                "replacement latent, a broken model file).")
    return (f"The UNet produced NaN/inf latents in {str(dtype).replace('torch.', '')}; try float32 "
            "(Session(dtype=torch.float32)), upcast attention, or a lower CFG scale.")


def memory_line(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (f"A: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB, "
            f"R: {torch.cuda.max_memory_reserved(device) / 2**30:.2f} GB, "
            f"Sys: {(total - free) / 2**30:.1f}/{total / 2**30:.4g} GB ({(total - free) / total * 100:.1f}%)")


def decode_and_save(bundle, x: torch.Tensor, seeds: Sequence[int], fields_for: Callable[[int], dict],
                    prompts: tuple[str, str], folder: str, outputs_dir, notes: list[str], timings: dict,
                    control: JobControl | None = None) -> tuple[list[Image.Image], list[str], list[Path | None]]:
    """Decode one batch image by image, write each image's infotext (``fields_for(i)``) and save it under
    ``outputs_dir/folder``: ``(images, infotexts, paths)``.

    Finished images are never lost: a folder that cannot be written (read-only, full, a file in the way) leaves
    ``paths[i]`` None with one note naming the folder and the error, and the job goes on; a KeyboardInterrupt
    here sets ``control.interrupt`` and returns the images done so far (the lists are then shorter than ``x``).
    """
    images, texts, paths = [], [], []
    target = Path(outputs_dir) / folder if outputs_dir is not None else None
    try:
        for i in range(len(x)):
            t = time.perf_counter()
            image = decode(bundle, x[i:i + 1], notes)[0]
            timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - t
            text = format_infotext(*prompts, fields_for(i))
            images.append(image)
            texts.append(text)
            paths.append(None)
            if target is not None:
                t = time.perf_counter()
                try:
                    paths[-1] = save_image(image, target, seed=seeds[i], infotext=text)
                except OSError as e:
                    _note_once(notes, f"Could not save images to {target} ({type(e).__name__}: {e}); they are "
                                      "kept in the Result: result.save(folder) writes them elsewhere.")
                timings["save_s"] = timings.get("save_s", 0.0) + time.perf_counter() - t
    except KeyboardInterrupt:
        if control is None:
            raise
        control.interrupt.set()
        notes.append(f"Interrupted while decoding and saving: kept {len(images)} of this batch's {len(x)} images.")
    return images, texts, paths


def finish_timings(timings: dict, start: float, denoiser: Denoiser, device: torch.device, notes: list[str]) -> None:
    """Total time, model calls and (on CUDA) A1111's memory line; the job's notes become warnings."""
    timings["total_s"] = time.perf_counter() - start
    timings["model_calls"] = denoiser.calls
    if memory_line(device):
        timings["memory"] = memory_line(device)
    for note in notes:
        warnings.warn(note, stacklevel=4)


def styled_prompts(p: GenerationParams, styles: Mapping[str, Style] | None, notes: list[str],
                   applied: Sequence[str] = ()) -> tuple[str, str, str, str]:
    """``(styled prompt, styled negative, prompt, negative)``: the last two without extra-network tags.

    Tags whose network is not in ``applied`` (the names of the LoRAs the caller merged) are reported in ``notes``.
    """
    styled_prompt, styled_negative = apply_styled(p, styles or {})
    prompt, networks = extract_extra_networks(styled_prompt)
    negative, neg_networks = extract_extra_networks(styled_negative)
    ignored = [n for n in networks if n.name not in applied] + neg_networks
    if ignored:
        names = ", ".join(f"<{n.kind}:{n.name}>" for n in ignored)
        notes.append(f"Extra-network tags not applied (only positive-prompt <lora:...> tags with a models folder "
                     f"are) and removed from the prompt: {names}")
    return styled_prompt, styled_negative, prompt, negative


def applied_names(bundle) -> list[str]:
    """Names of the LoRAs merged into ``bundle`` for the running job."""
    return [lora.name for lora in bundle.applied_loras]


def txt2img_steps(bundle, p: GenerationParams, encoder: TextEncoder, *, hooks: Sequence[Hook] = (),
                  control: JobControl | None = None, outputs_dir: str | Path | None = None,
                  progress: Callable[[StepState], None] | None = None,
                  styles: Mapping[str, Style] | None = None) -> Generator[StepState, None, Result]:
    """Run txt2img for ``p`` on ``bundle``: yields every step (both passes with hires fix), returns the
    :class:`Result`. With ``p.tiling`` the UNet and VAE pad circularly for the whole job."""
    with circular_padding(bundle, p.tiling):
        return (yield from _txt2img(bundle, p, encoder, hooks=hooks, control=control, outputs_dir=outputs_dir,
                                    progress=progress, styles=styles))


def _txt2img(bundle, p, encoder, *, hooks, control, outputs_dir, progress, styles):
    control = control or JobControl()
    start = time.perf_counter()
    timings = {"encode_s": 0.0, "sample_s": 0.0, "decode_s": 0.0, "save_s": 0.0}
    notes: list[str] = []
    spec = SAMPLERS[p.sampler_name]
    device = bundle.device
    styled_prompt, styled_negative, prompt, negative = styled_prompts(p, styles, notes, applied_names(bundle))

    seed, subseed = fix_seed(p.seed), fix_seed(p.subseed)
    all_seeds, all_subseeds = image_seeds(seed, subseed, p.subseed_strength, p.total_images)

    t = time.perf_counter()
    if spec.grid is not None:  # DDIM, PLMS, UniPC: A1111's own grid, whatever the schedule type
        sigmas = spec.grid(p.steps, bundle.sigmas).sigmas
    else:
        sigmas = compute_sigmas(p.scheduler_used, p.steps, bundle.sigmas, arch=bundle.arch,
                                discard_penultimate=spec.discard_penultimate)
    plan = plan_pass(bundle, p, encoder, prompt, negative, sigmas)
    hires = None
    if p.enable_hr:
        from .hires import plan_hires

        hires = plan_hires(bundle, p, encoder, styles, notes)
    timings["encode_s"] += time.perf_counter() - t

    factor = bundle.vae_scale_factor
    shape = (bundle.latent_channels, p.height // factor, p.width // factor)
    denoiser = Denoiser(bundle.unet, bundle.alphas_cumprod, bundle.prediction_type)

    images, latents_out, infotexts, paths, seeds_out, subseeds_out = [], [], [], [], [], []
    interrupted = False
    for n in range(p.n_iter):
        if control.interrupt.is_set():
            interrupted = True
            break
        control.skip.clear()
        seeds = all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
        subseeds = all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
        outcome = yield from run_pass(plan, denoiser, p, seeds, subseeds, shape, downscale=factor, hooks=hooks,
                                      control=control, progress=progress, notes=notes, timings=timings,
                                      extra={"iteration": n})
        interrupted = interrupted or outcome.interrupted
        if outcome.x is None:
            break
        x = outcome.x
        if hires is not None:
            from .hires import hires_pass

            x = yield from hires_pass(hires, denoiser, p, x, seeds, subseeds, first_pass_stopped=outcome.stopped,
                                      hooks=hooks, control=control, progress=progress, notes=notes,
                                      timings=timings, extra={"iteration": n})
            interrupted = interrupted or control.interrupt.is_set()
        denoising = hires.denoising if hires is not None else None
        batch = decode_and_save(bundle, x, seeds, lambda i, s=seeds, u=subseeds, d=denoising: infotext_fields(
            p, bundle, s[i], u[i], spec.func, encoder=encoder, denoising=d), (styled_prompt, styled_negative),
            "txt2img-images", outputs_dir, notes, timings, control)
        k = len(batch[0])  # fewer than the batch when interrupted while decoding
        interrupted = interrupted or k < len(seeds)
        images += batch[0]
        infotexts += batch[1]
        paths += batch[2]
        latents_out.append(x[:k].detach().float().cpu())
        seeds_out += seeds[:k]
        subseeds_out += subseeds[:k]
        if interrupted:
            break

    finish_timings(timings, start, denoiser, device, notes)
    if latents_out:
        latents = torch.cat(latents_out)
    else:
        h, w = (p.hr_size[1], p.hr_size[0]) if p.enable_hr else (p.height, p.width)
        latents = torch.empty((0, shape[0], h // factor, w // factor))
    return Result(images, infotexts, seeds_out, subseeds_out, latents, p, timings, paths, interrupted, notes)
