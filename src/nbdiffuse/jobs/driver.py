"""The driver every job shares: plan a sampling pass, run it with hooks and flags, loop over batches, save.

A sampler is a generator that knows nothing of hooks, progress or interruption (:mod:`nbdiffuse.sampling`);
this module is what iterates it. One job (txt2img, img2img, hires fix) is:

1. :func:`plan_pass` once per pass kind: sigmas, conditioning, sampler options, how noise is drawn;
2. :func:`run_batches` over the job's seed batches, calling the job's ``sample(n, seeds, subseeds)`` (one or two
   :func:`run_pass` calls) and :func:`decode_and_save` for each batch;
3. :func:`finish_timings`, and a :class:`~nbdiffuse.jobs.result.Result`.

:func:`run_pass` yields a :class:`StepState` after every model step (hooks already applied), so a caller can step
through a job with ``next()``; it returns a :class:`PassOutcome` with the latents and what the pass has to say.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .._notes import note_once
from ..io.infotext import format as format_infotext
from ..io.keys import VAE_TILING_KEY, VAE_UPCAST_KEY
from ..io.outputs import save_image
from ..models.memory import wants_vae_tiling
from ..models.vae import UPCAST_INFO, decode
from ..prompts.conditioning import TextEncoder
from ..prompts.parser import extract_extra_networks
from ..prompts.styles import Style, apply_styles
from ..sampling.base import StepState
from ..sampling.denoiser import Denoiser
from ..sampling.guidance import CFGDenoiser, Cond
from ..sampling.noise import GPU_EMULATED_NOTE, BrownianNoise, ImageNoise, gpu_is_emulated
from ..sampling.registry import SAMPLERS
from .guards import JobInterrupted, interruptible
from .memory_stats import memory_line, memory_numbers
from .nancheck import FiniteWatch, NonFiniteLatents, all_finite, unet_failure
from .params import GenerationParams
from .result import Result
from .soft_inpainting import latent_blend, modified_nmask

Hook = Callable[[StepState], "torch.Tensor | None"]
Progress = Callable[[StepState], None]
# The SDXL refiner's aesthetic-score conditioning for the prompt and the negative prompt (A1111's settings
# sdxl_refiner_high_aesthetic_score and sdxl_refiner_low_aesthetic_score, diffusers' img2img defaults)
REFINER_AESTHETIC_SCORES = (6.0, 2.5)


@dataclass
class JobControl:
    """Flags another thread may set; the loop reads them after every step."""

    interrupt: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)


def new_timings() -> dict:
    """A job's timings before its first stage: seconds spent encoding, sampling, decoding and saving."""
    return {"encode_s": 0.0, "sample_s": 0.0, "decode_s": 0.0, "save_s": 0.0}


def denoiser_for(bundle) -> Denoiser:
    """The bundle's UNet as a k-diffusion denoiser (counts its calls for the job's timings)."""
    return Denoiser(bundle.unet, bundle.alphas_cumprod, bundle.prediction_type)


# --------------------------------------------------------------------------------------------------- prompts

def apply_styled(p: GenerationParams, styles: Mapping[str, Style]) -> tuple[str, str]:
    """The prompt and negative prompt with ``p.styles`` applied (unknown names fail before any work)."""
    unknown = [name for name in p.styles if name not in styles]
    if unknown:
        known = ", ".join(styles) or "none loaded (session.load_styles(path) reads an A1111 styles.csv)"
        raise ValueError(f"styles: unknown style(s) {', '.join(map(repr, unknown))}; available: {known}")
    return apply_styles(p.prompt, p.negative_prompt, list(p.styles), styles)


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
        notes.append(f"Extra-network tags not applied (only positive-prompt <lora:...> and <hypernet:...> tags "
                     f"with a models folder are) and removed from the prompt: {names}")
    return styled_prompt, styled_negative, prompt, negative


