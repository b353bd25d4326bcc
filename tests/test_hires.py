"""Hires fix: target size and crop, latent modes, the pass-2 schedule, seeds, prompts, infotexts, tiling."""

import numpy as np
import pytest
import torch

from nbdiffuse import infotext
from nbdiffuse.jobs import upscalers
from nbdiffuse.jobs.hires import crop_latents, hires_fix_steps, plan_hires
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.txt2img import txt2img_steps
from nbdiffuse.prompts.conditioning import TextEncoder
from nbdiffuse.sampling.base import run_to_end as run
from nbdiffuse.sampling.schedules import compute_sigmas

BASE = dict(prompt="a red circle", negative_prompt="blue", steps=4, width=64, height=64, seed=42,
            sampler_name="Euler")


class Jobs:
    """What the Session methods do, as plain calls (session.py is not wired to these jobs in this change)."""

    def __init__(self, bundle, outputs_dir=None):
        self.bundle, self.encoder, self.outputs_dir = bundle, TextEncoder(bundle), outputs_dir

    def txt2img(self, hooks=(), upscalers=None, **params):
        p = GenerationParams.from_kwargs(**params, known_upscalers=upscalers.files if upscalers else ())
        return run(txt2img_steps(self.bundle, p, self.encoder, hooks=hooks, outputs_dir=self.outputs_dir,
                                 upscalers=upscalers))

    def hires_fix(self, result, hooks=(), **changes):
        return run(hires_fix_steps(self.bundle, result, self.encoder, hooks=hooks, outputs_dir=self.outputs_dir,
                                   **changes))


@pytest.fixture
def jobs(sd1, tmp_path):
    return Jobs(sd1, tmp_path / "outputs")


# ------------------------------------------------------------------------------------------ size and crop

def test_512_to_1920x1080_renders_240x240_latents_cropped_centred_to_240x135():
    p = GenerationParams(width=512, height=512, enable_hr=True, hr_resize_x=1920, hr_resize_y=1080)
    assert p.hr_upscale_to == (1920, 1920) and p.hr_truncate == (0, 105) and p.hr_size == (1920, 1080)
    z = torch.arange(240 * 240, dtype=torch.float32).reshape(1, 1, 240, 240)
    cropped = crop_latents(z, *p.hr_truncate)
    assert cropped.shape[-2:] == (135, 240)
    assert torch.equal(cropped, z[:, :, 52:187, :])  # 105 rows off: 52 at the top, 53 at the bottom


@pytest.mark.parametrize("w, h, kw, to, size", [
    (512, 768, dict(hr_resize_x=1024), (1024, 1536), (1024, 1536)),
    (512, 768, dict(hr_resize_y=1024), (682, 1024), (680, 1024)),  # 1024*512//768 = 682 -> 85 latents
    (768, 512, dict(hr_resize_x=1000, hr_resize_y=1000), (1500, 1000), (1000, 1000)),  # cover, crop columns
    (512, 512, dict(hr_scale=1.5), (768, 768), (768, 768)),
    (520, 600, dict(hr_scale=1.3), (676, 780), (672, 776)),  # int(w*scale), latents floor to /8
])
def test_target_size_rules(w, h, kw, to, size):
    p = GenerationParams(width=w, height=h, enable_hr=True, **kw)
    assert p.hr_upscale_to == to and p.hr_size == size


def test_one_side_zero_keeps_the_aspect_ratio_and_writes_hires_resize(jobs):
    r = jobs.txt2img(**BASE, enable_hr=True, hr_resize_x=128, denoising_strength=0.5)
    assert r.images[0].size == (128, 128) and r.latents.shape[-2:] == (16, 16)
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Hires resize"] == "128x0" and "Hires upscale" not in parsed
    assert parsed["Size"] == "64x64"  # the first pass's size, as A1111 writes it


def test_crop_when_both_sides_given_runs_end_to_end(jobs):
    r = jobs.txt2img(**{**BASE, "width": 64, "height": 128}, enable_hr=True, hr_resize_x=128, hr_resize_y=128)
    assert r.images[0].size == (128, 128)


# ------------------------------------------------------------------------------------------ latent modes

@pytest.mark.parametrize("mode", list(upscalers.LATENT_UPSCALE_MODES))
def test_each_latent_mode_is_one_interpolate_call(mode):
    z = torch.randn(2, 4, 7, 9, generator=torch.Generator().manual_seed(0))
    interp, antialias = upscalers.LATENT_UPSCALE_MODES[mode]
    want = torch.nn.functional.interpolate(z, size=(15, 20), mode=interp, antialias=antialias)
    assert torch.equal(upscalers.upscale_latents(z, mode, (15, 20)), want)


