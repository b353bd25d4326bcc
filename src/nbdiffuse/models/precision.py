"""Which dtype each component runs in, chosen per device and said in one line; float32 attention where needed.

The policy (:func:`choose_dtypes`) is a pure function of the device, the card's compute capability, the VAE's and
the UNet's configs and the user's overrides, so every case is tested on the CPU:

- **CPU** (and any device but CUDA): float32 everywhere (``dtype=torch.bfloat16`` works too).
- **CUDA**: UNet and text encoders in float16. The VAE in bfloat16 where the card has it (compute capability 8.0
  or newer: bfloat16 has float32's range, so SD's VAE cannot overflow), else float32; float16 only for a VAE known
  to be safe in it (its config says ``force_upcast: false``, as the SDXL fp16-fix VAE's does). ComfyUI and Forge
  choose the VAE this way; diffusers' SDXL pipeline reads ``force_upcast`` for the same question.
- **Attention upcast** (q·k and softmax in float32): on where the UNet's config asks for it (``upcast_attention``:
  diffusers' SD2.x v-prediction configs) and the UNet runs in float16; ``upcast_attention=True/False`` decides
  for every model.

>>> p = choose_dtypes("cuda", (8, 9))
>>> p.describe()
'Precision: UNet float16, text encoders float16, VAE bfloat16 (compute capability 8.9 has bfloat16)'
>>> choose_dtypes("cpu").describe()
'Precision: float32 (the CPU default)'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

COMPONENTS = ("unet", "text_encoder", "vae")
OVERRIDES = ("dtype", "unet_dtype", "vae_dtype", "text_encoder_dtype", "upcast_attention")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Policy:
    """The dtype of each component, whether attention is upcast, and why (``describe()`` is the load line's part).

    >>> Policy(torch.float16, torch.float16, torch.float32, vae_why="compute capability 7.5 has no bfloat16")
    ... # doctest: +ELLIPSIS
    Policy(unet=torch.float16, text_encoder=torch.float16, vae=torch.float32, ...)
    """

    unet: torch.dtype
    text_encoder: torch.dtype
    vae: torch.dtype
    upcast_attention: bool = False
    why: str = ""  # why these dtypes (the device's default, the user's choice)
    vae_why: str = ""  # why the VAE differs from the UNet, when it does
    upcast_why: str = ""

    def dtype_of(self, component: str) -> torch.dtype:
        """The dtype of ``"unet"``, ``"vae"`` or a text encoder (``"text_encoder"``, ``"text_encoder_2"``)."""
        return self.text_encoder if component.startswith("text_encoder") else getattr(self, component)

    @property
    def uniform(self) -> bool:
        return self.unet == self.text_encoder == self.vae and not self.upcast_attention

    def short(self) -> str:
        """``float32``, or ``UNet float16 · text encoders float16 · VAE bfloat16 · upcast attention``."""
        if self.uniform:
            return dtype_name(self.unet)
        parts = [f"UNet {dtype_name(self.unet)}", f"text encoders {dtype_name(self.text_encoder)}",
                 f"VAE {dtype_name(self.vae)}"]
        return " · ".join(parts + (["upcast attention"] if self.upcast_attention else []))

    def describe(self) -> str:
        """One line: every component's dtype and why the VAE and attention are what they are."""
        if self.uniform:
            why = "; ".join(w for w in (self.why, self.vae_why) if w)
            return f"Precision: {dtype_name(self.unet)}" + (f" ({why})" if why else "")
        line = (f"Precision: UNet {dtype_name(self.unet)}, text encoders {dtype_name(self.text_encoder)}, "
                f"VAE {dtype_name(self.vae)}" + (f" ({self.vae_why})" if self.vae_why else ""))
        if self.upcast_attention:
            line += ", attention upcast to float32" + (f" ({self.upcast_why})" if self.upcast_why else "")
        return line


def _config_value(config, key: str):
    if config is None:
        return None
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def choose_dtypes(device: str | torch.device, capability: tuple[int, int] | None = None, vae_config=None,
                  overrides: Mapping | None = None, unet_config=None) -> Policy:
    """The precision policy for a model on ``device`` (see the module docs).

    ``capability``: the CUDA card's compute capability (``torch.cuda.get_device_capability()``); ``vae_config`` /
    ``unet_config``: the components' configs (a dict or a diffusers ``FrozenDict``; ``None`` when not known yet,
    read as diffusers' defaults: ``force_upcast`` true, no attention upcast); ``overrides``: the Session's
    ``dtype``, ``unet_dtype``, ``vae_dtype``, ``text_encoder_dtype`` and ``upcast_attention`` (``None`` = choose).

    >>> choose_dtypes("cuda", (7, 5)).vae, choose_dtypes("cuda", (7, 5), {"force_upcast": False}).vae
    (torch.float32, torch.float16)
    >>> choose_dtypes("cpu", overrides={"dtype": torch.bfloat16}).describe()
    'Precision: bfloat16 (asked for)'
    """
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(o) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown precision setting(s) {sorted(unknown)}: the settings are {', '.join(OVERRIDES)}")
    cuda = torch.device(device).type == "cuda"
    if "dtype" in o:
        base, why = o["dtype"], "asked for"
    elif cuda:
        base, why = torch.float16, "the CUDA default"
    else:
        base, why = torch.float32, f"the {torch.device(device).type.upper()} default"
    unet = o.get("unet_dtype", base)
    text_encoder = o.get("text_encoder_dtype", base)
    if "vae_dtype" in o:
        vae, vae_why = o["vae_dtype"], "asked for"
    elif base != torch.float16:
        vae, vae_why = base, ""  # float32 and bfloat16 have the range SD's VAEs need
    elif _config_value(vae_config, "force_upcast") is False:
        vae, vae_why = torch.float16, "the VAE's config says it is safe in float16 (force_upcast: false)"
    elif not cuda or (capability is not None and tuple(capability) >= (8, 0)):
        where = "this device" if not cuda else f"compute capability {capability[0]}.{capability[1]}"
        vae, vae_why = torch.bfloat16, f"{where} has bfloat16"
    else:
        where = f"compute capability {capability[0]}.{capability[1]}" if capability else "this card"
        vae, vae_why = torch.float32, f"{where} has no bfloat16, and float16 overflows in most VAEs"
    if "upcast_attention" in o:
        upcast = bool(o["upcast_attention"])
        upcast_why = "asked for"
    else:
        upcast = bool(_config_value(unet_config, "upcast_attention")) and unet == torch.float16
        upcast_why = "the UNet's config asks for it in float16: SD2.x v-prediction"
    return Policy(unet, text_encoder, vae, upcast, why, vae_why, upcast_why if upcast else "")


def loading_dtypes(policy: Policy, overrides: Mapping | None = None) -> Policy:
    """The dtypes to load weights in before the VAE's config is known: the VAE in float32 when its final dtype
    depends on its config (float16 for a safe VAE), so that casting to the final one rounds once."""
    if (overrides or {}).get("vae_dtype") is not None or policy.vae in (torch.float32, policy.unet):
        return policy
    return Policy(policy.unet, policy.text_encoder, torch.float32, policy.upcast_attention)


def component_dtype(dtype, component: str) -> torch.dtype:
    """``dtype`` itself, or a :class:`Policy`'s (or a mapping's) dtype for ``component``."""
    if isinstance(dtype, Policy):
        return dtype.dtype_of(component)
    if isinstance(dtype, Mapping):
        key = "text_encoder" if component.startswith("text_encoder") else component
        return dtype[key]
    return dtype


def bf16_works(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 (CUDA: compute capability 8.0 or newer; the CPU: torch does)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu"


def vae_fallbacks(dtype: torch.dtype, device: torch.device) -> list[torch.dtype]:
    """The dtypes to decode again in, in order, after a VAE decode in ``dtype`` gave NaN/inf: bfloat16 (float32's
    range, half the memory) where the device has it and ``dtype`` is float16, then float32."""
    out = [torch.bfloat16] if dtype == torch.float16 and bf16_works(device) else []
    return out + ([torch.float32] if dtype != torch.float32 else [])


# --------------------------------------------------------------------------------------------- attention
class UpcastAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for a UNet's attention, with q·k and softmax in float32: SDPA runs on
    float32 q, k, v and the result is cast back (A1111's "Upcast cross attention layer to float32" does the same).

    Only what a UNet's transformer attention uses: no spatial or group norm, no residual connection (the VAE's
    attention keeps its own processor).

    >>> set_upcast_attention(bundle.unet, True)   # doctest: +SKIP
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        import torch.nn.functional as F

        batch, length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1]).float()
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head = key.shape[-1] // attn.heads

        def split(t):
            return t.view(batch, -1, attn.heads, head).transpose(1, 2).float()

        out = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def _upcastable(module) -> bool:
    return (getattr(module, "spatial_norm", None) is None and getattr(module, "group_norm", None) is None
            and not getattr(module, "residual_connection", False) and getattr(module, "norm_q", None) is None)


