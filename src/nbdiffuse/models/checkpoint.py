"""Load A1111/ComfyUI single-file checkpoints (and external VAE files) offline, fast and safely.

:func:`load_checkpoint` reads a ``.safetensors`` file memory-mapped (safetensors ``safe_open``: every tensor is a
view of one private file mapping, no second copy) or a ``.ckpt``/``.pt`` file only through
``torch.load(weights_only=True, mmap=True)`` (nothing from a pickle is executed; anything but tensors, plain
containers and the numpy/pytorch-lightning objects of old training runs is refused). It infers the architecture
from the state dict's keys and shapes, builds the diffusers/transformers modules on the meta device (no random
initialisation) and assigns the file's tensors
(``load_state_dict(assign=True)``), converted only where dtype/device/layout require it.

Reading: :mod:`.state_dict`; architecture inference (family, configs, prediction type): :mod:`.architecture`;
tensor names: :mod:`.keymap`. This module plans (:func:`inspect_checkpoint`: every tensor the modules need is
found with the right shape before anything is built) and builds.

Errors: every problem with the file (empty, truncated, corrupt, wrong format, a pickle wanting code, unknown
architecture, missing or mis-shaped tensors) raises :class:`~nbdiffuse.models.errors.ModelLoadError` naming the
file, before any module is built.
"""

from __future__ import annotations

import _imp
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from nbdiffuse.models.architecture import (
    ARCH_NAMES,
    INPAINT_CHANNELS,
    LATENT_CHANNELS,
    SDXL_BASE_TRANSFORMER_BLOCKS,
    a1111_v_test,
    detect_family,
    diffusers_vae_config,
    infer_unet_config,
    infer_vae_config,
    metadata_hints,
    prediction_from_hints,
    te_config,
    what_is_it,
)
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
from nbdiffuse.models.precision import component_dtype
from nbdiffuse.models.state_dict import StateDict, read_state_dict


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


def _no_init_weights(cls):
    """The library's own "skip the weight initialisers" context for ``cls`` (diffusers' or transformers')."""
    if isinstance(cls, type) and cls.__module__.startswith("transformers."):
        try:
            from transformers.initialization import no_init_weights  # transformers >= 5
        except ImportError:
            from transformers.modeling_utils import no_init_weights
        return no_init_weights()
    from diffusers.models.modeling_utils import no_init_weights

    return no_init_weights()


def _meta_module(component: _Component):
    # Parameters on meta (accelerate), and no initialisers run on them: every weight comes from the file, and
    # the initialisers alone took half the build time. A bare torch.device("meta") would also put buffers made
    # with torch.arange (CLIP's position_ids) on meta, with no value in the file to restore them.
    from accelerate import init_empty_weights

    with init_empty_weights(), _no_init_weights(component.cls):
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
        config = diffusers_vae_config(shapes, path, hints, family)
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
    else:
        n_file = len({int(k.split(".")[2]) for k in raw if k.startswith("transformer.resblocks.")})
        n_layers = n_file - 1 if drop_last else n_file
        if n_layers < 1:
            raise ModelLoadError(sd.path, f"incomplete {name}: {n_file} transformer layers")
    try:
        config, projection = te_config(raw, fmt, kind, hints, n_layers, projection)
    except KeyError as e:
        raise ModelLoadError(sd.path, f"incomplete {name}: missing {prefix}{e.args[0]}") from None
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    module = _meta_module(_Component(name, cls, config, {}))
    sources = {}
    for k, canon in te_canonical_keys(module).items():
        if fmt == "hf":
            sources[k] = (prefix + (canon[len(rename):] if rename and canon.startswith(rename) else canon), None)
            continue
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
    t_read = time.perf_counter() - t0
    t = time.perf_counter()
    import_model_classes()
    timings = {"import": time.perf_counter() - t, "read": t_read}
    try:
        return _inspect(sd, timings)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - anything odd in a file is one clear error, not a traceback
        raise ModelLoadError(sd.path, f"unknown architecture or corrupt checkpoint ({type(e).__name__}: {e})") \
            from e


_importing: threading.Thread | None = None  # import_model_classes_in_background's thread


def import_model_classes_in_background() -> None:
    """Start :func:`import_model_classes` in a daemon thread, once per process, unless they are imported already:
    a Session does, so that a load a few seconds later finds them imported."""
    global _importing
    if _importing is None and "diffusers.models.unets.unet_2d_condition" not in sys.modules:
        _importing = threading.Thread(target=_import_quietly, name="nbdiffuse-imports", daemon=True)
        _importing.start()


def _import_quietly() -> None:
    # Holding the global import lock throughout makes another thread's import of a module not yet imported wait
    # until this one is done: two threads importing diffusers' circular modules at once could otherwise get a
    # half-initialised module or a deadlock error.
    _imp.acquire_lock()
    try:
        _import_model_classes()
    except Exception:  # noqa: BLE001 - the load imports them again and reports the error there
        pass
    finally:
        _imp.release_lock()


def import_model_classes() -> None:
    """Import the diffusers/transformers classes a checkpoint is built from (the load's ``import`` stage: several
    seconds the first time in a process, since diffusers imports torch._dynamo and transformers' model stack
    with them). Waits for a background import started by :func:`import_model_classes_in_background` rather than
    importing the same modules from two threads at once.

    >>> from nbdiffuse.models import import_model_classes
    >>> import_model_classes()   # later loads in this process report ``import: 0.0s``
    """
    if _importing is not None:
        _importing.join()
    _import_model_classes()


def _import_model_classes() -> None:
    import accelerate  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401


