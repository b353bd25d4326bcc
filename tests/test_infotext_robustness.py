"""Infotexts a careless or hostile user might paste: huge text, odd bytes, values no field can hold (issue 15).

The reference for parsing is the pair regex of A1111's ``parse_generation_parameters`` (modules/infotext_utils.py,
re_param) with plain ``findall``: our linear scan must find exactly its pairs, and ``parse`` must give exactly the
dict it gives with that regex.
"""

from __future__ import annotations

import gc
import json
import re
import time
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbdiffuse.infotext as it
from nbdiffuse.io import infotext as raw
from nbdiffuse.jobs.params import GenerationParams

A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def reference_parse(text, **kwargs):
    """``parse`` with A1111's own regex (quadratic: moderate sizes only)."""
    with mock.patch.object(raw, "_param_pairs", A1111_RE_PARAM.findall):
        return raw.parse(text, **kwargs)


# ------------------------------------------------------------------------------------ long inputs
_KEY_CHARS = "ab_1é -/"
_SPACES = " \t\r\x0b\u00a0\u3000"
_json_leaf = st.one_of(st.text(st.sampled_from('ab ,:"\\{}[]\n'), max_size=12), st.integers(), st.booleans())
_json = st.recursive(_json_leaf, lambda inner: st.dictionaries(st.text("abc", max_size=4), inner, max_size=4)
                     | st.lists(inner, max_size=4), max_leaves=12)
_chunk = st.one_of(
    st.tuples(st.text(st.sampled_from(_KEY_CHARS), min_size=1, max_size=12), st.integers(1, 150)).map(
        lambda t: t[0] * t[1]),  # long runs of key characters: what made A1111's regex quadratic
    st.tuples(st.text(st.sampled_from(_SPACES), min_size=1, max_size=4), st.integers(1, 150)).map(
        lambda t: t[0] * t[1]),
    st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9 \-/]{0,10}", fullmatch=True),
              st.text(st.sampled_from('ab 1.,"\\'), max_size=10)).map(lambda t: f"{t[0]}: {t[1]}, "),
    _json.map(lambda v: f"ControlNet 0: {json.dumps(json.dumps(v))}, "),  # A1111 quotes a JSON value
    _json.map(lambda v: f"X: {json.dumps(v)}, "),  # unquoted JSON: full of ":", "," and '"'
    st.sampled_from(['"', "\\", ":", ",", ": ", '"\\"', "\n", "Negative prompt: ", "Size: 512x768, "]),
    st.text(max_size=20),
)
_long_line = st.lists(_chunk, max_size=40).map("".join).filter(lambda s: len(s) <= 4000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_long_line)
def test_linear_scan_finds_exactly_a1111s_pairs(line):
    assert raw._param_pairs(line) == A1111_RE_PARAM.findall(line)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(prompt=_long_line, line=_long_line)
def test_parse_of_long_text_equals_parse_with_a1111s_regex(prompt, line):
    for text in (line, f"{prompt}\n{line}", f"{prompt}\nSteps: 1, Seed: 2, CFG scale: 3, {line}"):
        for defaults in (False, True):
            assert raw.parse(text, defaults=defaults) == reference_parse(text, defaults=defaults)


@pytest.mark.parametrize("text", [
    "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, ControlNet 0: "
    + json.dumps(json.dumps({"module": "canny", "weights": [0.5] * 20000, "note": 'a "b", c: d\\'})) + ", Seed: 1",
    "p\n" + ", ".join(f"Key {i}: value {i}" for i in range(5000)),
    ("word, (big:1.2), " * 5000) + "\nNegative prompt: " + ("ugly, " * 5000) + "\nSteps: 20, Seed: 1, CFG scale: 7",
    "p\nSteps: 20, Seed: 1, CFG scale: 7, " + '"x\\", ' * 10000,
], ids=["ControlNet JSON", "5000 pairs", "long prompts", "stray quotes"])
def test_long_real_shaped_infotexts_equal_a1111s_reading(text):
    assert raw.parse(text) == reference_parse(text)
    assert raw.parse(text, defaults=True) == reference_parse(text, defaults=True)


