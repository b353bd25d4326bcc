"""Load A1111/ComfyUI single-file checkpoints (and external VAE files) offline, fast and safely.

:func:`load_checkpoint` reads a ``.safetensors`` file memory-mapped (safetensors ``safe_open``: every tensor is a
view of one private file mapping, no second copy) or a ``.ckpt``/``.pt`` file only through
``torch.load(weights_only=True, mmap=True)`` (nothing from a pickle is executed; anything but tensors and
plain containers is refused). It infers the architecture from the state dict's keys and shapes, builds the
diffusers/transformers modules on the meta device (no random initialisation) and assigns the file's tensors
(``load_state_dict(assign=True)``), converted only where dtype/device/layout require it.

Architecture inference (no configs are fetched; everything not in the file is built here):

- text encoders decide the family: ``cond_stage_model.transformer.*`` (HF CLIP-L) -> ``sd1``;
  ``cond_stage_model.model.*`` (OpenCLIP) -> ``sd2``; ``conditioner.embedders.0.transformer.*`` +
  ``conditioner.embedders.1.model.*`` -> ``sdxl``; a lone ``conditioner.embedders.0.model.*`` -> ``sdxl_refiner``;
- the UNet config comes from ``model.diffusion_model.*`` shapes: channels per level, res blocks per level,
  which levels have attention, the number of transformer blocks in *every* attention layer (so SSD-1B/Vega-style
  distilled SDXL variants with fewer blocks, asymmetric between down and up side, load), linear vs conv
  projections, cross-attention width, the added-conditioning width (SDXL: 6 time ids for base, 5 for the refiner);
  Turbo/Lightning/Hyper checkpoints have SDXL base shapes and load as ``sdxl``;
- what shapes cannot tell follows SD's conventions: 8 attention heads for SD1, 64-channel heads otherwise, 32
  GroupNorm groups, SD2-v upcasts attention; a checkpoint written by :func:`nbdiffuse.models.save_checkpoint`
  carries these in its metadata (``nbdiffuse.config``), which is how tiny test models round-trip exactly;
- SD2's OpenCLIP-H: A1111 uses the penultimate layer + final norm, so the CLIPTextModel gets all layers but the
  last (like diffusers' SD2 folders);
- prediction type, first match wins: safetensors metadata (``nbdiffuse.prediction_type``,
  ``modelspec.prediction_type``); a ``<name>.yaml`` next to the file with ``parameterization: "v"`` (A1111's
  convention); a ``v_pred`` key (ComfyUI's convention for SDXL v-pred checkpoints); for SD2 without any of these,
  A1111's test (``is_using_v_parameterization_for_sd2``): run the UNet once on a constant 0.5 latent and context
  at t=999 and call it v-prediction when ``mean(out - x) < -1``; otherwise epsilon.

Errors: every problem with the file (empty, truncated, corrupt, wrong format, a pickle wanting code, unknown
architecture, missing or mis-shaped tensors) raises :class:`~nbdiffuse.models.errors.ModelLoadError` naming the
file, before any module is built.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nbdiffuse.models.bundle import ModelBundle, scaled_linear_alphas_cumprod
from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.keymap import (
    REFINER_TE,
    SD1_TE,
    SD2_TE,
    UNET_PREFIX,
    VAE_PREFIXES,
    XL_TE1,
    XL_TE2,
    apply_op,
    op_shape,
    openclip_key_map,
    te_canonical_keys,
    unet_key_map,
    vae_key_to_ldm,
)

ARCH_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL base", "sdxl_refiner": "SDXL refiner"}
SDXL_BASE_TRANSFORMER_BLOCKS = 70
_ZIP_MAGIC = b"PK\x03\x04"
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
# metadata hints save_checkpoint writes and the loader honours (hyper-parameters that shapes cannot tell)
HINT_KEYS = {
    "unet": ("attention_head_dim", "norm_num_groups", "sample_size", "upcast_attention", "norm_eps"),
    "vae": ("norm_num_groups", "sample_size", "scaling_factor", "force_upcast"),
    "text_encoder": ("num_attention_heads", "hidden_act", "layer_norm_eps", "pad_token_id", "bos_token_id",
                     "eos_token_id"),
}


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class StateDict:
    """A checkpoint's tensors (memory-mapped views), plus where they came from."""

    path: Path
    tensors: dict
    metadata: dict
    format: str  # "safetensors" | "torch-zip" | "torch-legacy"
    handle: object = None  # keeps the safetensors file open while tensors are read

    def shape(self, key: str) -> tuple:
        return tuple(self.tensors[key].shape)


