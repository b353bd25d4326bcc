"""The VAE between pixels and latents: A1111's scaling, one image at a time, NaN recovery in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .._notes import note_once
from .memory import vae_tiling
from .precision import dtype_name, vae_fallbacks

#: ``image.info`` key :func:`decode` sets on an image it had to decode again: the dtype that gave finite pixels.
UPCAST_INFO = "nbdiffuse.vae_upcast"


def vae_scaling(vae, default_scale: float = 0.18215) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a VAE: latents = (encoded - shift) * scale (SD's 0.18215, no shift;
    TAESD's ``default_scale`` is 1.0)."""
    config = vae.config
    scale = getattr(config, "scaling_factor", None) or default_scale
    return float(scale), float(getattr(config, "shift_factor", None) or 0.0)


@torch.no_grad()
def decode(bundle, latents: torch.Tensor, warnings_out: list[str], *, tiled: bool = False) -> list[Image.Image]:
    """VAE-decode latents to PIL images; a NaN decode in half precision is redone in float32 (and kept so).

    One image at a time, as A1111 does (``decode_latent_batch``): a batched convolution rounds differently from a
    single one, and image i of a batch must equal, pixel for pixel, the image made alone from its infotext.
    ``tiled``: decode in diffusers' overlapping tiles (:func:`~nbdiffuse.models.memory.wants_vae_tiling` decides).
    """
    vae = bundle.vae
    scale, shift = vae_scaling(vae)

    def run() -> torch.Tensor:
        # bundle.device, not vae.device: under medvram the VAE waits on the CPU, and the offload hook moves the
        # VAE, not decode()'s arguments, to the device
        z = (latents / scale + shift).to(device=bundle.device, dtype=vae.dtype)
        with vae_tiling(vae, tiled):
            return torch.cat([vae.decode(z[i:i + 1], return_dict=False)[0].float() for i in range(len(z))])

    # Every pixel is checked (A1111 looks at one element). A failed decode is redone for these latents only, in
    # bfloat16 (float32's range) where the device has it, else float32; the VAE keeps its dtype for the next image.
    pixels = run()
    upcast = None
    first = vae.dtype
    for dtype in vae_fallbacks(first, pixels.device) if not torch.isfinite(pixels).all() else []:
        with cast_for_now(vae, dtype):
            pixels = run()
        if torch.isfinite(pixels).all():
            upcast = dtype_name(dtype)
            note_once(warnings_out, f"The VAE produced NaN/inf pixels in {dtype_name(first)}; the image was decoded "
                                    f"again in {upcast} (its infotext says VAE upcast: {upcast}). A VAE safe in "
                                    "float16 (the SDXL fp16-fix VAE) or Session(vae_dtype=torch.bfloat16) avoids "
                                    "the second decode.")
            break
    if not torch.isfinite(pixels).all():
        note_once(warnings_out, "The VAE produced NaN/inf pixels even in float32: the latents are broken; "
                                "the affected pixels are black.")
        pixels = torch.nan_to_num(pixels, nan=-1.0, posinf=1.0, neginf=-1.0)
    pixels = ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray((px * 255).round().astype(np.uint8)) for px in pixels]
    for image in images if upcast else []:
        image.info[UPCAST_INFO] = upcast
    return images


@contextlib.contextmanager
def cast_for_now(module: torch.nn.Module, dtype: torch.dtype):
    """``module`` in ``dtype`` inside the block, with its very own weights back afterwards (float16 -> bfloat16 ->
    float16 would round them)."""
    saved = [(t, t.data) for t in (*module.parameters(), *module.buffers())]
    torch.nn.Module.to(module, dtype=dtype)  # not diffusers' .to(), which warns about every cast
    try:
        yield module
    finally:
        for t, data in saved:
            t.data = data


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (all the same size) -> ``(N, 3, H, W)`` float32 in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2.0 - 1.0


@torch.no_grad()
def encode(bundle, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """VAE-encode PIL images (or ``(N, 3, H, W)`` pixels in [-1, 1]) to scaled latents (float32, on the device).

    Uses the mean of the VAE's latent distribution. A1111 (``get_first_stage_encoding``) draws a *sample* from it
    with the global, unseeded RNG, so its img2img is not exactly reproducible; SD's VAE posterior is so narrow
    (std ~1e-3 of the latent's) that the mean is the same image, and it is deterministic. One image at a time, as
    A1111's ``images_tensor_to_samples`` does, so an image's latents do not depend on the batch it came in.
    """
    vae = bundle.vae
    scale, shift = vae_scaling(vae)
    pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    pixels = pixels.to(device=bundle.device, dtype=vae.dtype)  # bundle.device: see decode
    mean = torch.cat([vae.encode(pixels[i:i + 1], return_dict=False)[0].mean for i in range(len(pixels))])
    return ((mean.float() - shift) * scale).to(bundle.device)