def set_upcast_attention(unet: torch.nn.Module, on: bool) -> int:
    """Give every attention of ``unet`` the float32 :class:`UpcastAttnProcessor` (``on``), or put diffusers'
    default back where it is ours (``off``). Returns how many attention modules changed."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    changed = 0
    for module in unet.modules():
        if not isinstance(module, Attention):
            continue
        if on and _upcastable(module) and not isinstance(module.processor, UpcastAttnProcessor):
            module.set_processor(UpcastAttnProcessor())
            changed += 1
        elif not on and isinstance(module.processor, UpcastAttnProcessor):
            module.set_processor(AttnProcessor2_0())
            changed += 1
    return changed


def upcast_is_on(unet: torch.nn.Module) -> bool:
    """Whether any attention of ``unet`` runs in float32 (:class:`UpcastAttnProcessor`)."""
    return any(isinstance(getattr(m, "processor", None), UpcastAttnProcessor) for m in unet.modules())


def apply_policy(bundle, policy: Policy, device=None) -> None:
    """Move and cast each component of ``bundle`` as ``policy`` says, set attention upcast, and record the policy
    in ``bundle.info["precision"]`` (the :class:`Policy`)."""
    pairs = [("unet", bundle.unet), ("vae", bundle.vae)] + [("text_encoder", te) for te in bundle.text_encoders]
    for name, module in pairs:
        param = next(module.parameters())
        kwargs = {}
        if device is not None and param.device != torch.device(device):
            kwargs["device"] = device
        if param.dtype != policy.dtype_of(name):
            kwargs["dtype"] = policy.dtype_of(name)
        if kwargs:
            module.to(**kwargs)
    set_upcast_attention(bundle.unet, policy.upcast_attention)
    bundle.info["precision"] = policy
