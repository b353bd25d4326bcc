"""Infotext: A1111 layout, parsing semantics, key order, PNG chunk, and infotext -> API parameters."""

from __future__ import annotations

import io
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import nbdiffuse.infotext as it
from nbdiffuse.io import infotext as raw

EXAMPLE_1 = (
    "1 girl\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1957970079, Size: 512x512, "
    "Model hash: a2e2de4c7a, Model: 0307_Rocky_sdxl_PrivateImaging_model, Version: 1.8.0-RC"
)
EXAMPLE_2 = (
    "1 girl\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 0, Size: 512x512, Model hash: dfe73aa42d, "
    "Model: LEOSAM_HelloWorld_新世界_SDXL真实感大模型_v3.2_AutoDPO, Denoising strength: 0.7, "
    "Hires upscale: 2, Hires upscaler: Latent, Version: 1.8.0-RC"
)


# ------------------------------------------------------------------------------------ the registry
def _stub_registry():
    """Stands in for nbdiffuse.sampling.registry while samplers.py & co. are still being written."""
    mod = types.ModuleType("nbdiffuse.sampling.registry")
    defaults = {"DPM++ 2M": "Karras", "DPM++ 2M SDE": "Exponential", "Euler a": None, "Euler": None,
                "DDIM": "DDIM"}
    mod.SAMPLERS = {n: types.SimpleNamespace(name=n, default_scheduler=d) for n, d in defaults.items()}
    labels = ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
              "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]
    by_alias = {n.lower(): n for n in defaults} | {"k_euler_a": "Euler a", "k_dpmpp_2m": "DPM++ 2M"}

    def resolve_sampler(name):
        key = name.strip().lower()
        if key in by_alias:
            return by_alias[key], None
        for label in sorted(labels, key=len, reverse=True):
            suffix = " " + label.lower()
            if key.endswith(suffix) and key[: -len(suffix)] in by_alias:
                return by_alias[key[: -len(suffix)]], label
        raise ValueError(f"Unknown sampler {name!r}")

    mod.resolve_sampler = resolve_sampler
    return mod


@pytest.fixture
def registry(monkeypatch):
    """The real registry when it imports, else the stub (see the report: rerun once it imports)."""
    try:
        import nbdiffuse.sampling.registry as real
        return real
    except ImportError:
        stub = _stub_registry()
        monkeypatch.setitem(sys.modules, "nbdiffuse.sampling.registry", stub)
        return stub


# ------------------------------------------------------------------------------------ the examples
def _rebuild(parsed: dict, params: dict, registry) -> dict:
    """Fields for an infotext written from ``params`` (plus the non-parameter keys Model, Version).

    As A1111 1.9+ does, an "Automatic" schedule is written as the one actually used.
    """
    scheduler = params["scheduler"]
    if scheduler == "Automatic":
        scheduler = registry.SAMPLERS[params["sampler_name"]].default_scheduler or "Uniform"
    core = {
        "Steps": params["steps"],
        "Sampler": params["sampler_name"],
        "Schedule type": scheduler,
        "CFG scale": params["cfg_scale"],
        "Seed": params["seed"],
        "Size": (params["width"], params["height"]),
        "Model hash": parsed.get("Model hash"),
        "Model": parsed.get("Model"),
        "Denoising strength": params.get("denoising_strength"),
    }
    extra = {}
    if params.get("enable_hr"):
        extra["Hires upscale"] = params["hr_scale"]
        extra["Hires upscaler"] = params["hr_upscaler"]
    extra["Version"] = parsed["Version"]
    return raw.build_fields(core, extra)


