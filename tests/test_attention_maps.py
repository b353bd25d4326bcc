"""Cross-attention maps: probabilities sum to 1 over tokens, the right token lights up, processors restored."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from nbdiffuse.inspect import AttentionMaps, RecordingAttnProcessor
from nbdiffuse.inspect.attention import word_positions

PARAMS = dict(prompt="a red circle", negative_prompt="blurry", steps=3, seed=2, width=64, height=64,
              sampler_name="Euler")


def test_processor_matches_diffusers_and_probabilities_sum_to_one():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=4, dim_head=4)
    hidden, context = torch.randn(2, 9, 16), torch.randn(2, 5, 12)
    seen = []
    expected = AttnProcessor2_0()(attn, hidden, context)
    got = RecordingAttnProcessor(lambda probs, a: seen.append(probs))(attn, hidden, context)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    (probs,) = seen
    assert probs.shape == (2, 4, 9, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 9))
    # self-attention goes to the original processor untouched
    self_attn = Attention(query_dim=16, heads=4, dim_head=4)
    assert torch.equal(RecordingAttnProcessor(seen.append, AttnProcessor2_0())(self_attn, hidden, None),
                       AttnProcessor2_0()(self_attn, hidden, None))
    assert len(seen) == 1


def test_session_maps_sum_to_one_and_processors_come_back(session):
    unet = session.model.unet
    before = {name: p for name, p in unet.attn_processors.items()}
    with AttentionMaps(session, words=["circle", "red"]) as maps:
        result = session.txt2img(**PARAMS)
    assert unet.attn_processors == before
    assert maps.steps == [0, 1, 2] and len(maps.layers) == 4
    assert all(name.endswith("attn2") for name in maps.layers)
    for kwargs in ({}, {"step": 1}, {"layer": maps.layers[-1]}):
        total = maps.token_maps(**kwargs).sum(0)
        torch.testing.assert_close(total, torch.ones_like(total))
    heat = maps.heatmap("circle")
    assert heat.shape == (64, 64) and 0 <= float(heat.min()) and float(heat.max()) <= 1
    assert maps.heatmap("circle", normalize=True).max() == pytest.approx(1.0)
    assert set(maps.per_step("red")) == {0, 1, 2} and len(maps.per_layer("red")) == 4
    assert maps.heatmap("circle", layer=maps.layers[0], size=(16, 16)).shape == (16, 16)
    assert [t for _, t in maps.tokens()] == ["a</w>", "red</w>", "circle</w>"]
    overlay = maps.overlay(result.image, "circle")
    assert isinstance(overlay, Image.Image) and overlay.size == (64, 64)
    with pytest.raises(KeyError, match="not in the prompt"):
        maps.heatmap("square")


def test_each_image_of_a_batch_has_the_maps_it_has_alone(session):
    with AttentionMaps(session, words=["circle"]) as batch:
        session.txt2img(**PARAMS, batch_size=2)
    with AttentionMaps(session, words=["circle"]) as alone:
        session.txt2img(**{**PARAMS, "seed": PARAMS["seed"] + 1})
    assert torch.equal(batch.token_maps(image=1), alone.token_maps(image=0))
    assert not torch.equal(batch.token_maps(image=0), batch.token_maps(image=1))


def test_layers_filter_and_restore_on_error(session):
    unet = session.model.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="stop"):
        with AttentionMaps(session, layers="up_blocks", steps=[0]) as maps:
            session.txt2img(hooks=[lambda s: (_ for _ in ()).throw(RuntimeError("stop")) if s.i == 1 else None],
                            **PARAMS)
    assert unet.attn_processors == before and session.hooks == []
    assert maps.layers and all(name.startswith("up_blocks.") for name in maps.layers)
    assert maps.steps == [0]


def test_multi_token_word_positions(sd1):
    tok = sd1.tokenizers[0]
    n = len(tok("nbdiffusion", add_special_tokens=False)["input_ids"])
    assert n > 1
    assert word_positions("a nbdiffusion circle, a circle", "nbdiffusion", tok) == list(range(2, 2 + n))
    assert word_positions("a nbdiffusion circle, a circle", "circle", tok) == [2 + n, 2 + n + 3]
    assert word_positions("a red circle AND a square", "circle", tok) == [3]


def test_points_at_the_dominant_token_on_a_constructed_case():
    """Queries made constant (to_q: zero weight, bias u) and a context that is zero except at "circle", whose
    key is parallel to u: every query position of every layer must attend to "circle" alone."""
    from nbdiffuse.testing import tiny_sd1

    bundle = tiny_sd1(seed=1)
    unet = bundle.unet
    prompt = "a red circle"
    pos = word_positions(prompt, "circle", bundle.tokenizers[0])
    assert pos == [3]
    torch.manual_seed(0)
    v = torch.randn(32)
    context = torch.zeros(1, 77, 32)
    context[0, 3] = v
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            k = module.to_k.weight @ v  # the key of the "circle" token
            heads = k.reshape(module.heads, -1)
            c = 30.0 / (module.scale * heads.pow(2).sum(-1).min())  # every head's logit >= 30
            q = torch.nn.Linear(module.to_q.in_features, module.to_q.out_features, bias=True)
            with torch.no_grad():
                q.weight.zero_()
                q.bias.copy_(k * c)
            module.to_q = q
    with AttentionMaps(bundle, words=["circle"], prompt=prompt) as maps, torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), encoder_hidden_states=context)
    assert len(maps.layers) == 4
    circle, red = maps.heatmap("circle"), maps.heatmap("red")
    assert circle.shape == (64, 64)
    assert float(circle.min()) > 0.999 and float(red.max()) < 1e-6
    for layer in maps.layers:
        assert float(maps.heatmap("circle", layer=layer).min()) > 0.999


def test_sdxl_shapes(sdxl):
    from nbdiffuse import Session

    s = Session(outputs_dir=None, progress=False)
    s.load(sdxl)
    with AttentionMaps(s, words=["circle"]) as maps:
        s.txt2img(**dict(PARAMS, steps=2, width=64, height=96))
    assert len(maps.layers) == 8  # 2 transformer layers in each of: 1 down, 1 mid, 2 up attentions
    heat = maps.heatmap("circle")
    assert heat.shape == (96, 64)
    total = maps.token_maps().sum(0)
    assert total.shape == (12, 8)
    torch.testing.assert_close(total, torch.ones_like(total))
