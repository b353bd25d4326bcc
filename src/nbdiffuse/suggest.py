"""The "Did you mean ...?" hint of every unknown-name error (samplers, schedules, axes, parameters, upscalers)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ``" Did you mean ...?"`` suffix for an unknown ``name`` (close matches as written, else ignoring case),
    or ``""``.

    >>> suggest("Eulr a", ["Euler a", "Euler", "DDIM"])
    " Did you mean 'Euler a' or 'Euler'?"
    """
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(str(name).lower(), list(lowered), n=3, cutoff=0.5)]
    close = list(dict.fromkeys(close))
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


__all__ = ["suggest"]
