"""nbdiffuse: Stable Diffusion inside the Jupyter kernel, with an open sampling loop.

>>> import nbdiffuse
>>> session = nbdiffuse.Session()             # doctest: +SKIP
"""

from importlib import import_module

__version__ = "0.1.0"

# Imported on first use, so that `import nbdiffuse.infotext` (or the prompt parser) does not load torch models.
_LAZY = {
    "Session": ".session", "StepRun": ".session", "Result": ".jobs.result",
    "GenerationParams": ".jobs.params", "StepState": ".sampling.base",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'nbdiffuse' has no attribute {name!r}")
