"""Our prompt parser against A1111's own (lark grammar) on a corpus of generated prompts.

Oracle: tests/fixtures/a1111/prompt_corpus.json.gz, the outputs of A1111's ``modules/prompt_parser.py``
(``get_learned_conditioning_prompt_schedules`` with first-pass, hires and old-scheduling variants,
``parse_prompt_attention``, ``get_multicond_prompt_list``), made outside the repository by
tests/fixtures/a1111/make_prompt_corpus.py (see the README there). Where A1111's Earley parser reads an ambiguous
prompt differently from one process to the next, any of the readings it produced is accepted.
"""

import gzip
import json
from pathlib import Path

import pytest

from nbdiffuse.prompts.parser import parse_attention, schedule, split_and

FIXTURE = Path(__file__).parent / "fixtures" / "a1111" / "prompt_corpus.json.gz"


@pytest.fixture(scope="module")
def prompts():
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))["prompts"]


def _total(variant) -> int:
    steps, hires_steps, old = variant
    return steps if hires_steps is None or old else hires_steps


def _ours_schedule(entry):
    steps, hires_steps, old = entry["v"]
    return [list(x) for x in schedule(entry["p"], steps, hires_steps, use_old_scheduling=old)]


def _raised(result) -> bool:
    return isinstance(result, dict)


def _report(bad, total, what):
    lines = "\n".join(f"  {p!r}: ours {ours!r}, A1111 {theirs!r}" for p, ours, theirs in bad[:5])
    return f"{len(bad)} of {total} prompts: {what} differs from A1111's\n{lines}"


def _schedule_outcomes(entry) -> list:
    """A1111's results for the entry's schedule: hash seed 0's, then those other processes gave."""
    return [entry.get("s", [[_total(entry["v"]), entry["p"]]]), *entry.get("alt", [])]


def test_schedules_equal_a1111(prompts):
    bad, checked = [], 0
    for entry in prompts:
        outcomes = _schedule_outcomes(entry)
        if any(_raised(o) for o in outcomes):
            continue  # see test_where_a1111_raises_we_still_answer
        checked += 1
        got = _ours_schedule(entry)
        if got not in outcomes:
            bad.append((entry["p"], got, outcomes[0]))
    assert checked > 0.99 * len(prompts)
    assert not bad, _report(bad, checked, "get_learned_conditioning_prompt_schedules")


def test_attention_equals_a1111(prompts):
    bad, checked = [], 0
    for entry in prompts:
        expected = entry.get("a", [[entry["p"], 1.0]])
        if _raised(expected):
            continue
        checked += 1
        got = [list(x) for x in parse_attention(entry["p"])]
        if got != expected:  # exact floats: A1111 multiplies in the same order
            bad.append((entry["p"], got, expected))
    assert not bad, _report(bad, checked, "parse_prompt_attention")


def test_and_split_equals_a1111(prompts):
    bad = []
    for entry in prompts:
        expected = entry.get("m", [[entry["p"], 1.0]])
        got = [list(x) for x in split_and(entry["p"])]
        if got != expected:
            bad.append((entry["p"], got, expected))
    assert not bad, _report(bad, len(prompts), "get_multicond_prompt_list")


def test_where_a1111_raises_we_still_answer(prompts):
    # A1111 raises ValueError on weights such as "(x:.)" and OverflowError on "[a:b:1e999]"; we keep going (the
    # deviations documented in nbdiffuse.prompts.parser).
    attention = [e for e in prompts if _raised(e.get("a"))]
    schedules = [e for e in prompts if any(_raised(o) for o in _schedule_outcomes(e))]
    assert {e["a"]["error"] for e in attention} == {"ValueError"} and len(attention) > 100
    errors = {o["error"] for e in schedules for o in _schedule_outcomes(e) if _raised(o)}
    assert errors == {"OverflowError"} and len(schedules) > 20
    for entry in attention:
        assert all(isinstance(t, str) and isinstance(w, float) for t, w in parse_attention(entry["p"]))
    for entry in schedules:
        got = _ours_schedule(entry)
        assert got[-1][0] == _total(entry["v"]) and all(a[0] < b[0] for a, b in zip(got, got[1:]))


def test_corpus_covers_the_prompt_language(prompts):
    def count(predicate):
        return sum(1 for e in prompts if predicate(e))

    def listed(entry, key) -> list:
        value = entry.get(key, [])
        return [] if _raised(value) else value

    scheduled = [e for e in prompts if isinstance(e.get("s"), list)]
    assert len(prompts) >= 30000
    assert count(lambda e: len(listed(e, "s")) == _total(e["v"]) > 3) > 1000  # alternation
    assert count(lambda e: 1 < len(listed(e, "s")) < _total(e["v"])) > 1000  # [a:b:N] switches
    assert sum(e["v"][1] is not None and not e["v"][2] for e in scheduled) > 1000  # hires pass
    assert sum(e["v"][2] for e in scheduled) > 300  # use_old_scheduling
    assert count(lambda e: "[" in e["p"] and ":" in e["p"] and "s" not in e) > 1000  # unparsable, kept as is
    assert count(lambda e: ["BREAK", -1] in listed(e, "a")) > 500
    assert count(lambda e: any(w != 1 for _, w in listed(e, "m"))) > 500
    assert count(lambda e: "alt" in e) > 10  # prompts A1111 itself reads differently per process
    assert count(lambda e: "\\" in e["p"]) > 1000 and count(lambda e: any(ord(c) > 0x2000 for c in e["p"])) > 1000
