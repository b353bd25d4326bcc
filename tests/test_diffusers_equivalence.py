"""Our sampling loop reproduces diffusers' pipelines on the same tiny models (issue 3, "Prove it is right").

Every sampler that diffusers also implements is run twice on the same components (``nbdiffuse.testing``'s tiny
random SD1 / SD2-v / SDXL): once by us, once by ``diffusers.StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` built from the bundle's unet/vae/text encoders/tokenizers, with the same seed,
the same starting latent and, for the stochastic samplers, the same step noise. The final latents
(``output_type="latent"``) must agree to ``REL_TOL`` (relative to the latent's largest value); each
comparison also checks that the diffusers scheduler's sigmas equal ours, so a schedule mismatch fails loudly
instead of hiding in the tolerance.

How the two sides are lined up:

* **Text.** diffusers gets ``prompt_embeds`` / ``negative_prompt_embeds`` (SDXL: and the pooled embeddings)
  computed by our :class:`~nbdiffuse.prompts.conditioning.TextEncoder`, so the loop is tested in isolation;
  ``test_*_encoding_matches_diffusers_encode_prompt`` compares the encoders themselves.
* **Noise schedule table.** The diffusers scheduler uses the bundle's float32 ``alphas_cumprod`` (diffusers
  builds its betas in float32, we in float64: the two tables differ by up to ~9e-6 relative in sigma, which
  would otherwise be the largest difference here).
* **Starting latent.** Ours is ``ImageNoise(shape, [seed]).first() * sigmas[0]`` in k-diffusion's variable
  ``x = x0 + sigma * eps``. diffusers multiplies ``latents`` by ``scheduler.init_noise_sigma``: the "k"
  schedulers (Euler, Heun, LMS, KDPM2...) work in the same variable, so we pass ``x / init_noise_sigma``; the
  "VP" schedulers (DDIM, DPM-Solver, UniPC; ``init_noise_sigma == 1``) work in ``x_vp = x / sqrt(1 + sigma^2)``,
  so we pass that. Both sides agree at sigma 0, where the final latent is compared.
* **Step noise.** Our non-Brownian samplers draw step noise from the image's generator after the initial
  draw; diffusers draws ``randn(shape, generator=generator)`` in ``scheduler.step``. Passing diffusers a
  ``torch.Generator`` seeded with the seed and advanced by one latent-sized draw makes the two streams the
  same, as long as both draw in the same order (checked per sampler: diffusers also draws on the last step,
  where the noise is multiplied by 0 and nothing follows, so the extra draw changes nothing).
* **Guidance.** Ours mixes the x0 predictions, diffusers the eps predictions; the same up to float rounding.

Where a diffusers scheduler cannot be set up to give one of our named schedules exactly (it rounds
the timesteps of its Karras sigmas to integers; our Brownian-noise default for DPM++ 2M SDE), the comparison is
at sampler level: diffusers' own ``scheduler.sigmas`` go into our sampler function with our ``Denoiser`` +
``CFGDenoiser`` (and, for the rounded timesteps, a ``Denoiser`` whose UNet timesteps are rounded the same way).
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from conftest import drive
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)

from nbdiffuse import Session
from nbdiffuse.sampling import samplers as k
from nbdiffuse.sampling import timestep_samplers as ts
from nbdiffuse.sampling.denoiser import Denoiser
from nbdiffuse.sampling.guidance import CFGDenoiser
from nbdiffuse.sampling.noise import ImageNoise
from nbdiffuse.sampling.registry import SAMPLERS
from nbdiffuse.sampling.schedules import compute_sigmas
from nbdiffuse.testing import SCHEDULE

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

PROMPT, NEGATIVE = "a red circle on a blue square", "blurry, low quality"
SEED, CFG = 1234, 7.0
SHAPE = (4, 8, 8)  # 64x64 images
# Tolerance on max |ours - diffusers|, relative to max |latent| (the random tiny UNets give latents of magnitude
# 10..100). Achieved on the CPU (torch 2.13, float32): 0.7e-6 .. 2.0e-6 in every comparison, i.e. float32
# rounding; a wrong coefficient, timestep or noise draw shows up at 1e-3 or more.
REL_TOL = 1e-5
SIGMA_ATOL = 1e-5


# --------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a busy shared CPU two spinning
    threads made each run ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sessions(sd1, sd2, sdxl):
    out = {}
    for name, bundle in (("sd1", sd1), ("sd2", sd2), ("sdxl", sdxl)):
        s = Session(outputs_dir=None, progress=False)
        s.load(bundle)
        out[name] = s
    return out


def make_scheduler(cls, bundle, **config):
    """A diffusers scheduler with SD's config, the bundle's prediction type and its exact ``alphas_cumprod``."""
    sched = cls(**SCHEDULE, prediction_type=bundle.prediction_type, **{"steps_offset": 1, **config})
    sched.alphas_cumprod = bundle.alphas_cumprod.detach().clone().float()
    return sched


def make_pipeline(bundle, scheduler):
    """The pipeline over the bundle's components. The pipelines "fix" some scheduler settings they consider
    outdated (``steps_offset != 1``, ``clip_sample``); the settings we asked for are put back."""
    asked = dict(scheduler.config)
    if bundle.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=bundle.vae, text_encoder=bundle.text_encoders[0], text_encoder_2=bundle.text_encoders[1],
            tokenizer=bundle.tokenizers[0], tokenizer_2=bundle.tokenizers[1], unet=bundle.unet,
            scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(
            vae=bundle.vae, text_encoder=bundle.text_encoders[0], tokenizer=bundle.tokenizers[0],
            unet=bundle.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    changed = {key: value for key, value in asked.items() if pipe.scheduler.config.get(key) != value}
    if changed:
        pipe.scheduler.register_to_config(**changed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embeds(session: Session, prompt: str = PROMPT, negative: str = NEGATIVE) -> dict:
    """Our encodings as the pipeline's ``*_embeds`` arguments."""
    pos, neg = session.encoder.encode(prompt), session.encoder.encode(negative)
    kw = {"prompt_embeds": pos.context[None], "negative_prompt_embeds": neg.context[None]}
    if pos.pooled is not None:
        kw.update(pooled_prompt_embeds=pos.pooled[None], negative_pooled_prompt_embeds=neg.pooled[None])
    return kw


