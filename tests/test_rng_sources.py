"""A1111's RNG sources "GPU", "CPU" and "NV" (issue 14, part 6).

Oracles: Random123's published known answers for the Philox4x32-10 block function, and
``fixtures/a1111/rng_a1111.json``, the output of A1111's own ``rng_philox.py`` / ``rng.py`` ImageRNG and of
k-diffusion's Brownian tree with torchsde's normals replaced the way A1111 replaces them (see the README there).
Where a CUDA device is present, CUDA's ``torch.randn`` itself is the oracle for "NV" and "GPU".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nbdiffuse import infotext
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.txt2img import txt2img_steps
from nbdiffuse.jobs.xyz import plan_xyz
from nbdiffuse.prompts.conditioning import TextEncoder
from nbdiffuse.sampling.base import run_to_end as run
from nbdiffuse.sampling.noise import (
    GPU_EMULATED_NOTE,
    BrownianNoise,
    ImageNoise,
    PhiloxNormal,
    create_generator,
    philox4x32,
    resolve_randn_source,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "a1111" / "rng_a1111.json").read_text())


def kept(t: torch.Tensor, want: dict) -> torch.Tensor:
    """The values of ``t`` the fixture kept (every ``step``-th of the flattened tensor)."""
    assert list(t.shape) == want["shape"]
    return t.reshape(-1)[::want["step"]].float()


def assert_same(t: torch.Tensor, want: dict, atol: float = 0.0) -> None:
    got = kept(t, want)
    expected = torch.tensor(want["values"], dtype=torch.float32)
    assert (got - expected).abs().max().item() <= atol
    flat = t.reshape(-1).double()
    assert flat.sum().item() == pytest.approx(want["sum"], rel=1e-6, abs=1e-5)
    assert (flat**2).sum().item() == pytest.approx(want["sumsq"], rel=1e-6)


# ------------------------------------------------------------------------------------------ Philox, NV


@pytest.mark.parametrize("counter, key, out", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox4x32_10_gives_random123_known_answers(counter, key, out):
    got = philox4x32([np.array([c], dtype=np.uint64) for c in counter], key)
    assert tuple(int(w[0]) for w in got) == out


@pytest.mark.parametrize("case", FIXTURE["philox"], ids=lambda c: f"seed{c['seed']}")
def test_nv_generator_equals_a1111_rng_philox(case):
    g = PhiloxNormal(case["seed"])
    for want in case["draws"]:  # consecutive draws of one generator
        assert_same(g.randn(want["shape"]), want)


def test_nv_is_fast_enough_for_a_128x128_latent():
    import time

    t = time.perf_counter()
    PhiloxNormal(1).randn((4, 128, 128))
    assert time.perf_counter() - t < 1.0  # ~15 ms on one core


# ------------------------------------------------------------------------------------------ A1111's ImageRNG


@pytest.mark.parametrize("key", sorted(FIXTURE["image_rng"]))
def test_image_noise_equals_a1111_image_rng(key):
    """Initial noise, then the draws ancestral samplers take (A1111's ImageRNG.next()), per source: plain seeds,
    a variation seed with strength, and seed resize (noise made at 128x64 pasted into a 80x96 image)."""
    source, _ = key.split("/")
    case = FIXTURE["image_rng"][key]
    kw = case["kwargs"]
    rng = ImageNoise(kw["shape"], kw["seeds"], kw.get("subseeds"), kw.get("subseed_strength", 0.0),
                     (kw.get("seed_resize_from_w", 0), kw.get("seed_resize_from_h", 0)), source=source)
    for want in case["draws"]:
        assert_same(rng.next(), want, atol=1e-6 if "subseeds" in kw else 0.0)  # slerp: float rounding only


def test_gpu_source_without_cuda_is_the_nv_emulation():
    kw = dict(shape=(4, 6, 5), seeds=[3, 4], subseeds=[8, 9], subseed_strength=0.4)
    gpu = ImageNoise(**kw, source="GPU", device="cpu")
    nv = ImageNoise(**kw, source="NV")
    assert all(torch.equal(gpu.next(), nv.next()) for _ in range(3))
    assert not torch.equal(ImageNoise(**kw, source="CPU").next(), ImageNoise(**kw, source="NV").next())


@pytest.mark.parametrize("source", ["NV", "CPU"])
def test_brownian_trees_draw_their_normals_from_the_source_as_a1111(source):
    """A1111 replaces torchsde's _randn with its RNG source; the fixture is k-diffusion's tree under that patch."""
    case = FIXTURE["brownian"]
    sigmas = torch.tensor(case["sigmas"])
    noise = BrownianNoise(case["shape"][1:], case["seeds"], sigmas[sigmas > 0].min(), sigmas.max(), source=source)
    for (a, b), want in zip(case["queries"], case["draws"][source]):
        assert_same(noise(torch.tensor(a), torch.tensor(b)), want)


def test_brownian_nv_leaves_other_torchsde_users_alone():
    import torchsde

    before = torchsde.BrownianTree(0.0, torch.zeros(3), 1.0, entropy=5)(0.2, 0.7)
    BrownianNoise((3,), [5], 0.0, 1.0, source="NV")(torch.tensor(0.7), torch.tensor(0.2))
    after = torchsde.BrownianTree(0.0, torch.zeros(3), 1.0, entropy=5)(0.2, 0.7)
    assert torch.equal(before, after)


# ------------------------------------------------------------------------------------------ CUDA itself


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (NV == CUDA torch.randn)")
@pytest.mark.parametrize("shape", [(3, 4), (4, 64, 64), (4, 128, 128)])
def test_nv_equals_cuda_torch_randn(shape):
    props = torch.cuda.get_device_properties(0)
    one_pass = props.multi_processor_count * (props.max_threads_per_multi_processor // 256) * 256
    if int(np.prod(shape)) > one_pass:
        pytest.skip(f"{shape} needs more than one pass of this GPU's {one_pass} threads: CUDA maps it differently")
    for seed in (0, 1234, 4294967294):
        nv = PhiloxNormal(seed)
        cuda = torch.Generator("cuda").manual_seed(seed)
        for _ in range(3):  # the initial noise, then ancestral draws from the same generator
            want = torch.randn(shape, generator=cuda, device="cuda").cpu()
            diff = (nv.randn(shape) - want).abs().max().item()
            assert diff < 1e-5, f"seed {seed} {shape}: max |NV - CUDA| = {diff}"  # CUDA's fast sin/log: last bits
    gen = create_generator(7, "GPU", "cuda")
    assert gen.randn((2, 2)).device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU source == NV)")
def test_gpu_source_on_cuda_draws_what_nv_emulates():
    kw = dict(shape=(4, 16, 12), seeds=[10, 11], subseeds=[20, 21], subseed_strength=0.3)
    gpu, nv = ImageNoise(**kw, source="GPU", device="cuda"), ImageNoise(**kw, source="NV")
    for _ in range(3):
        a = gpu.next()
        assert a.device.type == "cuda"
        assert (a.cpu() - nv.next()).abs().max().item() < 1e-5
    tree_gpu = BrownianNoise((4, 8, 8), [5, 6], 0.03, 14.6, source="GPU", device="cuda")
    tree_nv = BrownianNoise((4, 8, 8), [5, 6], 0.03, 14.6, source="NV")
    a, b = tree_gpu(torch.tensor(14.6), torch.tensor(7.0)), tree_nv(torch.tensor(14.6), torch.tensor(7.0))
    assert (a - b).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------ parameters, jobs


def test_randn_source_names():
    assert GenerationParams().randn_source == "CPU"  # ours: device-independent seeds
    assert GenerationParams(randn_source="nv").randn_source == "NV"
    assert resolve_randn_source(" gpu ") == "GPU"
    with pytest.raises(ValueError, match="randn_source='TPU'.*GPU, CPU, NV"):
        GenerationParams(randn_source="TPU")


def test_infotext_rng_key_is_written_unless_gpu_and_read_back(sd1):
    encoder = TextEncoder(sd1)
    base = dict(prompt="a red circle", steps=2, width=64, height=64, seed=5, sampler_name="Euler a")
    texts, latents, notes = {}, {}, {}
    for source in ("CPU", "NV", "GPU"):
        r = run(txt2img_steps(sd1, GenerationParams.from_kwargs(**base, randn_source=source), encoder))
        texts[source], latents[source], notes[source] = r.infotexts[0], r.latents, r.warnings
    assert infotext.parse(texts["CPU"])["RNG"] == "CPU"
    assert infotext.parse(texts["NV"])["RNG"] == "NV"
    assert "RNG: " not in texts["GPU"]  # A1111 leaves its default out
    for source, text in texts.items():
        assert infotext.to_params(text)["randn_source"] == source
    assert torch.equal(latents["GPU"], latents["NV"])  # no CUDA here: GPU is the NV emulation ...
    assert GPU_EMULATED_NOTE in notes["GPU"] and GPU_EMULATED_NOTE not in notes["NV"]  # ... and says so
    assert not torch.allclose(latents["CPU"], latents["NV"])


def test_infotext_without_rng_means_gpu_and_bad_rng_names_the_key():
    assert infotext.to_params("p\nSteps: 20, Sampler: Euler a, CFG scale: 7")["randn_source"] == "GPU"
    assert infotext.to_params("p\nSteps: 20, Sampler: Euler a, CFG scale: 7, RNG: NV")["randn_source"] == "NV"
    with pytest.raises(ValueError, match="RNG"):
        infotext.to_params("p\nSteps: 20, Sampler: Euler a, CFG scale: 7, RNG: TPU")


def test_xyz_rng_source_axis():
    plan = plan_xyz(("RNG source", "GPU, cpu, NV"), prompt="a", steps=2, width=64, height=64, seed=1)
    assert [plan.cells[(i, 0, 0)]["randn_source"] for i in range(3)] == ["GPU", "CPU", "NV"]
    with pytest.raises(ValueError, match="RNG source"):
        plan_xyz(("RNG source", "GPU, TPU"), prompt="a", steps=2)
