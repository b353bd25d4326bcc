"""A1111 hypernetworks: files in A1111's layout, the k/v transform against the formula, and <hypernet:...> jobs."""

import pytest
import torch
import torch.nn.functional as F

from nbdiffuse import Session, infotext
from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.hypernetwork import apply_hypernetworks, load_hypernetwork

BASE = dict(negative_prompt="", steps=3, width=64, height=64, seed=9, sampler_name="Euler")


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


def mlp_weights(dim, gen, layer_norm=False, scale=0.3):
    """Raw tensors of one [1, 2, 1] MLP: (W1, b1, W2, b2[, ln1 w, ln1 b, ln2 w, ln2 b])."""
    out = [torch.randn(2 * dim, dim, generator=gen) * scale, torch.randn(2 * dim, generator=gen) * scale,
           torch.randn(dim, 2 * dim, generator=gen) * scale, torch.randn(dim, generator=gen) * scale]
    if layer_norm:
        out += [1 + torch.randn(2 * dim, generator=gen) * 0.1, torch.randn(2 * dim, generator=gen) * 0.1,
                1 + torch.randn(dim, generator=gen) * 0.1, torch.randn(dim, generator=gen) * 0.1]
    return out


def a1111_state_dict(w, layer_norm=False):
    """The module's state dict as A1111 saves it: relu, dropout after the hidden layer (last_layer_dropout), so
    Sequential indices are Linear 0, ReLU 1, [LayerNorm 2], Dropout, Linear, [LayerNorm]."""
    if not layer_norm:
        return {"linear.0.weight": w[0], "linear.0.bias": w[1], "linear.3.weight": w[2], "linear.3.bias": w[3]}
    return {"linear.0.weight": w[0], "linear.0.bias": w[1], "linear.2.weight": w[4], "linear.2.bias": w[5],
            "linear.4.weight": w[2], "linear.4.bias": w[3], "linear.5.weight": w[6], "linear.5.bias": w[7]}


def write_hypernetwork(path, dims=(32, 64), seed=0, layer_norm=False):
    """An A1111 hypernetwork file (its Hypernetwork.save layout); returns {dim: (k weights, v weights)}."""
    g = torch.Generator().manual_seed(seed)
    weights = {dim: (mlp_weights(dim, g, layer_norm), mlp_weights(dim, g, layer_norm)) for dim in dims}
    data = {dim: (a1111_state_dict(k, layer_norm), a1111_state_dict(v, layer_norm)) for dim, (k, v) in weights.items()}
    data.update(step=1200, name=path.stem, layer_structure=[1, 2, 1], activation_func="relu",
                is_layer_norm=layer_norm, weight_initialization="Normal", sd_checkpoint="7460a6fa",
                sd_checkpoint_name="model", activate_output=False, use_dropout=True, dropout_structure=[0, 0.3, 0],
                last_layer_dropout=True, optional_info=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return weights


def formula(x, w, strength, layer_norm=False):
    """A1111's HypernetworkModule.forward, written out: x + mlp(x) * strength (dropout is off in eval)."""
    h = F.relu(x @ w[0].T + w[1])
    if layer_norm:
        h = F.layer_norm(h, h.shape[-1:], w[4], w[5])
    y = h @ w[2].T + w[3]
    if layer_norm:
        y = F.layer_norm(y, y.shape[-1:], w[6], w[7])
    return x + y * strength


@pytest.mark.parametrize("layer_norm", [False, True])
def test_k_and_v_inputs_follow_a1111s_formula(sd1, tmp_path, layer_norm):
    w1 = write_hypernetwork(tmp_path / "a.pt", seed=1, layer_norm=layer_norm)
    w2 = write_hypernetwork(tmp_path / "b.pt", dims=(32,), seed=2, layer_norm=layer_norm)
    a, b = load_hypernetwork(tmp_path / "a.pt"), load_hypernetwork(tmp_path / "b.pt")
    assert a.widths() == [32, 64] and a.settings["dropout_structure"] == [0, 0.3, 0]
    unet = sd1.unet
    cross = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    mid_self = unet.mid_block.attentions[0].transformer_blocks[0].attn1  # width 64: only `a` has a pair for it
    ctx = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3))
    img = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    handle = apply_hypernetworks(unet, [(a, 0.7), (b, 0.4)])  # chained in this order, as A1111 does
    try:
        with torch.no_grad():
            k, v = cross.to_k(ctx), cross.to_v(ctx)
            k64 = mid_self.to_k(img)
    finally:
        handle.remove()
    want_k = formula(formula(ctx, w1[32][0], 0.7, layer_norm), w2[32][0], 0.4, layer_norm)
    want_v = formula(formula(ctx, w1[32][1], 0.7, layer_norm), w2[32][1], 0.4, layer_norm)
    torch.testing.assert_close(k, F.linear(want_k, cross.to_k.weight, cross.to_k.bias))
    torch.testing.assert_close(v, F.linear(want_v, cross.to_v.weight, cross.to_v.bias))
    torch.testing.assert_close(k64, F.linear(formula(img, w1[64][0], 0.7, layer_norm), mid_self.to_k.weight))
    assert all(not m._forward_pre_hooks for m in unet.modules())


