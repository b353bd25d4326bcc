"""``tiling=True``: seamless textures by circular padding in every UNet and VAE convolution (A1111's Tiling)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def circular_padding(bundle, enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``Conv2d`` of the bundle's UNet and VAE pads circularly (the image wraps around
    left/right and top/bottom); the previous padding modes are restored afterwards, also on error."""
    if not enabled:
        yield
        return
    saved = []
    for model in (bundle.unet, bundle.vae):
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                saved.append((module, module.padding_mode))
                module.padding_mode = "circular"
    try:
        yield
    finally:
        for module, mode in saved:
            module.padding_mode = mode
