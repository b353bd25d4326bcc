"""k-diffusion-style samplers as generators: one small function per sampler, same signature for all.

Each follows the contract in :mod:`nbdiffuse.sampling.base`: ``sample_x(model, x, sigmas, *, noise, **opts)``
yields a :class:`~nbdiffuse.sampling.base.StepState` after every step, continues from a latent the driver
``send()``s back, and returns the final latent. Randomness comes only from ``noise(sigma, sigma_next)``; a
sampler that does not need it (deterministic options) accepts ``noise=None``.

The math is ported from k-diffusion 0.1.1 (``k_diffusion/sampling.py``, Copyright (c) 2022 Katherine
Crowson, MIT licence). Restart (Xu et al. 2023, "Restart Sampling for Improving Generative Processes") and LCM
reproduce the behaviour of AUTOMATIC1111's samplers of those names (see the Samplers section of the A1111
notes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import NoiseSource, StepState, get_ancestral_step, to_d
from .schedules import karras

__all__ = [
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_lms",
    "sample_restart",
]


# --- helpers -----------------------------------------------------------------------------------------------


def _report(i, total, sigma, sigma_next, x, denoised, calls=1):
    """Yield one StepState; return the latent the driver sent back, or ``x``."""
    sent = yield StepState(i, total, float(sigma), float(sigma_next), x, denoised, calls)
    return x if sent is None else sent


def _batch(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A 0-dim sigma repeated once per batch item, as the model takes it, on sigma's device: the samplers keep
    sigmas on the CPU, so that neither they nor the denoiser read a GPU tensor back on every step."""
    return sigma * torch.ones([x.shape[0]], dtype=x.dtype, device=sigma.device)


def _require_noise(noise: NoiseSource | None, needed: bool, what: str) -> None:
    """Fail early, with the reason, when a stochastic option is used without a noise source."""
    if needed and noise is None:
        raise ValueError(f"{what} adds noise, so it needs a noise source: pass noise=fn(sigma, sigma_next).")


def _ancestral(sigma, sigma_next, eta):
    """``get_ancestral_step`` for 0-dim tensors: ``(sigma_down, sigma_up)`` as tensors like ``sigma``."""
    sigma_down, sigma_up = get_ancestral_step(float(sigma), float(sigma_next), eta)
    return sigma.new_tensor(sigma_down), sigma.new_tensor(sigma_up)


def _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s churn: raise x's noise level from ``sigmas[i]`` to ``sigma_hat``; return both."""
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        eps = noise(sigma, sigmas[i + 1]) * s_noise
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def _sigma_fn(t):
    """Noise level at log-SNR time ``t = -log(sigma)``."""
    return t.neg().exp()


def _t_fn(sigma):
    """Log-SNR time ``t = -log(sigma)`` of a noise level."""
    return sigma.log().neg()


# --- Euler, Heun, DPM2, LMS --------------------------------------------------------------------------------


@torch.no_grad()
def sample_euler(model, x, sigmas, *, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler steps (Algorithm 2 of Karras et al. 2022), with optional churn."""
    _require_noise(noise, s_churn > 0, "Euler with s_churn > 0")
    total = len(sigmas) - 1
    for i in range(total):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with Euler steps: step down to sigma_down, then add noise up to sigma_next."""
    _require_noise(noise, eta > 0 and len(sigmas) > 2, "Euler a with eta > 0")
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = _ancestral(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0 and sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, *, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun steps (Algorithm 2 of Karras et al. 2022); an Euler step where the next sigma is 0."""
    _require_noise(noise, s_churn > 0, "Heun with s_churn > 0")
    total = len(sigmas) - 1
    for i in range(total):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x, calls = x + d * dt, 1
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, _batch(x, sigmas[i + 1])))
            x, calls = x + (d + d_2) / 2 * dt, 2
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised, calls)
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, *, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2-style midpoint steps (in log sigma); an Euler step where the next sigma is 0."""
    _require_noise(noise, s_churn > 0, "DPM2 with s_churn > 0")
    total = len(sigmas) - 1
    for i in range(total):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        d = to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x, calls = x + d * (sigmas[i + 1] - sigma_hat), 1
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, _batch(x, sigma_mid)))
            x, calls = x + d_2 * (sigmas[i + 1] - sigma_hat), 2
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised, calls)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM2 midpoint steps."""
    _require_noise(noise, eta > 0 and len(sigmas) > 2, "DPM2 a with eta > 0")
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = _ancestral(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x, calls = x + d * (sigma_down - sigmas[i]), 1
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, _batch(x, sigma_mid)))
            x, calls = x + d_2 * (sigma_down - sigmas[i]), 2
        # k-diffusion adds this noise only on the midpoint branch, which drops it when eta > 1 sends
        # sigma_down to 0 before the last step; we add it whenever the next sigma is above 0.
        if sigmas[i + 1] > 0 and sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised, calls)
    return x


def _lms_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial of node t[i-j].

    The nodes are t[i], ..., t[i-order+1]. Exact, where k-diffusion integrates numerically (scipy ``quad``).
    """
    others = [t[i - k] - t[i] for k in range(order) if k != j]  # nodes shifted so t[i] is 0
    basis = np.polynomial.Polynomial([1.0])
    for o in others:
        basis = basis * np.polynomial.Polynomial([-o, 1.0]) / (t[i - j] - t[i] - o)
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1] - t[i]) - antiderivative(0.0))


