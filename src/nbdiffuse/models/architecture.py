"""What a single-file checkpoint is, from its keys, shapes and metadata alone: the model family, the diffusers /
transformers configs of its parts, and its prediction type.

No configs are fetched; everything not in the file is inferred here:

- text encoders decide the family: ``cond_stage_model.transformer.*`` (HF CLIP-L) -> ``sd1``;
  ``cond_stage_model.model.*`` (OpenCLIP) -> ``sd2``; ``conditioner.embedders.0.transformer.*`` +
  ``conditioner.embedders.1.model.*`` -> ``sdxl``; a lone ``conditioner.embedders.0.model.*`` -> ``sdxl_refiner``;
- the UNet config comes from ``model.diffusion_model.*`` shapes: channels per level, res blocks per level,
  which levels have attention, the number of transformer blocks in *every* attention layer (so SSD-1B/Vega-style
  distilled SDXL variants with fewer blocks, asymmetric between down and up side, load), linear vs conv
  projections, cross-attention width, the added-conditioning width (SDXL: 6 time ids for base, 5 for the refiner);
  Turbo/Lightning/Hyper checkpoints have SDXL base shapes and load as ``sdxl``;
- the UNet's input channels: 4 for text-to-image, 9 for inpainting checkpoints (SD1 ``sd-v1-5-inpainting``, SD2
  ``512-inpainting-ema``, SDXL ``sd_xl_inpaint`` / diffusers' SDXL inpainting 0.1), whose UNet also takes the
  mask and the masked image's latents (:mod:`nbdiffuse.models.inpainting`); 8 (instruct-pix2pix) and other counts
  are refused with their name;
- what shapes cannot tell follows SD's conventions: 8 attention heads for SD1, 64-channel heads otherwise, 32
  GroupNorm groups, SD2-v upcasts attention; a checkpoint written by :func:`nbdiffuse.models.save_checkpoint`
  carries these in its metadata (``nbdiffuse.config``), which is how tiny test models round-trip exactly;
- SD2's OpenCLIP-H: A1111 uses the penultimate layer + final norm, so the CLIPTextModel gets all layers but the
  last (like diffusers' SD2 folders);
- prediction type, first match wins: safetensors metadata (``nbdiffuse.prediction_type``,
  ``modelspec.prediction_type``); a ``<name>.yaml`` next to the file with ``parameterization: "v"`` (A1111's
  convention); a ``v_pred`` key (ComfyUI's convention for SDXL v-pred checkpoints); for SD2 without any of these,
  A1111's test (``is_using_v_parameterization_for_sd2``): run the UNet once on a constant 0.5 latent and context
  at t=999 and call it v-prediction when ``mean(out - x) < -1``; otherwise epsilon (an SD2 inpainting UNet is
  epsilon without the test, as A1111 gives it ``v2-inpainting-inference.yaml`` before testing).

Problems raise :class:`~nbdiffuse.models.errors.ModelLoadError` naming the file.

>>> infer_vae_config({"encoder.conv_in.weight": (32, 3, 3, 3), "decoder.conv_out.weight": (3, 32, 3, 3),
...                   "post_quant_conv.weight": (4, 4, 1, 1), "encoder.down.0.block.0.conv1.weight": (32, 32, 3, 3)},
...                  "vae.safetensors", {}, "sd1")["block_out_channels"]
[32]
"""

from __future__ import annotations

import json
import re

import torch

from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.keymap import REFINER_TE, SD1_TE, SD2_TE, UNET_PREFIX, XL_TE1, XL_TE2
from nbdiffuse.models.state_dict import StateDict

ARCH_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL base", "sdxl_refiner": "SDXL refiner"}
SDXL_BASE_TRANSFORMER_BLOCKS = 70
LATENT_CHANNELS = 4
# An inpainting UNet's extra input channels: A1111's c_concat, the mask (1) and the masked image's latents (4)
INPAINT_CHANNELS = 5
# metadata hints save_checkpoint writes and the loader honours (hyper-parameters that shapes cannot tell)
HINT_KEYS = {
    "unet": ("attention_head_dim", "norm_num_groups", "sample_size", "upcast_attention", "norm_eps"),
    "vae": ("norm_num_groups", "sample_size", "scaling_factor", "force_upcast"),
    "text_encoder": ("num_attention_heads", "hidden_act", "layer_norm_eps", "pad_token_id", "bos_token_id",
                     "eos_token_id"),
}


