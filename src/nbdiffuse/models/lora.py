"""LoRA and LyCORIS files in kohya/A1111/LyCORIS format: read them, merge them into a loaded model, undo it exactly.

A file holds, for some ``Linear``/``Conv2d`` layers of the UNet and the text encoder(s), the parts of one weight
change ``updown`` per layer. Applying it with multiplier ``m`` changes the layer's weight like A1111's
``extensions-builtin/Lora`` (``network_*.py``)::

    W += updown * scale * m                   # scale = alpha / dim (1 without alpha or dim); a "scale" part wins

Each layer's type is told by its part names (A1111's and LyCORIS's):

- LoRA/LoCon: ``lora_down.weight`` (rank x in[, kh, kw]), ``lora_up.weight`` (out x rank[, 1, 1]);
  ``updown = up @ down`` (down flattened), dim = rank. LoCon with Tucker decomposition adds ``lora_mid.weight``
  (rank x rank x kh x kw, down and up then 1x1): ``updown[o,i,k,l] = sum_nm mid[n,m,k,l] up[o,n] down[m,i]``.
- LoHa: ``hada_w1_a`` (out x r), ``hada_w1_b`` (r x in*kh*kw), ``hada_w2_a/b`` likewise;
  ``updown = (w1_a @ w1_b) * (w2_a @ w2_b)`` (element-wise), dim = r. With ``hada_t1``/``hada_t2``
  (r x r x kh x kw, Tucker) the matching ``w_a`` is r x out and ``w_b`` r x in and each factor is
  ``f[o,i,k,l] = sum_pq t[p,q,k,l] w_a[p,o] w_b[q,i]``.
- LoKr: ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b`` (or the Tucker form
  with ``lokr_t2``); ``updown = kron(w1, w2)`` (w1 gets 1x1 kernel dims when w2 has a kernel), dim = the rank of
  ``lokr_w2_b`` else of ``lokr_w1_b``, else none (scale 1).
- full: ``diff`` is ``updown`` itself; ``diff_b`` is added to the bias (times ``m``).
- IA3: ``weight`` is a vector over the output channels (over the inputs when ``on_input``); ``updown = W * weight``.
- norm: ``w_norm`` and ``b_norm`` are added (times ``m``) to a ``LayerNorm``/``GroupNorm``'s weight and bias.
- DoRA: any of them with ``dora_scale`` (1 x in[, 1, 1], kohya/LyCORIS's per-input magnitude; LyCORIS's newer
  per-output ``out x 1[, 1, 1]`` also read): ``V = W + updown*scale`` is renormed and the change becomes
  ``(V * dora_scale / ||V|| - W) * m``, the norm taken over every axis but the input (output) one.

Key names (prefix + module path with ``.`` -> ``_``):

- ``lora_unet_<diffusers path>`` (kohya SD1/SD2: ``lora_unet_down_blocks_0_attentions_0_..._attn1_to_q``) and
  ``lora_unet_<LDM path>`` (kohya SDXL and some SD1 trainers: ``lora_unet_input_blocks_4_1_proj_in``,
  ``..._middle_block_1_...``, resnets ``in_layers_2`` / ``emb_layers_1`` / ``out_layers_3`` / ``skip_connection``,
  ``input_blocks_3_0_op``, ``output_blocks_2_1_conv``, ``time_embed_0``, ``label_emb_0_0``, ``out_2``); the LDM
  names are derived from the loaded UNet's block layout, so any geometry (tiny test models included) maps.
- ``lora_te_<transformers path>`` for SD1/SD2's text encoder, ``lora_te1_`` / ``lora_te2_`` for SDXL's CLIP-L and
  OpenCLIP-bigG (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``).

Parts that are not applied (OFT ``oft_*``, unknown names, incomplete or
inconsistent sets) are listed per layer in :attr:`LoRA.unsupported` with the reason, and keys that name no layer
of the loaded model in :attr:`LoraHandle.unmatched` (with a warning), like A1111's "didn't match keys" message.
A1111's ``dyn=`` (dynamic rank) is not supported.

``apply_loras`` checks every LoRA against the model before changing any weight: a LoRA made for another model
family raises ``ValueError("detail.safetensors is an SDXL LoRA; the loaded model is SD1")``. It keeps a copy of
each weight (and bias) it changes and :meth:`LoraHandle.restore` (also run by ``with apply_loras(...):`` on any
exception) copies them back, so the model is bit-identical afterwards.

``LoRA.hash12`` is A1111's ``Lora hashes`` value: the first 12 hex of the sha256 of the safetensors bytes after
the 8-byte header length and the JSON header ("addnet hash"); for a ``.pt``/``.ckpt`` LoRA, of the whole file.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.hashing import addnet_hash, hashes_field, sha256
from nbdiffuse.models.keymap import unet_ldm_prefixes, unet_name_to_ldm
from nbdiffuse.models.state_dict import load_pickle

__all__ = ["LoRA", "LoraHandle", "LoraModule", "LoraWeights", "addnet_hash", "apply_loras", "check_lora",
           "load_lora", "lora_hashes", "lora_key_map", "lora_tag_weights"]

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd1/sd2": "SD1/SD2"}
_TE_PREFIXES = ("lora_te1_", "lora_te2_", "lora_te_")
_UNET_PREFIX = "lora_unet_"
# context width of the UNet's cross-attention / text-encoder width -> family
_CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTHS = {768: "sd1", 1024: "sd2"}
_UNSUPPORTED = {"oft_": "OFT/BOFT is not supported"}
# kind -> (its part names, what it must have); "alpha", "scale" and "dora_scale" go with any kind
_KIND_PARTS = {
    "lora": ({"lora_down.weight", "lora_up.weight", "lora_mid.weight"}, "lora_down.weight and lora_up.weight"),
    "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
             "hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b"),
    "lokr": ({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
             "lokr_w1 (or lokr_w1_a and lokr_w1_b) and lokr_w2 (or lokr_w2_a and lokr_w2_b)"),
    "full": ({"diff", "diff_b"}, "diff"),
    "ia3": ({"weight", "on_input"}, "weight"),
    "norm": ({"w_norm", "b_norm"}, "w_norm and b_norm"),
}
_BIAS_PARTS = ("diff_b", "b_norm")  # added to the layer's bias
_COMMON_PARTS = {"alpha", "scale", "dora_scale"}
KIND_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "full": "full (diff)", "ia3": "IA3",
              "norm": "LyCORIS norm"}


def family_name(arch: str | None) -> str:
    """``"sdxl"`` -> ``"SDXL"``; ``None`` -> ``"unknown"``."""
    return FAMILY_NAMES.get(arch, arch) if arch else "unknown"


def _flat_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with both flattened to 2-D (``a``: out x r[...], ``b``: r x in[...])."""
    return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS's Tucker rebuild: ``t`` (r1 x r2 x kh x kw), ``wa`` (r1 x out), ``wb`` (r2 x in) -> out x in x kh x kw"""
    return torch.einsum("pqkl,po,qi->oikl", t, wa, wb)