@pytest.mark.parametrize("text", [EXAMPLE_1, EXAMPLE_2])
def test_real_examples_round_trip(text, registry):
    parsed = it.parse(text)
    assert parsed["Prompt"] == "1 girl"
    assert parsed["Negative prompt"] == ""
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "512")
    params = it.to_params(text)
    assert params["sampler_name"] == "DPM++ 2M"
    assert params["scheduler"] == "Automatic"  # Karras is DPM++ 2M's default
    assert registry.SAMPLERS["DPM++ 2M"].default_scheduler == "Karras"
    assert (params["steps"], params["cfg_scale"], params["width"], params["height"]) == (20, 7.0, 512, 512)
    assert params["seed"] == int(parsed["Seed"])

    # parse -> format with the same fields gives back the exact text.
    fields = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt", "Size-1", "Size-2")}
    assert it.format(parsed["Prompt"], parsed["Negative prompt"], fields) == text

    # parse -> params -> fields -> format (1.9+ style: the schedule actually used is named).
    out = it.format(params["prompt"], params["negative_prompt"], _rebuild(parsed, params, registry))
    again = it.parse(out)
    assert again.pop("Schedule type") == "Karras"
    assert again.pop("Sampler") == "DPM++ 2M"
    assert parsed.pop("Sampler") == "DPM++ 2M Karras"
    assert again == parsed  # every other key and value, in the same order
    assert list(again) == list(parsed)
    assert it.to_params(out) == {**params, "scheduler": "Karras"}


def test_example_2_hires():
    params = it.to_params({k: v for k, v in it.parse(EXAMPLE_2).items() if k != "Sampler"})
    assert params["enable_hr"] is True
    assert params["hr_scale"] == 2.0 and isinstance(params["hr_scale"], float)
    assert params["hr_upscaler"] == "Latent"
    assert params["denoising_strength"] == 0.7
    assert it.parse(EXAMPLE_2)["Model"] == "LEOSAM_HelloWorld_新世界_SDXL真实感大模型_v3.2_AutoDPO"


# ------------------------------------------------------------------------------------ format
def test_format_layout_and_numbers():
    text = it.format("a cat", "", {"Steps": 20, "CFG scale": 7.0, "Seed": 5, "Denoising strength": 0.7,
                                   "X": None, "Y": 7.5, "Tiling": True, "Size": (512, 768)})
    assert text == ("a cat\nSteps: 20, CFG scale: 7, Seed: 5, Denoising strength: 0.7, Y: 7.5, "
                    "Tiling: True, Size: 512x768")
    text = it.format("a cat\nline 2", "ugly\nblurry", {"Steps": 20, "Seed": 1, "CFG scale": 7})
    assert text == "a cat\nline 2\nNegative prompt: ugly\nblurry\nSteps: 20, Seed: 1, CFG scale: 7"
    assert it.format("p", "", {}) == "p"


def test_format_quoting():
    text = it.format("p", "", {
        "Lora hashes": "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef",
        "Hires prompt": "line1\nline2",
        "Template": 'say "hi"',
        "Colon": "a:b",
        "Plain": "Latent (nearest-exact)",
        "Empty": "",
        "Unicode": "新世界, ok",
    })
    last = text.split("\n")[-1]
    assert 'Lora hashes: "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef"' in last
    assert 'Hires prompt: "line1\\nline2"' in last
    assert 'Template: "say \\"hi\\""' in last
    assert 'Colon: "a:b"' in last
    assert "Plain: Latent (nearest-exact)," in last
    assert 'Empty: ""' in last
    assert 'Unicode: "新世界, ok"' in last  # ensure_ascii=False
    parsed = it.parse(text)
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef"
    assert parsed["Hires prompt"] == "line1\nline2"
    assert parsed["Template"] == 'say "hi"'
    assert parsed["Colon"] == "a:b"
    assert parsed["Plain"] == "Latent (nearest-exact)"
    assert parsed["Empty"] == ""
    assert parsed["Unicode"] == "新世界, ok"


