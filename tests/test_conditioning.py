"""A1111's tokenisation into 75-token chunks, emphasis, clip skip, SDXL encoders, and the encoding cache."""

import pytest
import torch

from nbdiffuse.models.tokenizer import clip_tokenizer
from nbdiffuse.prompts.conditioning import TextEncoder, count_tokens, final_layer_norm, tokenize_chunks

TOK = clip_tokenizer()
BOS, EOS, COMMA = 49406, 49407, 267


def ids(text):
    return TOK(text, add_special_tokens=False)["input_ids"]


def test_a_break_b_counts_76_of_150():
    assert str(count_tokens("a BREAK b")) == "76/150"


def test_counter_for_short_empty_and_exact_chunk():
    assert str(count_tokens("")) == "0/75"
    assert str(count_tokens("a cat")) == "2/75"
    assert str(count_tokens(" ".join(["cat"] * 75))) == "75/75"
    assert str(count_tokens(" ".join(["cat"] * 76))) == "76/150"


def test_counter_ignores_extra_network_tags_and_takes_longest_and_part():
    assert str(count_tokens("a cat <lora:x:1> AND a big red dog")) == "4/75"


def test_chunk_is_bos_75_tokens_eos_padded_with_eos():
    chunks, count = tokenize_chunks("a photo of a cat", TOK)
    assert count == 5 and len(chunks) == 1
    c = chunks[0]
    assert len(c.tokens) == 77 and c.tokens[:7] == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert c.tokens[7:] == [EOS] * 70 and c.weights == [1.0] * 77


def test_open_clip_pads_with_zero_after_first_eos():
    chunks, _ = tokenize_chunks("a cat", TOK, pad_id=0)
    assert chunks[0].tokens[:4] == [BOS, 320, 2368, EOS] and chunks[0].tokens[4:] == [0] * 73


def test_break_starts_a_new_chunk():
    chunks, count = tokenize_chunks("a BREAK b", TOK)
    assert len(chunks) == 2 and count == 76
    assert chunks[0].tokens[1:3] == [320, EOS] and chunks[1].tokens[1:3] == [ids("b")[0], EOS]


def test_long_prompt_spills_into_more_chunks():
    text = " ".join(["cat"] * 100)
    chunks, count = tokenize_chunks(text, TOK)
    assert len(chunks) == 2 and count == 100
    assert chunks[0].tokens[1:76] == [2368] * 75 and chunks[1].tokens[1:26] == [2368] * 25


def test_comma_within_20_tokens_of_chunk_end_moves_the_rest_to_next_chunk():
    # 70 words, a comma (token 71), then 10 words: at the 76th token the comma is 5 tokens back.
    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks, _ = tokenize_chunks(text, TOK)
    first = chunks[0].tokens
    assert first[71] == COMMA and first[72] == EOS  # the chunk ends right after the comma
    assert chunks[1].tokens[1:5] == [1929] * 4 and chunks[1].tokens[1:11] == [1929] * 10


def test_comma_further_back_than_20_tokens_does_not_move_anything():
    text = "cat, " + " ".join(["dog"] * 80)
    chunks, _ = tokenize_chunks(text, TOK)
    assert chunks[0].tokens[1:3] == [2368, COMMA] and chunks[0].tokens[76] == EOS
    assert chunks[0].tokens[75] == 1929


def test_emphasis_weights_follow_tokens_and_none_mode_keeps_brackets():
    chunks, _ = tokenize_chunks("a (red:1.5) ball", TOK)
    assert chunks[0].weights[1:4] == [1.0, 1.5, 1.0]
    ignore, _ = tokenize_chunks("a (red:1.5) ball", TOK, emphasis="Ignore")
    assert ignore[0].weights[1:4] == [1.0, 1.0, 1.0] and ignore[0].tokens == chunks[0].tokens
    raw, _ = tokenize_chunks("a (red:1.5) ball", TOK, emphasis="None")
    assert raw[0].tokens[1:4] != chunks[0].tokens[1:4]  # "(" is a token there
    with pytest.raises(ValueError, match="emphasis"):
        tokenize_chunks("a", TOK, emphasis="Strong")


