"""Attention back-ends by name: which diffusers attention processor the UNet and the VAE run.

``"sdpa"`` (the default) is PyTorch's ``scaled_dot_product_attention`` (diffusers' ``AttnProcessor2_0``), which
picks a flash, memory-efficient or math kernel itself; ``"xformers"`` is xformers' memory-efficient attention
(``XFormersAttnProcessor``; ``pip install nbdiffuse[gpu]``, CUDA only); ``"plain"`` computes ``softmax(q k^T)``
explicitly (``AttnProcessor``: slow and memory-hungry, but it honours a model's ``upcast_attention``).

SDPA is the default even where xformers is installed: the published numbers put them within a few percent of each
other, either way round (fal, A100: SD1.5 31.19 vs 28.94 it/s, SDXL 8.43 vs 8.75), and diffusers advises against
xformers on PyTorch 2.

>>> from nbdiffuse.models import tiny_sd1
>>> from nbdiffuse.models.attention import set_attention, attention_of
>>> bundle = tiny_sd1()
>>> set_attention(bundle, "plain"), attention_of(bundle)
('plain', 'plain')
>>> set_attention(bundle, "nope")                                   # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: unknown attention 'nope': choose one of 'sdpa', 'xformers', 'plain' ...
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch

DEFAULT_ATTENTION = "sdpa"


def _processors():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

    return {"sdpa": AttnProcessor2_0, "xformers": XFormersAttnProcessor, "plain": AttnProcessor}


def xformers_version() -> str | None:
    """The installed xformers' version, or None."""
    if importlib.util.find_spec("xformers") is None:
        return None
    try:
        return importlib.metadata.version("xformers")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def attention_backends(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Every back-end name and why it cannot run here (None: it can). ``device``: where the model runs."""
    device = torch.device(device) if device is not None else None
    why_not = {"sdpa": None, "xformers": None, "plain": None}
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        why_not["sdpa"] = f"torch {torch.__version__} has no scaled_dot_product_attention (PyTorch >= 2.0 has)"
    if xformers_version() is None:
        why_not["xformers"] = "xformers is not installed: pip install 'nbdiffuse[gpu]' (or pip install xformers)"
    elif device is not None and device.type != "cuda":
        why_not["xformers"] = f"xformers runs on CUDA only, and the model is on {device.type}"
    return why_not


def check_attention(name: str, device: torch.device | str | None = None) -> str:
    """``name`` if it can run here, else a ValueError saying why and what can."""
    backends = attention_backends(device)
    if name not in backends:
        usable = [n for n, why in backends.items() if why is None]
        raise ValueError(f"unknown attention {name!r}: choose one of {', '.join(map(repr, backends))} "
                         f"(usable here: {', '.join(usable)})")
    if backends[name] is not None:
        raise ValueError(f"attention {name!r} cannot run here: {backends[name]}")
    return name


def _attention_modules(module: torch.nn.Module):
    """The attention layers whose processor is one of ours to swap (custom processors are left alone)."""
    known = tuple(_processors().values())
    for sub in module.modules():
        processor = getattr(sub, "processor", None)
        if hasattr(sub, "set_processor") and isinstance(processor, known):
            yield sub


def set_attention(bundle, name: str = DEFAULT_ATTENTION, device: torch.device | str | None = None) -> str:
    """Make the UNet's and the VAE's attention layers use back-end ``name``; returns it and records it in
    ``bundle.info["attention"]``. ``device``: where the model runs (default: where the UNet is now). Layers with a
    processor of another kind (float32 upcast, an inspector's, an add-on's) keep it."""
    check_attention(name, device if device is not None else bundle.device)
    cls = _processors()[name]
    for module in (bundle.unet, bundle.vae):
        for layer in _attention_modules(module):
            if type(layer.processor) is not cls:  # the same class: nothing to change (keeps the CPU bit-identical)
                layer.set_processor(cls())
    bundle.info["attention"] = name
    return name


def attention_of(bundle) -> str:
    """The back-end name the UNet's attention layers use (``"mixed"`` or ``"custom"`` when not one of ours)."""
    names = {cls: n for n, cls in _processors().items()}
    found = {names.get(type(m.processor), "custom") for m in bundle.unet.modules() if hasattr(m, "set_processor")}
    return found.pop() if len(found) == 1 else ("mixed" if found else "none")
