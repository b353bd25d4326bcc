"""``torch.compile`` of the UNet, in place, with channels_last memory: an opt-in speed-up for long sessions.

The UNet module stays the same object (``nn.Module.compile``), so hooks, probes, LoRA merges and ``bundle.unet``
keep working; compiling happens on the first UNet call of each latent shape (seconds to minutes) and that graph is
reused for every later call of the same shape: changing the prompt, seed, CFG scale or sampler does not recompile,
a new size or batch layout does (``dynamic=False``: one graph per shape, as fal and diffusion-fast compile; dynamo
keeps up to ``torch._dynamo.config.cache_size_limit`` shapes, 8 by default).

channels_last pays only together with compile (fal, A100, SD1.5: 36.93 -> 47.29 it/s); alone it is neutral, and on
the CPU it changes the float32 rounding of convolutions, so CPU images of a compiled UNet are not bit-identical to
eager ones (close, not equal).

On the CPU the default back-end (inductor) needs a C++ compiler; without one :func:`compile_unet` says so. A tiny
UNet takes about a minute per shape to compile on one CPU core; an SD UNet on a CPU, much longer than it saves.

>>> from nbdiffuse.models import tiny_sd1
>>> from nbdiffuse.models.compile import compile_unet, is_compiled
>>> bundle = tiny_sd1()
>>> compile_unet(bundle.unet, backend="eager")["backend"], is_compiled(bundle.unet)
('eager', True)
"""

from __future__ import annotations

import os
import shutil

import torch


def compile_problem(device: torch.device | str, backend: str = "inductor") -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot work on ``device`` here, or None."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (PyTorch >= 2.0 has)"
    if backend == "inductor" and device.type == "cpu":
        cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
        if not cxx:
            return ("torch.compile's inductor back-end needs a C++ compiler on the CPU and none was found "
                    "(install g++, e.g. apt-get install g++), or pass backend='eager' to check the graphs only")
    if backend == "inductor" and device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "torch.compile's inductor back-end needs triton on CUDA (pip install triton)"
    return None


def compile_unet(unet: torch.nn.Module, *, mode: str | None = None, backend: str = "inductor",
                 fullgraph: bool = False, channels_last: bool = True) -> dict:
    """Compile ``unet`` in place (``unet.compile(...)``, ``dynamic=False``) and, with ``channels_last``, store its
    weights channels-last. Returns the options used. Raises RuntimeError when it cannot work here."""
    device = next(unet.parameters()).device
    problem = compile_problem(device, backend)
    if problem:
        raise RuntimeError(f"cannot compile the UNet on {device}: {problem}")
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    options = {"backend": backend, "mode": mode, "fullgraph": fullgraph, "dynamic": False}
    unet.compile(**options)
    return {**options, "channels_last": channels_last}


def uncompile_unet(unet: torch.nn.Module) -> None:
    """Back to eager: drop the compiled graphs and store the weights contiguous again."""
    if is_compiled(unet):
        unet._compiled_call_impl = None
    unet.to(memory_format=torch.contiguous_format)


def is_compiled(unet: torch.nn.Module) -> bool:
    return getattr(unet, "_compiled_call_impl", None) is not None