def _updown(kind: str, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The unscaled weight change of one layer, in its natural shape (no reshape to the layer's yet); not IA3."""
    if kind == "lora":
        up, down = p["lora_up.weight"], p["lora_down.weight"]
        if "lora_mid.weight" in p:
            up2, down2 = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
            return torch.einsum("nmkl,on,mi->oikl", p["lora_mid.weight"], up2, down2)
        return _flat_mm(up, down)
    if kind == "loha":
        w1 = _tucker(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) if "hada_t1" in p \
            else _flat_mm(p["hada_w1_a"], p["hada_w1_b"])
        w2 = _tucker(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"]) if "hada_t2" in p \
            else _flat_mm(p["hada_w2_a"], p["hada_w2_b"])
        return w1 * w2.reshape(w1.shape)
    if kind == "lokr":
        w1 = p["lokr_w1"] if "lokr_w1" in p else _flat_mm(p["lokr_w1_a"], p["lokr_w1_b"])
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:
            w2 = _flat_mm(p["lokr_w2_a"], p["lokr_w2_b"])
        if w2.ndim == 4:
            w1 = w1.reshape(*w1.shape[:2], 1, 1)
        return torch.kron(w1, w2.contiguous())
    return p["w_norm"] if kind == "norm" else p["diff"]


@dataclass
class LoraModule:
    """One adapted layer: ``key`` is the file's base key (``lora_unet_..._to_q``), ``kind`` its type
    (``"lora"``, ``"loha"``, ``"lokr"``, ``"full"``, ``"ia3"``, ``"norm"``) and ``parts`` its tensors by part name
    (``"hada_w1_a"``, ``"dora_scale"``, ...). For ``"lora"``, ``down``/``up`` are its two matrices."""

    key: str
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    kind: str = "lora"
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.down is not None:
            self.parts.setdefault("lora_down.weight", self.down)
        if self.up is not None:
            self.parts.setdefault("lora_up.weight", self.up)
        self.down = self.parts.get("lora_down.weight")
        self.up = self.parts.get("lora_up.weight")

    @property
    def dim(self) -> int | None:
        """The rank ``alpha`` is divided by (A1111's ``dim``); ``None`` for full and IA3 (and LoKr without
        low-rank factors)."""
        p = self.parts
        if self.kind == "lora":
            return int(self.down.shape[0])
        if self.kind == "loha":
            return int(p["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            b = p.get("lokr_w2_b", p.get("lokr_w1_b"))
            return None if b is None else int(b.shape[0])
        return None

    @property
    def rank(self) -> int:
        return self.dim or 0

    @property
    def scale(self) -> float:
        """A1111's ``calc_scale``: the file's ``scale`` part, else ``alpha / dim``, else 1.0."""
        if "scale" in self.parts:
            return float(self.parts["scale"].float().item())
        return self.alpha / self.dim if self.alpha is not None and self.dim else 1.0

    @property
    def is_text_encoder(self) -> bool:
        return self.key.startswith(_TE_PREFIXES)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the weight change as the file builds it (``(out, in)`` or ``(out, in, kh, kw)``, a
        flattened conv ``(out, in*kh*kw)``); IA3: ``(channels,)``. Raises when the parts do not fit each other."""
        if self.kind == "ia3":
            return (self.parts["weight"].numel(),)
        if self.kind == "lora":
            mid = self.parts.get("lora_mid.weight")
            kernel = tuple(mid.shape[2:]) if mid is not None else tuple(self.down.shape[2:])
            return (int(self.up.shape[0]), int(self.down.shape[1]), *kernel)
        meta = {k: torch.empty(v.shape, device="meta") for k, v in self.parts.items() if v.ndim > 0}
        return tuple(_updown(self.kind, meta).shape)

    @property
    def in_features(self) -> int | None:
        """The layer's input width as far as the file tells (used to guess the model family)."""
        if self.kind == "ia3":
            return None
        if self.kind == "lora":
            return int(self.down.shape[1])
        try:
            shape = self.shape
        except RuntimeError:
            return None
        return int(shape[1]) if len(shape) == 2 else None

    @property
    def on_input(self) -> bool:
        """IA3: whether ``weight`` scales the inputs (columns) rather than the outputs (rows)."""
        flag = self.parts.get("on_input")
        return bool(flag.item()) if flag is not None else False

    def fits(self, weight_shape: torch.Size) -> bool:
        """Whether the change has the shape of a layer weight of ``weight_shape`` (and ``dora_scale`` fits it)."""
        weight_shape = tuple(weight_shape)
        if self.kind == "norm":
            return self.shape == weight_shape and "dora_scale" not in self.parts
        if len(weight_shape) not in (2, 4):
            return False
        dora = self.parts.get("dora_scale")
        if dora is not None and dora.numel() not in (weight_shape[0], weight_shape[1]):
            return False
        if self.kind == "lora":
            out, inp, *kernel = self.shape
            if len(weight_shape) == 4:
                return weight_shape == (out, inp, *(kernel or (1, 1)))
            return weight_shape == (out, inp) and all(k == 1 for k in kernel)
        if self.kind == "ia3":
            return self.shape[0] == weight_shape[1 if self.on_input else 0]
        shape = self.shape
        if len(weight_shape) == 2 and len(shape) != 2:
            return False
        return shape[0] == weight_shape[0] and math.prod(shape) == math.prod(weight_shape)

    def delta(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        """The change to ``weight`` (A1111's ``updown``) in float32 on ``weight``'s device, shaped like ``weight``:
        ``updown * scale``, renormed for DoRA, times ``multiplier``."""
        if self.kind == "lora" and len(self.parts) == 2:  # the plain LoRA path, kept op for op
            up = self.up.to(weight.device, torch.float32).reshape(self.up.shape[0], -1)
            down = self.down.to(weight.device, torch.float32).reshape(self.rank, -1)
            return (up @ down).reshape(weight.shape) * self.scale * multiplier
        p = {k: v.to(weight.device, torch.float32) for k, v in self.parts.items() if v.ndim > 0}
        w = weight.to(torch.float32)
        if self.kind == "ia3":
            axis = 1 if self.on_input else 0
            updown = w * p["weight"].reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        else:
            updown = _updown(self.kind, p).reshape(weight.shape)
        updown = updown * self.scale
        if "dora_scale" in p:
            updown = _weight_decompose(updown, w, p["dora_scale"])
        return updown * multiplier

    def bias_delta(self, bias: torch.Tensor, multiplier: float) -> torch.Tensor | None:
        """The change to the layer's bias (full's ``diff_b``, norm's ``b_norm``) times ``multiplier``, or None."""
        diff_b = next((self.parts[n] for n in _BIAS_PARTS if n in self.parts), None)
        return None if diff_b is None else diff_b.to(bias.device, torch.float32).reshape(bias.shape) * multiplier


def _weight_decompose(updown: torch.Tensor, weight: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA: the change that makes ``weight + updown`` have the norms ``dora_scale`` per input channel (its shape
    1 x in[, 1, 1]) or per output channel (out x 1[, 1, 1])."""
    merged = weight + updown
    per_input = dora_scale.numel() == weight.shape[1] and (dora_scale.ndim < 2 or dora_scale.shape[0] == 1)
    axis = 1 if per_input else 0
    norm = torch.linalg.vector_norm(merged, dim=[d for d in range(merged.ndim) if d != axis], keepdim=True)
    return merged * (dora_scale.reshape(norm.shape) / norm) - weight


@dataclass
class LoRA:
    """A LoRA file read into memory (CPU tensors as stored).

    ``arch`` is the model family it was made for, guessed from its keys and shapes (``"sd1"``, ``"sd2"``,
    ``"sdxl"``, ``"sd1/sd2"`` when only "not SDXL" is certain, ``None`` when nothing tells) and ``arch_reason``
    says why. ``unsupported`` maps base keys that will not be applied to the reason.
    """

    name: str
    path: str
    sha256: str
    modules: dict[str, LoraModule]
    unsupported: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    arch: str | None = None
    arch_reason: str = ""

    @property
    def hash12(self) -> str:
        """A1111's ``Lora hashes`` value (12 hex)."""
        return self.sha256[:12]

    @property
    def filename(self) -> str:
        return Path(self.path).name

    def __repr__(self) -> str:
        return (f"LoRA({self.name!r}, {family_name(self.arch)}, {len(self.modules)} layers, "
                f"hash12={self.hash12!r})")


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors or a pickle-free .pt/.ckpt file."""
    if path.stat().st_size == 0:
        raise ModelLoadError(path, "the file is empty")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad headers / truncation
            raise ModelLoadError(path, f"not a readable safetensors file ({e})") from e
        return tensors, metadata
    if path.suffix.lower() in (".pt", ".ckpt", ".bin"):
        data = load_pickle(path)  # the allow-list of old checkpoints; anything else is refused, naming it
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise ModelLoadError(path, f"holds a {type(data).__name__}, not a dict of tensors")
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        return tensors, {}
    raise ModelLoadError(path, f"unsupported LoRA file type {path.suffix!r} (expected .safetensors, .pt, .ckpt)")


def _guess_arch(modules: dict[str, LoraModule], keys: list[str], metadata: dict) -> tuple[str | None, str]:
    bases = list(modules) + keys
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in bases):
        return "sdxl", "it has keys for two text encoders (lora_te1_/lora_te2_)"
    for key, mod in modules.items():
        if key.startswith(_UNET_PREFIX) and key.endswith(("attn2_to_k", "attn2_to_v")):
            width = mod.in_features
            if width in _CONTEXT_WIDTHS:
                return _CONTEXT_WIDTHS[width], f"its cross-attention reads {width}-wide text features"
    for key, mod in modules.items():
        if key.startswith("lora_te_") and key.endswith(("q_proj", "k_proj", "v_proj", "fc1")):
            width = mod.in_features
            if width in _TE_WIDTHS:
                return _TE_WIDTHS[width], f"its text-encoder layers are {width} wide"
    unet = [k[len(_UNET_PREFIX):] for k in bases if k.startswith(_UNET_PREFIX)]
    if any(re.search(r"transformer_blocks_[1-9]", k) or k.startswith(("label_emb", "add_embedding")) for k in unet):
        return "sdxl", "its UNet has SDXL-only layers (several transformer blocks per attention, label_emb)"
    if any(k.startswith(("down_blocks_0_attentions", "input_blocks_1_1", "input_blocks_2_1")) for k in unet):
        return "sd1/sd2", "its UNet has attention in the first down block (SD1/SD2 layout)"
    if any(k.startswith("lora_te_") for k in bases):
        return "sd1/sd2", "it has keys for one text encoder (lora_te_)"
    base = (metadata.get("ss_base_model_version", "") + " " + metadata.get("modelspec.architecture", "")).lower()
    if "xl" in base:
        return "sdxl", "its metadata says so"
    if "v2" in base or metadata.get("ss_v2", "").lower() == "true":
        return "sd2", "its metadata says so"
    if "v1" in base:
        return "sd1", "its metadata says so"
    return None, "nothing in it identifies the model family"


def _read_module(base: str, parts: dict[str, torch.Tensor]) -> LoraModule | str:
    """One layer's parts as a :class:`LoraModule`, or the reason it cannot be applied."""
    known = _COMMON_PARTS.union(*(names for names, _ in _KIND_PARTS.values()))
    other = sorted(s for s in parts if s not in known)
    for s in other:
        for marker, why in _UNSUPPORTED.items():
            if s.startswith(marker):
                return why
    if other:
        return f"unknown parts {', '.join(other)}"
    kinds = [kind for kind, (names, _) in _KIND_PARTS.items() if names & parts.keys()]
    if len(kinds) > 1:
        return f"mixes the parts of {' and '.join(KIND_NAMES[k] for k in kinds)}"
    if not kinds:
        return f"{', '.join(sorted(parts))} without the weights {'it belongs' if len(parts) == 1 else 'they belong'} to"
    kind = kinds[0]
    if kind == "lora":
        down, up = parts.get("lora_down.weight"), parts.get("lora_up.weight")
        if down is None or up is None:
            return "lora_up without lora_down" if down is None else "lora_down without lora_up"
        mid = parts.get("lora_mid.weight")
        if (down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]
                or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1))
                or (mid is not None and (mid.ndim != 4 or down.ndim != 4 or tuple(down.shape[2:]) != (1, 1)))):
            shapes = ", ".join(f"{n.split('.')[0][5:]} {tuple(t.shape)}" for n, t in sorted(parts.items()) if t.ndim)
            return f"inconsistent shapes {shapes}"
    else:
        has = parts.keys()
        complete = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= has,
                    "lokr": ("lokr_w1" in has or {"lokr_w1_a", "lokr_w1_b"} <= has)
                    and ("lokr_w2" in has or {"lokr_w2_a", "lokr_w2_b"} <= has),
                    "full": "diff" in has, "ia3": "weight" in has, "norm": {"w_norm", "b_norm"} <= has}[kind]
        if not complete:
            return f"{KIND_NAMES[kind]} needs {_KIND_PARTS[kind][1]}; it has {', '.join(sorted(has))}"
    alpha = parts.get("alpha")
    rest = {k: v for k, v in parts.items() if k != "alpha"}
    module = LoraModule(base, alpha=float(alpha.float().item()) if alpha is not None else None, kind=kind,
                        parts=rest)
    try:
        shape = module.shape
    except (RuntimeError, IndexError, ValueError):
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in sorted(rest.items()) if t.ndim)
        return f"{KIND_NAMES[kind]} with inconsistent shapes {shapes}"
    if kind not in ("ia3", "norm") and len(shape) not in (2, 4):
        return f"{KIND_NAMES[kind]} makes a change of shape {shape}, not one of a Linear or Conv2d weight"
    return module


def load_lora(path, name: str | None = None, hash: bool = True) -> LoRA:
    """Read a kohya/A1111/LyCORIS file (LoRA, LoCon, LoHa, LoKr, DoRA, full, IA3, norm); ``name`` defaults to the file
    stem (the ``<lora:name>`` or ``<lyco:name>``).

    Errors with the file itself raise :class:`~nbdiffuse.models.errors.ModelLoadError` (a ``ValueError``) naming
    it. ``hash=False`` skips hashing (``sha256``/``hash12`` are then ``""`` and the infotext omits the LoRA).
    Hashes come from :mod:`nbdiffuse.models.hashing` (cached by path, size and mtime).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    tensors, metadata = _read_tensors(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        base, _, suffix = key.partition(".")
        groups.setdefault(base, {})[suffix] = tensor
    modules: dict[str, LoraModule] = {}
    unsupported: dict[str, str] = {}
    foreign = [base for base in groups if not base.startswith(("lora_unet_", "lora_te"))]
    for base in foreign:
        parts = groups.pop(base)
        peft = any(s.startswith(("lora_A", "lora_B", "lora.down", "lora.up")) or ".lora_A." in s or ".lora_B." in s
                   for s in parts)
        unsupported[base] = ("diffusers/PEFT-style key names are not supported (only kohya/A1111 "
                             "lora_unet_/lora_te_ names)" if peft else "not a kohya/A1111 LoRA key")
    for base, parts in groups.items():
        module = _read_module(base, parts)
        if isinstance(module, str):
            unsupported[base] = module
        else:
            modules[base] = module
    if not modules:
        if len(foreign) == len(unsupported) and not any("PEFT" in why for why in unsupported.values()):
            unsupported = {}
        if unsupported:
            raise ModelLoadError(path, f"none of its {len(unsupported)} layers can be applied "
                                       f"({next(iter(unsupported.values()))})")
        raise ModelLoadError(path, "contains no LoRA weights (keys like 'lora_unet_..._to_q.lora_down.weight'); "
                                   "is it a checkpoint or an embedding?")
    arch, why = _guess_arch(modules, list(unsupported), metadata)
    sha = "" if not hash else addnet_hash(path) if path.suffix.lower() == ".safetensors" else sha256(path)
    return LoRA(name or path.stem, str(path), sha, modules, unsupported, metadata, arch, why)


# --------------------------------------------------------------------------------------------------
# Matching keys to the loaded model's layers
# --------------------------------------------------------------------------------------------------

_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
_TE_LAYER_TYPES = (torch.nn.Linear, torch.nn.LayerNorm)


def lora_key_map(bundle) -> dict[str, tuple[str, torch.nn.Module]]:
    """Every LoRA base key the model understands -> (``"unet"``/``"te0"``/``"te1"``, layer). Covers kohya's
    diffusers-named and LDM-named UNet keys and ``lora_te_``/``lora_te1_``/``lora_te2_`` text-encoder keys, for
    ``Linear``/``Conv2d`` layers and (for LyCORIS's ``w_norm``/``b_norm``) ``LayerNorm``/``GroupNorm`` ones."""
    table: dict[str, tuple[str, torch.nn.Module]] = {}
    prefixes = unet_ldm_prefixes(bundle.unet)
    for name, module in bundle.unet.named_modules():
        if isinstance(module, _LAYER_TYPES) and getattr(module, "weight", None) is not None:
            table[_UNET_PREFIX + name.replace(".", "_")] = ("unet", module)
            ldm = unet_name_to_ldm(name, prefixes)
            if ldm is not None:
                table.setdefault(_UNET_PREFIX + ldm.replace(".", "_"), ("unet", module))
    te_prefixes = ["lora_te1_", "lora_te2_"] if len(bundle.text_encoders) == 2 else ["lora_te_"]
    for i, (prefix, encoder) in enumerate(zip(te_prefixes, bundle.text_encoders)):
        for name, module in encoder.named_modules():
            if isinstance(module, _TE_LAYER_TYPES) and getattr(module, "weight", None) is not None:
                path = name if name.startswith("text_model.") else f"text_model.{name}"
                table[prefix + path.replace(".", "_")] = (f"te{i}", module)
    return table


# --------------------------------------------------------------------------------------------------
# Applying and restoring
# --------------------------------------------------------------------------------------------------

class LoraWeights(NamedTuple):
    """The multipliers of one ``<lora:...>`` tag."""

    te: float
    unet: float


MAX_LORA_WEIGHT = 100.0  # far beyond any useful strength; a larger (or non-finite) weight only makes NaN pictures


def lora_tag_weights(net) -> LoraWeights:
    """A1111's reading of a ``<lora:name:args>`` tag (a :class:`~nbdiffuse.prompts.parser.ExtraNetwork`):
    ``<lora:x>`` -> 1/1; ``<lora:x:w>`` -> w for both; ``<lora:x:te:unet>``; named ``te=``/``unet=`` override.
    A1111's ``dyn=`` (dynamic rank) is not supported and ignored."""
    positional, named = net.positional, net.named

    def number(text: str, what: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"<{net.kind}:{':'.join(net.items)}>: {what} {text!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > MAX_LORA_WEIGHT:
            raise ValueError(f"<{net.kind}:{':'.join(net.items)}>: {what} {text!r} must be a finite number between "
                             f"-{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g} (typical: 0.5 to 1)")
        return value

    te = number(positional[1], "weight") if len(positional) > 1 else 1.0
    te = number(named["te"], "te=") if "te" in named else te
    unet = number(positional[2], "unet weight") if len(positional) > 2 else te
    unet = number(named["unet"], "unet=") if "unet" in named else unet
    return LoraWeights(te=te, unet=unet)


def lora_hashes(loras) -> str:
    """The infotext ``Lora hashes`` value, ``"name: hash12, ..."`` (A1111 strips ``:`` and ``,`` from names)."""
    return hashes_field((lora.name, lora.hash12) for lora in loras)


@dataclass
class AppliedLora:
    lora: LoRA
    unet: float
    te: float
    layers: int  # layers changed


class LoraHandle:
    """What :func:`apply_loras` did; :meth:`restore` undoes it bit-exactly (idempotent). A context manager."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.applied: list[AppliedLora] = []
        self.unmatched: dict[str, list[str]] = {}  # LoRA name -> its base keys that name no layer of the model
        self.unsupported: dict[str, dict[str, str]] = {}  # LoRA name -> {base key: why not applied}
        self.text_encoder_changed = False  # cached text encodings made before/after are stale when True
        self._backups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, original copy)
        self._saved: set[int] = set()

    @property
    def active(self) -> bool:
        return bool(self._backups)

    def _backup(self, param: torch.Tensor, device) -> None:
        if id(param) not in self._saved:
            self._saved.add(id(param))
            self._backups.append((param, param.detach().to(device or param.device, copy=True)))

    @torch.no_grad()
    def restore(self) -> None:
        """Copy every changed weight back from its saved original (in reverse order of saving)."""
        while self._backups:
            param, original = self._backups.pop()
            param.copy_(original)
        self._saved.clear()

    @property
    def infotext(self) -> str:
        """``Lora hashes`` for the infotext."""
        return lora_hashes(a.lora for a in self.applied)

    def __enter__(self) -> LoraHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        names = ", ".join(f"{a.lora.name}(te={a.te:g}, unet={a.unet:g})" for a in self.applied)
        return f"LoraHandle([{names}], {'active' if self.active else 'restored'})"


def _normalise(item) -> tuple[LoRA, float, float]:
    if isinstance(item, LoRA):
        return item, 1.0, 1.0
    if len(item) == 2:
        lora, w = item
        w = float(w)
        return lora, w, w
    lora, unet, te = item
    return lora, float(unet), float(te)


def check_lora(bundle, lora: LoRA, table: dict | None = None) -> tuple[dict[str, tuple[str, torch.nn.Module]], list]:
    """Match ``lora`` to ``bundle``'s layers; raises ``ValueError`` when it is for another model family or its
    shapes do not fit. Returns ({base key: (part, layer)}, unmatched base keys)."""
    table = lora_key_map(bundle) if table is None else table
    model = family_name(bundle.arch)
    compatible = lora.arch is None or (bundle.arch in ("sd1", "sd2") if lora.arch == "sd1/sd2"
                                       else lora.arch == bundle.arch)
    if not compatible:
        raise ValueError(f"{lora.filename} is an {family_name(lora.arch)} LoRA ({lora.arch_reason}); "
                         f"the loaded model is {model}")
    matched, unmatched = {}, []
    for key, mod in lora.modules.items():
        hit = table.get(key)
        if hit is None:
            unmatched.append(key)
            continue
        bias, bias_part = getattr(hit[1], "bias", None), next((n for n in _BIAS_PARTS if n in mod.parts), None)
        if bias_part and (bias is None or bias.numel() != mod.parts[bias_part].numel()):
            raise ValueError(f"{lora.filename} does not fit the loaded model ({model}): {key} has a bias change "
                             f"({bias_part}) of {mod.parts[bias_part].numel()} values but the model's layer has "
                             f"{'no bias' if bias is None else f'{bias.numel()} bias values'}")
        if not mod.fits(hit[1].weight.shape):
            made_for = f"an {family_name(lora.arch)} LoRA" if lora.arch else "a LoRA for another model"
            raise ValueError(f"{lora.filename} does not fit the loaded model ({model}): {key} has shape "
                             f"{mod.shape} but the model's layer is "
                             f"{tuple(hit[1].weight.shape)}; it is {made_for}")
        matched[key] = hit
    if not matched:
        made_for = (f"; it is an {family_name(lora.arch)} LoRA ({lora.arch_reason})" if lora.arch
                    else f"; {lora.arch_reason}")
        raise ValueError(f"{lora.filename} matches none of the loaded model's layers ({model}){made_for}")
    return matched, unmatched


@torch.no_grad()
def apply_loras(bundle, loras, backup_device=None, warn_unmatched: bool = True) -> LoraHandle:
    """Merge LoRAs into ``bundle``'s weights; returns a :class:`LoraHandle` (``restore()`` / ``with``).

    ``loras``: items ``(lora, unet_weight, te_weight)`` (note the order), ``(lora, weight)`` for both, or a bare
    :class:`LoRA` (1.0). All of them are checked first (:func:`check_lora`); nothing changes if one fails.
    Several LoRAs on one layer add up in order (DoRA and IA3 see the weight as the LoRAs before them left it,
    like A1111). A zero multiplier leaves that part untouched. The original of each changed weight (and bias)
    is kept (on ``backup_device``, default the weight's own device) until ``restore()``; if applying fails
    midway, what was changed is restored before the error propagates.
    """
    items = [_normalise(item) for item in loras]
    table = lora_key_map(bundle)
    checked = [(item, *check_lora(bundle, item[0], table)) for item in items]
    handle = LoraHandle(bundle)
    try:
        for (lora, unet_w, te_w), matched, unmatched in checked:
            layers = 0
            for key, (part, module) in matched.items():
                multiplier = unet_w if part == "unet" else te_w
                if multiplier == 0:
                    continue
                weight, mod = module.weight, lora.modules[key]
                delta = mod.delta(weight, multiplier)
                bias_delta = mod.bias_delta(module.bias, multiplier) if mod.parts.keys() & _BIAS_PARTS else None
                handle._backup(weight, backup_device)
                weight.copy_((weight.to(torch.float32) + delta).to(weight.dtype))
                if bias_delta is not None:
                    handle._backup(module.bias, backup_device)
                    module.bias.copy_((module.bias.to(torch.float32) + bias_delta).to(module.bias.dtype))
                layers += 1
                handle.text_encoder_changed |= part != "unet"
            handle.applied.append(AppliedLora(lora, unet_w, te_w, layers))
            if unmatched:
                handle.unmatched[lora.name] = unmatched
                if warn_unmatched:
                    shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
                    warnings.warn(f"LoRA {lora.name}: {len(unmatched)} of its layers match no layer of the loaded "
                                  f"model and were not applied: {shown}", stacklevel=2)
            if lora.unsupported:
                handle.unsupported[lora.name] = dict(lora.unsupported)
    except BaseException:
        handle.restore()
        raise
    return handle

