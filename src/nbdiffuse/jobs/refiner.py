"""The SDXL refiner: A1111's switch to a second model in the middle of sampling (A1111 1.9+ rules).

A1111 (``modules/sd_samplers_common.py`` ``apply_refiner``, run by its ``CFGDenoiser`` before *every* model call)
decides at each call whether the rest of the pass runs on the refiner:

- the timestep rule (default since 1.9): ``t = argmin |model_sigmas - max(sigma)|`` (a timestep sampler's sigma
  already is ``t``), ``completed_ratio = (999 - t) / 1000``; "Switch at 0.8" means ``t <= 199``, the timesteps the
  SDXL refiner was trained on;
- the legacy step rule (its setting ``refiner_switch_by_sample_steps``, infotext ``Refiner switch by sampling
  steps: True``): ``completed_ratio = calls so far / total calls`` (second-order samplers count two per step);
- it switches once ``completed_ratio >= switch_at`` (1.0 never: the ratio is at most 0.999).

After the switch the sampler keeps its sigmas, latent and noise; the model calls go to the refiner's UNet with the
same prompt and negative prompt encoded by the refiner's own text encoder and its own added conditioning
(:func:`~nbdiffuse.jobs.driver.plan_pass`: for an SDXL refiner, original size = target size = this pass's size, crop
(0, 0), aesthetic score 6.0 for the prompt and 2.5 for the negative, an empty negative zeroed). Here the switch is a
closure around the guided model (:class:`ModelSwitch`), the same seam as inpainting's latent blend; the driver's
loop does not change. With hires fix A1111's setting ``hires_fix_refiner_pass`` says in which pass the switch may
happen: "second pass" (default), "first pass" or "both passes"; each pass starts on the base model (A1111 reloads
it before the hires pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..io.keys import KEY_OF as K
from ..models.bundle import ModelBundle
from ..prompts.conditioning import TextEncoder
from ..sampling.denoiser import Denoiser
from ..sampling.guidance import CFGDenoiser
from .driver import PassPlan, denoiser_for, plan_pass
from .params import HIRES_REFINER_PASSES, GenerationParams

__all__ = ["HIRES_REFINER_PASSES", "ModelSwitch", "PassSwitch", "Refiner", "completed_ratio", "no_refiner_model",
           "refiner_fields"]

def completed_ratio(sigma: torch.Tensor, denoiser: Denoiser, *, timestep_sampler: bool):
    """A1111's timestep rule: ``(999 - t) / 1000`` (a float32 tensor, as A1111 computes it) for the largest sigma of
    a model call, ``t`` the model timestep nearest to it in sigma (a timestep sampler's timestep, truncated)."""
    s = torch.max(sigma.detach().float().cpu())
    if timestep_sampler:  # A1111 gets the timestep itself there, and truncates it
        t = torch.floor(denoiser.timestep(s.reshape(1)).cpu()[0] + 1e-4).to(torch.int64)
    else:
        t = torch.argmin(torch.abs(denoiser.sigmas - s))
    return (999 - t) / 1000


@dataclass
class Refiner:
    """A job's refiner: the model, its text encoder (kept by the session with the model), the rule's settings,
    and whether a switch happened (only then does the infotext name the refiner, as A1111's does)."""

    bundle: ModelBundle
    encoder: TextEncoder
    switch_at: float | None = 0.8
    by_steps: bool = False
    hires_pass: str = "second pass"
    switched: bool = False
    denoiser: Denoiser = field(init=False)

    def __post_init__(self):
        self.denoiser = denoiser_for(self.bundle)  # one per job: its call count joins the job's

    @classmethod
    def of(cls, bundle: ModelBundle, encoder: TextEncoder, p: GenerationParams) -> Refiner:
        return cls(bundle, encoder, p.refiner_switch_at, p.refiner_switch_by_sample_steps, p.hires_fix_refiner_pass)

    @property
    def title(self) -> str:
        """A1111's checkpoint ``short_title``: ``name [shorthash]`` (the name alone without a hash)."""
        return f"{self.bundle.name} [{self.bundle.hash}]" if self.bundle.hash else self.bundle.name

    def allowed(self, enable_hr: bool, hires_pass: bool) -> bool:
        """Whether a pass may switch: always without hires fix; with it, as ``hires_fix_refiner_pass`` says."""
        if not enable_hr:
            return True
        if self.hires_pass == "first pass":
            return not hires_pass
        if self.hires_pass == "second pass":
            return hires_pass
        return True

    def pass_switch(self, p: GenerationParams, prompt: str, negative: str, *, total_steps: int, hires_pass: bool,
                    **plan_kwargs) -> PassSwitch | None:
        """The switch of one pass (None where the setting keeps the refiner out of it): the refiner's conditioning
        planned as the base's is (``plan_kwargs``: :func:`plan_pass`'s size and schedule arguments), and the model
        calls the launched sampling expects (``total_steps``, for the step rule)."""
        if not self.allowed(p.enable_hr, hires_pass):
            return None
        plan = plan_pass(self.bundle, p, self.encoder, prompt, negative, torch.zeros(1), **plan_kwargs)
        return PassSwitch(self, plan, total_steps)


@dataclass
class PassSwitch:
    """What :func:`~nbdiffuse.jobs.driver.run_pass` needs to switch one pass to the refiner."""

    refiner: Refiner
    plan: PassPlan  # the refiner's conditioning for this pass (its sigmas are not used)
    total_steps: int

    @property
    def unet(self) -> torch.nn.Module:
        return self.refiner.bundle.unet

    def guide(self, guider: CFGDenoiser, denoiser: Denoiser, spec, image_cond=None) -> ModelSwitch:
        """The pass's guided model with the switch around it."""
        return ModelSwitch(self, guider, denoiser, spec, image_cond)


class ModelSwitch:
    """``model(x, sigma)``: the base model's guided calls until A1111's rule says switch, then, for the rest of the
    pass, a :class:`CFGDenoiser` on the refiner's UNet with the refiner's conditioning, its call count continuing
    the base's (prompt schedules and the step rule count on). ``switched_at``: the index of the first refiner call.
    ``last_cond`` / ``last_uncond`` are the active model's, for hooks and CFG++."""

    def __init__(self, switch: PassSwitch, base: CFGDenoiser, denoiser: Denoiser, spec, image_cond=None):
        self.switch = switch
        self.active = base
        self.denoiser = denoiser
        self.spec = spec
        self.image_cond = image_cond
        self.switched_at: int | None = None

    @property
    def step(self) -> int:
        return self.active.step

    @property
    def last_cond(self):
        return self.active.last_cond

    @property
    def last_uncond(self):
        return self.active.last_uncond

    def wants_switch(self, sigma: torch.Tensor) -> bool:
        """A1111's ``apply_refiner`` decision for the call about to run at ``sigma``."""
        refiner = self.switch.refiner
        if refiner.by_steps:
            ratio = self.active.step / self.switch.total_steps
        else:
            ratio = completed_ratio(sigma, self.denoiser, timestep_sampler=self.spec.grid is not None)
        return not (refiner.switch_at is not None and ratio < refiner.switch_at)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.switched_at is None and self.wants_switch(sigma):
            self._to_refiner()
        return self.active(x, sigma)

    def _to_refiner(self) -> None:
        refiner, plan = self.switch.refiner, self.switch.plan
        d = refiner.denoiser
        d.vp_time = self.denoiser.vp_time
        image_cond = self.image_cond if refiner.bundle.is_inpainting else None
        guider = CFGDenoiser(d, plan.conds, plan.uncond, plan.cfg_scale, time_ids=plan.time_ids, empty=plan.empty,
                             need_uncond=self.spec.needs_uncond, image_cond=image_cond,
                             uncond_time_ids=plan.uncond_time_ids)
        guider.step = self.switched_at = self.active.step
        self.active = guider
        refiner.switched = True


def no_refiner_model(p: GenerationParams, refiner: Refiner | None) -> None:
    """Refuse, before any work, a job whose ``refiner_checkpoint`` came without the model (a job function called
    directly, or a job that takes no refiner): the refiner would silently not run."""
    if p.refiner_checkpoint is not None and refiner is None:
        raise ValueError(f"refiner_checkpoint={p.refiner_checkpoint!r}: this job was given no refiner model. "
                         "session.txt2img and session.img2img load it (a job function takes refiner=Refiner(...)); "
                         "loopback, outpainting and SD upscale do not take a refiner: leave refiner_checkpoint out.")


def refiner_fields(p: GenerationParams, refiner: Refiner | None) -> dict:
    """The infotext keys A1111's ``apply_refiner`` adds: ``Refiner switch by sampling steps: True`` whenever the
    step rule is on, and, only when a switch happened, ``Hires refiner`` (with hires fix, when not "second pass"),
    ``Refiner: name [hash]`` and ``Refiner switch at``."""
    out: dict = {}
    if p.refiner_switch_by_sample_steps:
        out[K["refiner_switch_by_sample_steps"]] = True
    if refiner is not None and refiner.switched:
        if p.enable_hr and refiner.hires_pass != "second pass":
            out[K["hires_fix_refiner_pass"]] = refiner.hires_pass
        out[K["refiner_checkpoint"]] = refiner.title
        out[K["refiner_switch_at"]] = refiner.switch_at
    return out
