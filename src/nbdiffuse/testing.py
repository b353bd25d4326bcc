"""Tiny, randomly initialised Stable Diffusion models of the real architectures, for tests and demos.

``tiny_sd1()``, ``tiny_sd2()``, ``tiny_sdxl()`` (``inpainting=True``: with a 9-channel UNet input, as inpainting
checkpoints have; :func:`tiny_checkpoint` writes one as a single file) and ``tiny_sdxl_refiner()`` build, from config
and in a few tens of milliseconds,
the same diffusers/transformers classes a real checkpoint uses (``UNet2DConditionModel``,
``AutoencoderKL``, ``CLIPTextModel`` / ``CLIPTextModelWithProjection``) with the real CLIP tokenizer(s)
and SD's real noise schedule, but with tiny widths. Their outputs are meaningless noise; what matters is
that every code path (conditioning, SDXL's added conditions, VAE 8x scaling, v-prediction, saving and
loading diffusers folders) runs exactly as with a real model.

Geometry shared by all three: 4 latent channels, VAE downsampling 8x (four VAE blocks), UNet
``sample_size`` 8 (so the default image is 64x64), 77-token text context, 49408-token vocabulary.

Initialisation: diffusers' ``UNet2DConditionModel`` does not zero-initialise ``conv_out`` (only norm
biases start at zero), so the random UNet already gives non-zero, conditioning-dependent outputs. Should a
future diffusers version zero-init any output projection, :func:`_ensure_nonzero_output` re-randomises it
with small normal values (std 0.02) so tests can still see differences.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nbdiffuse.models.bundle import ModelBundle, scaled_linear_alphas_cumprod
from nbdiffuse.models.tokenizer import clip_tokenizer

# The sizes used below (also handy for tests).
SAMPLE_SIZE = 8  # latent side; image side = 64
VAE_SCALE = 8
TEXT_HIDDEN = 32  # CLIP-L stand-in (SD1, SDXL text_encoder)
TEXT_HIDDEN_2 = 64  # OpenCLIP-bigG stand-in (SDXL text_encoder_2)
SDXL_TEXT_PROJECTION = 32
SDXL_TIME_EMBED = 8
SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000}


def _text_config(hidden: int, act: str, pad_token_id: int, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,  # > 2 so "CLIP skip" has layers to skip
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # 4 blocks -> 3 downsamples -> 8x, like SD's VAE
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SAMPLE_SIZE * VAE_SCALE,
        scaling_factor=scaling_factor,
    )


def _ensure_nonzero_output(unet: torch.nn.Module) -> None:
    """Re-randomise (std 0.02) any all-zero weight of the UNet's output path; a no-op with diffusers 0.4x."""
    for name in ("conv_out",):
        layer = getattr(unet, name, None)
        if layer is not None and torch.count_nonzero(layer.weight) == 0:
            with torch.no_grad():
                layer.weight.normal_(0.0, 0.02)
                if layer.bias is not None:
                    layer.bias.normal_(0.0, 0.02)


def _build(seed: int, arch: str, prediction_type: str, tokenizer_kinds: tuple[str, ...], unet: dict,
           vae_scaling: float, text_encoders, inpainting: bool = False) -> ModelBundle:
    """Build a tiny bundle under ``seed``: the UNet (``unet``: its config beyond the common part), the VAE, then
    ``text_encoders(tokenizers)`` (the modules, in this order, so each seed gives the same weights as ever).
    ``inpainting``: a 9-channel UNet input (latents, mask, masked-image latents), as inpainting checkpoints have."""
    import time

    from diffusers import UNet2DConditionModel

    t0 = time.perf_counter()
    tokenizers = [clip_tokenizer(kind) for kind in tokenizer_kinds]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet2DConditionModel(sample_size=SAMPLE_SIZE, in_channels=9 if inpainting else 4, out_channels=4,
                                     layers_per_block=1,
                                     block_out_channels=(32, 64), norm_num_groups=8, **unet)
        vae = _vae(vae_scaling)
        encoders = text_encoders(tokenizers)
    _ensure_nonzero_output(model)
    for module in (model, vae, *encoders):
        if any(p.dtype != torch.float32 for p in module.parameters()):  # only if the default dtype isn't
            module.to(torch.float32)
        module.eval()
        module.requires_grad_(False)
    return ModelBundle(unet=model, vae=vae, text_encoders=encoders, tokenizers=tokenizers, arch=arch,
                       prediction_type=prediction_type, alphas_cumprod=scaled_linear_alphas_cumprod(),
                       name=f"tiny-{arch}-inpainting" if inpainting else f"tiny-{arch}",
                       info={"source": "nbdiffuse.testing", "build_s": time.perf_counter() - t0})