def test_the_six_a1111_modes():
    assert upscalers.LATENT_UPSCALE_MODES == {
        "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}


def test_bislerp_is_bilinear_for_parallel_vectors_and_keeps_norms():
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(1, 4, 1, 1, generator=g)
    norms = torch.rand(1, 1, 5, 6, generator=g) + 0.5
    z = direction * norms
    got = upscalers.bislerp(z, (10, 12))
    want = torch.nn.functional.interpolate(z, size=(10, 12), mode="bilinear")
    assert torch.allclose(got, want, atol=1e-5)
    # general vectors: the output norm is the bilinear interpolation of the norms (a plain lerp shrinks it)
    z = torch.randn(1, 4, 5, 6, generator=g)
    got = upscalers.bislerp(z, (10, 12))
    lerp_of_norms = torch.nn.functional.interpolate(z.norm(dim=1, keepdim=True), size=(10, 12), mode="bilinear")
    assert torch.allclose(got.norm(dim=1, keepdim=True), lerp_of_norms, atol=1e-4)
    assert got.std() > torch.nn.functional.interpolate(z, size=(10, 12), mode="bilinear").std()


# ------------------------------------------------------------------------------------------ the second pass

def test_pass2_sigmas_are_the_tail_of_a_longer_schedule(jobs):
    seen = []

    def hook(state):
        seen.append((state.extra["pass"], state.sigma, state.sigma_next))

    r = jobs.txt2img(**BASE, enable_hr=True, denoising_strength=0.45, hr_second_pass_steps=4, hooks=[hook])
    hires = [(s, n) for pass_, s, n in seen if pass_ == "hires"]
    assert [pass_ for pass_, *_ in seen] == ["txt2img"] * 4 + ["hires"] * 4
    total = int(4 / 0.45)  # 8
    want = compute_sigmas("Uniform", total, jobs.bundle.sigmas)[total - 4:]
    got = torch.tensor([s for s, _ in hires] + [hires[-1][1]])
    assert torch.allclose(got, want, rtol=1e-6)
    assert r.timings["model_calls"] == 8
    parsed = infotext.parse(r.infotexts[0])
    assert (parsed["Denoising strength"], parsed["Hires steps"]) == ("0.45", "4")


def test_hires_steps_zero_means_first_pass_steps_and_denoise_one_runs_whole_schedule(jobs):
    seen = []
    jobs.txt2img(**BASE, enable_hr=True, denoising_strength=1.0,
                 hooks=[lambda s: seen.append(s.sigma) if s.extra["pass"] == "hires" else None])
    want = compute_sigmas("Uniform", int(4 / 0.999), jobs.bundle.sigmas)
    assert torch.allclose(torch.tensor(seen), want[:4], rtol=1e-6)


def test_hires_sampler_and_schedule_apply_to_pass_two_only(jobs):
    r = jobs.txt2img(**BASE, enable_hr=True, hr_sampler_name="DPM++ 2M", hr_scheduler="Exponential",
                     hr_second_pass_steps=3)
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Hires sampler"] == "DPM++ 2M" and parsed["Hires schedule type"] == "Exponential"
    params = infotext.to_params(r.infotexts[0])
    assert (params["hr_sampler_name"], params["hr_scheduler"]) == ("DPM++ 2M", "Exponential")


@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_fresh_noise_from_the_same_seeds_batch_and_single_agree(jobs, upscaler):
    batch = jobs.txt2img(**BASE, enable_hr=True, hr_upscaler=upscaler, batch_size=2)
    single = jobs.txt2img(**{**BASE, "seed": 43}, enable_hr=True, hr_upscaler=upscaler)
    assert batch.seeds == [42, 43]
    assert torch.equal(batch.latents[1], single.latents[0])
    assert np.array_equal(np.asarray(batch.images[1]), np.asarray(single.images[0]))


def test_hires_fix_on_an_earlier_result_equals_hires_in_one_go(jobs):
    first = jobs.txt2img(**BASE, batch_size=2)
    for upscaler in ("Latent (bicubic)", "Lanczos"):
        direct = jobs.txt2img(**BASE, batch_size=2, enable_hr=True, hr_upscaler=upscaler)
        later = jobs.hires_fix(first, hr_upscaler=upscaler)
        assert torch.equal(later.latents, direct.latents)
        assert later.infotexts == direct.infotexts and later.seeds == [42, 43]
    one = jobs.hires_fix(first, indices=[1], denoising_strength=0.5)
    assert one.seeds == [43] and "Denoising strength: 0.5" in one.infotexts[0]
    assert one.paths[0].parent.parent.name == "txt2img-images"


def test_hires_fix_refuses_a_hires_result_and_unknown_fields(jobs):
    r = jobs.txt2img(**BASE, enable_hr=True, hr_scale=1.5)
    with pytest.raises(ValueError, match="already went through hires fix"):
        jobs.hires_fix(r)
    first = jobs.txt2img(**BASE)
    with pytest.raises(TypeError, match="steps"):
        jobs.hires_fix(first, steps=3)


def test_extra_noise_changes_pass_two_and_is_in_the_infotext(jobs):
    a = jobs.txt2img(**BASE, enable_hr=True)
    b = jobs.txt2img(**BASE, enable_hr=True, extra_noise=0.3)
    assert not torch.equal(a.latents, b.latents)
    assert infotext.parse(b.infotexts[0])["Extra noise"] == "0.3"
    assert "Extra noise" not in infotext.parse(a.infotexts[0])


def test_infotext_reproduces_a_hires_image(jobs):
    r = jobs.txt2img(**BASE, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (nearest-exact)",
                     hr_second_pass_steps=3, denoising_strength=0.6, hr_prompt="a blue square")
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Hires upscale"] == "1.5" and parsed["Hires upscaler"] == "Latent (nearest-exact)"
    assert parsed["Hires prompt"] == "a blue square"
    again = jobs.txt2img(**infotext.to_params(r.infotexts[0]))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(r.images[0]))
    assert again.infotexts == r.infotexts


