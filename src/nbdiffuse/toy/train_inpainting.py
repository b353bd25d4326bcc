"""Fine-tune the toy model into a toy *inpainting* model (a 9-channel UNet, like ``sd-v1-5-inpainting``) on a CPU:
``python -m nbdiffuse.toy.train_inpainting [--out DIR] [--minutes N] [--threads 1]``.

As RunwayML made SD 1.5's inpainting model from SD 1.2: the toy UNet's weights, with ``conv_in`` widened from 4 to
9 input channels (the 5 new ones, A1111's ``c_concat``: the mask and the masked image's latents, start at zero,
so the model starts as the text-to-image toy), trained on the epsilon loss with a mask per image. The VAE and the
text encoder are the toy model's, frozen.

Stages (seeded):

1. render ``--n-images`` scenes of the toy world with their captions;
2. encode them with the toy VAE (posterior mean and std), and for ``--masks`` masks per image the masked image
   ``image * (1 - mask)`` (in [-1, 1]: a masked pixel is 0, mid grey, exactly what A1111 feeds the model); masks:
   a quarter the whole picture (the model stays a text-to-image model, as LDM's inpainting training keeps 25 %),
   a third an object's box grown by a random margin (the caption then says what belongs in the hole), the rest a
   random rectangle or ellipse;
3. train the UNet (Min-SNR-5, the caption dropped 10 % of the time with the image conditioning kept, as A1111
   gives the negative rows the same conditioning), EMA of the weights;
4. save ``toy-inpainting.safetensors`` (an A1111-layout single file, float16) and ``training-inpainting.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .train import CAPTIONS_PER_IMAGE, MIN_SNR_GAMMA, P_UNCOND, UNET_CONFIG, _fit, make_dataset, to_pixels, tokenize

CHECKPOINT_NAME = "toy-inpainting.safetensors"
DEFAULT_OUT = Path(__file__).resolve().parent / "weights"
P_FULL = 0.25
P_OBJECT = 0.35


def random_mask(rng: np.random.Generator, labels: dict) -> np.ndarray:
    """One 64x64 float32 training mask (1 = inpaint) for the scene ``labels``."""
    size = 64
    u = rng.random()
    if u < P_FULL:
        return np.ones((size, size), np.float32)
    mask = np.zeros((size, size), np.float32)
    if u < P_FULL + P_OBJECT:
        obj = labels["objects"][int(rng.integers(len(labels["objects"])))]
        half = obj["side"] / 2 + rng.integers(2, 10)
        x0, x1 = int(max(0, obj["cx"] - half)), int(min(size, obj["cx"] + half))
        y0, y1 = int(max(0, obj["cy"] - half)), int(min(size, obj["cy"] + half))
        mask[y0:y1, x0:x1] = 1
        return mask
    w, h = rng.integers(16, 49, size=2)
    x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    if rng.random() < 0.5:
        mask[y0:y0 + h, x0:x0 + w] = 1
        return mask
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1
    mask[inside] = 1
    return mask


@torch.no_grad()
def encode_conditioning(vae, images_u8: np.ndarray, masks: np.ndarray, scaling: float, batch: int = 256):
    """Per (image, mask): the latent mask (8x8, nearest, as A1111) and the masked image's scaled latents."""
    conds = []
    for i in range(0, len(masks), batch):
        m = torch.from_numpy(masks[i:i + batch])[:, None]
        x = to_pixels(images_u8[i:i + batch]) * (1 - m)
        lat = vae.encode(x).latent_dist.mean * scaling
        conds.append(torch.cat([F.interpolate(m, size=lat.shape[-2:]), lat], 1))
    return torch.cat(conds)


