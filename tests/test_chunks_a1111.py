"""75-token chunks, comma backtracking and the token counter against A1111's own ``tokenize_line``.

Oracle: ``chunks`` of tests/fixtures/a1111/tokenizer_a1111.json.gz, made by A1111's
``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`` (modules/sd_hijack_clip.py) with its CLIP-L and OpenCLIP
tokenizers on long tag lists separated by ASCII and CJK commas, with emphasis and BREAK (see the README there).
"""

import gzip
import json
from pathlib import Path

import pytest
import torch

from nbdiffuse.models.tokenizer import clip_tokenizer, encode
from nbdiffuse.prompts.conditioning import TokenCount, count_tokens, tokenize_chunks

FIXTURE = Path(__file__).parent / "fixtures" / "a1111" / "tokenizer_a1111.json.gz"


@pytest.fixture(scope="module")
def a1111_chunks():
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))["chunks"]


@pytest.mark.parametrize("kind", ["clip_l", "open_clip"])
def test_chunks_weights_and_count_equal_a1111_tokenize_line(a1111_chunks, kind):
    bad = []
    for entry in a1111_chunks:
        expected = entry[kind] or entry["clip_l"]
        chunks, count = tokenize_chunks(entry["prompt"], clip_tokenizer(kind), entry["emphasis"])
        got = {"count": count, "tokens": [c.tokens for c in chunks], "weights": [c.weights for c in chunks]}
        if got != expected:
            bad.append(entry["prompt"])
    assert not bad, f"{len(bad)}/{len(a1111_chunks)} prompts chunked differently from A1111; first: {bad[:2]}"


def test_fixture_has_cjk_comma_backtracking_and_several_chunks(a1111_chunks):
    comma = encode(",")[0]
    multi = [e for e in a1111_chunks if len(e["clip_l"]["tokens"]) >= 3]
    cjk = [e for e in a1111_chunks if "，" in e["prompt"] or "、" in e["prompt"]]
    # a chunk that ends early right after a comma: backtracking happened
    moved = [e for e in cjk for c in e["clip_l"]["tokens"][:-1] if 49407 in c[1:-1] and
             c[c.index(49407, 1) - 1] == comma]
    assert len(multi) > 100 and len(cjk) > 50 and moved


def test_counter_matches_a1111_count_for_cjk_prompts(a1111_chunks):
    for entry in a1111_chunks[:40]:
        if entry["emphasis"] != "Original" or "BREAK" in entry["prompt"]:
            continue
        expected = entry["clip_l"]["count"]
        assert count_tokens(entry["prompt"]) == TokenCount(expected, len(entry["clip_l"]["tokens"]))


def test_embedding_name_in_full_width_matches_the_prompt():
    # A1111 tokenises embedding names with the encoder's tokenizer (ftfy included), so "ｍｙｓｔｙｌｅ" is "mystyle".
    from nbdiffuse.models.embeddings import Embedding

    emb = Embedding("ｍｙｓｔｙｌｅ", {"vec": torch.zeros(2, 768)})
    chunks, count = tokenize_chunks("a cat in mystyle，sunset", clip_tokenizer(), embeddings=[emb])
    (chunk,) = chunks
    assert [(offset, e.name) for offset, e in chunk.fixes] == [(3, "ｍｙｓｔｙｌｅ")]
    assert chunk.tokens[1:8] == [320, 2368, 530, 0, 0, 267, 3424] and count == 7


def test_attention_word_positions_use_the_same_tokens():
    from nbdiffuse.inspect.attention import word_positions

    tok = clip_tokenizer()
    assert word_positions("一只猫，阳光", "，", tok) == [1 + len(encode("一只猫"))]
    assert word_positions("ｃａｔ ｏｎ ａ ｍａｔ", "mat", tok) == [4]
