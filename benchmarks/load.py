"""Checkpoint loading: nbdiffuse's load_checkpoint vs diffusers' from_single_file, on full-size random checkpoints.

    python benchmarks/load.py --arch sd1          # ~2.1 GB fp16 SD1.5 file
    python benchmarks/load.py --arch sdxl         # ~6.9 GB fp16 SDXL base file
    python benchmarks/load.py --arch sd1 --arch sdxl --repeats 2 --dir /big/tmp

Generates an A1111-layout fp16 ``.safetensors`` with random weights (written tensor by tensor, never committed,
deleted afterwards unless ``--keep``) and a diffusers config folder (configs + tokenizers, no weights) written from
the same configs, then prints, in one run:

- load time: ours (``load_checkpoint(dtype=float16, hash=False)``) vs diffusers
  (``StableDiffusion[XL]Pipeline.from_single_file(path, config=<folder>, local_files_only=True,
  torch_dtype=float16)``), each in a fresh subprocess (imports excluded from the timing), page cache warm;
- first-time hash throughput (sha256 of the whole file, no cache) in MB/s;
- peak RSS over the file size, from ``getrusage(RUSAGE_SELF).ru_maxrss`` of each subprocess after loading and
  after touching every weight once (what the first generation does), absolute and above the post-import baseline.

The machine may be shared: the script prints the load average next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------------------ full configs
def full_bundle(arch: str):
    """A full-size SD1.5 / SDXL base ModelBundle on the meta device (shapes only)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nbdiffuse.models.bundle import ModelBundle, scaled_linear_alphas_cumprod
    from nbdiffuse.models.tokenizer import clip_tokenizer

    def clip(hidden, inner, layers, heads, act, pad, proj):
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inner,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              hidden_act=act, projection_dim=proj, bos_token_id=49406, eos_token_id=49407,
                              pad_token_id=pad)

    vae_kw = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    with init_empty_weights():
        if arch == "sd1":
            unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
            vae = AutoencoderKL(**vae_kw, sample_size=512, scaling_factor=0.18215)
            tes = [CLIPTextModel(clip(768, 3072, 12, 12, "quick_gelu", 49407, 768))]
            toks = [clip_tokenizer("clip_l")]
        else:
            unet = UNet2DConditionModel(
                sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            vae = AutoencoderKL(**vae_kw, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
            tes = [CLIPTextModel(clip(768, 3072, 12, 12, "quick_gelu", 49407, 768)),
                   CLIPTextModelWithProjection(clip(1280, 5120, 32, 20, "gelu", 0, 1280))]
            toks = [clip_tokenizer("clip_l"), clip_tokenizer("open_clip")]
    return ModelBundle(unet=unet, vae=vae, text_encoders=tes, tokenizers=toks, arch=arch,
                       prediction_type="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod())


def generate(arch: str, folder: Path) -> tuple[Path, Path]:
    """Write the random fp16 checkpoint and the diffusers config folder; returns (file, config folder)."""
    from nbdiffuse.models.save import checkpoint_entries, checkpoint_metadata, write_safetensors

    bundle = full_bundle(arch)
    gen = torch.Generator().manual_seed(0)

    def rand(shape):
        return lambda: (torch.randn(shape, generator=gen) * 0.02).to(torch.float16)

    entries = [(name, shape, torch.float16, rand(shape)) for name, shape, _, _ in checkpoint_entries(bundle)]
    path = folder / f"random_{arch}.safetensors"
    meta = checkpoint_metadata(bundle)
    meta.pop("nbdiffuse.config")  # a "foreign" file: we infer everything from shapes, like for any A1111 file
    write_safetensors(path, entries, meta)
    cfg = folder / f"diffusers_config_{arch}"
    _write_config_folder(bundle, cfg)
    return path, cfg


def _write_config_folder(bundle, cfg: Path) -> None:
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    from nbdiffuse.testing import _add_slow_tokenizer_files

    cfg.mkdir(parents=True, exist_ok=True)
    bundle.unet.save_config(cfg / "unet")
    bundle.vae.save_config(cfg / "vae")
    subs = ["text_encoder", "text_encoder_2"][: len(bundle.text_encoders)]
    for sub, te, tok in zip(subs, bundle.text_encoders, bundle.tokenizers):
        te.config.architectures = [type(te).__name__]
        te.config.save_pretrained(cfg / sub)
        tok.save_pretrained(cfg / sub.replace("text_encoder", "tokenizer"))
    _add_slow_tokenizer_files(bundle, cfg)
    sched = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, prediction_type="epsilon")
    if bundle.arch == "sdxl":
        EulerDiscreteScheduler(**sched).save_config(cfg / "scheduler")
        index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
                 "force_zeros_for_empty_prompt": True,
                 "text_encoder": ["transformers", "CLIPTextModel"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    else:
        PNDMScheduler(**sched, skip_prk_steps=True).save_config(cfg / "scheduler")
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                 "requires_safety_checker": False, "safety_checker": [None, None],
                 "feature_extractor": [None, None], "image_encoder": [None, None],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "PNDMScheduler"]}
    (cfg / "model_index.json").write_text(json.dumps(index, indent=2))


# ------------------------------------------------------------------------------------------------ the children
def child(loader: str, path: str, config: str, arch: str) -> dict:
    # No HF_HUB_OFFLINE: instead every connection attempt is recorded and refused at once (an offline cloud
    # machine would hang on it), so the result says whether the loader tried the network at all.
    import socket

    attempts = []

    def refuse(name):
        def f(*args, **kwargs):
            attempts.append(f"{name}{args[1:2]}")
            raise OSError(f"benchmark: network refused ({name})")
        return f

    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect_ex")
    socket.getaddrinfo = refuse("getaddrinfo")
    import diffusers  # noqa: F401 - imports are not part of the load time
    import transformers  # noqa: F401

    from nbdiffuse.models.checkpoint import load_checkpoint

    base = _rss_now()
    t = time.perf_counter()
    if loader == "ours":
        b = load_checkpoint(path, dtype=torch.float16, hash=False)
        modules = [b.unet, b.vae, *b.text_encoders]
        extra = {"report": b.info["report"], "variant": b.info["variant"]}
    else:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
        kw = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        pipe = cls.from_single_file(path, config=config, local_files_only=True, torch_dtype=torch.float16, **kw)
        modules = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
        extra = {}
    load_s = time.perf_counter() - t
    peak_load = _rss_peak()
    with torch.no_grad():  # touch every weight once, as the first generation does
        total = 0.0
        for m in modules:
            for p in m.parameters():
                total += float(p.view(-1)[:: max(1, 4096 // p.element_size())].float().sum())
    return {"loader": loader, "load_s": load_s, "rss_base": base, "peak_after_load": peak_load,
            "peak_after_touch": _rss_peak(), "rss_after_touch": _rss_now(),
            "params": sum(p.numel() for m in modules for p in m.parameters()), "network_attempts": attempts[:5],
            **extra}


def run_child(loader, path, config, arch, timeout=900) -> dict:
    cmd = [sys.executable, __file__, "--child", loader, "--file", str(path), "--config", str(config),
           "--arch", arch]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"loader": loader, "error": f"timed out after {timeout}s"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (out.stderr or out.stdout).strip().splitlines()[-6:]
    return {"loader": loader, "error": " | ".join(tail)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=["sd1", "sdxl"])
    ap.add_argument("--dir", default=None, help="where to write the random checkpoints (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--reuse", action="store_true", help="reuse files a --keep run left in --dir")
    ap.add_argument("--child", choices=["ours", "diffusers"])
    ap.add_argument("--file")
    ap.add_argument("--config")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.file, args.config, args.arch[0])))
        return
    from nbdiffuse.models.hashing import _sha256_file

    archs = args.arch or ["sd1"]
    work = Path(args.dir or tempfile.mkdtemp(prefix="nbdiffuse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}, torch {torch.__version__}")
    for arch in archs:
        need = {"sd1": 2.3e9, "sdxl": 7.2e9}[arch]
        free = shutil.disk_usage(work).free
        if free < need * 1.1 and not args.reuse:
            print(f"{arch}: skipped, {free / 1e9:.1f} GB free in {work}, need {need / 1e9:.1f}")
            continue
        t = time.perf_counter()
        path, cfg = work / f"random_{arch}.safetensors", work / f"diffusers_config_{arch}"
        if not (args.reuse and path.is_file() and cfg.is_dir()):
            path, cfg = generate(arch, work)
            os.sync()  # let the writeback finish before timing anything
        size = path.stat().st_size
        print(f"\n== {arch}: {path.name} {size / 1e9:.2f} GB (generated/found in {time.perf_counter() - t:.0f}s)")
        t = time.perf_counter()
        _sha256_file(path)
        hash_s = time.perf_counter() - t
        print(f"first-time hash: {hash_s:.2f}s = {size / hash_s / 1e6:.0f} MB/s (page cache warm: just written)")
        results = {"ours": [], "diffusers": []}
        for _ in range(args.repeats):
            for loader in ("ours", "diffusers"):
                r = run_child(loader, path, cfg, arch)
                results[loader].append(r)
                if "error" in r:
                    print(f"  {loader}: ERROR {r['error']}")
                else:
                    print(f"  {loader}: load {r['load_s']:.2f}s; peak RSS {r['peak_after_load'] / 1e9:.2f} GB after "
                          f"load, {r['peak_after_touch'] / 1e9:.2f} GB after touching all weights "
                          f"(base after imports {r['rss_base'] / 1e9:.2f} GB)  load avg {os.getloadavg()[0]:.1f}"
                          f"  network attempts: {r['network_attempts'] or 'none'}"
                          + (f"  [{r['report']}]" if "report" in r else ""))
        best = {k: min((r for r in v if "error" not in r), key=lambda r: r["load_s"], default=None)
                for k, v in results.items()}
        o, d = best["ours"], best["diffusers"]
        print(f"summary {arch}: file {size / 1e9:.2f} GB")
        if o:
            print(f"  ours: {o['load_s']:.2f}s; peak RSS / file = {o['peak_after_touch'] / size:.2f} absolute, "
                  f"{(o['peak_after_touch'] - o['rss_base']) / size:.2f} above the import baseline")
        if d:
            print(f"  diffusers: {d['load_s']:.2f}s; peak RSS / file = {d['peak_after_touch'] / size:.2f} absolute, "
                  f"{(d['peak_after_touch'] - d['rss_base']) / size:.2f} above the import baseline")
        if o and d:
            print(f"  ours / diffusers load time = {o['load_s'] / d['load_s']:.2f} (target <= 0.5)")
        if not args.keep:
            path.unlink()
            shutil.rmtree(cfg)
    if not args.keep and not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
