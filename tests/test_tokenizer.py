"""The shipped CLIP BPE tokenizer: real ids, per-kind padding, and no network."""

import copy
import os
import socket
import subprocess
import sys
import textwrap

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nbdiffuse.models import tokenizer as tokmod  # noqa: E402
from nbdiffuse.models.tokenizer import BOS_ID, EOS_ID, clip_tokenizer  # noqa: E402

CAT = [49406, 320, 1125, 539, 320, 2368, 49407]
# Known SD ids (e.g. diffusers' docs / any SD1 pipeline run) for this prompt.
ASTRONAUT = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


@pytest.fixture
def no_network(monkeypatch):
    """Block every way of opening a connection; yields the list of attempts (must stay empty)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"network was tried: {attempts}"


@pytest.mark.parametrize("kind", ["clip_l", "open_clip"])
def test_known_ids(kind):
    tok = clip_tokenizer(kind)
    assert tok("a photo of a cat").input_ids == CAT
    assert tok("A photo of an astronaut riding a horse on Mars").input_ids == ASTRONAUT
    assert tok.convert_tokens_to_ids(",</w>") == 267
    assert tok("a cat, a dog").input_ids == [49406, 320, 2368, 267, 320, 1929, 49407]
    assert tok.bos_token_id == BOS_ID == 49406 and tok.eos_token_id == EOS_ID == 49407
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok.convert_ids_to_tokens([0, 256, 512, 49405]) == ["!", "!</w>", "in", "jekyll</w>"]


def test_vocab_matches_clip_simple_tokenizer_layout():
    vocab, merges = tokmod.clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 49152 - 256 - 2
    assert merges[0] == "i n" and vocab["in"] == 512
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_pad_token_per_kind():
    clip_l, open_clip = clip_tokenizer("clip_l"), clip_tokenizer("open_clip")
    assert clip_l.pad_token == "<|endoftext|>" and clip_l.pad_token_id == 49407
    assert open_clip.pad_token == "!" and open_clip.pad_token_id == 0
    padded = dict(padding="max_length", max_length=77, truncation=True)
    assert clip_l("a cat", **padded).input_ids == [49406, 320, 2368] + [49407] * 74
    assert open_clip("a cat", **padded).input_ids == [49406, 320, 2368, 49407] + [0] * 73
    assert len(clip_l("word " * 200, **padded).input_ids) == 77


def test_exclamation_mark_is_text_not_padding_in_open_clip():
    # open_clip / A1111 behaviour; the hub's SDXL tokenizer_2 maps "!" to 0 (diffusers issue #4153).
    for kind in ("clip_l", "open_clip"):
        assert clip_tokenizer(kind)("wow! !!!").input_ids == [49406, 2781, 256, 995, 49407]


def test_cached_and_unknown_kind():
    assert clip_tokenizer() is clip_tokenizer("clip_l")
    with pytest.raises(ValueError, match="unknown CLIP tokenizer kind"):
        clip_tokenizer("t5")


def test_builds_with_sockets_blocked(no_network, monkeypatch):
    monkeypatch.setattr(tokmod, "_files_dir", None)
    tokmod._build_tokenizer.cache_clear()
    try:
        for kind in ("clip_l", "open_clip"):
            assert clip_tokenizer(kind)("a photo of a cat").input_ids == CAT
    finally:
        tokmod._build_tokenizer.cache_clear()


def test_fresh_process_without_offline_env_never_touches_network():
    # The library must not rely on HF_HUB_OFFLINE: a fresh interpreter without it, sockets blocked.
    code = textwrap.dedent("""
        import socket
        tried = []
        def refuse(*a, **k):
            tried.append(a[1:] or k)
            raise OSError("blocked")
        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.create_connection = socket.getaddrinfo = refuse
        from nbdiffuse.models.tokenizer import clip_tokenizer
        ids = [clip_tokenizer(k)("a photo of a cat").input_ids for k in ("clip_l", "open_clip")]
        assert ids == [[49406, 320, 1125, 539, 320, 2368, 49407]] * 2, ids
        assert not tried, tried
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------- A1111's tokenisation (ftfy first)
# Oracle: tests/fixtures/a1111/tokenizer_a1111.json.gz, made by A1111's own tokenizer wrappers (transformers 4.30.2's
# slow CLIPTokenizer with ftfy for CLIP-L, open_clip 2.20.0's SimpleTokenizer for OpenCLIP), see its README section.