def _inspect(sd: StateDict, timings: dict) -> CheckpointPlan:
    from diffusers import UNet2DConditionModel

    t0 = time.perf_counter()
    family = detect_family(sd)
    hints = metadata_hints(sd.metadata)
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
    inpainting = unet_config["in_channels"] == LATENT_CHANNELS + INPAINT_CHANNELS
    if inpainting:
        label = label.removesuffix(" base") + " inpainting"
    dtypes: dict[str, int] = {}
    for v in t.values():
        name = str(v.dtype).replace("torch.", "")
        dtypes[name] = dtypes.get(name, 0) + v.numel()
    used = {src for c in (unet, vae, *tes) for src, _ in c.sources.values()}
    ignored = [k for k in t if k not in used]
    info = {"format": sd.format, "arch": arch, "variant": label, "file_dtypes": dtypes,
            "unet_transformer_blocks": layout["transformer_blocks"], "vae_layout": vae.info.get("layout"),
            "text_encoders": [c.info for c in tes], "ignored_tensors": len(ignored),
            "ignored_examples": ignored[:5], "metadata_config": bool(hints), "inpainting": inpainting}
    plan = CheckpointPlan(sd, arch, [unet, vae, *tes], kinds, hints, info,
                          {**timings, "build": time.perf_counter() - t0})
    return plan


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
                v = v.to(device=device, dtype=component_dtype(dtype, comp.name))
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
    pred = prediction_from_hints(plan.sd)
    if pred is None:
        if plan.arch == "sd2" and plan.info.get("inpainting"):
            # A1111 picks v2-inpainting-inference.yaml (no parameterization: eps) before its v test, which
            # feeds a 4-channel latent a 9-channel UNet could not take
            pred = ("epsilon", "SD2 inpainting (A1111's v2-inpainting-inference.yaml)")
        elif plan.arch == "sd2":
            t = time.perf_counter()
            score = a1111_v_test(unet, unet.config.cross_attention_dim)
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
    info.update(prediction_type=pred[0], prediction_source=pred[1],
                dtype=str(component_dtype(dtype, "unet")).replace("torch.", ""),
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


def _report(timings: dict, hash_pending: bool = False) -> str:
    stages = [f"{k}: {timings.get(k, 0.0):.1f}s" for k in ("import", "read", "build", "apply", "hash")]
    if hash_pending:
        stages[-1] = "hash: in the background"
    return f"Weights loaded in {timings['total']:.1f}s ({', '.join(stages)})"


def load_checkpoint(path, *, device="cpu", dtype: torch.dtype = torch.float32, hash: bool | str = True,
                    plan: CheckpointPlan | None = None) -> ModelBundle:
    """Load an A1111/ComfyUI single-file checkpoint as a :class:`ModelBundle` (see the module docs).

    ``hash``: compute A1111's ``Model hash`` (cached by path + size + mtime, see :mod:`.hashing`) and the legacy
    hash; ``False`` skips both (``bundle.hash`` is then ``None``); ``"background"`` takes a cached hash at once and
    computes a first-time one in a background thread (reading ``bundle.hash`` waits for it; a job's infotext reads
    it when the job ends). ``bundle.info`` holds what was found (``arch``, ``variant``, ``prediction_type`` and its
    ``prediction_source``, ``file_dtypes``, ``dtype``, ``hash``...), ``info["timings"]`` seconds per stage
    (``import`` of the model classes, ``read``, ``build``, ``apply``, ``hash``, ``total``) and ``info["report"]``
    A1111's one-line summary, e.g. ``Weights loaded in 2.1s (import: 0.0s, read: 0.3s, build: 0.1s, ...)``.
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
        t0 -= sum(plan.timings.get(k, 0.0) for k in ("import", "read", "build"))
    bundle = plan.build(device=device, dtype=dtype)
    timings = bundle.info["timings"]
    pending = False
    if hash:
        from nbdiffuse.models.bundle import set_pending_hash
        from nbdiffuse.models.hashing import cached_sha256, legacy_hash, sha256, sha256_in_background

        t = time.perf_counter()
        bundle.info["legacy_hash"] = legacy_hash(plan.sd.path)  # 64 KiB
        full = cached_sha256(plan.sd.path) if hash == "background" else sha256(plan.sd.path)
        if full is None:
            set_pending_hash(bundle, sha256_in_background(plan.sd.path))
            pending = True
        else:
            bundle.hash = full[:10]
            bundle.info.update(hash=full[:10], sha256=full)
        timings["hash"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    bundle.info["report"] = _report(timings, pending)
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
        raise ModelLoadError(sd.path, f"not a VAE file: {what_is_it(keys)}")
    hints = metadata_hints(sd.metadata).get("vae", {})
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


def swap_vae(bundle: ModelBundle, vae, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Put ``vae`` (an ``AutoencoderKL``, e.g. from :func:`load_vae`) into ``bundle`` and return the old one.

    The new VAE is moved to the bundle's device and to ``dtype`` (default: the old VAE's), and gets the bundle's
    latent ``scaling_factor`` (a VAE file does not say which model family it was made for); latent channels and
    downscale factor must match."""
    old = bundle.vae
    if int(vae.config.latent_channels) != int(old.config.latent_channels) or \
            len(vae.config.block_out_channels) != len(old.config.block_out_channels):
        raise ModelLoadError(getattr(vae, "nbdiffuse_info", {}).get("path", "vae"),
                             f"this VAE has {vae.config.latent_channels} latent channels and "
                             f"{len(vae.config.block_out_channels)} levels; the model needs "
                             f"{old.config.latent_channels} and {len(old.config.block_out_channels)}")
    p = next(old.parameters())
    vae.to(device=p.device, dtype=dtype or p.dtype)
    vae.register_to_config(scaling_factor=old.config.scaling_factor)
    bundle.vae = vae
    bundle.info["vae"] = getattr(vae, "nbdiffuse_info", {}).get("path", type(vae).__name__)
    return old
