"""nbdiffuse: Stable Diffusion inside the Jupyter kernel, with an open sampling loop.

>>> import nbdiffuse
>>> session = nbdiffuse.Session()             # doctest: +SKIP
"""

from ._lazy import lazy_exports
from ._version import __version__

# Imported on first use, so that `import nbdiffuse.infotext` (or the prompt parser) does not load torch models.
_LAZY = {
    "Session": ".session", "StepRun": ".session", "Result": ".jobs.result",
    "GenerationParams": ".jobs.params", "StepState": ".sampling.base",
    "RayExecutor": ".fanout",  # grids and batches on Ray workers (imported only when used: Ray is optional)
    "doctor": ".health",  # what this kernel can run: torch/CUDA, card, dtypes, memory, attention, widgets, disk
}

__all__ = [*_LAZY, "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
