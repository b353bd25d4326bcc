"""DDIM, DDIM CFG++, PLMS and UniPC in sigma space, against diffusers' schedulers as the reference.

One eps-model, ``eps_model(x_vp, t)`` (the exact posterior-mean eps of a Gaussian data distribution plus a
small nonlinear term), drives both sides: diffusers steps the VP latent ``x_vp`` over integer timesteps; our
samplers step ``x = x_vp * sqrt(1 + sigma^2)`` over the same timesteps' sigmas, through the denoiser
``model(x, sigma) = x - sigma * eps_model(x * sqrt(abar_t), t)`` with ``t`` the table index of ``sigma``
(exact: the sigmas are table entries). Latents are compared in VP scale, ``x / sqrt(1 + sigma^2)``; at
sigma 0 both are x0.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import drive as run
from diffusers import DDIMScheduler, PNDMScheduler, UniPCMultistepScheduler

from nbdiffuse.sampling import timestep_samplers as ts
from nbdiffuse.sampling.base import StepState
from nbdiffuse.sampling.schedules import compute_sigmas

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          prediction_type="epsilon")
AC = DDIMScheduler(**SD).alphas_cumprod.clone()  # float32, diffusers' own computation
TABLE = ((1 - AC) / AC) ** 0.5
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy-2 copy= warning
SHAPE = (2, 4, 6, 6)
MU, S0 = 0.3, 0.8  # data ~ N(MU, S0^2) per element


def eps_model(x_vp: torch.Tensor, t: int) -> torch.Tensor:
    a = AC[t].double().item()
    exact = math.sqrt(1 - a) * (x_vp - math.sqrt(a) * MU) / (a * S0**2 + 1 - a)
    return exact + 0.05 * torch.sin(3 * x_vp) * (t / 1000)


def t_of(sigma: float) -> int:
    t = int(torch.argmin((TABLE - sigma).abs()))
    assert TABLE[t].item() == sigma, "sigmas must be table entries"
    return t


class Denoiser:
    """Our side of the model: sigma space, counting calls."""

    def __init__(self):
        self.calls = 0
        self.sigmas: list[float] = []

    def __call__(self, x, sigma):
        self.calls += 1
        s = float(sigma[0])
        self.sigmas.append(s)
        t = t_of(s)
        eps = eps_model(x * AC[t].sqrt(), t)
        return x - s * eps


def vp(x, sigma):
    return x / math.sqrt(1 + sigma**2)


def x_start(sigma0: float, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_vp = torch.randn(SHAPE, generator=g)
    return x_vp, x_vp * math.sqrt(1 + sigma0**2)


def assert_vp_close(ours, theirs, rtol=1e-5):
    scale = theirs.abs().max().item()
    err = (ours - theirs).abs().max().item()
    assert err <= rtol * max(scale, 1.0), f"max abs error {err:.3g} at scale {scale:.3g}"


# ------------------------------------------------------------------------------------------------ DDIM


def _diffusers_ddim(n, x_vp, eta=0.0, noises=None):
    sch = DDIMScheduler(**SD, set_alpha_to_one=True, steps_offset=1, clip_sample=False,
                        timestep_spacing="leading")
    sch.set_timesteps(n)
    outs = []
    for i, t in enumerate(sch.timesteps):
        eps = eps_model(x_vp, int(t))
        kw = {"eta": eta, "variance_noise": noises[i]} if eta else {}
        x_vp = sch.step(eps, t, x_vp, **kw).prev_sample
        outs.append(x_vp)
    return sch.timesteps, outs


@pytest.mark.parametrize("n", [1, 2, 10, 20, 25])
def test_ddim_matches_diffusers(n):
    timesteps, theirs = _diffusers_ddim(n, x_start(0)[0])
    sigmas = torch.cat([TABLE[timesteps], torch.zeros(1)])
    assert torch.equal(sigmas, compute_sigmas("DDIM", n, TABLE))  # A1111's DDIM schedule, same timesteps
    x_vp0, x0 = x_start(float(sigmas[0]))
    model = Denoiser()
    out, states = run(ts.sample_ddim(model, x0, sigmas))
    assert len(states) == n and model.calls == n
    for st, th in zip(states, theirs):
        assert_vp_close(vp(st.x, st.sigma_next), th)
    assert_vp_close(out, theirs[-1])
    assert torch.equal(out, states[-1].x)


@pytest.mark.parametrize("n", [3, 10])
def test_ddim_eta_matches_diffusers_with_same_noise(n):
    eta = 0.7
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(SHAPE, generator=g) for _ in range(n)]
    timesteps, theirs = _diffusers_ddim(n, x_start(0)[0], eta=eta, noises=noises)
    sigmas = torch.cat([TABLE[timesteps], torch.zeros(1)])
    by_sigma = {float(s): z for s, z in zip(sigmas[:-1], noises)}
    seen = []

    def noise(sigma, sigma_next):
        seen.append((float(sigma), float(sigma_next)))
        return by_sigma[float(sigma)]

    out, states = run(ts.sample_ddim(Denoiser(), x_start(float(sigmas[0]))[1], sigmas, noise=noise, eta=eta))
    for st, th in zip(states, theirs):
        assert_vp_close(vp(st.x, st.sigma_next), th)
    assert_vp_close(out, theirs[-1])
    # noise is drawn for every step except the last (sigma_next 0: DDIM's variance is 0 there)
    assert seen == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(n - 1)]
    # and it matters
    out0, _ = run(ts.sample_ddim(Denoiser(), x_start(float(sigmas[0]))[1], sigmas))
    assert not torch.allclose(out, out0)


def test_ddim_eta0_is_euler_on_the_pf_ode():
    sigmas = compute_sigmas("Karras", 6, TABLE)
    x = x_start(float(sigmas[0]))[1]
    out, states = run(ts.sample_ddim(lambda x, s: 0.5 * x, x.clone(), sigmas))
    ref = x.clone()
    for i in range(6):
        d = (ref - 0.5 * ref) / sigmas[i]
        ref = ref + d * (sigmas[i + 1] - sigmas[i])
        assert torch.allclose(states[i].x, ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------- CFG++


class Guided:
    """A toy guidance closure: cond/uncond denoisers, remembering the last uncond prediction."""

    def __init__(self, shift_uncond=0.0, scale=1.0):
        self.inner = Denoiser()
        self.shift, self.scale = shift_uncond, scale
        self.last_uncond = None

    def __call__(self, x, sigma):
        cond = self.inner(x, sigma)
        self.last_uncond = cond + self.shift
        return self.last_uncond + self.scale * (cond - self.last_uncond)


@pytest.mark.parametrize("n", [1, 2, 3, 20])
def test_cfgpp_with_uncond_equal_to_cond_is_ddim(n):
    sigmas = compute_sigmas("DDIM", n, TABLE)
    x = x_start(float(sigmas[0]))[1]
    ddim_out, _ = run(ts.sample_ddim(Denoiser(), x.clone(), sigmas))
    guider = Guided(shift_uncond=0.0)
    gen = ts.sample_ddim_cfgpp(guider, x.clone(), sigmas, uncond=lambda: guider.last_uncond)
    cfgpp_out, states = run(gen)
    assert torch.equal(cfgpp_out, ddim_out)
    none_out, _ = run(ts.sample_ddim_cfgpp(Denoiser(), x.clone(), sigmas))  # no uncond: DDIM
    assert torch.equal(none_out, ddim_out)
    assert len(states) == n


def test_cfgpp_renoises_with_the_uncond_eps():
    sigmas = compute_sigmas("DDIM", 10, TABLE)
    x = x_start(float(sigmas[0]))[1]
    guider = Guided(shift_uncond=0.2, scale=1.5)
    gen = ts.sample_ddim_cfgpp(guider, x.clone(), sigmas, uncond=lambda: guider.last_uncond)
    state = next(gen)
    s, sn = float(sigmas[0]), float(sigmas[1])
    expected = state.denoised + sn * (x - guider.last_uncond) / s
    assert torch.allclose(state.x, expected, rtol=1e-6, atol=1e-6)
    plain = next(ts.sample_ddim(Guided(shift_uncond=0.2, scale=1.5), x.clone(), sigmas))
    assert not torch.allclose(state.x, plain.x)
    out, states = run(gen)
    assert torch.isfinite(out).all() and len(states) == 9


def test_cfgpp_eta_uses_noise():
    sigmas = compute_sigmas("DDIM", 5, TABLE)
    x = x_start(float(sigmas[0]))[1]
    calls = []

    def noise(s, sn):
        calls.append(float(s))
        return torch.ones(SHAPE)

    guider = Guided(shift_uncond=0.1)
    out, _ = run(ts.sample_ddim_cfgpp(guider, x, sigmas, uncond=lambda: guider.last_uncond, eta=1.0,
                                      noise=noise))
    assert len(calls) == 4 and torch.isfinite(out).all()


class TwoGaussianWorlds:
    """Unconditional data N(MU_U, S^2), conditional N(MU_C, S^2) per element; exact posterior means, so guidance
    ``lam`` gives the posterior mean of N(MU_U + lam (MU_C - MU_U), S^2). Remembers the uncond prediction."""

    S, MU_U, MU_C = 0.7, 0.5, -0.3

    def __init__(self, lam):
        self.lam, self.last_uncond = lam, None

    def posterior_mean(self, x, sigma, mu):
        s2 = sigma.view(-1, *[1] * (x.ndim - 1)).to(x.dtype) ** 2
        return (self.S**2 * x + s2 * mu) / (self.S**2 + s2)

    def __call__(self, x, sigma):
        self.last_uncond = self.posterior_mean(x, sigma, self.MU_U)
        return self.last_uncond + self.lam * (self.posterior_mean(x, sigma, self.MU_C) - self.last_uncond)


def _karras(n, sigma_min=0.002, sigma_max=14.6, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_cfgpp_guidance_moves_only_the_mean_and_the_rest_converges_like_ddim(lam):
    """CFG++ (Chung et al. 2024; A1111's ddim_cfgpp): ``x_next = x0_guided + sigma_next * eps_uncond``.

    In the two Gaussian worlds both denoisers shrink ``x - mean`` by the same ``S^2 / (S^2 + sigma^2)``, so:
    * the deviations from the mean follow DDIM's exactly: ``out - ddim_out`` is one constant for every element,
      and the std converges to the data's S at DDIM's first order as the steps double;
    * that constant, the mean shift ``u``, follows from the update written out for these worlds, from u = 0:
      ``u' = u (S^2 + sigma sigma') / (S^2 + sigma^2) + lam (MU_C - MU_U) sigma^2 / (S^2 + sigma^2)``.
      (Renoising along the *guided* eps instead would give ``u' = u (S^2 + sigma sigma') / (S^2 + sigma^2) +
      lam (MU_C - MU_U) sigma (sigma - sigma') / (S^2 + sigma^2)``.)
    """
    world = TwoGaussianWorlds(lam)
    S, mu_u, dm = world.S, world.MU_U, world.MU_C - world.MU_U
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 5000, generator=g, dtype=torch.float64)
    std_errors = []
    for n in (20, 40, 80):
        sigmas = _karras(n)
        x = mu_u + math.sqrt(S**2 + float(sigmas[0]) ** 2) * z
        out, states = run(ts.sample_ddim_cfgpp(world, x.clone(), sigmas, uncond=lambda: world.last_uncond))
        ddim, _ = run(ts.sample_ddim(lambda x, s: world.posterior_mean(x, s, mu_u), x.clone(), sigmas))
        assert len(states) == n
        shift = out - ddim
        assert float(shift.std()) < 1e-12
        u = 0.0
        for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            u = u * (S**2 + sigma * sigma_next) / (S**2 + sigma**2) + lam * dm * sigma**2 / (S**2 + sigma**2)
        assert float(shift.mean()) == pytest.approx(u, rel=1e-9, abs=1e-12)
        exact = (x - mu_u) * S / math.sqrt(S**2 + float(sigmas[0]) ** 2)  # the deviation's exact ODE flow to 0
        std_errors.append(float((out - out.mean() - exact).abs().max()))
    assert std_errors[0] > std_errors[1] > std_errors[2] and std_errors[1] / std_errors[2] > 1.5
    assert float(out.std()) == pytest.approx(S, abs=0.02)


# ------------------------------------------------------------------------------------------------ PLMS


def _diffusers_plms(n, x_vp):
    sch = PNDMScheduler(**SD, skip_prk_steps=True, set_alpha_to_one=True, steps_offset=1)
    sch.set_timesteps(n)
    outs = []
    for t in sch.timesteps:
        x_vp = sch.step(eps_model(x_vp, int(t)), t, x_vp).prev_sample
        outs.append(x_vp)
    return sch, outs


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 20])
def test_plms_matches_diffusers_pndm(n):
    sch, theirs = _diffusers_plms(n, x_start(0)[0])
    # diffusers repeats the second timestep: its extra call is PLMS's pseudo improved Euler first step
    timesteps = sch._timesteps[::-1].copy()
    assert len(sch.timesteps) == (n + 1 if n > 1 else 1)
    sigmas = torch.cat([TABLE[torch.from_numpy(timesteps)], torch.zeros(1)])
    assert torch.equal(sigmas, compute_sigmas("DDIM", n, TABLE))
    model = Denoiser()
    out, states = run(ts.sample_plms(model, x_start(float(sigmas[0]))[1], sigmas))
    assert model.calls == len(sch.timesteps)  # n + 1 (n = 1: the extra call would be at sigma 0: skipped)
    assert [st.calls for st in states] == [2 if n > 1 else 1] + [1] * (n - 1)
    # diffusers' first output is the Euler trial point; the rest are the steps
    for st, th in zip(states, theirs[-n:]):
        assert_vp_close(vp(st.x, st.sigma_next), th)
    assert_vp_close(out, theirs[-1])


def test_plms_adams_bashforth_coefficients():
    """On a model whose eps is exactly known per call, each step uses AB2/3/4 on the eps history."""
    sigmas = torch.tensor([10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 0.0])
    eps_by_sigma = {10.0: 1.0, 8.0: 2.0, 6.0: 4.0, 4.0: 7.0, 3.0: 11.0, 2.0: 16.0}

    def model(x, sigma):  # eps depends only on sigma: denoised = x - sigma * eps
        s = float(sigma[0])
        return x - s * eps_by_sigma[s]

    x = torch.zeros(1, 1)
    _, states = run(ts.sample_plms(model, x.clone(), sigmas))
    e = [eps_by_sigma[float(s)] for s in sigmas[:-1]]
    primes = [(e[0] + e[1]) / 2, (3 * e[1] - e[0]) / 2, (23 * e[2] - 16 * e[1] + 5 * e[0]) / 12,
              (55 * e[3] - 59 * e[2] + 37 * e[1] - 9 * e[0]) / 24,
              (55 * e[4] - 59 * e[3] + 37 * e[2] - 9 * e[1]) / 24,
              (55 * e[5] - 59 * e[4] + 37 * e[3] - 9 * e[2]) / 24]
    ref = 0.0
    for i, p in enumerate(primes):
        ref = ref + (float(sigmas[i + 1]) - float(sigmas[i])) * p
        assert states[i].x.item() == pytest.approx(ref, rel=1e-6)


# ----------------------------------------------------------------------------------------------- UniPC


def _diffusers_unipc(n, variant, order, lower_order_final, final):
    sch = UniPCMultistepScheduler(**SD, solver_type=variant, solver_order=order,
                                  lower_order_final=lower_order_final, timestep_spacing="leading",
                                  steps_offset=1, final_sigmas_type=final)
    sch.set_timesteps(n)
    x_vp = x_start(0)[0]
    outs = []
    for t in sch.timesteps:
        x_vp = sch.step(eps_model(x_vp, int(t)), t, x_vp).prev_sample
        outs.append(x_vp)
    return sch.sigmas.clone(), outs


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 15])
def test_unipc_matches_diffusers_final_sigma_min(variant, order, n):
    lower_order_final = True
    sigmas, theirs = _diffusers_unipc(n, variant, order, lower_order_final, "sigma_min")
    assert sigmas[-1] == TABLE[0]
    model = Denoiser()
    out, states = run(ts.sample_unipc(model, x_start(float(sigmas[0]))[1], sigmas, order=order,
                                      variant=variant, lower_order_final=lower_order_final))
    assert model.calls == n and len(states) == n
    for st, th in zip(states, theirs):
        assert_vp_close(vp(st.x, st.sigma_next), th)
    assert_vp_close(vp(out, float(sigmas[-1])), theirs[-1])


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_matches_diffusers_without_lower_order_final(variant, order):
    n = 8
    sigmas, theirs = _diffusers_unipc(n, variant, order, False, "sigma_min")
    out, states = run(ts.sample_unipc(Denoiser(), x_start(float(sigmas[0]))[1], sigmas, order=order,
                                      variant=variant, lower_order_final=False))
    for st, th in zip(states, theirs):
        assert_vp_close(vp(st.x, st.sigma_next), th)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("n", [2, 6, 20])
def test_unipc_matches_diffusers_final_zero(variant, order, n):
    sigmas, theirs = _diffusers_unipc(n, variant, order, True, "zero")
    assert sigmas[-1] == 0
    out, states = run(ts.sample_unipc(Denoiser(), x_start(float(sigmas[0]))[1], sigmas, order=order,
                                      variant=variant))
    for st, th in zip(states[:-1], theirs[:-1]):
        assert_vp_close(vp(st.x, st.sigma_next), th)
    # the step onto sigma 0 returns the denoised (diffusers: the same for bh2; NaN for bh1, h = inf)
    assert torch.equal(out, states[-1].denoised)
    if variant == "bh2":
        assert_vp_close(out, theirs[-1])
    else:
        assert torch.isnan(theirs[-1]).all()


def test_unipc_with_the_ddim_schedule_a1111_defaults():
    """Defaults (bh1, order 3, lower_order_final) on A1111's default schedule for it (DDIM), vs diffusers
    driven over the same sigmas (all but the last, NaN there for bh1)."""
    n = 20
    sigmas = compute_sigmas("DDIM", n, TABLE)
    sch = UniPCMultistepScheduler(**SD, solver_type="bh1", solver_order=3, timestep_spacing="leading",
                                  steps_offset=1)
    sch.set_timesteps(n)
    sch.sigmas = sigmas.clone()
    sch.timesteps = torch.tensor([t_of(float(s)) for s in sigmas[:-1]])
    x_vp = x_start(0)[0]
    theirs = []
    for t in sch.timesteps:
        x_vp = sch.step(eps_model(x_vp, int(t)), t, x_vp).prev_sample
        theirs.append(x_vp)
    out, states = run(ts.sample_unipc(Denoiser(), x_start(float(sigmas[0]))[1], sigmas))
    for st, th in zip(states[:-1], theirs[:-1]):
        assert_vp_close(vp(st.x, st.sigma_next), th)
    assert torch.equal(out, states[-1].denoised)


def _smooth_model(x, sigma):
    """A denoiser defined at every sigma: Gaussian-data posterior mean plus a smooth nonlinear term."""
    s = sigma.view(-1, 1, 1, 1).to(x.dtype)
    return (MU + S0**2 * x) / (S0**2 + s**2) - s * 0.3 * torch.sin(2 * x) / (1 + s)


def test_higher_order_samplers_converge_faster_than_ddim():
    from nbdiffuse.sampling.schedules import karras

    x = x_start(14.6)[1].double()
    ref, _ = run(ts.sample_unipc(_smooth_model, x.clone(), karras(1000, 0.03, 14.6).double()))
    sigmas = karras(40, 0.03, 14.6).double()
    err = {name: (run(f(x.clone()))[0] - ref).abs().max().item() for name, f in {
        "ddim": lambda x: ts.sample_ddim(_smooth_model, x, sigmas),
        "plms": lambda x: ts.sample_plms(_smooth_model, x, sigmas),
        "unipc": lambda x: ts.sample_unipc(_smooth_model, x, sigmas),
        "unipc_bh2": lambda x: ts.sample_unipc(_smooth_model, x, sigmas, variant="bh2"),
    }.items()}
    assert err["plms"] < err["ddim"] / 2
    assert err["unipc"] < err["ddim"] / 10 and err["unipc_bh2"] < err["ddim"] / 10, err


def test_unipc_bad_options():
    sigmas = compute_sigmas("DDIM", 4, TABLE)
    with pytest.raises(ValueError, match="variant"):
        next(ts.sample_unipc(Denoiser(), torch.zeros(SHAPE), sigmas, variant="bh3"))
    with pytest.raises(ValueError, match="order"):
        next(ts.sample_unipc(Denoiser(), torch.zeros(SHAPE), sigmas, order=0))


# ----------------------------------------------------------------------------------- shared contract

SAMPLERS = {
    "ddim": lambda m, x, s: ts.sample_ddim(m, x, s),
    "ddim_eta": lambda m, x, s: ts.sample_ddim(m, x, s, eta=1.0, noise=lambda a, b: torch.ones_like(x)),
    "ddim_cfgpp": lambda m, x, s: ts.sample_ddim_cfgpp(m, x, s, uncond=lambda: None),
    "plms": lambda m, x, s: ts.sample_plms(m, x, s),
    "unipc": lambda m, x, s: ts.sample_unipc(m, x, s),
    "unipc_bh2_o2": lambda m, x, s: ts.sample_unipc(m, x, s, variant="bh2", order=2),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("schedule", ["DDIM", "Karras", "Uniform"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_few_steps_finite_and_yield_contract(name, schedule, n):
    sigmas = compute_sigmas(schedule, n, TABLE)
    x = x_start(float(sigmas[0]))[1]
    model = _AnySigmaModel()
    out, states = run(SAMPLERS[name](model, x.clone(), sigmas))
    assert torch.isfinite(out).all() and out.shape == x.shape
    assert len(states) == n
    for i, st in enumerate(states):
        assert isinstance(st, StepState) and st.i == i and st.total == n
        assert isinstance(st.sigma, float) and st.sigma == float(sigmas[i])
        assert isinstance(st.sigma_next, float) and st.sigma_next == float(sigmas[i + 1])
        assert torch.isfinite(st.x).all() and torch.isfinite(st.denoised).all()
    assert sum(st.calls for st in states) == model.calls
    assert torch.equal(out, states[-1].x)


class _AnySigmaModel:
    """The Gaussian-data denoiser at any sigma (not only table entries)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        s = sigma.view(-1, 1, 1, 1)
        return (MU + S0**2 * x) / (S0**2 + s**2) + 0.0 * x - s * 0.01 * torch.sin(x) / (1 + s)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_send_replacement_continues_from_it(name):
    sigmas = compute_sigmas("DDIM", 6, TABLE)
    x = x_start(float(sigmas[0]))[1]
    seen = []

    class Spy(_AnySigmaModel):
        def __call__(self, x, sigma):
            seen.append(x.clone())
            return super().__call__(x, sigma)

    def replace(state):
        return torch.full_like(state.x, 0.25) if state.i == 2 else None

    out, states = run(SAMPLERS[name](Spy(), x.clone(), sigmas), replace=replace)
    # the model's first call after step 2 sees exactly the replacement
    calls_before = sum(st.calls for st in states[:3])
    assert torch.equal(seen[calls_before], torch.full_like(x, 0.25))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sending_back_the_same_latent_changes_nothing(name):
    sigmas = compute_sigmas("DDIM", 6, TABLE)
    x = x_start(float(sigmas[0]))[1]
    plain, _ = run(SAMPLERS[name](_AnySigmaModel(), x.clone(), sigmas))
    echoed, _ = run(SAMPLERS[name](_AnySigmaModel(), x.clone(), sigmas), replace=lambda st: st.x)
    assert torch.equal(plain, echoed)


# --------------------------------------------------------------------------------------- the jobs: A1111's way
# What the driver (run_pass) does around these samplers, against A1111's formulas computed here from
# alphas_cumprod (sd_samplers_timesteps.sample / sample_img2img); the whole chain against A1111's own code is in
# tests/test_timestep_samplers_a1111.py.


def _recording_spec(name):
    """SAMPLERS[name] with a sampler that records its input latent and sigmas and returns a known latent."""
    import dataclasses

    from nbdiffuse.sampling.registry import SAMPLERS

    seen = {}

    def sampler(model, x, sigmas, *, noise=None, **options):
        seen.update(x=x.clone(), sigmas=sigmas.clone())
        if False:  # a generator that takes no step
            yield
        return torch.full_like(x, 2.0)

    return dataclasses.replace(SAMPLERS[name], func=sampler, options={}), seen


@pytest.mark.parametrize("name", ["DDIM", "UniPC"])
@pytest.mark.parametrize("extra", [0.0, 0.3])
def test_driver_starts_from_a1111s_vp_latent_and_returns_the_last_latent_in_vp_scale(sd1, name, extra):
    from dataclasses import replace

    from nbdiffuse.jobs.driver import plan_pass, run_pass
    from nbdiffuse.jobs.img2img import img2img_noise_sigma, img2img_sigmas
    from nbdiffuse.jobs.params import GenerationParams
    from nbdiffuse.prompts.conditioning import TextEncoder
    from nbdiffuse.sampling.denoiser import Denoiser
    from nbdiffuse.sampling.noise import randn

    spec, seen = _recording_spec(name)
    p = GenerationParams(prompt="a", steps=8, width=64, height=64, sampler_name=name, denoising_strength=0.6,
                         extra_noise=extra)
    enc = TextEncoder(sd1)
    noise = torch.stack([randn(7, (4, 8, 8)), randn(8, (4, 8, 8))])
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ac = sd1.alphas_cumprod.double()
    ts = [1, 126, 251, 376, 501, 626, 751, 876]  # A1111's timesteps for 8 steps

    def outcome(sigmas, noise_sigma, init_latent):
        plan = replace(plan_pass(sd1, p, enc, "a", "", sigmas, extra_noise=extra), spec=spec, options={},
                       cfg_scale=7.0, noise_sigma=noise_sigma)
        return run(run_pass(plan, Denoiser(sd1.unet, sd1.alphas_cumprod), [7, 8], [3, 4], (4, 8, 8),
                            init=init_latent))[0].x

    # txt2img: A1111 samples from x = noise (VP); our sampler gets noise * sqrt(1 + sigma0^2) = noise / sqrt(abar)
    sigmas = spec.grid(8, sd1.sigmas).sigmas
    out = outcome(sigmas, None, None)
    t0 = ts[-1] if name == "DDIM" else 999
    assert torch.allclose(seen["x"].double(), noise.double() / ac[t0].sqrt(), rtol=1e-5)
    last = float(sigmas[-1])
    assert torch.allclose(out, torch.full_like(out, 2.0) / math.sqrt(1 + last**2), rtol=1e-6)
    # img2img: xi = init sqrt(abar_T) + noise sqrt(1 - abar_T) + noise * extra * sqrt(abar_T), T = ts[t_enc] (501),
    # while sampling starts one grid point lower (DDIM: timestep 376; UniPC: t = 0.377, i.e. timestep 376)
    sigmas = img2img_sigmas("Automatic", 8, 0.6, sd1, spec)
    noise_sigma = img2img_noise_sigma(8, 0.6, sd1, spec)
    assert noise_sigma == pytest.approx(float(sd1.sigmas[501]))
    outcome(sigmas, noise_sigma, init)
    a = ac[501]
    xi = init.double() * a.sqrt() + noise.double() * (1 - a).sqrt() + noise.double() * extra * a.sqrt()
    a_start = 1 / (1 + float(sigmas[0]) ** 2)
    assert a_start == pytest.approx(float(ac[376]), rel=1e-6)
    assert torch.allclose(seen["x"].double(), xi / math.sqrt(a_start), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["DDIM", "DDIM CFG++", "PLMS", "UniPC"])
def test_timestep_samplers_ignore_the_schedule_type(sd1, name):
    from nbdiffuse.jobs.params import GenerationParams
    from nbdiffuse.jobs.txt2img import txt2img_steps
    from nbdiffuse.prompts.conditioning import TextEncoder

    enc = TextEncoder(sd1)
    out = {}
    for scheduler in ("Automatic", "Karras", "Uniform"):
        p = GenerationParams(prompt="a", steps=4, width=64, height=64, seed=3, sampler_name=name,
                             scheduler=scheduler)
        out[scheduler] = run(txt2img_steps(sd1, p, enc))[0].latents
    assert torch.equal(out["Automatic"], out["Karras"]) and torch.equal(out["Automatic"], out["Uniform"])


def test_img2img_at_denoising_zero_decodes_the_lightly_noised_init_like_a1111(sd1):
    """t_enc 0: A1111 runs no DDIM step and returns the init noised to timestep 1; t_enc 1 likewise (noised to the
    second timestep). UniPC, where A1111 fails (IndexError / order assertion), runs what it can."""
    from nbdiffuse.jobs.img2img import img2img_grid
    from nbdiffuse.sampling.registry import SAMPLERS

    for name in ("DDIM", "PLMS", "UniPC"):
        spec = SAMPLERS[name]
        g0 = img2img_grid(8, 0.0, sd1, spec)
        assert len(g0.sigmas) == 1 and g0.noise_sigma == pytest.approx(float(sd1.sigmas[1]))
    g1 = img2img_grid(8, 0.125, sd1, SAMPLERS["DDIM"])  # t_enc 1
    assert len(g1.sigmas) == 1 and g1.noise_sigma == pytest.approx(float(sd1.sigmas[126]))
    assert len(img2img_grid(8, 0.25, sd1, SAMPLERS["UniPC"]).sigmas) == 3  # t_enc 2: two steps (A1111 refuses)


# ------------------------------------------------------------------------------------------------ toy model


@pytest.fixture(scope="module")
def toy_session():
    from nbdiffuse import Session

    s = Session(outputs_dir=None, progress=False)
    s.load("toy")
    return s


TOY = dict(prompt="a red circle on a blue background", negative_prompt="blurry", seed=1234, cfg_scale=7,
           width=64, height=64)


@pytest.mark.parametrize("sampler", ["UniPC", "DDIM", "DDIM CFG++"])
@pytest.mark.parametrize("steps", [10, 20])
def test_toy_model_draws_a_clean_red_circle(toy_session, sampler, steps):
    from nbdiffuse.toy.checker import check

    found = check(toy_session.txt2img(**TOY, sampler_name=sampler, steps=steps).images[0])
    assert (found["colour"], found["shape"], found["count"], found["background"]) == \
        ("red", "circle", 1, ["blue"]), found


def test_plms_needs_about_fifty_steps_on_the_toy_model(toy_session):
    """The model card's claim (as A1111's PLMS behaves): no red circle at 20 steps, a clean one at 50."""
    from nbdiffuse.toy.checker import check

    at_20 = check(toy_session.txt2img(**TOY, sampler_name="PLMS", steps=20).images[0])
    at_50 = check(toy_session.txt2img(**TOY, sampler_name="PLMS", steps=50).images[0])
    assert (at_20["colour"], at_20["shape"]) != ("red", "circle")
    assert (at_50["colour"], at_50["shape"], at_50["count"]) == ("red", "circle", 1)
