"""GPU benchmark (issue 17): our txt2img against diffusers' pipeline on the same random-weight models, same run.

Models are built from config with random weights at real size (nothing downloaded): an SD1.5-shaped model at
512x512 and an SDXL-shaped one at 1024x1024 (real UNet, VAE and text encoders; the tokenizers and noise schedule of
``nbdiffuse.models.tiny_sd1`` / ``tiny_sdxl``). For each model and batch size (1 and 4), 20 steps of Euler on the
Karras schedule, CFG 7, it reports:

* **ours vs diffusers**: end-to-end it/s (steps / wall time of the whole call: text encoders, every step, VAE
  decode; fal's and alexeigor's unit), ours through ``Session.txt2img`` and diffusers' ``StableDiffusionPipeline``
  / ``StableDiffusionXLPipeline`` with ``EulerDiscreteScheduler(use_karras_sigmas=True)``, both with SDPA attention,
  the median of ``--runs`` interleaved runs after a warm-up; and the ratio (target >= 1.0);
* **compile**: ours again after ``session.compile()`` (first call compiles, outside the timing);
* **memory modes**: peak allocated memory of one job per ``Session(memory=...)`` mode (CUDA:
  ``torch.cuda.max_memory_allocated``; target lowvram SD1.5 <= 1.0 GB), when the Session has memory modes;
* **NaN check**: ``torch.isfinite(x).all()`` over a final latent and one decoded image, as a share of one step.

``--smoke`` runs the whole thing on tiny models and tiny sizes (the CPU, seconds): the test suite runs it so that
the script works the first time a GPU is there. Numbers from ``--smoke`` mean nothing.

    python benchmarks/gpu.py                 # on a GPU: SD1.5 and SDXL, batch 1 and 4 (minutes)
    python benchmarks/gpu.py --models sd15   # SD1.5 only
    python benchmarks/gpu.py --smoke         # tiny, CPU, end to end
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
NEGATIVE = "blurry, low quality"
SEED = 42


def _real_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         sample_size=512, scaling_factor=0.18215)


def build(kind: str, smoke: bool):
    """``(bundle, size)``: a random-weight model of ``kind`` ("sd15" or "sdxl") at real size (tiny with smoke)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nbdiffuse.models import ModelBundle, tiny_sd1, tiny_sdxl

    tiny = tiny_sd1() if kind == "sd15" else tiny_sdxl()
    if smoke:
        return tiny, 64
    tokenizers = tiny.tokenizers
    clip_l = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                  bos_token_id=49406, eos_token_id=49407, pad_token_id=tokenizers[0].pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "sd15":
            unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280),
                                        layers_per_block=2, cross_attention_dim=768, attention_head_dim=8)
            encoders = [CLIPTextModel(CLIPTextConfig(**clip_l))]
            size, scale = 512, 0.18215
        else:
            unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            big_g = dict(clip_l, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                         num_attention_heads=20, hidden_act="gelu", projection_dim=1280,
                         pad_token_id=tokenizers[1].pad_token_id)
            encoders = [CLIPTextModel(CLIPTextConfig(**clip_l)),
                        CLIPTextModelWithProjection(CLIPTextConfig(**big_g))]
            size, scale = 1024, 0.13025
        vae = _real_vae()
        vae.register_to_config(scaling_factor=scale)
    for module in (unet, vae, *encoders):
        module.eval().requires_grad_(False)
    bundle = ModelBundle(unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers, arch=tiny.arch,
                         prediction_type="epsilon", alphas_cumprod=tiny.alphas_cumprod, name=f"bench-{kind}")
    return bundle, size


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB allocated"
    return f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB (CPU)"