def test_old_keys_and_defaults_load(tmp_path):
    """The first hypernetworks (Oct 2022): linear1/linear2 keys, no settings (A1111's defaults: [1, 2, 1], no
    activation)."""
    g = torch.Generator().manual_seed(0)
    sd = {"linear1.weight": torch.randn(64, 32, generator=g), "linear1.bias": torch.randn(64, generator=g),
          "linear2.weight": torch.randn(32, 64, generator=g), "linear2.bias": torch.randn(32, generator=g)}
    torch.save({32: (sd, sd)}, tmp_path / "old.pt")
    net = load_hypernetwork(tmp_path / "old.pt")
    x = torch.randn(3, 32, generator=g)
    with torch.no_grad():
        got = net.layers[32][0](x, 0.5)
    want = x + ((x @ sd["linear1.weight"].T + sd["linear1.bias"]) @ sd["linear2.weight"].T + sd["linear2.bias"]) * 0.5
    torch.testing.assert_close(got, want)
    assert net.name == "old"


def test_files_that_are_not_hypernetworks_are_refused_by_name(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(2)}}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelLoadError, match="ckpt.pt.*not an A1111 hypernetwork"):
        load_hypernetwork(tmp_path / "ckpt.pt")
    write_hypernetwork(tmp_path / "bad.pt")
    data = torch.load(tmp_path / "bad.pt", weights_only=True)
    data["layer_structure"] = [1, 3, 1]
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="bad.pt.*does not match its settings"):
        load_hypernetwork(tmp_path / "bad.pt")


@pytest.fixture
def hyper_session(sd1, tmp_path):
    root = tmp_path / "webui"
    write_hypernetwork(root / "models" / "hypernetworks" / "anime.pt")
    s = Session(outputs_dir=tmp_path / "out", progress=False, models_dir=root)
    s.load(sd1)
    return s


def hooks_and_processors(unet):
    return ({name: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for name, m in unet.named_modules()},
            dict(unet.attn_processors))


def test_hypernet_tag_changes_the_image_keeps_the_tag_in_the_infotext_and_is_removed(hyper_session):
    s = hyper_session
    before = hooks_and_processors(s.model.unet)
    plain = s.txt2img(prompt="a red circle", **BASE)
    hyper = s.txt2img(prompt="a red circle <hypernet:anime:0.6>", **BASE)
    assert not torch.equal(plain.latents, hyper.latents)
    assert hooks_and_processors(s.model.unet) == before and s.model.applied_hypernetworks == []
    assert not any("not applied" in w for w in hyper.warnings)
    # A1111 1.10 writes no Hypernet key: the tag stays in the prompt (old infotexts' Hypernet keys become one)
    parsed = infotext.parse(hyper.infotexts[0])
    assert parsed["Prompt"] == "a red circle <hypernet:anime:0.6>" and "Hypernet" not in parsed
    assert torch.equal(s.txt2img(**infotext.to_params(hyper.infotexts[0])).latents, hyper.latents)
    assert torch.equal(s.txt2img(prompt="a red circle", **BASE).latents, plain.latents)
    zero = s.txt2img(prompt="a red circle <hypernet:anime:0>", **BASE)
    assert torch.equal(zero.latents, plain.latents)


def test_old_infotext_hypernet_key_reproduces_the_tag_job(hyper_session):
    s = hyper_session
    tagged = s.txt2img(prompt="girl<hypernet:anime:0.8>", **BASE)
    old = tagged.infotexts[0].replace("girl<hypernet:anime:0.8>", "girl") + ", Hypernet: anime, Hypernet strength: 0.8"
    assert torch.equal(s.txt2img(**infotext.to_params(old)).latents, tagged.latents)


def test_hooks_come_off_when_a_job_fails(hyper_session):
    s = hyper_session
    before = hooks_and_processors(s.model.unet)

    def boom(state):
        assert any(m._forward_pre_hooks for m in s.model.unet.modules())  # installed during the job
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        s.txt2img(prompt="a red circle <hypernet:anime>", hooks=[boom], **BASE)
    assert hooks_and_processors(s.model.unet) == before and s.model.applied_hypernetworks == []


def test_unknown_hypernetwork_fails_before_any_model_call(hyper_session):
    calls = []
    with pytest.raises(ValueError, match="anmie"):
        hyper_session.txt2img(prompt="x <hypernet:anmie:1>", hooks=[lambda st: calls.append(1)], **BASE)
    assert calls == []
    with pytest.raises(ValueError, match="twice with different strengths"):
        hyper_session.txt2img(prompt="x <hypernet:anime:1> <hypernet:anime:0.5>", **BASE)
