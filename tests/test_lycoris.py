"""LyCORIS files (LoHa, LoKr, DoRA, LoCon-Tucker, full/diff, IA3) in kohya/A1111/LyCORIS key layouts: merged into
SD1 and SDXL weights by the formulas of LyCORIS/A1111's network modules, restored bit-identically, used by jobs.

Every expected weight below is written from the definitions (element sums, block Kronecker products, column
norms), not from nbdiffuse's code.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nbdiffuse import Session, infotext
from nbdiffuse.models.lora import apply_loras, load_lora
from nbdiffuse.testing import tiny_sd1, tiny_sdxl

TB = "down_blocks_0_attentions_0_transformer_blocks_0"
BASE = dict(negative_prompt="", steps=3, width=64, height=64, seed=9, sampler_name="Euler")


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.3


def state(bundle) -> dict[str, torch.Tensor]:
    out = {}
    for part, module in [("unet", bundle.unet), *[(f"te{i}", e) for i, e in enumerate(bundle.text_encoders)]]:
        out.update({f"{part}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return out


def assert_restored(bundle, before) -> None:
    after = state(bundle)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def matmul(a, b):
    """sum_r a[o, r] b[r, i] written as a broadcast sum (b flattened past its first axis)."""
    return (a.reshape(a.shape[0], -1)[:, :, None] * b.reshape(b.shape[0], -1)[None]).sum(1)


def tucker(t, wa, wb):
    """f[o, i, k, l] = sum_pq t[p, q, k, l] wa[p, o] wb[q, i] (LyCORIS's CP/Tucker factor)."""
    out = torch.zeros(wa.shape[1], wb.shape[1], *t.shape[2:])
    for p in range(t.shape[0]):
        for q in range(t.shape[1]):
            out += wa[p][:, None, None, None] * wb[q][None, :, None, None] * t[p, q][None, None]
    return out


def kron(a, b):
    """Block Kronecker product: block (i, j) of the result is a[i, j] * b (b 2-D or 4-D, a 2-D)."""
    rows = [torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])]
    return torch.cat(rows, dim=0)


def dora(weight, delta, dora_scale, m):
    """A1111/kohya DoRA: V = W + delta; V * dora_scale / ||V|| (norm of each input column) - W, times m."""
    v = weight + delta
    dims = [0] + list(range(2, v.ndim))
    norm = v.pow(2).sum(dim=dims, keepdim=True).sqrt()
    return (v * dora_scale / norm - weight) * m


def save(path, tensors):
    save_file({k: (v if isinstance(v, torch.Tensor) else torch.tensor(v)).contiguous() for k, v in tensors.items()},
              str(path))
    return path


def merged(bundle, loras):
    """(handle, state before) after apply_loras; the caller restores."""
    before = state(bundle)
    return apply_loras(bundle, loras), before


