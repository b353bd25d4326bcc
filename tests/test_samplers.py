"""Samplers: bit-for-bit against vendored k-diffusion 0.1.1, and properties on an exactly solvable model.

The Gaussian model has data N(MU, S^2) per element, so its denoiser is exact and its probability-flow ODE has
the closed form x(sigma) = MU + (x_T - MU) * sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_T^2).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import drive

from nbdiffuse.sampling import samplers as S
from nbdiffuse.sampling.base import append_dims

_REF_PATH = Path(__file__).parent / "reference" / "k_diffusion_sampling.py"
_spec = importlib.util.spec_from_file_location("k_diffusion_sampling_ref", _REF_PATH)
kd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kd)

MU, S_DATA, SIGMA_MAX = 0.5, 0.7, 14.6
ALL_SAMPLERS = sorted(S.__all__)
DETERMINISTIC = {
    "sample_euler",
    "sample_heun",
    "sample_lms",
    "sample_dpm_2",
    "sample_dpmpp_2m",
    "sample_dpm_fast",
    "sample_dpm_adaptive",
}


class Gaussian:
    """Exact denoiser for data N(MU, S_DATA^2) per element; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        sigma = append_dims(sigma, x.ndim)
        return (S_DATA**2 * x + sigma**2 * MU) / (S_DATA**2 + sigma**2)


def flow(x, sigma_from, sigma_to):
    """The Gaussian model's exact probability-flow ODE solution from sigma_from to sigma_to."""
    return MU + (x - MU) * math.sqrt(S_DATA**2 + sigma_to**2) / math.sqrt(S_DATA**2 + sigma_from**2)


class ConvNet:
    """A small fixed random conv net as an eps-predicting denoiser: non-linear, mixes neighbours."""

    def __init__(self):
        g = torch.Generator().manual_seed(1234)
        self.w1 = torch.randn(8, 3, 3, 3, generator=g) * 0.3
        self.w2 = torch.randn(3, 8, 3, 3, generator=g) * 0.3
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        sigma = append_dims(sigma, x.ndim)
        h = torch.tanh(F.conv2d(x / (sigma**2 + 1) ** 0.5, self.w1, padding=1))
        return x - sigma * torch.tanh(F.conv2d(h, self.w2, padding=1))


class SeededNoise:
    """Noise from one seeded sequence, consumed in call order; records each (sigma, sigma_next, tensor)."""

    def __init__(self, shape, seed=0):
        self.shape, self.gen, self.asked = shape, torch.Generator().manual_seed(seed), []

    def __call__(self, sigma, sigma_next):
        z = torch.randn(self.shape, generator=self.gen)
        self.asked.append((float(sigma), float(sigma_next), z))
        return z


class KeyedNoise:
    """Noise that depends only on the (sigma, sigma_next) asked for, not on how many calls came before."""

    def __init__(self, shape, seed=0):
        self.shape, self.seed = shape, seed

    def __call__(self, sigma, sigma_next):
        key = hash((round(float(sigma), 4), round(float(sigma_next), 4), self.seed)) % 2**62
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(key))


def karras(n, sigma_min=0.0292, sigma_max=SIGMA_MAX):
    return kd.get_sigmas_karras(n, sigma_min, sigma_max)


def start_latent(shape, seed=0):
    """x_T drawn from the Gaussian model's exact marginal at SIGMA_MAX."""
    g = torch.Generator().manual_seed(seed)
    return MU + math.sqrt(S_DATA**2 + SIGMA_MAX**2) * torch.randn(shape, generator=g)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --- against k-diffusion 0.1.1 -----------------------------------------------------------------------------