def pipeline(bundle, scheduler):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if bundle.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                         text_encoder_2=bundle.text_encoders[1], tokenizer=bundle.tokenizers[0],
                                         tokenizer_2=bundle.tokenizers[1], unet=bundle.unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                       tokenizer=bundle.tokenizers[0], unet=bundle.unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_model(kind: str, args, device, dtype) -> list[str]:
    from diffusers import EulerDiscreteScheduler

    from nbdiffuse import Session

    bundle, size = build(kind, args.smoke)
    steps = args.steps
    lines = [f"\n## {kind}: {size}x{size}, {steps} steps, Euler + Karras, CFG 7, {dtype}, "
             f"UNet {sum(p.numel() for p in bundle.unet.parameters()) / 1e6:.0f} M parameters"]
    session = Session(device=device, dtype=dtype, outputs_dir=None, progress=False)
    session.load(bundle)
    bundle = session.model
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="linspace",
                                       use_karras_sigmas=True)
    pipe = pipeline(bundle, scheduler)

    def ours(batch):
        _sync(device)
        t = time.perf_counter()
        session.txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, sampler_name="Euler",
                        scheduler="Karras", cfg_scale=7, seed=SEED, width=size, height=size, batch_size=batch)
        _sync(device)
        return time.perf_counter() - t

    def theirs(batch):
        # diffusers' own setting: the VAE in the UNet's dtype (its SDXL pipeline upcasts to float32 by itself);
        # ours may run it in bfloat16, which diffusers' decode does not cast its latents to
        ours_vae = bundle.vae.dtype
        bundle.vae.to(bundle.unet.dtype)
        try:
            _sync(device)
            t = time.perf_counter()
            pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0, height=size,
                 width=size, num_images_per_prompt=batch, output_type="pil",
                 generator=torch.Generator().manual_seed(SEED))
            _sync(device)
            return time.perf_counter() - t
        finally:
            bundle.vae.to(ours_vae)

    lines.append("| batch | ours it/s | diffusers it/s | ours / diffusers | ours compiled it/s |")
    lines.append("|---|---|---|---|---|")
    step_s = None
    for batch in args.batches:
        ours(batch), theirs(batch)  # warm-up
        t_ours, t_theirs = [], []
        for _ in range(args.runs):
            t_ours.append(ours(batch))
            t_theirs.append(theirs(batch))
        mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
        step_s = step_s or mo / steps
        compiled = "-"
        if args.compile:
            try:
                session.compile(backend=args.compile_backend)
                ours(batch)  # compiles this shape
                compiled = f"{steps / statistics.median(ours(batch) for _ in range(args.runs)):.2f}"
            except RuntimeError as e:
                compiled = f"not available: {e}"
            finally:
                session.compile(False)
        lines.append(f"| {batch} | {steps / mo:.2f} | {steps / mt:.2f} | {mt / mo:.3f} | {compiled} |")

    if "memory" in inspect.signature(Session).parameters:
        lines.append("\n| memory mode | peak, one job of batch 1 |\n|---|---|")
        for mode in ("full", "medvram", "lowvram"):
            del session
            torch.cuda.empty_cache() if device.type == "cuda" else None
            session = Session(device=device, dtype=dtype, outputs_dir=None, progress=False, memory=mode)
            session.load(bundle)
            _peak_reset(device)
            ours(1)
            lines.append(f"| {mode} | {_peak_gb(device)} |")
    else:
        lines.append("\nmemory modes: not measured (this Session has no memory= setting)")

    latent = torch.randn(1, 4, size // 8, size // 8, device=device)
    image = torch.randn(1, 3, size, size, device=device)
    _sync(device)
    t = time.perf_counter()
    for _ in range(20):
        bool(torch.isfinite(latent).all()) and bool(torch.isfinite(image).all())
    check_s = (time.perf_counter() - t) / 20
    lines.append(f"\nNaN check (every element of a latent and a decoded image): {check_s * 1e3:.3f} ms = "
                 f"{100 * check_s / step_s:.3f}% of one step ({step_s * 1e3:.1f} ms, batch {args.batches[0]})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models, 64x64, 2 steps, CPU: checks the script runs")
    ap.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-backend", default=None, help="default inductor (eager with --smoke)")
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.smoke else 20)
    args.runs = args.runs or (1 if args.smoke else 3)
    args.batches = args.batches or ([1, 2] if args.smoke else [1, 4])
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    if args.smoke:
        torch.set_num_threads(1)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no CUDA device)"
    import diffusers

    print(f"# GPU benchmark{' (smoke: numbers mean nothing)' if args.smoke else ''}: {card}, torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}, diffusers {diffusers.__version__}")
    for kind in args.models:
        print("\n".join(bench_model(kind, args, device, dtype)), flush=True)


if __name__ == "__main__":
    main()