def start_noise(seed: int = SEED) -> torch.Tensor:
    """The unit-variance initial noise of our txt2img (first draw of the image's CPU generator)."""
    return ImageNoise(SHAPE, [seed]).first()


def step_generator(seed: int = SEED) -> torch.Generator:
    """A generator whose next draws are our sampler's step noise: seeded, then one latent-sized draw."""
    g = torch.Generator("cpu").manual_seed(seed)
    torch.randn(SHAPE, generator=g)
    return g


def run_diffusers(bundle, session, sched, steps: int | None, sigma0: float, *, vp: bool, eta: float = 0.0,
                  prompt: str = PROMPT, negative: str = NEGATIVE, sigmas=None, callback=None,
                  latents: torch.Tensor | None = None) -> torch.Tensor:
    """The pipeline's final latent, started from our starting latent ``start_noise() * sigma0``.

    ``vp``: the scheduler works in ``x / sqrt(1 + sigma^2)`` (DDIM, DPM-Solver, UniPC), else in our variable.
    ``sigmas``: custom sigmas (the pipeline's ``sigmas=`` argument) instead of ``steps``. ``latents``: the
    pipeline's starting latents as they are, instead.
    """
    pipe = make_pipeline(bundle, sched)
    timing = {"sigmas": list(map(float, sigmas))} if sigmas is not None else {"num_inference_steps": steps}
    sched.set_timesteps(**timing)  # to read init_noise_sigma; the pipeline sets the same timesteps again
    x = start_noise() * sigma0
    if latents is None:
        latents = x / math.sqrt(1 + sigma0**2) if vp else x / sched.init_noise_sigma
    extra = {"eta": eta} if eta else {}
    if callback is not None:
        extra["callback_on_step_end"] = callback
    return pipe(**embeds(session, prompt, negative), **timing, guidance_scale=CFG, latents=latents,
                output_type="latent", height=64, width=64, generator=step_generator(), **extra).images.float()


