"""The A1111 parameter line of one image: which keys a job writes, when, and in what order.

Keys are named through :data:`nbdiffuse.io.keys.KEY_OF`, the table the reading side
(:func:`nbdiffuse.infotext.to_params`) uses too.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from .._version import __version__
from ..io.infotext import build_fields
from ..io.keys import ETA_DDIM
from ..io.keys import KEY_OF as K
from ..models.lora import lora_hashes
from ..prompts.conditioning import TextEncoder
from ..sampling.registry import SAMPLERS
from .params import GenerationParams


def infotext_fields(p: GenerationParams, bundle, seed: int, subseed: int, func: Callable, *,
                    job: str = "txt2img", denoising: float | None = None, extra: Mapping | None = None,
                    encoder: TextEncoder | None = None, scripts: Mapping | None = None,
                    inpaint: Mapping | None = None) -> dict:
    """A1111's parameter line for one image, in A1111's key order.

    ``job`` is "txt2img" (hires fields when ``p.enable_hr``), or "img2img" (``Denoising strength`` and
    ``Extra noise``); ``denoising`` is the strength actually used; ``extra`` adds fields (loopback's) after the
    job's own. LoRAs merged into ``bundle`` for this job give ``Lora hashes``; embeddings ``encoder`` used give
    ``TI hashes``. ``scripts`` are the fields A1111's always-on scripts add before the job's own (Soft inpainting),
    ``inpaint`` those img2img adds after ``Denoising strength`` (mask, masked content, noise multiplier).
    """
    core = {
        K["steps"]: p.steps,
        K["sampler_name"]: p.sampler_name,
        # A1111 names the schedule it resolved "Automatic" to only for samplers that have a default one; for the
        # others (Euler, LMS, Heun, ...) "Automatic" means the model's own and is written as such
        K["scheduler"]: p.scheduler_used if SAMPLERS[p.sampler_name].default_scheduler else p.scheduler,
        K["cfg_scale"]: p.cfg_scale,
        K["seed"]: seed,
        K["width"]: f"{p.width}x{p.height}",
        "Model hash": bundle.hash,
        "Model": bundle.name,
        "VAE hash": bundle.info.get("vae_hash") if _external_vae(bundle) else None,
        "VAE": Path(bundle.info["vae"]).stem if _external_vae(bundle) else None,
        K["subseed"]: subseed if p.subseed_strength else None,
        K["subseed_strength"]: p.subseed_strength or None,
        K["seed_resize_from_w"]: (f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
                             if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None),
        K["clip_skip"]: p.clip_skip if p.clip_skip > 1 else None,
        K["tiling"]: True if p.tiling else None,
    }
    fields: dict = dict(scripts or {})
    hires = job == "txt2img" and p.enable_hr
    if hires or job == "img2img":
        fields[K["denoising_strength"]] = denoising
    fields.update(inpaint or {})
    if hires:  # A1111's insertion order (txt2img init, then calculate_target_resolution)
        if p.hr_sampler_name is not None and p.hr_sampler_name != p.sampler_name:
            fields[K["hr_sampler_name"]] = p.hr_sampler_name
        if p.hr_prompt and p.hr_prompt != p.prompt:
            fields[K["hr_prompt"]] = p.hr_prompt
        if p.hr_negative_prompt and p.hr_negative_prompt != p.negative_prompt:
            fields[K["hr_negative_prompt"]] = p.hr_negative_prompt
        if p.hr_scheduler_used != p.scheduler_used and SAMPLERS[p.hr_sampler_used].grid is None:
            fields[K["hr_scheduler"]] = p.hr_scheduler_used
        if p.hr_resize_x == 0 and p.hr_resize_y == 0:
            fields[K["hr_scale"]] = p.hr_scale
        else:
            fields[K["hr_resize_x"]] = f"{p.hr_resize_x}x{p.hr_resize_y}"
        if p.hr_second_pass_steps:
            fields[K["hr_second_pass_steps"]] = p.hr_second_pass_steps
        if p.hr_upscaler is not None:
            fields[K["hr_upscaler"]] = p.hr_upscaler
    if p.emphasis != "Original":
        fields[K["emphasis"]] = p.emphasis
    if bundle.applied_loras:
        fields["Lora hashes"] = lora_hashes(bundle.applied_loras)
    if encoder is not None and encoder.used_embeddings:
        fields["TI hashes"] = encoder.ti_hashes
    accepted = inspect.signature(func).parameters
    if p.eta is not None and "eta" in accepted and p.eta != accepted["eta"].default:
        fields[ETA_DDIM if p.sampler_name == "DDIM" else K["eta"]] = p.eta
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
    for name, default in defaults.items():
        if name in accepted and getattr(p, name) != default:
            fields[K[name]] = getattr(p, name)
    if (hires or job == "img2img") and p.extra_noise > 0:
        fields[K["extra_noise"]] = p.extra_noise
    fields.update(extra or {})
    if p.styles:
        fields[K["styles"]] = json.dumps(list(p.styles), ensure_ascii=False)
    # A1111 writes the key only when the source is not its default "GPU" (and reads a missing key as "GPU")
    fields[K["randn_source"]] = p.randn_source if p.randn_source != "GPU" else None
    fields["Version"] = f"nbdiffuse {__version__}"
    return build_fields(core, fields)


def _external_vae(bundle) -> bool:
    return bundle.info.get("vae") not in (None, "checkpoint")