def test_key_order():
    core = {"Seed": 1, "Size": "512x512", "Steps": 20, "Clip skip": 2, "Sampler": "Euler a",
            "CFG scale": 7, "Version": "v1", "Model": "m", "Schedule type": "Karras", "Custom": "c"}
    extra = {"Hires upscale": 2, "Denoising strength": 0.5, "Hires steps": 10, "Steps": 30,
             "Lora hashes": "a: 1"}
    fields = raw.build_fields(core, extra)
    assert list(fields) == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model",
                            "Denoising strength", "Clip skip", "Custom", "Hires upscale", "Hires steps",
                            "Lora hashes", "Version"]
    assert fields["Steps"] == 30  # the extra value wins, the earlier position stays
    # An extra key that repeats an earlier extra key keeps its first position.
    fields = raw.build_fields({"Steps": 1}, {"A": 1, "B": 2, "Version": "v"} | {"A": 3})
    assert list(fields) == ["Steps", "A", "B", "Version"]
    assert raw.fields_in_order(Seed=1, Steps=2) == {"Steps": 2, "Seed": 1}
    # Version is last even when an extra comes after it.
    assert list(raw.build_fields({"Version": "v", "Steps": 1}, {"Z": 1})) == ["Steps", "Z", "Version"]


# ------------------------------------------------------------------------------------ parse
def test_negative_prompt_multiline():
    text = ("masterpiece,\n(best quality:1.2)\nNegative prompt: bad hands,\nworst quality\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 3, Size: 640x480")
    parsed = it.parse(text)
    assert parsed["Prompt"] == "masterpiece,\n(best quality:1.2)"
    assert parsed["Negative prompt"] == "bad hands,\nworst quality"
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Size"]) == ("640", "480", "640x480")
    assert parsed["CFG scale"] == "7.5"


def test_last_line_needs_three_pairs():
    parsed = it.parse("a photo\nstyle: cinematic, mood: dark")
    assert parsed == {"Prompt": "a photo\nstyle: cinematic, mood: dark", "Negative prompt": ""}
    parsed = it.parse("a photo\nNegative prompt: x\nSteps: 20, Seed: 1")
    assert parsed["Negative prompt"] == "x\nSteps: 20, Seed: 1"
    assert "Steps" not in parsed
    parsed = it.parse("a photo\nSteps: 20, Seed: 1, CFG scale: 7")
    assert parsed["Prompt"] == "a photo" and parsed["Steps"] == "20"
    # Only the parameter line is a parameter line: an earlier one is prompt text.
    parsed = it.parse("Steps: 1, Seed: 2, CFG scale: 3\nStill prompt")
    assert parsed == {"Prompt": "Steps: 1, Seed: 2, CFG scale: 3\nStill prompt", "Negative prompt": ""}


def test_parse_edge_cases():
    assert it.parse("") == {"Prompt": "", "Negative prompt": ""}
    assert it.parse("Negative prompt:") == {"Prompt": "", "Negative prompt": ""}
    parsed = it.parse("p\nSteps: 20, Empty: , Seed: 1, CFG scale: 7")
    assert "Empty" not in parsed  # A1111 drops empty values
    parsed = it.parse('p\nAa: "not json\\q", Bb: 1, C: 2, Seed resize from: 1024x768')
    assert parsed["Aa"] == '"not json\\q"'  # undecodable quotes stay as written
    assert "C" not in parsed  # A1111's keys have at least 2 characters
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("1024", "768")


def test_parse_lora_hashes_quoted_with_other_keys():
    text = ('p\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 9, '
            'Lora hashes: "detail: abcdef123456, style: 0123456789ab", TI hashes: "emb: 1234", '
            'Version: v1.10.1')
    parsed = it.parse(text)
    assert parsed["Lora hashes"] == "detail: abcdef123456, style: 0123456789ab"
    assert parsed["TI hashes"] == "emb: 1234"
    assert parsed["Version"] == "v1.10.1"


def test_negative_prompt_drops_leading_blank_lines_only():
    # A1111 adds a newline only once the negative prompt has text (A1111 1.10's output, infotext_parse.json edge 5).
    parsed = it.parse("p\nNegative prompt:\n\nugly\n\nblurry\nSteps: 20, Sampler: Euler, CFG scale: 7")
    assert parsed["Negative prompt"] == "ugly\n\nblurry"
    assert it.parse("p\nNegative prompt:   \n  \nSteps: 20, Sampler: Euler, CFG scale: 7")["Negative prompt"] == ""


