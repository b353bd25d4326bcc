"""Open the sampling loop: step-through debugging, UNet activation probes, cross-attention maps, live previews.

- :class:`Debugger` (:mod:`.debug`): drive a generation from notebook cells, look at and change the latent.
- :class:`Probe` (:mod:`.probes`): capture UNet module inputs/outputs per step, cond and uncond separated.
- :class:`AttentionMaps` (:mod:`.attention`): where each prompt word attends, DAAM-style.
- :func:`cheap_preview`, :func:`taesd_preview`, :func:`vae_preview`, :func:`preview_hook`, :class:`Recorder`
  (:mod:`.previews`): x0 previews while sampling and a trajectory recorder.

Everything here is plain functions and classes over a Session's public API; nothing costs anything unless used.
"""

from .attention import AttentionMaps, RecordingAttnProcessor
from .debug import Debugger
from .previews import (
    LATENT_RGB_FACTORS,
    PreviewHook,
    Recorder,
    cheap_preview,
    cheap_rgb,
    latent_rgb_factors,
    preview,
    preview_hook,
    taesd_preview,
    vae_preview,
)
from .probes import Probe, ProbeSummary

__all__ = [
    "LATENT_RGB_FACTORS",
    "AttentionMaps",
    "Debugger",
    "PreviewHook",
    "Probe",
    "ProbeSummary",
    "Recorder",
    "RecordingAttnProcessor",
    "cheap_preview",
    "cheap_rgb",
    "latent_rgb_factors",
    "preview",
    "preview_hook",
    "taesd_preview",
    "vae_preview",
]
