"""The embedded toy model: a few-megabyte, trained Stable Diffusion 1.x-architecture model of a world of
coloured shapes ("a red circle on a blue background"). See ``MODEL_CARD.md`` in this folder.

- :mod:`nbdiffuse.toy.world`: the procedural renderer and caption generator (the training data);
- :mod:`nbdiffuse.toy.checker`: a deterministic image checker for that world (colour, shape, count);
- :mod:`nbdiffuse.toy.train`: ``python -m nbdiffuse.toy.train`` reproduces the weights on a CPU;
- :mod:`nbdiffuse.toy.evaluate`: ``python -m nbdiffuse.toy.evaluate`` measures them;
- :mod:`nbdiffuse.toy.train_inpainting`: ``python -m nbdiffuse.toy.train_inpainting`` fine-tunes them into the toy
  inpainting model (a 9-channel UNet, like ``sd-v1-5-inpainting``);
- :mod:`nbdiffuse.toy.train_upscaler`: ``python -m nbdiffuse.toy.train_upscaler`` trains ``weights/toy-upscaler-2x
  .safetensors``, a 2x model upscaler (Real-ESRGAN's Compact architecture, loaded by spandrel) for the toy world.

``load_toy()`` returns the shipped weights as a :class:`~nbdiffuse.models.bundle.ModelBundle`
(``load_toy(inpainting=True)``: the inpainting one).
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CHECKPOINT_NAME = "toy.safetensors"
INPAINTING_CHECKPOINT_NAME = "toy-inpainting.safetensors"

__all__ = ["CHECKPOINT_NAME", "INPAINTING_CHECKPOINT_NAME", "WEIGHTS_DIR", "load_toy", "preview_matrix"]


def preview_matrix(folder=None) -> list[list[float]]:
    """The fitted 4x3 "Approx cheap" latent -> RGB matrix: ``rgb = latent @ M * 0.5 + 0.5``."""
    folder = Path(folder) if folder is not None else WEIGHTS_DIR
    return json.loads((folder / "preview.json").read_text())["latent_rgb_factors"]


def load_toy(folder=None, device=None, dtype=None, hash: bool = True, *, inpainting: bool = False):
    """Load the toy model (``toy.safetensors`` in ``folder``, the package's own by default) as a ``ModelBundle``,
    through the same single-file loader as any A1111 checkpoint. Weights are stored in float16 and loaded as
    float32 unless ``dtype`` says otherwise. Never touches the network. ``inpainting=True``: the toy inpainting
    model (``toy-inpainting.safetensors``: the same VAE and text encoder, a 9-channel UNet).
    """
    import torch

    from nbdiffuse.models.checkpoint import load_checkpoint

    folder = Path(folder) if folder is not None else WEIGHTS_DIR
    path = folder / (INPAINTING_CHECKPOINT_NAME if inpainting else CHECKPOINT_NAME)
    if not path.is_file():
        script = "train_inpainting" if inpainting else "train"
        raise FileNotFoundError(f"{path}: no toy model weights here; train them with "
                                f"`python -m nbdiffuse.toy.{script}`")
    bundle = load_checkpoint(path, device=device or "cpu", dtype=dtype or torch.float32, hash=hash)
    bundle.name = "toy-inpainting" if inpainting else "toy"
    bundle.info["source"] = "nbdiffuse.toy"
    bundle.info["latent_rgb_factors"] = preview_matrix(folder)
    return bundle