def _sniff(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(path, "empty file (0 bytes); the download or copy probably failed")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if size < 8:
            raise ModelLoadError(path, f"truncated .safetensors file ({size} bytes, less than its 8-byte header "
                                       "length)")
        raise ModelLoadError(path, "corrupt .safetensors file: the header does not start with a JSON object")
    raise ModelLoadError(path, f"unrecognised file format (starts with {head[:8]!r}); expected a .safetensors "
                               "file or a PyTorch .ckpt/.pt checkpoint")


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ModelLoadError(path, f"truncated or corrupt .safetensors file: the header claims {n} bytes, "
                                       f"but the file has only {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(path, f"corrupt .safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(path, "corrupt .safetensors header (not a JSON object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            shape = [int(s) for s in entry["shape"]]
            dtype = _ST_DTYPES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(path, f"corrupt .safetensors header (bad entry for {key!r})") from None
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if stop - begin != expected:
            raise ModelLoadError(path, f"corrupt .safetensors header ({key!r}: {stop - begin} bytes for shape "
                                       f"{shape} {entry['dtype']})")
        end = max(end, stop)
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "corrupt (trailing bytes)"
        raise ModelLoadError(path, f"{what} .safetensors file: tensors need {8 + n + end} bytes, the file has "
                                   f"{size}")
    return header, 8 + n


def _weights_only_refusal(path: Path, e: Exception) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for line in str(e).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line or "Unsupported operand" in line:
            first = line.strip()
            break
    return ModelLoadError(path, "refused: this pickle-based checkpoint contains more than tensors and plain "
                                f"containers ({first}). Only torch.load(weights_only=True) is used, so nothing "
                                "from it was executed. If you trust the file, convert it to .safetensors with a "
                                "trusted tool; otherwise delete it.")


def read_state_dict(path) -> StateDict:
    """Open a checkpoint's tensors without copying them: safetensors memory-mapped, torch zip files through
    ``torch.load(weights_only=True, mmap=True)`` (legacy non-zip torch files: weights_only without mmap)."""
    import pickle

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(path, "no such file")
    if path.is_dir():
        raise ModelLoadError(path, "is a folder, not a single-file checkpoint")
    fmt = _sniff(path)
    if fmt == "safetensors":
        header, _ = _read_safetensors_header(path)
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # views of one private mapping
            metadata = handle.metadata() or {}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(path, f"corrupt .safetensors file ({type(e).__name__}: {e})") from None
        return StateDict(path, tensors, dict(metadata), fmt, handle)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as e:
        raise _weights_only_refusal(path, e) from None
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise _weights_only_refusal(path, e) from None
        raise ModelLoadError(path, f"truncated or corrupt PyTorch checkpoint ({msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(path, f"a PyTorch file holding a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(path, "a PyTorch file without any tensors")
    return StateDict(path, tensors, {}, fmt)


# ---------------------------------------------------------------------------------------------- architecture
def _what_is_it(keys) -> str:
    """A hint for files that are not checkpoints."""
    ks = list(keys)
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_down." in k or ".lora_up." in k
           or ".hada_w1" in k or ".lokr_w1" in k for k in ks):
        return "it looks like a LoRA/LyCORIS file (load it as a LoRA, not as a checkpoint)"
    if any(k.startswith(("encoder.down.", "encoder.down_blocks.", "decoder.up")) for k in ks):
        return "it looks like a VAE file (use load_vae)"
    if any(k in ("emb_params", "string_to_param", "clip_l", "clip_g") for k in ks) or any(
            k.startswith("string_to_param") for k in ks):
        return "it looks like a textual-inversion embedding"
    if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in ks):
        return "it looks like a diffusers-layout UNet file (load its diffusers folder instead)"
    if any(k.startswith(("double_blocks.", "joint_blocks.", "model.diffusion_model.joint_blocks",
                         "model.diffusion_model.double_blocks")) for k in ks):
        return "it looks like an SD3/Flux transformer checkpoint, which nbdiffuse does not support"
    return "no Stable Diffusion UNet (model.diffusion_model.*) in it"


def detect_family(sd: StateDict) -> str:
    t = sd.tensors
    if any(k.startswith(XL_TE1) for k in t) and any(k.startswith(XL_TE2) for k in t):
        return "sdxl"
    if any(k.startswith(REFINER_TE) for k in t) and not any(k.startswith("conditioner.embedders.1.") for k in t):
        return "sdxl_refiner"
    if any(k.startswith(SD1_TE) for k in t):
        return "sd1"
    if any(k.startswith(SD2_TE) for k in t):
        return "sd2"
    if not any(k.startswith(UNET_PREFIX) for k in t):
        raise ModelLoadError(sd.path, f"not a Stable Diffusion checkpoint: {_what_is_it(t)}")
    raise ModelLoadError(sd.path, "unknown architecture: the file has a UNet but no text encoder this loader knows "
                                  "(cond_stage_model.transformer/.model or conditioner.embedders.*)")


def _count_blocks(shapes: dict, prefix: str) -> int:
    n = 0
    while f"{prefix}transformer_blocks.{n}.attn1.to_q.weight" in shapes:
        n += 1
    return n


def _groups(channels, hint) -> int:
    if hint:
        return int(hint)
    for g in (32, 16, 8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


def infer_unet_config(shapes: dict, family: str, hints: dict, path) -> tuple[dict, dict]:
    """diffusers ``UNet2DConditionModel`` kwargs from LDM UNet shapes (keys without ``model.diffusion_model.``);
    returns (config, layout) where layout counts the transformer blocks and says whether they are symmetric."""
    def fail(problem):
        raise ModelLoadError(path, f"unknown architecture: {problem}")

    if "input_blocks.0.0.weight" not in shapes or "out.2.weight" not in shapes:
        fail("the UNet has no input_blocks.0.0 / out.2 convolutions")
    conv_in = shapes["input_blocks.0.0.weight"]
    in_channels, out_channels = conv_in[1], shapes["out.2.weight"][0]
    if in_channels != 4 or out_channels != 4:
        fail(f"a UNet with {in_channels} input / {out_channels} output channels (inpainting and instruct models "
             "are not supported yet; text-to-image SD has 4/4)")
    ids = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks.")})
    ops = [i for i in ids if f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(ops) + 1
    lpb = ops[0] - 1 if ops else len(ids) - 1
    if lpb < 1 or ids != list(range(1 + levels * (lpb + 1) - 1)) or any(
            o != (b + 1) * (lpb + 1) for b, o in enumerate(ops)):
        fail(f"unexpected UNet input block layout ({len(ids)} input blocks, downsamplers at {ops})")
    out_ids = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks.")})
    if out_ids != list(range(levels * (lpb + 1))):
        fail(f"unexpected UNet output block layout ({len(out_ids)} output blocks for {levels} levels x {lpb + 1})")
    block_out = []
    down_depth, up_depth = [], []
    for b in range(levels):
        key = f"input_blocks.{1 + b * (lpb + 1)}.0.out_layers.3.weight"
        if key not in shapes:
            fail(f"missing {key}")
        block_out.append(shapes[key][0])
        down_depth.append([_count_blocks(shapes, f"input_blocks.{1 + b * (lpb + 1) + j}.1.") for j in range(lpb)])
        up_depth.append([_count_blocks(shapes, f"output_blocks.{b * (lpb + 1) + j}.1.") for j in range(lpb + 1)])
    for depths, side in ((down_depth, "down"), (up_depth, "up")):
        for b, d in enumerate(depths):
            if any(x == 0 for x in d) and any(x > 0 for x in d):
                fail(f"level {b} of the UNet's {side} side has attention in only some of its layers")
    has_mid = any(k.startswith("middle_block.") for k in shapes)
    mid_depth = _count_blocks(shapes, "middle_block.1.") if has_mid else 0
    if has_mid and mid_depth == 0:
        fail("a UNet middle block without a transformer")
    attn_keys = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    if not attn_keys:
        fail("a UNet without cross-attention")
    cross_dim = shapes[attn_keys[0]][1]
    proj_in = [k for k in shapes if k.endswith(".proj_in.weight")]
    use_linear = len(shapes[proj_in[0]]) == 2

    down_types = ["CrossAttnDownBlock2D" if d[0] else "DownBlock2D" for d in down_depth]
    up_types = ["CrossAttnUpBlock2D" if d[0] else "UpBlock2D" for d in up_depth]
    # transformer_layers_per_block: diffusers gives the mid block transformer_layers_per_block[-1] (its first
    # entry when that is a list), so the last level carries the mid depth when it has no attention itself
    tl = []
    for b, d in enumerate(down_depth):
        if not d[0]:
            tl.append(mid_depth if (b == levels - 1 and mid_depth) else 1)
        else:
            tl.append(d[0] if len(set(d)) == 1 else list(d))
    last = tl[-1][0] if isinstance(tl[-1], list) else tl[-1]
    if has_mid and last != mid_depth:
        fail(f"a middle block with {mid_depth} transformer blocks after a last level with {last} "
             "(not expressible as a diffusers UNet)")
    reverse = [list(d) if d[0] else [1] * (lpb + 1) for d in up_depth]  # up_depth is in up (deepest-first) order
    default_reverse = [([t] * (lpb + 1) if isinstance(t, int) else None) for t in reversed(tl)]
    need_reverse = reverse != default_reverse
    if family == "sd1":
        heads = [8] * levels
    else:
        heads = [max(1, c // 64) for c in block_out]
    heads = hints.get("attention_head_dim", heads)
    config = dict(
        sample_size={"sd1": 64, "sd2": 96}.get(family, 128), in_channels=in_channels, out_channels=out_channels,
        down_block_types=down_types, up_block_types=up_types, block_out_channels=block_out, layers_per_block=lpb,
        cross_attention_dim=cross_dim, attention_head_dim=heads, use_linear_projection=use_linear,
        transformer_layers_per_block=tl if any(isinstance(x, list) for x in tl) or len(set(tl)) > 1 else tl[0],
        norm_num_groups=_groups(block_out, hints.get("norm_num_groups")),
        mid_block_type="UNetMidBlock2DCrossAttn" if has_mid else None,
    )
    if need_reverse:
        config["reverse_transformer_layers_per_block"] = reverse
        if not isinstance(config["transformer_layers_per_block"], list):
            config["transformer_layers_per_block"] = tl
    adm = shapes.get("label_emb.0.0.weight")
    if family in ("sdxl", "sdxl_refiner"):
        if adm is None:
            fail("an SDXL text encoder but a UNet without added conditioning (label_emb)")
        config.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=adm[1])
    elif adm is not None:
        fail("an SD1/SD2 text encoder with a class-conditioned UNet (label_emb; unCLIP/upscaler?)")
    for k in ("sample_size", "upcast_attention", "norm_eps"):
        if k in hints:
            config[k] = hints[k]
    n_blocks = sum(map(sum, down_depth)) + mid_depth + sum(map(sum, up_depth))
    uniform = not need_reverse and all(isinstance(x, int) for x in tl)
    layout = {"transformer_blocks": n_blocks, "levels": levels, "symmetric": uniform}
    return config, layout


def infer_vae_config(shapes: dict, path, hints: dict, family: str) -> dict:
    """diffusers ``AutoencoderKL`` kwargs from LDM-layout VAE shapes (keys without the ``first_stage_model.``)."""
    def fail(problem):
        raise ModelLoadError(path, f"unknown VAE layout: {problem}")

    if "encoder.conv_in.weight" not in shapes or "post_quant_conv.weight" not in shapes:
        fail("no encoder.conv_in / post_quant_conv weights")
    levels = len({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")})
    if not levels:
        fail("no encoder.down.* blocks")
    lpb = len({int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down.0.block.")})
    channels = [shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)]
    config = dict(
        in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=channels, layers_per_block=lpb, latent_channels=shapes["post_quant_conv.weight"][0],
        norm_num_groups=_groups(channels, hints.get("norm_num_groups")),
        sample_size={"sd1": 512, "sd2": 768}.get(family, 1024),
        scaling_factor=0.13025 if family.startswith("sdxl") else 0.18215,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in shapes,
    )
    for k in ("sample_size", "scaling_factor", "force_upcast"):
        if k in hints:
            config[k] = hints[k]
    return config


def _te_config(shapes: dict, fmt: str, kind: str, hints: dict, n_layers: int, projection: bool):
    from transformers import CLIPTextConfig

    from nbdiffuse.models.tokenizer import clip_tokenizer

    if fmt == "hf":
        vocab, hidden = shapes["text_model.embeddings.token_embedding.weight"]
        positions = shapes["text_model.embeddings.position_embedding.weight"][0]
        inner = shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0]
        proj = shapes["text_projection.weight"][0] if "text_projection.weight" in shapes else hidden
        act = "quick_gelu"
    else:
        vocab, hidden = shapes["token_embedding.weight"]
        positions = shapes["positional_embedding"][0]
        inner = shapes["transformer.resblocks.0.mlp.c_fc.weight"][0]
        proj = shapes["text_projection"][1] if "text_projection" in shapes else hidden
        act = "gelu"
    tok = clip_tokenizer(kind)
    kwargs = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=n_layers,
                  num_attention_heads=max(1, hidden // 64), max_position_embeddings=positions, hidden_act=act,
                  layer_norm_eps=1e-5, projection_dim=proj, bos_token_id=49406, eos_token_id=49407,
                  pad_token_id=tok.pad_token_id)
    kwargs.update({k: v for k, v in hints.items() if k in HINT_KEYS["text_encoder"]})
    return CLIPTextConfig(**kwargs), projection


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class _Component:
    name: str  # "unet", "vae", "text_encoder", "text_encoder_2"
    cls: object
    config: object  # dict for diffusers classes, CLIPTextConfig for transformers
    sources: dict  # module key -> (file key, op)
    info: dict = field(default_factory=dict)
    module: object = None  # the meta-device module built while planning (reused by build)


@dataclass
class CheckpointPlan:
    """What :func:`inspect_checkpoint` found: everything validated, nothing built yet."""

    sd: StateDict
    arch: str
    components: list
    tokenizer_kinds: list
    hints: dict
    info: dict
    timings: dict

    def build(self, *, device="cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
        return _build(self, device=device, dtype=dtype)


def _hints(metadata: dict) -> dict:
    raw = metadata.get("nbdiffuse.config")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _meta_module(component: _Component):
    from accelerate import init_empty_weights

    with init_empty_weights():
        if isinstance(component.config, dict):
            return component.cls(**component.config)
        return component.cls(component.config)


def _validate(sd: StateDict, comp: _Component, module_keys: dict) -> None:
    """Every module parameter has a source of the right shape in the file."""
    missing, wrong = [], []
    for key, shape in module_keys.items():
        src = comp.sources.get(key)
        if src is None or src[0] not in sd.tensors:
            missing.append(src[0] if src else key)
            continue
        have = op_shape(sd.shape(src[0]), src[1])
        if tuple(have) != tuple(shape):
            wrong.append(f"{src[0]} {list(sd.shape(src[0]))} (expected {list(shape)})")
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:2])})")
        raise ModelLoadError(sd.path, f"incomplete or unknown {comp.name} layout: {' and '.join(parts)}")


def _sub_shapes(sd: StateDict, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: tuple(v.shape) for k, v in sd.tensors.items() if k.startswith(prefix)}


def _vae_component(sd: StateDict, prefix: str, family: str, hints: dict, path) -> _Component:
    from diffusers import AutoencoderKL

    shapes = _sub_shapes(sd, prefix)
    if any(k.startswith("encoder.down_blocks.") for k in shapes):  # diffusers layout
        config = _diffusers_vae_config(shapes, path, hints, family)
        module = _meta_module(_Component("vae", AutoencoderKL, config, {}))
        sources = {}
        for key in module.state_dict():
            file_key = key
            if key not in shapes:
                for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                                 (".to_out.0.", ".proj_attn."), (".group_norm.", ".group_norm.")):
                    if new in key and key.replace(new, old) in shapes:
                        file_key = key.replace(new, old)
            attn_weight = ".mid_block.attentions." in key and key.endswith(".weight") and "group_norm" not in key
            sources[key] = (prefix + file_key, "squeeze" if attn_weight else None)
        comp = _Component("vae", AutoencoderKL, config, sources, {"layout": "diffusers"}, module)
    else:
        config = infer_vae_config(shapes, path, hints, family)
        levels = len(config["block_out_channels"])
        module = _meta_module(_Component("vae", AutoencoderKL, config, {}))
        sources = {}
        for key in module.state_dict():
            ldm, op = vae_key_to_ldm(key, levels)
            sources[key] = (prefix + ldm, op)
        comp = _Component("vae", AutoencoderKL, config, sources, {"layout": "ldm"}, module)
    _validate(sd, comp, {k: tuple(v.shape) for k, v in module.state_dict().items()})
    return comp


def _diffusers_vae_config(shapes: dict, path, hints: dict, family: str) -> dict:
    levels = len({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down_blocks.")})
    lpb = len({int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down_blocks.0.resnets.")})
    try:
        channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
        config = dict(
            in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
            down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
            block_out_channels=channels, layers_per_block=lpb,
            latent_channels=shapes["post_quant_conv.weight"][0],
            norm_num_groups=_groups(channels, hints.get("norm_num_groups")),
            sample_size={"sd1": 512, "sd2": 768}.get(family, 1024),
            scaling_factor=0.13025 if family.startswith("sdxl") else 0.18215,
            mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in shapes),
        )
    except KeyError as e:
        raise ModelLoadError(path, f"unknown VAE layout: missing {e.args[0]}") from None
    for k in ("sample_size", "scaling_factor", "force_upcast"):
        if k in hints:
            config[k] = hints[k]
    return config


def _te_component(sd: StateDict, name: str, prefix: str, fmt: str, kind: str, projection: bool,
                  drop_last: bool, hints: dict) -> _Component:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    raw = _sub_shapes(sd, prefix)
    if fmt == "hf":
        if not any(k.startswith("text_model.") for k in raw):  # very old checkpoints: no "text_model." level
            raw = {("text_model." + k if not k.startswith("text_projection") else k): v for k, v in raw.items()}
            rename = "text_model."
        else:
            rename = ""
        n_layers = len({int(k.split(".")[3]) for k in raw if k.startswith("text_model.encoder.layers.")})
        try:
            config, projection = _te_config(raw, fmt, kind, hints, n_layers, projection)
        except KeyError as e:
            raise ModelLoadError(sd.path, f"incomplete {name}: missing {prefix}{e.args[0]}") from None
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        module = _meta_module(_Component(name, cls, config, {}))
        sources = {}
        for k, canon in te_canonical_keys(module).items():
            sources[k] = (prefix + (canon[len(rename):] if rename and canon.startswith(rename) else canon), None)
    else:
        n_file = len({int(k.split(".")[2]) for k in raw if k.startswith("transformer.resblocks.")})
        n_layers = n_file - 1 if drop_last else n_file
        if n_layers < 1:
            raise ModelLoadError(sd.path, f"incomplete {name}: {n_file} transformer layers")
        try:
            config, projection = _te_config(raw, fmt, kind, hints, n_layers, projection)
        except KeyError as e:
            raise ModelLoadError(sd.path, f"incomplete {name}: missing {prefix}{e.args[0]}") from None
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        module = _meta_module(_Component(name, cls, config, {}))
        sources = {}
        for k, canon in te_canonical_keys(module).items():
            try:
                file_key, op = openclip_key_map(canon, config.hidden_size)
            except KeyError:
                raise ModelLoadError(sd.path, f"unknown {name} layout (no OpenCLIP name for {k})") from None
            sources[k] = (prefix + file_key, op)
    comp = _Component(name, cls, config, sources, {"format": "HF CLIP" if fmt == "hf" else "OpenCLIP",
                                                   "layers": n_layers}, module)
    _validate(sd, comp, {k: tuple(v.shape) for k, v in module.state_dict().items()})
    return comp


def inspect_checkpoint(path, *, sd: StateDict | None = None) -> CheckpointPlan:
    """Read and validate a single-file checkpoint, and build its modules on the meta device (no weights yet).
    Any problem raises :class:`ModelLoadError`.

    >>> plan = inspect_checkpoint("model.safetensors")      # doctest: +SKIP
    >>> bundle = load_checkpoint("model.safetensors", plan=plan)   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    sd = sd or read_state_dict(path)
    try:
        return _inspect(sd, t0)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - anything odd in a file is one clear error, not a traceback
        raise ModelLoadError(sd.path, f"unknown architecture or corrupt checkpoint ({type(e).__name__}: {e})") \
            from e


def _inspect(sd: StateDict, t0: float) -> CheckpointPlan:
    from diffusers import UNet2DConditionModel

    t_read = time.perf_counter() - t0
    family = detect_family(sd)
    hints = _hints(sd.metadata)
    t = sd.tensors
    unet_shapes = _sub_shapes(sd, UNET_PREFIX)
    if not unet_shapes:
        raise ModelLoadError(sd.path, "a text encoder but no UNet (model.diffusion_model.*): not a full checkpoint")
    unet_config, layout = infer_unet_config(unet_shapes, family, hints.get("unet", {}), sd.path)
    vae_prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p + "encoder.") for k in t)), None)
    if vae_prefix is None:
        raise ModelLoadError(sd.path, "no VAE in the checkpoint (first_stage_model.*); nbdiffuse needs full "
                                      "checkpoints")
    vae = _vae_component(sd, vae_prefix, family, hints.get("vae", {}), sd.path)
    te_hints = hints.get("text_encoders", [{}, {}])
    te_hints = list(te_hints) + [{}] * (2 - len(te_hints))
    if family == "sd1":
        tes = [_te_component(sd, "text_encoder", SD1_TE, "hf", "clip_l", False, False, te_hints[0])]
        kinds = ["clip_l"]
    elif family == "sd2":
        tes = [_te_component(sd, "text_encoder", SD2_TE, "openclip", "open_clip", False, True, te_hints[0])]
        kinds = ["open_clip"]
    elif family == "sdxl":
        tes = [_te_component(sd, "text_encoder", XL_TE1, "hf", "clip_l", False, False, te_hints[0]),
               _te_component(sd, "text_encoder_2", XL_TE2, "openclip", "open_clip", True, False, te_hints[1])]
        kinds = ["clip_l", "open_clip"]
    else:
        tes = [_te_component(sd, "text_encoder_2", REFINER_TE, "openclip", "open_clip", True, False, te_hints[0])]
        kinds = ["open_clip"]
    ctx = sum(c.config.hidden_size for c in tes) if family == "sdxl" else tes[-1].config.hidden_size
    if ctx != unet_config["cross_attention_dim"]:
        raise ModelLoadError(sd.path, f"unknown architecture: the text encoder(s) give {ctx}-wide context, the "
                                      f"UNet expects {unet_config['cross_attention_dim']}")
    if family.startswith("sdxl"):
        pooled = tes[-1].config.projection_dim
        n_ids = 6 if family == "sdxl" else 5
        adm = unet_config["projection_class_embeddings_input_dim"]
        if (adm - pooled) % n_ids or adm <= pooled:
            raise ModelLoadError(sd.path, f"unknown architecture: added-conditioning width {adm} does not fit "
                                          f"{pooled} pooled + {n_ids} time ids")
        unet_config["addition_time_embed_dim"] = (adm - pooled) // n_ids
    unet_module = _meta_module(_Component("unet", UNet2DConditionModel, unet_config, {}))
    try:
        sources = {key: (UNET_PREFIX + ldm, None) for key, ldm in unet_key_map(unet_module).items()}
    except KeyError as e:
        raise ModelLoadError(sd.path, f"unknown architecture: no LDM name for UNet parameter {e.args[0]}") from None
    unet = _Component("unet", UNet2DConditionModel, unet_config, sources, {}, unet_module)
    _validate(sd, unet, {k: tuple(v.shape) for k, v in unet_module.state_dict().items()})
    mapped = {src for src, _ in sources.values()}
    extra = [k for k in unet_shapes if UNET_PREFIX + k not in mapped]
    if extra:
        raise ModelLoadError(sd.path, f"unknown architecture: {len(extra)} UNet tensors this layout does not use "
                                      f"(e.g. {', '.join(extra[:3])})")

    arch = family
    label = ARCH_NAMES[family]
    full_width = unet_config["block_out_channels"] == [320, 640, 1280]
    if family == "sdxl" and (not layout["symmetric"] or
                             full_width and layout["transformer_blocks"] < SDXL_BASE_TRANSFORMER_BLOCKS):
        label = f"SDXL distilled (SSD-1B/Vega-like: {layout['transformer_blocks']} UNet transformer blocks, " \
                f"SDXL base has {SDXL_BASE_TRANSFORMER_BLOCKS})"
    dtypes: dict[str, int] = {}
    for v in t.values():
        name = str(v.dtype).replace("torch.", "")
        dtypes[name] = dtypes.get(name, 0) + v.numel()
    used = {src for c in (unet, vae, *tes) for src, _ in c.sources.values()}
    ignored = [k for k in t if k not in used]
    info = {"format": sd.format, "arch": arch, "variant": label, "file_dtypes": dtypes,
            "unet_transformer_blocks": layout["transformer_blocks"], "vae_layout": vae.info.get("layout"),
            "text_encoders": [c.info for c in tes], "ignored_tensors": len(ignored),
            "ignored_examples": ignored[:5], "metadata_config": bool(hints)}
    plan = CheckpointPlan(sd, arch, [unet, vae, *tes], kinds, hints, info,
                          {"read": t_read, "build": time.perf_counter() - t0 - t_read})
    return plan


def _prediction_from_hints(sd: StateDict) -> tuple[str, str] | None:
    for key in ("nbdiffuse.prediction_type", "modelspec.prediction_type"):
        v = str(sd.metadata.get(key, "")).strip().lower()
        if v in ("v", "v_prediction", "v-prediction", "vpred", "v_pred"):
            return "v_prediction", f"metadata {key}"
        if v in ("epsilon", "eps"):
            return "epsilon", f"metadata {key}"
    yaml = sd.path.with_suffix(".yaml")
    if yaml.is_file():
        try:
            text = yaml.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        m = re.search(r"parameterization\s*:\s*[\"']?(\w+)", text)
        if m:
            return ("v_prediction" if m[1] == "v" else "epsilon"), f"{yaml.name} parameterization"
        if text:
            return "epsilon", f"{yaml.name} (no parameterization: eps)"
    if "v_pred" in sd.tensors:
        return "v_prediction", "v_pred key"
    return None


@torch.no_grad()
def _a1111_v_test(unet, context_dim: int) -> float:
    """A1111's ``is_using_v_parameterization_for_sd2``: mean(out - x) for constant inputs at t=999."""
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    cond = torch.full((1, 2, context_dim), 0.5, device=p.device, dtype=p.dtype)
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=cond).sample
    return float((out.float() - x.float()).mean())


def _build(plan: CheckpointPlan, *, device, dtype) -> ModelBundle:
    from nbdiffuse.models.tokenizer import clip_tokenizer

    device = torch.device(device)
    timings = dict(plan.timings)
    t = time.perf_counter()
    modules = []
    for c in plan.components:
        module = c.module if c.module is not None else _meta_module(c)
        c.module = None  # a plan builds once
        modules.append(module)
    timings["build"] = timings.get("build", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    tensors = plan.sd.tensors
    for comp, module in zip(plan.components, modules):
        state = {}
        for key, (src, op) in comp.sources.items():
            v = apply_op(tensors[src], op)
            if v.is_floating_point():
                v = v.to(device=device, dtype=dtype)
            else:
                v = v.to(device=device)
            state[key] = v
        module.load_state_dict(state, strict=True, assign=True)
        del state
        module.to(device)  # buffers made outside the meta context (position ids)
        module.eval()
        module.requires_grad_(False)
        leftover = [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.is_meta]
        if leftover:
            raise ModelLoadError(plan.sd.path, f"internal: {comp.name} tensors left unassigned: {leftover[:3]}")
    timings["apply"] = time.perf_counter() - t
    unet, vae, *tes = modules
    pred = _prediction_from_hints(plan.sd)
    if pred is None:
        if plan.arch == "sd2":
            t = time.perf_counter()
            score = _a1111_v_test(unet, unet.config.cross_attention_dim)
            pred = ("v_prediction" if score < -1 else "epsilon", f"A1111 SD2 test (mean(out - x) = {score:.3f})")
            timings["detect"] = time.perf_counter() - t
        else:
            pred = ("epsilon", "default for " + ARCH_NAMES[plan.arch])
    if plan.arch == "sd2" and pred[0] == "epsilon" and "sample_size" not in plan.hints.get("unet", {}):
        # the shapes cannot tell SD2-base (epsilon, trained at 512) from SD2-v (768); the prediction type can,
        # as in diffusers' configs (sample_size 64 and 96); native_size is read from it
        unet.register_to_config(sample_size=64)
    upcast = plan.hints.get("unet", {}).get("upcast_attention")
    if upcast is None and plan.arch == "sd2" and pred[0] == "v_prediction":
        _set_upcast(unet, True)  # diffusers' SD2.x-v configs upcast attention (fp16 overflow otherwise)
    info = dict(plan.info)
    info.update(prediction_type=pred[0], prediction_source=pred[1], dtype=str(dtype).replace("torch.", ""),
                device=str(device))
    tokenizers = [clip_tokenizer(k) for k in plan.tokenizer_kinds]
    return ModelBundle(unet=unet, vae=vae, text_encoders=tes, tokenizers=tokenizers, arch=plan.arch,
                       prediction_type=pred[0], alphas_cumprod=scaled_linear_alphas_cumprod(),
                       name=plan.sd.path.stem, path=str(plan.sd.path), hash=None,
                       info={**info, "timings": timings})


def _set_upcast(unet, value: bool) -> None:
    from diffusers.models.attention_processor import Attention

    for m in unet.modules():
        if isinstance(m, Attention):
            m.upcast_attention = value
    unet.register_to_config(upcast_attention=value)


def _report(timings: dict) -> str:
    stages = ", ".join(f"{k}: {timings.get(k, 0.0):.1f}s" for k in ("read", "build", "apply", "hash"))
    return f"Weights loaded in {timings['total']:.1f}s ({stages})"


def load_checkpoint(path, *, device="cpu", dtype: torch.dtype = torch.float32, hash: bool = True,
                    plan: CheckpointPlan | None = None) -> ModelBundle:
    """Load an A1111/ComfyUI single-file checkpoint as a :class:`ModelBundle` (see the module docs).

    ``hash``: compute A1111's ``Model hash`` (cached by path + size + mtime, see :mod:`.hashing`) and the legacy
    hash; ``False`` skips both (``bundle.hash`` is then ``None``). ``bundle.info`` holds what was found (``arch``,
    ``variant``, ``prediction_type`` and its ``prediction_source``, ``file_dtypes``, ``dtype``, ``hash``...),
    ``info["timings"]`` seconds per stage (``read``, ``plan``, ``build``, ``apply``, ``hash``, ``total``) and
    ``info["report"]`` A1111's one-line summary, e.g. ``Weights loaded in 2.1s (read: 0.3s, build: 0.1s, ...)``.
    Raises :class:`ModelLoadError` for any problem with the file. ``plan``: the result of
    :func:`inspect_checkpoint` for ``path`` when the caller validated it already.

    >>> bundle = load_checkpoint("models/Stable-diffusion/v1-5-pruned-emaonly.safetensors")  # doctest: +SKIP
    >>> bundle.arch, bundle.prediction_type, bundle.hash, bundle.info["report"]                # doctest: +SKIP
    ('sd1', 'epsilon', '6ce0161689', 'Weights loaded in 2.1s (read: 0.3s, build: 0.1s, ...)')
    """
    t0 = time.perf_counter()
    if plan is None:
        plan = inspect_checkpoint(path)
    else:
        t0 -= plan.timings.get("read", 0.0) + plan.timings.get("build", 0.0)
    bundle = plan.build(device=device, dtype=dtype)
    timings = bundle.info["timings"]
    if hash:
        from nbdiffuse.models.hashing import legacy_hash, sha256

        t = time.perf_counter()
        full = sha256(plan.sd.path)
        bundle.hash = full[:10]
        bundle.info.update(hash=full[:10], sha256=full, legacy_hash=legacy_hash(plan.sd.path))
        timings["hash"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    bundle.info["report"] = _report(timings)
    return bundle


# --------------------------------------------------------------------------------------------------- VAEs
def load_vae(path, *, device="cpu", dtype: torch.dtype = torch.float32, scaling_factor: float | None = None,
             arch: str = "sd1"):
    """Load an external VAE file (A1111 ``models/VAE``): LDM layout (``encoder.down.*``, optionally under
    ``first_stage_model.``/``vae.``, ``.ckpt`` ``state_dict`` wrappers with ``loss.*``/``model_ema.*`` extras
    ignored) or diffusers layout (``encoder.down_blocks.*``, e.g. the SDXL fp16-fix VAE's
    ``diffusion_pytorch_model.safetensors``; old ``query/key/value/proj_attn`` names too). Returns an
    ``AutoencoderKL``; ``scaling_factor`` defaults to ``arch``'s (0.18215 SD1/SD2, 0.13025 SDXL) unless the
    file's metadata says otherwise. Raises :class:`ModelLoadError`.

    >>> vae = load_vae("models/VAE/sdxl-vae-fp16-fix.safetensors", arch="sdxl")   # doctest: +SKIP
    >>> session.load_vae(vae)                                                      # doctest: +SKIP
    """
    t0 = time.perf_counter()
    sd = read_state_dict(path)
    keys = sd.tensors
    prefix = next((p for p in ("", *VAE_PREFIXES) if any(k.startswith(p + "encoder.") for k in keys)), None)
    if prefix is None:
        raise ModelLoadError(sd.path, f"not a VAE file: {_what_is_it(keys)}")
    hints = _hints(sd.metadata).get("vae", {})
    if scaling_factor is not None:
        hints = {**hints, "scaling_factor": scaling_factor}
    comp = _vae_component(sd, prefix, arch, hints, sd.path)
    module = _meta_module(comp)
    device = torch.device(device)
    state = {}
    for key, (src, op) in comp.sources.items():
        v = apply_op(keys[src], op)
        state[key] = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
    module.load_state_dict(state, strict=True, assign=True)
    module.eval()
    module.requires_grad_(False)
    module.nbdiffuse_info = {"path": str(sd.path), "layout": comp.info.get("layout"), "format": sd.format,
                             "load_s": time.perf_counter() - t0}
    return module


def swap_vae(bundle: ModelBundle, vae) -> torch.nn.Module:
    """Put ``vae`` (an ``AutoencoderKL``, e.g. from :func:`load_vae`) into ``bundle`` and return the old one.

    The new VAE is moved to the bundle's device/dtype and gets the bundle's latent ``scaling_factor`` (a VAE file
    does not say which model family it was made for); latent channels and downscale factor must match."""
    old = bundle.vae
    if int(vae.config.latent_channels) != int(old.config.latent_channels) or \
            len(vae.config.block_out_channels) != len(old.config.block_out_channels):
        raise ModelLoadError(getattr(vae, "nbdiffuse_info", {}).get("path", "vae"),
                             f"this VAE has {vae.config.latent_channels} latent channels and "
                             f"{len(vae.config.block_out_channels)} levels; the model needs "
                             f"{old.config.latent_channels} and {len(old.config.block_out_channels)}")
    p = next(old.parameters())
    vae.to(device=p.device, dtype=p.dtype)
    vae.register_to_config(scaling_factor=old.config.scaling_factor)
    bundle.vae = vae
    bundle.info["vae"] = getattr(vae, "nbdiffuse_info", {}).get("path", type(vae).__name__)
    return old
