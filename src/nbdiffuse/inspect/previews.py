"""Previews of the model's x0 prediction while sampling, and a hook that records the trajectory.

Three ways to turn a latent into a picture, cheapest first:

- :func:`cheap_preview`: A1111's "Approx cheap" — a fixed linear map from the 4 latent channels to RGB, at latent
  resolution (``rgb = latent @ M * 0.5 + 0.5``). The SD1/SD2 and SDXL matrices are A1111's; a bundle that carries
  its own fitted matrix (``bundle.info["latent_rgb_factors"]``, e.g. the embedded toy model) uses that. Costs a
  ``(H/8 * W/8) x 4 x 3`` matrix product.
- :func:`taesd_preview`: a ``diffusers.AutoencoderTiny`` (TAESD / TAESDXL) decode, full resolution, a few ms on a GPU.
- :func:`vae_preview`: the model's own VAE decode (what the final image gets), the most expensive.

Preview the prediction ``state.denoised``, not the noisy ``state.x`` (A1111 does the same).
:func:`preview_hook` makes a sampler hook that previews every N steps; :class:`Recorder` keeps CPU copies of every
step's :class:`~nbdiffuse.sampling.base.StepState` for :func:`nbdiffuse.viz.trajectory.trajectory`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..models.vae import decode, vae_scaling

# A1111 modules/sd_vae_approx.py "cheap_approximation": latent channels (rows) -> RGB (columns).
LATENT_RGB_FACTORS = {
    "sd1": [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
    "sdxl": [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
             [-0.3730, -0.2499, -0.2088]],
}
LATENT_RGB_FACTORS["sd2"] = LATENT_RGB_FACTORS["sd1"]

METHODS = ("cheap", "taesd", "full")


def latent_rgb_factors(arch_or_bundle) -> torch.Tensor:
    """The ``(4, 3)`` cheap-preview matrix for an arch name (``"sd1"``, ``"sd2"``, ``"sdxl"``), a bundle (its own
    fitted ``info["latent_rgb_factors"]`` if it has one, else its arch's) or a matrix given directly.

    >>> latent_rgb_factors("sdxl").shape
    torch.Size([4, 3])
    """
    if isinstance(arch_or_bundle, torch.Tensor):
        return arch_or_bundle.float()
    if isinstance(arch_or_bundle, (list, tuple, np.ndarray)):
        return torch.as_tensor(np.asarray(arch_or_bundle, dtype=np.float32))
    if hasattr(arch_or_bundle, "arch"):
        fitted = (getattr(arch_or_bundle, "info", None) or {}).get("latent_rgb_factors")
        if fitted is not None:
            return torch.tensor(fitted, dtype=torch.float32)
        arch_or_bundle = arch_or_bundle.arch
    if arch_or_bundle not in LATENT_RGB_FACTORS:
        raise ValueError(f"no cheap-preview matrix for arch {arch_or_bundle!r}; known: {', '.join(LATENT_RGB_FACTORS)}"
                         " (or pass a (channels, 3) matrix)")
    return torch.tensor(LATENT_RGB_FACTORS[arch_or_bundle], dtype=torch.float32)


def _to_pil(pixels01: torch.Tensor) -> list[Image.Image]:
    """``(N, 3, H, W)`` in [0, 1] -> PIL images."""
    arr = (pixels01.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _batched(latent: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if latent.ndim == 3:
        return latent[None], True
    if latent.ndim != 4:
        raise ValueError(f"expected a latent (C, H, W) or (N, C, H, W), got shape {tuple(latent.shape)}")
    return latent, False


@torch.no_grad()
def cheap_rgb(denoised: torch.Tensor, arch="sd1") -> torch.Tensor:
    """The cheap approximation as a tensor: ``(N, 3, H/8, W/8)`` in [0, 1] (``(3, h, w)`` for one latent).

    >>> import torch
    >>> cheap_rgb(torch.zeros(1, 4, 8, 8)).shape
    torch.Size([1, 3, 8, 8])
    """
    latent, single = _batched(denoised)
    factors = latent_rgb_factors(arch).to(latent.device)
    if factors.shape[0] != latent.shape[1]:
        raise ValueError(f"the preview matrix has {factors.shape[0]} rows but the latent {latent.shape[1]} channels")
    rgb = torch.einsum("nchw,cr->nrhw", latent.float(), factors) * 0.5 + 0.5
    rgb = rgb.clamp(0, 1)
    return rgb[0] if single else rgb


def cheap_preview(denoised: torch.Tensor, arch="sd1", size: tuple[int, int] | None = None):
    """A1111's "Approx cheap" preview of a latent: a PIL image at latent resolution (a list for a batch).

    ``arch``: ``"sd1"``/``"sd2"``/``"sdxl"``, a bundle (uses its own fitted matrix when it has one) or a
    ``(channels, 3)`` matrix. ``size=(width, height)`` resizes (nearest) for display.

    >>> import torch
    >>> cheap_preview(torch.zeros(1, 4, 8, 8))[0].size
    (8, 8)
    """
    images = _to_pil(cheap_rgb(_batched(denoised)[0], arch))
    if size is not None:
        images = [im.resize(tuple(size), Image.NEAREST) for im in images]
    return images[0] if denoised.ndim == 3 else images


@torch.no_grad()
def taesd_preview(denoised: torch.Tensor, taesd):
    """Decode with a ``diffusers.AutoencoderTiny`` (TAESD for SD1/SD2, TAESDXL for SDXL): full-size PIL image(s).

    The sampler's latent is already in the UNet's scaled space, which is what TAESD decodes
    (``taesd.config.scaling_factor`` is 1.0 for the published weights and is honoured if it is not).

    >>> from diffusers import AutoencoderTiny  # doctest: +SKIP
    >>> taesd_preview(state.denoised, AutoencoderTiny.from_pretrained("/data/taesd"))  # doctest: +SKIP
    """
    latent, single = _batched(denoised)
    param = next(taesd.parameters())
    scale, shift = vae_scaling(taesd, default_scale=1.0)
    z = (latent / scale + shift).to(device=param.device, dtype=param.dtype)
    pixels = taesd.decode(z, return_dict=False)[0].float()
    images = _to_pil((pixels + 1) / 2)
    return images[0] if single else images


def vae_preview(denoised: torch.Tensor, bundle):
    """The model's own VAE decode (the final image's path): full-size PIL image(s).

    >>> vae_preview(state.denoised, session.model)[0]  # doctest: +SKIP
    """

    latent, single = _batched(denoised)
    images = decode(bundle, latent, [])
    return images[0] if single else images


def preview(denoised: torch.Tensor, method: str = "cheap", *, bundle=None, taesd=None, arch=None):
    """One entry point: ``method`` is ``"cheap"`` (needs ``arch`` or ``bundle``), ``"taesd"`` (needs ``taesd``)
    or ``"full"`` (needs ``bundle``).

    >>> preview(state.denoised, "taesd", taesd=taesd)  # doctest: +SKIP
    """
    if method == "cheap":
        if arch is None and bundle is None:
            raise ValueError("the cheap preview needs arch= (or bundle=) to pick its latent->RGB matrix")
        return cheap_preview(denoised, arch if arch is not None else bundle)
    if method == "taesd":
        if taesd is None:
            raise ValueError("method='taesd' needs taesd=: a diffusers.AutoencoderTiny, e.g. "
                             "AutoencoderTiny.from_pretrained('models/VAE-taesd/taesd', local_files_only=True)")
        return taesd_preview(denoised, taesd)
    if method == "full":
        if bundle is None:
            raise ValueError("method='full' needs bundle= (session.model) for its VAE")
        return vae_preview(denoised, bundle)
    raise ValueError(f"preview method {method!r} is not valid: choose one of {', '.join(METHODS)}")


class PreviewHook:
    """A sampler hook that previews ``state.denoised`` every ``every`` steps (and at the last step).

    ``callback(image, state)`` receives the PIL image of the first batch image; without a callback the image is
    shown in the notebook, updated in place (an IPython display handle). ``last`` holds the latest preview.
    Returns nothing, so it never changes the trajectory.

    >>> session.txt2img(prompt="a red circle", hooks=[PreviewHook(every=5, bundle=session.model)])  # doctest: +SKIP
    """

    def __init__(self, every: int = 1, method: str = "cheap", callback: Callable | None = None, *, bundle=None,
                 taesd=None, arch=None, image: int = 0):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if method not in METHODS:
            raise ValueError(f"preview method {method!r} is not valid: choose one of {', '.join(METHODS)}")
        if method == "cheap" and arch is None and bundle is None:
            raise ValueError("the cheap preview needs arch= (or bundle=) to pick its latent->RGB matrix")
        self.every, self.method, self.callback = every, method, callback
        self.bundle, self.taesd, self.arch, self.image = bundle, taesd, arch, image
        self.last: Image.Image | None = None
        self.count = 0
        self._handle = None

    def __call__(self, state) -> None:
        if (state.i + 1) % self.every and state.i + 1 != state.total:
            return None
        latent = state.denoised[self.image]
        self.last = preview(latent, self.method, bundle=self.bundle, taesd=self.taesd, arch=self.arch)
        self.count += 1
        if self.callback is not None:
            self.callback(self.last, state)
        else:
            self._show()
        return None

    def _show(self) -> None:
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with Jupyter
            return
        if self._handle is None:
            self._handle = display(self.last, display_id=True)
        else:
            self._handle.update(self.last)


def preview_hook(every: int = 1, method: str = "cheap", callback: Callable | None = None, *, session=None,
                 bundle=None, taesd=None, arch=None, image: int = 0) -> PreviewHook:
    """A hook previewing x0 every ``every`` steps: ``session.txt2img(hooks=[preview_hook(5, session=s)], ...)``.

    ``method``: ``"cheap"`` (A1111's linear approximation; the matrix comes from ``arch``/``bundle``/``session``),
    ``"taesd"`` (pass ``taesd=`` an ``AutoencoderTiny``) or ``"full"`` (the session's VAE).

    >>> session.txt2img(prompt="a red circle", hooks=[preview_hook(5, session=session)])  # doctest: +SKIP
    """
    if bundle is None and session is not None:
        bundle = session.model
    return PreviewHook(every, method, callback, bundle=bundle, taesd=taesd, arch=arch, image=image)


class Recorder:
    """A sampler hook that keeps CPU copies of every ``every``-th step's state, for plots after the run.

    ``states`` is a list of :class:`StepState` copies whose tensors (``x``, ``denoised`` and the ``cond``/``uncond``
    predictions in ``extra``) are float32 CPU clones; ``keep`` names the tensors to keep (others are dropped to
    save memory). Only the first ``n_iter`` batch is recorded unless ``all_iterations=True``.

    >>> rec = Recorder(every=2)  # doctest: +SKIP
    >>> session.txt2img(prompt="a red circle", steps=20, hooks=[rec])  # doctest: +SKIP
    >>> len(rec.states)  # doctest: +SKIP
    10
    """

    TENSORS = ("x", "denoised", "cond", "uncond")

    def __init__(self, every: int = 1, keep: Sequence[str] = TENSORS, all_iterations: bool = False):
        unknown = set(keep) - set(self.TENSORS)
        if unknown:
            raise ValueError(f"keep: unknown tensor(s) {sorted(unknown)}; choose from {self.TENSORS}")
        self.every, self.keep, self.all_iterations = every, tuple(keep), all_iterations
        self.states: list = []

    @staticmethod
    def _cpu(t):
        return t.detach().float().cpu().clone() if isinstance(t, torch.Tensor) else t

    def __call__(self, state) -> None:
        if not self.all_iterations and state.extra.get("iteration", 0) > 0:
            return None
        if (state.i + 1) % self.every and state.i + 1 != state.total:
            return None
        kept = copy.copy(state)
        kept.x = self._cpu(state.x) if "x" in self.keep else None
        kept.denoised = self._cpu(state.denoised) if "denoised" in self.keep else None
        kept.extra = {k: (self._cpu(v) if k in self.keep else None) if isinstance(v, torch.Tensor) or k in
                      ("cond", "uncond") else v for k, v in state.extra.items()}
        self.states.append(kept)
        return None

    def __len__(self) -> int:
        return len(self.states)

    def clear(self) -> None:
        self.states.clear()