def our_txt2img(session, sampler: str, scheduler: str, steps: int, **extra) -> torch.Tensor:
    r = session.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, sampler_name=sampler,
                        scheduler=scheduler, cfg_scale=CFG, seed=SEED, width=64, height=64, **extra)
    return r.latents


def unique_sigmas(sched) -> torch.Tensor:
    """A scheduler's sigmas without the repeats of second-order schedulers (Heun, KDPM2 store each twice).
    DDIM has none: its integer timesteps' table sigmas, then 0 (``set_alpha_to_one``)."""
    if not hasattr(sched, "sigmas"):
        ac = sched.alphas_cumprod[sched.timesteps.long()]
        final = 1.0 if sched.config.set_alpha_to_one else float(sched.alphas_cumprod[0])
        return torch.cat([((1 - ac) / ac) ** 0.5, torch.tensor([((1 - final) / final) ** 0.5])]).float()
    return torch.unique_consecutive(sched.sigmas.float().cpu())


def assert_same_sigmas(sched, ours: torch.Tensor, what: str) -> None:
    theirs = unique_sigmas(sched)
    assert theirs.shape == ours.shape, f"{what}: diffusers sigmas {theirs.tolist()} vs ours {ours.tolist()}"
    torch.testing.assert_close(theirs, ours.float(), rtol=1e-6, atol=SIGMA_ATOL, msg=lambda m: f"{what}: {m}")


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    assert torch.isfinite(theirs).all(), f"{what}: diffusers gave non-finite latents"
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    print(f"{what}: max |ours - diffusers| {err:.2e}, relative to max |latent| {err / scale:.2e}")
    assert err <= REL_TOL * scale, (
        f"{what}: max |ours - diffusers| = {err:.3g} (max |latent| {scale:.3g}, relative {err / scale:.3g})")
# --------------------------------------------------------------------------------------------------------
# txt2img level: Session.txt2img against the pipeline, diffusers configured to give one of our schedules


K, VP = False, True
LINSPACE = {"timestep_spacing": "linspace"}
KARRAS = {"timestep_spacing": "linspace", "use_karras_sigmas": True}
# timesteps 999, 888, ..., 111: diffusers' "leading" spacing (step 1000 // 9 = 111) shifted by 111
LEADING_111 = {"timestep_spacing": "leading", "steps_offset": 111}
TRAILING = {"timestep_spacing": "trailing"}
DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, **TRAILING}
DDIM = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": True, "clip_sample": False}

# (arch, sampler, our schedule, steps, diffusers scheduler, its config, VP variable?, extra txt2img params)
TXT2IMG_CASES = {
    # Karras: diffusers' use_karras_sigmas between the table's ends (linspace spacing reaches both ends), rho 7,
    # fractional timesteps by log-sigma interpolation as ours.
    "sd1-Euler-Karras": ("sd1", "Euler", "Karras", 10, EulerDiscreteScheduler, KARRAS, K, {}),
    # Uniform: linspace(999, 0, n) timesteps; at n = 10 they are the integers 999, 888, ..., 0, where
    # diffusers' linear-in-sigma interpolation and our log-linear one both give the table's own sigmas.
    "sd1-Euler-Uniform": ("sd1", "Euler", "Uniform", 10, EulerDiscreteScheduler, LINSPACE, K, {}),
    "sd1-Euler a-Uniform": ("sd1", "Euler a", "Uniform", 10, EulerAncestralDiscreteScheduler, LINSPACE, K, {}),
    "sd1-Heun-Karras": ("sd1", "Heun", "Karras", 10, HeunDiscreteScheduler, KARRAS, K, {}),
    "sd1-Heun-Uniform": ("sd1", "Heun", "Uniform", 10, HeunDiscreteScheduler, LINSPACE, K, {}),
    "sd1-LMS-Karras": ("sd1", "LMS", "Karras", 10, LMSDiscreteScheduler, KARRAS, K, {}),
    "sd1-LMS-Uniform": ("sd1", "LMS", "Uniform", 10, LMSDiscreteScheduler, LINSPACE, K, {}),
    # DPM2 / DPM2 a discard the next-to-last sigma (A1111): Uniform at 9 steps is Uniform(10) without its
    # last nonzero sigma, i.e. timesteps 999, 888, ..., 111 = diffusers' leading spacing, steps_offset 111.
    "sd1-DPM2-Uniform": ("sd1", "DPM2", "Uniform", 9, KDPM2DiscreteScheduler, LEADING_111, K, {}),
    "sd1-DPM2 a-Uniform": ("sd1", "DPM2 a", "Uniform", 9, KDPM2AncestralDiscreteScheduler, LEADING_111, K, {}),
    # Simple (every 1000/n-th table entry from the top) = diffusers' trailing spacing when n divides 1000.
    "sd1-DPM++ 2M-Simple": ("sd1", "DPM++ 2M", "Simple", 10, DPMSolverMultistepScheduler, DPMPP_2M, VP, {}),
    # (DDIM: see test_ddim_txt2img_matches_diffusers_ddim_until_timestep_1 below.)
    "sd2-Euler-Karras": ("sd2", "Euler", "Karras", 10, EulerDiscreteScheduler, KARRAS, K, {}),
    "sd2-DPM++ 2M-Simple": ("sd2", "DPM++ 2M", "Simple", 10, DPMSolverMultistepScheduler, DPMPP_2M, VP, {}),
    "sdxl-Euler-Karras": ("sdxl", "Euler", "Karras", 10, EulerDiscreteScheduler, KARRAS, K, {}),
    "sdxl-DPM++ 2M-Simple": ("sdxl", "DPM++ 2M", "Simple", 10, DPMSolverMultistepScheduler, DPMPP_2M, VP, {}),
}


