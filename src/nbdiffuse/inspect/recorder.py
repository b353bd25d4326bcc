"""The :class:`Recorder` hook (defined with the previews): CPU copies of every step's state, for trajectory plots."""

from .previews import Recorder

__all__ = ["Recorder"]