def raw_hidden(bundle, token_ids, layer=None):
    enc = bundle.text_encoders[0]
    out = enc(input_ids=torch.tensor([token_ids]), output_hidden_states=True)
    if layer is None:
        return out.last_hidden_state[0]
    return final_layer_norm(enc)(out.hidden_states[layer])[0]


@torch.no_grad()
def test_original_emphasis_scales_tokens_then_restores_the_mean(sd1):
    enc = TextEncoder(sd1)
    chunk = tokenize_chunks("a (red:1.5) ball", TOK)[0][0]
    z = raw_hidden(sd1, chunk.tokens)
    w = torch.tensor(chunk.weights).unsqueeze(-1)
    expected = z * w * (z.mean() / (z * w).mean())
    assert torch.allclose(enc.encode("a (red:1.5) ball").context, expected, atol=1e-6)
    nonorm = TextEncoder(sd1, emphasis="No norm").encode("a (red:1.5) ball").context
    assert torch.allclose(nonorm, z * w, atol=1e-6)
    ignore = TextEncoder(sd1, emphasis="Ignore").encode("a (red:1.5) ball").context
    assert torch.allclose(ignore, z, atol=1e-6)


@torch.no_grad()
def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(sd1):
    chunk = tokenize_chunks("a red ball", TOK)[0][0]
    enc = TextEncoder(sd1)
    assert torch.allclose(enc.encode("a red ball", clip_skip=1).context, raw_hidden(sd1, chunk.tokens), atol=1e-6)
    assert torch.allclose(enc.encode("a red ball", clip_skip=2).context, raw_hidden(sd1, chunk.tokens, -2),
                          atol=1e-6)


@torch.no_grad()
def test_chunks_are_encoded_separately_and_concatenated(sd1):
    enc = TextEncoder(sd1)
    cond = enc.encode("a BREAK b")
    assert cond.context.shape == (154, 32)
    chunks, _ = tokenize_chunks("a BREAK b", TOK)
    assert torch.allclose(cond.context[77:], raw_hidden(sd1, chunks[1].tokens), atol=1e-6)


@torch.no_grad()
def test_sdxl_concatenates_penultimate_states_and_pools_from_the_second_encoder(sdxl):
    enc = TextEncoder(sdxl)
    cond = enc.encode("a red ball BREAK on grass")
    widths = [e.config.hidden_size for e in sdxl.text_encoders]
    assert cond.context.shape == (154, sum(widths))
    chunks_l, _ = tokenize_chunks("a red ball BREAK on grass", sdxl.tokenizers[0])
    chunks_g, _ = tokenize_chunks("a red ball BREAK on grass", sdxl.tokenizers[1], pad_id=0)
    out_l = sdxl.text_encoders[0](input_ids=torch.tensor([chunks_l[0].tokens]), output_hidden_states=True)
    out_g = sdxl.text_encoders[1](input_ids=torch.tensor([chunks_g[0].tokens]), output_hidden_states=True)
    assert torch.allclose(cond.context[:77, :widths[0]], out_l.hidden_states[-2][0], atol=1e-6)
    assert torch.allclose(cond.context[:77, widths[0]:], out_g.hidden_states[-2][0], atol=1e-6)
    assert torch.allclose(cond.pooled, out_g.text_embeds[0], atol=1e-6)


def test_encodings_are_cached_per_text_and_settings(sd1):
    enc = TextEncoder(sd1)
    enc.encode("a cat")
    calls = enc.calls
    enc.encode("a cat")
    assert enc.calls == calls
    enc.encode("a cat", clip_skip=2)
    assert enc.calls == calls + 1


def test_prompt_schedule_and_and_become_weighted_schedules(sd1):
    enc = TextEncoder(sd1)
    conds = enc.conds("[red:blue:0.5] ball AND tree :0.8", 10)
    assert [w for _, w in conds] == [1.0, 0.8]
    (sched, _), (tree, _) = conds
    assert [end for end, _ in sched] == [5, 10]
    assert torch.equal(sched[0][1].context, enc.encode("red ball").context)
    assert torch.equal(sched[1][1].context, enc.encode("blue ball").context)
    assert torch.equal(tree[0][1].context, enc.encode(" tree").context)
    assert len(enc.uncond("a AND b", 10)) == 1  # negative prompts are never split