def _shapes(n: int) -> dict[str, str]:
    """Parameter lines of ``n`` characters that A1111's regex needs ~n**2 steps for, and realistic ones."""
    head = "Steps: 20, Sampler: Euler a, CFG scale: 7, "
    fill = n - len(head)
    return {
        "key characters without a colon": head + ("a b-c/d word " * n)[:fill],
        "whitespace before punctuation": head + ("\t" * 50 + ".") * (fill // 51),
        "stray quotes": head + ('k: "\\", ' * n)[:fill],
        "many pairs": "p\n" + ", ".join(f"Key {i}: value {i}" for i in range(n // 16)),
        "quoted JSON": head + "ControlNet 0: " + json.dumps(json.dumps({"w": "x, y: z " * (fill // 9)})),
        "many prompt lines": ("a cat, " * 3 + "\n") * (n // 22) + head,
    }


def _time_ratio(small: str, large: str, repeat: int = 7) -> float:
    """Best time for ``large`` over best time for ``small``, measured in turns so that a busy spell hits both.

    CPU time, not wall time: on a busy machine the longer run is more often preempted. The garbage collector is off
    while timing, as in ``timeit``: a full collection walks every object of the test process, whatever the input."""
    best = {small: float("inf"), large: float("inf")}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for text in (small, large):
                t0 = time.process_time()
                raw.parse(text)
                best[text] = min(best[text], time.process_time() - t0)
    finally:
        gc.enable()
    return best[large] / best[small]


@pytest.mark.parametrize("shape", list(_shapes(1000)))
def test_parse_time_grows_linearly(shape):
    """Twice the text takes at most 2.5x the time (a quadratic parse takes 4x): a pasted wildcard prompt or
    ControlNet JSON must not freeze the notebook. Minimum of several runs; a busy machine gets three tries."""
    small, large = _shapes(100_000)[shape], _shapes(200_000)[shape]
    ratios = []
    for _ in range(3):
        ratio = _time_ratio(small, large)
        ratios.append(ratio)
        if ratio <= 2.5:
            break
    assert min(ratios) <= 2.5, f"{shape}: time ratio {ratios} for 2x the text"


# ------------------------------------------------------------------------------------ bytes and types
TEXT = "a girl, 新世界\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768"


@pytest.mark.parametrize("data", [
    TEXT.encode(), b"\xef\xbb\xbf" + TEXT.encode(), TEXT.encode("utf-16"), b"\xfe\xff" + TEXT.encode("utf-16-be"),
    bytearray(TEXT.encode()), b"UNICODE\x00" + TEXT.encode("utf_16_be"),  # an EXIF UserComment, as piexif writes
], ids=["utf-8", "utf-8 BOM", "utf-16", "utf-16-be BOM", "bytearray", "EXIF UserComment"])
def test_bytes_are_decoded_not_read_as_their_repr(data):
    assert raw.parse(data) == raw.parse(TEXT)
    assert it.to_params(data) == it.to_params(TEXT)


def test_bytes_that_are_not_utf8_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="latin-1"):
        raw.parse("café\nSteps: 1, Seed: 2, CFG scale: 3".encode("latin-1"))


@pytest.mark.parametrize("value", [None, 123, ["a"]])
def test_parse_and_to_params_refuse_other_types_by_name(value):
    with pytest.raises(TypeError, match=type(value).__name__):
        raw.parse(value)
    with pytest.raises(TypeError, match=type(value).__name__):
        it.to_params(value)


# ------------------------------------------------------------------------------------ to_params
def _line(**fields) -> str:
    return "a cat\n" + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in {"Steps": 20, "Seed": 1, **fields}.items())


@pytest.mark.parametrize(("key", "value"), [
    ("Size", "64"), ("Size", "64 x 64"), ("Size", "512X768"), ("Size", "512x"), ("Size", "1e3x512"),
    ("Hires resize", "1920 x 1080"), ("Seed resize from", "512"),
])
def test_a_size_a1111_cannot_read_is_refused_not_dropped(key, value):
    with pytest.raises(ValueError, match=f"Infotext {key}: '{value}' is not a size"):
        it.to_params(f"a cat\nSteps: 20, Seed: 1, {key}: {value}")
    with pytest.raises(ValueError, match=f"Infotext {key}"):
        it.to_params({key: value})


def test_sizes_a1111_reads_are_read():
    p = it.to_params(_line(Size="64x64", **{"Seed resize from": "-1x-1"}))
    assert (p["width"], p["height"], p["seed_resize_from_w"], p["seed_resize_from_h"]) == (64, 64, -1, -1)
    assert it.to_params({"Size": " 640x448 "})["width"] == 640  # a dict from elsewhere may keep the spaces
    # A later unreadable Size does not undo an earlier readable one (A1111 keeps Size-1/-2).
    assert it.to_params("p\nSize: 512x768, Steps: 1, Seed: 2, Size: 64")["height"] == 768


@pytest.mark.parametrize(("key", "value"), [
    ("Seed", "inf"), ("Seed", "-inf"), ("Seed", "nan"), ("Seed", "1e400"),
    pytest.param("Steps", "1" + "0" * 5000, id="Steps-5001 digits"),
    ("Variation seed", "inf"), ("Clip skip", "inf"), ("Hires steps", "nan"),
    ("CFG scale", "nan"), ("CFG scale", "inf"), ("CFG scale", "1e400"), ("Denoising strength", "nan"),
    ("Variation seed strength", "inf"), ("Sigma noise", "inf"), ("Sigma churn", "nan"), ("Eta", "inf"),
    ("Hires upscale", "inf"), ("Extra noise", "nan"), ("Sigma tmax", "nan"),
    ("Tiling", "maybe"),
])
def test_a_value_no_field_can_hold_is_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"Infotext {key}: '{value[:40]}"):
        it.to_params(f"a cat\nSteps: 20, Seed: 1, CFG scale: 7, {key}: {value}")


def test_sigma_tmax_inf_means_no_limit():
    assert it.to_params(_line(**{"Sigma tmax": "inf"}))["s_tmax"] == float("inf")


@pytest.mark.parametrize(("key", "value", "field"), [
    ("Steps", "1e9", "steps"), ("Seed", "1e30", "seed"),
    ("CFG scale", "1e300", "cfg_scale"), ("Hires steps", "1e9", "hr_second_pass_steps"),
    ("Denoising strength", "1e9", "denoising_strength"),
])
def test_huge_values_are_refused_before_any_model_work(key, value, field):
    """to_params converts; the ranges are GenerationParams's, which txt2img and the panel check first."""
    params = it.to_params(f"a cat\nSteps: 20, Seed: 1, CFG scale: 7, Sampler: Euler, {key}: {value}")
    with pytest.raises(ValueError, match=f"^{field}="):
        GenerationParams.from_kwargs(**params)