def test_hypernet_is_appended_to_the_prompt():
    text = "girl\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Hypernet: anime_3"
    assert it.parse(text)["Prompt"] == "girl<hypernet:anime_3:1.0>"
    assert it.parse(text + ", Hypernet strength: 0.55")["Prompt"] == "girl<hypernet:anime_3:0.55>"
    assert it.to_params(text)["prompt"] == "girl<hypernet:anime_3:1.0>"


def test_first_pass_size_becomes_a_two_pass_job():
    # A1111's wiki ("Seed breaking changes", 2023-01-04): "Size: 1024x1280, First pass size: 0x0" is now
    # "Size: 512x576" with a second pass to 1024x1280; an explicit first pass is used as given.
    text = "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x1280, Denoising strength: 0.6, "
    parsed = it.parse(text + "First pass size: 0x0")
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Size"]) == (512, 576, "512x576")
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"], parsed["Hires resize"]) == (1024, 1280, "1024x1280")
    params = it.to_params(text + "First pass size: 0x0")
    assert (params["width"], params["height"], params["enable_hr"]) == (512, 576, True)
    assert (params["hr_resize_x"], params["hr_resize_y"], params["denoising_strength"]) == (1024, 1280, 0.6)
    params = it.to_params(text + "First pass size: 640x512")
    assert (params["width"], params["height"], params["hr_resize_x"], params["hr_resize_y"]) == (640, 512, 1024, 1280)
    assert "enable_hr" not in it.to_params(it.parse(text, defaults=True))  # Hires resize 0x0 is "no resize"


def test_hires_prompt_equal_to_prompt_reads_as_empty():
    text = ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Hires upscale: 2, Hires prompt: a cat, "
            "Version: {}")
    assert it.parse(text.format("v1.9.0"))["Hires prompt"] == ""
    assert it.parse(text.format("v1.9.0"))["Hires negative prompt"] == ""
    assert it.parse(text.format("v1.8.0-RC"))["Hires prompt"] == "a cat"  # before 1.8.0-139 A1111 keeps it


def test_version_compatibility_keys():
    parsed = it.parse("[cat:dog:5]\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Version: v1.5.2")
    assert parsed["Old prompt editing timelines"] is True and parsed["Pad conds v0"] is True
    assert parsed["Downcast alphas_cumprod"] is True
    parsed = it.parse("cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Version: v1.10.1")
    assert not {"Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod"} & set(parsed)
    # Forge's version string is not a version A1111 can read: no compatibility keys.
    assert "Downcast alphas_cumprod" not in it.parse(
        "cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Version: f2.0.1v1.10.1-previous-665-gae278f79")


def test_defaults_are_a1111s_assumptions_for_missing_keys():
    text = "a (cat)\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x512"
    plain, full = it.parse(text), it.parse(text, defaults=True)
    assert "RNG" not in plain and full["RNG"] == "GPU"
    assert full["Clip skip"] == "1" and full["Schedule type"] == "Automatic" and full["Emphasis"] == "Original"
    assert "Size" in plain and "Size" not in full  # A1111 keeps only Size-1 / Size-2
    assert it.to_params(plain) == it.to_params(text)


def test_crlf_reads_like_lf():
    text = ("cat, \n dog \nNegative prompt: ugly \n blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
            'Seed: 1, Size: 512x768, Lora hashes: "a: 1, b: 2"\n')
    assert it.parse(text.replace("\n", "\r\n")) == it.parse(text)
    assert it.parse(text)["Prompt"] == "cat,\ndog" and it.parse(text)["Negative prompt"] == "ugly\nblurry"


def test_schedule_glued_to_the_sampler_wins_over_schedule_type():
    # A1111's paste (sd_samplers.get_sampler_and_scheduler) takes the schedule from the name when it has one.
    p = it.to_params("p\nSteps: 20, Sampler: DPM++ 2M SDE Karras, Schedule type: Automatic, CFG scale: 7")
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2M SDE", "Karras")
    p = it.to_params("p\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Exponential, CFG scale: 7")
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2M", "Automatic")


