"""Write a :class:`ModelBundle` as an A1111/LDM-layout single ``.safetensors`` checkpoint.

The reverse of :mod:`nbdiffuse.models.checkpoint`: UNet under ``model.diffusion_model.``, VAE under
``first_stage_model.`` (attention projections as 1x1 convolutions), text encoders as A1111/SGM store them
(HF CLIP-L under ``cond_stage_model.transformer.`` / ``conditioner.embedders.0.transformer.``, OpenCLIP under
``cond_stage_model.model.`` / ``conditioner.embedders.N.model.`` with q/k/v concatenated into ``in_proj`` and a
transposed ``text_projection``).

SD2: A1111 runs OpenCLIP-H to its penultimate layer, and a bundle's SD2 text encoder holds exactly the layers used
(like diffusers' SD2 folders). The file gets one extra, all-zero transformer layer after them: a zero residual
block is an identity, so the file is a well-formed OpenCLIP encoder whose "penultimate" output is the bundle's,
and loading drops it again.

Metadata (``__metadata__``, strings): ``nbdiffuse.arch``, ``nbdiffuse.prediction_type``, ``nbdiffuse.config``
(the hyper-parameters shapes cannot tell: attention heads, GroupNorm groups, sample sizes, scaling factor, text
activation...), ``nbdiffuse.format_version``. Tensors are written one at a time (no second copy of the model in
memory) to a temporary file that replaces ``path`` atomically.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from nbdiffuse.models.architecture import HINT_KEYS
from nbdiffuse.models.bundle import ModelBundle
from nbdiffuse.models.keymap import (
    REFINER_TE,
    SD1_TE,
    SD2_TE,
    UNET_PREFIX,
    XL_TE1,
    XL_TE2,
    openclip_key_map,
    te_canonical_keys,
    unet_key_map,
    vae_key_to_ldm,
)
from nbdiffuse.models.state_dict import SAFETENSORS_DTYPES

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def write_safetensors(path, entries, metadata: dict | None = None) -> Path:
    """Stream tensors into a ``.safetensors`` file. ``entries``: list of ``(name, shape, dtype, make)`` where
    ``make()`` returns the CPU tensor (called once, in order, so at most one is in memory). Atomic replace."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, dtype, _ in entries:
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape, dtype, make in entries:
                t = make().detach().to("cpu").contiguous()
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(f"{name}: made {tuple(t.shape)} {t.dtype}, announced {tuple(shape)} {dtype}")
                if t.numel():
                    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                del t
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _te_layout(bundle: ModelBundle) -> list[tuple[str, str]]:
    """(prefix, format) per text encoder."""
    return {"sd1": [(SD1_TE, "hf")], "sd2": [(SD2_TE, "openclip")],
            "sdxl": [(XL_TE1, "hf"), (XL_TE2, "openclip")], "sdxl_refiner": [(REFINER_TE, "openclip")]}[bundle.arch]