# ------------------------------------------------------------------------------------------ hires prompts

def test_hires_prompt_fractions_run_from_one_to_two(sd1):
    enc = TextEncoder(sd1)
    for prompt in ("[red:blue:1.5]", "[red:blue:6]"):  # first pass 4 steps: 6 is hires step 2
        p = GenerationParams(**BASE, enable_hr=True, hr_second_pass_steps=4, hr_prompt=prompt)
        plan = plan_hires(sd1, p, enc)
        ends = [end for end, _ in plan.pass_plan.conds[0][0]]
        assert ends == [2, 4]
    p = GenerationParams(**{**BASE, "prompt": "[red:blue:0.5]"}, enable_hr=True, hr_second_pass_steps=4)
    plan = plan_hires(sd1, p, enc)
    assert [end for end, _ in plan.pass_plan.conds[0][0]] == [4]  # 0.5 is over before the hires pass


def test_hires_prompt_switch_changes_only_the_second_pass(jobs):
    plain = jobs.txt2img(**BASE, enable_hr=True)
    switched = jobs.txt2img(**BASE, enable_hr=True, hr_prompt="[a red circle:a green star:1.5]")
    assert not torch.equal(plain.latents, switched.latents)
    firsts = []
    for hr_prompt in ("", "a green star"):
        states = []
        jobs.txt2img(**BASE, enable_hr=True, hr_prompt=hr_prompt,
                     hooks=[lambda s, out=states: out.append(s.x.clone()) if s.extra["pass"] == "txt2img" else None])
        firsts.append(states[-1])
    assert torch.equal(firsts[0], firsts[1])


# ------------------------------------------------------------------------------------------ pixel upscalers

@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
def test_pixel_upscalers_run(jobs, name):
    r = jobs.txt2img(**BASE, enable_hr=True, hr_upscaler=name, hr_second_pass_steps=1)
    assert r.images[0].size == (128, 128)
    assert infotext.parse(r.infotexts[0])["Hires upscaler"] == name


