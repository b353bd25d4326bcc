"""LoRA / LyCORIS-LoCon files in kohya/A1111 format: read them, merge them into a loaded model, undo it exactly.

A LoRA file holds, for some ``Linear``/``Conv2d`` layers of the UNet and the text encoder(s), a low-rank pair
``lora_down`` (rank x in[, kh, kw]) and ``lora_up`` (out x rank[, 1, 1]) plus an optional ``alpha``. Applying it
with multiplier ``m`` changes the layer's weight (A1111's ``network_lora``)::

    W += (up @ down).reshape(W.shape) * (alpha / rank) * m     # alpha missing: scale 1

LoCon's convolution pairs (3x3 ``down``, 1x1 ``up``) use the same formula with ``down`` flattened to
``rank x (in*kh*kw)``. Key names (prefix + module path with ``.`` -> ``_``):

- ``lora_unet_<diffusers path>`` (kohya SD1/SD2: ``lora_unet_down_blocks_0_attentions_0_..._attn1_to_q``) and
  ``lora_unet_<LDM path>`` (kohya SDXL and some SD1 trainers: ``lora_unet_input_blocks_4_1_proj_in``,
  ``..._middle_block_1_...``, resnets ``in_layers_2`` / ``emb_layers_1`` / ``out_layers_3`` / ``skip_connection``,
  ``input_blocks_3_0_op``, ``output_blocks_2_1_conv``, ``time_embed_0``, ``label_emb_0_0``, ``out_2``); the LDM
  names are derived from the loaded UNet's block layout, so any geometry (tiny test models included) maps.
- ``lora_te_<transformers path>`` for SD1/SD2's text encoder, ``lora_te1_`` / ``lora_te2_`` for SDXL's CLIP-L and
  OpenCLIP-bigG (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``).

Keys of other LyCORIS types (LoHa ``hada_*``, LoKr ``lokr_*``, Tucker ``lora_mid``, DoRA ``dora_scale``, full
``diff``, norm weights) are not applied; they are listed in :attr:`LoRA.unsupported`, and keys that name no layer
of the loaded model in :attr:`LoraHandle.unmatched` (with a warning), like A1111's "didn't match keys" message.

``apply_loras`` checks every LoRA against the model before changing any weight: a LoRA made for another model
family raises ``ValueError("detail.safetensors is an SDXL LoRA; the loaded model is SD1")``. It keeps a copy of
each weight it changes and :meth:`LoraHandle.restore` (also run by ``with apply_loras(...):`` on any exception)
copies them back, so the model is bit-identical afterwards.

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

__all__ = ["LoRA", "LoraHandle", "LoraModule", "LoraWeights", "addnet_hash", "apply_loras", "check_lora",
           "load_lora", "lora_hashes", "lora_key_map", "lora_tag_weights"]

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd1/sd2": "SD1/SD2"}
_TE_PREFIXES = ("lora_te1_", "lora_te2_", "lora_te_")
_UNET_PREFIX = "lora_unet_"
# context width of the UNet's cross-attention / text-encoder width -> family
_CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTHS = {768: "sd1", 1024: "sd2"}
_UNSUPPORTED = {
    "hada_": "LoHa (LyCORIS hada_*) is not supported",
    "lokr_": "LoKr (LyCORIS lokr_*) is not supported",
    "lora_mid": "LoCon with Tucker decomposition (lora_mid) is not supported",
    "dora_scale": "DoRA (dora_scale) is not supported",
    "diff.": "full weight differences (diff) are not supported",
    "diff_b": "full weight differences (diff) are not supported",
    "w_norm": "norm-layer weights (w_norm/b_norm) are not supported",
    "b_norm": "norm-layer weights (w_norm/b_norm) are not supported",
    "oft_": "OFT/BOFT is not supported",
    "ia3": "IA3 is not supported",
}


def family_name(arch: str | None) -> str:
    """``"sdxl"`` -> ``"SDXL"``; ``None`` -> ``"unknown"``."""
    return FAMILY_NAMES.get(arch, arch) if arch else "unknown"


@dataclass
class LoraModule:
    """One adapted layer: ``key`` is the file's base key (``lora_unet_..._to_q``)."""

    key: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / rank`` (1.0 when the file has no alpha), A1111's ``calc_scale``."""
        return self.alpha / self.rank if self.alpha is not None else 1.0

    @property
    def is_text_encoder(self) -> bool:
        return self.key.startswith(_TE_PREFIXES)

    def fits(self, weight_shape: torch.Size) -> bool:
        """Whether ``up @ down`` has the shape of a layer weight of ``weight_shape``."""
        out, inp, kernel = self.up.shape[0], self.down.shape[1], tuple(self.down.shape[2:])
        if len(weight_shape) == 4:
            return tuple(weight_shape) == (out, inp, *(kernel or (1, 1)))
        if len(weight_shape) == 2:
            return tuple(weight_shape) == (out, inp) and all(k == 1 for k in kernel)
        return False

    def delta(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        """``(up @ down) * scale * multiplier`` in float32 on ``weight``'s device, shaped like ``weight``."""
        up = self.up.to(weight.device, torch.float32).reshape(self.up.shape[0], -1)
        down = self.down.to(weight.device, torch.float32).reshape(self.rank, -1)
        return (up @ down).reshape(weight.shape) * self.scale * multiplier


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
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(path, f"cannot be read safely with torch.load(weights_only=True) ({e})") from e
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
            width = int(mod.down.shape[1])
            if width in _CONTEXT_WIDTHS:
                return _CONTEXT_WIDTHS[width], f"its cross-attention reads {width}-wide text features"
    for key, mod in modules.items():
        if key.startswith("lora_te_") and key.endswith(("q_proj", "k_proj", "v_proj", "fc1")):
            width = int(mod.down.shape[1])
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


def load_lora(path, name: str | None = None, hash: bool = True) -> LoRA:
    """Read a kohya/A1111/LyCORIS-LoCon LoRA file; ``name`` defaults to the file stem (the ``<lora:name>``).

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
        down, up = parts.get("lora_down.weight"), parts.get("lora_up.weight")
        other = [s for s in parts if s not in ("lora_down.weight", "lora_up.weight", "alpha")]
        reason = next((why for s in other for marker, why in _UNSUPPORTED.items()
                       if s.startswith(marker) or s == marker.rstrip(".")), None)
        if reason is None and other:
            reason = f"unknown parts {', '.join(sorted(other))}"
        if reason is None and (down is None or up is None):
            reason = ("alpha without lora_up/lora_down" if down is None and up is None
                      else "lora_up without lora_down" if down is None else "lora_down without lora_up")
        if reason is None and (down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]
                               or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1))):
            reason = f"inconsistent shapes down {tuple(down.shape)}, up {tuple(up.shape)}"
        if reason is not None:
            unsupported[base] = reason
            continue
        alpha = parts.get("alpha")
        modules[base] = LoraModule(base, down, up, float(alpha.float().item()) if alpha is not None else None)
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

def lora_key_map(bundle) -> dict[str, tuple[str, torch.nn.Module]]:
    """Every LoRA base key the model understands -> (``"unet"``/``"te0"``/``"te1"``, layer). Covers kohya's
    diffusers-named and LDM-named UNet keys and ``lora_te_``/``lora_te1_``/``lora_te2_`` text-encoder keys."""
    table: dict[str, tuple[str, torch.nn.Module]] = {}
    prefixes = unet_ldm_prefixes(bundle.unet)
    for name, module in bundle.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            table[_UNET_PREFIX + name.replace(".", "_")] = ("unet", module)
            ldm = unet_name_to_ldm(name, prefixes)
            if ldm is not None:
                table.setdefault(_UNET_PREFIX + ldm.replace(".", "_"), ("unet", module))
    te_prefixes = ["lora_te1_", "lora_te2_"] if len(bundle.text_encoders) == 2 else ["lora_te_"]
    for i, (prefix, encoder) in enumerate(zip(te_prefixes, bundle.text_encoders)):
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear):
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
        if not mod.fits(hit[1].weight.shape):
            made_for = f"an {family_name(lora.arch)} LoRA" if lora.arch else "a LoRA for another model"
            raise ValueError(f"{lora.filename} does not fit the loaded model ({model}): {key} has shape "
                             f"{tuple(mod.up.shape[:1]) + tuple(mod.down.shape[1:])} but the model's layer is "
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
    Several LoRAs on one layer add up in order. A zero multiplier leaves that part untouched. The original of
    each changed weight is kept (on ``backup_device``, default the weight's own device) until ``restore()``;
    if applying fails midway, what was changed is restored before the error propagates.
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
                weight = module.weight
                delta = lora.modules[key].delta(weight, multiplier)
                handle._backup(weight, backup_device)
                weight.copy_((weight.to(torch.float32) + delta).to(weight.dtype))
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

