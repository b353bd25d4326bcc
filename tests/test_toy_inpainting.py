"""The toy inpainting model (``toy-inpainting.safetensors``, a 9-channel UNet fine-tuned from the toy model): it is
small, shares the toy's VAE and text encoder, uses the masked image it is given, and paints the prompt into the
hole. Judged by the toy world's own pixel classifier (:mod:`nbdiffuse.toy.checker`)."""

import numpy as np
import pytest
import torch
from conftest import drive

from nbdiffuse import Session
from nbdiffuse.jobs.driver import denoiser_for, plan_pass, run_pass
from nbdiffuse.jobs.params import GenerationParams
from nbdiffuse.jobs.txt2img import first_pass_sigmas
from nbdiffuse.models.inpainting import inpainting_conditioning, txt2img_conditioning
from nbdiffuse.models.vae import decode, images_to_tensor
from nbdiffuse.toy import INPAINTING_CHECKPOINT_NAME, WEIGHTS_DIR, load_toy
from nbdiffuse.toy.checker import NAMES, classify_pixels
from nbdiffuse.toy.world import render

SEEDS = range(4)
# a red circle at the left of a white picture; the hole is a box at the right
SCENE = {"objects": [{"colour": "red", "shape": "circle", "size": "small", "position": "left", "cx": 16, "cy": 32,
                      "side": 24}], "background": {"kind": "plain", "colours": ["white"]}}
HOLE = (slice(16, 48), slice(34, 62))
FAR = np.ones((64, 64), bool)  # the picture away from the hole (and its 4-pixel rim)
FAR[12:52, 30:64] = False


@pytest.fixture(scope="module")
def toy_inpainting():
    session = Session(outputs_dir=None, progress=False)
    session.load("toy-inpainting", hash=False)
    return session


def generate(session, prompt, seed, image_cond):
    bundle = session.model
    p = GenerationParams(prompt=prompt, steps=20, seed=seed, width=64, height=64, sampler_name="Euler", cfg_scale=5)
    plan = plan_pass(bundle, p, session.encoder, prompt, "", first_pass_sigmas(bundle, p))
    outcome, _ = drive(run_pass(plan, denoiser_for(bundle), [seed], [seed], (4, 8, 8), image_cond=image_cond))
    return decode(bundle, outcome.x, [])[0]


def hole_share(image, colour):
    return float((classify_pixels(image)[HOLE] == NAMES.index(colour)).mean())


def test_toy_inpainting_model_is_small_and_shares_the_toy_vae_and_text_encoder():
    path = WEIGHTS_DIR / INPAINTING_CHECKPOINT_NAME
    assert path.stat().st_size <= 20_000_000
    toy, inpainting = load_toy(hash=False), load_toy(hash=False, inpainting=True)
    assert inpainting.is_inpainting and not toy.is_inpainting and inpainting.name == "toy-inpainting"
    for a, b in ((toy.vae, inpainting.vae), (toy.text_encoders[0], inpainting.text_encoders[0])):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_toy_inpainting_keeps_the_picture_around_the_hole_and_paints_the_prompt_into_it(toy_inpainting):
    bundle = toy_inpainting.model
    source = render(SCENE)
    mask = np.zeros((64, 64), np.float32)
    mask[HOLE] = 1
    cond = inpainting_conditioning(bundle, images_to_tensor([source]), (8, 8), mask)
    grey = txt2img_conditioning(bundle, (8, 8))
    original = np.asarray(source, dtype=float)

    def far_diff(image):
        return float(np.abs(np.asarray(image, dtype=float) - original)[FAR].mean())

    shares = {}
    for colour in ("blue", "green"):
        prompt = f"a red circle and a {colour} square on a white background"
        images = [generate(toy_inpainting, prompt, seed, cond) for seed in SEEDS]
        shares[colour] = {c: np.mean([hole_share(im, c) for im in images]) for c in ("blue", "green")}
        # the model was shown the picture around the hole: it keeps it (median over seeds, 0..255 per channel)
        assert np.median([far_diff(im) for im in images]) < 10
    # ... and draws the prompted colour in the hole
    assert shares["blue"]["blue"] > 0.2 and shares["blue"]["blue"] > 3 * shares["blue"]["green"]
    assert shares["green"]["green"] > 0.2 and shares["green"]["green"] > 3 * shares["green"]["blue"]
    # shown the grey picture (txt2img's conditioning) it makes a picture of its own
    unseen = [generate(toy_inpainting, "a red circle and a blue square on a white background", seed, grey)
              for seed in SEEDS]
    assert np.median([far_diff(im) for im in unseen]) > 25


def test_toy_inpainting_txt2img_draws_the_prompt(toy_inpainting):
    result = toy_inpainting.txt2img(prompt="a large blue square on a white background", steps=20, seed=3,
                                    batch_size=2, sampler_name="Euler")
    for image in result.images:
        share = float((classify_pixels(image) == NAMES.index("blue")).mean())
        assert share > 0.1, share