class Fake4x(torch.nn.Module):
    """An upscaler model: 4x nearest; records the input shapes it saw."""

    scale = 4

    def __init__(self, calls=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = calls if calls is not None else []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest") * self.w


@pytest.fixture
def fake_model_file(tmp_path, monkeypatch):
    """An upscaler model file ``4x_Fake.pth`` that loads as :class:`Fake4x` (the loader's calls are counted)."""
    path = tmp_path / "4x_Fake.pth"
    path.write_bytes(b"not a real model")
    loads, calls = [], []
    monkeypatch.setattr(upscalers, "load_model", lambda p: loads.append(p) or Fake4x(calls))
    return path, loads, calls


def test_model_upscaler_file_through_the_loader(jobs, fake_model_file):
    path, loads, calls = fake_model_file
    ups = upscalers.Upscalers()
    name = ups.register(path)
    assert name == "4x_Fake" and name in ups.names()
    r = jobs.txt2img(**BASE, enable_hr=True, hr_upscaler=name, hr_second_pass_steps=1, upscalers=ups)
    # one 4x pass, then Lanczos down; A1111's ESRGAN tiling (192 px) runs a 64x64 picture as one black-padded tile
    assert calls == [(1, 3, 192, 192)] and r.images[0].size == (128, 128)
    r2 = jobs.txt2img(**BASE, enable_hr=True, hr_upscaler=str(path), hr_second_pass_steps=1, upscalers=ups)
    assert r2.images[0].size == (128, 128)
    assert len(loads) == 1  # the name and the path are the same file: loaded once
    r3 = jobs.txt2img(**BASE, enable_hr=True, hr_upscaler=str(path), hr_second_pass_steps=1)
    assert r3.images[0].size == (128, 128)  # a path needs no registry


def test_two_sessions_do_not_see_each_others_upscalers(sd1, tmp_path, fake_model_file):
    from nbdiffuse import Session

    path, _, calls = fake_model_file
    (tmp_path / "webui" / "models" / "ESRGAN").mkdir(parents=True)
    (tmp_path / "webui" / "models" / "ESRGAN" / "4x_Folder.pth").write_bytes(b"not a real model")
    one = Session(outputs_dir=None, progress=False, models_dir=tmp_path / "webui")
    two = Session(outputs_dir=None, progress=False)
    for s in (one, two):
        s.load(sd1)
    assert one.upscalers.register(path) == "4x_Fake"
    hires = dict(BASE, enable_hr=True, hr_second_pass_steps=1)
    assert one.txt2img(**hires, hr_upscaler="4x_Fake").images[0].size == (128, 128)
    assert one.txt2img(**hires, hr_upscaler="4x_folder").params.hr_upscaler == "4x_Folder"  # the models folder's
    assert len(calls) == 2
    assert "4x_Fake" not in two.upscalers.names() and "4x_Fake" not in upscalers.available_upscalers()
    for name in ("4x_Fake", "4x_Folder"):
        with pytest.raises(ValueError, match=f"hr_upscaler: Unknown upscaler '{name}'.*Available upscalers: Latent"):
            two.txt2img(**hires, hr_upscaler=name)
        with pytest.raises(ValueError, match=f"Unknown upscaler '{name}'"):
            two.plan_xyz(("Hires upscaler", f"Lanczos, {name}"), **hires)
    grid = one.xyz(("Hires upscaler", "Lanczos, 4x_Fake"), show=False, **hires)
    assert grid.done == 2 and len(calls) == 3
    assert one.hires_fix(one.txt2img(**BASE), hr_upscaler="4x_Fake").images[0].size == (128, 128)
    assert len(calls) == 4
    assert two.txt2img(**hires, hr_upscaler=str(path)).images[0].size == (128, 128)  # a path works everywhere


def test_unload_frees_the_upscaler_model(session, fake_model_file):
    import gc
    import weakref

    path, loads, _ = fake_model_file
    name = session.upscalers.register(path)
    session.txt2img(**BASE, enable_hr=True, hr_upscaler=name, hr_second_pass_steps=1)
    session.txt2img(**BASE, enable_hr=True, hr_upscaler=name, hr_second_pass_steps=1)
    assert len(loads) == 1  # kept between jobs
    model = weakref.ref(session.upscalers.model(name))
    session.unload()
    gc.collect()
    assert model() is None
    assert session.upscalers.names()[-1] == name  # the registration stays; the model loads again when used


def test_missing_spandrel_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "x.pth"
    path.write_bytes(b"0")
    real_import = builtins.__import__

    def no_spandrel(name, *args, **kwargs):
        if name == "spandrel":
            raise ImportError("No module named 'spandrel'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spandrel)
    with pytest.raises(ImportError, match="pip install spandrel"):
        upscalers.load_model(path)


# ------------------------------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("kw, match", [
    (dict(denoising_strength=1.5), "denoising_strength=1.5 .* between 0 and 1"),
    (dict(denoising_strength=-0.1), "between 0 and 1"),
    (dict(hr_upscaler="Latent (bicubc)"), r"Did you mean 'Latent \(bicubic\)'.*Available upscalers: Latent, "),
    (dict(hr_upscaler="R-ESRGAN 4x+"), "Available upscalers"),
    (dict(hr_scale=200.0), "fits in"),
    (dict(hr_resize_x=20000, hr_resize_y=20000), "fits in"),
    (dict(hr_scale=0.5), "at least 64x64"),
    (dict(hr_sampler_name="Euler b"), "hr_sampler_name"),
    (dict(extra_noise=2), "extra_noise"),
])
def test_bad_hires_inputs_fail_before_work(jobs, kw, match):
    with pytest.raises(ValueError, match=match):
        jobs.txt2img(**BASE, enable_hr=True, **kw)


