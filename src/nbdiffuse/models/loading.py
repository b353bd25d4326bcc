"""Load a local diffusers-format Stable Diffusion folder into a :class:`ModelBundle`, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from nbdiffuse.models.architecture import unet_channels_problem
from nbdiffuse.models.bundle import ModelBundle, scaled_linear_alphas_cumprod
from nbdiffuse.models.precision import component_dtype

# SD's training schedule: what a folder without (parts of) scheduler/scheduler_config.json gets.
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "num_train_timesteps": 1000, "prediction_type": "epsilon"}
_WEIGHT_NAMES = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}
_VARIANTS = ("fp16", "bf16", "fp32")


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e


def _component(root: Path, sub: str, what: str, library: str) -> tuple[Path, dict, str | None]:
    """Check ``root/sub`` is a loadable component folder; returns (folder, config, variant or None)."""
    folder = root / sub
    if not folder.is_dir():
        raise FileNotFoundError(f"{root}: missing {sub}/ ({what}); not a complete diffusers folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: missing config.json ({what} configuration)")
    names = _WEIGHT_NAMES[library]
    for name in names:
        if (folder / name).is_file() or (folder / f"{name}.index.json").is_file():
            return folder, _read_json(config_file), None
    for variant in _VARIANTS:
        for name in names:
            stem, ext = name.rsplit(".", 1)
            file = folder / f"{stem}.{variant}.{ext}"
            if file.is_file() or file.with_name(file.name + ".index.json").is_file():
                return folder, _read_json(config_file), variant
    raise FileNotFoundError(f"{folder}: missing {what} weights (expected {' or '.join(names)})")


def alphas_cumprod_from_scheduler_config(config: dict) -> torch.Tensor:
    """float32 ``alphas_cumprod`` for a diffusers scheduler config (``scaled_linear``, ``linear`` or
    ``trained_betas``); betas are computed in float64 like SD's original code, then cast."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler config: rescale_betas_zero_snr=True (zero terminal SNR) is not supported")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
    start = float(config.get("beta_start", SD_SCHEDULE["beta_start"]))
    end = float(config.get("beta_end", SD_SCHEDULE["beta_end"]))
    steps = int(config.get("num_train_timesteps", SD_SCHEDULE["num_train_timesteps"]))
    schedule = config.get("beta_schedule", SD_SCHEDULE["beta_schedule"])
    if schedule == "scaled_linear":
        return scaled_linear_alphas_cumprod(start, end, steps)
    if schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
    raise ValueError(f"scheduler config: beta_schedule {schedule!r} is not supported "
                     "(expected 'scaled_linear', 'linear' or trained_betas)")


def _dtype_kwarg() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def _load_tokenizer(root: Path, sub: str, kind: str, info_list: list):
    """The folder's tokenizer, or our shipped CLIP tokenizer of ``kind`` when the folder has none or has
    exactly the stock CLIP vocabulary (the shipped one tokenises "!" like open_clip/A1111, see
    :func:`nbdiffuse.models.tokenizer.clip_tokenizer`)."""
    from nbdiffuse.models.tokenizer import EOS_ID, MODEL_MAX_LENGTH, clip_tokenizer, is_clip_vocab

    folder = root / sub
    if not folder.is_dir():
        info_list.append(f"shipped:{kind} (no {sub}/ folder)")
        return clip_tokenizer(kind)
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable tokenizer folder is not worth failing the load for
        info_list.append(f"shipped:{kind} ({sub}/ unreadable: {type(e).__name__})")
        return clip_tokenizer(kind)
    pad_kind = {EOS_ID: "clip_l", 0: "open_clip"}.get(tok.pad_token_id)
    if pad_kind and tok.model_max_length == MODEL_MAX_LENGTH and is_clip_vocab(tok):
        info_list.append(f"shipped:{pad_kind} ({sub}/ has the stock CLIP vocabulary)")
        return clip_tokenizer(pad_kind)
    info_list.append(f"folder:{sub}")
    return tok


def _folder_name(root: Path) -> str:
    """A folder's model name: its own name, or ``org/name`` for a Hugging Face cache snapshot
    (``models--org--name/snapshots/<commit>``), whose own name is a commit hash."""
    root = root.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent.name[len("models--"):].replace("--", "/")
    return root.name


