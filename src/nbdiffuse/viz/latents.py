"""Seeing latents and hires fix: channels, the cheap RGB preview, latent upscalers side by side, the whole story.

* :func:`show_latents`: the 4 channels as images with their value ranges, plus A1111's "Approx cheap" RGB.
* :func:`compare_upscalers`: one first-pass latent upscaled by every latent mode (and bislerp), decoded as is
  ("denoise 0") and after one step of the second pass, with a table: latent std before/after (bilinear-type
  averaging lowers it; the second pass renders that as blur) and PSNR/SSIM against the VAE round trip of a
  Lanczos pixel upscale.
* :func:`explain_hires`: first pass, upscaled latent, decoded upscale, second-pass x0 at a few steps, final, and a
  direct render at the high resolution, in one figure.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot (nothing global, no backend needed).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..inspect.previews import cheap_preview
from ..sampling.base import run_to_end


def _figure(**kwargs):
    from ._figure import NotebookFigure  # matplotlib is imported when a figure is made, not with the package

    return NotebookFigure(**kwargs)


def _latent(latents, index: int = 0) -> torch.Tensor:
    if hasattr(latents, "latents"):
        latents = latents.latents
    z = torch.as_tensor(latents).detach().float().cpu()
    if z.ndim == 4:
        z = z[index]
    if z.ndim != 3:
        raise ValueError(f"expected latents shaped (C, H, W) or (N, C, H, W), got {tuple(z.shape)}")
    return z


def approx_rgb(latents, arch: str = "sd1", factors=None, index: int = 0) -> Image.Image:
    """A1111's cheap preview at latent resolution: ``rgb = latent . factors * 0.5 + 0.5``, clamped, x255.

    >>> approx_rgb(session.txt2img(prompt="a red circle").latents)  # doctest: +SKIP
    """
    return cheap_preview(_latent(latents, index), factors if factors is not None else arch)


def show_latents(latents, *, arch: str = "sd1", factors=None, index: int = 0, title: str | None = None):
    """A figure: each latent channel (own colour scale, min/max/mean/std in the title) and the cheap RGB preview.

    ``latents``: ``(C, H, W)``, ``(N, C, H, W)`` (picks ``index``) or a Result. ``arch`` picks A1111's factors
    ("sd1"/"sd2" or "sdxl"); ``factors`` gives your own (e.g. ``nbdiffuse.toy.preview_matrix()``).

    >>> show_latents(session.txt2img(prompt="a red circle").latents)  # doctest: +SKIP
    """
    z = _latent(latents, index)
    c = z.shape[0]
    fig = _figure(figsize=(2.6 * (c + 1), 2.9), layout="constrained")
    axes = fig.subplots(1, c + 1)
    for i in range(c):
        ch = z[i]
        im = axes[i].imshow(ch.numpy(), cmap="RdBu_r", vmin=-float(ch.abs().max()), vmax=float(ch.abs().max()),
                            interpolation="nearest")
        axes[i].set_title(f"channel {i}\n[{ch.min():.2f}, {ch.max():.2f}] μ {ch.mean():.2f} σ {ch.std():.2f}",
                          fontsize=8)
        fig.colorbar(im, ax=axes[i], shrink=0.7)
    axes[c].imshow(approx_rgb(z, arch, factors), interpolation="nearest")
    axes[c].set_title("approx. RGB (A1111 cheap)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"latents {tuple(z.shape)}", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------ metrics

def _as_float(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64) / 255.0


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB (inf when identical).

    >>> from PIL import Image
    >>> a, b = Image.new("RGB", (16, 16), (200, 30, 30)), Image.new("RGB", (16, 16), (190, 30, 30))
    >>> psnr(a, a), round(psnr(a, b), 2)
    (inf, 32.9)
    """
    mse = float(np.mean((_as_float(a) - _as_float(b)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a, b, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of two images: Gaussian window 11/1.5, K1 0.01, K2 0.03,
    computed per RGB channel on [0, 1] values ('valid' windows), averaged. 1.0 for identical images.

    >>> from PIL import Image
    >>> a = Image.new("RGB", (16, 16), (200, 30, 30))
    >>> ssim(a, a)
    1.0
    """
    x = torch.from_numpy(_as_float(a)).permute(2, 0, 1)[:, None]
    y = torch.from_numpy(_as_float(b)).permute(2, 0, 1)[:, None]
    if x.shape != y.shape:
        raise ValueError(f"ssim: images differ in size: {tuple(x.shape)} vs {tuple(y.shape)}")
    window = min(window, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]

    def f(t):
        return torch.nn.functional.conv2d(t, k)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# ------------------------------------------------------------------------------------------------ helpers

def _bundle_and_encoder(session_or_bundle):
    from ..prompts.conditioning import TextEncoder

    if hasattr(session_or_bundle, "encoder") and hasattr(session_or_bundle, "model"):
        if session_or_bundle.model is None:
            raise RuntimeError("No model is loaded in this session.")
        return session_or_bundle.model, session_or_bundle.encoder
    return session_or_bundle, TextEncoder(session_or_bundle)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _show(ax, image, title):
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass
class UpscalerComparison:
    """:func:`compare_upscalers`' answer: ``rows`` (one dict per mode), ``figure``, the decoded ``images`` per mode
    (``(denoise 0, after one step)``) and the ``reference`` image. Renders as a table and the figure."""

    rows: list[dict]
    figure: object
    images: dict = field(default_factory=dict)
    reference: Image.Image | None = None

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in self.rows[0])
        body = "".join("<tr>" + "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else
                                        f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                       for r in self.rows)
        return (f'<table style="font-size:12px"><tr>{head}</tr>{body}</table>'
                f'<img src="data:image/png;base64,{_png(self.figure)}"/>')

    def __repr__(self) -> str:
        cols = list(self.rows[0])
        lines = [" | ".join(cols)]
        for r in self.rows:
            lines.append(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))
        return "\n".join(lines)


def compare_upscalers(session_or_bundle, result, scale: float = 2.0, *, index: int = 0,
                      modes: Sequence[str] | None = None, denoising_strength: float = 0.7,
                      hr_second_pass_steps: int = 0) -> UpscalerComparison:
    """The first-pass latent of ``result`` (image ``index``) upscaled by every latent mode (plus "Latent
    (bislerp)", nbdiffuse's extra), decoded before any denoising and as the model's x0 after the second pass's
    first step (A1111's schedule for ``denoising_strength`` / ``hr_second_pass_steps``, same seed).

    Table columns: ``std first pass``, ``std upscaled`` (the latent's standard deviation before/after upscaling),
    ``PSNR``/``SSIM`` of the decoded upscale and ``PSNR 1 step``/``SSIM 1 step`` of the one-step x0, each against
    the reference: the first-pass image decoded, Lanczos-upscaled in pixels, VAE-encoded and decoded again.

    >>> result = session.txt2img(prompt="a red circle", steps=20)  # doctest: +SKIP
    >>> compare_upscalers(session, result, scale=2.0)  # doctest: +SKIP
    """
    from ..jobs.hires import hires_fix_steps
    from ..jobs.upscalers import LATENT_EXTRA_MODES, LATENT_UPSCALE_MODES, resize_image
    from ..models.vae import decode, encode

    bundle, encoder = _bundle_and_encoder(session_or_bundle)
    modes = list(modes) if modes is not None else [*LATENT_UPSCALE_MODES, *LATENT_EXTRA_MODES]
    z = result.latents[index:index + 1].to(bundle.device)
    hires = dict(hr_scale=float(scale), hr_second_pass_steps=hr_second_pass_steps, indices=[index])
    notes: list[str] = []
    first = decode(bundle, z, notes)[0]
    to_x, to_y = result.params.replace(enable_hr=True, hr_scale=float(scale)).hr_upscale_to
    reference = decode(bundle, encode(bundle, [resize_image(0, first, to_x, to_y, "Lanczos")]), notes)[0]
    rows, images = [], {}
    for mode in modes:
        # denoise 0: the hires job decodes the upscaled latents as they are
        upscaled = run_to_end(hires_fix_steps(bundle, result, encoder, hr_upscaler=mode, denoising_strength=0,
                                              **hires))
        up, decoded = upscaled.latents, upscaled.image
        job = hires_fix_steps(bundle, result, encoder, hr_upscaler=mode, denoising_strength=denoising_strength,
                              **hires)
        try:
            one = decode(bundle, next(job).denoised, notes)[0]  # the x0 after the second pass's first step
        except StopIteration:  # denoising_strength 0: no second pass
            one = decoded
        job.close()
        images[mode] = (decoded, one)
        rows.append({"mode": mode, "std first pass": float(z.std()), "std upscaled": float(up.std()),
                     "PSNR": psnr(decoded, reference), "SSIM": ssim(decoded, reference),
                     "PSNR 1 step": psnr(one, reference), "SSIM 1 step": ssim(one, reference)})
    n = len(modes) + 1
    fig = _figure(figsize=(2.2 * n, 5.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j, mode in enumerate(modes):
        r = rows[j]
        _show(axes[0][j], images[mode][0], f"{mode.replace('Latent ', '')}\nσ {r['std upscaled']:.3f}, "
                                           f"SSIM {r['SSIM']:.2f}")
        _show(axes[1][j], images[mode][1], f"after 1 step\nSSIM {r['SSIM 1 step']:.2f}")
    _show(axes[0][n - 1], reference, f"reference\n(pixel Lanczos, VAE round trip)\nσ first {float(z.std()):.3f}")
    _show(axes[1][n - 1], first, "first pass")
    fig.suptitle(f"Latent upscalers x{scale:g}: decoded with denoise 0 (top), the x0 after one step (bottom)",
                 fontsize=10)
    return UpscalerComparison(rows, fig, images, reference)


@dataclass
class HiresExplanation:
    """:func:`explain_hires`' answer: the ``figure`` and the three results (``first``, ``final``, ``direct``)."""

    figure: object
    first: object
    final: object
    direct: object
    snapshots: list = field(default_factory=list)

    def _repr_html_(self) -> str:
        return f'<img src="data:image/png;base64,{_png(self.figure)}"/>'


def explain_hires(session_or_bundle, result=None, *, snapshots: int = 3, index: int = 0, arch: str | None = None,
                  factors=None, **params) -> HiresExplanation:
    """Hires fix in one figure: first pass | upscaled latent (cheap RGB) | decoded upscale | the second pass's x0
    at ``snapshots`` steps | final | a direct render at the hires size with the same seed.

    Give an earlier txt2img ``result`` (made without hires fix), or txt2img parameters to make one; hires
    parameters (``hr_scale``, ``hr_upscaler``, ``denoising_strength``, ...) go in ``params`` either way.

    >>> explain_hires(session, prompt="a red circle", hr_scale=2.0, denoising_strength=0.5)  # doctest: +SKIP
    """
    from ..jobs.hires import DEFAULT_DENOISING, HIRES_FIELDS, hires_fix_steps
    from ..jobs.params import GenerationParams, with_native_size
    from ..jobs.txt2img import txt2img_steps
    from ..models.vae import decode

    bundle, encoder = _bundle_and_encoder(session_or_bundle)
    hr = {k: params.pop(k) for k in list(params) if k in HIRES_FIELDS}
    hr["upscalers"] = getattr(session_or_bundle, "upscalers", None)  # a session's registered upscaler models
    params.pop("enable_hr", None)
    if result is None:
        result = run_to_end(txt2img_steps(bundle, GenerationParams.from_kwargs(**with_native_size(params, bundle)),
                                    encoder))
    elif params:
        raise TypeError(f"explain_hires: with a result, only hires parameters may be given, not {sorted(params)}")
    captured = []

    def hook(state):
        if state.extra.get("pass") == "hires":
            captured.append((state.i, state.total, state.sigma, state.denoised.detach().clone()))

    final = run_to_end(hires_fix_steps(bundle, result, encoder, hooks=[hook], indices=[index], **hr))
    p = final.params
    notes: list[str] = []
    # the same job with denoise 0 stops at the upscaled latents
    up = run_to_end(hires_fix_steps(bundle, result, encoder, indices=[index],
                                    **{**hr, "denoising_strength": 0})).latents.to(bundle.device)
    upscaler = p.hr_upscaler or "Latent"
    denoising = p.denoising_strength if p.denoising_strength is not None else DEFAULT_DENOISING
    w, h = p.hr_size
    direct = run_to_end(txt2img_steps(bundle, p.replace(enable_hr=False, width=w, height=h, batch_size=1, n_iter=1),
                                encoder))
    picks = []
    if captured:
        k = max(1, min(snapshots, len(captured)))
        picks = sorted({round(i * (len(captured) - 1) / max(k - 1, 1)) for i in range(k)}) if k > 1 else [0]
    shots = [(captured[i][0], captured[i][1], captured[i][2], decode(bundle, captured[i][3][:1], notes)[0])
             for i in picks]
    arch = arch or getattr(bundle, "arch", "sd1")
    panels = [(result.images[index], f"1. first pass {result.images[index].width}x{result.images[index].height}"),
              (approx_rgb(up, arch, factors), f"2. {upscaler} latent\n{tuple(up.shape[-2:])} (cheap RGB)"),
              (decode(bundle, up, notes)[0], "3. decoded upscale\n(denoise 0)")]
    panels += [(im, f"4. pass 2 x0, step {i + 1}/{n}\nσ {sigma:.2f}") for i, n, sigma, im in shots]
    panels += [(final.image, f"5. final (denoise {denoising:g})"), (direct.image, f"direct {w}x{h}\nsame seed")]
    fig = _figure(figsize=(2.3 * len(panels), 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (image, title) in zip(axes, panels):
        _show(ax, image, title)
    fig.suptitle("Hires fix, step by step", fontsize=10)
    return HiresExplanation(fig, result, final, direct, shots)
