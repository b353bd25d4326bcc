"""A1111's "timestep" samplers (DDIM, DDIM CFG++, PLMS, UniPC), written in k-diffusion's sigma space.

A1111 runs these on the model's discrete timesteps in the VP parametrisation (``x_vp = sqrt(abar) x0 +
sqrt(1 - abar) eps``). Here they take the same ``(model, x, sigmas)`` as every other sampler (see
:mod:`nbdiffuse.sampling.base`): ``x = x0 + sigma * eps`` with ``sigma = sqrt((1 - abar) / abar)``, so
``x = x_vp / sqrt(abar) = x_vp * sqrt(1 + sigma^2)``, the model returns ``denoised`` and
``eps = (x - denoised) / sigma``. Every update below is the VP formula divided through by ``sqrt(abar_next)``;
given the same sigmas (and the same noise), the latents agree with diffusers' ``DDIMScheduler``,
``PNDMScheduler(skip_prk_steps=True)`` and ``UniPCMultistepScheduler`` once rescaled by
``1 / sqrt(1 + sigma^2)`` (``tests/test_timestep_samplers.py`` checks this), and are identical at sigma 0.

The jobs run them as A1111 does (``tests/test_timestep_samplers_a1111.py`` checks this against A1111's own code):
on A1111's grids, whatever the schedule type (:func:`~nbdiffuse.sampling.schedules.ddim_grid`,
:func:`~nbdiffuse.sampling.schedules.unipc_grid`), which stop above sigma 0; from the noise itself in VP scale
(``x = noise * sqrt(1 + sigmas[0]^2)``); and they decode the last latent in VP scale, ``x / sqrt(1 +
sigmas[-1]^2)``, still slightly noisy, not the last x0 estimate (:func:`nbdiffuse.jobs.driver.run_pass`).
Given sigmas ending in 0 (any schedule), the functions below also finish at sigma 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import StepState, get_ancestral_step

__all__ = ["sample_ddim", "sample_ddim_cfgpp", "sample_plms", "sample_unipc"]


def _noise(noise, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    if noise is None:  # like k-diffusion's default_noise_sampler; the driver always passes one
        return torch.randn_like(x)
    return noise(sigma, sigma_next)


def _ddim_steps(model, x, sigmas, *, noise, eta: float, uncond: Callable[[], torch.Tensor] | None):
    """DDIM (and CFG++ when ``uncond`` is given): the generator behind both public samplers.

    DDIM's update (Song et al. 2021, eq. 12) with its variance ``sigma_t^2 = eta^2 (1 - a_prev) / (1 - a_t)
    (1 - a_t / a_prev)`` (eq. 16), divided by ``sqrt(a_prev)``, is exactly the ancestral step of k-diffusion:
    ``x_next = denoised + sigma_down * eps + sigma_up * z`` with ``sigma_up = eta * sigma_next *
    sqrt(sigma^2 - sigma_next^2) / sigma`` and ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)``
    (:func:`~nbdiffuse.sampling.base.get_ancestral_step`; its clamp ``sigma_up <= sigma_next`` only matters
    for eta > 1, where DDIM's own formula has no real solution). With eta = 0 it is an Euler step of the
    probability-flow ODE. CFG++ (Chung et al. 2024) renoises along the *unconditional* eps instead.
    """
    n = len(sigmas) - 1
    s_in = torch.ones([x.shape[0]], dtype=x.dtype, device=sigmas.device)  # sigmas stay on the CPU: no sync
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * s_in)
        if uncond is not None:
            base = uncond()
            if base is None:
                base = denoised
        else:
            base = denoised
        eps = (x - base) / sigma
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = denoised + eps * sigma_down
        if sigma_up:
            x = x + _noise(noise, x, sigmas[i], sigmas[i + 1]) * sigma_up
        replacement = yield StepState(i, n, sigma, sigma_next, x, denoised, calls=1)
        if replacement is not None:
            x = replacement
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, *, noise=None, eta: float = 0.0):
    """DDIM. ``eta`` 0 (A1111's default "Eta DDIM") is deterministic; ``eta > 0`` adds DDIM's stochastic
    term, drawn from ``noise``. One model call per step."""
    return (yield from _ddim_steps(model, x, sigmas, noise=noise, eta=eta, uncond=None))


@torch.no_grad()
def sample_ddim_cfgpp(model, x, sigmas, *, noise=None, uncond: Callable[[], torch.Tensor] | None = None,
                      eta: float = 0.0):
    """DDIM CFG++ (A1111 ``ddim_cfgpp``): ``x_next = denoised + sigma_next * (x - uncond_denoised) / sigma``.

    ``uncond`` returns the guidance closure's last *unconditional* denoised prediction, read right after
    each model call (the driver passes ``uncond=lambda: guider.last_uncond``); with ``uncond`` None, or
    returning None, this is plain DDIM. A1111 also divides the CFG scale by 12.5 for this sampler: that is
    the guidance closure's business, not this function's. ``eta`` works as in DDIM (A1111 passes "Eta DDIM"
    to it too).
    """
    return (yield from _ddim_steps(model, x, sigmas, noise=noise, eta=eta, uncond=uncond))


@torch.no_grad()
def sample_plms(model, x, sigmas, *, noise=None):
    """PLMS, pseudo linear multistep (Liu et al. 2022), as A1111 / CompVis and diffusers' PNDM (PLMS mode).

    Each step is a DDIM step (``x_next = x + (sigma_next - sigma) * eps'``) with a combined ``eps'``: the
    first step uses the pseudo improved Euler ``eps' = (eps(x, sigma) + eps(x_euler, sigma_next)) / 2``
    (one extra model call: 2 calls), then Adams-Bashforth on the eps history, 2-, 3- and 4-step.
    If the first step already lands on sigma 0 (one step), the extra call (which would be at sigma 0,
    where eps is undefined) is skipped and the step is plain DDIM, as diffusers does.
    ``denoised`` in the StepState is ``x - sigma * eps'``, the x0 the step actually used.

    Strongly guided predictions make its order-3/4 multistep unstable at few steps: on the toy model at CFG 7
    ("a red circle on a blue background") PLMS gives a dark blotch on green at 10 and 20 steps and the red circle
    only from ~50 steps, exactly as A1111's PLMS does (same latents to float rounding). Prefer DDIM, UniPC or
    DPM++ 2M for few steps; the toy demos leave PLMS out.
    """
    n = len(sigmas) - 1
    s_in = torch.ones([x.shape[0]], dtype=x.dtype, device=sigmas.device)  # sigmas stay on the CPU: no sync
    old_eps: list[torch.Tensor] = []
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        e_t = (x - model(x, sigmas[i] * s_in)) / sigma
        calls = 1
        if not old_eps:
            if sigma_next > 0:  # pseudo improved Euler (2nd order)
                x_euler = x + (sigma_next - sigma) * e_t
                e_next = (x_euler - model(x_euler, sigmas[i + 1] * s_in)) / sigma_next
                e_prime = (e_t + e_next) / 2
                calls = 2
            else:
                e_prime = e_t
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        denoised = x - sigma * e_prime
        x = denoised + sigma_next * e_prime
        old_eps.append(e_t)
        if len(old_eps) > 3:
            old_eps.pop(0)
        replacement = yield StepState(i, n, sigma, sigma_next, x, denoised, calls=calls)
        if replacement is not None:
            x = replacement
    return x


# --------------------------------------------------------------------------------------------------------
# UniPC


def _unipc_coeffs(h: float, rks: list[float], order: int, variant: str, corrector: bool):
    """The B(h) and rho coefficients of UniP (``corrector`` False) or UniC (True), data prediction.

    ``h`` is the step in lambda = -log sigma, ``rks`` the previous points' offsets ``(lambda_k - lambda_s0)
    / h`` (``order - 1`` of them). Follows Zhao et al. 2023 (UniPC, Alg. "B(h)"), as diffusers and the
    original code do it, including their shortcuts (rho = 1/2 for the 2nd-order predictor and the
    1st-order corrector). Computed in float64.
    """
    hh = -h
    h_phi_1 = math.expm1(hh)  # h * phi_1(h) = e^h - 1 (with h -> -h for data prediction)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    if corrector:
        if order == 1:
            return h_phi_1, b_h, [0.5]
    elif order == 1:
        return h_phi_1, b_h, []
    elif order == 2:
        return h_phi_1, b_h, [0.5]
    r = torch.tensor([*rks, 1.0], dtype=torch.float64)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    big_r = torch.stack(rows)
    big_b = torch.tensor(b, dtype=torch.float64)
    if corrector:
        rhos = torch.linalg.solve(big_r, big_b)
    else:
        rhos = torch.linalg.solve(big_r[:-1, :-1], big_b[:-1])
    return h_phi_1, b_h, rhos.tolist()


def _unipc_update(x, sigma_s0: float, sigma_t: float, ms: list, ss: list, order: int, variant: str,
                  model_t: torch.Tensor | None = None) -> torch.Tensor:
    """One UniP step from ``(x, sigma_s0)`` to ``sigma_t``, or with ``model_t`` (the model at sigma_t) the
    UniC correction of that step. ``ms`` / ``ss``: denoised history and its sigmas, most recent last
    (``ms[-1]`` is at ``sigma_s0``). Data prediction in sigma space: ``x_t = (sigma_t / sigma_s0) x -
    (e^-h - 1) m0 - B(h) * sum rho_k D_k``, the VP formula divided by alpha_t.
    """
    m0 = ms[-1]
    if sigma_t == 0:  # h = inf: the data-prediction limit is the denoised (diffusers' bh1 gives NaN here)
        return m0.clone()
    lambda_s0 = -math.log(sigma_s0)
    h = -math.log(sigma_t) - lambda_s0
    rks, d1s = [], []
    for k in range(1, order):
        rk = (-math.log(ss[-(k + 1)]) - lambda_s0) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)
    h_phi_1, b_h, rhos = _unipc_coeffs(h, rks, order, variant, corrector=model_t is not None)
    x_t = (sigma_t / sigma_s0) * x - h_phi_1 * m0
    if model_t is None:
        res = sum((rho * d for rho, d in zip(rhos, d1s)), torch.zeros_like(x)) if d1s else None
    else:
        res = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), rhos[-1] * (model_t - m0))
    if res is not None:
        x_t = x_t - b_h * res
    return x_t


@torch.no_grad()
def sample_unipc(model, x, sigmas, *, noise=None, order: int = 3, variant: str = "bh1",
                 lower_order_final: bool = True):
    """UniPC (Zhao et al. 2023), multistep predictor-corrector on the data prediction, in lambda = -log sigma.

    A1111's defaults: ``variant`` "bh1", ``order`` 3, ``lower_order_final`` (the last steps drop to order 2,
    then 1). Warm-up uses order 1, 2, ... as history accumulates. One model call per step: step ``i``
    evaluates the model at its start, first uses that evaluation to correct (UniC) the latent the previous
    step predicted, then predicts (UniP) the next one, so the yielded ``x`` is UniP's prediction and the
    correction is applied at the start of the next step (as diffusers' ``UniPCMultistepScheduler`` with
    ``predict_x0=True`` does it; the last step is never corrected). If the driver sends a replacement
    latent, the correction of that point is skipped and the sampler continues from the replacement as it
    is (its model evaluation still enters the history). A step onto sigma 0 is taken at order 1, i.e.
    ``x = denoised`` (the limit of every order as h -> inf; diffusers gives inf/NaN there for bh1, or for
    orders > 1).

    On A1111's grid (:func:`~nbdiffuse.sampling.schedules.unipc_grid`) the last point is the table's smallest sigma:
    no step to 0. With fewer points than ``order`` (A1111 refuses: "UniPC order must be < sampling steps") every
    step runs at the order the history allows.
    """
    if order < 1:
        raise ValueError(f"UniPC order must be at least 1, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    n = len(sigmas) - 1
    s_in = torch.ones([x.shape[0]], dtype=x.dtype, device=sigmas.device)  # sigmas stay on the CPU: no sync
    ms: list[torch.Tensor] = []
    ss: list[float] = []
    last_sample = None
    last_order = 1
    replaced = False
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * s_in)
        if last_sample is not None and not replaced:
            x = _unipc_update(last_sample, ss[-1], sigma, ms, ss, last_order, variant, model_t=denoised)
        ms.append(denoised)
        ss.append(sigma)
        if len(ms) > order:
            del ms[0], ss[0]
        this_order = min(order, n - i) if lower_order_final else order
        this_order = min(this_order, len(ms))
        if sigma_next == 0:
            this_order = 1
        last_sample, last_order = x, this_order
        x = _unipc_update(x, sigma, sigma_next, ms, ss, this_order, variant)
        replacement = yield StepState(i, n, sigma, sigma_next, x, denoised, calls=1)
        replaced = replacement is not None and replacement is not x
        if replacement is not None:
            x = replacement
    return x