def _a1111_tokens():
    import gzip
    import json
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "a1111" / "tokenizer_a1111.json.gz"
    return json.loads(gzip.decompress(path.read_bytes()))


@pytest.fixture(scope="module")
def a1111_tokens():
    return _a1111_tokens()


def _mismatches(entries, kind):
    from nbdiffuse.models.tokenizer import token_ids

    texts = [e["text"] for e in entries]
    expected = [e[kind] if e[kind] is not None else e["clip_l"] for e in entries]
    got = token_ids(texts, clip_tokenizer(kind))
    return [(t, g, x) for t, g, x in zip(texts, got, expected) if g != x]


@pytest.mark.parametrize("kind", ["clip_l", "open_clip"])
def test_token_ids_equal_a1111_for_every_text_of_the_fixture(a1111_tokens, kind):
    entries = a1111_tokens["tokens"]
    assert {e["tag"] for e in entries} >= {"cjk", "fullwidth", "emoji", "accents", "mojibake", "html", "random"}
    bad = _mismatches(entries, kind)
    versions = a1111_tokens["about"]["versions"]
    assert not bad, (f"{len(bad)}/{len(entries)} texts tokenised differently from A1111 (fixture made with ftfy "
                     f"{versions['ftfy']}, regex {versions['regex']}); first: {bad[:3]}")


def test_fixture_exercises_the_clean_up(a1111_tokens):
    # Without ftfy (the fast tokenizer alone) most fixture texts come out differently: the fixture can catch a
    # missing clean-up, and OpenCLIP's extra HTML unescaping shows up in its own entries.
    entries = a1111_tokens["tokens"]
    raw = clip_tokenizer("clip_l")([e["text"] for e in entries], add_special_tokens=False)["input_ids"]
    assert sum(r != e["clip_l"] for r, e in zip(raw, entries)) > len(entries) // 2
    assert sum(e["open_clip"] is not None for e in entries) > 100


def test_cjk_prompt_is_41_tokens_as_in_a1111(a1111_tokens):
    from nbdiffuse.models.tokenizer import clean_text, encode
    from nbdiffuse.prompts.conditioning import count_tokens

    prompt = "一只可爱的猫，坐在窗台上，阳光，高清"
    (entry,) = [e for e in a1111_tokens["tokens"] if e["text"] == prompt]
    assert len(entry["clip_l"]) == 41 and encode(prompt) == entry["clip_l"]
    assert len(clip_tokenizer()(prompt, add_special_tokens=False).input_ids) == 47  # the fast tokenizer alone
    assert clean_text(prompt) == "一只可爱的猫,坐在窗台上,阳光,高清"
    assert str(count_tokens(prompt)) == "41/75"


@pytest.mark.parametrize(("text", "clip_l", "open_clip"), [
    ("ｃａｔ，ｄｏｇ", "cat,dog", "cat,dog"),
    ("Ã©tÃ© “Sun”", 'été "sun"', 'été "sun"'),
    ("ﬁne\u3000\u3000day\n", "fine day", "fine day"),
    ("<b>fish &amp; chips</b>", "<b>fish &amp; chips</b>", "<b>fish & chips</b>"),
])
def test_clean_text_per_encoder(text, clip_l, open_clip):
    from nbdiffuse.models.tokenizer import clean_text

    assert clean_text(text, "clip_l") == clip_l and clean_text(text, "open_clip") == open_clip


def test_special_token_spelling_differs_per_encoder():
    from nbdiffuse.models.tokenizer import encode

    assert encode("a <|endoftext|>") == [320, EOS_ID]
    assert encode("a <end_of_text>", "open_clip") == [320, EOS_ID]
    assert EOS_ID not in encode("a <|endoftext|>", "open_clip") and EOS_ID not in encode("a <end_of_text>")


def test_other_tokenizers_get_the_clean_up_too():
    from nbdiffuse.models.tokenizer import token_ids, tokenizer_kind

    other = copy.deepcopy(clip_tokenizer("open_clip"))  # not the shipped object: known by vocabulary and pad id
    assert tokenizer_kind(other) == "open_clip" and tokenizer_kind(clip_tokenizer()) == "clip_l"
    assert token_ids(["ＣＡＴ，ｄｏｇ"], other) == [[2368, 267, 1929]]
    assert token_ids(["cat,dog"], clip_tokenizer("open_clip")) == [[2368, 267, 1929]]
