"""Public names imported on first use, so that ``import nbdiffuse`` (or its pure parts) loads no torch models."""

from __future__ import annotations

import sys
from importlib import import_module


def lazy_exports(package: str, table: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``, whose public names live in the submodules ``table`` names
    (name -> relative module)."""

    def __getattr__(name: str):
        if name in table:
            return getattr(import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted({*vars(sys.modules[package]), *table})

    return __getattr__, __dir__