def test_loha_linear_and_conv_and_tucker_merge_by_the_formula_and_restore(tmp_path):
    key_q, key_conv, key_tucker = (f"lora_unet_{TB}_attn1_to_q", "lora_unet_down_blocks_0_resnets_0_conv1",
                                   "lora_unet_down_blocks_1_resnets_0_conv1")
    r = 4
    t = {  # linear 32x32 (r=4, alpha 2), conv 3x3 32->32 flattened (r=4, alpha 8), conv 3x3 32->64 Tucker (no alpha)
        f"{key_q}.hada_w1_a": rand(32, r, seed=1), f"{key_q}.hada_w1_b": rand(r, 32, seed=2),
        f"{key_q}.hada_w2_a": rand(32, r, seed=3), f"{key_q}.hada_w2_b": rand(r, 32, seed=4), f"{key_q}.alpha": 2.0,
        f"{key_conv}.hada_w1_a": rand(32, r, seed=5), f"{key_conv}.hada_w1_b": rand(r, 32 * 9, seed=6),
        f"{key_conv}.hada_w2_a": rand(32, r, seed=7), f"{key_conv}.hada_w2_b": rand(r, 32 * 9, seed=8),
        f"{key_conv}.alpha": 8.0,
        f"{key_tucker}.hada_t1": rand(r, r, 3, 3, seed=9), f"{key_tucker}.hada_w1_a": rand(r, 64, seed=10),
        f"{key_tucker}.hada_w1_b": rand(r, 32, seed=11), f"{key_tucker}.hada_t2": rand(r, r, 3, 3, seed=12),
        f"{key_tucker}.hada_w2_a": rand(r, 64, seed=13), f"{key_tucker}.hada_w2_b": rand(r, 32, seed=14),
    }
    lora = load_lora(save(tmp_path / "hada.safetensors", t))
    assert {m.kind for m in lora.modules.values()} == {"loha"} and lora.unsupported == {}
    bundle = tiny_sd1()
    unet = bundle.unet
    layers = {key_q: unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q,
              key_conv: unet.down_blocks[0].resnets[0].conv1, key_tucker: unet.down_blocks[1].resnets[0].conv1}
    originals = {k: m.weight.detach().clone() for k, m in layers.items()}
    handle, before = merged(bundle, [(lora, 0.7, 1.0)])
    p = {k: v for k, v in t.items() if isinstance(v, torch.Tensor)}
    want_q = (matmul(p[f"{key_q}.hada_w1_a"], p[f"{key_q}.hada_w1_b"])
              * matmul(p[f"{key_q}.hada_w2_a"], p[f"{key_q}.hada_w2_b"]))
    want_conv = (matmul(p[f"{key_conv}.hada_w1_a"], p[f"{key_conv}.hada_w1_b"])
                 * matmul(p[f"{key_conv}.hada_w2_a"], p[f"{key_conv}.hada_w2_b"])).reshape(32, 32, 3, 3)
    want_tucker = (tucker(p[f"{key_tucker}.hada_t1"], p[f"{key_tucker}.hada_w1_a"], p[f"{key_tucker}.hada_w1_b"])
                   * tucker(p[f"{key_tucker}.hada_t2"], p[f"{key_tucker}.hada_w2_a"], p[f"{key_tucker}.hada_w2_b"]))
    for key, delta, scale in [(key_q, want_q, 2.0 / r), (key_conv, want_conv, 8.0 / r), (key_tucker, want_tucker, 1.0)]:
        torch.testing.assert_close(layers[key].weight, originals[key] + delta * scale * 0.7, rtol=1e-5, atol=1e-6)
    handle.restore()
    assert_restored(bundle, before)


def test_lokr_forms_merge_by_block_kronecker_products_and_restore(tmp_path):
    key_q, key_k, key_conv, key_te = (f"lora_unet_{TB}_attn1_to_q", f"lora_unet_{TB}_attn1_to_k",
                                      "lora_unet_input_blocks_1_0_in_layers_2",  # LDM name of resnets.0.conv1
                                      "lora_te_text_model_encoder_layers_1_mlp_fc1")
    key_flat = "lora_unet_down_blocks_1_resnets_0_conv1"
    t = {
        # full w1 (4x4) x low-rank w2 (8x8 from r=2), alpha 1 -> scale 1/2
        f"{key_q}.lokr_w1": rand(4, 4, seed=1), f"{key_q}.lokr_w2_a": rand(8, 2, seed=2),
        f"{key_q}.lokr_w2_b": rand(2, 8, seed=3), f"{key_q}.alpha": 1.0,
        # both full: no dim, so the alpha is ignored (A1111: scale 1)
        f"{key_k}.lokr_w1": rand(2, 4, seed=4), f"{key_k}.lokr_w2": rand(16, 8, seed=5), f"{key_k}.alpha": 7.0,
        # conv 3x3 32->32: w1 (4x4) x Tucker w2 (8x8x3x3, r=2), alpha 3 -> scale 3/2
        f"{key_conv}.lokr_w1": rand(4, 4, seed=6), f"{key_conv}.lokr_t2": rand(2, 2, 3, 3, seed=7),
        f"{key_conv}.lokr_w2_a": rand(2, 8, seed=8), f"{key_conv}.lokr_w2_b": rand(2, 8, seed=9),
        f"{key_conv}.alpha": 3.0,
        # text encoder fc1 64x32: low-rank w1 (r=1) x full w2 -> dim from lokr_w1_b
        f"{key_te}.lokr_w1_a": rand(4, 1, seed=10), f"{key_te}.lokr_w1_b": rand(1, 2, seed=11),
        f"{key_te}.lokr_w2": rand(16, 16, seed=12), f"{key_te}.alpha": 0.5,
        # conv 3x3 32->64, fp16 file: w1 (4x4) x low-rank w2 stored flat (16 x 8*3*3, r=2), no alpha
        f"{key_flat}.lokr_w1": rand(4, 4, seed=13).half(), f"{key_flat}.lokr_w2_a": rand(16, 2, seed=14).half(),
        f"{key_flat}.lokr_w2_b": rand(2, 8 * 9, seed=15).half(),
    }
    lora = load_lora(save(tmp_path / "lokr.safetensors", t))
    assert {m.kind for m in lora.modules.values()} == {"lokr"} and lora.unsupported == {}
    bundle = tiny_sd1()
    attn = bundle.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    layers = {key_q: attn.to_q, key_k: attn.to_k, key_conv: bundle.unet.down_blocks[0].resnets[0].conv1,
              key_te: bundle.text_encoders[0].encoder.layers[1].mlp.fc1,
              key_flat: bundle.unet.down_blocks[1].resnets[0].conv1}
    originals = {k: m.weight.detach().clone() for k, m in layers.items()}
    handle, before = merged(bundle, [(lora, 0.5, 2.0)])
    p = {k: v for k, v in t.items() if isinstance(v, torch.Tensor)}
    f32 = lambda name: p[name].float()  # noqa: E731
    want = {
        key_q: kron(p[f"{key_q}.lokr_w1"], matmul(p[f"{key_q}.lokr_w2_a"], p[f"{key_q}.lokr_w2_b"])) * 0.5 * 0.5,
        key_k: kron(p[f"{key_k}.lokr_w1"], p[f"{key_k}.lokr_w2"]) * 1.0 * 0.5,
        key_conv: kron(p[f"{key_conv}.lokr_w1"], tucker(p[f"{key_conv}.lokr_t2"], p[f"{key_conv}.lokr_w2_a"],
                                                         p[f"{key_conv}.lokr_w2_b"])) * 1.5 * 0.5,
        key_te: kron(matmul(p[f"{key_te}.lokr_w1_a"], p[f"{key_te}.lokr_w1_b"]), p[f"{key_te}.lokr_w2"]) * 0.5 * 2.0,
        key_flat: kron(f32(f"{key_flat}.lokr_w1"),
                       matmul(f32(f"{key_flat}.lokr_w2_a"), f32(f"{key_flat}.lokr_w2_b")).reshape(16, 8, 3, 3)) * 0.5,
    }
    for key, delta in want.items():
        torch.testing.assert_close(layers[key].weight, originals[key] + delta, rtol=1e-5, atol=1e-6)
    assert handle.text_encoder_changed
    handle.restore()
    assert_restored(bundle, before)