def metadata_hints(metadata: dict) -> dict:
    """The ``nbdiffuse.config`` hints :func:`nbdiffuse.models.save_checkpoint` wrote ({} when absent or unreadable)."""
    raw = metadata.get("nbdiffuse.config")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def what_is_it(keys) -> str:
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
        raise ModelLoadError(sd.path, f"not a Stable Diffusion checkpoint: {what_is_it(t)}")
    raise ModelLoadError(sd.path, "unknown architecture: the file has a UNet but no text encoder this loader knows "
                                  "(cond_stage_model.transformer/.model or conditioner.embedders.*)")


def unet_channels_problem(in_channels: int, out_channels: int) -> str | None:
    """Why a UNet with these input/output channels cannot run here (None when it can): text-to-image UNets take 4
    latent channels, inpainting UNets 9 (A1111's ``sd_models_config``: ``input_blocks.0.0.weight.shape[1] == 9``
    -> ``v1-inpainting-inference.yaml``, ``v2-inpainting-inference.yaml``, ``sd_xl_inpaint.yaml``); 8 is
    instruct-pix2pix, which nbdiffuse does not run.

    >>> unet_channels_problem(9, 4) is None
    True
    """
    if out_channels == LATENT_CHANNELS and in_channels in (LATENT_CHANNELS, LATENT_CHANNELS + INPAINT_CHANNELS):
        return None
    if in_channels == 8 and out_channels == LATENT_CHANNELS:
        return ("a UNet with 8 input channels: an instruct-pix2pix model (image-edit conditioning), which nbdiffuse "
                "does not run; text-to-image (4 input channels) and inpainting (9) checkpoints load")
    return (f"a UNet with {in_channels} input / {out_channels} output channels; nbdiffuse runs text-to-image "
            f"(4/4) and inpainting (9/4) UNets")


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
    problem = unet_channels_problem(in_channels, out_channels)
    if problem:
        fail(problem)
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
    return _vae_config(shapes, channels, lpb, "encoder.mid.attn_1.q.weight" in shapes, hints, family)


def te_config(shapes: dict, fmt: str, kind: str, hints: dict, n_layers: int, projection: bool):
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


def diffusers_vae_config(shapes: dict, path, hints: dict, family: str) -> dict:
    """diffusers ``AutoencoderKL`` kwargs from diffusers-layout VAE shapes (``encoder.down_blocks.*``)."""
    levels = len({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down_blocks.")})
    lpb = len({int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down_blocks.0.resnets.")})
    mid_attention = any(k.startswith("encoder.mid_block.attentions.") for k in shapes)
    try:
        channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
        return _vae_config(shapes, channels, lpb, mid_attention, hints, family)
    except KeyError as e:
        raise ModelLoadError(path, f"unknown VAE layout: missing {e.args[0]}") from None


def _vae_config(shapes: dict, channels: list, lpb: int, mid_attention: bool, hints: dict, family: str) -> dict:
    """The ``AutoencoderKL`` kwargs both VAE layouts share (``shapes``: the keys both name alike)."""
    levels = len(channels)
    config = dict(
        in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=channels, layers_per_block=lpb, latent_channels=shapes["post_quant_conv.weight"][0],
        norm_num_groups=_groups(channels, hints.get("norm_num_groups")),
        sample_size={"sd1": 512, "sd2": 768}.get(family, 1024),
        scaling_factor=0.13025 if family.startswith("sdxl") else 0.18215,
        mid_block_add_attention=mid_attention,
    )
    for k in ("sample_size", "scaling_factor", "force_upcast"):
        if k in hints:
            config[k] = hints[k]
    return config


def prediction_from_hints(sd: StateDict) -> tuple[str, str] | None:
    """(prediction type, where it was read) from metadata, a ``.yaml`` beside the file or a ``v_pred`` key; None
    when nothing says."""
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
def a1111_v_test(unet, context_dim: int) -> float:
    """A1111's ``is_using_v_parameterization_for_sd2``: mean(out - x) for constant inputs at t=999."""
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    cond = torch.full((1, 2, context_dim), 0.5, device=p.device, dtype=p.dtype)
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=cond).sample
    return float((out.float() - x.float()).mean())
