"""Noise schedules: registry, name resolution, and each schedule's defining formula and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import k_diffusion_sampling as kref

from nbdiffuse.models.bundle import scaled_linear_alphas_cumprod
from nbdiffuse.sampling import schedules as S
from nbdiffuse.sampling.schedules import SCHEDULES, compute_sigmas, resolve_schedule, sigma_to_t, t_to_sigma

AC = scaled_linear_alphas_cumprod()
MS = ((1 - AC) / AC) ** 0.5  # the SD table, ascending, as ModelBundle.sigmas computes it
SMIN, SMAX = MS[0].item(), MS[-1].item()

A1111_ORDER = [
    ("Uniform", "uniform"), ("Karras", "karras"), ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"), ("SGM Uniform", "sgm_uniform"), ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"), ("Simple", "simple"), ("Normal", "normal"), ("DDIM", "ddim"),
    ("Beta", "beta"),
]
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def sig(name, n, **kw):
    return compute_sigmas(name, n, MS, **kw)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_order_names_and_flags():
    assert [(s.label, s.name) for s in SCHEDULES.values()] == A1111_ORDER
    assert list(SCHEDULES) == [label for label, _ in A1111_ORDER]
    assert "Automatic" not in SCHEDULES
    needs_model = {k for k, s in SCHEDULES.items() if s.needs_model}
    assert needs_model == {"Uniform", "SGM Uniform", "Simple", "Normal", "DDIM"}
    assert {k: s.default_rho for k, s in SCHEDULES.items() if s.default_rho is not None} == {
        "Karras": 7.0, "Polyexponential": 1.0}
    for label, spec in SCHEDULES.items():
        assert spec.label == label and callable(spec.func)


@pytest.mark.parametrize("label,name", A1111_ORDER)
def test_resolve_schedule_labels_and_api_names(label, name):
    assert resolve_schedule(label) == label
    assert resolve_schedule(name) == label
    assert resolve_schedule(label.upper()) == label
    assert resolve_schedule(f"  {name.upper()} ") == label


def test_resolve_schedule_alias():
    assert resolve_schedule("SGMUniform") == "SGM Uniform"


@pytest.mark.parametrize("bad,suggestion", [("karas", "Karras"), ("exponental", "Exponential"),
                                            ("align your step", "Align Your Steps")])
def test_resolve_schedule_unknown_suggests_and_lists(bad, suggestion):
    with pytest.raises(ValueError) as exc:
        resolve_schedule(bad)
    msg = str(exc.value)
    assert repr(bad) in msg and "Did you mean" in msg and suggestion in msg
    for label, name in A1111_ORDER:
        assert label in msg and name in msg


def test_resolve_schedule_unknown_without_close_match():
    with pytest.raises(ValueError, match="Available schedule types: Uniform, Karras") as exc:
        resolve_schedule("zzzz")
    assert "Did you mean" not in str(exc.value)
    with pytest.raises(ValueError):
        resolve_schedule("Automatic")  # the params layer resolves it, not this registry


def test_compute_sigmas_rejects_bad_steps():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            sig("karras", bad)


# ---------------------------------------------------------------------------------- common properties


def _ddim_steps(n, size=1000):
    """How many steps A1111's ddim_scheduler yields for n: entries 1, 1 + k, ... below size, k = size // n."""
    return len(range(1, size, max(size // n, 1)))


def _check_shape(s, n, label):
    assert s.dtype == torch.float32 and s.ndim == 1
    expected = _ddim_steps(n) if label == "DDIM" else n
    assert len(s) == expected + 1, (label, n, s)
    assert torch.isfinite(s).all()
    assert s[-1] == 0
    assert (s[:-1] > 0).all()
    assert (s[:-1] > s[1:]).all(), (label, n, s)  # strictly descending


@pytest.mark.parametrize("label", list(SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 10, 11, 20, 25, 40])
def test_every_schedule_shape_finite_descending(label, n):
    _check_shape(sig(label, n), n, label)


@pytest.mark.parametrize("label", list(SCHEDULES))
def test_every_schedule_sdxl_and_discard(label):
    for n in (1, 2, 3, 20):
        _check_shape(sig(label, n, arch="sdxl"), n, label)
        if label != "DDIM":
            _check_shape(sig(label, n, discard_penultimate=True), n, label)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 150), label=st.sampled_from(sorted(set(SCHEDULES) - {"DDIM"})))
def test_property_any_step_count(n, label):
    _check_shape(sig(label, n), n, label)


@pytest.mark.parametrize("label", ["Karras", "Exponential", "Polyexponential", "KL Optimal", "Beta", "Normal",
                                   "SGM Uniform"])
def test_sigma_max_is_first(label):
    for n in (1, 2, 7, 30):
        s = sig(label, n)
        assert s[0].item() == pytest.approx(SMAX, rel=1e-5)


@pytest.mark.parametrize("label", ["Karras", "Exponential", "Polyexponential", "Beta", "Normal"])
def test_sigma_min_is_last_nonzero(label):
    for n in (2, 7, 30):
        assert sig(label, n)[-2].item() == pytest.approx(SMIN, rel=1e-5)


@pytest.mark.parametrize("label", ["Karras", "Exponential", "Polyexponential", "Beta", "KL Optimal"])
def test_sigma_min_max_overrides(label):
    s = sig(label, 12, sigma_min=0.1, sigma_max=10.0)
    assert s[0].item() == pytest.approx(10.0, rel=1e-6)
    if label != "KL Optimal":
        assert s[-2].item() == pytest.approx(0.1, rel=1e-6)


def test_sigma_overrides_for_timestep_based_schedules():
    for label in ("SGM Uniform", "Normal"):
        s = sig(label, 12, sigma_min=0.1, sigma_max=10.0)
        assert s[0].item() == pytest.approx(10.0, rel=1e-5)
    assert sig("Normal", 12, sigma_min=0.1, sigma_max=10.0)[-2].item() == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("label", list(SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_discard_penultimate(label, n):
    full = sig(label, n + 1)
    got = sig(label, n, discard_penultimate=True)
    # (DDIM's walk can hold extra steps, see test_ddim_extra_steps_quirk_copied_from_a1111; same rule)
    assert torch.equal(got, torch.cat([full[:-2], full[-1:]]))
    if len(full) == n + 2:
        assert len(got) == n + 1


# ------------------------------------------------------------------------------------- sigma <-> t


def test_t_to_sigma_integer_t_reads_table():
    t = torch.arange(0, 1000, 37)
    assert torch.allclose(t_to_sigma(t, MS), MS[t], rtol=1e-6, atol=0)


def test_sigma_to_t_table_entries_are_integers():
    t = torch.arange(0, 1000)
    assert torch.allclose(sigma_to_t(MS, MS), t.float(), atol=2e-3)
    assert sigma_to_t(MS[0], MS).item() == 0
    assert sigma_to_t(MS[-1], MS).item() == 999
    assert torch.equal(sigma_to_t(MS[[5, 500, 998]], MS, quantize=True), torch.tensor([5, 500, 998]))


def test_sigma_to_t_log_linear_between_entries_and_clamped():
    t = torch.tensor([0.25, 10.5, 333.75, 998.9])
    s = t_to_sigma(t, MS)
    lo, hi = t.floor().long(), t.ceil().long()
    w = t - lo
    expected = torch.exp((1 - w) * MS[lo].log() + w * MS[hi].log())
    assert torch.allclose(s, expected, rtol=1e-6)
    assert torch.allclose(sigma_to_t(s, MS), t, atol=1e-3)
    assert sigma_to_t(torch.tensor(1e-4), MS).item() == 0  # below the table
    assert sigma_to_t(torch.tensor(1e3), MS).item() == 999  # above it
    assert sigma_to_t(torch.ones(2, 3), MS).shape == (2, 3)
    assert sigma_to_t(1.0, MS).shape == ()


# ------------------------------------------------------------------------- schedule-specific formulas


@pytest.mark.parametrize("n", [1, 2, 3, 10, 20, 33])
def test_karras_exponential_polyexponential_match_k_diffusion(n):
    assert torch.equal(sig("karras", n), kref.get_sigmas_karras(n, SMIN, SMAX))
    assert torch.equal(sig("karras", n, rho=3.5), kref.get_sigmas_karras(n, SMIN, SMAX, rho=3.5))
    assert torch.equal(sig("exponential", n), kref.get_sigmas_exponential(n, SMIN, SMAX))
    assert torch.equal(sig("polyexponential", n), kref.get_sigmas_polyexponential(n, SMIN, SMAX))
    assert torch.equal(sig("polyexponential", n, rho=2.0),
                       kref.get_sigmas_polyexponential(n, SMIN, SMAX, rho=2.0))


def test_karras_formula_at_known_points():
    n, rho = 11, 7.0
    s = sig("karras", n).double()
    for i in range(n):
        expected = (SMAX ** (1 / rho) + i / (n - 1) * (SMIN ** (1 / rho) - SMAX ** (1 / rho))) ** rho
        assert s[i].item() == pytest.approx(expected, rel=2e-6)
    # the midpoint is the mean of the endpoints in sigma^(1/rho)
    assert s[5].item() ** (1 / rho) == pytest.approx((SMAX ** (1 / rho) + SMIN ** (1 / rho)) / 2, rel=1e-6)


def test_exponential_even_in_log_sigma_and_polyexponential_rho_1_is_exponential():
    s = sig("exponential", 9).double()
    d = s[:-1].log().diff()
    assert torch.allclose(d, torch.full_like(d, (math.log(SMIN) - math.log(SMAX)) / 8), rtol=1e-5)
    assert torch.allclose(sig("polyexponential", 9), sig("exponential", 9), rtol=1e-6)
    p = sig("polyexponential", 9, rho=2.0).double()
    ramp = torch.linspace(1, 0, 9, dtype=torch.float64) ** 2
    expected = torch.exp(ramp * (math.log(SMAX) - math.log(SMIN)) + math.log(SMIN))
    assert torch.allclose(p[:-1], expected, rtol=1e-5)


def test_rho_ignored_by_schedules_without_it():
    assert torch.equal(sig("exponential", 10, rho=3.0), sig("exponential", 10))


@pytest.mark.parametrize("n", [1, 2, 4, 10, 28, 1000])
def test_uniform_is_discrete_schedule_get_sigmas(n):
    s = sig("uniform", n)
    t = torch.linspace(999, 0, n)
    assert torch.allclose(s[:-1], t_to_sigma(t, MS), rtol=0, atol=0)
    assert s[0].item() == pytest.approx(SMAX, rel=1e-6)
    if n > 1:
        assert s[-2].item() == pytest.approx(SMIN, rel=1e-6)
    if n == 4:  # t = 999, 666, 333, 0: table entries
        assert torch.allclose(s[:-1], MS[[999, 666, 333, 0]], rtol=1e-6)
    if n == 1000:
        assert torch.allclose(s[:-1], MS.flip(0), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 10, 25])
def test_sgm_uniform_timesteps_evenly_spaced_excluding_end(n):
    s = sig("sgm_uniform", n)
    t = sigma_to_t(s[:-1], MS)
    assert torch.allclose(t, torch.linspace(999, 0, n + 1)[:-1], atol=2e-3)
    assert s[0].item() == pytest.approx(SMAX, rel=1e-5)


@pytest.mark.parametrize("n", [2, 3, 10, 25])
def test_normal_timesteps_evenly_spaced_including_end(n):
    s = sig("normal", n)
    t = sigma_to_t(s[:-1], MS)
    assert torch.allclose(t, torch.linspace(999, 0, n), atol=2e-3)


def test_normal_single_step_is_sigma_max():
    assert torch.allclose(sig("normal", 1), torch.tensor([SMAX, 0.0]), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 40])
def test_kl_optimal_even_in_arctan_sigma_as_a1111(n):
    s = sig("kl_optimal", n).double()
    a_max, a_min = math.atan(SMAX), math.atan(SMIN)
    # A1111: tan(i/n * atan(min) + (1 - i/n) * atan(max)) for i = 0..n-1, then (our contract) 0 instead of min
    expected = [math.tan(i / n * a_min + (1 - i / n) * a_max) for i in range(n)]
    assert np.allclose(s[:-1].numpy(), expected, rtol=2e-5)
    if n > 1:
        spacing = torch.atan(s[:-1]).diff()
        assert torch.allclose(spacing, torch.full_like(spacing, (a_min - a_max) / n), rtol=1e-3)
    assert s[-1] == 0


def test_align_your_steps_published_values_at_11_steps():
    # A1111 uses the 11 published levels as they are only when n == 11 (then appends 0)
    assert torch.equal(sig("Align Your Steps", 11), torch.tensor(AYS_SD1 + [0.0]))
    assert torch.equal(sig("Align Your Steps", 11, arch="sdxl"), torch.tensor(AYS_SDXL + [0.0]))
    assert torch.equal(sig("Align Your Steps", 11, arch="sd2"), torch.tensor(AYS_SD1 + [0.0]))


def _loglinear(levels, m):
    """Independent log-linear interpolation of a decreasing list onto m evenly spaced points."""
    out = []
    k = len(levels) - 1
    for j in range(m):
        pos = j * k / (m - 1) if m > 1 else 0.0
        lo = min(int(math.floor(pos)), k - 1)
        w = pos - lo
        out.append(math.exp((1 - w) * math.log(levels[lo]) + w * math.log(levels[lo + 1])))
    return out


@pytest.mark.parametrize("n", [2, 3, 5, 10, 12, 20, 21, 50])
@pytest.mark.parametrize("arch,levels", [("sd1", AYS_SD1), ("sdxl", AYS_SDXL)])
def test_align_your_steps_loglinear_interpolation(n, arch, levels):
    s = sig("align_your_steps", n, arch=arch)
    assert np.allclose(s[:-1].double().numpy(), _loglinear(levels, n), rtol=1e-6)
    assert s[0].item() == pytest.approx(14.615, rel=1e-6) and s[-2].item() == pytest.approx(0.029, rel=1e-6)
    if n == 21:  # every other point is a published level
        assert np.allclose(s[:-1:2].numpy(), levels, rtol=1e-6)


def test_align_your_steps_ignores_sigma_overrides_and_one_step():
    assert torch.equal(sig("align_your_steps", 7, sigma_min=0.5, sigma_max=3.0), sig("align_your_steps", 7))
    # A1111 gives [0.029, 0] here (linspace(0, 1, 1) picks the last level); we start at the top instead
    assert torch.equal(sig("align_your_steps", 1), torch.tensor([14.615, 0.0]))
    assert torch.equal(sig("align_your_steps", 1, arch="sdxl"), torch.tensor([14.615, 0.0]))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 30, 64, 999, 1000])
