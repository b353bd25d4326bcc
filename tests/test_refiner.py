"""The SDXL refiner: A1111's mid-sampling switch (nbdiffuse.jobs.refiner) on a tiny SDXL and a tiny refiner.

Where the switch happens is checked against A1111's own ``apply_refiner`` (tests/fixtures/a1111/refiner_switch.json,
made by make_refiner_switch.py from A1111's sd_samplers_common.py; see the fixtures README), not against numbers
computed here; the worked switch points of INPAINT-UPSCALE.md §7 (transcribed there) are checked to agree with it.
"""

from __future__ import annotations

import json
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nbdiffuse import Session, infotext
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.refiner import ModelSwitch, PassSwitch
from nbdiffuse.models.bundle import scaled_linear_alphas_cumprod
from nbdiffuse.sampling.denoiser import Denoiser
from nbdiffuse.testing import tiny_checkpoint, tiny_sdxl, tiny_sdxl_refiner

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "a1111" / "refiner_switch.json").read_text())
CASES = {c["name"]: c for c in FIXTURE["cases"]}
PROMPT, NEGATIVE = "a red circle", "blurry"


@pytest.fixture(scope="module")
def refiner():
    return tiny_sdxl_refiner(seed=1)


@pytest.fixture
def xl(refiner):
    s = Session(outputs_dir=None, progress=False, device="cpu")
    s.load(tiny_sdxl())
    return s


class Recorder:
    """Which UNet ran each UNet forward, with its inputs (one forward per model call at batch size 1)."""

    def __init__(self, **unets):
        self.calls: list[tuple[str, dict]] = []
        self.handles = [u.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, u in unets.items()]

    def _hook(self, name):
        def record(module, args, kwargs):
            added = kwargs.get("added_cond_kwargs") or {}
            self.calls.append((name, {"context": kwargs["encoder_hidden_states"].detach().clone(),
                                      "time_ids": added["time_ids"].detach().clone(),
                                      "text_embeds": added["text_embeds"].detach().clone()}))
        return record

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def first(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    def close(self):
        for h in self.handles:
            h.remove()


def job(session, refiner, case_params: dict, **params):
    rec = Recorder(base=session.model.unet, refiner=refiner.unet)
    try:
        r = session.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, seed=3, cfg_scale=5, width=64, height=64,
                            refiner_checkpoint=refiner, **case_params, **params)
    finally:
        rec.close()
    return r, rec


def case_params(case) -> dict:
    out = {"steps": case["steps"], "sampler_name": case["sampler"], "refiner_switch_at": case["switch_at"],
           "refiner_switch_by_sample_steps": case["by_steps"]}
    if case["schedule"] and case["sampler"] != "DDIM":
        out["scheduler"] = "Automatic" if case["schedule"] == "Uniform" else case["schedule"]
    return out


# ----------------------------------------------------------------------------------------------- the rule

def switch_for(switch_at, by_steps, total_steps, grid=False):
    d = Denoiser(torch.nn.Linear(1, 1), scaled_linear_alphas_cumprod())
    d.vp_time = grid
    refiner = types.SimpleNamespace(switch_at=switch_at, by_steps=by_steps)
    return ModelSwitch(PassSwitch(refiner, None, total_steps), types.SimpleNamespace(step=0), d,
                       types.SimpleNamespace(grid=object() if grid else None))


def test_fixture_agrees_with_the_worked_switch_points_of_the_notes():
    """INPAINT-UPSCALE.md §7's table (transcribed) is what A1111's code gives on these schedules."""
    worked = {"Euler Automatic 20": (16, 16), "Euler Automatic 30": (24, 24), "Euler Karras 20": (12, 16),
              "Euler Karras 30": (19, 24), "Euler Karras 50": (31, 40), "Euler Exponential 20": (10, 16),
              "Euler Exponential 30": (16, 24)}
    for name, (timestep, steps) in worked.items():
        assert CASES[f"{name} @0.8 timestep"]["first_refiner_call"] == timestep
        assert CASES[f"{name} @0.8 steps"]["first_refiner_call"] == steps
    assert CASES["Euler Automatic 20 @0.5 timestep"]["first_refiner_call"] == 10
    assert CASES["Euler Karras 20 @0.5 timestep"]["first_refiner_call"] == 9


@pytest.mark.parametrize("name", sorted(CASES))
def test_switch_decision_equals_a1111_apply_refiner_on_every_call(name):
    case = CASES[name]
    launched = len(case["calls"]) if "denoising_strength" in case else case["steps"]  # img2img: t_enc + 1
    total = launched * (2 if case["sampler"] == "Heun" else 1)  # A1111's SamplerData.total_steps
    switch = switch_for(case["switch_at"], case["by_steps"], total, grid=case["sampler"] == "DDIM")
    first = None
    for i, value in enumerate(case["calls"]):
        switch.active.step = i
        if case["sampler"] == "DDIM":  # A1111 gets the timestep there; ours gets that timestep's sigma
            value = float(switch.denoiser.sigmas[int(value)])
        if switch.wants_switch(torch.tensor([value])):
            first = i
            break
    assert first == case["first_refiner_call"]