def applied_names(bundle) -> list[str]:
    """Names of the LoRAs merged into ``bundle`` and of the hypernetworks hooked into it, for the running job."""
    return [lora.name for lora in bundle.applied_loras] + [name for name, _, _ in bundle.applied_hypernetworks]


# ------------------------------------------------------------------------------------------------------ pass

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


@dataclass(frozen=True)
class NoiseSpec:
    """How a pass draws its noise: A1111's seed fields (variation seed, seed resize, RNG source)."""

    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)
    source: str = "CPU"

    @classmethod
    def of(cls, p: GenerationParams) -> NoiseSpec:
        return cls(p.subseed_strength, (p.seed_resize_from_w, p.seed_resize_from_h), p.randn_source)


@dataclass
class PassPlan:
    """One sampling pass: sampler, its options, the sigmas to run, the conditioning, the guidance scale and how
    the noise is drawn."""

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
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    # A1111's "Extra noise" of img2img and hires passes: ``noise * extra_noise`` added to the noised init latents.
    extra_noise: float = 0.0
    downscale: int = 8  # pixels per latent (the VAE's scale factor), for "Seed resize from"
    # Where the latents live. ``sigmas`` stay on the CPU: a sampler reads them on the host every step (float(),
    # comparisons), which for GPU sigmas would wait for the GPU each time. None: sigmas' device.
    device: torch.device | None = None
    # A1111's "Noise multiplier for img2img" (initial_noise_multiplier): the first noise draw is scaled by it.
    noise_multiplier: float = 1.0
    # The negative rows' time ids where they differ from ``time_ids`` (the SDXL refiner's aesthetic score)
    uncond_time_ids: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass
