"""Noise schedules ("Schedule type" in A1111): step counts -> descending sigma tensors.

Every schedule function returns a float32 1-D tensor of sigmas, descending, ending in 0, of length
``n + 1`` (one exception, copied from A1111 on purpose: :func:`ddim` can return a few more, see there).
They all take ``(n, sigma_min, sigma_max, model_sigmas)`` positionally, whether or not they use them, plus
their own keyword options; :func:`compute_sigmas` is the one entry point the rest of the package uses.

``model_sigmas`` is the model's discrete sigma table, ascending (k-diffusion's ``DiscreteSchedule.sigmas``,
:attr:`nbdiffuse.models.bundle.ModelBundle.sigmas`: ``((1 - alphas_cumprod) / alphas_cumprod) ** 0.5``,
1000 entries for SD). Index ``t`` of the table is the model's timestep ``t``.

The formulas follow A1111 1.10 (``modules/sd_schedulers.py``) and k-diffusion 0.1.1 (``get_sigmas_*``,
``external.DiscreteSchedule``) operation for operation, in the same precision, so the same step count gives
the same sigmas bit for bit. Where our contract (end in 0) and A1111 differ, the function says so.

A1111's timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) ignore the schedule type: they run on their own grids,
:func:`ddim_grid` and :func:`unipc_grid`, which stop above sigma 0 (the registry's ``SamplerSpec.grid``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..suggest import suggest
from .base import append_zero

__all__ = [
    "SCHEDULES", "ScheduleSpec", "resolve_schedule", "compute_sigmas", "sigma_to_t", "vp_sigma_to_t", "t_to_sigma",
    "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal", "align_your_steps",
    "simple", "normal", "ddim", "beta", "beta_ppf", "betainc", "AYS_SIGMAS",
    "TimestepGrid", "a1111_timesteps", "ddim_grid", "unipc_grid",
]


# --------------------------------------------------------------------------------------------------------
# sigma <-> t on the model's discrete table (k-diffusion's DiscreteSchedule, quantize=False by default)


def _log_sigmas(model_sigmas: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(model_sigmas).log()


def sigma_to_t(sigma, model_sigmas: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """The (fractional) timestep of ``sigma`` on the ascending table ``model_sigmas``.

    Linear interpolation in log sigma between the two neighbouring table entries, clamped to ``[0, len - 1]``
    (k-diffusion ``DiscreteSchedule.sigma_to_t``); ``quantize`` rounds to the nearest entry instead.
    Returns a tensor shaped like ``sigma``.
    """
    log_sigmas = _log_sigmas(model_sigmas)
    sigma = torch.as_tensor(sigma, dtype=log_sigmas.dtype, device=log_sigmas.device)
    log_sigma = sigma.log().reshape(-1)
    dists = log_sigma - log_sigmas[:, None]
    if quantize:
        return dists.abs().argmin(dim=0).view(sigma.shape)
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.view(sigma.shape)


def vp_sigma_to_t(sigma, model_sigmas: torch.Tensor) -> torch.Tensor:
    """The (fractional) timestep of ``sigma`` by the VP rule of UniPC's ``NoiseScheduleVP`` (and DPM-Solver's):
    log alpha ``= -0.5 log(1 + sigma^2)`` interpolated linearly between the table's entries, clamped to the table.

    That is where A1111's UniPC evaluates the model (:func:`unipc_grid`); :func:`sigma_to_t` (k-diffusion's
    log-sigma rule) finds the same timestep on the table's own sigmas and one up to ~1e-3 away between them.
    Computed in float64; returns float32 shaped like ``sigma``.
    """
    log_alpha = -0.5 * torch.log1p(torch.as_tensor(model_sigmas).double().cpu() ** 2)  # descending
    sigma = torch.as_tensor(sigma)
    la = -0.5 * torch.log1p(sigma.double().cpu().reshape(-1) ** 2)
    j = (torch.searchsorted(-log_alpha, -la) - 1).clamp(0, len(log_alpha) - 2)
    w = ((la - log_alpha[j]) / (log_alpha[j + 1] - log_alpha[j])).clamp(0, 1)
    return (j + w).float().view(sigma.shape)


def t_to_sigma(t, model_sigmas: torch.Tensor) -> torch.Tensor:
    """The sigma at (fractional) timestep ``t``: log-linear interpolation in the table (k-diffusion)."""
    log_sigmas = _log_sigmas(model_sigmas)
    t = torch.as_tensor(t, device=log_sigmas.device).float()
    low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
    log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
    return log_sigma.exp()


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return append_zero(x.to(torch.float32))


def _need(model_sigmas, name: str) -> torch.Tensor:
    if model_sigmas is None:
        raise ValueError(f"the {name!r} schedule needs the model's sigma table (model_sigmas)")
    return torch.as_tensor(model_sigmas)


def _check_n(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------------------------------------
# the schedules


def uniform(n: int, sigma_min=None, sigma_max=None, model_sigmas=None) -> torch.Tensor:
    """The model's own discretisation (k-diffusion ``DiscreteSchedule.get_sigmas(n)``).

    ``t = linspace(len - 1, 0, n)`` (float32), sigma by :func:`t_to_sigma`, then 0. Ignores sigma_min/max.
    """
    n = _check_n(n)
    ms = _need(model_sigmas, "Uniform")
    t = torch.linspace(len(ms) - 1, 0, n, device=ms.device)
    return _append_zero(t_to_sigma(t, ms))


def karras(n: int, sigma_min: float, sigma_max: float, model_sigmas=None, *,
           rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): ``(max^(1/rho) + i/(n-1) * (min^(1/rho) - max^(1/rho)))^rho``, then 0."""
    n = _check_n(n)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def exponential(n: int, sigma_min: float, sigma_max: float, model_sigmas=None) -> torch.Tensor:
    """Evenly spaced in log sigma from sigma_max to sigma_min, then 0."""
    n = _check_n(n)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return _append_zero(sigmas)