def widen_unet(toy_unet):
    """A 9-input-channel copy of ``toy_unet``: its weights, the new ``conv_in`` channels zero."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 9})
    state = toy_unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], 5, *w.shape[2:], dtype=w.dtype)], 1)
    unet.load_state_dict(state)
    return unet


def train(unet, text_encoder, lat_mean, lat_std, conds, tokens, empty_ids, steps, batch=64, lr=2e-4, seed=2,
          seconds=None, ema_decay=0.998, log=None):
    """``conds``: ``[n * masks, 5, 8, 8]``, image ``i``'s masks at ``i, i + n, ...``."""
    from nbdiffuse.models.bundle import scaled_linear_alphas_cumprod

    gen = torch.Generator().manual_seed(seed)
    ac = scaled_linear_alphas_cumprod()
    snr = ac / (1 - ac)
    weights = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    n = len(lat_mean)

    def batch_loss():
        pick = torch.randint(0, len(conds), (batch,), generator=gen)
        idx = pick % n
        which = torch.randint(0, tokens.shape[1], (batch,), generator=gen)
        ids = tokens[idx, which].clone()
        ids[torch.rand(batch, generator=gen) < P_UNCOND] = empty_ids
        lat = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)
        t = torch.randint(0, len(ac), (batch,), generator=gen)
        noise = torch.randn(lat.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
        with torch.no_grad():
            context = text_encoder(ids).last_hidden_state
        pred = unet(torch.cat([noisy, conds[pick]], 1), t, encoder_hidden_states=context).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        return (per * weights[t]).mean()

    def after_step(done, total):
        decay = min(ema_decay, done / (9 + done))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)

    unet.train()
    info = _fit("unet-inpainting", params, steps, lr, 100, seconds, batch_loss, log=log, clip=1.0,
                after_step=after_step)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    return info


def save(out: Path, toy, unet, info: dict) -> Path:
    from nbdiffuse.models.bundle import ModelBundle
    from nbdiffuse.models.save import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    bundle = ModelBundle(unet=unet, vae=toy.vae, text_encoders=toy.text_encoders, tokenizers=toy.tokenizers,
                         arch="sd1", prediction_type="epsilon", alphas_cumprod=toy.alphas_cumprod,
                         name="toy-inpainting")
    path = save_checkpoint(bundle, out / CHECKPOINT_NAME, dtype=torch.float16)
    path.chmod(0o644)
    preview = Path(__file__).resolve().parent / "weights" / "preview.json"  # the same VAE: the same preview
    if not (out / "preview.json").exists():
        shutil.copyfile(preview, out / "preview.json")
    (out / "training-inpainting.json").write_text(json.dumps(info, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nbdiffuse.toy.train_inpainting", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's)")
    p.add_argument("--minutes", type=float, default=28.0, help="cap on the total wall time (default 28)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=8000)
    p.add_argument("--masks", type=int, default=3, help="masks per image")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-4)
    args = p.parse_args(argv)

    from nbdiffuse.models.tokenizer import clip_tokenizer
    from nbdiffuse.toy import load_toy

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    timings, log = {}, []
    toy = load_toy(hash=False)
    vae, text_encoder = toy.vae, toy.text_encoders[0]
    scaling = float(vae.config.scaling_factor)

    images, captions, labels = make_dataset(args.n_images, seed=args.seed + 200)
    tokenizer = clip_tokenizer("clip_l")
    tokens = tokenize(tokenizer, [c for caps in captions for c in caps]).view(len(captions), CAPTIONS_PER_IMAGE, 77)
    empty_ids = tokenize(tokenizer, [""])[0]
    timings["render_s"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed + 201)
    masks = np.stack([random_mask(rng, labels[i % len(labels)]) for i in range(len(labels) * args.masks)])
    with torch.no_grad():
        posts = [vae.encode(to_pixels(images[i:i + 256])).latent_dist for i in range(0, len(images), 256)]
    lat_mean = torch.cat([q.mean for q in posts]) * scaling
    lat_std = torch.cat([q.std for q in posts]) * scaling
    conds = encode_conditioning(vae, np.concatenate([images] * args.masks), masks, scaling)
    timings["encode_s"] = time.perf_counter() - t0
    print(f"encoded {len(images)} images, {len(conds)} masked images in {timings['encode_s']:.0f}s", flush=True)

    unet = widen_unet(toy.unet)
    t0 = time.perf_counter()
    unet_info = train(unet, text_encoder, lat_mean, lat_std, conds, tokens, empty_ids, args.steps, lr=args.lr,
                      seed=args.seed + 2, seconds=deadline - time.perf_counter() - 60, log=log)
    timings["unet_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    info = {"args": {k: str(v) for k, v in vars(args).items()}, "unet": unet_info,
            "timings": {k: round(v, 1) for k, v in timings.items()}, "torch": torch.__version__, "log": log}
    path = save(args.out, toy, unet, info)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB) in {timings['total_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