@pytest.mark.parametrize("case", list(TXT2IMG_CASES))
def test_txt2img_matches_diffusers_pipeline(sessions, case):
    """``Session.txt2img`` == the diffusers pipeline, final latents, for the sampler/schedule pairs in
    ``TXT2IMG_CASES`` (each entry's comment says which diffusers configuration gives which of our schedules)."""
    arch, sampler, schedule, steps, cls, config, vp, extra = TXT2IMG_CASES[case]
    session = sessions[arch]
    bundle = session.model
    sigmas = compute_sigmas(schedule, steps, bundle.sigmas, arch=arch,
                            discard_penultimate=SAMPLERS[sampler].discard_penultimate)
    sched = make_scheduler(cls, bundle, **config)
    theirs = run_diffusers(bundle, session, sched, steps, float(sigmas[0]), vp=vp, eta=extra.get("eta", 0.0))
    assert_same_sigmas(sched, sigmas, case)
    assert_close(our_txt2img(session, sampler, schedule, steps, **extra), theirs, case)


@pytest.mark.parametrize("schedule", ["Exponential", "Align Your Steps", "Beta"])
def test_euler_with_any_of_our_schedules_through_the_pipeline_sigmas_argument(sessions, schedule):
    """Euler on schedules diffusers has no spacing for: our sigmas go in through the pipeline's ``sigmas=``
    argument (EulerDiscreteScheduler turns them into fractional timesteps by log-sigma interpolation)."""
    session = sessions["sd1"]
    bundle = session.model
    sigmas = compute_sigmas(schedule, 8, bundle.sigmas)
    sched = make_scheduler(EulerDiscreteScheduler, bundle, **LINSPACE)
    theirs = run_diffusers(bundle, session, sched, None, float(sigmas[0]), vp=K, sigmas=sigmas)
    assert_same_sigmas(sched, sigmas, schedule)
    assert_close(our_txt2img(session, "Euler", schedule, 8), theirs, f"Euler {schedule}")


