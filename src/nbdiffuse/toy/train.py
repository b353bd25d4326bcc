"""Train the toy model from scratch on a CPU: ``python -m nbdiffuse.toy.train [--out DIR] [--minutes N]``.

Stages (all seeded; progress shown with tqdm):

1. render ``--n-images`` scenes of the toy world (:mod:`nbdiffuse.toy.world`), three captions each;
2. train the ``AutoencoderKL`` (4 latent channels, 8x downsampling) on them: L1 + MSE + a tiny KL term,
   bfloat16 autocast (much faster on CPUs with AMX/AVX512-BF16, harmless elsewhere), with a little extra
   latent noise (``--vae-noise``, relative to the latents' spread);
3. encode every image once (posterior mean and std); set ``scaling_factor`` so that the latents have unit std;
   then fine-tune the decoder alone on those latents with more extra noise (``--decoder-noise``): sharper
   edges, and clean shapes from the slightly-off latents a diffusion model makes (the first toy model's
   decoder, trained without it, lost a quarter of its shape accuracy under latent noise of 0.1 std); the latent
   space does not change;
4. train the CLIP text encoder and the ``UNet2DConditionModel`` jointly on the epsilon-prediction loss under
   SD's scaled-linear schedule (betas 0.00085 -> 0.012, 1000 steps), Min-SNR-5 weighting, the caption replaced
   by the empty prompt 10% of the time (for classifier-free guidance), with an EMA of the weights; the text
   encoder's final LayerNorm bias stays fixed at ``TEXT_MEAN`` (see there: it keeps A1111's emphasis sane);
5. fit the "Approx cheap" latent -> RGB preview matrix on the VAE by least squares;
6. save ``toy.safetensors`` (one A1111-layout single file, float16; it loads through the checkpoint loader)
   plus ``preview.json`` and ``training.json`` (the recipe and the log) in ``--out``; the EMA weights are also
   saved there every 500 UNet steps, so a run in progress can be evaluated.

The step counts are fixed (``--vae-steps``, ``--unet-steps``); ``--minutes`` only caps them when the machine
is too slow to finish in time (measured after the first steps of each stage; the cut is logged).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_OUT = Path(__file__).resolve().parent / "weights"

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),  # 4 blocks -> 3 downsamples -> 8x, like SD's VAE
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,  # groups of >= 4 channels: small groups would normalise away flat colours
    sample_size=64,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",  # SD1's CLIP ViT-L
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(64, 96, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,  # SD1 convention: 8 heads
    norm_num_groups=16,
)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    skip_prk_steps=True,
    set_alpha_to_one=False,
)
# The text encoder's final LayerNorm bias is fixed at this value (not trained): its hidden states then have a
# stable non-zero mean, as CLIP ViT-L's do. A1111's emphasis rescales the weighted states back to the original
# mean; with a mean of ~0 (a freely trained bias) that factor was arbitrary in size and sign, and (red:1.4)
# could come out *less* red than (red:0.7). A constant offset shared by every token changes nothing else: it
# adds the same logit to every key of the UNet's cross-attention (softmax ignores it) and a constant to its
# values (absorbed by the output bias).
TEXT_MEAN = 0.5
CAPTIONS_PER_IMAGE = 3
P_UNCOND = 0.1
MIN_SNR_GAMMA = 5.0


def build_models(seed: int = 0):
    """Freshly initialised (unet, vae, text_encoder) with the toy architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    with torch.no_grad():  # start with a nearly deterministic posterior (std ~0.02), not std 1 noise
        vae.quant_conv.bias[VAE_CONFIG["latent_channels"] :] = -8.0
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    final_norm = next(m for n, m in text_encoder.named_modules() if n.endswith("final_layer_norm"))
    with torch.no_grad():
        final_norm.bias.fill_(TEXT_MEAN)
    final_norm.bias.requires_grad_(False)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return unet, vae, text_encoder


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- data ---------------------------------------------------------------------------------------------------