def test_dora_renorms_input_columns_of_the_merged_weight(tmp_path):
    key_q, key_conv, key_hada = (f"lora_unet_{TB}_attn2_to_k", "lora_unet_down_blocks_0_resnets_0_conv1",
                                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    bundle = tiny_sd1()
    attn = bundle.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    conv = bundle.unet.down_blocks[0].resnets[0].conv1
    q_proj = bundle.text_encoders[0].encoder.layers[0].self_attn.q_proj
    # kohya/LyCORIS store the magnitude of the original weight's input columns (1 x in[, 1, 1]), then train it
    col = lambda w: w.pow(2).sum(dim=[0] + list(range(2, w.ndim)), keepdim=True).sqrt()  # noqa: E731
    t = {
        f"{key_q}.lora_down.weight": rand(4, 32, seed=1), f"{key_q}.lora_up.weight": rand(32, 4, seed=2),
        f"{key_q}.alpha": 2.0, f"{key_q}.dora_scale": col(attn.to_k.weight.detach()) * (1 + rand(1, 32, seed=3)),
        f"{key_conv}.lora_down.weight": rand(4, 32, 3, 3, seed=4),
        f"{key_conv}.lora_up.weight": rand(32, 4, 1, 1, seed=5), f"{key_conv}.alpha": 4.0,
        f"{key_conv}.dora_scale": col(conv.weight.detach()) * 1.1,
        f"{key_hada}.hada_w1_a": rand(32, 2, seed=6), f"{key_hada}.hada_w1_b": rand(2, 32, seed=7),
        f"{key_hada}.hada_w2_a": rand(32, 2, seed=8), f"{key_hada}.hada_w2_b": rand(2, 32, seed=9),
        f"{key_hada}.dora_scale": col(q_proj.weight.detach()) * 0.9,
    }
    assert t[f"{key_conv}.dora_scale"].shape == (1, 32, 1, 1)
    lora = load_lora(save(tmp_path / "dora.safetensors", t))
    assert set(lora.modules) == {key_q, key_conv, key_hada} and lora.unsupported == {}
    layers = {key_q: attn.to_k, key_conv: conv, key_hada: q_proj}
    originals = {k: m.weight.detach().clone() for k, m in layers.items()}
    handle, before = merged(bundle, [(lora, 0.6, 1.5)])
    p = {k: v for k, v in t.items() if isinstance(v, torch.Tensor)}
    w = originals
    want = {
        key_q: dora(w[key_q], matmul(p[f"{key_q}.lora_up.weight"], p[f"{key_q}.lora_down.weight"]) * 2.0 / 4,
                    p[f"{key_q}.dora_scale"], 0.6),
        key_conv: dora(w[key_conv], matmul(p[f"{key_conv}.lora_up.weight"], p[f"{key_conv}.lora_down.weight"])
                       .reshape(32, 32, 3, 3) * 4.0 / 4, p[f"{key_conv}.dora_scale"], 0.6),
        key_hada: dora(w[key_hada], matmul(p[f"{key_hada}.hada_w1_a"], p[f"{key_hada}.hada_w1_b"])
                       * matmul(p[f"{key_hada}.hada_w2_a"], p[f"{key_hada}.hada_w2_b"]), p[f"{key_hada}.dora_scale"],
                       1.5),
    }
    for key, delta in want.items():
        torch.testing.assert_close(layers[key].weight, w[key] + delta, rtol=1e-5, atol=1e-6)
    # at multiplier 1 the merged weight's input columns have exactly the stored magnitudes
    handle.restore()
    with apply_loras(bundle, [(lora, 1.0, 1.0)]):
        torch.testing.assert_close(col(attn.to_k.weight), p[f"{key_q}.dora_scale"], rtol=1e-5, atol=1e-6)
    assert_restored(bundle, before)


def test_locon_tucker_full_diff_ia3_and_norm_merge_by_the_formula_and_restore(tmp_path):
    key_mid, key_full, key_ia3_out, key_ia3_in = ("lora_unet_down_blocks_0_resnets_0_conv1",
                                                  f"lora_unet_{TB}_ff_net_2", f"lora_unet_{TB}_attn2_to_v",
                                                  "lora_te_text_model_encoder_layers_2_mlp_fc2")
    bundle = tiny_sd1()
    blk = bundle.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    layers = {key_mid: bundle.unet.down_blocks[0].resnets[0].conv1, key_full: blk.ff.net[2],
              key_ia3_out: blk.attn2.to_v, key_ia3_in: bundle.text_encoders[0].encoder.layers[2].mlp.fc2}
    out_f, in_f = layers[key_ia3_in].weight.shape
    t = {
        f"{key_mid}.lora_down.weight": rand(4, 32, 1, 1, seed=1),
        f"{key_mid}.lora_mid.weight": rand(4, 4, 3, 3, seed=2),
        f"{key_mid}.lora_up.weight": rand(32, 4, 1, 1, seed=3), f"{key_mid}.alpha": 1.0,
        f"{key_full}.diff": rand(32, 128, seed=4), f"{key_full}.diff_b": rand(32, seed=5),
        f"{key_ia3_out}.weight": rand(32, seed=6), f"{key_ia3_out}.on_input": torch.tensor(False),
        f"{key_ia3_in}.weight": rand(in_f, seed=7), f"{key_ia3_in}.on_input": torch.tensor(True),
        "lora_unet_input_blocks_1_0_in_layers_0.w_norm": rand(32, seed=8),  # GroupNorm resnets.0.norm1, LDM name
        "lora_unet_input_blocks_1_0_in_layers_0.b_norm": rand(32, seed=9),
        "lora_te_text_model_final_layer_norm.w_norm": rand(32, seed=10),
        "lora_te_text_model_final_layer_norm.b_norm": rand(32, seed=11),
    }
    lora = load_lora(save(tmp_path / "mixed.safetensors", t))
    assert {k: m.kind for k, m in lora.modules.items()} == {
        key_mid: "lora", key_full: "full", key_ia3_out: "ia3", key_ia3_in: "ia3",
        "lora_unet_input_blocks_1_0_in_layers_0": "norm", "lora_te_text_model_final_layer_norm": "norm"}
    norms = {"unet": bundle.unet.down_blocks[0].resnets[0].norm1,
             "te": dict(bundle.text_encoders[0].named_modules())["final_layer_norm"]}
    w = {k: m.weight.detach().clone() for k, m in layers.items()}
    bias = layers[key_full].bias.detach().clone()
    norm_before = {k: (m.weight.detach().clone(), m.bias.detach().clone()) for k, m in norms.items()}
    handle, before = merged(bundle, [(lora, 0.8, 0.4)])
    p = {k: v for k, v in t.items()}
    mid = p[f"{key_mid}.lora_mid.weight"]
    up, down = p[f"{key_mid}.lora_up.weight"][:, :, 0, 0], p[f"{key_mid}.lora_down.weight"][:, :, 0, 0]
    # LoCon Tucker: delta[o, i, k, l] = sum_nm up[o, n] mid[n, m, k, l] down[m, i]
    locon = sum(up[:, n, None, None, None] * mid[n, m][None, None] * down[m][None, :, None, None]
                for n in range(4) for m in range(4))
    want = {key_mid: w[key_mid] + locon * (1.0 / 4) * 0.8,
            key_full: w[key_full] + p[f"{key_full}.diff"] * 0.8,
            key_ia3_out: w[key_ia3_out] + w[key_ia3_out] * p[f"{key_ia3_out}.weight"][:, None] * 0.8,
            key_ia3_in: w[key_ia3_in] + w[key_ia3_in] * p[f"{key_ia3_in}.weight"][None, :] * 0.4}
    for key, value in want.items():
        torch.testing.assert_close(layers[key].weight, value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layers[key_full].bias, bias + p[f"{key_full}.diff_b"] * 0.8)
    for part, key, m in [("unet", "lora_unet_input_blocks_1_0_in_layers_0", 0.8),
                         ("te", "lora_te_text_model_final_layer_norm", 0.4)]:
        torch.testing.assert_close(norms[part].weight, norm_before[part][0] + p[f"{key}.w_norm"] * m)
        torch.testing.assert_close(norms[part].bias, norm_before[part][1] + p[f"{key}.b_norm"] * m)
    handle.restore()
    assert_restored(bundle, before)


def test_sdxl_loha_and_lokr_with_ldm_names_and_both_text_encoders(tmp_path):
    bundle = tiny_sdxl()
    te1, te2 = (dict(e.named_modules())[name] for e, name in zip(bundle.text_encoders, [
        "encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.0.self_attn.q_proj"]))
    attn = bundle.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k  # 64 x 96 context
    k_unet, k_te1, k_te2 = ("lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
                            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj")
    t = {
        f"{k_unet}.hada_w1_a": rand(64, 2, seed=1), f"{k_unet}.hada_w1_b": rand(2, 96, seed=2),
        f"{k_unet}.hada_w2_a": rand(64, 2, seed=3), f"{k_unet}.hada_w2_b": rand(2, 96, seed=4), f"{k_unet}.alpha": 1.0,
        f"{k_te1}.lokr_w1": rand(4, 4, seed=5), f"{k_te1}.lokr_w2": rand(8, 8, seed=6),
        f"{k_te2}.diff": rand(64, 64, seed=7),
    }
    lora = load_lora(save(tmp_path / "xl.safetensors", t))
    assert lora.arch == "sdxl"
    originals = {k: m.weight.detach().clone() for k, m in [(k_unet, attn), (k_te1, te1), (k_te2, te2)]}
    handle, before = merged(bundle, [(lora, 1.0, 0.5)])
    want_unet = matmul(t[f"{k_unet}.hada_w1_a"], t[f"{k_unet}.hada_w1_b"]) * matmul(t[f"{k_unet}.hada_w2_a"],
                                                                                    t[f"{k_unet}.hada_w2_b"])
    torch.testing.assert_close(attn.weight, originals[k_unet] + want_unet * 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(te1.weight, originals[k_te1] + kron(t[f"{k_te1}.lokr_w1"], t[f"{k_te1}.lokr_w2"]) * 0.5,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(te2.weight, originals[k_te2] + t[f"{k_te2}.diff"] * 0.5, rtol=1e-5, atol=1e-6)
    handle.restore()
    assert_restored(bundle, before)
    with pytest.raises(ValueError, match="SDXL LoRA"):
        apply_loras(tiny_sd1(), [lora])


def test_unsupported_and_broken_lycoris_layers_say_which_and_why(tmp_path):
    ok = f"lora_unet_{TB}_attn1_to_q"
    t = {
        f"{ok}.hada_w1_a": rand(32, 2), f"{ok}.hada_w1_b": rand(2, 32), f"{ok}.hada_w2_a": rand(32, 2),
        f"{ok}.hada_w2_b": rand(2, 32),
        f"lora_unet_{TB}_attn1_to_k.hada_w1_a": rand(32, 2),  # incomplete LoHa
        f"lora_unet_{TB}_attn1_to_v.lokr_w1": rand(4, 4),  # LoKr without w2
        f"lora_unet_{TB}_attn2_to_q.oft_blocks": rand(4, 8, 8),
        f"lora_unet_{TB}_norm1.w_norm": rand(32),  # norm without b_norm
        f"lora_unet_{TB}_attn2_to_v.hada_w1_a": rand(32, 2), f"lora_unet_{TB}_attn2_to_v.lora_up.weight": rand(32, 2),
        f"lora_unet_{TB}_ff_net_2.frobnicate": rand(3),
        f"lora_unet_{TB}_attn2_to_k.hada_w1_a": rand(32, 2), f"lora_unet_{TB}_attn2_to_k.hada_w1_b": rand(3, 32),
        f"lora_unet_{TB}_attn2_to_k.hada_w2_a": rand(32, 2), f"lora_unet_{TB}_attn2_to_k.hada_w2_b": rand(2, 32),
        f"lora_unet_{TB}_attn1_to_out_0.dora_scale": rand(1, 32),
    }
    lora = load_lora(save(tmp_path / "odd.safetensors", t))
    why = {k.removeprefix(f"lora_unet_{TB}_"): v for k, v in lora.unsupported.items()}
    assert list(lora.modules) == [ok]
    assert why["attn1_to_k"].startswith("LoHa needs hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b; it has hada_w1_a")
    assert why["attn1_to_v"].startswith("LoKr needs lokr_w1 (or lokr_w1_a and lokr_w1_b) and lokr_w2")
    assert why["attn2_to_q"] == "OFT/BOFT is not supported"
    assert why["norm1"] == "LyCORIS norm needs w_norm and b_norm; it has w_norm"
    assert why["attn2_to_v"] == "mixes the parts of LoRA and LoHa"
    assert why["ff_net_2"] == "unknown parts frobnicate"
    assert why["attn2_to_k"].startswith("LoHa with inconsistent shapes hada_w1_a (32, 2), hada_w1_b (3, 32)")
    assert why["attn1_to_out_0"] == "dora_scale without the weights it belongs to"
    # a change that does not fit the model's layer is refused before any weight changes
    bad = save(tmp_path / "bad.safetensors", {f"{ok}.diff": rand(32, 16)})
    bundle = tiny_sd1()
    before = state(bundle)
    with pytest.raises(ValueError, match=r"attn1_to_q has shape \(32, 16\) but the model's layer is \(32, 32\)"):
        apply_loras(bundle, [load_lora(bad)])
    assert_restored(bundle, before)


def test_lyco_tag_in_a_job_changes_the_image_writes_lora_hashes_and_is_undone(sd1, tmp_path):
    root = tmp_path / "webui"
    (root / "models" / "LyCORIS").mkdir(parents=True)
    key, te_key = f"lora_unet_{TB}_attn2_to_k", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    path = save(root / "models" / "LyCORIS" / "hadastyle.safetensors", {
        f"{key}.hada_w1_a": rand(32, 4, seed=1) * 3, f"{key}.hada_w1_b": rand(4, 32, seed=2) * 3,
        f"{key}.hada_w2_a": rand(32, 4, seed=3) * 3, f"{key}.hada_w2_b": rand(4, 32, seed=4) * 3,
        f"{key}.alpha": 4.0, f"{te_key}.lokr_w1": rand(4, 4, seed=5) * 3, f"{te_key}.lokr_w2": rand(8, 8, seed=6) * 3})
    s = Session(outputs_dir=tmp_path / "out", progress=False, models_dir=root)
    s.load(sd1)
    before = {k: v.clone() for k, v in [*s.model.unet.state_dict().items(),
                                        *s.model.text_encoders[0].state_dict().items()]}
    plain = s.txt2img(prompt="a red circle", **BASE)
    lyco = s.txt2img(prompt="a red circle <lyco:hadastyle:0.9>", **BASE)
    as_lora = s.txt2img(prompt="a red circle <lora:hadastyle:0.9>", **BASE)
    assert not torch.equal(plain.latents, lyco.latents)
    assert torch.equal(lyco.latents, as_lora.latents)  # A1111 treats <lyco:> as <lora:>
    fields = infotext.parse(lyco.infotexts[0])
    assert fields["Lora hashes"] == f"hadastyle: {load_lora(path).hash12}"
    after = {k: v for k, v in [*s.model.unet.state_dict().items(), *s.model.text_encoders[0].state_dict().items()]}
    assert all(torch.equal(before[k], after[k]) for k in before)
    again = s.txt2img(prompt="a red circle", **BASE)
    assert torch.equal(plain.latents, again.latents)