# (ours, options, k-diffusion function, stochastic)
ORACLE_CASES = {
    "euler": ("sample_euler", {}, kd.sample_euler, False),
    "euler_ancestral": ("sample_euler_ancestral", {}, kd.sample_euler_ancestral, True),
    "euler_ancestral_eta_half": (
        "sample_euler_ancestral",
        {"eta": 0.5, "s_noise": 0.9},
        kd.sample_euler_ancestral,
        True,
    ),
    "heun": ("sample_heun", {}, kd.sample_heun, False),
    "dpm_2": ("sample_dpm_2", {}, kd.sample_dpm_2, False),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, kd.sample_dpm_2_ancestral, True),
    "lms": ("sample_lms", {}, kd.sample_lms, False),
    "lms_order_3": ("sample_lms", {"order": 3}, kd.sample_lms, False),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, kd.sample_dpmpp_2s_ancestral, True),
    "dpmpp_sde": ("sample_dpmpp_sde", {}, kd.sample_dpmpp_sde, True),
    "dpmpp_sde_r_third": ("sample_dpmpp_sde", {"eta": 0.7, "r": 1 / 3}, kd.sample_dpmpp_sde, True),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, kd.sample_dpmpp_2m, False),
    "dpmpp_2m_sde_midpoint": ("sample_dpmpp_2m_sde", {}, kd.sample_dpmpp_2m_sde, True),
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}, kd.sample_dpmpp_2m_sde, True),
    "dpmpp_2m_sde_eta0": ("sample_dpmpp_2m_sde", {"eta": 0.0}, kd.sample_dpmpp_2m_sde, False),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, kd.sample_dpmpp_3m_sde, True),
    "dpmpp_3m_sde_s_noise": (
        "sample_dpmpp_3m_sde",
        {"s_noise": 0.8, "eta": 0.6},
        kd.sample_dpmpp_3m_sde,
        True,
    ),
}
MODELS = {"gaussian": Gaussian, "convnet": ConvNet}
SHAPE = (2, 3, 4, 4)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("case", ORACLE_CASES)
def test_matches_k_diffusion_with_identical_noise(case, model_name):
    ours_name, options, kd_fn, stochastic = ORACLE_CASES[case]
    sigmas = karras(8)
    x = start_latent(SHAPE)
    our_noise, kd_noise = SeededNoise(SHAPE), SeededNoise(SHAPE)
    kd_seen = []
    kd_kwargs = {"noise_sampler": kd_noise} if "noise_sampler" in inspect.signature(kd_fn).parameters else {}
    expected = kd_fn(
        MODELS[model_name](), x.clone(), sigmas, callback=kd_seen.append, disable=True, **options, **kd_kwargs
    )
    ours = getattr(S, ours_name)(MODELS[model_name](), x.clone(), sigmas, noise=our_noise, **options)
    out, states = drive(ours)

    close(out, expected)
    assert len(states) == len(kd_seen) == len(sigmas) - 1
    for state, seen in zip(states, kd_seen):
        close(state.denoised, seen["denoised"])
        assert state.sigma == float(seen["sigma"])
    # k-diffusion reports x before each step, we report it after: shift by one.
    for state, seen in zip(states, kd_seen[1:]):
        close(state.x, seen["x"])
    close(states[-1].x, out)
    # Same noise requests, in the same order, with the same sigma arguments.
    assert [v for a in our_noise.asked for v in a[:2]] == pytest.approx([v for a in kd_noise.asked for v in a[:2]],
                                                                        rel=1e-6)
    assert bool(our_noise.asked) == stochastic


