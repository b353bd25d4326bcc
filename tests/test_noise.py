import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from nbdiffuse.sampling.noise import BrownianNoise, ImageNoise, fix_seed, image_seeds, paste_centred, slerp
from nbdiffuse.sampling.schedules import compute_sigmas

_REF = Path(__file__).parent / "reference" / "k_diffusion_sampling.py"
_spec = importlib.util.spec_from_file_location("k_diffusion_sampling_ref", _REF)
kd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kd)

SHAPE = (4, 8, 6)


def draws(seed, n, shape=SHAPE):
    g = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_image_i_uses_seed_plus_i_and_variation_pins_seed():
    assert image_seeds(10, 50, 0.0, 3) == ([10, 11, 12], [50, 51, 52])
    assert image_seeds(10, 50, 0.3, 3) == ([10, 10, 10], [50, 51, 52])


def test_random_seed_for_minus_one():
    seeds = {fix_seed(-1) for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 4294967294 for s in seeds)
    assert fix_seed(123) == 123


def test_each_image_has_its_own_generator_and_later_draws_continue_it():
    rng = ImageNoise(SHAPE, [7, 8])
    first, second = rng.first(), rng.next()
    a, b = draws(7, 2), draws(8, 2)
    assert torch.equal(first[0], a[0]) and torch.equal(first[1], b[0])
    assert torch.equal(second[0], a[1]) and torch.equal(second[1], b[1])


def test_batch_noise_does_not_depend_on_batch_size():
    assert torch.equal(ImageNoise(SHAPE, [5, 6]).first()[1], ImageNoise(SHAPE, [6]).first()[0])


def test_slerp_endpoints_and_unit_norm_preservation():
    low, high = draws(1, 1)[0], draws(2, 1)[0]
    assert torch.allclose(slerp(0.0, low, high), low, atol=1e-5)
    assert torch.allclose(slerp(1.0, low, high), high, atol=1e-5)
    mid = slerp(0.5, low, high)
    assert not torch.allclose(mid, 0.5 * low + 0.5 * high, atol=1e-3)  # spherical, not linear


def test_slerp_nearly_parallel_uses_a1111_swapped_linear_mix():
    low = draws(1, 1)[0]
    high = low * 1.001
    out = slerp(0.2, low, high)
    assert torch.allclose(out, 0.2 * low + 0.8 * high)


def test_variation_strength_mixes_in_subseed_noise():
    plain = ImageNoise(SHAPE, [3]).first()
    varied = ImageNoise(SHAPE, [3], [99], 0.5).first()
    full = ImageNoise(SHAPE, [3], [99], 1.0).first()
    assert not torch.allclose(plain, varied)
    assert torch.allclose(full[0], draws(99, 1)[0], atol=1e-5)


def test_seed_resize_pastes_old_noise_centred_or_crops_it():
    big = ImageNoise((4, 8, 8), [4], seed_resize_from=(32, 32), downscale=8).first()[0]
    old = draws(4, 1, (4, 4, 4))[0]
    assert torch.equal(big[:, 2:6, 2:6], old)
    small = ImageNoise((4, 4, 4), [4], seed_resize_from=(64, 64), downscale=8).first()[0]
    assert torch.equal(small, draws(4, 1, (4, 8, 8))[0][:, 2:6, 2:6])


def test_paste_centred_handles_mixed_grow_and_shrink():
    noise = torch.arange(2 * 2 * 6, dtype=torch.float32).reshape(2, 2, 6)
    out = paste_centred(noise, (2, 4, 4), torch.zeros(2, 4, 4))
    assert torch.equal(out[:, 1:3, :], noise[:, :, 1:5])
    assert torch.equal(out[:, 0, :], torch.zeros(2, 4))


def test_brownian_noise_is_seeded_per_image_and_independent_of_query_order():
    a = BrownianNoise(SHAPE, [1, 2], 0.03, 14.6)
    b = BrownianNoise(SHAPE, [1, 2], 0.03, 14.6)
    n1 = a(torch.tensor(10.0), torch.tensor(5.0))
    b(torch.tensor(2.0), torch.tensor(1.0))
    assert torch.allclose(n1, b(torch.tensor(10.0), torch.tensor(5.0)), atol=1e-5)
    assert not torch.allclose(n1[0], n1[1])
    single = BrownianNoise(SHAPE, [2], 0.03, 14.6)(torch.tensor(10.0), torch.tensor(5.0))
    assert torch.allclose(single[0], n1[1], atol=1e-5)


def test_brownian_increments_are_standard_normal():
    noise = BrownianNoise((4, 64, 64), [0], 0.03, 14.6)(torch.tensor(3.0), torch.tensor(1.0))
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


# ------------------------------------------------------------------ Brownian trees: k-diffusion's, number for number

def _tree_queries(sigmas):
    """What the SDE samplers ask: every step (sigma_i, sigma_i+1 > 0) and DPM++ SDE's midpoints."""
    steps = [(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1) if sigmas[i + 1] > 0]
    return steps + [(a, (a * b).sqrt()) for a, b in steps]


@pytest.mark.parametrize("schedule, steps, tail", [("Karras", 10, None), ("Exponential", 7, None),
                                                   ("Uniform", 12, 5), ("Karras", 25, 9)])
@pytest.mark.parametrize("seeds", [[1], [7, 8, 9]])
def test_brownian_noise_equals_k_diffusion_brownian_tree_noise_sampler(sd1, schedule, steps, tail, seeds):
    """A1111: BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=<the batch's seeds>) over
    the whole schedule, also when only its tail runs (img2img, hires)."""
    sigmas = compute_sigmas(schedule, steps, sd1.sigmas)
    x = torch.zeros(len(seeds), 4, 6, 5)
    ref = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
    ours = BrownianNoise(x.shape[1:], seeds, sigmas[sigmas > 0].min(), sigmas.max())
    run = sigmas if tail is None else sigmas[-tail - 1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-diffusion's queries at the ends make torchsde warn
        want = [ref(a, b) for a, b in _tree_queries(run)]
    got = [ours(a, b) for a, b in _tree_queries(run)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_brownian_noise_is_quiet_where_k_diffusion_makes_torchsde_warn(sd1):
    sigmas = compute_sigmas("Karras", 10, sd1.sigmas)
    lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
    ref = kd.BrownianTreeNoiseSampler(torch.zeros(1, 4, 4, 4), lo, hi, seed=[3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = [ref(sigmas[0], sigmas[1]), ref(sigmas[-3], sigmas[-2])]
    assert any("Should have" in str(w.message) for w in caught)  # the situation does provoke torchsde
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = BrownianNoise((4, 4, 4), [3], lo, hi)
        got = [ours(sigmas[0], sigmas[1]), ours(sigmas[-3], sigmas[-2])]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