# ------------------------------------------------------------------------------------ fuzz
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_parse_never_raises(text):
    parsed = it.parse(text)
    assert isinstance(parsed["Prompt"], str) and isinstance(parsed["Negative prompt"], str)
    # Text values are str; the pre-1.0 hires sizes are ints and version compatibility flags bools, as in A1111.
    assert all(isinstance(k, str) and isinstance(v, str | int) for k, v in parsed.items())
    assert set(parsed.items()) <= set(it.parse(text, defaults=True).items()) | {
        (k, v) for k, v in parsed.items() if f"{k}-1" in parsed}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from('abc :,"\\\n-=()[]{}x0123456789'), max_size=80))
def test_parse_never_raises_on_infotext_like_text(text):
    for defaults in (False, True):
        it.parse(text, defaults=defaults)
        it.parse("p\nSteps: 1, Seed: 2, " + text, defaults=defaults)
        it.parse("p\nSteps: 1, First pass size: 0x0, Version: " + text, defaults=defaults)


_printable = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
_line = st.text(_printable, min_size=1, max_size=30).map(str.strip).filter(
    lambda s: s and not s.startswith("Negative prompt:"))
# Keys whose values A1111's parse rewrites (prompts, hypernet, pre-1.0 hires, hires prompts) are tested on their own.
_REWRITTEN = ("Prompt", "Negative prompt", "Hypernet", "First pass size", "Hires prompt", "Hires negative prompt")
_key = st.from_regex(r"[A-Za-z][A-Za-z0-9 \-/]{0,14}[A-Za-z]", fullmatch=True).filter(lambda k: k not in _REWRITTEN)
_value = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(prompt=st.lists(_line, min_size=1, max_size=3).map("\n".join),
       negative=st.lists(_line, max_size=3).map("\n".join),
       fields=st.dictionaries(_key, _value, min_size=3, max_size=8))