def polyexponential(n: int, sigma_min: float, sigma_max: float, model_sigmas=None, *,
                    rho: float = 1.0) -> torch.Tensor:
    """Polynomial in log sigma: ``log s = log min + (1 - i/(n-1))^rho * (log max - log min)``, then 0."""
    n = _check_n(n)
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _append_zero(sigmas)


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, model_sigmas=None) -> torch.Tensor:
    """Evenly spaced timesteps, SGM style: ``linspace(t(max), t(min), n + 1)[:-1]`` mapped to sigmas, then 0.

    The last nonzero sigma stays one spacing above sigma_min (A1111 ``sgm_uniform``).
    """
    n = _check_n(n)
    ms = _need(model_sigmas, "SGM Uniform")
    start = sigma_to_t(torch.tensor(sigma_max), ms)
    end = sigma_to_t(torch.tensor(sigma_min), ms)
    ts = torch.linspace(start, end, n + 1)[:-1]
    return _append_zero(t_to_sigma(ts, ms))


def kl_optimal(n: int, sigma_min: float, sigma_max: float, model_sigmas=None) -> torch.Tensor:
    """The KL-optimal schedule (Sabour et al., "Align Your Steps", 2024): evenly spaced in arctan(sigma).

    A1111 1.10 (``kl_optimal``) returns ``n + 1`` points
    ``tan((1 - i/n) * atan(sigma_max) + (i/n) * atan(sigma_min))`` for ``i = 0..n`` - ending at sigma_min,
    with no 0, so its last step stops at sigma_min. We keep A1111's first ``n`` points exactly
    (``i = 0..n-1``) and end in 0 instead of sigma_min, as every schedule here does. So the smallest nonzero
    sigma is one arctan-spacing above sigma_min (as in SGM Uniform), not sigma_min itself. (ComfyUI's
    variant, ``i / (n - 1)`` spacing then 0, would reach sigma_min but differ from A1111 at every step.)
    """
    n = _check_n(n)
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    step_indices = torch.arange(n + 1)
    sigmas = torch.tan(step_indices / n * alpha_min + (1.0 - step_indices / n) * alpha_max)
    return _append_zero(sigmas[:-1])