@pytest.mark.parametrize("switch_at", sorted(FIXTURE["thresholds"]))
def test_timestep_rule_equals_a1111_at_every_model_timestep(switch_at):
    """Including the float32 rounding A1111's ratio has: at 0.7, t = 299 switches ((999 - 299) / 1000 in float32
    is just below 0.7, and A1111 compares it with 0.7 in float32)."""
    want = FIXTURE["thresholds"][switch_at]
    switch = switch_for(float(switch_at), False, 1)
    got = "".join("1" if switch.wants_switch(switch.denoiser.sigmas[t].reshape(1)) else "0" for t in range(1000))
    assert got == want


# ----------------------------------------------------------------------------------------------- jobs

JOB_CASES = ["Euler Automatic 20 @0.8 timestep", "Euler Karras 20 @0.8 timestep", "Euler Exponential 20 @0.8 timestep",
             "Euler Karras 20 @0.8 steps", "Heun Karras 10 @0.8 timestep", "Heun Karras 10 @0.8 steps",
             "DDIM 20 @0.8 timestep", "Euler Automatic 20 @1.0 timestep"]


@pytest.mark.parametrize("name", JOB_CASES)
def test_the_unet_of_every_model_call_is_the_one_a1111s_rule_says(xl, refiner, name):
    case = CASES[name]
    params = case_params(case)
    if case["schedule_sigmas"] is not None:  # the job runs on the fixture's sigmas
        sigmas = xl.sigmas(**params)["first pass"]
        np.testing.assert_allclose(sigmas.numpy(), case["schedule_sigmas"], rtol=1e-6, atol=1e-7)
    r, rec = job(xl, refiner, params)
    assert len(rec.calls) == len(case["calls"]) == r.timings["model_calls"]
    first = case["first_refiner_call"]
    assert rec.first("refiner") == first
    if first is not None:
        assert rec.names == ["base"] * first + ["refiner"] * (len(case["calls"]) - first)
    fields = infotext.parse(r.infotexts[0])
    assert ("Refiner" in fields) == (first is not None)
    if first is not None:
        assert fields["Refiner"] == "tiny-sdxl_refiner" and float(fields["Refiner switch at"]) == 0.8
    assert ("Refiner switch by sampling steps" in fields) == case["by_steps"]


def test_img2img_counts_the_steps_it_launches(xl, refiner):
    """A1111's step rule in img2img: the t_enc + 1 steps that run are the total."""
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 40, 40))
    for rule in ("timestep", "steps"):
        case = CASES[f"img2img Euler Automatic 20 at 0.5 @0.8 {rule}"]
        rec = Recorder(base=xl.model.unet, refiner=refiner.unet)
        try:
            r = xl.img2img([image], prompt=PROMPT, steps=20, sampler_name="Euler", denoising_strength=0.5, seed=1,
                           width=64, height=64, refiner_checkpoint=refiner,
                           refiner_switch_by_sample_steps=rule == "steps")
        finally:
            rec.close()
        assert len(rec.calls) == len(case["calls"])
        assert rec.first("refiner") == case["first_refiner_call"]
        assert infotext.parse(r.infotexts[0])["Refiner"] == "tiny-sdxl_refiner"


