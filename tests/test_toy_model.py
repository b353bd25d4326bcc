"""Behaviour of the embedded toy model (a trained SD1-architecture model shipped in the package).

These tests read images with the toy world's own checker (the colour and shape of the largest object, the object
count) and the fraction of pixels nearest to the world's red. Its measured accuracies are in toy/MODEL_CARD.md.
"""

import numpy as np
import pytest

from nbdiffuse import Session, infotext
from nbdiffuse.toy.checker import NAMES, check, classify_pixels

BASE = dict(steps=12, sampler_name="Euler a", cfg_scale=7.0, width=64, height=64)
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def toy():
    s = Session(outputs_dir=None, progress=False)
    s.load("toy")
    return s


def red_fraction(session, **params) -> float:
    """Mean fraction of pixels nearest to the world's red, over SEEDS."""
    red = NAMES.index("red")
    return float(np.mean([(classify_pixels(session.txt2img(**{**BASE, **params, "seed": s}).images[0]) == red).mean()
                          for s in SEEDS]))


def test_loads_through_the_single_file_loader_as_sd1(toy):
    assert toy.model.arch == "sd1" and toy.model.prediction_type == "epsilon"
    assert toy.model.path.endswith("toy.safetensors") and len(toy.model.hash) == 10


def test_without_a_size_it_renders_at_the_size_it_was_trained_at(toy):
    r = toy.txt2img(prompt="a red circle", steps=1, seed=1)
    assert toy.model.native_size == (64, 64) and r.images[0].size == (64, 64)
    assert infotext.parse(r.infotexts[0])["Size"] == "64x64"


def test_a_prompt_about_red_yields_a_red_object(toy):
    colours = [check(toy.txt2img(**BASE, prompt="a red circle on a white background", seed=s).images[0])["colour"]
               for s in SEEDS]
    assert colours.count("red") >= 3, colours
    assert red_fraction(toy, prompt="a red circle on a white background") > \
        red_fraction(toy, prompt="a green circle on a white background") + 0.1


def test_negative_prompt_red_reduces_redness(toy):
    plain = red_fraction(toy, prompt="a red square on a black background")
    negated = red_fraction(toy, prompt="a red square on a black background", negative_prompt="red")
    assert negated < plain - 0.03


def test_emphasis_red_14_is_redder_than_red_07(toy):
    """A1111's (word:weight) on the toy model, in the default "Original" emphasis mode (weights, then the mean
    restored) and in "No norm": the red area grows with the weight."""
    for mode in ("Original", "No norm"):
        red = {w: red_fraction(toy, prompt=f"a (red:{w}) triangle on a white background", emphasis=mode)
               for w in (0.7, 1.4)}
        assert red[1.4] > red[0.7] + 0.02, (mode, red)


@pytest.mark.parametrize("prompt, shape", [("a yellow star on a blue background", "star"),
                                           ("a white triangle", "triangle"),
                                           ("a green cross on a black background", "cross"),
                                           ("a purple square", "square")])
def test_a_prompt_about_a_shape_yields_that_shape(toy, prompt, shape):
    found = [check(toy.txt2img(**BASE, prompt=prompt, seed=s).images[0])["shape"] for s in SEEDS]
    assert found.count(shape) >= 3, found


def test_prompt_editing_gives_a_third_image(toy):
    images = {p: np.asarray(toy.txt2img(**BASE, prompt=p, seed=4).images[0]).astype(int)
              for p in ("a red circle", "a blue circle", "a [red:blue:0.5] circle")}
    edited = images["a [red:blue:0.5] circle"]
    assert np.abs(edited - images["a red circle"]).mean() > 3
    assert np.abs(edited - images["a blue circle"]).mean() > 3


def test_same_seed_same_pixels_and_infotext_reproduces(toy):
    a = toy.txt2img(**BASE, prompt="a yellow star", seed=11)
    b = toy.txt2img(**infotext.to_params(a.infotexts[0]))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert "Model: toy" in a.infotexts[0]