def make_dataset(n: int, seed: int, progress: bool = True):
    """``(images uint8 [n, 64, 64, 3], captions [n][CAPTIONS_PER_IMAGE], labels [n])``."""
    from tqdm.auto import tqdm

    from .world import caption_for, render, sample_labels

    rng = np.random.default_rng(seed)
    images = np.empty((n, 64, 64, 3), dtype=np.uint8)
    captions, labels = [], []
    for i in tqdm(range(n), desc="render", mininterval=5, disable=not progress):
        lab = sample_labels(rng)
        images[i] = np.asarray(render(lab))
        captions.append([caption_for(lab, rng) for _ in range(CAPTIONS_PER_IMAGE)])
        labels.append(lab)
    return images, captions, labels


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    out = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return out.input_ids


def to_pixels(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class _Budget:
    """Fixed step count, cut (once, from the speed of steps 5..``probe``) if it would overrun ``seconds``."""

    def __init__(self, name: str, steps: int, seconds: float | None, probe: int = 25):
        self.name, self.steps, self.seconds, self.probe = name, steps, seconds, probe
        self.t_start = time.perf_counter()
        self.t5 = None
        self.note = None

    def update(self, step: int) -> None:
        if step == 5:
            self.t5 = time.perf_counter()
        if self.seconds is None or step != self.probe:
            return
        now = time.perf_counter()
        per_step = (now - self.t5) / (self.probe - 5)
        fit = self.probe + int((self.seconds - (now - self.t_start)) / per_step)
        if fit < self.steps:
            self.note = (f"{self.name}: {self.steps} steps would take {self.steps * per_step / 60:.1f} min; "
                         f"cut to {fit}")
            print(self.note, flush=True)
            self.steps = max(fit, self.probe + 1)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _fit(name, params, steps, lr, warmup, seconds, batch_loss, log=None, clip=None, after_step=None) -> dict:
    """The training loop every stage shares: AdamW (no weight decay) with ``warmup`` steps then a cosine decay,
    ``batch_loss()`` per step, an optional gradient clip, the step count cut by :class:`_Budget` when it would
    overrun ``seconds``, the smoothed loss shown and logged every 100 steps. ``after_step(done, total)`` runs
    after each update (the EMA, snapshots)."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    budget = _Budget(name, steps, seconds)
    bar = tqdm(total=steps, desc=name, mininterval=10)
    step, ema_loss = 0, None
    while step < budget.steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, budget.steps, lr, warmup)
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        step += 1
        budget.update(step)
        if after_step is not None:
            after_step(step, budget.steps)
        bar.total = budget.steps
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}", refresh=False)
        if log is not None and step % 100 == 0:
            log.append({"stage": name, "step": step, "loss": round(ema_loss, 5)})
    bar.close()
    return {"steps": budget.steps, "final_loss": ema_loss, "cut": budget.note}


# --- stage 2: VAE -------------------------------------------------------------------------------------------


def _noisy_latent(mean, std, gen, latent_noise):
    """A posterior sample plus extra Gaussian noise of ``latent_noise`` times the batch's latent spread.

    The extra noise teaches the decoder to draw clean shapes from slightly-off latents (what a diffusion model
    produces) and makes the encoder keep different shapes far apart; scaling it by the spread leaves the encoder
    no way around it by growing its latents."""
    z = mean + std * torch.randn(mean.shape, generator=gen)
    if latent_noise:
        z = z + latent_noise * mean.detach().float().std() * torch.randn(mean.shape, generator=gen)
    return z


def train_vae(vae, images_u8, steps, batch=32, lr=1.5e-3, seed=1, seconds=None, kl_weight=1e-6, latent_noise=0.0,
              log=None):
    gen = torch.Generator().manual_seed(seed)

    def batch_loss():
        idx = torch.randint(0, len(images_u8), (batch,), generator=gen)
        x = to_pixels(images_u8[idx.numpy()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            post = vae.encode(x).latent_dist
            rec = vae.decode(_noisy_latent(post.mean, post.std, gen, latent_noise)).sample
        rec = rec.float()
        kl = post.kl().mean() / post.mean[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * kl

    vae.train()
    info = _fit("vae", list(vae.parameters()), steps, lr, 100, seconds, batch_loss, log=log)
    vae.eval()
    return info


def finetune_decoder(vae, images_u8, lat_mean, lat_std, steps, batch=32, lr=1e-3, seed=4, seconds=None,
                     latent_noise=0.0, log=None):
    """Train the decoder alone on the frozen encoder's (unscaled) latents: sharper edges, same latent space.

    The encoder, the latents the UNet learns, ``scaling_factor`` and the preview matrix do not change."""
    gen = torch.Generator().manual_seed(seed)

    def batch_loss():
        idx = torch.randint(0, len(images_u8), (batch,), generator=gen)
        x = to_pixels(images_u8[idx.numpy()])
        z = _noisy_latent(lat_mean[idx], lat_std[idx], gen, latent_noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rec = vae.decode(z).sample
        rec = rec.float()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x)

    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.decoder.train()
    info = _fit("decoder", params, steps, lr, 50, seconds, batch_loss, log=log)
    vae.eval()
    return info


@torch.no_grad()
def encode_all(vae, images_u8, batch=256):
    from tqdm.auto import tqdm

    means, stds = [], []
    for i in tqdm(range(0, len(images_u8), batch), desc="encode", mininterval=10):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            post = vae.encode(to_pixels(images_u8[i : i + batch])).latent_dist
        means.append(post.mean.float())
        stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def fit_preview_matrix(latents_scaled: torch.Tensor, images_u8: np.ndarray) -> list[list[float]]:
    """Least-squares 4x3 ``M`` with ``rgb ~= latent @ M`` (rgb in [-1, 1] at latent resolution)."""
    target = F.avg_pool2d(to_pixels(images_u8), 8)  # N, 3, 8, 8
    a = latents_scaled.permute(0, 2, 3, 1).reshape(-1, latents_scaled.shape[1]).double()
    b = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    m = torch.linalg.lstsq(a, b).solution
    return [[round(float(v), 5) for v in row] for row in m]


# --- stage 4: text encoder + UNet ---------------------------------------------------------------------------


def train_diffusion(unet, text_encoder, lat_mean, lat_std, tokens, empty_ids, steps, batch=64, lr=5e-4,
                    seed=2, seconds=None, ema_decay=0.999, log=None, snapshot=None, snapshot_every=500):
    """``tokens``: int tensor [n, CAPTIONS_PER_IMAGE, 77]; latents already multiplied by scaling_factor."""
    from nbdiffuse.models.bundle import scaled_linear_alphas_cumprod

    gen = torch.Generator().manual_seed(seed)
    ac = scaled_linear_alphas_cumprod()
    snr = ac / (1 - ac)
    weights = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # Min-SNR-gamma for epsilon prediction
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    n = len(lat_mean)

    def batch_loss():
        idx = torch.randint(0, n, (batch,), generator=gen)
        which = torch.randint(0, tokens.shape[1], (batch,), generator=gen)
        ids = tokens[idx, which].clone()
        drop = torch.rand(batch, generator=gen) < P_UNCOND
        ids[drop] = empty_ids
        lat = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)
        t = torch.randint(0, len(ac), (batch,), generator=gen)
        noise = torch.randn(lat.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
        cond = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        return (per * weights[t]).mean()

    def after_step(done, total):
        decay = min(ema_decay, done / (9 + done))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        if snapshot is not None and done % snapshot_every == 0 and done < total:
            _with_weights(params, ema, lambda: snapshot(done))

    unet.train()
    text_encoder.train()
    info = _fit("unet", params, steps, lr, 200, seconds, batch_loss, log=log, clip=1.0, after_step=after_step)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return info


def _with_weights(params, values, fn):
    """Run ``fn()`` with ``values`` temporarily copied into ``params`` (to save an EMA snapshot)."""
    with torch.no_grad():
        backup = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
        try:
            fn()
        finally:
            for p, b in zip(params, backup):
                p.copy_(b)


# --- saving -------------------------------------------------------------------------------------------------


def save_folder(out: Path, unet, vae, text_encoder, preview: list, info: dict) -> None:
    """Write the model as one A1111-layout ``toy.safetensors`` (float16; it loads through the same path as any
    checkpoint) beside ``preview.json`` (the cheap-preview matrix) and ``training.json``."""
    from nbdiffuse.models.bundle import ModelBundle, scaled_linear_alphas_cumprod
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.models.tokenizer import clip_tokenizer
    from nbdiffuse.toy import CHECKPOINT_NAME

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = ModelBundle(unet=unet, vae=vae, text_encoders=[text_encoder], tokenizers=[clip_tokenizer("clip_l")],
                         arch="sd1", prediction_type="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod(),
                         name="toy")
    save_checkpoint(bundle, out / CHECKPOINT_NAME, dtype=torch.float16)
    (out / CHECKPOINT_NAME).chmod(0o644)
    (out / "preview.json").write_text(json.dumps({
        "latent_rgb_factors": preview,
        "usage": "rgb = latent @ latent_rgb_factors (latent: the sampler's scaled latent, channels last), "
                 "then rgb * 0.5 + 0.5, like A1111's 'Approx cheap' preview",
    }, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")


# --- main ---------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nbdiffuse.toy.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's)")
    p.add_argument("--minutes", type=float, default=56.0, help="cap on the total wall time (default 56)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (use 1 on a machine whose cores are busy with other work: "
                        "oversubscribed OpenMP threads run many times slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=24000)
    p.add_argument("--vae-steps", type=int, default=4500)
    p.add_argument("--unet-steps", type=int, default=4800)
    p.add_argument("--lr", type=float, default=8e-4, help="UNet + text encoder learning rate")
    p.add_argument("--decoder-steps", type=int, default=2000)
    p.add_argument("--vae-noise", type=float, default=0.05,
                   help="extra latent noise (times the latents' spread) while training the VAE")
    p.add_argument("--decoder-noise", type=float, default=0.1,
                   help="extra latent noise (times the latents' spread) while fine-tuning the decoder")
    p.add_argument("--vae-share", type=float, default=0.4,
                   help="share of the time left after rendering given to the VAE when --minutes must cut")
    p.add_argument("--decoder-share", type=float, default=0.15,
                   help="share of the time left after rendering given to the decoder fine-tuning")
    args = p.parse_args(argv)

    from nbdiffuse.models.tokenizer import clip_tokenizer

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    log: list = []
    timings = {}

    images, captions, _labels = make_dataset(args.n_images, seed=args.seed + 100)
    timings["render_s"] = time.perf_counter() - t_start
    tokenizer = clip_tokenizer("clip_l")
    flat = [c for caps in captions for c in caps]
    tokens = tokenize(tokenizer, flat).view(len(captions), CAPTIONS_PER_IMAGE, 77)
    empty_ids = tokenize(tokenizer, [""])[0]

    unet, vae, text_encoder = build_models(args.seed)
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    n_params = {name: count_params(m) for name, m in modules.items()}
    print("parameters:", n_params, flush=True)

    left = deadline - time.perf_counter() - 120  # encode, fit, save
    t0 = time.perf_counter()
    vae_info = train_vae(vae, images, args.vae_steps, seed=args.seed + 1, seconds=left * args.vae_share,
                         latent_noise=args.vae_noise, log=log)
    timings["vae_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mean, std = encode_all(vae, images)
    sample = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed + 3))
    scaling = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=scaling)
    preview = fit_preview_matrix(mean * scaling, images)
    timings["encode_s"] = time.perf_counter() - t0
    print(f"scaling_factor={scaling:.5f} latent mean={float(sample.mean()):.3f} preview={preview}",
          flush=True)

    t0 = time.perf_counter()
    dec_info = finetune_decoder(vae, images, mean, std, args.decoder_steps, seed=args.seed + 4,
                                seconds=left * args.decoder_share, latent_noise=args.decoder_noise, log=log)
    timings["decoder_s"] = time.perf_counter() - t0
    save_folder(args.out, unet, vae, text_encoder, preview, {"snapshot_step": 0})

    t0 = time.perf_counter()
    left = deadline - time.perf_counter() - 60

    def snapshot(step):  # intermediate EMA weights, so progress can be evaluated while training runs
        save_folder(args.out, unet, vae, text_encoder, preview, {"snapshot_step": step})

    unet_info = train_diffusion(unet, text_encoder, mean * scaling, std * scaling, tokens, empty_ids,
                                args.unet_steps, lr=args.lr, seed=args.seed + 2, seconds=left, log=log,
                                snapshot=snapshot)
    timings["unet_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    info = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "parameters": n_params,
        "vae": vae_info,
        "decoder": dec_info,
        "unet": unet_info,
        "scaling_factor": scaling,
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__,
        "log": log,
    }
    save_folder(args.out, unet, vae, text_encoder, preview, info)
    print(f"saved {args.out} in {timings['total_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
