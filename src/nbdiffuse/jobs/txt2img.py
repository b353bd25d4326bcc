"""txt2img: text -> conditioning -> our sampling loop -> VAE decode -> saved images with infotexts.

:func:`txt2img_steps` is a generator: it yields a :class:`StepState` after every sampler step (hooks already
applied) and returns the finished :class:`Result`. Running to the end is a loop over it; stepping through a
generation is the same generator driven with ``next()``.
"""

from __future__ import annotations

import inspect
import json
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
from ..prompts.conditioning import TextEncoder
from ..prompts.parser import Style, apply_styles, extract_extra_networks
from ..sampling.base import StepState
from ..sampling.denoiser import Denoiser
from ..sampling.guidance import CFGDenoiser
from ..sampling.noise import BrownianNoise, ImageNoise, fix_seed, image_seeds
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import compute_sigmas
from .params import GenerationParams
from .result import Result

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


def infotext_fields(p: GenerationParams, bundle, seed: int, subseed: int, func: Callable) -> dict:
    """A1111's parameter line for one image, in A1111's key order."""
    core = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler_used,
        "CFG scale": p.cfg_scale,
        "Seed": seed,
        "Size": f"{p.width}x{p.height}",
        "Model hash": bundle.hash,
        "Model": bundle.name,
        "Variation seed": subseed if p.subseed_strength else None,
        "Variation seed strength": p.subseed_strength or None,
        "Seed resize from": (f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
                             if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None),
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
    }
    accepted = inspect.signature(func).parameters
    extra = {}
    if p.eta is not None and "eta" in accepted and p.eta != accepted["eta"].default:
        extra["Eta DDIM" if p.sampler_name == "DDIM" else "Eta"] = p.eta
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
    keys = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
    for name, key in keys.items():
        if name in accepted and getattr(p, name) != defaults[name]:
            extra[key] = getattr(p, name)
    if p.styles:
        extra["Styles array"] = json.dumps(list(p.styles), ensure_ascii=False)
    extra["RNG"] = "CPU"  # A1111's default draws noise on the GPU; ours is CPU noise, named so A1111 can match it
    extra["Version"] = f"nbdiffuse {__version__}"
    return build_fields(core, extra)


def apply_styled(p: GenerationParams, styles: Mapping[str, Style]) -> tuple[str, str]:
    """The prompt and negative prompt with ``p.styles`` applied (unknown names fail before any work)."""
    unknown = [name for name in p.styles if name not in styles]
    if unknown:
        known = ", ".join(styles) or "none loaded (session.load_styles(path) reads an A1111 styles.csv)"
        raise ValueError(f"styles: unknown style(s) {', '.join(map(repr, unknown))}; available: {known}")
    return apply_styles(p.prompt, p.negative_prompt, list(p.styles), styles)


@torch.no_grad()
def decode(bundle, latents: torch.Tensor, warnings_out: list[str]) -> list[Image.Image]:
    """VAE-decode latents to PIL images; a NaN decode in half precision is redone in float32 (and kept so)."""
    vae = bundle.vae
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def run() -> torch.Tensor:
        z = (latents / scale + shift).to(device=vae.device, dtype=vae.dtype)
        return vae.decode(z, return_dict=False)[0].float()

    pixels = run()
    if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
        vae.to(torch.float32)
        warnings_out.append("The VAE produced NaNs in half precision; decoded again in float32 (the VAE stays "
                            "in float32 for this session).")
        pixels = run()
    if not torch.isfinite(pixels).all():
        warnings_out.append("The VAE produced NaN/inf pixels even in float32: the latents are broken; "
                            "the affected pixels are black.")
        pixels = torch.nan_to_num(pixels, nan=-1.0, posinf=1.0, neginf=-1.0)
    pixels = ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((px * 255).round().astype(np.uint8)) for px in pixels]