@pytest.mark.parametrize("fn", ["euler", "heun", "dpm_2"])
@pytest.mark.parametrize("s_tmin, s_tmax", [(0.0, float("inf")), (0.5, 5.0)])
def test_churn_matches_k_diffusion(fn, s_tmin, s_tmax, monkeypatch):
    """k-diffusion draws churn noise from torch.randn_like each step: feed it the same per-step tensors."""
    sigmas = karras(8)
    x = start_latent(SHAPE)
    per_step = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + i)) for i in range(8)]
    drawn = iter(per_step)
    monkeypatch.setattr(torch, "randn_like", lambda _x: next(drawn))
    options = {"s_churn": 2.0, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": 1.003}
    kd_seen = []
    kd_fn = getattr(kd, f"sample_{fn}")
    expected = kd_fn(ConvNet(), x.clone(), sigmas, callback=kd_seen.append, disable=True, **options)
    monkeypatch.undo()

    def noise(sigma, sigma_next):
        return per_step[int(torch.argmin((sigmas - sigma).abs()))]

    out, states = drive(getattr(S, f"sample_{fn}")(ConvNet(), x.clone(), sigmas, noise=noise, **options))
    close(out, expected)
    for state, seen in zip(states, kd_seen):
        close(state.denoised, seen["denoised"])


@pytest.mark.parametrize("eta", [0.0, 0.8])
@pytest.mark.parametrize("n", [4, 5, 6, 10])
def test_dpm_fast_matches_k_diffusion(n, eta):
    sigmas = karras(n)
    x = start_latent(SHAPE)
    our_noise, kd_noise = SeededNoise(SHAPE), SeededNoise(SHAPE)
    kd_seen = []
    expected = kd.sample_dpm_fast(
        ConvNet(),
        x.clone(),
        float(sigmas[-2]),
        float(sigmas[0]),
        n,
        callback=kd_seen.append,
        disable=True,
        eta=eta,
        noise_sampler=kd_noise,
    )
    model = ConvNet()
    out, states = drive(S.sample_dpm_fast(model, x.clone(), sigmas, noise=our_noise, eta=eta))

    close(out, expected)
    assert model.calls == n == sum(s.calls for s in states)
    assert len(states) == len(kd_seen)
    for state, seen in zip(states, kd_seen):
        close(state.denoised, seen["denoised"])
    for state, seen in zip(states, kd_seen[1:]):
        close(state.x, seen["x"])
    if eta:
        assert [v for a in our_noise.asked for v in a[:2]] == pytest.approx([v for a in kd_noise.asked for v in a[:2]],
                                                                        rel=1e-6)
    else:
        assert not our_noise.asked


@pytest.mark.parametrize("options", [{}, {"order": 2}, {"eta": 0.5}, {"rtol": 0.01, "atol": 0.001}])
def test_dpm_adaptive_matches_k_diffusion(options):
    sigmas = karras(10)
    x = start_latent(SHAPE)
    our_noise, kd_noise = SeededNoise(SHAPE), SeededNoise(SHAPE)
    kd_seen = []
    expected, info = kd.sample_dpm_adaptive(
        ConvNet(),
        x.clone(),
        float(sigmas[-2]),
        float(sigmas[0]),
        callback=kd_seen.append,
        disable=True,
        noise_sampler=kd_noise,
        return_info=True,
        **options,
    )
    model = ConvNet()
    out, states = drive(S.sample_dpm_adaptive(model, x.clone(), sigmas, noise=our_noise, **options))

    close(out, expected)
    accepted = [
        seen
        for seen, before in zip(kd_seen, [0] + [s["n_accept"] for s in kd_seen])
        if seen["n_accept"] > before
    ]
    assert len(states) == len(accepted) == info["n_accept"]
    for state, seen in zip(states, accepted):
        close(state.denoised, seen["denoised"])
        close(state.x, seen["x"])
    assert [s.i for s in states] == list(range(len(states)))
    assert states[-1].total == len(states)
    # Ours computes the eps at a step's start once, not once per rejected try.
    order = options.get("order", 3)
    assert model.calls == sum(s.calls for s in states) == info["nfe"] - info["n_reject"]
    assert info["nfe"] == order * info["steps"]
    if options.get("eta"):
        assert len(our_noise.asked) == len(kd_noise.asked) == len(states)


@pytest.mark.parametrize("fn", ["sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"])
def test_sde_first_step_to_zero_does_not_crash_like_k_diffusion(fn):
    sigmas = torch.tensor([SIGMA_MAX, 0.0])
    x = start_latent(SHAPE)
    with pytest.raises(UnboundLocalError):  # the A1111 bug we must not copy
        getattr(kd, fn)(Gaussian(), x.clone(), sigmas, disable=True, noise_sampler=SeededNoise(SHAPE))
    out, states = drive(getattr(S, fn)(Gaussian(), x.clone(), sigmas, noise=SeededNoise(SHAPE)))
    close(out, Gaussian()(x, sigmas[:1].expand(2)))  # a single step to 0 is the model's prediction
    assert len(states) == 1


@pytest.mark.parametrize("fn", ["sample_dpm_fast", "sample_dpm_adaptive"])
def test_dpm_solver_with_a_single_sigma_denoises_in_one_step(fn):
    """k-diffusion would run from sigma_max to sigma_min = sigma_max, i.e. return the input unchanged."""
    sigmas, x = torch.tensor([2.0, 0.0]), start_latent(SHAPE)
    out, states = drive(getattr(S, fn)(Gaussian(), x, sigmas))
    close(out, Gaussian()(x, sigmas[:1].expand(2)))
    assert [(s.sigma, s.sigma_next, s.calls) for s in states] == [(2.0, 0.0, 1)]


def test_dpm_adaptive_always_finishes():
    """A model that makes every error estimate NaN is never accepted: the step cap still ends the run."""
    model = Gaussian()
    nan_model = lambda x, sigma: model(x, sigma) * float("nan")  # noqa: E731
    sigmas = karras(10)
    out, states = drive(S.sample_dpm_adaptive(nan_model, start_latent(SHAPE), sigmas, max_tries=5))
    assert len(states) == 1 and states[0].total == 1
    assert states[0].sigma_next == pytest.approx(float(sigmas[-2]))
    assert model.calls == states[0].calls == 1 + 5 * 2  # eps once, then two calls per try


def test_lms_coefficients_match_numerical_integration():
    t = [14.6, 9.0, 5.5, 3.1, 1.7, 0.9, 0.0]
    for i in range(len(t) - 1):
        for order in range(1, min(i + 1, 4) + 1):
            for j in range(order):
                expected = kd.linear_multistep_coeff(order, t, i, j)
                assert S._lms_coeff(order, t, i, j) == pytest.approx(expected, rel=1e-9, abs=1e-12)


# --- properties on the Gaussian model ----------------------------------------------------------------------


def ode_error(name, n, **options):
    """Max error against the exact ODE solution, over a Karras schedule of n steps down to sigma 0.002."""
    sigmas = karras(n, sigma_min=0.002)
    x = start_latent((4, 256))
    out, _ = drive(getattr(S, name)(Gaussian(), x.clone(), sigmas, **options))
    sigma_end = float(sigmas[-2]) if name in {"sample_dpm_fast", "sample_dpm_adaptive"} else 0.0
    return float((out - flow(x, SIGMA_MAX, sigma_end)).abs().max())


@pytest.mark.parametrize(
    "name, rate, steps, max_error",
    [
        ("sample_euler", 2, (10, 20, 40), 0.2),
        ("sample_heun", 4, (10, 20, 40), 0.02),
        ("sample_dpm_2", 4, (10, 20, 40), 0.02),
        ("sample_dpmpp_2m", 4, (10, 20, 40), 0.02),
        ("sample_lms", 8, (10, 20, 40), 0.005),
        ("sample_restart", 4, (5, 9, 18), 0.1),  # below 20 steps Restart is plain Heun: ODE only
    ],
)
def test_deterministic_sampler_converges_to_exact_ode_solution(name, rate, steps, max_error):
    """Doubling the steps divides the error by about 2^order."""
    errors = [ode_error(name, n) for n in steps]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] > 0.75 * rate
    assert errors[2] < max_error