@torch.no_grad()
def sample_lms(model, x, sigmas, *, noise=None, order=4):
    """Linear multistep: Adams-Bashforth on the Karras ODE over up to ``order`` past derivatives."""
    t = sigmas.detach().cpu().tolist()
    ds: list[torch.Tensor] = []
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        cur_order = min(i + 1, order)
        coeffs = [_lms_coeff(cur_order, t, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x


# --- DPM-Solver++ ------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver++(2S) second-order single-step updates."""
    _require_noise(noise, eta > 0 and len(sigmas) > 2, "DPM++ 2S a with eta > 0")
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = _ancestral(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x, calls = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i]), 1
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _batch(x, _sigma_fn(s)))
            x, calls = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2, 2
        if sigmas[i + 1] > 0 and sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised, calls)
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0, r=1 / 2):
    """DPM-Solver++ (stochastic): two model calls per step, noise at the intermediate sigma as well."""
    _require_noise(noise, eta > 0 and len(sigmas) > 2, "DPM++ SDE with eta > 0")
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x, calls = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]), 1
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            # Step 1: to the intermediate time s
            sd, su = _ancestral(_sigma_fn(t), _sigma_fn(s), eta)
            s_ = _t_fn(sd)
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            if su > 0:
                x_2 = x_2 + noise(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, _batch(x, _sigma_fn(s)))
            # Step 2: to t_next, with the two predictions combined
            sd, su = _ancestral(_sigma_fn(t), _sigma_fn(t_next), eta)
            t_next_ = _t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            if su > 0:
                x = x + noise(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
            calls = 2
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised, calls)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, *, noise=None):
    """DPM-Solver++(2M): second-order multistep, one model call per step."""
    old_denoised = None
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE, with the midpoint or Heun correction for the second-order term."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', not {solver_type!r}.")
    _require_noise(noise, eta > 0 and len(sigmas) > 2, "DPM++ 2M SDE with eta > 0")
    old_denoised, h_last = None, None
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised  # denoising step; h_last stays as it was (k-diffusion reads an unset h here)
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    coeff = (-h - eta_h).expm1().neg() / (-h - eta_h) + 1
                else:
                    coeff = 0.5 * (-h - eta_h).expm1().neg()
                x = x + coeff * (1 / r) * (denoised - old_denoised)
            if eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
            h_last = h
        old_denoised = denoised
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: third-order multistep over the last three predictions."""
    _require_noise(noise, eta > 0 and len(sigmas) > 2, "DPM++ 3M SDE with eta > 0")
    denoised_1, denoised_2 = None, None
    h_1, h_2 = None, None
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised  # denoising step; h_1, h_2 stay as they were (k-diffusion reads an unset h here)
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x


# --- DPM-Solver (eps-based; fast and adaptive) -------------------------------------------------------------


def _eps(model, x, t):
    """The model's noise prediction at log-SNR time ``t``."""
    return (x - model(x, _batch(x, _sigma_fn(t)))) / _sigma_fn(t)


def _dpm_solver_1_step(x, t, t_next, eps):
    """DPM-Solver-1 (DDIM) step from t to t_next; no model call beyond ``eps`` at t."""
    h = t_next - t
    return x - _sigma_fn(t_next) * h.expm1() * eps


