"""Pictures inside notebook outputs, each output well under 1 MB (DESIGN, "Hosted Jupyter").

A 512x512 generation is about 420 KB as PNG (560 KB in base64), a 1024x1024 one 1.3 MB: a batch or an SDXL picture
shown losslessly would make outputs that hosted front ends truncate, refuse or save slowly. A picture is shown as
PNG when it fits its share of the budget, else as a JPEG (quality 90, about a sixth of the PNG), else as a smaller
JPEG; the job's own images (``result.images``) and saved files stay PNG.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

#: The base64 characters of pictures one output may carry (the rest of a 1 MB message is left for text).
OUTPUT_BUDGET = 700_000


def _encode(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def data_uri(image: Image.Image, budget: int = OUTPUT_BUDGET) -> tuple[str, str | None]:
    """``image`` as an ``<img>`` source of at most ``budget`` characters (it is not shrunk below a 64 px long side),
    and a short note when it is not the lossless picture (None when it is).

    >>> from PIL import Image
    >>> uri, note = data_uri(Image.new("RGB", (64, 64), (200, 30, 30)))
    >>> uri[:22], note
    ('data:image/png;base64,', None)
    """
    data = _encode(image, "PNG")
    if len(data) + 22 <= budget:
        return f"data:image/png;base64,{data}", None
    png_kb = len(data) * 3 // 4 // 1000
    shown = image
    data = _encode(shown, "JPEG")
    while len(data) + 23 > budget and max(shown.size) > 64:
        scale = max(0.9 * (budget / (len(data) + 23)) ** 0.5, 0.25)
        size = max(1, round(shown.width * scale)), max(1, round(shown.height * scale))
        shown = image.resize(size, Image.LANCZOS)
        data = _encode(shown, "JPEG")
    note = f"JPEG (its PNG is {png_kb} KB)" if shown is image else f"JPEG at {shown.width}x{shown.height}"
    return f"data:image/jpeg;base64,{data}", note


__all__ = ["OUTPUT_BUDGET", "data_uri"]
