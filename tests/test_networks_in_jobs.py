"""LoRA tags, textual-inversion embeddings and external VAEs from a models folder, used by real jobs."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nbdiffuse import Session, infotext
from nbdiffuse.models.save import save_checkpoint

BASE = dict(negative_prompt="", steps=3, width=64, height=64, seed=9, sampler_name="Euler")


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


def lora_file(path, scale=0.5):
    g = torch.Generator().manual_seed(0)
    tb = "down_blocks_0_attentions_0_transformer_blocks_0"
    tensors = {}
    for key, (out_f, in_f) in {f"lora_unet_{tb}_attn2_to_k": (32, 32),
                               "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (32, 32)}.items():
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * scale
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))
    return path


@pytest.fixture
def models_session(sd1, tmp_path):
    root = tmp_path / "webui"
    (root / "models" / "Lora").mkdir(parents=True)
    (root / "embeddings").mkdir()
    (root / "models" / "VAE").mkdir()
    lora_file(root / "models" / "Lora" / "detail.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(1))}},
               root / "embeddings" / "shinystyle.pt")
    s = Session(outputs_dir=tmp_path / "out", progress=False, models_dir=root)
    s.load(sd1)
    return s, root


def state(bundle):
    return {k: v.clone() for k, v in [*bundle.unet.state_dict().items(),
                                      *bundle.text_encoders[0].state_dict().items()]}


def test_lora_tag_changes_the_image_writes_lora_hashes_and_is_undone(models_session):
    s, _ = models_session
    before = state(s.model)
    plain = s.txt2img(prompt="a red circle", **BASE)
    with_lora = s.txt2img(prompt="a red circle <lora:detail:0.8>", **BASE)
    assert not torch.equal(plain.latents, with_lora.latents)
    assert "Lora hashes" in infotext.parse(with_lora.infotexts[0])
    after = state(s.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert s.model.applied_loras == []
    again = s.txt2img(prompt="a red circle", **BASE)  # the text-encoder cache did not keep LoRA encodings
    assert torch.equal(plain.latents, again.latents)
    repro = s.txt2img(**infotext.to_params(with_lora.infotexts[0]))
    assert torch.equal(with_lora.latents, repro.latents)


def test_lora_weight_zero_is_the_plain_image(models_session):
    s, _ = models_session
    assert torch.equal(s.txt2img(prompt="a red circle", **BASE).latents,
                       s.txt2img(prompt="a red circle <lora:detail:0>", **BASE).latents)


def test_unknown_lora_fails_before_any_model_call(models_session):
    s, _ = models_session
    calls = []
    with pytest.raises(ValueError, match="detial"):
        s.txt2img(prompt="x <lora:detial:1>", hooks=[lambda st: calls.append(1)], **BASE)
    assert calls == []


def test_lora_tags_without_models_dir_say_how_to_fix(session):
    with pytest.raises(ValueError, match="models_dir"):
        session.txt2img(prompt="x <lora:detail:1>", **BASE)


def test_embedding_from_the_folder_is_used_by_name_and_hashed(models_session):
    s, _ = models_session
    r = s.txt2img(prompt="a shinystyle circle", **BASE)
    plain = s.txt2img(prompt="a circle", **BASE)
    assert "TI hashes" in infotext.parse(r.infotexts[0]) and "TI hashes" not in infotext.parse(plain.infotexts[0])
    assert "shinystyle" in s.models()["embeddings"][0]


def test_external_vae_changes_decode_and_is_named_in_infotext(models_session, sd1, tmp_path):
    s, root = models_session
    from nbdiffuse.testing import tiny_sd1

    other = tiny_sd1(seed=5)
    save_checkpoint(other, tmp_path / "other.safetensors")
    # A VAE file: the other model's VAE keys in LDM layout (what A1111's models/VAE files hold).
    from safetensors.torch import load_file

    full = load_file(str(tmp_path / "other.safetensors"))
    vae = {k.removeprefix("first_stage_model."): v for k, v in full.items() if k.startswith("first_stage_model.")}
    save_file(vae, str(root / "models" / "VAE" / "other.vae.safetensors"))
    plain = s.txt2img(prompt="x", **BASE)
    s.load_vae("other.vae")
    r = s.txt2img(prompt="x", **BASE)
    assert torch.equal(plain.latents, r.latents)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(r.images[0]))
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["VAE"] == "other.vae" and len(parsed["VAE hash"]) == 10
    s.load_vae(None)
    back = s.txt2img(prompt="x", **BASE)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(back.images[0]))


@pytest.mark.parametrize("prompt,message", [
    ("x <lora:detail:nan>", r"<lora:detail:nan>: weight 'nan' must be a finite number"),
    ("x <lora:detail:inf>", r"weight 'inf' must be a finite number"),
    ("x <lora:detail:1e9>", r"between -100 and 100"),
    ("x <lora:detail:0.5> y <lora:detail:1>", r"names <lora:detail> twice with different weights "
                                              r"\(<lora:detail:0.5> and <lora:detail:1>\)"),
])
def test_lora_weights_that_can_only_break_the_picture_are_refused_before_work(models_session, prompt, message):
    s, _ = models_session
    before = state(s.model)
    calls = []
    with pytest.raises(ValueError, match=message):
        s.txt2img(prompt=prompt, hooks=[lambda st: calls.append(1)], **BASE)
    assert calls == []
    after = state(s.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is untouched


def test_the_same_lora_tag_twice_with_the_same_weight_is_one_lora(models_session):
    s, _ = models_session
    once = s.txt2img(prompt="a red circle <lora:detail:0.8>", **BASE)
    twice = s.txt2img(prompt="a red circle <lora:detail:0.8> <lora:detail:0.8>", **BASE)
    assert torch.equal(once.latents, twice.latents)


def test_a_misspelt_or_unusable_embedding_is_named_not_silently_read_as_text(models_session):
    s, root = models_session
    with pytest.warns(UserWarning, match=r"negative_prompt: 'shinystyl' is not an embedding \(read as plain text\); "
                                         r"did you mean 'shinystyle'\?"):
        s.txt2img(prompt="a red circle", **{**BASE, "negative_prompt": "shinystyl"})
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, root / "embeddings" / "widestyle.pt")  # SD2/SDXL width
    s.load(s.model)  # the folder is read again with the model
    with pytest.warns(UserWarning, match=r"prompt: Embedding 'widestyle' is not used: .*read as plain text"):
        s.txt2img(prompt="a widestyle circle", **BASE)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real name, and ordinary words, say nothing
        s.txt2img(prompt="a shinystyle red circle with shiny style", **BASE)