UNIPC_A1111 = {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True, **TRAILING}


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_txt2img_matches_diffusers_ddim_until_timestep_1(sessions, eta):
    """``Session.txt2img`` with DDIM runs A1111's grid: at 10 steps timesteps 901, 801, ..., 101 -> 1 (9 steps, 9
    model calls), from the noise itself (VP), ending at timestep 1 without a step to sigma 0. diffusers'
    DDIMScheduler with leading spacing and steps_offset 1 has the same timesteps and then one more step (1 ->
    alpha 1): its latent after the 9th step, from the same start, is ours. With eta 1 both draw one noise per step
    from the image's generator (ours) / the pipeline's generator advanced past the initial draw (diffusers)."""
    from nbdiffuse.sampling.schedules import a1111_timesteps

    session = sessions["sd1"]
    bundle = session.model
    sched = make_scheduler(DDIMScheduler, bundle, **DDIM)
    theirs_steps = []

    def callback(pipe, i, t, kwargs):
        theirs_steps.append(kwargs["latents"].clone())
        return kwargs

    run_diffusers(bundle, session, sched, 10, 1.0, vp=VP, eta=eta, callback=callback, latents=start_noise())
    assert sched.timesteps.tolist() == a1111_timesteps(10)[::-1]
    r = session.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, steps=10, sampler_name="DDIM", cfg_scale=CFG,
                        seed=SEED, width=64, height=64, eta=eta)
    assert r.timings["model_calls"] == 9
    assert_close(r.latents, theirs_steps[8], f"DDIM eta {eta}, after timestep 101 -> 1")


def test_unipc_a1111_defaults_match_diffusers_step_by_step(sessions):
    """Our UniPC with A1111's settings (bh1, order 3, lower_order_final), on Simple sigmas, against
    UniPCMultistepScheduler with trailing spacing (timesteps 999, 899, ..., 99, then sigma 0). At the sampler level:
    the jobs run UniPC on A1111's own grid instead (checked against A1111 in test_timestep_samplers_a1111.py).

    diffusers' bh1 update onto sigma 0 is ``x0 - (-inf) * 0`` = NaN (h = inf), so its final latent is NaN; ours
    takes that step at order 1, whose limit is the denoised prediction. So: every step before the last is
    compared (diffusers' latent after step i, in the VP variable, is our yielded ``x`` / sqrt(1 + sigma_next^2),
    both UniP's uncorrected prediction), and our final latent against diffusers' last x0 prediction
    (``scheduler.model_outputs[-1]``, made after the UniC correction), which is what the last step should return.
    """
    session = sessions["sd1"]
    bundle = session.model
    steps = 10
    sigmas = compute_sigmas("Simple", steps, bundle.sigmas)
    sched = make_scheduler(UniPCMultistepScheduler, bundle, **UNIPC_A1111)
    theirs_steps = []

    def callback(pipe, i, t, kwargs):
        theirs_steps.append(kwargs["latents"].clone())
        return kwargs

    run_diffusers(bundle, session, sched, steps, float(sigmas[0]), vp=VP, callback=callback)
    assert_same_sigmas(sched, sigmas, "UniPC Simple")
    ours_steps = []
    ours = run_our_sampler(session, ts.sample_unipc, sigmas, on_step=lambda state: ours_steps.append(state.x))
    assert len(ours_steps) == len(theirs_steps) == steps
    for i in range(steps - 1):
        vp_scale = math.sqrt(1 + float(sigmas[i + 1]) ** 2)
        assert_close(ours_steps[i] / vp_scale, theirs_steps[i], f"UniPC step {i + 1}")
    assert not torch.isfinite(theirs_steps[-1]).any()  # if diffusers fixes this, compare the final latent too
    assert_close(ours, sched.model_outputs[-1], "UniPC final x0")


# --------------------------------------------------------------------------------------------------------
# sampler level: diffusers' own sigmas into our sampler functions, with our Denoiser + CFGDenoiser


class RoundedDenoiser(Denoiser):
    """Our Denoiser, except that the UNet sees ``round(t)`` at every ``every``-th call, as diffusers does for
    DPMSolverMultistep's Karras sigmas (every call) and KDPM2's (every other call: the main points; its
    midpoints keep fractional timesteps). By call index, not by sigma: DPM2 a's midpoint (the geometric mean of
    sigma and sigma_down = sigma_next^2 / sigma at eta 1) is sigma_next itself, with a fractional timestep."""

    def __init__(self, bundle, every: int):
        super().__init__(bundle.unet, bundle.alphas_cumprod, bundle.prediction_type)
        self.every = every

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        t = super().timestep(sigma)
        return t.round() if self.calls % self.every == 0 else t


