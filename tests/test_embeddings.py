"""Textual-inversion embeddings: file formats, compatibility checks, A1111's token replacement and chunk rules,
the encoder output with substituted token embeddings, hashes."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from nbdiffuse.models.embeddings import EmbeddingDB, load_embedding, load_embeddings, ti_hashes
from nbdiffuse.prompts.conditioning import TextEncoder, count_tokens, tokenize_chunks
from nbdiffuse.testing import TEXT_HIDDEN, TEXT_HIDDEN_2, tiny_sd1, tiny_sdxl

BOS, EOS = 49406, 49407


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sd1_model():
    return tiny_sd1()


@pytest.fixture(scope="module")
def sdxl_model():
    return tiny_sdxl()


def _vec(n, width, seed):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def write(path, fmt: str, vectors):
    """Write an embedding file in one of A1111's formats."""
    if fmt == "pt-string_to_param":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem,
                    "step": 1500, "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, path)
    elif fmt == "pt-emb_params":
        torch.save({"emb_params": vectors}, path)
    elif fmt == "safetensors-emb_params":
        save_file({"emb_params": vectors.contiguous()}, str(path))
    elif fmt == "bin-concept":
        torch.save({"<concept>": vectors[0]}, path)  # diffusers: one 1-D vector
    elif fmt == "safetensors-sdxl":
        save_file({"clip_l": vectors[0].contiguous(), "clip_g": vectors[1].contiguous()}, str(path))
    else:
        raise AssertionError(fmt)
    return path


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _reference_hidden(encoder, tok, before: str, vectors: torch.Tensor, after: str, pad: int, sdxl: bool):
    """Independent computation: a copy of the encoder whose vocabulary rows 40000.. hold the embedding's vectors,
    run on ids with those rows at the embedding's positions. Returns (hidden states used as context, pooled)."""
    ref = copy.deepcopy(encoder)
    n = vectors.shape[0]
    fresh = list(range(40000, 40000 + n))
    with torch.no_grad():
        ref.get_input_embeddings().weight[fresh] = vectors
    body = _ids(tok, before) + fresh + _ids(tok, after)
    ids = [BOS, *body, EOS] + [pad] * (75 - len(body))
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([ids]), output_hidden_states=True)
    if sdxl:
        return out.hidden_states[-2][0], getattr(out, "text_embeds", None)
    return out.last_hidden_state[0], None


@pytest.mark.parametrize(("fmt", "n"), [("pt-string_to_param", 3), ("pt-emb_params", 1),
                                        ("safetensors-emb_params", 2), ("bin-concept", 1)])
def test_sd1_formats_and_substituted_encoding(tmp_path, sd1_model, fmt, n):
    ext = {"pt": ".pt", "safetensors": ".safetensors", "bin": ".bin"}[fmt.split("-")[0]]
    vectors = _vec(n, TEXT_HIDDEN, seed=n)
    path = write(tmp_path / f"tiny_style{ext}", fmt, vectors)
    db = load_embeddings(tmp_path, bundle=sd1_model)
    assert list(db.embeddings) == ["tiny_style"] and db.skipped == {} and db.errors == {}
    emb = db["tiny_style"]
    assert emb.vector_count == n and torch.equal(emb.vectors["vec"], vectors)
    assert emb.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and emb.hash10 == emb.sha256[:10]
    if fmt == "pt-string_to_param":
        assert emb.step == 1500

    tok = sd1_model.tokenizers[0]
    chunks, count = tokenize_chunks("a photo of tiny_style on grass", tok, embeddings=db)
    assert count == 3 + n + 2 and len(chunks) == 1
    assert chunks[0].fixes == [(3, emb)]
    assert chunks[0].tokens[4:4 + n] == [0] * n

    enc = TextEncoder(sd1_model, embeddings=db)
    cond = enc.encode("a photo of tiny_style on grass")
    want, _ = _reference_hidden(sd1_model.text_encoders[0], tok, "a photo of", vectors, "on grass", EOS, False)
    torch.testing.assert_close(cond.context, want, rtol=0, atol=1e-6)
    assert set(enc.used_embeddings) == {"tiny_style"}
    assert enc.ti_hashes == f"tiny_style: {emb.hash10}"
    # without the database the name is ordinary text: a different conditioning
    plain = TextEncoder(sd1_model).encode("a photo of tiny_style on grass").context
    assert not torch.allclose(plain, cond.context)


