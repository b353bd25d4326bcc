"""LoRA / LoCon files: reading, key mapping (diffusers and LDM names), merging, exact restore, family checks."""

from __future__ import annotations

import copy
import hashlib
import struct

import pytest
import torch
from safetensors.torch import save_file

from nbdiffuse.models.lora import addnet_hash, apply_loras, check_lora, load_lora, lora_hashes, lora_tag_weights
from nbdiffuse.prompts.parser import extract_extra_networks
from nbdiffuse.testing import tiny_sd1, tiny_sdxl

RANK = 4


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


def _pair(out_f: int, in_f: int, gen: torch.Generator, kernel=None, rank: int = RANK):
    """(down, up) like a trainer writes them: linear (r,in)/(out,r) or conv (r,in,k,k)/(out,r,1,1)."""
    if kernel is None:
        return torch.randn(rank, in_f, generator=gen) * 0.3, torch.randn(out_f, rank, generator=gen) * 0.3
    down = torch.randn(rank, in_f, kernel, kernel, generator=gen) * 0.3
    return down, torch.randn(out_f, rank, 1, 1, generator=gen) * 0.3


def write_lora(path, entries: dict, metadata: dict | None = None, extra: dict | None = None):
    """entries: base key -> (down, up, alpha or None)."""
    tensors = {}
    for key, (down, up, alpha) in entries.items():
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    tensors.update(extra or {})
    save_file(tensors, str(path), metadata=metadata)
    return path


def _expected(weight: torch.Tensor, down, up, alpha, multiplier) -> torch.Tensor:
    """W + m * (up @ down) * alpha/rank, computed independently (einsum over the rank, then reshape)."""
    rank = down.shape[0]
    scale = (alpha / rank) if alpha is not None else 1.0
    if down.ndim == 4:
        prod = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    else:
        prod = torch.einsum("or,ri->oi", up, down)
    return weight + multiplier * scale * prod.reshape(weight.shape)


def _state(bundle) -> dict[str, torch.Tensor]:
    out = {}
    for part, module in [("unet", bundle.unet), *[(f"te{i}", e) for i, e in enumerate(bundle.text_encoders)]]:
        out.update({f"{part}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return out


def _assert_same_state(bundle, before: dict[str, torch.Tensor]) -> None:
    after = _state(bundle)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


def _module(root, dotted: str):
    return root.get_submodule(dotted)


def _sd1_entries(gen):
    tb = "down_blocks_0_attentions_0_transformer_blocks_0"
    return {
        f"lora_unet_{tb}_attn1_to_q": (*_pair(32, 32, gen), 2.0),
        f"lora_unet_{tb}_attn2_to_k": (*_pair(32, 32, gen), 8.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (*_pair(32, 32, gen, kernel=1), 1.0),
        "lora_unet_down_blocks_0_resnets_0_conv1": (*_pair(32, 32, gen, kernel=3), None),  # LoCon 3x3, no alpha
        "lora_unet_input_blocks_1_1_proj_out": (*_pair(32, 32, gen, kernel=1), 4.0),  # LDM name
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (*_pair(32, 32, gen), 3.0),
        "lora_te_text_model_encoder_layers_1_mlp_fc1": (*_pair(64, 32, gen), 2.0),
        "lora_unet_down_blocks_7_attentions_0_proj_in": (*_pair(32, 32, gen), 1.0),  # names no layer
    }


# module (dotted path in the model) for each matched key above
_SD1_TARGETS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
    "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", "down_blocks.0.attentions.0.proj_in"),
    "lora_unet_down_blocks_0_resnets_0_conv1": ("unet", "down_blocks.0.resnets.0.conv1"),
    "lora_unet_input_blocks_1_1_proj_out": ("unet", "down_blocks.0.attentions.0.proj_out"),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ("te0", "encoder.layers.0.self_attn.q_proj"),
    "lora_te_text_model_encoder_layers_1_mlp_fc1": ("te0", "encoder.layers.1.mlp.fc1"),
}


def _root(bundle, part):
    return bundle.unet if part == "unet" else bundle.text_encoders[int(part[2:])]


def _unet_out(bundle, unet=None):
    unet = unet or bundle.unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if bundle.arch == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **kwargs).sample