class LatentBlend:
    """Inpainting's latent mask in the sampling loop (A1111's ``CFGDenoiser`` with ``p.mask``/``p.nmask``).

    ``init`` are the clean init latents, ``nmask`` is 1 where the picture is inpainted (A1111's ``nmask``; its
    ``mask`` is ``1 - nmask``), shaped to broadcast over ``init``. After every model call the k-diffusion samplers'
    x0 prediction becomes ``denoised * nmask + init * (1 - nmask)``; the timestep samplers (DDIM, PLMS, UniPC:
    A1111's ``mask_before_denoising``) blend the model's *input* the same way in their VP scale instead. After the
    pass the latents are blended once more (:meth:`final`). With ``soft`` (A1111's Soft inpainting) each blend is
    its magnitude-preserving mix with a mask that moves with sigma, and the final blend is skipped.
    """

    init: torch.Tensor
    nmask: torch.Tensor
    soft: object = None  # a SoftInpainting, or None

    def __call__(self, current: torch.Tensor, sigma) -> torch.Tensor:
        """The blend of one model call's ``current`` latent (A1111's ``apply_blend``); ``sigma`` is what A1111's
        denoiser gets: the sigma, or a timestep sampler's timestep."""
        init = self.init.to(device=current.device, dtype=current.dtype)
        nmask = self.nmask.to(device=current.device, dtype=current.dtype)
        if self.soft is None:
            return current * nmask + init * (1 - nmask)
        s = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        return latent_blend(self.soft, init, current, modified_nmask(self.soft, nmask, s)).to(current.dtype)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The blend after sampling (A1111's ``samples * nmask + init_latent * mask``; soft inpainting keeps the
        samples as they are)."""
        if self.soft is not None:
            return x
        init = self.init.to(device=x.device, dtype=x.dtype)
        nmask = self.nmask.to(device=x.device, dtype=x.dtype)
        return x * nmask + init * (1 - nmask)

    def wrap(self, model: Callable, denoiser: Denoiser, before: bool) -> Callable:
        """``model(x, sigma)`` with the blend: on its x0 prediction, or (``before``: the timestep samplers) on its
        input in VP scale, the sampler's own ``x`` left as it is (A1111 computes eps from the blended input and
        steps from its unblended ``x``)."""
        if not before:
            return lambda x, sigma: self(model(x, sigma), sigma)

        def blended_input(x, sigma):
            scale = (1 + sigma.reshape(-1)[0].float() ** 2) ** 0.5  # x = x_vp * sqrt(1 + sigma^2)
            t = denoiser.timestep(sigma.reshape(-1)[:1]) if self.soft is not None else sigma  # soft: A1111's t
            x_in = self(x / scale, t) * scale
            return model(x_in, sigma) + (x - x_in)  # the eps of the blended input, from the sampler's own x

        return blended_input


@dataclass
class PassOutcome:
    """What :func:`run_pass` returns: the latents (``None`` when a KeyboardInterrupt came before the first step),
    whether the job was interrupted, whether the pass stopped early (interrupt or skip), what the pass has to
    tell the user, and the seconds it sampled."""

    x: torch.Tensor | None
    interrupted: bool = False
    stopped: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def plan_pass(bundle, p: GenerationParams, encoder: TextEncoder, prompt: str, negative: str, sigmas: torch.Tensor,
              *, sampler_name: str | None = None, size: tuple[int, int] | None = None,
              schedule_steps: int | None = None, hires_steps: int | None = None, name: str = "txt2img",
              tree_sigmas: torch.Tensor | None = None, noise_sigma: float | None = None,
              extra_noise: float = 0.0) -> PassPlan:
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
    uncond_time_ids = None
    if bundle.arch == "sdxl_refiner":  # A1111's sd_models_xl: original size = target size = this pass's, crop (0, 0)
        high, low = REFINER_AESTHETIC_SCORES
        time_ids = torch.tensor([h, w, 0, 0, high], dtype=torch.float32, device=bundle.device)
        uncond_time_ids = torch.tensor([h, w, 0, 0, low], dtype=torch.float32, device=bundle.device)
        if negative == "":  # an all-empty negative prompt: zeroed text embeddings (force_zero_embeddings)
            uncond = [(end, Cond(torch.zeros_like(c.context), torch.zeros_like(c.pooled))) for end, c in uncond]
    options = {**spec.options, **sampler_options(p, spec.func)}
    return PassPlan(spec, options, sigmas.cpu(), conds, uncond, empty, p.cfg_scale / spec.cfg_divisor,
                    time_ids, name, tree_sigmas, noise_sigma, NoiseSpec.of(p), extra_noise, bundle.vae_scale_factor,
                    bundle.device, uncond_time_ids=uncond_time_ids)


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


def run_pass(plan: PassPlan, denoiser: Denoiser, seeds: Sequence[int], subseeds: Sequence[int],
             shape: Sequence[int], *, init: torch.Tensor | None = None, hooks: Sequence[Hook] = (),
             control: JobControl | None = None, progress: Progress | None = None,
             extra: Mapping | None = None, blend: LatentBlend | None = None,
             image_cond: torch.Tensor | None = None, switch=None) -> Generator[StepState, None, PassOutcome]:
    """Sample one batch: yields every step (hooks applied), returns a :class:`PassOutcome`.

    Noise comes from one generator per seed, drawn as ``plan.noise`` says (A1111's ImageRNG, recreated for every
    pass; Brownian trees over the whole schedule, ``plan.tree_sigmas``, for the SDE samplers): ``x = noise *
    sigmas[0]`` from scratch, or with ``init`` latents (img2img, hires pass) ``x = init + noise * sigmas[0]``
    plus ``noise * plan.extra_noise`` (A1111's "Extra noise": the same noise tensor).

    The timestep samplers (``spec.grid``: DDIM, DDIM CFG++, PLMS, UniPC) work, as A1111 does, on the VP latent
    ``x_vp = x / sqrt(1 + sigma^2)``: they start from the noise itself (``x_vp = noise``) or from the init latents
    noised to ``plan.noise_sigma`` (``x_vp = (init + noise * (noise_sigma + extra_noise)) / sqrt(1 +
    noise_sigma^2)``: A1111's ``x sqrt(abar) + noise sqrt(1 - abar) + noise * extra * sqrt(abar)``), and the pass
    returns their last latent in VP scale (A1111 decodes it, still slightly noisy), not the last x0 estimate.

    ``image_cond`` (inpainting models): the ``(batch or 1, 5, h, w)`` mask + masked-image latents the UNet takes
    after the latents at every call (:mod:`nbdiffuse.models.inpainting`).

    ``blend`` (inpainting) blends every model call with the init latents (:class:`LatentBlend`) and the end result
    once more; the first noise draw is scaled by ``plan.noise_multiplier``. Hooks see the init latents the pass
    started from in ``state.extra["init"]`` (after inpainting's masked content) and the latent mask in
    ``state.extra["nmask"]`` (1: inpainted).

    ``switch`` (a :class:`~nbdiffuse.jobs.refiner.PassSwitch`: the SDXL refiner) hands the model calls to another
    model mid-pass, by A1111's rule: the guided model is wrapped, and the sampler keeps its sigmas, latent and noise.
    """
    control = control or JobControl()
    spec, sigmas, how = plan.spec, plan.sigmas, plan.noise
    extra_noise = plan.extra_noise
    device = plan.device or sigmas.device
    notes = [GPU_EMULATED_NOTE] if gpu_is_emulated(how.source, device) else []
    rng = ImageNoise(shape, seeds, subseeds, how.subseed_strength, how.seed_resize_from, downscale=plan.downscale,
                     source=how.source, device=device)
    noise0 = rng.first().to(device)
    if plan.noise_multiplier != 1.0:
        noise0 = noise0 * plan.noise_multiplier
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
        brownian = BrownianNoise(shape, seeds, full[full > 0].min(), full.max(), source=how.source, device=device)

        def noise(sigma, sigma_next):
            return brownian(sigma, sigma_next).to(device)
    else:
        def noise(sigma=None, sigma_next=None):
            return rng.next().to(device)
    denoiser.vp_time = spec.grid is not None  # UniPC evaluates the model between table timesteps, the VP way
    guider = CFGDenoiser(denoiser, plan.conds, plan.uncond, plan.cfg_scale, time_ids=plan.time_ids,
                         empty=plan.empty, need_uncond=spec.needs_uncond, image_cond=image_cond,
                         uncond_time_ids=plan.uncond_time_ids)
    if switch is not None:
        guider = switch.guide(guider, denoiser, spec, image_cond)
    run_options = dict(plan.options)
    if spec.needs_uncond:
        run_options["uncond"] = lambda: guider.last_uncond
    model = guider if blend is None else blend.wrap(guider, denoiser, before=spec.grid is not None)
    gen = spec.func(model, x, sigmas, noise=noise, **run_options)

    t = time.perf_counter()
    state = None
    outcome = PassOutcome(None)
    watch = FiniteWatch(device)  # NaN/inf in any element of a step's latent, without a host sync per step

    def failed(step: int) -> NonFiniteLatents:
        return NonFiniteLatents(unet_failure(step, plan.steps, denoiser.dtype, plan.name, cfg_scale=plan.cfg_scale,
                                             cond_ok=all_finite((plan.conds, plan.uncond)),
                                             init_ok=init is None or all_finite(init)), step)

    seen = {} if init is None else {"init": init}  # what the pass started from, for hooks (and inpainting's mask)
    if blend is not None:
        seen["nmask"] = blend.nmask
    guards = [interruptible(unet, control.interrupt)  # an interrupt reaches inside a long UNet call
              for unet in (denoiser.unet, *([switch.unet] if switch is not None else []))]
    for guard in guards:
        guard.__enter__()
    try:
        with torch.no_grad():
            state = next(gen)
        while True:
            bad = watch.see(state.x, state.i)
            if bad is not None:
                raise failed(bad)
            state.extra.update(cond=guider.last_cond, uncond=guider.last_uncond, seeds=list(seeds),
                               **{"pass": plan.name}, **(extra or {}), **seen)
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
        for guard in guards:
            guard.__exit__(None, None, None)
        gen.close()
        outcome.seconds = time.perf_counter() - t
    if outcome.x is not None and blend is not None:
        outcome.x = blend.final(outcome.x)
    if outcome.x is not None:
        bad = watch.first_bad(outcome.x, state.i if state is not None else 0)  # every element; one wait per pass
        if bad is not None:
            raise failed(bad)
    outcome.notes = notes
    return outcome


def took(outcome: PassOutcome, notes: list[str], timings: dict) -> PassOutcome:
    """Book a pass's notes (each once) and sampling time into the job's; returns the outcome."""
    for note in outcome.notes:
        note_once(notes, note)
    timings["sample_s"] = timings.get("sample_s", 0.0) + outcome.seconds
    return outcome


# --------------------------------------------------------------------------------------------------- batches

def decode_and_save(bundle, x: torch.Tensor, seeds: Sequence[int], fields_for: Callable[[int], dict],
                    prompts: tuple[str, str], folder: str, outputs_dir, notes: list[str], timings: dict,
                    control: JobControl | None = None,
                    finish: Callable[[int, Image.Image], Image.Image] | None = None
                    ) -> tuple[list[Image.Image], list[str], list[Path | None]]:
    """Decode one batch image by image, write each image's infotext (``fields_for(i)``) and save it under
    ``outputs_dir/folder``: ``(images, infotexts, paths)``.

    Finished images are never lost: a folder that cannot be written (read-only, full, a file in the way) leaves
    ``paths[i]`` None with one note naming the folder and the error, and the job goes on; a KeyboardInterrupt
    here sets ``control.interrupt`` and returns the images done so far (the lists are then shorter than ``x``).
    ``finish(i, image)`` turns each decoded image into the one saved (inpainting's paste-back and overlay).
    """
    images, texts, paths = [], [], []
    target = Path(outputs_dir) / folder if outputs_dir is not None else None
    try:
        for i in range(len(x)):
            t = time.perf_counter()
            tiled = wants_vae_tiling(bundle.vae, x[i:i + 1].shape, getattr(bundle, "vae_tiling", "auto"))
            image = decode(bundle, x[i:i + 1], notes, tiled=tiled)[0]
            if finish is not None:
                upcast = image.info.get(UPCAST_INFO)
                image = finish(i, image)
                if upcast:
                    image.info[UPCAST_INFO] = upcast
            timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - t
            fields = fields_for(i)
            if image.info.get(UPCAST_INFO):  # this image was decoded again: say in which dtype
                fields = {**fields, VAE_UPCAST_KEY: image.info[UPCAST_INFO]}
            text = format_infotext(*prompts, {**fields, VAE_TILING_KEY: True} if tiled else fields)
            images.append(image)
            texts.append(text)
            paths.append(None)
            if target is not None:
                t = time.perf_counter()
                try:
                    paths[-1] = save_image(image, target, seed=seeds[i], infotext=text)
                except OSError as e:
                    note_once(notes, f"Could not save images to {target} ({type(e).__name__}: {e}); they are "
                                     "kept in the Result: result.save(folder) writes them elsewhere.")
                timings["save_s"] = timings.get("save_s", 0.0) + time.perf_counter() - t
    except KeyboardInterrupt:
        if control is None:
            raise
        control.interrupt.set()
        notes.append(f"Interrupted while decoding and saving: kept {len(images)} of this batch's {len(x)} images.")
    return images, texts, paths


def seed_batches(seeds: Sequence[int], subseeds: Sequence[int], batch_size: int) -> list[tuple[list, list]]:
    """``(seeds, subseeds)`` of each batch of ``batch_size`` images (the last may be shorter)."""
    return [(list(seeds[b:b + batch_size]), list(subseeds[b:b + batch_size]))
            for b in range(0, len(seeds), batch_size)]


@dataclass
class Batches:
    """What :func:`run_batches` collected: every finished image of every batch, in order."""

    images: list = field(default_factory=list)
    infotexts: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    latents: list = field(default_factory=list)  # one (k, C, h, w) CPU float32 tensor per batch
    seeds: list = field(default_factory=list)
    subseeds: list = field(default_factory=list)
    interrupted: bool = False

    def result(self, p: GenerationParams, timings: dict, notes: list[str], empty_latents: Sequence[int]) -> Result:
        """The job's :class:`Result` (``empty_latents``: the latent shape when no image was finished)."""
        latents = torch.cat(self.latents) if self.latents else torch.empty(tuple(empty_latents))
        return Result(self.images, self.infotexts, self.seeds, self.subseeds, latents, p, timings, self.paths,
                      self.interrupted, notes)


Sample = Callable[[int, list, list], Generator[StepState, None, "tuple[torch.Tensor | None, bool]"]]
Save = Callable[[torch.Tensor, list, list], "tuple[list[Image.Image], list[str], list[Path | None]]"]


def run_batches(batches: Sequence[tuple[list, list]], sample: Sample, save: Save, control: JobControl,
                notes: list[str]) -> Generator[StepState, None, Batches]:
    """The batch loop of every job: for batch ``n`` with its ``(seeds, subseeds)``, ``sample(n, seeds,
    subseeds)`` (a generator returning ``(latents or None, interrupted)``), then ``save(latents, seeds,
    subseeds)`` (``(images, infotexts, paths)``, shorter than the batch when interrupted while saving).

    Stops before a batch when the interrupt flag is set, after one that was interrupted, and when a pass had
    nothing to decode; clears the skip flag before each batch (Skip ends one batch, not the job). When NaN/inf
    latents stop a batch (:class:`~nbdiffuse.jobs.nancheck.NonFiniteLatents`), the images of the batches before it
    are kept: the job ends as interrupted with the error's message in ``notes``; with nothing finished it raises.
    """
    out = Batches()
    for n, (seeds, subseeds) in enumerate(batches):
        if control.interrupt.is_set():
            out.interrupted = True
            break
        control.skip.clear()
        try:
            x, interrupted = yield from sample(n, seeds, subseeds)
        except NonFiniteLatents as e:
            if not out.images:
                raise
            notes.append(f"{e} Kept the {len(out.images)} image(s) of the batches before it.")
            out.interrupted = True
            break
        out.interrupted = out.interrupted or interrupted
        if x is None:
            break
        images, texts, paths = save(x, seeds, subseeds)
        k = len(images)  # fewer than the batch when interrupted while decoding
        out.interrupted = out.interrupted or k < len(seeds)
        out.images += images
        out.infotexts += texts
        out.paths += paths
        out.latents.append(x[:k].detach().float().cpu())
        out.seeds += seeds[:k]
        out.subseeds += subseeds[:k]
        if out.interrupted:
            break
    return out


def finish_timings(timings: dict, start: float, denoiser: Denoiser, device: torch.device, notes: list[str]) -> None:
    """Total time, model calls, the memory numbers (``memory_bytes``) and line (``memory``: A1111's on CUDA, the
    process's peak RSS on the CPU; :mod:`~nbdiffuse.jobs.memory_stats`); the job's notes become warnings."""
    timings["total_s"] = time.perf_counter() - start
    timings["model_calls"] = denoiser.calls
    timings["memory_bytes"] = memory_numbers(device)
    line = memory_line(timings["memory_bytes"])
    if line:
        timings["memory"] = line
    for note in notes:
        warnings.warn(note, stacklevel=4)
