"""Previews (A1111's cheap matrices, TAESD, full VAE), the preview hook, the Recorder and the trajectory figure."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from nbdiffuse.inspect import LATENT_RGB_FACTORS, Recorder, cheap_preview, cheap_rgb, preview, preview_hook
from nbdiffuse.inspect.previews import taesd_preview, vae_preview
from nbdiffuse.viz.trajectory import trajectory, trajectory_stats

PARAMS = dict(prompt="a red circle", negative_prompt="blurry", steps=4, seed=7, width=64, height=64,
              sampler_name="Euler a")


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_cheap_preview_uses_a1111_matrices(arch):
    latent = torch.zeros(4, 2, 3)
    latent[1] = 1.0  # channel 1 only: rgb = row 1 of the matrix, then * 0.5 + 0.5
    image = cheap_preview(latent, arch)
    assert isinstance(image, Image.Image) and image.size == (3, 2)
    expected = np.round((np.array(LATENT_RGB_FACTORS[arch][1]) * 0.5 + 0.5) * 255)
    assert (np.asarray(image)[0, 0] == expected).all()
    assert torch.allclose(cheap_rgb(latent, arch)[:, 0, 0], torch.tensor(LATENT_RGB_FACTORS[arch][1]) * 0.5 + 0.5)


def test_cheap_preview_batch_clamp_and_fitted_matrix(sd1):
    batch = torch.full((2, 4, 5, 5), 100.0)
    images = cheap_preview(batch, sd1, size=(20, 20))
    assert len(images) == 2 and images[0].size == (20, 20)
    assert set(np.unique(np.asarray(images[0]))) <= {0, 255}

    class Fitted:  # a bundle carrying its own matrix (as the toy model does)
        arch = "sd1"
        info = {"latent_rgb_factors": [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]]}

    latent = torch.zeros(4, 1, 1)
    latent[2] = 1.0
    assert np.asarray(cheap_preview(latent, Fitted()))[0, 0].tolist() == [128, 128, 255]
    with pytest.raises(ValueError, match="no cheap-preview matrix"):
        cheap_preview(latent, "sd9")
    with pytest.raises(ValueError, match="method"):
        preview(latent, "fancy", arch="sd1")


def test_taesd_preview_with_a_tiny_random_autoencoder_tiny():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).eval()
    image = taesd_preview(torch.randn(4, 6, 5), taesd)
    assert isinstance(image, Image.Image) and image.size == (40, 48)
    images = preview(torch.randn(2, 4, 6, 5), "taesd", taesd=taesd)
    assert [im.size for im in images] == [(40, 48)] * 2


def test_hooks_previews_recorder_and_trajectory(session):
    reference = session.txt2img(**PARAMS)
    seen = []
    rec = Recorder()
    hook = preview_hook(every=3, callback=lambda image, state: seen.append((state.i, image.size)), session=session)
    result = session.txt2img(hooks=[hook, rec], **PARAMS)
    assert torch.equal(result.latents, reference.latents)  # observing changes nothing
    assert seen == [(2, (8, 8)), (3, (8, 8))]  # every 3rd step and the last
    assert hook.last.size == (8, 8)
    assert vae_preview(rec.states[-1].denoised[0], session.model).size == (64, 64)

    assert len(rec) == 4 and all(s.x.device.type == "cpu" for s in rec.states)
    assert torch.equal(rec.states[-1].x, result.latents)
    stats = trajectory_stats(rec)
    assert [r["i"] for r in stats] == [0, 1, 2, 3]
    assert math.isnan(stats[0]["eps_rms"]) and all(r["eps_rms"] > 0 for r in stats[1:])
    assert all(r["guidance_rms"] > 0 for r in stats)
    assert stats[0]["sigma"] > stats[-1]["sigma"] and stats[-1]["sigma_next"] == 0
    fig = trajectory(rec, bundle=session.model, columns=3)
    assert len(fig.axes) == 2 * 3 + 2

    small = Recorder(every=2, keep=("denoised",))
    session.txt2img(hooks=[small], **dict(PARAMS, n_iter=2))
    assert [s.i for s in small.states] == [1, 3] and small.states[0].x is None
    assert small.states[0].extra["cond"] is None and small.states[0].denoised is not None
    with pytest.raises(ValueError, match="keep"):
        Recorder(keep=("noise",))