def test_format_parse_round_trip(prompt, negative, fields):
    # Prompts of stripped, non-blank lines and any values (quoted as needed) come back unchanged.
    text = it.format(prompt, negative, fields)
    parsed = it.parse(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for k, v in fields.items():
        if isinstance(v, str):
            assert parsed[k] == v
        elif isinstance(v, float):
            assert float(parsed[k]) == v
        else:
            assert parsed[k] == str(v)


# ------------------------------------------------------------------------------------ to_params
def test_to_params_samplers(registry):
    p = it.to_params("p\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7")
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2M", "Karras")
    p = it.to_params("p\nSteps: 20, Sampler: DPM++ 2M Exponential, CFG scale: 7")
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2M", "Exponential")
    p = it.to_params("p\nSteps: 20, Sampler: Euler a, CFG scale: 7")
    assert (p["sampler_name"], p["scheduler"]) == ("Euler a", "Automatic")
    p = it.to_params("p\nSteps: 20, Sampler: k_euler_a, CFG scale: 7")
    assert p["sampler_name"] == "Euler a"
    p = it.to_params("p\nSteps: 20, Sampler: Euler a Karras, CFG scale: 7")  # no default: explicit
    assert (p["sampler_name"], p["scheduler"]) == ("Euler a", "Karras")
    p = it.to_params("p\nSteps: 20, Sampler: My Custom Sampler, Schedule type: Beta, CFG scale: 7")
    assert (p["sampler_name"], p["scheduler"]) == ("My Custom Sampler", "Beta")
    p = it.to_params("p\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Hires sampler: DPM++ 2M SDE Karras, "
                     "Hires upscale: 1.5")
    assert (p["hr_sampler_name"], p["hr_scheduler"]) == ("DPM++ 2M SDE", "Karras")
    p = it.to_params("p\nSteps: 20, CFG scale: 7, Hires sampler: Use same sampler, "
                     "Hires schedule type: Use same scheduler, Seed: 1")
    assert "hr_sampler_name" not in p and "hr_scheduler" not in p


def test_to_params_all_fields(registry):
    text = it.format("a cat", "a dog", raw.build_fields({
        "Steps": 25, "Sampler": "Euler", "Schedule type": "Simple", "CFG scale": 6.5, "Seed": 42,
        "Size": "640x448", "Variation seed": 7, "Variation seed strength": 0.3, "Seed resize from": "512x512",
        "Denoising strength": 0.55, "Clip skip": 2, "Tiling": True,
    }, {
        "Eta": 0.8, "Sigma churn": 0.1, "Sigma tmin": 0.2, "Sigma tmax": 10.5, "Sigma noise": 1.003,
        "Hires resize": "1920x1080", "Hires steps": 12, "Hires upscaler": "Latent (nearest-exact)",
        "Hires schedule type": "Karras", "Hires prompt": "sharp, detailed", "Hires negative prompt": "blur",
        "Extra noise": 0.05, "Lora hashes": "x: 1, y: 2",
    }))
    p = it.to_params(text)
    assert p.pop("randn_source", "GPU") == "GPU"  # no RNG key: A1111's default (issue 14, part 6)
    assert p == {
        "prompt": "a cat", "negative_prompt": "a dog", "steps": 25, "sampler_name": "Euler",
        "scheduler": "Simple", "cfg_scale": 6.5, "seed": 42, "width": 640, "height": 448, "subseed": 7,
        "subseed_strength": 0.3, "seed_resize_from_w": 512, "seed_resize_from_h": 512,
        "denoising_strength": 0.55, "clip_skip": 2, "tiling": True, "eta": 0.8, "s_churn": 0.1,
        "s_tmin": 0.2, "s_tmax": 10.5, "s_noise": 1.003, "enable_hr": True, "hr_resize_x": 1920,
        "hr_resize_y": 1080, "hr_second_pass_steps": 12, "hr_upscaler": "Latent (nearest-exact)",
        "hr_scheduler": "Karras", "hr_prompt": "sharp, detailed", "hr_negative_prompt": "blur",
        "extra_noise": 0.05,
    }
    assert isinstance(p["steps"], int) and isinstance(p["cfg_scale"], float)
    assert it.to_params("p\nSteps: 1, Seed: 2, Eta DDIM: 0.25")["eta"] == 0.25
    assert "enable_hr" not in it.to_params("p\nSteps: 1, Seed: 2, CFG scale: 3")


def test_to_params_styles_and_dicts():
    from nbdiffuse.prompts.styles import Style

    # Without the styles database the (already styled) prompt is kept and the names are dropped ...
    params = it.to_params({"Styles array": ["a"], "Size": "64x32"})
    assert params.pop("randn_source", "GPU") == "GPU"
    assert params == {"width": 64, "height": 32}
    # ... with it, the styles are taken back out of the prompts, as A1111's paste does.
    db = {"a": Style("a", "{prompt}, oil painting", "blurry"), "b": Style("b", "dark")}
    text = 'a cat, oil painting, dark\nNegative prompt: blurry\nSteps: 1, Seed: 2, Styles array: "[\\"a\\", \\"b\\"]"'
    params = it.to_params(text, styles=db)
    assert (params["styles"], params["prompt"], params["negative_prompt"]) == (["a", "b"], "a cat", "")
    with pytest.raises(ValueError, match="Steps"):
        it.to_params({"Steps": "many"})


# ------------------------------------------------------------------------------------ PNG
def test_png_chunk_round_trip(tmp_path):
    text = it.format("新世界 girl", "bad, ugly", {"Steps": 20, "Seed": 1, "CFG scale": 7})
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=it.png_info(text))
    assert it.read_png(path) == text
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=it.png_info("latin only"))
    buf.seek(0)
    assert it.read_png(buf) == "latin only"
    Image.new("RGB", (8, 8)).save(tmp_path / "none.png")
    assert it.read_png(tmp_path / "none.png") is None


def test_read_jpeg_exif_user_comment(tmp_path):
    text = "a girl, 新世界\nSteps: 20, Seed: 1, CFG scale: 7"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf_16_be")  # as piexif writes it
    path = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    assert it.read_png(path) == text