#: Align Your Steps' published 10-step noise levels (11 points, sigma_max .. sigma_min), per architecture.
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


def _loglinear_interp(t_steps, num_steps: int) -> np.ndarray:
    """Log-linear interpolation of a decreasing sequence to ``num_steps`` points (A1111's helper)."""
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(np.asarray(t_steps, dtype=np.float64)[::-1])
    new_xs = np.linspace(0, 1, num_steps)
    new_ys = np.interp(new_xs, xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps(n: int, sigma_min=None, sigma_max=None, model_sigmas=None, *,
                     arch: str = "sd1") -> torch.Tensor:
    """Align Your Steps (NVIDIA, 2024) noise levels; ``arch="sdxl"`` picks the SDXL set, anything else SD1's.

    As A1111 1.10 does it: with ``n == 11`` the 11 published values are used as they are, then 0; for any
    other ``n`` they are log-linearly interpolated to ``n`` points (endpoints 14.615 and 0.029 kept), then 0.
    (So A1111's 10 steps are the 11 values squeezed to 10, not the published 10-step schedule; ComfyUI
    instead interpolates to ``n + 1`` points and replaces the last with 0.) Ignores sigma_min/max.

    One deliberate difference: for ``n == 1`` A1111's interpolation onto ``linspace(0, 1, 1)`` picks the
    *last* level (0.029), i.e. ``[0.029, 0]``, a one-step "generation" that starts from noise at sigma
    0.029; we return ``[14.615, 0]`` like every other schedule's one step.
    """
    n = _check_n(n)
    levels = list(AYS_SIGMAS["sdxl" if str(arch).lower() == "sdxl" else "sd1"])
    if n == 1:
        sigmas = [levels[0], 0.0]
    elif n != len(levels):
        sigmas = np.append(_loglinear_interp(levels, n), [0.0])
    else:
        sigmas = levels + [0.0]
    return torch.tensor(np.asarray(sigmas, dtype=np.float64), dtype=torch.float32)


def simple(n: int, sigma_min=None, sigma_max=None, model_sigmas=None) -> torch.Tensor:
    """Every ``len / n``-th table entry from the top (A1111 ``simple_scheduler``), then 0.

    Exact table values: ``model_sigmas[-(1 + int(x * len / n))]`` for ``x = 0..n-1``.
    """
    n = _check_n(n)
    ms = _need(model_sigmas, "Simple")
    ss = len(ms) / n
    sigs = [float(ms[-(1 + int(x * ss))]) for x in range(n)] + [0.0]
    return torch.tensor(sigs, dtype=torch.float32)


def normal(n: int, sigma_min: float, sigma_max: float, model_sigmas=None) -> torch.Tensor:
    """Evenly spaced timesteps including both ends: ``linspace(t(max), t(min), n)`` mapped to sigmas, then 0.

    A1111 ``normal_scheduler`` with its defaults (``sgm=False``): unlike SGM Uniform the last nonzero
    sigma is sigma_min itself.
    """
    n = _check_n(n)
    ms = _need(model_sigmas, "Normal")
    start = sigma_to_t(torch.tensor(sigma_max), ms)
    end = sigma_to_t(torch.tensor(sigma_min), ms)
    ts = torch.linspace(start, end, n)
    return _append_zero(t_to_sigma(ts, ms))


def ddim(n: int, sigma_min=None, sigma_max=None, model_sigmas=None) -> torch.Tensor:
    """The DDIM ("leading", offset 1) timesteps as sigmas: table entries 1, 1 + k, 1 + 2k, ... below ``len``,
    ``k = max(len // n, 1)``, descending, then 0 (A1111 ``ddim_scheduler``). Exact table values.

    Copied as it is, including its quirk: when ``len`` is not a multiple of ``n`` the walk can fit more than
    ``n`` entries (1000 entries: n = 6, 7, 9, 30, ... give 7, 8, 10, 31, ... steps), so the result can be
    longer than ``n + 1``. A1111 runs those extra steps too.
    """
    n = _check_n(n)
    ms = _need(model_sigmas, "DDIM")
    ss = max(len(ms) // n, 1)
    sigs = [float(ms[x]) for x in range(1, len(ms), ss)]
    return torch.tensor(sigs[::-1] + [0.0], dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float, model_sigmas=None, *, alpha: float = 0.6,
         beta: float = 0.6) -> torch.Tensor:
    """Beta schedule ("Beta Sampling is All You Need", Lee et al. 2024) as A1111 1.10 implements it.

    ``q = 1 - linspace(0, 1, n)`` (1 down to 0, both ends included), ``sigma = sigma_min + ppf(q) *
    (sigma_max - sigma_min)`` with ``ppf`` the Beta(alpha, beta) quantile, then 0: linear in *sigma*, from
    sigma_max down to sigma_min. (ComfyUI's ``beta`` differs: it spaces *timesteps* by the ppf, rounds them,
    and reads the table; A1111's does not use the model's table.) A1111's options ``beta_dist_alpha`` /
    ``beta_dist_beta`` default to 0.6 / 0.6.
    """
    n = _check_n(n)
    qs = 1 - np.linspace(0, 1, n)
    sigmas = [sigma_min + (beta_ppf(float(q), alpha, beta) * (sigma_max - sigma_min)) for q in qs] + [0.0]
    return torch.tensor(np.asarray(sigmas, dtype=np.float64), dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------
# A1111's own grids for its timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC): they ignore the schedule type


class TimestepGrid(NamedTuple):
    """Where one of A1111's timestep samplers runs, in sigma space.

    ``sigmas``: float32, descending, all above 0 (these samplers stop with the latent still slightly noisy); the
    sampler takes ``len(sigmas) - 1`` steps (none when there is one point). ``noise_sigma``: the noise level an
    img2img / hires pass noises its init latents to before sampling starts at ``sigmas[0]`` (A1111 noises them one
    grid point higher than where it starts); equal to ``sigmas[0]`` for txt2img.
    """

    sigmas: torch.Tensor
    noise_sigma: float


def a1111_timesteps(steps: int, n: int = 1000) -> list[int]:
    """A1111's timesteps for ``steps`` steps on an ``n``-entry table, ascending: ``clip(arange(0, n, n // steps) + 1,
    0, n - 1)`` (``CompVisSampler.get_timesteps``). There are more than ``steps`` of them when ``n // steps`` does
    not divide ``n`` (7 steps: 8 timesteps).

    >>> a1111_timesteps(8)
    [1, 126, 251, 376, 501, 626, 751, 876]
    """
    steps = _check_n(steps)
    if steps > n:
        raise ValueError(f"the timestep samplers (DDIM, PLMS, UniPC) take at most {n} steps, got {steps}")
    return [min(t + 1, n - 1) for t in range(0, n, n // steps)]


def _table_and_timesteps(steps: int, model_sigmas, name: str, t_enc: int | None) -> tuple[torch.Tensor, list[int]]:
    ms = _need(model_sigmas, name).detach().to("cpu", torch.float32)
    ts = a1111_timesteps(steps, len(ms))
    if t_enc is not None and not 0 <= t_enc < len(ts):
        raise ValueError(f"t_enc must be between 0 and {len(ts) - 1} for {steps} steps, got {t_enc}")
    return ms, ts


def ddim_grid(steps: int, model_sigmas, *, t_enc: int | None = None) -> TimestepGrid:
    """DDIM's, DDIM CFG++'s and PLMS's grid (A1111 ``sd_samplers_timesteps``): the table sigmas of
    :func:`a1111_timesteps`, descending; with ``t_enc`` (img2img) only its first ``t_enc`` timesteps.

    The sampler steps from each timestep to the next lower one and stops at the lowest (timestep 1): ``L``
    timesteps give ``L - 1`` steps and model calls (PLMS: one more, for its first step). In img2img A1111 noises
    the init latents to timestep ``t_enc`` and starts sampling at ``t_enc - 1`` (``noise_sigma`` vs ``sigmas[0]``):
    8 steps at denoising 0.6 (``t_enc`` 4) noise to timestep 501 and run 376 -> 251 -> 126 -> 1, three steps.
    """
    ms, ts = _table_and_timesteps(steps, model_sigmas, "DDIM", t_enc)
    if t_enc is None:
        return TimestepGrid(ms[ts[::-1]], float(ms[ts[-1]]))
    noise_sigma = float(ms[ts[t_enc]])
    run = ts[:t_enc][::-1]
    return TimestepGrid(ms[run] if run else torch.tensor([noise_sigma]), noise_sigma)


def unipc_grid(steps: int, model_sigmas, *, t_enc: int | None = None) -> TimestepGrid:
    """UniPC's grid (A1111 ``sd_samplers_timesteps_impl.unipc`` with its defaults, skip type "time_uniform"):
    ``len(a1111_timesteps(steps))`` steps over the continuous time ``t`` evenly spaced from 1 down to ``1 / n``;
    with ``t_enc`` (img2img), ``t_enc`` steps from ``t_start = (a1111_timesteps(steps)[t_enc - 1] + 1) / n``.

    The sigma at ``t`` comes from UniPC's ``NoiseScheduleVP``: log alpha (``0.5 log alphas_cumprod``) interpolated
    linearly in ``t`` between the table's points ``t_j = (j + 1) / n``, then ``lambda = log alpha - log sqrt(1 -
    alpha^2)`` and ``sigma = exp(-lambda)``, in float32 as A1111 computes them. The last point is ``t = 1 / n``,
    the table's first entry: no step to sigma 0. The model is called at ``(t - 1 / n) * n`` (fractional); our
    denoiser's log-sigma interpolation finds those timesteps to within 1e-3.

    Where A1111 fails, this does not: ``t_enc = 0`` (A1111: IndexError) is a pass of no steps; fewer steps than
    UniPC's order (A1111: "UniPC order must be < sampling steps") run at the order the history allows.
    """
    ms, ts = _table_and_timesteps(steps, model_sigmas, "UniPC", t_enc)
    n = len(ms)
    if t_enc is None:
        count, t_start, noise_sigma = len(ts), torch.tensor(1.0), None
    elif t_enc == 0:
        return TimestepGrid(ms[[ts[0]]], float(ms[ts[0]]))
    else:
        count, t_start, noise_sigma = t_enc, torch.tensor(ts[t_enc - 1]) / n + 1 / n, float(ms[ts[t_enc]])
    t = torch.linspace(t_start, 1.0 / n, count + 1)
    alphas_cumprod = (1 / (1 + ms.double() ** 2)).float()
    log_alpha = 0.5 * torch.log(alphas_cumprod)
    t_table = torch.linspace(0.0, 1.0, n + 1)[1:]
    j = (torch.searchsorted(t_table, t) - 1).clamp(0, n - 2)
    la = log_alpha[j] + (t - t_table[j]) * (log_alpha[j + 1] - log_alpha[j]) / (t_table[j + 1] - t_table[j])
    lam = la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))
    sigmas = torch.exp(-lam.double()).float()
    return TimestepGrid(sigmas, float(sigmas[0]) if noise_sigma is None else noise_sigma)


# --------------------------------------------------------------------------------------------------------
# the Beta distribution's quantile, without scipy (scipy.stats.beta.ppf is a test-only dependency)


def _betacf(x: float, a: float, b: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz), as in Numerical Recipes."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` (the Beta(a, b) CDF at ``x``), float64."""
    if a <= 0 or b <= 0:
        raise ValueError(f"beta distribution parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(x, a, b) / a
    return 1.0 - front * _betacf(1.0 - x, b, a) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The Beta(a, b) quantile (inverse CDF) at ``q`` by bisection on :func:`betainc`; ``ppf(0) = 0``,
    ``ppf(1) = 1``. Matches ``scipy.stats.beta.ppf`` to ~1e-15."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class ScheduleSpec:
    """One A1111 schedule type.

    ``label`` is the display name (the dropdown, infotext "Schedule type"), ``name`` the API name.
    ``func(n, sigma_min, sigma_max, model_sigmas, **options)`` returns the sigmas; ``needs_model``: it reads
    the model's sigma table; ``default_rho``: it takes a ``rho`` option (A1111's "Schedule rho"), else None.
    """

    label: str
    name: str
    func: Callable[..., torch.Tensor]
    needs_model: bool = False
    default_rho: float | None = None


_SS = ScheduleSpec
#: A1111's schedule types in its dropdown order, keyed by display label ("Automatic" is resolved elsewhere).
SCHEDULES: dict[str, ScheduleSpec] = {s.label: s for s in [
    _SS("Uniform", "uniform", uniform, needs_model=True),
    _SS("Karras", "karras", karras, default_rho=7.0),
    _SS("Exponential", "exponential", exponential),
    _SS("Polyexponential", "polyexponential", polyexponential, default_rho=1.0),
    _SS("SGM Uniform", "sgm_uniform", sgm_uniform, needs_model=True),
    _SS("KL Optimal", "kl_optimal", kl_optimal),
    _SS("Align Your Steps", "align_your_steps", align_your_steps),
    _SS("Simple", "simple", simple, needs_model=True),
    _SS("Normal", "normal", normal, needs_model=True),
    _SS("DDIM", "ddim", ddim, needs_model=True),
    _SS("Beta", "beta", beta),
]}

_ALIASES = {"sgmuniform": "SGM Uniform"}  # A1111's alias


def resolve_schedule(name: str) -> str:
    """Map a schedule label or API name, any case, to its label: ``"karras"`` -> ``"Karras"``,
    ``"sgm_uniform"`` -> ``"SGM Uniform"``. Raises ValueError listing the options otherwise."""
    key = str(name).strip().lower()
    for spec in SCHEDULES.values():
        if key in (spec.label.lower(), spec.name):
            return spec.label
    if key in _ALIASES:
        return _ALIASES[key]
    hint = suggest(str(name), [*SCHEDULES, *(s.name for s in SCHEDULES.values())])
    raise ValueError(f"Unknown schedule type {name!r}.{hint} Available schedule types: "
                     f"{', '.join(SCHEDULES)} (or their API names: "
                     f"{', '.join(s.name for s in SCHEDULES.values())}).")


def compute_sigmas(scheduler: str, steps: int, model_sigmas: torch.Tensor, *, arch: str = "sd1",
                   sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
                   discard_penultimate: bool = False) -> torch.Tensor:
    """The sigmas for ``steps`` steps of schedule ``scheduler`` (label or API name), as A1111 computes them.

    ``model_sigmas`` is the ascending discrete table; ``sigma_min`` / ``sigma_max`` default to its first /
    last entry (A1111's "Schedule min/max sigma" overrides). ``rho`` applies only to schedules with a
    ``default_rho`` (Karras, Polyexponential). ``arch`` picks Align Your Steps' set. With
    ``discard_penultimate`` it computes ``steps + 1`` sigmas and drops the next-to-last (A1111's
    "discard_next_to_last_sigma"), so there are still ``steps`` steps. Returns float32, on the CPU.
    """
    spec = SCHEDULES[resolve_schedule(scheduler)]
    steps = _check_n(steps)
    ms = torch.as_tensor(model_sigmas).detach().to("cpu", torch.float32)
    smin = float(ms[0]) if sigma_min is None else float(sigma_min)
    smax = float(ms[-1]) if sigma_max is None else float(sigma_max)
    n = steps + 1 if discard_penultimate else steps
    options: dict = {}
    if spec.default_rho is not None:
        options["rho"] = spec.default_rho if rho is None else float(rho)
    if spec.func is align_your_steps:
        options["arch"] = arch
    sigmas = spec.func(n, smin, smax, ms, **options)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.to(torch.float32)