def txt2img_steps(bundle, p: GenerationParams, encoder: TextEncoder, *, hooks: Sequence[Hook] = (),
                  control: JobControl | None = None, outputs_dir: str | Path | None = None,
                  progress: Callable[[StepState], None] | None = None,
                  styles: Mapping[str, Style] | None = None) -> Generator[StepState, None, Result]:
    """Run txt2img for ``p`` on ``bundle``: yields every step, returns the :class:`Result`."""
    control = control or JobControl()
    start = time.perf_counter()
    timings = {"encode_s": 0.0, "sample_s": 0.0, "decode_s": 0.0, "save_s": 0.0}
    notes: list[str] = []
    spec = SAMPLERS[p.sampler_name]
    options = {**spec.options, **sampler_options(p, spec.func)}
    device = bundle.device

    styled_prompt, styled_negative = apply_styled(p, styles or {})
    prompt, networks = extract_extra_networks(styled_prompt)
    negative, neg_networks = extract_extra_networks(styled_negative)
    if networks or neg_networks:
        names = ", ".join(f"<{n.kind}:{n.name}>" for n in [*networks, *neg_networks])
        notes.append(f"Extra-network tags are not applied yet and were removed from the prompt: {names}")

    seed, subseed = fix_seed(p.seed), fix_seed(p.subseed)
    all_seeds, all_subseeds = image_seeds(seed, subseed, p.subseed_strength, p.total_images)
    schedule_steps = p.steps * 2 if spec.second_order else p.steps

    t = time.perf_counter()
    conds = encoder.conds(prompt, schedule_steps, p.clip_skip)
    uncond = encoder.uncond(negative, schedule_steps, p.clip_skip)
    empty = encoder.empty(p.clip_skip)
    timings["encode_s"] += time.perf_counter() - t

    sigmas = compute_sigmas(p.scheduler_used, p.steps, bundle.sigmas, arch=bundle.arch,
                            discard_penultimate=spec.discard_penultimate).to(device)
    factor = bundle.vae_scale_factor
    shape = (bundle.latent_channels, p.height // factor, p.width // factor)
    time_ids = torch.tensor([p.height, p.width, 0, 0, p.height, p.width], dtype=torch.float32, device=device)
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
        rng = ImageNoise(shape, seeds, subseeds, p.subseed_strength,
                         (p.seed_resize_from_w, p.seed_resize_from_h), downscale=factor)
        x = rng.first().to(device) * sigmas[0]
        if spec.brownian:
            positive = sigmas[sigmas > 0]
            brownian = BrownianNoise(shape, seeds, float(positive.min()), float(positive.max()))

            def noise(sigma, sigma_next, _b=brownian):
                return _b(sigma, sigma_next).to(device)
        else:
            def noise(sigma=None, sigma_next=None, _r=rng):
                return _r.next().to(device)
        guider = CFGDenoiser(denoiser, conds, uncond, p.cfg_scale / spec.cfg_divisor, time_ids=time_ids, empty=empty,
                             need_uncond=spec.needs_uncond)
        run_options = dict(options)
        if spec.needs_uncond:
            run_options["uncond"] = lambda g=guider: g.last_uncond
        gen = spec.func(guider, x, sigmas, noise=noise, **run_options)

        t = time.perf_counter()
        state = None
        try:
            with torch.no_grad():
                state = next(gen)
            while True:
                state.extra.update(cond=guider.last_cond, uncond=guider.last_uncond, iteration=n, seeds=seeds)
                replacement = None
                for hook in hooks:
                    out = hook(state)
                    if out is not None:
                        replacement = state.x = out
                if progress is not None:
                    progress(state)
                yield state
                if control.interrupt.is_set() or control.skip.is_set():
                    interrupted = interrupted or control.interrupt.is_set()
                    x = state.denoised
                    break
                with torch.no_grad():
                    state = gen.send(replacement)
        except StopIteration as stop:
            x = stop.value
        except KeyboardInterrupt:
            interrupted = True
            control.interrupt.set()
            if state is None:
                break
            x = state.denoised
            notes.append("Interrupted by the kernel: kept the finished images and the current x0 estimate.")
        finally:
            gen.close()
            timings["sample_s"] += time.perf_counter() - t

        if not torch.isfinite(x).all():
            notes.append(f"The UNet produced NaN/inf latents ({bundle.dtype}); try a float32 session "
                         "(Session(dtype=torch.float32)) or a different sampler/CFG.")
        t = time.perf_counter()
        batch_images = decode(bundle, x, notes)
        timings["decode_s"] += time.perf_counter() - t
        for i, image in enumerate(batch_images):
            fields = infotext_fields(p, bundle, seeds[i], subseeds[i], spec.func)
            text = format_infotext(styled_prompt, styled_negative, fields)
            t = time.perf_counter()
            path = None
            if outputs_dir is not None:
                path = save_image(image, Path(outputs_dir) / "txt2img-images", seed=seeds[i], infotext=text)
            timings["save_s"] += time.perf_counter() - t
            images.append(image)
            infotexts.append(text)
            paths.append(path)
        latents_out.append(x.detach().float().cpu())
        seeds_out += seeds
        subseeds_out += subseeds
        if interrupted:
            break

    timings["total_s"] = time.perf_counter() - start
    timings["model_calls"] = denoiser.calls
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        timings["memory"] = (f"A: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB, "
                             f"R: {torch.cuda.max_memory_reserved(device) / 2**30:.2f} GB, "
                             f"Sys: {(total - free) / 2**30:.1f}/{total / 2**30:.4g} GB "
                             f"({(total - free) / total * 100:.1f}%)")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    latents = torch.cat(latents_out) if latents_out else torch.empty((0, *shape))
    return Result(images, infotexts, seeds_out, subseeds_out, latents, p, timings, paths, interrupted, notes)