def _dpm_solver_2_step(model, x, t, t_next, eps, r1=1 / 2):
    """DPM-Solver-2 step; one extra model call. Returns ``(x_next, eps_r1)``."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma_fn(s1) * (r1 * h).expm1() * eps
    eps_r1 = _eps(model, u1, s1)
    x_2 = x - _sigma_fn(t_next) * h.expm1() * eps - _sigma_fn(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
    return x_2, eps_r1


def _dpm_solver_3_step(model, x, t, t_next, eps, eps_r1=None, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3 step; two extra model calls, or one when ``eps_r1`` (at ``t + r1 h``) is given."""
    h = t_next - t
    s1 = t + r1 * h
    s2 = t + r2 * h
    if eps_r1 is None:
        eps_r1 = _eps(model, x - _sigma_fn(s1) * (r1 * h).expm1() * eps, s1)
    u2 = (
        x
        - _sigma_fn(s2) * (r2 * h).expm1() * eps
        - _sigma_fn(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = _eps(model, u2, s2)
    sigma_next = _sigma_fn(t_next)
    return x - sigma_next * h.expm1() * eps - sigma_next / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _dpm_solver_range(sigmas):
    """``(sigma_min, sigma_max)`` for the DPM-Solver samplers, as A1111 picks them from a schedule."""
    positive = sigmas[sigmas > 0]
    return positive[-1], sigmas[0]


def _denoise_once(model, x, sigmas):
    """One Euler step to sigma 0 (x = denoised), for a schedule with no interval for DPM-Solver to cover."""
    denoised = model(x, _batch(x, sigmas[0]))
    return (yield from _report(0, 1, sigmas[0], 0.0, denoised, denoised))


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, *, noise=None, eta=0.0, s_noise=1.0):
    """DPM-Solver-Fast: fixed steps of order 3, 3, ..., with len(sigmas) - 1 model calls in all.

    As in A1111 it runs from ``sigmas[0]`` to the last non-zero sigma (not to 0), spaced evenly in log sigma;
    the rest of the schedule is ignored. It yields once per solver step (``calls`` = that step's order), so a
    run has about a third as many StepStates as model calls.
    """
    if len(sigmas) < 2:
        return x
    sigma_min, sigma_max = _dpm_solver_range(sigmas)
    if not sigma_min < sigma_max:
        return (yield from _denoise_once(model, x, sigmas))
    _require_noise(noise, eta > 0, "DPM fast with eta > 0")
    nfe = len(sigmas) - 1
    t_start, t_end = _t_fn(sigma_max), _t_fn(sigma_min)
    m = nfe // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=sigmas.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, su = get_ancestral_step(float(_sigma_fn(t)), float(_sigma_fn(t_next)), eta)
            t_next_ = torch.minimum(t_end, _t_fn(t.new_tensor(sd)))
            su = (_sigma_fn(t_next) ** 2 - _sigma_fn(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        eps = _eps(model, x, t)
        denoised = x - _sigma_fn(t) * eps
        if order == 1:
            x = _dpm_solver_1_step(x, t, t_next_, eps)
        elif order == 2:
            x, _ = _dpm_solver_2_step(model, x, t, t_next_, eps)
        else:
            x = _dpm_solver_3_step(model, x, t, t_next_, eps)
        if eta:
            x = x + su * s_noise * noise(_sigma_fn(t), _sigma_fn(t_next))
        x = yield from _report(i, len(orders), _sigma_fn(t), _sigma_fn(t_next), x, denoised, order)
    return x


class _PIDStepSize:
    """PID controller for the adaptive step size (k-diffusion's ``PIDStepSizeController``)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error) -> bool:
        """Rescale ``h`` from the error estimate; return whether the step just tried is accepted."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    model,
    x,
    sigmas,
    *,
    noise=None,
    eta=0.0,
    s_noise=1.0,
    order=3,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    pcoeff=0.0,
    icoeff=1.0,
    dcoeff=0.0,
    accept_safety=0.81,
    max_tries=1000,
):
    """DPM-Solver-12/23 with adaptive step size, from ``sigmas[0]`` to the last non-zero sigma (as A1111).

    Yields once per accepted step; ``total`` is the best estimate so far (accepted steps plus the distance
    left over the current step size) and ``calls`` counts the model calls of rejected tries too. The eps at
    the step's start is computed once per accepted step, not once per try as in k-diffusion (same result,
    fewer calls). After ``max_tries`` tries the next step goes straight to the end and is accepted, so a run
    always finishes.
    """
    if order not in {2, 3}:
        raise ValueError(f"order must be 2 or 3, not {order!r}.")
    if len(sigmas) < 2:
        return x
    sigma_min, sigma_max = _dpm_solver_range(sigmas)
    if not sigma_min < sigma_max:
        return (yield from _denoise_once(model, x, sigmas))
    _require_noise(noise, eta > 0, "DPM adaptive with eta > 0")
    t_start, t_end = _t_fn(sigma_max), _t_fn(sigma_min)
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    pid = _PIDStepSize(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s, x_prev, eps = t_start, x, None
    n_accept, tries, calls = 0, 0, 0
    while s < t_end - 1e-5:
        tries += 1
        forced = tries >= max_tries
        t = t_end if forced else torch.minimum(t_end, s + pid.h)
        if eta:
            sd, su = get_ancestral_step(float(_sigma_fn(s)), float(_sigma_fn(t)), eta)
            t_ = torch.minimum(t_end, _t_fn(t.new_tensor(sd)))
            su = (_sigma_fn(t) ** 2 - _sigma_fn(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        if eps is None:  # x and s change only on an accepted step
            eps, calls = _eps(model, x, s), calls + 1
        denoised = x - _sigma_fn(s) * eps
        if order == 2:
            x_low = _dpm_solver_1_step(x, s, t_, eps)
            x_high, _ = _dpm_solver_2_step(model, x, s, t_, eps)
        else:
            x_low, eps_r1 = _dpm_solver_2_step(model, x, s, t_, eps, r1=1 / 3)
            x_high = _dpm_solver_3_step(model, x, s, t_, eps, eps_r1=eps_r1)
        calls += order - 1
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error) or forced:
            x_prev = x_low
            x = x_high
            if eta:
                x = x + su * s_noise * noise(_sigma_fn(s), _sigma_fn(t))
            s_from, s = s, t
            n_accept += 1
            left = float(t_end - s) / pid.h  # steps still to go at the current step size
            more = 0 if float(t_end - s) <= 1e-5 else math.ceil(left) if math.isfinite(left) else 1
            total = n_accept + min(more, max_tries - tries)
            x = yield from _report(n_accept - 1, total, _sigma_fn(s_from), _sigma_fn(s), x, denoised, calls)
            eps, calls = None, 0
    return x


# --- Restart, LCM ------------------------------------------------------------------------------------------


def _restart_steps(sigmas, restart_list):
    """A1111's Restart step list: ``[(sigma, sigma_next), ...]`` with the restart segments spliced in."""
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            main_steps = steps - restart_steps * restart_times
            sigmas = karras(main_steps, float(sigmas[-2]), float(sigmas[0])).to(sigmas)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    restart_at = {int(torch.argmin((sigmas - key).abs())): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_at:
            restart_steps, restart_times, restart_max = restart_at[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin((sigmas - restart_max).abs()))
            if max_idx < min_idx:
                sigma_restart = karras(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))
                sigma_restart = sigma_restart.to(sigmas)[:-1]
                step_list.extend(list(zip(sigma_restart[:-1], sigma_restart[1:])) * restart_times)
    return step_list


@torch.no_grad()
def sample_restart(model, x, sigmas, *, noise=None, s_noise=1.0, restart_list=None):
    """Restart sampling (Xu et al. 2023) as A1111 runs it: Heun steps, re-noising up and re-running a segment.

    From 20 steps on, the schedule is remade as Karras and ``restart_list`` defaults to A1111's
    ``{0.1: [restart_steps + 1, restart_times, 2]}`` (``{min_sigma: [steps, times, max_sigma]}``); below 20
    steps it is plain Heun. Yields once per (Heun or final Euler) step: ``total`` is the length of the step
    list, which equals ``len(sigmas) - 1`` for the default list.
    """
    step_list = _restart_steps(sigmas, restart_list)
    _require_noise(noise, any(b[0] > a[1] for a, b in zip(step_list, step_list[1:])), "Restart")
    last_sigma = None
    for i, (sigma, sigma_next) in enumerate(step_list):
        if last_sigma is not None and last_sigma < sigma:
            x = x + noise(last_sigma, sigma) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, _batch(x, sigma))
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x, calls = x + d * dt, 1
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, _batch(x, sigma_next)))
            x, calls = x + (d + d_2) / 2 * dt, 2
        x = yield from _report(i, len(step_list), sigma, sigma_next, x, denoised, calls)
        last_sigma = sigma_next
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, *, noise=None):
    """Latent Consistency Model sampling: jump to the prediction, then re-noise to the next sigma."""
    _require_noise(noise, bool((sigmas[1:] > 0).any()), "LCM with more than one step")
    total = len(sigmas) - 1
    for i in range(total):
        denoised = model(x, _batch(x, sigmas[i]))
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
        x = yield from _report(i, total, sigmas[i], sigmas[i + 1], x, denoised)
    return x