def test_simple_picks_exact_table_entries(n):
    s = sig("simple", n)
    idx = [999 - int(x * (1000 / n)) for x in range(n)]
    assert torch.equal(s[:-1], MS[idx])
    assert s[0] == MS[-1]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 20, 25, 50, 100])
def test_ddim_picks_exact_table_entries(n):
    s = sig("ddim", n)
    ss = 1000 // n
    assert len(s) == n + 1  # n divides 1000 (or n <= 3): exactly n steps
    assert torch.equal(s[:-1], MS[[1 + ss * k for k in range(n)][::-1]])
    if n == 20:
        assert torch.equal(s[:-1], MS[torch.arange(951, 0, -50)])


def test_ddim_extra_steps_quirk_copied_from_a1111():
    # 1000 // 7 = 142: entries 1, 143, ..., 853, 995 -> 8 steps for 7 (A1111 ddim_scheduler does the same)
    s = sig("ddim", 7)
    assert len(s) == 9 and torch.equal(s[:-1], MS[[1 + 142 * k for k in range(8)][::-1]])
    assert len(sig("ddim", 30)) == 32
    assert len(sig("ddim", 2000)) == 1000  # max(len // n, 1) = 1: every entry from 1 up


# ------------------------------------------------------------------------------------------- Beta