def tiny_sd1(seed: int = 0, *, inpainting: bool = False) -> ModelBundle:
    """A tiny random SD 1.x: CLIP-L-style text encoder (quick_gelu, pad 49407), epsilon prediction.
    ``inpainting=True``: a 9-channel UNet input, like ``sd-v1-5-inpainting``.

    >>> bundle = tiny_sd1()
    >>> bundle.arch, bundle.prediction_type, bundle.native_size
    ('sd1', 'epsilon', (64, 64))
    >>> tiny_sd1(inpainting=True).unet.config.in_channels
    9
    """
    from transformers import CLIPTextModel

    unet = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_HIDDEN,
                attention_head_dim=8)  # SD1's config: 8 heads (diffusers' historical misnomer)
    return _build(seed, "sd1", "epsilon", ("clip_l",), unet, 0.18215, lambda tok: [
        CLIPTextModel(_text_config(TEXT_HIDDEN, "quick_gelu", tok[0].pad_token_id))], inpainting)


def tiny_sd2(seed: int = 0, *, inpainting: bool = False) -> ModelBundle:
    """A tiny random SD 2.x (768-v style): OpenCLIP-style text encoder (gelu, pad "!" = 0), v-prediction,
    linear-projection transformers with per-block head counts. ``inpainting=True``: a 9-channel UNet input and
    epsilon prediction, like ``512-inpainting-ema``.

    >>> bundle = tiny_sd2()
    >>> bundle.arch, bundle.prediction_type
    ('sd2', 'v_prediction')
    """
    from transformers import CLIPTextModel

    unet = dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_HIDDEN,
                attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=not inpainting)
    return _build(seed, "sd2", "epsilon" if inpainting else "v_prediction", ("open_clip",), unet, 0.18215,
                  lambda tok: [CLIPTextModel(_text_config(TEXT_HIDDEN, "gelu", tok[0].pad_token_id))], inpainting)


def tiny_sdxl(seed: int = 0, *, inpainting: bool = False) -> ModelBundle:
    """A tiny random SDXL: CLIP-L-style ``text_encoder`` (hidden 32) + OpenCLIP-style
    ``text_encoder_2`` with projection (hidden 64, projection 32); UNet cross-attention dim 96 (their
    concatenation), ``text_time`` added conditioning (6 time ids x 8 + 32 pooled = 80), epsilon.
    ``inpainting=True``: a 9-channel UNet input, like ``sd_xl_inpaint`` / diffusers' SDXL inpainting 0.1.

    >>> bundle = tiny_sdxl()
    >>> bundle.arch, len(bundle.text_encoders)
    ('sdxl', 2)
    """
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                cross_attention_dim=TEXT_HIDDEN + TEXT_HIDDEN_2, attention_head_dim=(2, 4), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED,
                projection_class_embeddings_input_dim=SDXL_TEXT_PROJECTION + 6 * SDXL_TIME_EMBED)
    return _build(seed, "sdxl", "epsilon", ("clip_l", "open_clip"), unet, 0.13025, lambda tok: [
        CLIPTextModel(_text_config(TEXT_HIDDEN, "quick_gelu", tok[0].pad_token_id)),
        CLIPTextModelWithProjection(_text_config(TEXT_HIDDEN_2, "gelu", tok[1].pad_token_id,
                                                 projection_dim=SDXL_TEXT_PROJECTION))], inpainting)


def tiny_sdxl_refiner(seed: int = 0) -> ModelBundle:
    """A tiny random SDXL refiner: one OpenCLIP-bigG-style text encoder with projection (hidden 64, projection 32;
    the refiner uses its penultimate layer and pooled output alone), UNet cross-attention dim 64 and ``text_time``
    added conditioning of 5 time ids (original size, crop, aesthetic score) x 8 + 32 pooled = 72, the shape of
    the real refiner's 2560 (1280 pooled + 5 x 256) at tiny width; epsilon. Written as a single file
    (:func:`tiny_checkpoint` with ``arch="sdxl_refiner"``) it loads as a refiner.

    >>> bundle = tiny_sdxl_refiner()
    >>> bundle.arch, len(bundle.text_encoders), bundle.unet.config.projection_class_embeddings_input_dim
    ('sdxl_refiner', 1, 72)
    """
    from transformers import CLIPTextModelWithProjection

    unet = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_HIDDEN_2,
                attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=SDXL_TIME_EMBED,
                projection_class_embeddings_input_dim=SDXL_TEXT_PROJECTION + 5 * SDXL_TIME_EMBED)
    return _build(seed, "sdxl_refiner", "epsilon", ("open_clip",), unet, 0.13025, lambda tok: [
        CLIPTextModelWithProjection(_text_config(TEXT_HIDDEN_2, "gelu", tok[0].pad_token_id,
                                                 projection_dim=SDXL_TEXT_PROJECTION))])


