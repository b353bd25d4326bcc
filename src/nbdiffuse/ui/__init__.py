"""The notebook control panel (ipywidgets): the only part of nbdiffuse that imports widget libraries.

>>> from nbdiffuse.ui import Panel
>>> Panel(session)            # doctest: +SKIP
"""

from .labels import default_lang, labels
from .layout import build_panel
from .painter import MaskPainter
from .panel import Panel

__all__ = ["MaskPainter", "Panel", "build_panel", "default_lang", "labels"]