def test_second_order_samplers_beat_euler_at_equal_steps():
    euler = ode_error("sample_euler", 20)
    for name in ["sample_heun", "sample_dpm_2", "sample_dpmpp_2m", "sample_lms"]:
        assert ode_error(name, 20) < euler / 4, name


def test_dpm_fast_converges_to_exact_ode_solution():
    errors = [ode_error("sample_dpm_fast", n) for n in (9, 18, 36)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3


def test_dpm_adaptive_error_follows_its_tolerance():
    loose, tight = (ode_error("sample_dpm_adaptive", 10, rtol=tol, atol=tol) for tol in (1e-2, 1e-4))
    assert tight < loose / 10
    assert tight < 2e-3


def test_restart_converges_to_exact_solution_given_its_noise():
    """With restarts the exact answer is the ODE flow interrupted by the same re-noising: error vanishes."""
    errors = []
    for n in (20, 40, 80):
        sigmas = karras(n, sigma_min=0.002)
        x, noise = start_latent((4, 256)), SeededNoise((4, 256), seed=1)
        out, _ = drive(S.sample_restart(Gaussian(), x.clone(), sigmas, noise=noise))
        exact, current = x, SIGMA_MAX
        assert noise.asked, "no restart happened"
        for last, old, z in noise.asked:
            exact = flow(exact, current, last) + z * math.sqrt(old**2 - last**2)
            current = old
        errors.append(float((out - flow(exact, current, 0.0)).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


@pytest.mark.parametrize("n, restart_times", [(20, 1), (30, 1), (36, 2), (50, 2)])
def test_restart_inserts_restart_segments_from_20_steps(n, restart_times):
    model = Gaussian()
    noise = SeededNoise((2, 8))
    out, states = drive(S.sample_restart(model, start_latent((2, 8)), karras(n), noise=noise))
    assert len(states) == n and all(s.total == n for s in states)  # A1111's default list keeps the count
    assert model.calls == sum(s.calls for s in states) > n
    jumps_up = [b for a, b in zip(states, states[1:]) if b.sigma > a.sigma_next]
    assert len(jumps_up) == len(noise.asked) == restart_times
    for jump in jumps_up:
        assert jump.sigma == pytest.approx(2.0, abs=0.6)  # re-noised to the sigma nearest 2
    assert torch.isfinite(out).all()


def test_restart_below_20_steps_is_heun():
    sigmas, x = karras(19), start_latent((2, 8))
    close(drive(S.sample_restart(Gaussian(), x, sigmas))[0], drive(S.sample_heun(Gaussian(), x, sigmas))[0])


STOCHASTIC = [
    ("sample_euler_ancestral", {}),
    ("sample_dpm_2_ancestral", {}),
    ("sample_dpmpp_2s_ancestral", {}),
    ("sample_dpmpp_sde", {}),
    ("sample_dpmpp_2m_sde", {}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("sample_dpmpp_3m_sde", {}),
    ("sample_euler", {"s_churn": 1.0}),
    ("sample_heun", {"s_churn": 1.0}),
    ("sample_restart", {}),
    ("sample_dpm_fast", {"eta": 1.0}),
    ("sample_dpm_adaptive", {"eta": 1.0}),
]


@pytest.mark.parametrize("name, options", STOCHASTIC, ids=[f"{n}{o or ''}" for n, o in STOCHASTIC])
def test_stochastic_sampler_output_has_the_data_mean_and_std(name, options):
    """40000 independent samples; 120 steps keep the first-order SDE samplers' variance bias under 0.03.

    (LCM is left out: its re-noising assumes a consistency model, which samples, not a posterior mean; it has
    its own test with the Gaussian data's exact consistency function below.)
    """
    shape = (8, 5000)
    noise = SeededNoise(shape, seed=99)  # not start_latent's seed: its first draw would equal x_T's noise
    out, _ = drive(getattr(S, name)(Gaussian(), start_latent(shape), karras(120), noise=noise, **options))
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(S_DATA, abs=0.03)


def consistency(x, sigma):
    """The Gaussian data's exact consistency function: the probability-flow ODE solution from sigma to 0."""
    sigma = append_dims(sigma, x.ndim)
    return MU + (x - MU) * S_DATA / (S_DATA**2 + sigma**2) ** 0.5


@pytest.mark.parametrize("n", [1, 2, 4, 8, 30])
def test_lcm_with_an_exact_consistency_model_samples_the_data_mean_and_std(n):
    """A consistency function maps a sample of the noisy marginal at any sigma to a data sample, and LCM's
    re-noising to sigma_next makes a sample of the next marginal again: exact at every step count. Re-noising to
    the wrong sigma, or not at all, changes the std."""
    shape = (8, 5000)
    noise = SeededNoise(shape, seed=99)
    out, states = drive(S.sample_lcm(consistency, start_latent(shape), karras(n), noise=noise))
    assert len(noise.asked) == n - 1
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(S_DATA, abs=0.02)
    for state in states[:-1]:  # every intermediate latent is a sample of its marginal too
        assert float(state.x.std()) == pytest.approx((S_DATA**2 + state.sigma_next**2) ** 0.5, rel=0.03)


# --- the generator contract --------------------------------------------------------------------------------

FEW_STEPS = [[SIGMA_MAX, 0.0], [SIGMA_MAX, 3.0, 0.0], [SIGMA_MAX, 3.0, 0.5, 0.0], [2.0, 0.0]]


@pytest.mark.parametrize("sigmas", FEW_STEPS, ids=lambda s: f"{len(s) - 1}step-from{s[0]}")
@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_one_two_three_steps_give_finite_output(name, sigmas):
    sigmas = torch.tensor(sigmas)
    model = ConvNet()
    out, states = drive(getattr(S, name)(model, start_latent(SHAPE), sigmas, noise=SeededNoise(SHAPE)))
    assert torch.isfinite(out).all()
    assert out.shape == SHAPE
    n = len(sigmas) - 1
    if name == "sample_dpm_fast" and n > 1:
        assert len(states) == {2: 1, 3: 2}[n]  # one state per solver step of order 3, 3, ..., 2, 1
    elif name == "sample_dpm_adaptive" and n > 1:
        assert len(states) >= 1 and states[-1].total == len(states)
    else:
        assert len(states) == n
        assert [s.i for s in states] == list(range(n)) and all(s.total == n for s in states)
        assert [s.sigma for s in states] == pytest.approx(sigmas[:-1].tolist())
        assert [s.sigma_next for s in states] == pytest.approx(sigmas[1:].tolist())
    assert model.calls == sum(s.calls for s in states)
    assert all(s.x.shape == s.denoised.shape == SHAPE for s in states)
    close(states[-1].x, out, tol=0)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_samplers_never_use_the_global_rng(name):
    before = torch.random.get_rng_state()
    drive(getattr(S, name)(ConvNet(), start_latent(SHAPE), karras(25), noise=SeededNoise(SHAPE)))
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("name", sorted(DETERMINISTIC) + ["sample_restart"])
def test_deterministic_samplers_run_without_noise(name):
    out, _ = drive(getattr(S, name)(Gaussian(), start_latent(SHAPE), karras(10), noise=None))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, options", STOCHASTIC, ids=[f"{n}{o or ''}" for n, o in STOCHASTIC])
def test_stochastic_samplers_without_noise_say_what_to_pass(name, options):
    with pytest.raises(ValueError, match="noise="):
        drive(getattr(S, name)(Gaussian(), start_latent(SHAPE), karras(25), noise=None, **options))


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_latent_sent_at_the_last_step_is_returned(name):
    sigmas = karras(6)
    _, states = drive(getattr(S, name)(ConvNet(), start_latent(SHAPE), sigmas, noise=SeededNoise(SHAPE)))
    last = states[-1].i
    zeros = torch.zeros(SHAPE)
    out, _ = drive(
        getattr(S, name)(ConvNet(), start_latent(SHAPE), sigmas, noise=SeededNoise(SHAPE)),
        replace=lambda state: zeros if state.i == last else None,
    )
    assert torch.equal(out, zeros)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_latent_sent_mid_run_changes_the_rest_of_the_trajectory(name):
    sigmas = karras(6)
    plain, plain_states = drive(
        getattr(S, name)(ConvNet(), start_latent(SHAPE), sigmas, noise=SeededNoise(SHAPE))
    )
    mid = plain_states[len(plain_states) // 2 - 1].i
    sent = plain_states[mid].x * 0.5
    out, states = drive(
        getattr(S, name)(ConvNet(), start_latent(SHAPE), sigmas, noise=SeededNoise(SHAPE)),
        replace=lambda state: sent if state.i == mid else None,
    )
    for a, b in zip(plain_states[: mid + 1], states[: mid + 1]):  # up to the send, nothing changes
        assert torch.equal(a.x, b.x)
    assert not torch.allclose(states[mid + 1].denoised, plain_states[mid + 1].denoised)
    assert not torch.allclose(out, plain)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name",
    [
        "sample_euler",
        "sample_heun",
        "sample_dpm_2",
        "sample_euler_ancestral",
        "sample_dpm_2_ancestral",
        "sample_dpmpp_2s_ancestral",
        "sample_lcm",
    ],
)
def test_single_step_sampler_continues_from_the_sent_latent(name):
    """For samplers with no history, sending y after step k equals a fresh run from y over the rest."""
    sigmas, k = karras(8), 3
    noise = KeyedNoise(SHAPE)
    y = start_latent(SHAPE, seed=7) * float(sigmas[k + 1]) / SIGMA_MAX
    out, states = drive(getattr(S, name)(ConvNet(), start_latent(SHAPE), sigmas, noise=noise),
                        replace=lambda state: y if state.i == k else None)
    fresh, fresh_states = drive(getattr(S, name)(ConvNet(), y, sigmas[k + 1 :], noise=noise))
    close(out, fresh)
    close(states[k + 1].denoised, fresh_states[0].denoised)


def test_lcm_step_is_prediction_plus_next_sigma_noise():
    sigmas = torch.tensor([SIGMA_MAX, 3.0, 0.0])
    x, noise = start_latent(SHAPE), SeededNoise(SHAPE)
    out, states = drive(S.sample_lcm(Gaussian(), x, sigmas, noise=noise))
    first = Gaussian()(x, sigmas[:1].expand(2)) + 3.0 * noise.asked[0][2]
    close(states[0].x, first)
    close(out, Gaussian()(first, sigmas[1:2].expand(2)))
    assert [a[:2] for a in noise.asked] == [pytest.approx((SIGMA_MAX, 3.0))]