def tiny_checkpoint(path, arch: str = "sd1", *, inpainting: bool = False, seed: int = 0) -> Path:
    """Write a tiny random model of ``arch`` ("sd1", "sd2", "sdxl", "sdxl_refiner") as an A1111 single-file
    checkpoint (LDM key names, safetensors; :func:`nbdiffuse.models.save_checkpoint`) for loader and job tests;
    returns the path.

    >>> import tempfile, pathlib
    >>> from nbdiffuse.models import load_checkpoint
    >>> path = tiny_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "inpaint.safetensors", inpainting=True)
    >>> load_checkpoint(path, hash=False).is_inpainting
    True
    """
    from nbdiffuse.models.save import save_checkpoint

    makers = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl, "sdxl_refiner": tiny_sdxl_refiner}
    if arch not in makers:
        raise ValueError(f"tiny_checkpoint: unknown arch {arch!r}; expected one of {', '.join(makers)}")
    if arch == "sdxl_refiner":
        if inpainting:
            raise ValueError("tiny_checkpoint: there is no inpainting SDXL refiner")
        return save_checkpoint(tiny_sdxl_refiner(seed), path)
    return save_checkpoint(makers[arch](seed, inpainting=inpainting), path)


def _scheduler_kwargs(bundle: ModelBundle) -> dict:
    """Scheduler config for the bundle: SD's standard betas, or explicit ``trained_betas`` if it differs."""
    kwargs = dict(SCHEDULE, prediction_type=bundle.prediction_type)
    ac = bundle.alphas_cumprod.detach().to("cpu", torch.float64)
    if len(ac) != 1000 or not torch.allclose(ac, scaled_linear_alphas_cumprod().double(), rtol=0, atol=1e-7):
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        kwargs["trained_betas"] = (1.0 - ac / prev).tolist()
        kwargs["num_train_timesteps"] = len(ac)
    return kwargs


def save_diffusers(bundle: ModelBundle, folder) -> Path:
    """Write ``bundle`` as a standard diffusers folder (safetensors) that ``from_pretrained`` can load.

    Layout: ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, for SDXL also
    ``text_encoder_2/`` and ``tokenizer_2/``, and ``scheduler/scheduler_config.json`` (the scheduler class
    the official repos use: PNDM for SD1, DDIM for SD2, Euler for SDXL) with SD's scaled_linear betas
    (0.00085 .. 0.012) and the bundle's ``prediction_type``. Returns the folder.
    """
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    folder = Path(folder)
    sched = _scheduler_kwargs(bundle)
    common = dict(steps_offset=1, timestep_spacing="leading")
    if bundle.arch == "sdxl":
        if len(bundle.text_encoders) != 2 or len(bundle.tokenizers) != 2:
            raise ValueError("an sdxl bundle needs two text encoders and two tokenizers")
        scheduler = EulerDiscreteScheduler(**sched, **common, interpolation_type="linear")
        pipe = StableDiffusionXLPipeline(
            vae=bundle.vae,
            text_encoder=bundle.text_encoders[0],
            text_encoder_2=bundle.text_encoders[1],
            tokenizer=bundle.tokenizers[0],
            tokenizer_2=bundle.tokenizers[1],
            unet=bundle.unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    elif bundle.arch in ("sd1", "sd2"):
        if bundle.arch == "sd1":
            scheduler = PNDMScheduler(**sched, **common, skip_prk_steps=True, set_alpha_to_one=False)
        else:
            scheduler = DDIMScheduler(**sched, **common, clip_sample=False, set_alpha_to_one=False)
        pipe = StableDiffusionPipeline(
            vae=bundle.vae,
            text_encoder=bundle.text_encoders[0],
            tokenizer=bundle.tokenizers[0],
            unet=bundle.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        raise ValueError(f"unknown arch {bundle.arch!r}; expected 'sd1', 'sd2' or 'sdxl'")
    pipe.save_pretrained(folder, safe_serialization=True)
    _add_slow_tokenizer_files(bundle, folder)
    return folder


def _add_slow_tokenizer_files(bundle: ModelBundle, folder: Path) -> None:
    """transformers 5 saves only ``tokenizer.json``; real SD folders (and transformers 4's Python
    ``CLIPTokenizer``) also have ``vocab.json``/``merges.txt``: add them if the vocabulary is stock CLIP's."""
    import shutil

    from nbdiffuse.models.tokenizer import is_clip_vocab, tokenizer_files

    for sub, tok in zip(("tokenizer", "tokenizer_2"), bundle.tokenizers):
        target = folder / sub
        if not target.is_dir() or not is_clip_vocab(tok):
            continue
        for src in tokenizer_files():
            if not (target / src.name).exists():
                shutil.copyfile(src, target / src.name)