@pytest.mark.parametrize("a,b", [(0.6, 0.6), (0.5, 0.7), (2.0, 3.0), (1.0, 1.0), (0.3, 5.0), (7.0, 0.8)])
def test_beta_ppf_matches_scipy(a, b):
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    qs = [0.0, 1e-12, 1e-6, 0.001, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.6, 0.75, 0.9, 0.99, 0.999999, 1.0]
    for q in qs:
        assert S.beta_ppf(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), abs=1e-6, rel=1e-9), q
    for x in [1e-9, 0.01, 0.2, 0.5, 0.77, 0.999]:
        assert S.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-12)


def test_beta_ppf_bad_arguments():
    with pytest.raises(ValueError):
        S.beta_ppf(1.5, 0.6, 0.6)
    with pytest.raises(ValueError):
        S.beta_ppf(0.5, 0.0, 0.6)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 20, 37])
def test_beta_schedule_is_a1111s(n):
    stats = pytest.importorskip("scipy.stats")
    s = sig("beta", n)
    qs = 1 - np.linspace(0, 1, n)
    expected = [SMIN + stats.beta.ppf(q, 0.6, 0.6) * (SMAX - SMIN) for q in qs] + [0.0]
    assert torch.equal(s, torch.tensor(expected, dtype=torch.float32))


def test_beta_options_alpha_beta():
    stats = pytest.importorskip("scipy.stats")
    s = S.beta(8, SMIN, SMAX, alpha=0.5, beta=0.7)
    qs = 1 - np.linspace(0, 1, 8)
    expected = [SMIN + stats.beta.ppf(q, 0.5, 0.7) * (SMAX - SMIN) for q in qs]
    assert np.allclose(s[:-1].numpy(), expected, rtol=1e-6)