def test_sdxl_pair_substitutes_both_encoders_and_pooled(tmp_path, sdxl_model):
    vl, vg = _vec(2, TEXT_HIDDEN, 10), _vec(2, TEXT_HIDDEN_2, 11)
    path = write(tmp_path / "xlstyle.safetensors", "safetensors-sdxl", (vl, vg))
    write(tmp_path / "sd1only.pt", "pt-emb_params", _vec(1, TEXT_HIDDEN, 12))
    db = load_embeddings(tmp_path, bundle=sdxl_model)
    assert list(db.embeddings) == ["xlstyle"]
    assert "SDXL needs clip_l + clip_g pairs" in db.skipped["sd1only"]
    emb = db["xlstyle"]
    assert emb.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    enc = TextEncoder(sdxl_model, embeddings=db)
    cond = enc.encode("a xlstyle cat")
    tl, tg = sdxl_model.tokenizers
    want_l, _ = _reference_hidden(sdxl_model.text_encoders[0], tl, "a", vl, "cat", EOS, True)
    want_g, pooled = _reference_hidden(sdxl_model.text_encoders[1], tg, "a", vg, "cat", 0, True)
    torch.testing.assert_close(cond.context, torch.cat([want_l, want_g], dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(cond.pooled, pooled[0], rtol=0, atol=1e-6)
    assert enc.ti_hashes == f"xlstyle: {emb.hash10}"


def test_weight_of_surrounding_text_and_longest_match(tmp_path):
    from nbdiffuse.models.tokenizer import clip_tokenizer

    tok = clip_tokenizer("clip_l")
    short = load_embedding(write(tmp_path / "neg.pt", "pt-emb_params", _vec(1, 8, 1)))
    long = load_embedding(write(tmp_path / "neg-hand.pt", "pt-emb_params", _vec(2, 8, 2)))
    db = EmbeddingDB()
    db.add(short)
    db.add(long)
    chunks, count = tokenize_chunks("x (neg-hand:1.3) y neg", tok, embeddings=db)
    chunk = chunks[0]
    assert chunk.fixes == [(1, long), (4, short)]  # "x"=1 token, long=2 vectors, "y"=1 token
    assert chunk.weights[2:4] == [1.3, 1.3] and chunk.weights[5] == 1.0
    assert count == 1 + 2 + 1 + 1
    ignore, _ = tokenize_chunks("x (neg-hand:1.3) y", tok, emphasis="Ignore", embeddings=[short, long])
    assert ignore[0].weights[2:4] == [1.0, 1.0] and ignore[0].fixes[0][1] is long
    assert str(count_tokens("x neg-hand <lora:a:1>", tok, embeddings=db)) == "3/75"


def test_embedding_that_overflows_the_chunk_starts_a_new_one(tmp_path):
    from nbdiffuse.models.tokenizer import clip_tokenizer

    tok = clip_tokenizer("clip_l")
    three = load_embedding(write(tmp_path / "myemb.pt", "pt-emb_params", _vec(3, 8, 3)))
    chunks, count = tokenize_chunks("a " * 73 + "myemb", tok, embeddings=[three])
    assert len(chunks) == 2 and count == 75 + 3
    assert chunks[0].fixes == [] and chunks[0].tokens[1:74] == [320] * 73 and chunks[0].tokens[74:] == [EOS] * 3
    assert chunks[1].fixes == [(0, three)] and chunks[1].tokens[:5] == [BOS, 0, 0, 0, EOS]
    fits, count = tokenize_chunks("a " * 72 + "myemb", tok, embeddings=[three])
    assert len(fits) == 1 and fits[0].fixes == [(72, three)] and count == 75


def test_comma_backtrack_moves_the_embedding_with_its_text(tmp_path):
    from nbdiffuse.models.tokenizer import clip_tokenizer

    tok = clip_tokenizer("clip_l")
    three = load_embedding(write(tmp_path / "myemb.pt", "pt-emb_params", _vec(3, 8, 3)))
    text = "a " * 60 + ", myemb" + " b" * 20
    chunks, _ = tokenize_chunks(text, tok, embeddings=[three])
    assert len(chunks) == 2 and chunks[0].fixes == [] and chunks[0].tokens[61] == _ids(tok, ",")[0]
    assert chunks[0].tokens[62:] == [EOS] * 15
    assert chunks[1].fixes == [(0, three)] and chunks[1].tokens[1:4] == [0, 0, 0]


def test_incompatible_and_unreadable_files_are_reported(tmp_path, sd1_model):
    write(tmp_path / "good.safetensors", "safetensors-emb_params", _vec(2, TEXT_HIDDEN, 1))
    write(tmp_path / "real_sd1.pt", "pt-emb_params", _vec(1, 768, 2))
    write(tmp_path / "xl.safetensors", "safetensors-sdxl", (_vec(1, 768, 3), _vec(1, 1280, 4)))
    (tmp_path / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    torch.save({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, tmp_path / "two_terms.pt")
    (tmp_path / "notes.txt").write_text("ignored")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "good.pt", "pt-emb_params", _vec(1, TEXT_HIDDEN, 5))  # same name as an earlier file
    db = load_embeddings(tmp_path, bundle=sd1_model)
    assert list(db.embeddings) == ["good"] and db["good"].vector_count == 2
    assert db.skipped["real_sd1"] == "768-wide vectors (an SD1 embedding); the text encoder is 32 wide"
    assert db.skipped["xl"].startswith("an SDXL embedding (clip_l + clip_g)")
    errors = {k.rsplit("/", 1)[-1]: v for k, v in db.errors.items()}
    assert set(errors) == {"broken.safetensors", "two_terms.pt", "good.pt"}
    assert "cannot be read with safetensors" in errors["broken.safetensors"]
    assert "found 2 tensors" in errors["two_terms.pt"]
    assert "already named 'good'" in errors["good.pt"]
    # an unchecked database: the encoder itself leaves out what does not fit its model
    raw = load_embeddings(tmp_path)
    assert set(raw.embeddings) == {"good", "real_sd1", "xl"}
    enc = TextEncoder(sd1_model, embeddings=raw)
    enc.encode("real_sd1 good")
    assert set(enc.used_embeddings) == {"good"}
    assert raw.bound((TEXT_HIDDEN,)).skipped.keys() == {"real_sd1", "xl"}


class _NotAllowed:
    pass


def test_pickles_with_code_are_refused(tmp_path):
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "obj": _NotAllowed()}, tmp_path / "evil.pt")
    db = load_embeddings(tmp_path)
    assert len(db) == 0
    assert "torch.load(weights_only=True)" in next(iter(db.errors.values()))


def test_cache_records_used_embeddings_and_follows_database_changes(tmp_path, sd1_model):
    first = load_embedding(write(tmp_path / "tiny_style.pt", "pt-emb_params", _vec(1, TEXT_HIDDEN, 1)))
    db = EmbeddingDB(widths=(TEXT_HIDDEN,))
    db.add(first)
    enc = TextEncoder(sd1_model, embeddings=db)
    a = enc.encode("a tiny_style")
    calls = enc.calls
    enc.clear_used_embeddings()
    assert enc.encode("a tiny_style") is a and enc.calls == calls  # cached ...
    assert set(enc.used_embeddings) == {"tiny_style"}  # ... and still recorded
    (tmp_path / "v2").mkdir()
    replacement = load_embedding(write(tmp_path / "v2" / "tiny_style.pt", "pt-emb_params", _vec(1, TEXT_HIDDEN, 2)))
    db.add(replacement)
    b = enc.encode("a tiny_style")
    assert enc.calls == calls + 1 and not torch.equal(a.context, b.context)
    enc.embeddings = None
    assert TextEncoder(sd1_model).encode("a tiny_style").context.shape == enc.encode("a tiny_style").context.shape
    assert enc.used_embeddings["tiny_style"] is replacement
    assert ti_hashes([first, replacement]) == f"tiny_style: {first.hash10}"  # first of a name wins
