"""What txt2img and the hires pass give an inpainting model (a 9-channel UNet), and when the infotext says so.

A1111 1.10 (``modules/processing.py``, read at chirag127/stable-diffusion-webui 5347a0d3):

- txt2img's first pass: ``txt2img_image_conditioning``, a grey image and an all-ones mask
  (:func:`~nbdiffuse.models.inpainting.txt2img_conditioning`);
- the hires pass (``sample_hr_pass``): with a latent upscaler, the grey/ones conditioning unless
  ``inpainting_mask_weight < 1``, when the upscaled latents are decoded and encoded again with the weight; with a
  pixel upscaler, ``img2img_image_conditioning`` of the upscaled images (all-ones mask, the weight);
- ``Conditional mask weight: <w>`` is written when the job ran the model with inpainting conditioning
  (``p.is_using_inpainting_conditioning``, :func:`mask_weight_fields`).

Where A1111 1.10 fails or slips, the evident intent is kept: with a latent upscaler and weight 1 A1111 encodes the
grey image at the first pass's size and the second pass stops with a size mismatch (A1111 issue #6281); here it
is encoded at the hires size. Its pixel-upscaler path passes the upscaled images in [0, 1] where the conditioning
takes [-1, 1] (before 1.6 it converted them; with weight 1 the image does not matter); here they are converted. And
A1111 does not crop the conditioning when ``hr_resize_x/y`` crop the latents (another size mismatch); here it is
cropped alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..models.inpainting import decode_pixels, inpainting_conditioning, txt2img_conditioning
from ..models.vae import images_to_tensor

MASK_WEIGHT_KEY = "Conditional mask weight"


def mask_weight(bundle, p) -> float | None:
    """The job's "Conditional mask weight" for an inpainting model (``p.inpainting_mask_weight``, A1111's
    default 1.0); None for other models."""
    return float(getattr(p, "inpainting_mask_weight", 1.0)) if bundle.is_inpainting else None


def hires_conditioning(bundle, latents: torch.Tensor, images: Sequence[Image.Image] | None,
                       weight: float) -> torch.Tensor:
    """The hires pass's image conditioning for the upscaled ``latents`` (before the crop): the grey/ones one for
    weight 1 (the weight hides the whole image: A1111's img2img conditioning is then the grey one too), else the
    upscaled pixels (``images`` of a pixel upscaler, or the latents decoded) with an all-ones mask and the weight."""
    hw = tuple(latents.shape[-2:])
    if weight >= 1.0:
        return txt2img_conditioning(bundle, hw, len(latents))
    pixels = images_to_tensor(images) if images else decode_pixels(bundle, latents)
    return inpainting_conditioning(bundle, pixels, hw, None, weight)


def uses_inpainting_conditioning(bundle, job: str, hires_latent: bool | None, weight: float) -> bool:
    """A1111's ``is_using_inpainting_conditioning`` at the end of a job: img2img with any inpainting model; txt2img
    with an SD1/SD2 one (their ``hybrid`` conditioning key); with an SDXL one only when the hires pass encoded an
    image (a pixel upscaler, ``hires_latent=False``, or a latent one with weight below 1). ``hires_latent`` is None
    without a hires pass."""
    if not bundle.is_inpainting:
        return False
    if job == "img2img" or not bundle.arch.startswith("sdxl"):
        return True
    return hires_latent is False or (hires_latent is True and weight < 1.0)


def mask_weight_fields(bundle, p, job: str = "txt2img", hires_latent: bool | None = None) -> dict:
    """``{"Conditional mask weight": w}`` when A1111 writes it for this job (:func:`uses_inpainting_conditioning`),
    else ``{}``."""
    weight = mask_weight(bundle, p)
    if weight is None or not uses_inpainting_conditioning(bundle, job, hires_latent, weight):
        return {}
    return {MASK_WEIGHT_KEY: weight}
