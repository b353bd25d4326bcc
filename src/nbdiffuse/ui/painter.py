"""The mask painter: paint the area to inpaint over the init image, in the notebook (one anywidget).

The widget's ES module (``static/painter.js``) draws the init image (PNG bytes in an ``<img>``) with a canvas of the
image's own size over it; a stroke paints with the brush (``brush_size`` image pixels across) or erases. When a
stroke ends, the canvas goes to the kernel as one PNG in :attr:`MaskPainter.mask`: painted pixels opaque, the rest
transparent, like the RGBA mask of A1111's Inpaint tab, whose alpha A1111 reads as the mask
(``create_binary_mask``). :meth:`MaskPainter.mask_image` is that alpha as an ``L`` image, what
``session.img2img(mask=...)`` takes. Everything lives in the model, so a re-created view (windowed notebooks drop
off-screen outputs) draws the same mask again, and nothing but the painter needs the custom front-end: where it
cannot render, the panel's "Inpaint upload" mode takes a mask PNG through a plain ``FileUpload``.

>>> from nbdiffuse.ui.painter import MaskPainter
>>> from PIL import Image
>>> painter = MaskPainter()
>>> painter.set_image(Image.new("RGB", (64, 48)))
>>> painter.width, painter.height, painter.mask_image() is None
(64, 48, True)
"""

from __future__ import annotations

import io
from importlib import resources

import anywidget
import numpy as np
import traitlets
from PIL import Image

#: The colour strokes are painted in (the mask is their alpha; the colour only shows them over the image).
PAINT = (255, 64, 160)


def _static(name: str) -> str:
    return resources.files("nbdiffuse.ui").joinpath(f"static/{name}").read_text(encoding="utf-8")


def _bytes_from_json(value, _widget) -> bytes:
    """What the front-end sent (a memoryview of one binary buffer) as bytes; ipywidgets 7 and 8 alike."""
    return b"" if value is None else bytes(value)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class MaskPainter(anywidget.AnyWidget):
    """Paint a mask over an image. ``set_image(image)`` shows the image (and clears the mask); the brush size, Erase
    and Clear are in the widget; :meth:`mask_image` is the painted mask (``L``, the image's size, 255 where
    painted) or None when nothing is painted.

    >>> painter = MaskPainter(brush_size=8)
    >>> from PIL import Image
    >>> painter.set_image(Image.new("RGB", (64, 64)))
    >>> painter.set_mask(Image.new("L", (64, 64), 255))
    >>> painter.mask_image().getextrema()
    (255, 255)
    >>> painter.clear(); painter.mask_image() is None
    True
    """

    _esm = _static("painter.js")
    _css = _static("painter.css")

    image = traitlets.Bytes(b"", help="the init image as PNG (display only; may be smaller than width x height)").tag(
        sync=True, from_json=_bytes_from_json)
    width = traitlets.Int(0, help="the mask's width: the init image's").tag(sync=True)
    height = traitlets.Int(0, help="the mask's height: the init image's").tag(sync=True)
    # echo_update=False: ipywidgets 8 would send each stroke's PNG back to the view that sent it (7 ignores the tag)
    mask = traitlets.Bytes(b"", help="the mask as PNG (alpha 255 where painted); b'': nothing painted").tag(
        sync=True, from_json=_bytes_from_json, echo_update=False)
    brush_size = traitlets.Int(32, help="the brush's diameter, in image pixels (until you choose one: a sixteenth "
                                        "of the image's longer side)").tag(sync=True)
    erase = traitlets.Bool(False, help="strokes erase instead of paint").tag(sync=True)
    labels = traitlets.Dict(help="the widget's words: brush_size, erase, clear, no_image").tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._auto_brush = "brush_size" not in kwargs  # follows the image's size until someone sets it
        self.observe(self._brush_chosen, names="brush_size")

    def _brush_chosen(self, _change) -> None:
        self._auto_brush = False

    @traitlets.validate("brush_size")
    def _valid_brush(self, proposal):
        value = proposal["value"]
        if not 1 <= value <= 256:
            raise traitlets.TraitError(f"brush_size={value}: must be from 1 to 256 (image pixels)")
        return value

    def set_image(self, image: Image.Image | None, png: bytes | None = None) -> None:
        """Show ``image`` to paint on and clear the mask (a new image gets a new mask). ``png``: the bytes to show
        (default: the image as PNG), e.g. a smaller copy of a big image; the mask keeps the image's own size."""
        self.mask = b""
        if image is None:
            self.width = self.height = 0
            self.image = b""
            return
        self.width, self.height = image.size
        self.image = png if png is not None else _png(image)
        if self._auto_brush:
            self.brush_size = min(256, max(2, round(max(image.size) / 16)))
            self._auto_brush = True  # still the automatic size (the assignment looked like a choice)

    def clear(self) -> None:
        """Erase the whole mask."""
        self.mask = b""

    def set_mask(self, mask: Image.Image | np.ndarray | None) -> None:
        """Paint ``mask`` (white = inpaint; an ``L`` image or array, or RGBA whose alpha is the mask) so that it can be
        refined with the brush. It must have the image's size."""
        if mask is None:
            self.clear()
            return
        alpha = _alpha(mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask)))
        if alpha.size != (self.width, self.height):
            raise ValueError(f"the mask is {alpha.width}x{alpha.height} but the image to paint on is "
                             f"{self.width}x{self.height}: resize the mask to the image's size")
        rgba = Image.new("RGBA", alpha.size, PAINT)
        rgba.putalpha(alpha)
        self.mask = _png(rgba)

    def mask_image(self) -> Image.Image | None:
        """The painted mask: ``L``, the image's size, 255 where painted (antialiased at stroke edges, as A1111's
        brush; ``session.img2img`` thresholds it as A1111 does); None when nothing is painted."""
        if not self.mask:
            return None
        alpha = Image.open(io.BytesIO(self.mask)).convert("RGBA").getchannel("A")  # the painter's own PNG
        if alpha.size != (self.width, self.height):  # a view of another size sent it: scale to the image's
            alpha = alpha.resize((self.width, self.height), Image.Resampling.NEAREST)
        return alpha if alpha.getbbox() is not None else None


def _alpha(image: Image.Image) -> Image.Image:
    """The mask in ``image``: its alpha when it has one that is not all opaque, else its grey levels."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")