def _hint_values(config, keys) -> dict:
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    out = {}
    for k in keys:
        v = get(k, None)
        if v is not None:
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def checkpoint_entries(bundle: ModelBundle, dtype: torch.dtype | None = None) -> list:
    """The (name, shape, dtype, make) entries of ``bundle`` in A1111 layout (see :func:`write_safetensors`)."""
    entries = []

    def cast(t):
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def out_dtype(t):
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    def plain(name, t):
        entries.append((name, tuple(t.shape), out_dtype(t), lambda t=t: cast(t)))

    # UNet
    ldm = unet_key_map(bundle.unet)
    for k, t in bundle.unet.state_dict().items():
        plain(UNET_PREFIX + ldm[k], t)
    # VAE
    levels = len(bundle.vae.config.block_out_channels)
    for k, t in bundle.vae.state_dict().items():
        ldm, op = vae_key_to_ldm(k, levels)
        name = "first_stage_model." + ldm
        if op == "squeeze" and t.ndim == 2:
            shape = (*t.shape, 1, 1)
            entries.append((name, shape, out_dtype(t), lambda t=t, s=shape: cast(t).reshape(s)))
        else:
            plain(name, t)
    # text encoders
    for te, (prefix, fmt) in zip(bundle.text_encoders, _te_layout(bundle)):
        canon = te_canonical_keys(te)
        state = {canon[k]: t for k, t in te.state_dict().items() if k in canon}
        if fmt == "hf":
            for k, t in state.items():
                plain(prefix + k, t)
            continue
        groups: dict[str, list] = {}
        for k, t in state.items():
            ldm, op = openclip_key_map(k, te.config.hidden_size)
            if op is None:
                plain(prefix + ldm, t)
            elif op == "T":
                shape = tuple(reversed(t.shape))
                entries.append((prefix + ldm, shape, out_dtype(t), lambda t=t: cast(t).t().contiguous()))
            else:
                groups.setdefault(prefix + ldm, [None, None, None])[op[1]] = t
        for name, parts in groups.items():
            shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
            entries.append((name, shape, out_dtype(parts[0]), lambda ps=parts: cast(torch.cat(ps, 0))))
        if bundle.arch == "sd2":  # the identity (all-zero) last layer, see the module docs
            n = te.config.num_hidden_layers
            layer0 = {k: t for k, t in state.items() if k.startswith("text_model.encoder.layers.0.")}
            seen = set()
            for k, t in layer0.items():
                ldm, op = openclip_key_map(k.replace(".layers.0.", f".layers.{n}."), te.config.hidden_size)
                if ldm in seen:
                    continue
                seen.add(ldm)
                shape = (t.shape[0] * 3, *t.shape[1:]) if op is not None else tuple(t.shape)
                zero_dtype = out_dtype(t)
                entries.append((prefix + ldm, shape, zero_dtype,
                                lambda s=shape, d=zero_dtype: torch.zeros(s, dtype=d)))
    return entries


def checkpoint_metadata(bundle: ModelBundle) -> dict:
    tes = [_hint_values(te.config, HINT_KEYS["text_encoder"]) for te in bundle.text_encoders]
    config = {"unet": _hint_values(bundle.unet.config, HINT_KEYS["unet"]),
              "vae": _hint_values(bundle.vae.config, HINT_KEYS["vae"]),
              "text_encoders": tes}
    return {"format": "pt", "nbdiffuse.format_version": "1", "nbdiffuse.arch": bundle.arch,
            "nbdiffuse.prediction_type": bundle.prediction_type, "nbdiffuse.config": json.dumps(config)}


def save_checkpoint(bundle, path, dtype: torch.dtype | None = None, *, metadata: dict | None = None) -> Path:
    """Write a model (a :class:`ModelBundle`, or a Session's loaded one) as one A1111-layout ``.safetensors`` file
    that A1111, ComfyUI and ``session.load`` read (``dtype``: cast floating tensors, e.g. ``torch.float16``;
    default: as they are). ``metadata``: extra string entries. Returns the path.

    >>> from nbdiffuse.models import tiny_sd1
    >>> path = save_checkpoint(tiny_sd1(), tmp / "tiny.safetensors")   # doctest: +SKIP
    >>> save_checkpoint(session, "my-model-fp16.safetensors", torch.float16)             # doctest: +SKIP
    """
    if not isinstance(bundle, ModelBundle) and isinstance(getattr(bundle, "model", None), ModelBundle):
        bundle = bundle.model  # a Session
    if not isinstance(bundle, ModelBundle):
        raise TypeError(f"save_checkpoint saves a ModelBundle or a Session with a loaded model, not "
                        f"{type(bundle).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: save_checkpoint writes .safetensors files only")
    meta = checkpoint_metadata(bundle)
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    return write_safetensors(path, checkpoint_entries(bundle, dtype), meta)
