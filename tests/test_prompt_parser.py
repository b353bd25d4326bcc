"""A1111 v1.10.1 prompt language (A1111.md, "Prompt language" and "Styles"), rule by rule.

Expected values were derived by hand from A1111's rules (and cross-checked against A1111's own algorithm
outside this repository); the reasoning is in each test's docstring or comments.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbdiffuse.prompts.parser import (
    ExtraNetwork,
    extract_extra_networks,
    get_schedules,
    parse_attention,
    schedule,
    split_and,
)
from nbdiffuse.prompts.styles import Style, apply_styles, extract_styles, load_styles, save_styles

R = 1.1
S = 1 / 1.1


# ---------------------------------------------------------------------------------------------- emphasis


def test_plain_text_is_one_run_of_weight_one():
    assert parse_attention("normal text") == [("normal text", 1.0)]


def test_empty_text_is_single_empty_run():
    assert parse_attention("") == [("", 1.0)]


def test_round_brackets_multiply_by_1_1():
    assert parse_attention("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]


def test_square_brackets_divide_by_1_1():
    assert parse_attention("a [b] c") == [("a ", 1.0), ("b", 1 / 1.1), (" c", 1.0)]


def test_explicit_weight():
    assert parse_attention("(x:1.5)") == [("x", 1.5)]
    assert parse_attention("a (b:1.2) c") == [("a ", 1), ("b", 1.2), (" c", 1)]


def test_explicit_weight_allows_spaces_and_sign():
    # ":\s*([+-]?[.\d]+)\s*\)" -- whitespace on both sides, optional sign
    assert parse_attention("(x: 0.5 )") == [("x", 0.5)]
    assert parse_attention("(x:+2)") == [("x", 2.0)]
    assert parse_attention("(x:-1)") == [("x", -1.0)]


def test_nested_round_brackets_multiply_as_floats():
    # inner ")" multiplies by 1.1, outer ")" multiplies the result by 1.1 again
    assert parse_attention("((x))") == [("x", 1.1 * 1.1)]
    assert parse_attention("((x))")[0][1] == 1.2100000000000002


def test_mixed_nesting_matches_a1111_doc_example():
    # "(((house:1.3))": ":1.3)" closes the third "(" (x1.3), ")" the second (x1.1); the first "(" is never
    # closed, so everything from "house" on gets a final x1.1 (unclosed brackets apply to the end).
    got = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert got == [
        ("a ", 1.0),
        ("house", 1.3 * R * R),
        (" ", R),
        ("on", S * R),
        (" a ", R),
        ("hill", 0.5 * R),
        (", sun, ", R),
        ("sky", R * R * R * R),
        (".", R),
    ]
    assert got[1][1] == 1.5730000000000004
    assert got[3][1] == 1.0 and got[7][1] == 1.4641000000000006


def test_unclosed_bracket_applies_to_end():
    assert parse_attention("(unbalanced") == [("unbalanced", 1.1)]
    assert parse_attention("a [b") == [("a ", 1.0), ("b", 1 / 1.1)]


def test_unclosed_round_brackets_are_applied_before_unclosed_square_ones():
    # "[(x" -> round first (x*1.1), then square (*1/1.1): float order matters
    assert parse_attention("[(x") == [("x", 1.0 * R * S)]


def test_stray_closers_are_literal():
    assert parse_attention("a) b] c") == [("a) b] c", 1.0)]
    assert parse_attention("(a))") == [("a", 1.1), (")", 1.0)]


def test_round_and_square_brackets_have_separate_stacks():
    # "(" opens round, "[" opens square; ")" closes the round one even though "[" is innermost
    assert parse_attention("(a [b) c]") == [("a ", R), ("b", R * S), (" c", S)]


def test_equal_weight_runs_merge():
    assert parse_attention("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]


def test_escapes_are_literal():
    assert parse_attention("\\(literal\\]") == [("(literal]", 1.0)]
    assert parse_attention("\\[a\\) \\\\") == [("[a) \\", 1.0)]


def test_escaped_text_inside_brackets_is_weighted():
    assert parse_attention("(\\(x\\))") == [("(x)", 1.1)]


def test_other_backslashes_are_dropped():
    # the "\\" alternative matches a lone backslash and contributes text[1:] == ""
    assert parse_attention("a\\b") == [("ab", 1.0)]
    assert parse_attention("a\\") == [("a", 1.0)]


def test_weight_needs_round_bracket_so_colon_in_square_brackets_is_literal():
    # "[" pushes; ":0.5]" cannot be a weight (the weight alternative ends in ")"), so ":" and "0.5" are
    # text and "]" divides everything by 1.1
    assert parse_attention("[x:0.5]") == [("x:0.5", 1 / 1.1)]


def test_weight_without_open_round_bracket_is_literal():
    assert parse_attention("a:1.5)") == [("a:1.5)", 1.0)]


def test_weight_closes_round_bracket_even_inside_square_bracket():
    # "(a [b:1.5)": ":1.5)" pops the "(" (x1.5 on "a ", "b"); the "[" stays open -> b also /1.1
    assert parse_attention("(a [b:1.5)") == [("a ", 1.5), ("b", 1.5 * S)]


def test_colon_not_followed_by_number_is_literal():
    assert parse_attention("(a:b)") == [("a:b", 1.1)]
    # "1e5" is not [.\d]+ so ":" is literal and ")" is a plain close
    assert parse_attention("(x:1e5)") == [("x:1e5", 1.1)]


def test_malformed_weight_does_not_raise_and_acts_like_plain_close():
    # A1111 raises ValueError on float("."); we treat ":." as text and ")" as a x1.1 close.
    assert parse_attention("(x:.)") == [("x:.", 1.1)]
    assert parse_attention("(x:1.2.3)") == [("x:1.2.3", 1.1)]


def test_break_outside_brackets_is_minus_one_marker_eating_whitespace():
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]


def test_break_alone_keeps_empty_runs_around_it():
    assert parse_attention("BREAK") == [("", 1.0), ("BREAK", -1.0), ("", 1.0)]


def test_break_must_be_uppercase_own_word():
    assert parse_attention("a break b") == [("a break b", 1.0)]
    assert parse_attention("BREAKFAST xBREAK BREAK_1") == [("BREAKFAST xBREAK BREAK_1", 1.0)]
    assert parse_attention("a,BREAK,b") == [("a,", 1.0), ("BREAK", -1.0), (",b", 1.0)]


def test_break_inside_brackets_is_weighted_so_not_a_chunk_marker():
    # The BREAK entry is multiplied like the text around it: -1.1 != -1, so a chunker treats it as the word
    # "break" (A1111's behaviour: only weight exactly -1 ends a chunk).
    assert parse_attention("(a BREAK b)") == [("a", R), ("BREAK", -R), ("b", R)]
    assert parse_attention("[BREAK]") == [("", S), ("BREAK", -S), ("", S)]


def test_two_breaks_keep_empty_run_between():
    assert parse_attention("a BREAK BREAK b") == [
        ("a", 1.0),
        ("BREAK", -1.0),
        ("", 1.0),
        ("BREAK", -1.0),
        ("b", 1.0),
    ]


# ---------------------------------------------------------------------------------------------- schedules


def test_plain_prompt_has_one_entry():
    assert schedule("test", 10) == [(10, "test")]


def test_add_after():
    # [b:3] is [:b:3]: "" for steps 1..3, "b" from step 4
    assert schedule("a [b:3]", 10) == [(3, "a "), (10, "a b")]
    assert schedule("a [b: 3]", 10) == [(3, "a "), (10, "a b")]


def test_from_to_with_spaces_kept_in_texts():
    assert schedule("a [b : c : 1] d", 10) == [(1, "a b  d"), (10, "a  c  d")]


def test_remove_after():
    assert schedule("a [b::4] c", 10) == [(4, "a b c"), (10, "a  c")]
    assert schedule("[:b:4]", 10) == [(4, ""), (10, "b")]


def test_fraction_of_steps():
    # "." in N -> when = int(0.5 * 10) = 5
    assert schedule("a [b:.5] c", 10) == [(5, "a  c"), (10, "a b c")]
    assert schedule("[a:b:0.25]", 20) == [(5, "a"), (20, "b")]


def test_fraction_one_never_switches():
    # when = min(20, int(1.0 * 20)) = 20 = steps: before for all 20 steps
    assert schedule("[a:b:1.0]", 20) == [(20, "a")]


def test_tiny_fraction_is_after_throughout():
    # when = int(0.01 * 20) = 0 -> no boundary, and no step t satisfies t <= 0
    assert schedule("[a:b:0.01]", 20) == [(20, "b")]


def test_exponent_without_dot_is_an_integer_step():
    # "5e-1" has no "." -> absolute: int(0.5) = 0 -> b throughout
    assert schedule("[a:b:5e-1]", 20) == [(20, "b")]
    # "1e1" -> step 10
    assert schedule("[a:b:1e1]", 20) == [(10, "a"), (20, "b")]


def test_integer_larger_than_steps_clamps_to_never_switching():
    assert schedule("[a:b:50]", 20) == [(20, "a")]


def test_zero_and_negative_steps_are_after_throughout():
    assert schedule("[a:b:0]", 20) == [(20, "b")]
    assert schedule("[a:b:-3]", 20) == [(20, "b")]


def test_signed_and_dotted_integer_forms():
    assert schedule("[a:b:+5]", 20) == [(5, "a"), (20, "b")]
    # "5." has a dot -> fraction 5*20 -> clamped to 20
    assert schedule("[a:b:5.]", 20) == [(20, "a")]


def test_emphasis_inside_schedule_is_kept_verbatim():
    assert schedule("[(a:2):3]", 10) == [(3, ""), (10, "(a:2)")]
    assert schedule("a [[[b]]:2]", 10) == [(2, "a "), (10, "a [[b]]")]


def test_nested_schedule_boundaries_all_collected():
    # outer switches at 5 to the inner schedule, which switches at 10; all boundaries are kept
    assert schedule("[a:[b:c:10]:5]", 20) == [(5, "a"), (10, "b"), (20, "c")]
    assert schedule("a[b:[c:d:2]:1]e", 10) == [(1, "abe"), (2, "ace"), (10, "ade")]


def test_nested_boundary_kept_even_when_branch_unused():
    # [a:b:5] lives in "before" of the outer schedule which ends at 3, but its boundary 5 still appears
    assert schedule("[[a:b:5]:c:3]", 10) == [(3, "a"), (5, "c"), (10, "c")]


def test_alternation_boundary_every_step():
    assert schedule("[a|b]", 4) == [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
    assert schedule("[a|(b:1.1)]", 3) == [(1, "a"), (2, "(b:1.1)"), (3, "a")]


def test_alternation_with_empty_options():
    # args[(t-1) % n]; empty options render as ""
    assert schedule("[fe|]male", 4) == [(1, "female"), (2, "male"), (3, "female"), (4, "male")]
    assert [t for _, t in schedule("[fe|||]male", 5)] == ["female", "male", "male", "male", "female"]


def test_alternation_inside_schedule():
    assert schedule("[x:[a|b]:2]", 4) == [(1, "x"), (2, "x"), (3, "a"), (4, "b")]


def test_same_text_on_both_sides_still_makes_a_boundary():
    assert schedule("[a:a:5]", 10) == [(5, "a"), (10, "a")]


def test_unclosed_bracket_is_literal():
    assert schedule("a [unbalanced", 10) == [(10, "a [unbalanced")]


def test_stray_brackets_at_top_level_are_literal_around_schedules():
    assert schedule("((a][:b:c [d:3]", 10) == [(3, "((a][:b:c "), (10, "((a][:b:c d")]


def test_invalid_bracket_content_is_literal():
    # three colons, or a non-number last field, are not a schedule; the brackets are then stray text
    assert schedule("[a:b:c:5]", 10) == [(10, "[a:b:c:5]")]
    assert schedule("[a:b]", 10) == [(10, "[a:b]")]
    assert schedule("[a:b:5x]", 10) == [(10, "[a:b:5x]")]
    assert schedule("(a:b:c)", 10) == [(10, "(a:b:c)")]


def test_failed_outer_bracket_keeps_inner_schedule():
    # "(" cannot hold two colons, so it is stray text, but the complete [a:b:5] inside stays a schedule
    assert schedule("([a:b:5]:c:d)", 10) == [(5, "(a:c:d)"), (10, "(b:c:d)")]


def test_construct_wins_over_stray_reading_next_to_stray_closer():
    # "[a:3]]" is either schedule + stray "]" or all stray text; A1111's Earley parser picks one depending
    # on the process's hash seed. We always take the construct (one of A1111's possible results).
    assert schedule("[a:3]]", 10) == [(3, "]"), (10, "a]")]
    assert schedule("x [a:b:5]]", 10) == [(5, "x a]"), (10, "x b]")]
    assert schedule("[[a]:.5]]", 10) == [(5, "]"), (10, "[a]]")]


def test_mismatched_bracket_kinds_are_literal():
    assert schedule("(a [b)", 10) == [(10, "(a [b)")]
    assert schedule("[a:b:5)", 10) == [(10, "[a:b:5)")]


@pytest.mark.parametrize(
    "prompt",
    [
        "a|b",  # "|" only exists inside [...]
        "(a|b)",  # not inside round brackets either
        "[a:b|c:5]",  # nor mixed with ":"
        "[a|b",  # unclosed alternation
        "x\\",  # trailing backslash
        "x\\\ny [a:b:3]",  # backslash before newline
        "a [{b|d{:.5] c",
    ],
)
def test_unparsable_prompt_returned_unchanged(prompt):
    assert schedule(prompt, 10) == [(10, prompt)]
    assert schedule(prompt, 20, 7) == [(7, prompt)]


def test_escaped_brackets_are_not_schedule_syntax_and_are_kept():
    assert schedule("\\[a:b:3\\]", 10) == [(10, "\\[a:b:3\\]")]
    assert schedule("a\\|b", 10) == [(10, "a\\|b")]


def test_hires_fraction_runs_from_one_to_two():
    # when = int((1.5 - 1) * 10) = 5 hires steps
    assert schedule("[a:b:1.5]", 20, 10) == [(5, "a"), (10, "b")]
    assert schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]


def test_hires_integer_counts_on_from_first_pass():
    # when = 25 - 20 = 5 hires steps
    assert schedule("[a:b:25]", 20, 10) == [(5, "a"), (10, "b")]


def test_first_pass_switches_are_over_before_hires():
    # .5 -> (0.5 - 1) * 10 < 1 ; 15 -> 15 - 20 < 1: "after" for the whole hires pass
    assert schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert schedule("[a:b:15]", 20, 10) == [(10, "b")]
    # and a switch past the end of hires never happens
    assert schedule("[a:b:2.0]", 20, 10) == [(10, "a")]
    assert schedule("[a:b:99]", 20, 10) == [(10, "a")]


def test_hires_alternation_counts_hires_steps():
    assert schedule("[a|b]", 20, 3) == [(1, "a"), (2, "b"), (3, "a")]


def test_old_scheduling_option():
    # pre-1.6: N < 1 is a fraction, else absolute; hires offsets ignored
    assert schedule("[a:b:0.5]", 10, use_old_scheduling=True) == [(5, "a"), (10, "b")]
    assert schedule("[a:b:3.0]", 10, use_old_scheduling=True) == [(3, "a"), (10, "b")]
    assert schedule("[a:b:3]", 10, 5, use_old_scheduling=True) == [(3, "a"), (10, "b")]


def test_get_schedules_keeps_order_and_duplicates():
    assert get_schedules(["a", "[a:b:2]", "a"], 4) == [[(4, "a")], [(2, "a"), (4, "b")], [(4, "a")]]


def test_overflowing_number_does_not_raise():
    # A1111 raises OverflowError here; we clamp (+inf -> steps, -inf -> after throughout)
    assert schedule("[a:b:1e999]", 10) == [(10, "a")]
    assert schedule("[a:b:-1e999]", 10) == [(10, "b")]
    assert schedule("[a:b:1.0e999]", 0) == [(0, "a")]


def test_deep_nesting_does_not_recurse():
    deep = "(" * 5000 + "a [b:c:3]"
    assert schedule(deep, 5) == [(3, "(" * 5000 + "a b"), (5, "(" * 5000 + "a c")]
    nested = "[" * 3000 + "x" + "]" * 3000
    assert schedule(nested, 4) == [(4, nested)]
    chain = "[a:" * 2000 + "b" + ":1]" * 2000
    assert schedule(chain, 3)[-1] == (3, "b")


# ---------------------------------------------------------------------------------------------- AND


def test_and_split_with_weight():
    # A1111 keeps the leading space of a part (it does not change the tokens); trailing ones go
    assert split_and("a cat :1.2 AND a dog") == [("a cat", 1.2), (" a dog", 1.0)]


def test_and_is_case_sensitive_whole_word():
    assert split_and("a and b") == [("a and b", 1.0)]
    assert split_and("ANDROID BRAND") == [("ANDROID BRAND", 1.0)]


def test_and_weight_forms():
    assert split_and("a:-0.5 AND b: .5") == [("a", -0.5), (" b", 0.5)]
    assert split_and("x :2.") == [("x", 2.0)]
    assert split_and("(x:1.2)") == [("(x:1.2)", 1.0)]


def test_and_keeps_empty_parts():
    assert split_and("a AND") == [("a", 1.0), ("", 1.0)]
    assert split_and("") == [("", 1.0)]


def test_and_multiline_part():
    assert split_and("a\nb :3") == [("a\nb", 3.0)]


# ------------------------------------------------------------------------------------------ extra networks


def test_extra_network_removed_and_collected():
    text, nets = extract_extra_networks("a <lora:detail:0.6> b")
    assert text == "a  b"
    assert nets == [ExtraNetwork("lora", ["detail", "0.6"])]
    assert nets[0].kind == "lora" and nets[0].name == "detail" and nets[0].weights == [0.6]


def test_extra_network_multiple_args_and_named():
    _, [net] = extract_extra_networks("<lora:x:0.5:0.8:te=0.3>")
    assert net.items == ["x", "0.5", "0.8", "te=0.3"]
    assert net.args == ["0.5", "0.8", "te=0.3"]
    assert net.weights == [0.5, 0.8]
    assert net.named == {"te": "0.3"}


def test_extra_network_non_numeric_weight_is_none():
    _, [net] = extract_extra_networks("<hypernet:h:strong>")
    assert net.name == "h" and net.weights == [None]


def test_extra_network_needs_word_kind_and_nonempty_args():
    assert extract_extra_networks("<lora:> <:x> <a b:c>") == ("<lora:> <:x> <a b:c>", [])


def test_extra_networks_in_order():
    text, nets = extract_extra_networks("<lora:a:1>x<hypernet:b>y<lora:c:0.5>")
    assert text == "xy"
    assert [(n.kind, n.name) for n in nets] == [("lora", "a"), ("hypernet", "b"), ("lora", "c")]


# ---------------------------------------------------------------------------------------------- styles

STYLES = {
    "quality": Style("quality", "masterpiece, best quality", "lowres, blurry"),
    "frame": Style("frame", "a photo of {prompt}, 35mm", "{prompt}, cartoon"),
    "neg_only": Style("neg_only", "", "watermark"),
}


def test_style_appended_with_comma():
    assert apply_styles("a cat", "ugly", ["quality"], STYLES) == (
        "a cat, masterpiece, best quality",
        "ugly, lowres, blurry",
    )


def test_style_with_placeholder_substitutes():
    assert apply_styles("a cat", "", ["frame"], STYLES) == ("a photo of a cat, 35mm", ", cartoon")


def test_styles_apply_in_order():
    assert apply_styles("a cat", "", ["frame", "quality"], STYLES)[0] == (
        "a photo of a cat, 35mm, masterpiece, best quality"
    )
    assert apply_styles("a cat", "", ["quality", "frame"], STYLES)[0] == (
        "a photo of a cat, masterpiece, best quality, 35mm"
    )


def test_style_on_empty_prompt_is_just_the_style():
    assert apply_styles("", "", ["quality"], STYLES) == ("masterpiece, best quality", "lowres, blurry")


def test_empty_or_unknown_style_only_strips_the_prompt():
    assert apply_styles("  a cat  ", " x ", ["neg_only"], STYLES) == ("a cat", "x, watermark")
    assert apply_styles("  a cat  ", " x ", ["nope"], STYLES) == ("a cat", "x")


def test_extract_styles_reverses_apply():
    for names in (["quality"], ["frame"], ["frame", "quality"], ["quality", "neg_only"]):
        prompt, neg = apply_styles("a cat", "ugly", names, STYLES)
        assert extract_styles(prompt, neg, STYLES) == (names, "a cat", "ugly")


def test_extract_styles_needs_both_prompts_to_match():
    assert extract_styles("a cat, masterpiece, best quality", "ugly", STYLES) == (
        [],
        "a cat, masterpiece, best quality",
        "ugly",
    )


def test_style_with_two_placeholders_substitutes_both_and_extract_does_not_raise():
    styles = {"twice": Style("twice", "{prompt} and {prompt}", "")}
    assert apply_styles("x", "", ["twice"], styles) == ("x and x", "")
    assert extract_styles("x and x", "", styles) == ([], "x and x", "")


def test_extract_styles_without_styles_is_identity():
    assert extract_styles(" a ", " b ", STYLES) == ([], " a ", " b ")


def test_styles_file_round_trip(tmp_path):
    path = tmp_path / "styles.csv"
    styles = dict(STYLES)
    styles["tricky"] = Style("tricky", 'has "quotes", commas\nand newline', "é ü")
    save_styles(styles, path)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf" + b"name,prompt,negative_prompt")
    assert load_styles(path) == styles


def test_load_styles_a1111_file_forms(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(
        "name,prompt,negative_prompt\n#comment,x,y\nshort,only prompt\nspaced, lead,  neg\n",
        encoding="utf-8-sig",
    )
    assert load_styles(path) == {
        "short": Style("short", "only prompt", ""),
        "spaced": Style("spaced", "lead", "neg"),
    }
    old = tmp_path / "old.csv"
    old.write_text("name,text\nq,best\n", encoding="utf-8")
    assert load_styles(old) == {"q": Style("q", "best", "")}


def test_load_styles_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        load_styles(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------- fuzzing

_PIECES = [
    "a",
    "b",
    "cat",
    " ",
    "(",
    ")",
    "[",
    "]",
    ":",
    "|",
    "1",
    "5",
    "0.5",
    "1.5",
    ".",
    "e3",
    "BREAK",
    " BREAK ",
    "AND",
    " AND ",
    "\\",
    "\\(",
    "\\]",
    "\\\\",
    "<lora:x:0.6>",
    "-",
    "\n",
    "{prompt}",
]
grammarish = st.lists(st.sampled_from(_PIECES), max_size=25).map("".join)
any_text = st.one_of(st.text(max_size=60), grammarish)
_EXPLICIT_WEIGHT = re.compile(r":\s*[+-]?[.\d]+\s*\)")


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_attention_total_and_weights_positive_unless_explicit(text):
    res = parse_attention(text)
    assert res and all(isinstance(t, str) and isinstance(w, float) for t, w in res)
    if _EXPLICIT_WEIGHT.search(text) is None:
        for t, w in res:
            assert (w < 0) if t == "BREAK" and w < 0 else (w > 0)
    # merging: no two neighbours share a weight
    assert all(a[1] != b[1] for a, b in zip(res, res[1:]))


# words and balanced/unbalanced brackets only: the text is the input minus bracket characters
simple = st.lists(st.sampled_from(["a", "b c", " ", "(", ")", "[", "]", "x,y"]), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(simple)
def test_parse_attention_text_is_input_without_brackets_for_simple_prompts(text):
    res = parse_attention(text)
    joined = "".join(t for t, _ in res)
    # closers with nothing open stay; everything else bracket-like is syntax
    depth_r = depth_s = 0
    expected = []
    for ch in text:
        if ch == "(":
            depth_r += 1
        elif ch == "[":
            depth_s += 1
        elif ch == ")" and depth_r:
            depth_r -= 1
        elif ch == "]" and depth_s:
            depth_s -= 1
        else:
            expected.append(ch)
    assert joined == "".join(expected)


@settings(max_examples=300, deadline=None)
@given(any_text, st.integers(min_value=1, max_value=40), st.one_of(st.none(), st.integers(1, 30)))
def test_schedule_total_and_sorted_ending_at_steps(prompt, steps, hires):
    res = schedule(prompt, steps, hires)
    total = steps if hires is None else hires
    ends = [e for e, _ in res]
    assert ends == sorted(set(ends)) and ends[-1] == total and ends[0] >= 1
    assert all(isinstance(t, str) for _, t in res)
    if not any(c in prompt for c in "[]"):
        assert res == [(total, prompt)]


@settings(max_examples=200, deadline=None)
@given(any_text, st.integers(min_value=-3, max_value=3))
def test_schedule_total_for_degenerate_step_counts(prompt, steps):
    assert schedule(prompt, steps)[-1][0] == steps


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_split_and_total(prompt):
    parts = split_and(prompt)
    assert len(parts) == len(re.findall(r"\bAND\b", prompt)) + 1
    assert all(isinstance(t, str) and isinstance(w, float) for t, w in parts)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_extract_extra_networks_total(prompt):
    text, nets = extract_extra_networks(prompt)
    assert len(nets) == len(re.findall(r"<(\w+):([^>]+)>", prompt))
    for n in nets:
        n.name, n.weights, n.named  # noqa: B018 -- properties never raise
    assert re.search(r"<(\w+):([^>]+)>", prompt) is not None or text == prompt