# ------------------------------------------------------------------------------------------ tiling

def _seams(image):
    a = np.asarray(image, dtype=np.float64)
    inner_x = np.abs(np.diff(a, axis=1)).mean()
    inner_y = np.abs(np.diff(a, axis=0)).mean()
    return np.abs(a[:, 0] - a[:, -1]).mean() / inner_x, np.abs(a[0] - a[-1]).mean() / inner_y


def test_tiling_wraps_left_right_and_top_bottom(jobs):
    convs = [m for m in jobs.bundle.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    plain = np.mean([_seams(jobs.txt2img(**{**BASE, "seed": s}).images[0]) for s in (1, 2, 3)], axis=0)
    tiled_runs = [jobs.txt2img(**{**BASE, "seed": s}, tiling=True) for s in (1, 2, 3)]
    tiled = np.mean([_seams(r.images[0]) for r in tiled_runs], axis=0)
    # across the wrap, pixels differ no more than ordinary neighbours do (the random tiny model's images are
    # noise-like, so the untiled seam is only somewhat worse; the exact check is the next test)
    assert (tiled < 1.1).all() and (tiled < plain).all()
    assert infotext.parse(tiled_runs[0].infotexts[0])["Tiling"] == "True"
    assert all(m.padding_mode == "zeros" for m in convs)  # restored after the job


def test_tiled_generation_lives_on_a_torus(jobs):
    """With circular padding, UNet and VAE commute with circular shifts: rolling the latent after step 1 rolls
    the final image by 8x as many pixels, exactly, which is only possible if the edges wrap seamlessly."""
    def roll(state):
        return torch.roll(state.x, (2, 4), (2, 3)) if state.i == 0 else None

    for tiling, exact in ((True, True), (False, False)):
        a = jobs.txt2img(**BASE, tiling=tiling)
        b = jobs.txt2img(**BASE, tiling=tiling, hooks=[roll])
        diff = np.abs(np.roll(np.asarray(a.images[0], dtype=int), (16, 32), (0, 1)) - np.asarray(b.images[0]))
        assert (diff.max() <= 1) == exact


def test_tiling_is_restored_after_an_error(jobs):
    def boom(state):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        jobs.txt2img(**BASE, tiling=True, hooks=[boom])
    assert all(m.padding_mode == "zeros" for m in jobs.bundle.vae.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("kw", [dict(sampler_name="Euler", scheduler="Karras", denoising_strength=0.45),
                                dict(sampler_name="DPM++ 2M", hr_sampler_name="Heun", hr_scheduler="Exponential",
                                     hr_second_pass_steps=3, denoising_strength=0.6)])
def test_session_sigmas_are_the_sigmas_the_job_runs(session, kw):
    """session.sigmas(...) tells, without running the job, the sigma of every step txt2img and its hires pass make."""
    params = {**BASE, **kw, "enable_hr": True, "hr_scale": 1.5}
    seen = {"txt2img": [], "hires": []}
    session.txt2img(**params, hooks=[lambda s: seen[s.extra["pass"]].append((float(s.sigma), float(s.sigma_next)))])
    sigmas = session.sigmas(**params)
    for name, key in (("txt2img", "first pass"), ("hires", "hires")):
        ran = sorted({s for pair in seen[name] for s in pair}, reverse=True)  # second-order steps report twice
        assert ran == pytest.approx([float(s) for s in sigmas[key]], rel=1e-6), name
    assert torch.equal(sigmas["hires"], sigmas["hires schedule"][-len(sigmas["hires"]):])
    img2img = session.sigmas(**{**BASE, **kw}, img2img=True)["first pass"]
    assert len(img2img) == int(min(kw["denoising_strength"], 0.999) * BASE["steps"]) + 2
