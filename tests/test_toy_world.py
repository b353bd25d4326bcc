"""The toy world's renderer, captions and checker (no trained model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from nbdiffuse.toy import checker, world


def test_sample_is_deterministic_from_the_seed():
    a = [world.sample(np.random.default_rng(7)) for _ in range(2)]
    (img1, cap1, lab1), (img2, cap2, lab2) = a
    assert cap1 == cap2 and lab1 == lab2
    assert np.array_equal(np.asarray(img1), np.asarray(img2))
    img3, cap3, lab3 = world.sample(np.random.default_rng(8))
    assert (cap3, lab3) != (cap1, lab1) or not np.array_equal(np.asarray(img3), np.asarray(img1))


def test_render_reproduces_sample_and_has_the_right_format():
    rng = np.random.default_rng(3)
    for _ in range(20):
        image, _caption, labels = world.sample(rng)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(world.render(labels)))


def test_scene_constraints():
    rng = np.random.default_rng(11)
    for _ in range(300):
        labels = world.sample_labels(rng)
        objs, bg = labels["objects"], labels["background"]
        assert labels["count"] == len(objs) in (1, 2)
        colours = [o["colour"] for o in objs] + bg["colours"]
        assert len(set(colours)) == len(colours)  # objects differ from each other and from the background
        masks = world.object_masks(labels)
        for obj, mask in zip(objs, masks):
            assert obj["shape"] in world.SHAPES and obj["size"] in world.SIZES
            assert obj["position"] in world.POSITIONS
            assert mask.sum() == obj["area"] > 50
            assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
        if len(masks) == 2:
            assert not (masks[0] & masks[1]).any()
        assert labels["largest"] == int(np.argmax([o["area"] for o in objs]))


def test_captions_match_labels():
    rng = np.random.default_rng(5)
    vocab = world.all_words()
    for _ in range(500):
        _image, caption, labels = world.sample(rng)
        words = world.caption_words(caption)
        assert set(words) <= vocab, caption
        text = " " + caption.replace(",", " ,") + " "
        for obj in labels["objects"]:
            assert f" {obj['colour']} {obj['shape']} " in text, (caption, obj)
            size_words = [w for w in words if w in world.SIZES]
            if size_words:
                assert size_words == [obj["size"]]
        if labels["count"] == 1:
            # the position named (longest match: "top left" rather than "top") is the object's cell
            named = [p for p in world.POSITIONS if f" {p} " in text]
            if named:
                assert max(named, key=len) == labels["objects"][0]["position"], caption
        if "background" in words:
            for colour in labels["background"]["colours"]:
                assert colour in words
        other = set(words) & set(world.COLOURS)
        expected = {o["colour"] for o in labels["objects"]}
        if "background" in words:
            expected |= set(labels["background"]["colours"])
        assert other == expected, caption


def test_caption_phrasings_are_varied():
    rng = np.random.default_rng(0)
    captions = [world.sample(rng)[1] for _ in range(400)]
    assert any(c.startswith("a ") and " " not in c[2:].split(" ", 1)[1] for c in captions)  # "a red circle"
    assert any(" on a " in c and c.endswith("background") for c in captions)
    assert any(", " in c for c in captions)
    assert any(" and " in c and "background" not in c for c in captions)
    assert any(w in c.split() for c in captions for w in world.SIZES)


def test_vocabulary_constant():
    assert len(world.COLOURS) >= 8 and {"circle", "square", "triangle", "star"} <= set(world.SHAPES)
    assert set(world.VOCABULARY["colours"]) == set(world.COLOURS)


@pytest.mark.parametrize("shape", world.SHAPES)
def test_checker_on_single_objects(shape):
    for side in (16, 22, 30, 38):
        for colour, bg in (("red", "blue"), ("white", "black"), ("yellow", "orange")):
            labels = {"objects": [{"colour": colour, "shape": shape, "size": "small", "position": "centre",
                                   "cx": 32.0, "cy": 32.0, "side": side}],
                      "background": {"kind": "plain", "colours": [bg]}, "count": 1}
            result = checker.check(world.render(labels))
            assert (result["count"], result["colour"], result["shape"]) == (1, colour, shape)
            assert result["background"] == [bg]


def test_checker_accuracy_on_ground_truth():
    acc = checker.validate(n=600, seed=2024)
    assert acc["colour"] >= 0.98 and acc["shape"] >= 0.98 and acc["count"] >= 0.98, acc
    assert acc["all"] >= 0.98, acc


def test_checker_sees_an_empty_image():
    from PIL import Image

    result = checker.check(Image.new("RGB", (64, 64), world.COLOURS["green"]))
    assert result["count"] == 0 and result["colour"] is None and result["shape"] is None


def test_training_output_is_one_a1111_file_that_load_toy_reads(tmp_path):
    import torch

    from nbdiffuse.testing import tiny_sd1
    from nbdiffuse.toy import load_toy
    from nbdiffuse.toy.train import save_folder

    b = tiny_sd1()
    save_folder(tmp_path, b.unet, b.vae, b.text_encoders[0], [[0.1, 0.2, 0.3]] * 4, {"steps": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.json", "toy.safetensors", "training.json"]
    toy = load_toy(tmp_path, hash=False)
    assert toy.info["latent_rgb_factors"] == [[0.1, 0.2, 0.3]] * 4
    for k, v in b.unet.state_dict().items():
        assert torch.equal(v.half().float(), toy.unet.state_dict()[k]), k


def _scene(colour, shape, positions=("centre",), bg="black"):
    bg = "white" if colour == "black" else bg
    objects = [{"colour": colour, "shape": shape, "size": "small", "position": p,
                "cx": float(14 + 36 * i), "cy": float(14 + 36 * i), "side": 20} for i, p in enumerate(positions)]
    return world.render({"objects": objects, "background": {"kind": "plain", "colours": [bg]},
                         "count": len(objects)})


def test_accuracies_scores_what_the_checker_reads():
    from nbdiffuse.toy.evaluate import accuracies

    calls = []

    def truthful(prompt, seeds, cfg):  # draws exactly what the prompt asks, once per seed
        calls.append((prompt, tuple(seeds), cfg))
        colour, shape = prompt.split()[1:]
        return [_scene(colour, shape) for _ in seeds]

    r = accuracies(truthful, 7.0, [3, 4], progress=False)
    assert len(calls) == len(world.COLOURS) * len(world.SHAPES) and calls[0][1:] == ((3, 4), 7.0)
    assert r["n"] == 2 * len(calls)
    assert (r["colour"], r["shape"], r["count"], r["all"], r["duplicates"]) == (1.0, 1.0, 1.0, 1.0, 0.0)

    def doubled_circles(prompt, seeds, cfg):  # right colour, always two circles: the hires failure mode
        colour = prompt.split()[1]
        return [_scene(colour, "circle", positions=("top left", "bottom right")) for _ in seeds]

    r = accuracies(doubled_circles, 7.0, [0], progress=False)
    assert r["colour"] == 1.0 and r["count"] == 0.0 and r["duplicates"] == 1.0 and r["all"] == 0.0
    assert r["shape"] == pytest.approx(1 / len(world.SHAPES))
    assert r["shape_by_shape"]["circle"] == 1.0 and r["shape_by_shape"]["star"] == 0.0


def test_write_card_fills_and_replaces_its_blocks(tmp_path):
    from nbdiffuse.toy.evaluate import write_card

    def result(shape):
        return {"colour": 0.9, "shape": shape, "count": 0.8, "all": 0.5, "duplicates": 0.2, "n": 10,
                "shape_by_shape": {"circle": shape}, "colour_by_colour": {"red": 0.9}}

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# card\n\n<!-- metrics:begin -->\nold\n<!-- metrics:end -->\n\ntail\n")
    metrics = {"engine": "session", "steps": 20, "sampler": "Euler a", "size": "64x64", "seeds": [0, 1],
               "results": {"7": result(0.25)}}
    sizes = {"steps": 20, "sampler": "Euler a", "cfg_scale": 7.0, "seeds": [0],
             "results": {"128x128 directly": result(0.125)}}
    write_card(metrics, card, sizes=sizes)
    text = card.read_text()
    assert "old" not in text and text.startswith("# card") and "tail" in text
    assert "| 7 | 90.0% | 25.0% | 80.0% | 20.0% | 50.0% | 10 |" in text
    assert "| 128x128 directly | 90.0% | 12.5% |" in text
    metrics["results"]["7"] = result(0.75)
    write_card(metrics, card)  # replaces the metrics block in place, keeps the sizes block
    text2 = card.read_text()
    assert text2.count("<!-- metrics:begin -->") == 1 and "| 7 | 90.0% | 75.0% |" in text2
    assert "25.0%" not in text2 and "| 128x128 directly |" in text2


def test_extra_latent_noise_scales_with_the_latents_spread():
    import torch

    from nbdiffuse.toy.train import _noisy_latent

    mean = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    std = torch.zeros_like(mean)
    assert torch.equal(_noisy_latent(mean, std, torch.Generator().manual_seed(1), 0.0), mean)
    small = _noisy_latent(mean, std, torch.Generator().manual_seed(1), 0.1) - mean
    big = _noisy_latent(10 * mean, std, torch.Generator().manual_seed(1), 0.1) - 10 * mean
    assert torch.allclose(big, 10 * small, atol=1e-5)  # growing the latents does not escape the noise
    assert 0.07 < float(small.std() / mean.std()) < 0.13


def test_text_encoder_keeps_a_fixed_non_zero_mean_through_training():
    """The final LayerNorm bias is pinned at TEXT_MEAN so A1111's mean-restoring emphasis stays well defined."""
    import torch

    from nbdiffuse.models.tokenizer import clip_tokenizer
    from nbdiffuse.toy.train import TEXT_MEAN, build_models, tokenize, train_diffusion

    unet, _vae, text_encoder = build_models(0)
    norm = next(m for n, m in text_encoder.named_modules() if n.endswith("final_layer_norm"))
    embedding = next(p for n, p in text_encoder.named_parameters() if n.endswith("token_embedding.weight"))
    tokens = tokenize(clip_tokenizer("clip_l"), ["a red circle", "a blue star", "a green cross"]).view(1, 3, 77)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = embedding.detach().clone()
    train_diffusion(unet, text_encoder, latents, torch.zeros_like(latents), tokens, tokens[0, 0], steps=3, batch=2)
    assert not norm.bias.requires_grad and torch.all(norm.bias == TEXT_MEAN)
    assert not torch.equal(before, embedding)  # the rest of the text encoder did train
    with torch.no_grad():
        z = text_encoder(tokens[0]).last_hidden_state
    assert abs(float(z.mean()) - TEXT_MEAN) < 0.1
