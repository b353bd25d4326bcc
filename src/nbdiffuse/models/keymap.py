"""The names a model's tensors have in A1111/LDM single-file checkpoints (and kohya LoRAs), from the diffusers /
transformers module names: one map per model part, read by the loader (:mod:`.checkpoint`: file -> module), the
writer (:mod:`.save`: module -> file) and LoRA matching (:mod:`.lora`: file key -> layer).

A map entry is ``module key -> (file key, op)``; ops: ``None``, ``"T"`` (transpose), ``"squeeze"`` (a 1x1
convolution in the file, a linear layer in the module), ``("chunk", i, n)`` (the i-th of n equal row blocks of the
file tensor: OpenCLIP's fused ``in_proj``).

>>> vae_key_to_ldm("decoder.up_blocks.0.resnets.0.conv_shortcut.weight", levels=4)
('decoder.up.3.block.0.nin_shortcut.weight', None)
"""

from __future__ import annotations

import re

import torch

# where each part lives in a single-file checkpoint
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD1_TE = "cond_stage_model.transformer."
SD2_TE = "cond_stage_model.model."
XL_TE1 = "conditioner.embedders.0.transformer."
XL_TE2 = "conditioner.embedders.1.model."
REFINER_TE = "conditioner.embedders.0.model."

# ------------------------------------------------------------------------------------------------------ UNet
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_ldm_prefixes(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers module-path prefix -> LDM (original SD / kohya-SDXL) prefix, from the UNet's block layout."""
    out = dict(_UNET_TOP)
    index = 1
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        for j in range(len(block.resnets)):
            out[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            if getattr(block, "attentions", None) is not None and j < len(block.attentions):
                out[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if getattr(block, "downsamplers", None):
            out[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        out["mid_block.resnets.0"] = "middle_block.0"
        if getattr(mid, "attentions", None):
            out["mid_block.attentions.0"] = "middle_block.1"
            out["mid_block.resnets.1"] = "middle_block.2"
        elif len(mid.resnets) > 1:
            out["mid_block.resnets.1"] = "middle_block.1"
    index = 0
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        has_attn = getattr(block, "attentions", None) is not None and len(block.attentions) > 0
        for j in range(len(block.resnets)):
            out[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            if has_attn and j < len(block.attentions):
                out[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            index += 1
        if getattr(block, "upsamplers", None):
            out[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{2 if has_attn else 1}.conv"
    return out


def unet_name_to_ldm(name: str, prefixes: dict[str, str]) -> str | None:
    """A diffusers UNet module or parameter name -> its LDM name, by the longest prefix in ``prefixes``
    (:func:`unet_ldm_prefixes`); ``None`` when no prefix fits."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            rest = parts[cut:]
            if ".resnets." in head or head.startswith("mid_block.resnets"):
                rest = [_RESNET.get(rest[0], rest[0]), *rest[1:]] if rest else rest
            return ".".join([prefixes[head], *rest])
    return None


def unet_key_map(unet: torch.nn.Module) -> dict[str, str]:
    """Every key of ``unet.state_dict()`` -> its LDM name (without ``model.diffusion_model.``); ``KeyError`` for a
    key that has none."""
    prefixes = unet_ldm_prefixes(unet)
    out = {}
    for key in unet.state_dict():
        ldm = unet_name_to_ldm(key, prefixes)
        if ldm is None:
            raise KeyError(key)
        out[key] = ldm
    return out


# ------------------------------------------------------------------------------------------- VAE, text encoders
def vae_key_to_ldm(key: str, levels: int) -> tuple[str, object]:
    """diffusers VAE parameter name -> (LDM name, op)."""
    def res(rest):
        return rest.replace("conv_shortcut.", "nin_shortcut.")

    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key)
    if m:
        part, rest = m[1], m[2]
        name, _, leaf = rest.rpartition(".")
        ldm = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[name]
        return f"{part}.mid.attn_1.{ldm}.{leaf}", ("squeeze" if leaf == "weight" and ldm != "norm" else None)
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{res(m[3])}", None
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        if m[2] == "downsamplers":
            return f"encoder.down.{m[1]}.downsample.{m[4]}", None
        return f"encoder.down.{m[1]}.block.{m[3]}.{res(m[4])}", None
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        i = levels - 1 - int(m[1])
        if m[2] == "upsamplers":
            return f"decoder.up.{i}.upsample.{m[4]}", None
        return f"decoder.up.{i}.block.{m[3]}.{res(m[4])}", None
    return key.replace("conv_norm_out.", "norm_out."), None


def openclip_key_map(module_key: str, n_heads_width: int) -> tuple[str, object]:
    """transformers CLIP text-model name -> (OpenCLIP name, op)."""
    k = module_key
    if k == "text_model.embeddings.token_embedding.weight":
        return "token_embedding.weight", None
    if k == "text_model.embeddings.position_embedding.weight":
        return "positional_embedding", None
    if k.startswith("text_model.final_layer_norm."):
        return "ln_final." + k.rsplit(".", 1)[1], None
    if k == "text_projection.weight":
        return "text_projection", "T"
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", k)
    if not m:
        raise KeyError(k)
    i, rest = m[1], m[2]
    pre = f"transformer.resblocks.{i}."
    m2 = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
    if m2:
        return pre + f"attn.in_proj_{m2[2]}", ("chunk", "qkv".index(m2[1]), 3)
    for a, b in (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                 ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")):
        if rest.startswith(a):
            return pre + b + rest[len(a):], None
    raise KeyError(k)


def te_canonical_keys(module) -> dict:
    """transformers text-model state-dict key -> canonical ``text_model.``-prefixed name (transformers 5's
    ``CLIPTextModel`` drops the ``text_model.`` level that files and ``CLIPTextModelWithProjection`` have)."""
    keys = [k for k in module.state_dict() if not k.endswith("position_ids")]
    if hasattr(module, "text_model"):
        return {k: k for k in keys}
    return {k: (k if k.startswith("text_projection") else "text_model." + k) for k in keys}


def apply_op(t: torch.Tensor, op) -> torch.Tensor:
    if op is None:
        return t
    if op == "T":
        return t.t().contiguous()
    if op == "squeeze":
        return t.reshape(t.shape[0], t.shape[1]) if t.ndim == 4 else t
    _, i, n = op
    size = t.shape[0] // n
    return t[i * size:(i + 1) * size]


def op_shape(shape: tuple, op) -> tuple:
    if op is None:
        return shape
    if op == "T":
        return tuple(reversed(shape))
    if op == "squeeze":
        return tuple(shape[:2]) if len(shape) == 4 else shape
    return (shape[0] // op[2], *shape[1:])