def run_our_sampler(session, func, sigmas: torch.Tensor, *, denoiser: Denoiser | None = None, on_step=None,
                    **options):
    """Our sampler function over ``sigmas`` with txt2img's guidance, start latent and plain per-step noise
    (the image generator's next draw each time the sampler asks); ``on_step`` sees every StepState."""
    bundle, enc = session.model, session.encoder
    denoiser = denoiser or Denoiser(bundle.unet, bundle.alphas_cumprod, bundle.prediction_type)
    n = len(sigmas) * 2
    time_ids = torch.tensor([64, 64, 0, 0, 64, 64], dtype=torch.float32) if bundle.arch == "sdxl" else None
    guider = CFGDenoiser(denoiser, [([(n, enc.encode(PROMPT))], 1.0)], [(n, enc.encode(NEGATIVE))], CFG,
                         time_ids=time_ids, empty=enc.empty())
    rng = ImageNoise(SHAPE, [SEED])
    x = rng.first() * sigmas[0]
    return drive(func(guider, x, sigmas, noise=lambda sigma, sigma_next: rng.next(), **options), on_step)[0]


DPMPP_2M_KARRAS = {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}
SDE_2M = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

# (arch, our sampler function and options, diffusers scheduler, config, VP?, steps, round t every n-th call)
SAMPLER_CASES = {
    # DPM++ 2M on its A1111 default schedule, Karras: diffusers computes the same Karras sigmas but feeds the
    # UNet round(t(sigma)); we reproduce that rounding in the denoiser.
    "sd1-DPM++ 2M-Karras": ("sd1", k.sample_dpmpp_2m, {}, DPMSolverMultistepScheduler, DPMPP_2M_KARRAS, VP, 10,
                            1),
    "sd2-DPM++ 2M-Karras": ("sd2", k.sample_dpmpp_2m, {}, DPMSolverMultistepScheduler, DPMPP_2M_KARRAS, VP, 10,
                            1),
    "sdxl-DPM++ 2M-Karras": ("sdxl", k.sample_dpmpp_2m, {}, DPMSolverMultistepScheduler, DPMPP_2M_KARRAS, VP,
                             10, 1),
    # DPM2 / DPM2 a on diffusers' Karras sigmas (n of them then 0; A1111's DPM2 would take n + 1 and drop the
    # next-to-last, which diffusers cannot do). Main timesteps rounded, midpoints fractional, as diffusers.
    "sd1-DPM2-Karras": ("sd1", k.sample_dpm_2, {}, KDPM2DiscreteScheduler, KARRAS, K, 10, 2),
    "sd1-DPM2 a-Karras": ("sd1", k.sample_dpm_2_ancestral, {}, KDPM2AncestralDiscreteScheduler, KARRAS, K, 10,
                          2),
    # DPM++ 2M SDE with matching noise: our sampler with the image generator's draws (not the Brownian tree
    # txt2img uses), diffusers with the generator advanced past the initial draw; it draws once per step.
    "sd1-DPM++ 2M SDE-Simple": ("sd1", k.sample_dpmpp_2m_sde, {}, DPMSolverMultistepScheduler,
                                {**SDE_2M, **TRAILING}, VP, 10, 0),
    "sd1-DPM++ 2M SDE-Karras": ("sd1", k.sample_dpmpp_2m_sde, {}, DPMSolverMultistepScheduler,
                                {**SDE_2M, "use_karras_sigmas": True}, VP, 10, 1),
    "sd2-DPM++ 2M SDE-Simple": ("sd2", k.sample_dpmpp_2m_sde, {}, DPMSolverMultistepScheduler,
                                {**SDE_2M, **TRAILING}, VP, 10, 0),
    # UniPC with diffusers' defaults (bh2, order 2), which reach sigma 0 without NaN: the whole run compared.
    "sd1-UniPC-bh2-Simple": ("sd1", ts.sample_unipc, {"variant": "bh2", "order": 2}, UniPCMultistepScheduler,
                             {"solver_order": 2, "solver_type": "bh2", **TRAILING}, VP, 10, 0),
}


