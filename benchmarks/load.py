"""Checkpoint loading: nbdiffuse's load_checkpoint vs diffusers' from_single_file, on full-size random checkpoints.

    python benchmarks/load.py --arch sd1          # ~2.1 GB fp16 SD1.5 file
    python benchmarks/load.py --arch sdxl         # ~6.9 GB fp16 SDXL base file
    python benchmarks/load.py --arch sd1 --arch sdxl --repeats 2 --dir /big/tmp

Generates an A1111-layout fp16 ``.safetensors`` with random weights (``nbdiffuse.models.save_checkpoint`` of a
full-size fp16 model with random weights, in a subprocess that holds the model in memory while writing it; the
``nbdiffuse.config`` hints are then taken out of the header, so that the file is "foreign" like any A1111 file
and everything is inferred from its shapes; never committed, deleted afterwards unless ``--keep``) and a diffusers
config folder (configs + tokenizers, no weights) written from the same configs, then prints, in one run:

- load time: ours (``load_checkpoint(dtype=float16, hash=False)``) vs diffusers
  (``StableDiffusion[XL]Pipeline.from_single_file(path, config=<folder>, local_files_only=True,
  torch_dtype=float16)``), each in a fresh subprocess (imports excluded from the timing), page cache warm;
- first-time hash throughput in MB/s: ours is the ``hash`` stage of ``load_checkpoint(hash=True)`` (sha256 of the
  whole file, A1111's ``Model hash``) with an empty hash cache, in a fresh subprocess; the peer is Python's
  ``hashlib.file_digest(f, "sha256")`` on the same file;
- peak RSS over the file size, from ``getrusage(RUSAGE_SELF).ru_maxrss`` of each subprocess after loading and
  after touching every weight once (what the first generation does), absolute and above the post-import baseline.

The machine may be shared: the script prints the load average next to the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import struct
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

    from nbdiffuse.models import ModelBundle, tiny_sd1, tiny_sdxl

    # The tiny random models of the same architecture have the real tokenizers (CLIP-L; CLIP-L and OpenCLIP for
    # SDXL) and SD's training noise schedule: take those from them.
    tiny = tiny_sd1() if arch == "sd1" else tiny_sdxl()

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
    return ModelBundle(unet=unet, vae=vae, text_encoders=tes, tokenizers=list(tiny.tokenizers), arch=arch,
                       prediction_type="epsilon", alphas_cumprod=tiny.alphas_cumprod)


def randomize_fp16(bundle) -> None:
    """Give the meta-device ``bundle`` real float16 weights, random normal with std 0.02 (in place)."""
    gen = torch.Generator().manual_seed(0)
    for module in (bundle.unet, bundle.vae, *bundle.text_encoders):
        # torch's own .to: diffusers' override would only warn about "modules to keep in float32" (there are none)
        torch.nn.Module.to(module, torch.float16).to_empty(device="cpu")
        with torch.no_grad():
            for t in (*module.parameters(), *module.buffers()):
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.02)


def drop_metadata(path: Path, key: str) -> None:
    """Remove ``key`` from the ``__metadata__`` of the safetensors file ``path``, in place: the header keeps its
    length (padded with spaces, which the format allows), so no tensor data moves."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        del header["__metadata__"][key]
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        f.seek(8)
        f.write(raw + b" " * (n - len(raw)))


def generate(arch: str, folder: Path) -> tuple[Path, Path]:
    """Write the random fp16 checkpoint and the diffusers config folder; returns (file, config folder)."""
    from nbdiffuse.models import save_checkpoint

    bundle = full_bundle(arch)
    cfg = folder / f"diffusers_config_{arch}"
    _write_config_folder(bundle, cfg)
    randomize_fp16(bundle)
    path = save_checkpoint(bundle, folder / f"random_{arch}.safetensors")
    del bundle
    drop_metadata(path, "nbdiffuse.config")  # a "foreign" file: we infer everything from shapes, as for any A1111 file
    return path, cfg


def _add_slow_tokenizer_files(tokenizer, folder: Path) -> None:
    """transformers 5 saves only ``tokenizer.json``; real SD folders (and transformers 4's Python ``CLIPTokenizer``)
    also have ``vocab.json``/``merges.txt``: write them from the tokenizer's own BPE model."""
    if (folder / "merges.txt").exists():
        return
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _write_config_folder(bundle, cfg: Path) -> None:
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    cfg.mkdir(parents=True, exist_ok=True)
    bundle.unet.save_config(cfg / "unet")
    bundle.vae.save_config(cfg / "vae")
    subs = ["text_encoder", "text_encoder_2"][: len(bundle.text_encoders)]
    for sub, te, tok in zip(subs, bundle.text_encoders, bundle.tokenizers):
        te.config.architectures = [type(te).__name__]
        te.config.save_pretrained(cfg / sub)
        tok.save_pretrained(cfg / sub.replace("text_encoder", "tokenizer"))
        _add_slow_tokenizer_files(tok, cfg / sub.replace("text_encoder", "tokenizer"))
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

    from nbdiffuse.models import load_checkpoint

    base = _rss_now()
    t = time.perf_counter()
    if loader in ("ours", "hash"):
        b = load_checkpoint(path, dtype=torch.float16, hash=loader == "hash")
        modules = [b.unet, b.vae, *b.text_encoders]
        extra = {"report": b.info["report"], "variant": b.info["variant"], "hash_s": b.info["timings"].get("hash")}
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
    with tempfile.TemporaryDirectory(prefix="nbdiffuse-bench-cache-") as cache:
        env = dict(os.environ, NBDIFFUSE_CACHE=cache)  # an empty hash cache: a first-time hash, even with --reuse
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
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
    ap.add_argument("--child", choices=["generate", "ours", "hash", "diffusers"])
    ap.add_argument("--file")
    ap.add_argument("--config")
    args = ap.parse_args()
    if args.child == "generate":
        generate(args.arch[0], Path(args.file).parent)
        print(json.dumps({"loader": "generate"}))
        return
    if args.child:
        print(json.dumps(child(args.child, args.file, args.config, args.arch[0])))
        return
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
            # In a subprocess: this one must stay small, since a child started from it inherits its peak RSS
            # (ru_maxrss survives fork and exec), which would inflate the children's RSS figures.
            r = run_child("generate", path, cfg, arch, timeout=3600)
            if "error" in r:
                print(f"{arch}: could not generate the checkpoint: {r['error']}")
                continue
            os.sync()  # let the writeback finish before timing anything
        size = path.stat().st_size
        print(f"\n== {arch}: {path.name} {size / 1e9:.2f} GB (generated/found in {time.perf_counter() - t:.0f}s)")
        t = time.perf_counter()
        with open(path, "rb") as f:
            hashlib.file_digest(f, "sha256")
        plain_s = time.perf_counter() - t
        h = run_child("hash", path, cfg, arch)
        if "error" in h:
            print(f"first-time hash: ERROR {h['error']}")
        else:
            print(f"first-time hash: ours {h['hash_s']:.2f}s = {size / h['hash_s'] / 1e6:.0f} MB/s, plain hashlib "
                  f"{plain_s:.2f}s = {size / plain_s / 1e6:.0f} MB/s (page cache warm: just written)")
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
