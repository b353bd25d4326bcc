"""Infotexts read exactly as A1111 reads them: a corpus of real infotexts against A1111's own parser.

Oracle: tests/fixtures/a1111/infotext_parse.json, written by A1111's ``parse_generation_parameters``
(modules/infotext_utils.py, 1.10) run on tests/fixtures/infotext_corpus.json and on a few written edge cases by
tests/fixtures/a1111/make_infotext_parse.py (see tests/fixtures/a1111/README.md). Nothing here comes from our code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import nbdiffuse.infotext as it
from nbdiffuse.io.infotext import A1111_DEFAULTS
from nbdiffuse.sampling.registry import SAMPLERS
from nbdiffuse.sampling.schedules import SCHEDULES

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = json.loads((FIXTURES / "infotext_corpus.json").read_text(encoding="utf8"))["entries"]
ORACLE = json.loads((FIXTURES / "a1111" / "infotext_parse.json").read_text(encoding="utf8"))
CASES = ([pytest.param(e["text"], ORACLE["corpus"][e["id"]], id=e["id"]) for e in CORPUS]
         + [pytest.param(c["text"], c["parsed"], id=f"edge-{i}") for i, c in enumerate(ORACLE["edge_cases"])])


def test_corpus_is_real_sourced_and_varied():
    real = [e for e in CORPUS if "derived" not in e]
    assert len(real) >= 50
    assert all(e["source"].strip() and e["text"] is not None for e in CORPUS)
    assert {e["id"] for e in CORPUS} == set(ORACLE["corpus"])
    texts = [e["text"] for e in real]

    def count(pattern: str) -> int:
        return sum(bool(re.search(pattern, t)) for t in texts)

    assert count(r"First pass size: 0x0") >= 5  # pre-1.0 hires fix
    assert count(r"Hypernet: ") >= 2
    assert count(r'ControlNet 0: "') >= 4
    assert count(r'Lora hashes: "') >= 3 and count(r'TI hashes: "') >= 3
    assert count(r"[\u4e00-\u9fff]") >= 1  # CJK
    assert count(r"Version: f\d") >= 1  # Forge
    assert count(r"Version: v1\.10") >= 1 and count(r"Version: v1\.[4-9]") >= 4
    assert count(r"Model hash: [0-9a-f]{8}(,|$)") >= 5  # 0.x-era 8-character hashes
    assert count(r"\n(?!Negative prompt:)[^\n]*\nNegative prompt:") >= 3  # multi-line prompts
    assert sum("Negative prompt:" not in t for t in texts) >= 10
    assert any("\r\n" in e["text"] for e in CORPUS)


@pytest.mark.parametrize("text, a1111", CASES)
def test_parse_with_defaults_is_a1111s_dict(text, a1111):
    ours = it.parse(text, defaults=True)
    assert ours == a1111
    assert list(ours) == list(a1111)  # same key order, so a rebuilt infotext keeps A1111's order


@pytest.mark.parametrize("text, a1111", CASES)
def test_parse_agrees_with_a1111_on_every_key_the_text_sets(text, a1111):
    ours = it.parse(text)
    for key, value in ours.items():
        if key not in a1111 and f"{key}-1" in ours:  # our whole "WxH" key, kept beside A1111's Key-1/Key-2
            assert value == f"{ours[key + '-1']}x{ours[key + '-2']}"
            continue
        assert a1111[key] == value, key
    # What A1111 has beyond that are its assumptions for keys the text lacks.
    extra = {k: v for k, v in a1111.items() if k not in ours}
    assumed = {**A1111_DEFAULTS, "Emphasis": "Original", "Cache FP16 weight for LoRA": False}
    assert {k: assumed.get(k, "<not a default>") for k in extra} == extra


def _check_params(params: dict, a1111: dict) -> None:
    assert params.get("prompt") == a1111["Prompt"]
    assert params.get("negative_prompt") == a1111["Negative prompt"]
    if "Steps" in a1111:
        assert params["steps"] == int(a1111["Steps"])
    if "CFG scale" in a1111:
        assert params["cfg_scale"] == float(a1111["CFG scale"])
    if "Seed" in a1111:
        assert params["seed"] == int(a1111["Seed"])
    if "Size-1" in a1111:
        assert (params["width"], params["height"]) == (int(a1111["Size-1"]), int(a1111["Size-2"]))
    if a1111.get("Sampler"):
        name, scheduler = params["sampler_name"], params["scheduler"]
        rest = a1111["Sampler"].removeprefix(name)
        if rest:  # pre-1.9 "DPM++ 2M Karras": the schedule was glued to the name
            label = rest.removeprefix(" ")
            assert label in SCHEDULES and rest == " " + label
            assert scheduler == label or (scheduler == "Automatic" and SAMPLERS[name].default_scheduler == label)
        elif a1111.get("Schedule type") and a1111["Schedule type"] != "Automatic":
            assert scheduler == a1111["Schedule type"]
    if "First pass size-1" in a1111:  # pre-1.0 hires fix: two passes, the second at the old Size
        assert params["enable_hr"] is True
        assert (params["hr_resize_x"], params["hr_resize_y"]) == (a1111["Hires resize-1"], a1111["Hires resize-2"])
    resize = int(a1111.get("Hires resize-1") or 0), int(a1111.get("Hires resize-2") or 0)
    if not a1111.get("Hires upscale") and resize == (0, 0):
        assert "enable_hr" not in params


@pytest.mark.parametrize("text, a1111", CASES)
def test_to_params_gives_a1111s_values_or_refuses_naming_the_key(text, a1111):
    for source in (text, it.parse(text), it.parse(text, defaults=True)):
        try:
            params = it.to_params(source)
        except ValueError as e:  # anything else (KeyError, TypeError...) fails the test
            m = re.match(r"Infotext ([^:]+): ", str(e))
            assert m and m.group(1) in a1111, str(e)
            continue
        _check_params(params, a1111)


def test_values_a1111_cannot_read_are_refused_by_name():
    with pytest.raises(ValueError, match=r"^Infotext Seed: '\[SEE COLUMN\]'"):
        it.to_params("cat\nSteps: 20, Sampler: Euler, CFG scale: 12, Seed: [SEE COLUMN], Size: 512x512")
    with pytest.raises(ValueError, match=r"^Infotext Steps: 'many'"):
        it.to_params("cat\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1")
