"""The image conditioning of inpainting models (9-channel UNets), as A1111 makes it.

An inpainting UNet takes, after the 4 latent channels, 5 more (LDM's ``c_concat``): the mask (1 channel, 1 where
the picture is to be made) and the VAE latents of the masked image (4 channels). The sampler's latents and these 5
channels are concatenated for every model call (:class:`~nbdiffuse.sampling.denoiser.Denoiser`'s ``image_cond``),
the same 5 channels for the positive and the negative rows.

A1111 1.10 (``modules/processing.py``), read at chirag127/stable-diffusion-webui 5347a0d3:

- ``inpainting_image_conditioning``: the mask (``None``: all ones) rounded to 0/1 unless the caller asks for a soft
  one; the masked image ``lerp(image, image * (1 - mask), inpainting_mask_weight)`` (image in [-1, 1], so a fully
  masked pixel becomes 0, mid grey) VAE-encoded with the latent scaling (``get_first_stage_encoding``); the mask
  resized to the latent size with ``F.interpolate``'s default (nearest); ``cat([mask, latents])``. SDXL inpainting
  models always round the mask (A1111's ``is_sdxl_inpaint`` branch passes no rounding flag).
  :func:`inpainting_conditioning`.
- ``txt2img_image_conditioning``: a grey image (0.5 in [0, 1], 0 in [-1, 1]) encoded, and an all-ones mask: the
  whole picture is to be made. :func:`txt2img_conditioning`.

The VAE gives the mean of its latent distribution where A1111 draws a sample (see
:func:`~nbdiffuse.models.vae.encode`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .vae import encode, images_to_tensor, vae_scaling


def _mask_tensor(mask, size: tuple[int, int]) -> torch.Tensor:
    """``mask`` (PIL image, array or tensor, ``(H, W)`` in 0..1; a PIL image in 0..255) as ``(1, 1, H, W)``
    float32, checked against the source's ``size`` (H, W)."""
    if isinstance(mask, Image.Image):
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
    else:
        m = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, torch.Tensor) else mask)
        m = m.detach().float().cpu()
    m = m.squeeze()
    if m.ndim != 2 or tuple(m.shape) != tuple(size):
        raise ValueError(f"inpainting_conditioning: the mask is {tuple(m.shape)}, the source image {tuple(size)} "
                         "(height, width); pass the processed mask at the size of the image that is encoded")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("inpainting_conditioning: mask values must be in 0..1 (a PIL mask: 0..255); "
                         "scale it with mask / 255")
    return m[None, None]


def inpainting_conditioning(bundle, source: torch.Tensor | Sequence[Image.Image], latent_hw: tuple[int, int],
                            mask=None, weight: float = 1.0, round_mask: bool = True) -> torch.Tensor:
    """A1111's ``inpainting_image_conditioning``: the ``(b, 5, h, w)`` extra UNet input of an inpainting model.

    ``source``: the image that is encoded (``(b, 3, H, W)`` in [-1, 1], or PIL images); ``latent_hw``: the latent
    size ``(h, w)`` the sampler works at (``H // 8, W // 8``); ``mask``: the processed mask, ``(H, W)`` in 0..1
    (array or tensor) or a PIL ``L`` image, white where the picture is made, ``None`` for all ones; ``weight``:
    A1111's "Conditional mask weight" (``inpainting_mask_weight``: 1 hides the masked area from the model entirely,
    0 shows it the whole image); ``round_mask``: A1111's ``mask_round`` (soft inpainting turns it off; SDXL
    inpainting models round anyway, as A1111 does). Returns float32 on the model's device: the mask, then the
    masked image's scaled latents.

    >>> import torch
    >>> from nbdiffuse.models import tiny_sd1, inpainting_conditioning
    >>> bundle = tiny_sd1(inpainting=True)
    >>> image = torch.zeros(1, 3, 64, 64)
    >>> mask = torch.zeros(64, 64); mask[16:48, 16:48] = 1
    >>> cond = inpainting_conditioning(bundle, image, (8, 8), mask)
    >>> tuple(cond.shape), cond[0, 0, 4, 4].item(), cond[0, 0, 0, 0].item()
    ((1, 5, 8, 8), 1.0, 0.0)
    """
    pixels = source if isinstance(source, torch.Tensor) else images_to_tensor(source)
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"inpainting_conditioning: source must be (batch, 3, height, width) pixels in [-1, 1], "
                         f"got shape {tuple(pixels.shape)}")
    pixels = pixels.detach().float()
    if mask is None:
        m = torch.ones(1, 1, *pixels.shape[-2:])
    else:
        m = _mask_tensor(mask, tuple(pixels.shape[-2:]))
        if round_mask or bundle.arch.startswith("sdxl"):
            m = torch.round(m)
    m = m.to(pixels.device)
    masked = torch.lerp(pixels, pixels * (1.0 - m), float(weight))
    latents = encode(bundle, masked)
    if tuple(latents.shape[-2:]) != tuple(latent_hw):
        raise ValueError(f"inpainting_conditioning: a {tuple(pixels.shape[-2:])} image encodes to "
                         f"{tuple(latents.shape[-2:])} latents, not the {tuple(latent_hw)} asked for")
    m = F.interpolate(m.to(latents.device), size=tuple(latent_hw)).expand(latents.shape[0], -1, -1, -1)
    return torch.cat([m, latents], dim=1)


def txt2img_conditioning(bundle, latent_hw: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """A1111's ``txt2img_image_conditioning`` for an inpainting model: an all-ones mask and a grey image's latents,
    ``(batch, 5, h, w)`` (the whole picture is to be made; the same for every image, so one is encoded).

    >>> from nbdiffuse.models import tiny_sd1, txt2img_conditioning
    >>> cond = txt2img_conditioning(tiny_sd1(inpainting=True), (8, 8), batch=2)
    >>> tuple(cond.shape), bool((cond[:, 0] == 1).all())
    ((2, 5, 8, 8), True)
    """
    h, w = latent_hw
    f = bundle.vae_scale_factor
    grey = torch.zeros(1, 3, h * f, w * f)  # 0.5 in [0, 1]
    return inpainting_conditioning(bundle, grey, latent_hw).expand(batch, -1, -1, -1)


@torch.no_grad()
def decode_pixels(bundle, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's float output for scaled ``latents``, ``(b, 3, H, W)``, unclamped (A1111's ``decode_first_stage``,
    which the hires pass of an inpainting model encodes again when the mask weight is below 1).

    >>> import torch
    >>> from nbdiffuse.models import tiny_sd1
    >>> tuple(decode_pixels(tiny_sd1(), torch.zeros(1, 4, 8, 8)).shape)
    (1, 3, 64, 64)
    """
    vae = bundle.vae
    scale, shift = vae_scaling(vae)
    z = (latents / scale + shift).to(device=bundle.device, dtype=vae.dtype)
    return torch.cat([vae.decode(z[i:i + 1], return_dict=False)[0].float() for i in range(len(z))])