@pytest.mark.parametrize("case", list(SAMPLER_CASES))
def test_sampler_on_diffusers_sigmas_matches_diffusers_pipeline(sessions, case):
    """Our sampler function, fed the diffusers scheduler's own sigmas, == the diffusers pipeline (see
    ``SAMPLER_CASES`` for why each case is compared at this level and which diffusers configuration it uses)."""
    arch, func, options, cls, config, vp, steps, rounded = SAMPLER_CASES[case]
    session = sessions[arch]
    bundle = session.model
    sched = make_scheduler(cls, bundle, **config)
    sched.set_timesteps(steps)
    sigmas = unique_sigmas(sched)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    theirs = run_diffusers(bundle, session, sched, steps, float(sigmas[0]), vp=vp)
    denoiser = RoundedDenoiser(bundle, rounded) if rounded else None
    if rounded:  # diffusers does round (if that changes, drop the special case)
        assert torch.equal(sched.timesteps[::rounded].float(), sched.timesteps[::rounded].float().round())
    ours = run_our_sampler(session, func, sigmas, denoiser=denoiser, **options)
    assert_close(ours, theirs, case)


# --------------------------------------------------------------------------------------------------------
# text encoding: our single-chunk encoding == diffusers' encode_prompt


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_single_chunk_encoding_matches_diffusers_encode_prompt(sessions, arch):
    """SD1 (CLIP-L style, pad = EOS) and SD2 (OpenCLIP style, pad id 0): a prompt under 75 tokens, positive and
    negative; the last hidden state after the final layer norm on both sides."""
    session = sessions[arch]
    bundle = session.model
    pipe = make_pipeline(bundle, make_scheduler(EulerDiscreteScheduler, bundle))
    pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    torch.testing.assert_close(session.encoder.encode(PROMPT).context[None], pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(session.encoder.encode(NEGATIVE).context[None], neg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours, theirs", [(2, 1), (3, 2)])
def test_clip_skip_maps_to_diffusers_clip_skip_minus_one(sessions, monkeypatch, ours, theirs):
    """A1111's "Clip skip" N (1 = last layer) is diffusers' ``clip_skip=N - 1`` (layers skipped): both take
    ``hidden_states[-N]`` through the final layer norm.

    diffusers 0.42 reaches the norm as ``text_encoder.text_model.final_layer_norm``, which transformers 5's
    ``CLIPTextModel`` no longer has (the norm moved to the top level): we give it that path for the call."""
    session = sessions["sd1"]
    bundle = session.model
    pipe = make_pipeline(bundle, make_scheduler(EulerDiscreteScheduler, bundle))
    encoder = bundle.text_encoders[0]
    if not hasattr(encoder, "text_model"):
        monkeypatch.setattr(encoder, "text_model", types.SimpleNamespace(final_layer_norm=encoder.final_layer_norm),
                            raising=False)
    pos, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=theirs)
    torch.testing.assert_close(session.encoder.encode(PROMPT, clip_skip=ours).context[None], pos,
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(session.encoder.encode(PROMPT, clip_skip=1).context[None], pos)


def test_sdxl_encoding_matches_diffusers_encode_prompt(sessions):
    """SDXL: both encoders' penultimate hidden states concatenated (CLIP-L 32 + bigG-style 64 features) and the
    pooled projection of the second encoder, for a prompt and a non-empty negative prompt. For an *empty*
    negative prompt diffusers (``force_zeros_for_empty_prompt``, the SDXL default) uses zeros, while we encode
    "" as A1111 does: only the positive side is comparable there."""
    session = sessions["sdxl"]
    bundle = session.model
    pipe = make_pipeline(bundle, make_scheduler(EulerDiscreteScheduler, bundle))
    pos, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    for text, context, pool in ((PROMPT, pos, pooled), (NEGATIVE, neg, neg_pooled)):
        cond = session.encoder.encode(text)
        torch.testing.assert_close(cond.context[None], context, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cond.pooled[None], pool, rtol=1e-5, atol=1e-6)
    pos, zeros, pooled, zero_pooled = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=True, negative_prompt=None)
    torch.testing.assert_close(session.encoder.encode(PROMPT).context[None], pos, rtol=1e-5, atol=1e-6)
    assert not zeros.any() and not zero_pooled.any()
    assert session.encoder.encode("").context.abs().sum() > 0
