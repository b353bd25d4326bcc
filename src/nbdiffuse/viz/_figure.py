"""The Figure class nbdiffuse's figures are made with: a matplotlib Figure that shows itself as a PNG.

Without pyplot no backend registers IPython's figure formatter, so a plain ``Figure`` last in a cell shows only
``<Figure size 1300x290 with 9 Axes>``, in JupyterLab as much as in nbconvert's HTML or VS Code.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure


class NotebookFigure(Figure):
    """A ``matplotlib.figure.Figure`` with a PNG representation for notebooks (where pyplot's inline backend is
    active, its formatter takes precedence and draws the same picture)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
