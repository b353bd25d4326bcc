"""Images for the widgets: PNG bytes that stay well under a comm message's 1 MB, and the cheap live preview."""

from __future__ import annotations

import io

import torch
from PIL import Image

from ..inspect.previews import cheap_preview

MAX_MESSAGE_BYTES = 700_000  # hosted front-ends drop or choke on comm messages near 1 MB


def png_bytes(image: Image.Image, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """The image as PNG, halved in size until it fits in ``max_bytes`` (the full image stays on disk)."""
    while True:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        if len(data) <= max_bytes or min(image.size) <= 16:
            return data
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def preview_image(latent: torch.Tensor, bundle=None) -> Image.Image:
    """The live preview of one latent ``(C, h, w)``: A1111's "Approx cheap" (the model's own fitted factors when
    it has them)."""
    return cheap_preview(latent, bundle if getattr(bundle, "arch", None) else "sd1")