def test_the_refiner_gets_its_own_conditioning(xl, refiner):
    """bigG alone (penultimate layer, pooled), time ids [h, w, crop_top, crop_left, aesthetic] with 6.0 for the
    prompt row and 2.5 for the negative row; the base keeps its 6 time ids and 96-wide context."""
    r, rec = job(xl, refiner, case_params(CASES["Euler Automatic 20 @0.8 timestep"]))
    base = [c for n, c in rec.calls if n == "base"][0]
    assert base["context"].shape == (2, 77, 96) and base["time_ids"].shape == (2, 6)
    assert base["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    ref = [c for n, c in rec.calls if n == "refiner"][0]
    assert ref["context"].shape == (2, 77, 64) and ref["text_embeds"].shape == (2, 32)
    assert ref["time_ids"].tolist() == [[64, 64, 0, 0, 6.0], [64, 64, 0, 0, 2.5]]
    te, tok = refiner.text_encoders[0], refiner.tokenizers[0]
    for row, text in ((0, PROMPT), (1, NEGATIVE)):  # the text encoder run directly: penultimate hidden states
        ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        first_eos = ids.index(tok.eos_token_id)
        ids = ids[:first_eos + 1] + [0] * (76 - first_eos)  # OpenCLIP pads with 0 after the first EOS
        out = te(input_ids=torch.tensor([ids]), output_hidden_states=True)
        torch.testing.assert_close(ref["context"][row], out.hidden_states[-2][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref["text_embeds"][row], out.text_embeds[0], rtol=1e-5, atol=1e-5)


def test_an_empty_negative_prompt_gives_the_refiner_zeroed_text_embeddings(xl, refiner):
    rec = Recorder(refiner=refiner.unet)
    try:
        xl.txt2img(prompt=PROMPT, steps=6, sampler_name="Euler", seed=1, refiner_checkpoint=refiner,
                   refiner_switch_at=0.0)
    finally:
        rec.close()
    ref = rec.calls[0][1]
    assert ref["context"][0].abs().sum() > 0 and ref["text_embeds"][0].abs().sum() > 0
    assert not ref["context"][1].any() and not ref["text_embeds"][1].any()
    assert ref["time_ids"][1, 4] == 2.5


@pytest.mark.parametrize("entry", FIXTURE["hires"], ids=lambda e: e["mode"])
def test_hires_fix_switches_in_the_passes_a1111_does(xl, refiner, entry):
    r, rec = job(xl, refiner, {"steps": 10, "sampler_name": "Euler"}, enable_hr=True, hr_scale=2.0,
                 denoising_strength=0.6, hires_fix_refiner_pass=entry["mode"])
    n1, n2 = len(entry["first_pass_calls"]), len(entry["hires_calls"])
    names = rec.names
    assert len(names) == n1 + n2
    first, second = names[:n1], names[n1:]
    for got, want in ((first, entry["first_pass_switch"]), (second, entry["hires_switch"])):
        assert (got.index("refiner") if "refiner" in got else None) == want
    if entry["hires_switch"] is not None:  # the hires pass's refiner conditioning is at the hires size
        ref = [c for n, c in rec.calls[n1:] if n == "refiner"][0]
        assert ref["time_ids"].tolist() == [[128, 128, 0, 0, 6.0], [128, 128, 0, 0, 2.5]]
    fields = infotext.parse(r.infotexts[0])
    for key in ("Hires refiner", "Refiner", "Refiner switch at"):
        assert (key in fields) == (key in entry["extra_generation_params"])
    if "Hires refiner" in fields:
        assert fields["Hires refiner"] == entry["extra_generation_params"]["Hires refiner"]
        assert infotext.to_params(r.infotexts[0])["hires_fix_refiner_pass"] == entry["mode"]


def test_a_refiner_file_by_name_round_trips_through_the_infotext(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    tiny_checkpoint(models / "Stable-diffusion" / "base.safetensors", "sdxl")
    tiny_checkpoint(models / "Stable-diffusion" / "xl-refiner.safetensors", "sdxl_refiner", seed=2)
    s = Session(outputs_dir=None, progress=False, device="cpu", models_dir=models)
    s.load("base.safetensors")
    r = s.txt2img(prompt=PROMPT, steps=8, sampler_name="Euler", seed=5, refiner_checkpoint="xl-refiner")
    fields = infotext.parse(r.infotexts[0])
    refiner = s._refiner[1]
    assert refiner.arch == "sdxl_refiner"
    assert fields["Refiner"] == f"xl-refiner [{refiner.hash}]" and len(refiner.hash) == 10
    params = infotext.to_params(r.infotexts[0])
    assert params["refiner_checkpoint"] == fields["Refiner"] and params["refiner_switch_at"] == 0.8
    s.unload()
    assert s._refiner is None
    s.load("base.safetensors")
    again = s.txt2img(**params)  # "name [hash]" finds the file again
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(r.images[0]))
    with pytest.raises(ValueError, match="no-such-refiner"):
        s.txt2img(prompt=PROMPT, steps=2, refiner_checkpoint="no-such-refiner")


def test_a_refiner_that_is_the_loaded_model_is_ignored(tmp_path):
    path = tiny_checkpoint(tmp_path / "base.safetensors", "sdxl")
    s = Session(outputs_dir=None, progress=False, device="cpu")
    s.load(path)
    plain = s.txt2img(prompt=PROMPT, steps=6, sampler_name="Euler", seed=1)
    for same in (str(path), s.model):
        with pytest.warns(UserWarning, match="is the loaded model"):
            r = s.txt2img(prompt=PROMPT, steps=6, sampler_name="Euler", seed=1, refiner_checkpoint=same)
        assert "Refiner" not in infotext.parse(r.infotexts[0])
        assert np.array_equal(np.asarray(r.images[0]), np.asarray(plain.images[0]))


def test_infotext_keys_read_back_as_a1111_reads_them():
    text = ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1024x1024, Model: sd_xl_base_1.0, "
            "Refiner: sd_xl_refiner_1.0_0.9vae [8d0ce6c016], Refiner switch at: 0.8, Version: {}")
    for version, legacy in (("v1.7.0", True), ("v1.8.0", False), ("v1.10.1", False)):
        p = infotext.to_params(text.format(version))
        assert p["refiner_checkpoint"] == "sd_xl_refiner_1.0_0.9vae [8d0ce6c016]" and p["refiner_switch_at"] == 0.8
        assert p.get("refiner_switch_by_sample_steps", False) is legacy  # pre-1.8.0: A1111's infotext_versions
    p = infotext.to_params(text.format("v1.10.1") + ", Refiner switch by sampling steps: True")
    assert p["refiner_switch_by_sample_steps"] is True
    assert GenerationParams.from_kwargs(**p).refiner_switch_by_sample_steps is True


def test_refiner_parameters_are_checked_before_any_work():
    for bad in ({"refiner_switch_at": 1.5}, {"refiner_switch_at": "x"}, {"hires_fix_refiner_pass": "third"},
                {"refiner_switch_by_sample_steps": "yes"}, {"refiner_checkpoint": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GenerationParams.from_kwargs(**bad)
    for none in ("", "None", "none", None):  # A1111's "no refiner" values
        assert GenerationParams.from_kwargs(refiner_checkpoint=none).refiner_checkpoint is None


def test_a_job_function_given_a_refiner_name_but_no_model_refuses():
    from nbdiffuse.jobs.txt2img import txt2img_steps
    from nbdiffuse.prompts.conditioning import TextEncoder

    bundle = tiny_sdxl()
    with pytest.raises(ValueError, match="no refiner model"):
        next(txt2img_steps(bundle, GenerationParams(refiner_checkpoint="r", width=64, height=64, steps=2),
                           TextEncoder(bundle)))


def test_the_refiner_alone_generates_as_the_loaded_model(refiner):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Session(outputs_dir=None, progress=False, device="cpu")
        s.load(refiner)
        r = s.txt2img(prompt=PROMPT, steps=3, sampler_name="Euler", seed=1)
    assert r.images[0].size == (64, 64)


def test_hires_fix_on_an_earlier_result_switches_in_its_hires_pass(xl, refiner):
    """A1111's ✨ is a txt2img with hires fix: the default "second pass" setting switches in the hires pass."""
    entry = next(e for e in FIXTURE["hires"] if e["mode"] == "second pass")
    first = xl.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, seed=3, steps=10, sampler_name="Euler",
                       width=64, height=64, refiner_checkpoint=refiner)
    rec = Recorder(base=xl.model.unet, refiner=refiner.unet)
    try:
        r = xl.hires_fix(first, denoising_strength=0.6, hr_scale=2.0)
    finally:
        rec.close()
    assert len(rec.names) == len(entry["hires_calls"])
    assert rec.first("refiner") == entry["hires_switch"]
    assert infotext.parse(r.infotexts[0])["Refiner"] == "tiny-sdxl_refiner"


def test_the_prompts_networks_are_said_to_skip_the_refiner(xl, refiner):
    with pytest.warns(UserWarning, match="refiner runs without them"):
        with pytest.raises(ValueError, match="models folder"):  # no models_dir: the LoRA itself is refused after
            xl.txt2img(prompt=PROMPT + " <lora:style:0.5>", steps=2, refiner_checkpoint=refiner)


def test_xyz_axes_vary_the_refiner_and_its_switch_point(xl, refiner):
    xl.txt2img(prompt=PROMPT, steps=2, refiner_checkpoint=refiner)  # the refiner in memory, by its name
    grid = xl.xyz(x=("Refiner switch at", "0.5, 1"), y=("Refiner checkpoint", ["None", "tiny-sdxl_refiner"]),
                  prompt=PROMPT, steps=6, sampler_name="Euler", seed=2, show=False, save_grid=False)
    texts = {(ix, iy): infotext.parse(grid.cells[ix][iy][0].infotexts[0]) for ix in range(2) for iy in range(2)}
    assert [key for key, t in texts.items() if "Refiner" in t] == [(0, 1)]  # with the refiner, switching at 0.5
    assert float(texts[0, 1]["Refiner switch at"]) == 0.5


def test_an_interrupt_reaches_inside_the_refiners_unet_call(xl, refiner):
    blocks = []
    h1 = refiner.unet.register_forward_pre_hook(lambda m, a: xl.interrupt())
    h2 = refiner.unet.down_blocks[0].resnets[0].register_forward_hook(lambda m, a, out: blocks.append(1))
    try:
        r = xl.txt2img(prompt=PROMPT, steps=20, sampler_name="Euler", seed=1, refiner_checkpoint=refiner)
    finally:
        h1.remove()
        h2.remove()
    assert r.interrupted and len(r.images) == 1  # the x0 estimate of the last finished step is kept
    assert blocks == []  # stopped inside the refiner's UNet call, before its first resnet block finished
