"""Guards around a job: refuse a size that cannot run before any model work, and let an interrupt reach inside a
long UNet call.

A 10⁶×64 image passes the pixel-count check but asks the UNet's first self-attention for 10⁶ tokens: one call
then runs for many minutes on a CPU, out of reach of ``session.interrupt()`` (read between steps) and of SIGINT
(Python does not run signal handlers inside a long C++ op). :func:`check_size` refuses such a job up front from an
estimate of its activation memory and of its largest attention's work; :func:`interruptible` checks the stop flag
before every transformer and resnet block of the UNet, so an interrupt lands within one block, not one whole call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..models.memory import free_memory as available_memory  # a name tests patch

# Sustained attention throughput assumed when judging whether one attention call could ever finish; generous
# for each kind of device, so that only sizes nobody can wait for are refused.
_FLOPS = {"cuda": 2e14, "mps": 1e13, "cpu": 2e11}
MAX_ATTENTION_SECONDS = 300.0  # one attention call longer than this is a job that nothing could stop in time


class JobInterrupted(Exception):
    """Raised inside a UNet call when the job's interrupt flag is set (caught by the driver)."""


def first_attention_level(unet) -> int:
    """How many times the UNet downsamples before its first self-attention (SD1/SD2: 0, SDXL: 1)."""
    for k, kind in enumerate(unet.config.down_block_types):
        if "Attn" in kind:
            return k
    return len(unet.config.down_block_types)


def job_cost(unet, width: int, height: int, factor: int = 8) -> tuple[int, int, float]:
    """``(tokens, activation bytes, attention FLOPs)`` of one UNet forward of one image at ``width x height``.

    Tokens: the first self-attention's sequence length. Activation bytes: a UNet forward keeps about ten tensors
    of the full latent size times the first level's channels alive (the skip connections and the block in
    flight). FLOPs: ``4·T²·C`` for that attention (Q·Kᵀ and the weighted sum of V).
    """
    level = first_attention_level(unet)
    channels = unet.config.block_out_channels
    c_attn = channels[min(level, len(channels) - 1)]
    tokens = (height // factor >> level) * (width // factor >> level)
    element = torch.finfo(unet.dtype).bits // 8
    activations = 10 * (height // factor) * (width // factor) * channels[0] * element
    return tokens, activations, 4.0 * tokens * tokens * c_attn


def check_size(bundle, width: int, height: int, rows: int = 2, what: str = "size") -> None:
    """Refuse (``ValueError``, before any model work) a size whose UNet activations cannot fit in the device's
    free memory, or whose first self-attention would run longer than ``MAX_ATTENTION_SECONDS``.

    ``rows``: images in one UNet forward (cond and uncond of one image: 2).
    """
    unet = bundle.unet
    tokens, activations, flops = job_cost(unet, width, height, bundle.vae_scale_factor)
    device = bundle.device  # where the UNet runs (under medvram its weights wait on the CPU)
    seconds = flops * rows / _FLOPS.get(device.type, _FLOPS["cpu"])
    if seconds > MAX_ATTENTION_SECONDS:
        raise ValueError(
            f"The {what} {width}x{height} is too large for this model on {device.type}: its first self-attention "
            f"spans {tokens:,} tokens, so one attention call alone would take about {seconds / 60:,.0f} minutes, "
            "beyond reach of interrupt. Use a smaller size (generate at the model's own size and enlarge with "
            "hires fix or an upscaler).")
    free = available_memory(device)
    if free is not None and activations * rows > free:
        raise ValueError(
            f"The {what} {width}x{height} needs about {activations * rows / 2**30:,.1f} GiB of UNet activations on "
            f"{device.type}, more than the {free / 2**30:,.1f} GiB free. Use a smaller size.")


@contextlib.contextmanager
def interruptible(unet: torch.nn.Module, interrupt) -> Iterator[None]:
    """Within the block, every transformer and resnet block of ``unet`` first checks ``interrupt`` (a
    ``threading.Event``) and raises :class:`JobInterrupted` when it is set. The hooks are removed on exit."""
    def check(module, args):
        if interrupt.is_set():
            raise JobInterrupted

    handles = [m.register_forward_pre_hook(check) for m in unet.modules()
               if type(m).__name__ in ("BasicTransformerBlock", "ResnetBlock2D")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["JobInterrupted", "MAX_ATTENTION_SECONDS", "check_size", "interruptible", "job_cost"]