def load_diffusers_folder(path, *, device="cpu", dtype=torch.float32) -> ModelBundle:
    """Load a local diffusers Stable Diffusion folder (SD1, SD2 or SDXL) with ``local_files_only``.

    Required: ``unet/``, ``vae/``, ``text_encoder/`` (and ``text_encoder_2/`` for SDXL), each with a
    ``config.json`` and weights (safetensors or .bin, optionally an fp16/bf16 variant). Tokenizer folders
    and ``scheduler/scheduler_config.json`` are optional: a missing tokenizer falls back to the shipped CLIP
    tokenizer; a missing schedule to SD's (scaled_linear 0.00085..0.012, epsilon).

    ``arch``: ``"sdxl"`` if there is a ``text_encoder_2/``; ``"sd2"`` if the text encoder uses ``gelu``
    (OpenCLIP) or the scheduler says ``v_prediction``; otherwise ``"sd1"``. A UNet with 9 input channels is an
    inpainting model (``runwayml/stable-diffusion-inpainting``, ``stabilityai/stable-diffusion-2-inpainting``,
    diffusers' SDXL inpainting 0.1; ``bundle.is_inpainting``); other counts than 4 and 9 are refused (8:
    instruct-pix2pix). ``info`` records the
    components' classes, tokenizer sources, scheduler settings and per-stage times (``info["timings"]``,
    seconds: ``configs``, ``unet``, ``vae``, ``text_encoders``, ``tokenizers``, ``to_device``, ``total``).

    Raises ``FileNotFoundError`` (a missing folder, component, config or weights file, naming it) or
    ``ValueError`` (a file instead of a folder, an unsupported layout or schedule). ``dtype``: one for every
    component, or a :class:`~nbdiffuse.models.precision.Policy` (one per component).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"diffusers folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is a file, not a diffusers folder "
                         "(single-file checkpoints need another loader)")

    # --- configs: decide what this is before loading any weights
    t = time.perf_counter()
    model_index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else None
    unet_dir, unet_cfg, unet_variant = _component(root, "unet", "the UNet", "diffusers")
    vae_dir, vae_cfg, vae_variant = _component(root, "vae", "the VAE", "diffusers")
    listed_te2 = bool(model_index and (model_index.get("text_encoder_2") or [None])[0])
    is_xl = (root / "text_encoder_2").is_dir() or listed_te2
    if is_xl and not (root / "text_encoder").is_dir():
        raise ValueError(f"{root}: has text_encoder_2/ but no text_encoder/ (an SDXL refiner?); "
                         "only base SD1/SD2/SDXL folders are supported")
    te_specs = [("text_encoder", "the text encoder", "tokenizer")]
    if is_xl:
        te_specs.append(("text_encoder_2", "the second text encoder", "tokenizer_2"))
    te_found = [_component(root, sub, what, "transformers") for sub, what, _ in te_specs]
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched_cfg = _read_json(sched_file) if sched_file.is_file() else {}
    prediction_type = sched_cfg.get("prediction_type", SD_SCHEDULE["prediction_type"])
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"{sched_file}: prediction_type {prediction_type!r} is not supported "
                         "(expected 'epsilon' or 'v_prediction')")
    alphas_cumprod = alphas_cumprod_from_scheduler_config(sched_cfg)
    if is_xl:
        arch = "sdxl"
    elif te_found[0][1].get("hidden_act") == "gelu" or prediction_type == "v_prediction":
        arch = "sd2"
    else:
        arch = "sd1"
    problem = unet_channels_problem(int(unet_cfg.get("in_channels", 4)), int(unet_cfg.get("out_channels", 4)))
    if problem:
        raise ValueError(f"{unet_dir}: {problem}")
    if is_xl and unet_cfg.get("addition_embed_type") != "text_time":
        raise ValueError(f"{unet_dir}: an SDXL folder's UNet should have addition_embed_type 'text_time', "
                         f"found {unet_cfg.get('addition_embed_type')!r}")
    timings["configs"] = time.perf_counter() - t

    # --- weights
    t = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir), local_files_only=True,
                                                torch_dtype=component_dtype(dtype, "unet"),
                                                variant=unet_variant)
    timings["unet"] = time.perf_counter() - t
    t = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True,
                                        torch_dtype=component_dtype(dtype, "vae"),
                                        variant=vae_variant)
    timings["vae"] = time.perf_counter() - t
    t = time.perf_counter()
    text_encoders = []
    dtype_kw = _dtype_kwarg()
    for (sub, _, _), (te_dir, te_cfg, te_variant) in zip(te_specs, te_found):
        archs = te_cfg.get("architectures") or []
        with_projection = "CLIPTextModelWithProjection" in archs or (sub == "text_encoder_2" and not archs)
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        text_encoders.append(cls.from_pretrained(str(te_dir), local_files_only=True, variant=te_variant,
                                                 **{dtype_kw: component_dtype(dtype, sub)}))
    timings["text_encoders"] = time.perf_counter() - t

    t = time.perf_counter()
    tokenizer_sources: list[str] = []
    kinds = {"sd1": ["clip_l"], "sd2": ["open_clip"], "sdxl": ["clip_l", "open_clip"]}[arch]
    tokenizers = [_load_tokenizer(root, tok_sub, kind, tokenizer_sources)
                  for (_, _, tok_sub), kind in zip(te_specs, kinds)]
    timings["tokenizers"] = time.perf_counter() - t

    t = time.perf_counter()
    for module in (unet, vae, *text_encoders):
        module.to(device)  # dtype was set at load time; diffusers warns about .to(dtype) casts
        module.eval()
        module.requires_grad_(False)
    timings["to_device"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    info = {
        "format": "diffusers",
        "model_index": model_index.get("_class_name") if model_index else None,
        "components": {"unet": type(unet).__name__, "vae": type(vae).__name__,
                       **{sub: type(te).__name__ for (sub, _, _), te in zip(te_specs, text_encoders)}},
        "variants": {k: v for k, v in (("unet", unet_variant), ("vae", vae_variant),
                                       *((s, f[2]) for (s, _, _), f in zip(te_specs, te_found))) if v},
        "tokenizers": tokenizer_sources,
        "inpainting": unet_cfg.get("in_channels") == 9,
        "scheduler": {"file": str(sched_file) if sched_cfg else None,
                      "class": sched_cfg.get("_class_name"),
                      "beta_schedule": "trained_betas" if sched_cfg.get("trained_betas") is not None
                      else sched_cfg.get("beta_schedule", SD_SCHEDULE["beta_schedule"]),
                      "prediction_type": prediction_type},
        "timings": timings,
    }
    return ModelBundle(unet=unet, vae=vae, text_encoders=text_encoders, tokenizers=tokenizers, arch=arch,
                       prediction_type=prediction_type, alphas_cumprod=alphas_cumprod,
                       name=_folder_name(root), path=str(root), hash=None, info=info)