def _te_out(encoder):
    ids = torch.tensor([[49406, 320, 1929, 539, 320, 2368, 49407] + [49407] * 70])
    with torch.no_grad():
        return encoder(input_ids=ids).last_hidden_state


def test_sd1_apply_matches_hand_computed_weights_and_restores_bit_identically(tmp_path):
    gen = torch.Generator().manual_seed(0)
    entries = _sd1_entries(gen)
    extra = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.hada_w1_a": torch.ones(2, 2)}
    lora = load_lora(write_lora(tmp_path / "detail.safetensors", entries, extra=extra))
    assert lora.name == "detail" and lora.arch == "sd1/sd2"
    assert set(lora.unsupported) == {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v"}
    assert "LoHa" in next(iter(lora.unsupported.values()))

    bundle = tiny_sd1()
    before = _state(bundle)
    params_before = {id(p) for p in bundle.unet.parameters()}
    te_before = _te_out(bundle.text_encoders[0])
    reference_unet = copy.deepcopy(bundle.unet)
    reference_te = copy.deepcopy(bundle.text_encoders[0])
    unet_w, te_w = 0.7, 0.5
    expected = {}
    for key, (part, dotted) in _SD1_TARGETS.items():
        down, up, alpha = entries[key]
        w0 = _module(_root(bundle, part), dotted).weight.detach().clone()
        expected[key] = _expected(w0, down, up, alpha, unet_w if part == "unet" else te_w)
        ref_root = reference_unet if part == "unet" else reference_te
        with torch.no_grad():
            _module(ref_root, dotted).weight.copy_(expected[key])

    with pytest.warns(UserWarning, match="down_blocks_7"):
        handle = apply_loras(bundle, [(lora, unet_w, te_w)])
    assert handle.unmatched == {"detail": ["lora_unet_down_blocks_7_attentions_0_proj_in"]}
    assert handle.applied[0].layers == len(_SD1_TARGETS) and handle.text_encoder_changed
    for key, (part, dotted) in _SD1_TARGETS.items():
        torch.testing.assert_close(_module(_root(bundle, part), dotted).weight, expected[key], rtol=1e-6, atol=1e-6)
    # only the targeted weights changed
    after = _state(bundle)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{'unet' if p == 'unet' else 'te0'}.{d}.weight" for p, d in _SD1_TARGETS.values()}
    # the models compute what the hand-merged copies compute
    torch.testing.assert_close(_unet_out(bundle), _unet_out(bundle, reference_unet), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_te_out(bundle.text_encoders[0]), _te_out(reference_te), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_te_out(bundle.text_encoders[0]), te_before)

    handle.restore()
    _assert_same_state(bundle, before)
    assert {id(p) for p in bundle.unet.parameters()} == params_before  # same Parameter objects, data restored
    handle.restore()  # idempotent
    _assert_same_state(bundle, before)


def test_weight_zero_changes_nothing_and_parts_are_separate(tmp_path):
    gen = torch.Generator().manual_seed(1)
    lora = load_lora(write_lora(tmp_path / "x.safetensors", _sd1_entries(gen)))
    bundle = tiny_sd1()
    before = _state(bundle)
    with pytest.warns(UserWarning):
        handle = apply_loras(bundle, [(lora, 0.0, 0.0)])
    _assert_same_state(bundle, before)
    assert not handle.active and handle.applied[0].layers == 0
    with pytest.warns(UserWarning):
        handle = apply_loras(bundle, [(lora, 1.0, 0.0)])  # UNet only
    after = _state(bundle)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("te0."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unet."))
    assert not handle.text_encoder_changed
    handle.restore()
    _assert_same_state(bundle, before)


def test_context_manager_restores_when_generation_fails(tmp_path):
    gen = torch.Generator().manual_seed(2)
    lora = load_lora(write_lora(tmp_path / "x.safetensors", _sd1_entries(gen)))
    bundle = tiny_sd1()
    before = _state(bundle)
    with pytest.raises(RuntimeError, match="boom"), pytest.warns(UserWarning):
        with apply_loras(bundle, [(lora, 1.0)]) as handle:
            assert handle.active
            raise RuntimeError("boom")
    _assert_same_state(bundle, before)


def test_two_loras_on_one_layer_add_up_and_restore(tmp_path):
    gen = torch.Generator().manual_seed(3)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    e1, e2 = {key: (*_pair(32, 32, gen), 2.0)}, {key: (*_pair(32, 32, gen), None)}
    a = load_lora(write_lora(tmp_path / "a.safetensors", e1))
    b = load_lora(write_lora(tmp_path / "b.safetensors", e2))
    bundle = tiny_sd1()
    before = _state(bundle)
    w0 = bundle.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").weight.clone()
    handle = apply_loras(bundle, [(a, 0.5, 1.0), (b, -1.0)])
    want = _expected(_expected(w0, *e1[key], 0.5), *e2[key], -1.0)
    got = bundle.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").weight
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert handle.infotext == f"a: {a.hash12}, b: {b.hash12}"
    handle.restore()
    _assert_same_state(bundle, before)


def _sdxl_entries(gen):
    return {
        # kohya-SDXL LDM name: input_blocks_3_1 = down_blocks.1.attentions.0 (second transformer block)
        "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k": (*_pair(64, 96, gen), 2.0),
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0": (*_pair(64, 64, gen), 4.0),
        # 1x1-conv shaped LoRA onto SDXL's linear proj_in (A1111 reshapes when the sizes agree)
        "lora_unet_up_blocks_0_attentions_0_proj_in": (*_pair(64, 64, gen, kernel=1), 1.0),
        "lora_unet_input_blocks_1_0_in_layers_2": (*_pair(32, 32, gen, kernel=3), 8.0),  # LoCon on a resnet conv
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (*_pair(32, 32, gen), 1.0),
        "lora_te2_text_model_encoder_layers_2_mlp_fc1": (*_pair(128, 64, gen), 16.0),
    }


_SDXL_TARGETS = {
    "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k":
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
    "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0":
        ("unet", "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    "lora_unet_up_blocks_0_attentions_0_proj_in": ("unet", "up_blocks.0.attentions.0.proj_in"),
    "lora_unet_input_blocks_1_0_in_layers_2": ("unet", "down_blocks.0.resnets.0.conv1"),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": ("te0", "encoder.layers.0.self_attn.q_proj"),
    "lora_te2_text_model_encoder_layers_2_mlp_fc1": ("te1", "text_model.encoder.layers.2.mlp.fc1"),
}


def test_sdxl_apply_and_restore(tmp_path):
    gen = torch.Generator().manual_seed(4)
    entries = _sdxl_entries(gen)
    lora = load_lora(write_lora(tmp_path / "xl.safetensors", entries))
    assert lora.arch == "sdxl"
    bundle = tiny_sdxl()
    before = _state(bundle)
    te2_before = _te_out(bundle.text_encoders[1])
    expected = {}
    for key, (part, dotted) in _SDXL_TARGETS.items():
        w0 = _module(_root(bundle, part), dotted).weight.detach().clone()
        expected[key] = _expected(w0, *entries[key], 0.8 if part == "unet" else 1.5)
    handle = apply_loras(bundle, [(lora, 0.8, 1.5)])
    assert handle.unmatched == {} and handle.applied[0].layers == len(_SDXL_TARGETS)
    for key, (part, dotted) in _SDXL_TARGETS.items():
        torch.testing.assert_close(_module(_root(bundle, part), dotted).weight, expected[key], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(_te_out(bundle.text_encoders[1]), te2_before)
    handle.restore()
    _assert_same_state(bundle, before)
    assert torch.equal(_te_out(bundle.text_encoders[1]), te2_before)


def test_family_mismatch_raises_before_any_change(tmp_path):
    gen = torch.Generator().manual_seed(5)
    xl = load_lora(write_lora(tmp_path / "detail.safetensors", _sdxl_entries(gen)))
    sd = load_lora(write_lora(tmp_path / "style.safetensors", _sd1_entries(gen)))
    sd1, sdxl = tiny_sd1(), tiny_sdxl()
    before1, before_xl = _state(sd1), _state(sdxl)
    with pytest.raises(ValueError, match=r"detail\.safetensors is an SDXL LoRA.*the loaded model is SD1"):
        apply_loras(sd1, [(sd, 1.0), (xl, 1.0)])  # the matching one first: still nothing may change
    _assert_same_state(sd1, before1)
    with pytest.raises(ValueError, match=r"style\.safetensors is an SD1/SD2 LoRA.*the loaded model is SDXL"):
        apply_loras(sdxl, [(xl, 1.0), (sd, 1.0)])
    _assert_same_state(sdxl, before_xl)


def test_real_width_family_guess_and_shape_mismatch(tmp_path):
    gen = torch.Generator().manual_seed(6)
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    sd2 = load_lora(write_lora(tmp_path / "v2.safetensors", {key: (*_pair(8, 1024, gen, rank=1), 1.0)}))
    assert sd2.arch == "sd2" and "1024" in sd2.arch_reason
    bundle = tiny_sd1()
    with pytest.raises(ValueError, match=r"v2\.safetensors is an SD2 LoRA.*SD1"):
        check_lora(bundle, sd2)
    odd = load_lora(write_lora(tmp_path / "odd.safetensors", {key: (*_pair(64, 48, gen), 1.0)}))
    assert odd.arch is None
    with pytest.raises(ValueError, match=r"odd\.safetensors does not fit the loaded model \(SD1\)"):
        check_lora(bundle, odd)
    none = load_lora(write_lora(tmp_path / "none.safetensors", {"lora_unet_foo_bar": (*_pair(8, 8, gen), 1.0)}))
    with pytest.raises(ValueError, match="matches none of the loaded model's layers"):
        apply_loras(bundle, [none])


def test_hash_is_sha256_after_header(tmp_path):
    gen = torch.Generator().manual_seed(7)
    entries = _sd1_entries(gen)
    path_a = write_lora(tmp_path / "a.safetensors", entries, metadata={"ss_output_name": "a"})
    path_b = write_lora(tmp_path / "b.safetensors", entries, metadata={"ss_output_name": "something else"})
    raw = path_a.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    want = hashlib.sha256(raw[8 + header_len:]).hexdigest()
    lora = load_lora(path_a)
    assert lora.sha256 == want == addnet_hash(path_a) and lora.hash12 == want[:12]
    assert path_a.read_bytes() != path_b.read_bytes() and load_lora(path_b).hash12 == want[:12]
    assert lora_hashes([lora]) == f"a: {want[:12]}"
    unhashed = load_lora(path_a, hash=False)
    assert unhashed.hash12 == "" and lora_hashes([unhashed, lora]) == f"a: {want[:12]}"


def test_pt_lora_and_bad_files(tmp_path):
    gen = torch.Generator().manual_seed(8)
    entries = _sd1_entries(gen)
    tensors = {}
    for key, (down, up, alpha) in entries.items():
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha or 4.0)})
    torch.save(tensors, tmp_path / "p.pt")
    lora = load_lora(tmp_path / "p.pt")
    assert lora.sha256 == hashlib.sha256((tmp_path / "p.pt").read_bytes()).hexdigest()
    assert len(lora.modules) == len(entries)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors: the file is empty"):
        load_lora(tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        load_lora(tmp_path / "junk.safetensors")
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(2, 2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(ValueError, match="ckpt.safetensors: contains no LoRA weights"):
        load_lora(tmp_path / "ckpt.safetensors")


@pytest.mark.parametrize(("tag", "te", "unet"), [
    ("<lora:x>", 1.0, 1.0),
    ("<lora:x:0.6>", 0.6, 0.6),
    ("<lora:x:0.3:0.8>", 0.3, 0.8),
    ("<lora:x:te=0.2:unet=0.9>", 0.2, 0.9),
    ("<lora:x:0.5:unet=0.1>", 0.5, 0.1),
    ("<lora:x:unet=0.4>", 1.0, 0.4),
    ("<lora:x:te=0.25>", 0.25, 0.25),
])
def test_lora_tag_weights(tag, te, unet):
    _, nets = extract_extra_networks(f"a cat {tag}")
    weights = lora_tag_weights(nets[0])
    assert (weights.te, weights.unet) == (te, unet)


def test_lora_tag_bad_number():
    _, nets = extract_extra_networks("<lora:x:strong>")
    with pytest.raises(ValueError, match="'strong' is not a number"):
        lora_tag_weights(nets[0])
