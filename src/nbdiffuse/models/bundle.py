"""A loaded model: the diffusers/transformers modules plus what the sampler needs to know about them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelBundle:
    """Everything one Stable Diffusion checkpoint consists of, ready to sample.

    ``arch`` is ``"sd1"``, ``"sd2"`` or ``"sdxl"``; ``prediction_type`` is ``"epsilon"`` or ``"v_prediction"``;
    ``alphas_cumprod`` is the float32 training noise schedule (1000 entries for SD). ``text_encoders`` and
    ``tokenizers`` are parallel lists: one CLIP encoder for SD1/SD2, two (CLIP-L, OpenCLIP-bigG) for SDXL.

    >>> from nbdiffuse.models import tiny_sd1
    >>> bundle = tiny_sd1()
    >>> bundle.arch, bundle.prediction_type, bundle.native_size
    ('sd1', 'epsilon', (64, 64))
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list
    arch: str
    prediction_type: str
    alphas_cumprod: torch.Tensor
    name: str = "model"
    path: str | None = None
    hash: str | None = None  # A1111 "Model hash": first 10 hex of the file's sha256 (see _hash below)
    info: dict = field(default_factory=dict)  # what the loader found and how long each stage took
    applied_loras: list = field(default_factory=list)  # LoRAs merged into the weights right now (during a job)
    applied_hypernetworks: list = field(default_factory=list)  # (tag name, Hypernetwork, strength) hooked in
    # Where the model runs when its weights wait elsewhere (medvram/lowvram keep them on the CPU between uses):
    # set by the Session's memory mode; None: where the UNet's weights are.
    execution_device: torch.device | None = None
    vae_tiling: bool | str = "auto"  # see nbdiffuse.models.memory.wants_vae_tiling; the Session's setting

    @property
    def sigmas(self) -> torch.Tensor:
        """The model's discrete sigmas, ascending (k-diffusion's ``DiscreteSchedule.sigmas``)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    @property
    def latent_channels(self) -> int:
        """Channels of the latents sampled (the UNet's output; an inpainting UNet takes 5 more as input)."""
        return int(self.unet.config.out_channels)

    @property
    def is_inpainting(self) -> bool:
        """An inpainting model: its UNet takes the mask and the masked image's latents (5 channels, A1111's
        ``c_concat``) after the latents; :mod:`nbdiffuse.models.inpainting` makes them.

        >>> from nbdiffuse.models import tiny_sd1
        >>> tiny_sd1().is_inpainting, tiny_sd1(inpainting=True).is_inpainting
        (False, True)
        """
        return int(self.unet.config.in_channels) == self.latent_channels + 5

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> tuple[int, int]:
        """``(width, height)`` the model was trained at: the UNet's ``sample_size`` (its latent side) times the
        VAE's scale factor. SD1 and SD2-base give 512, SD2-v 768, SDXL 1024, the toy model 64. A session's jobs use
        it for ``width``/``height`` when they are not given.

        >>> tiny_sd1().native_size      # doctest: +SKIP
        (64, 64)
        """
        size = self.unet.config.sample_size
        if size is None:  # a config without it: A1111's fixed default
            return 512, 512
        h, w = (size, size) if isinstance(size, int) else size  # diffusers: an int, or (height, width)
        return int(w) * self.vae_scale_factor, int(h) * self.vae_scale_factor

    def __repr__(self) -> str:
        # one line: the dataclass's own repr printed every module (~100 KB of text under `session.load(...)`)
        w, h = self.native_size
        inpainting = ", inpainting" if self.is_inpainting else ""
        return (f"ModelBundle({self.name!r}, {self.arch}, {self.prediction_type}{inpainting}, native {w}x{h}, "
                f"path={self.path!r})")

    @property
    def device(self) -> torch.device:
        """Where the model runs (inputs go there): the execution device under medvram/lowvram, else the UNet's."""
        if self.execution_device is not None:
            return self.execution_device
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype=None) -> ModelBundle:
        for module in [self.unet, self.vae, *self.text_encoders]:
            param = next(module.parameters())
            kwargs = {}
            if device is not None and param.device != torch.device(device):
                kwargs["device"] = device
            if dtype is not None and param.dtype != dtype:
                kwargs["dtype"] = dtype
            if kwargs:
                module.to(**kwargs)
        return self


def _get_hash(bundle: ModelBundle) -> str | None:
    pending = bundle.__dict__.get("_pending_sha256")
    if pending is not None:  # a first-time hash still running: wait for it (only an early infotext does)
        try:
            full = pending.result()
        except Exception as e:  # noqa: BLE001 - a file that vanished mid-hash leaves the infotext without a hash
            bundle.info["hash_error"] = f"{type(e).__name__}: {e}"
        else:
            bundle.__dict__["_hash"] = full[:10]
            bundle.info.update(hash=full[:10], sha256=full)
        bundle.__dict__["_pending_sha256"] = None
    return bundle.__dict__.get("_hash")


def _set_hash(bundle: ModelBundle, value: str | None) -> None:
    bundle.__dict__["_pending_sha256"] = None
    bundle.__dict__["_hash"] = value


def set_pending_hash(bundle: ModelBundle, future) -> None:
    """Fill ``bundle.hash`` (and ``info["hash"]``, ``info["sha256"]``) from ``future``, a
    ``concurrent.futures.Future`` of the file's full sha256 being computed in the background; reading
    ``bundle.hash`` before it is done waits for it."""
    bundle.__dict__["_pending_sha256"] = future


# ``hash`` is a dataclass field (``ModelBundle(..., hash=...)``) read through a property, so that a hash still
# being computed is waited for by whoever reads it first (a job's infotext), and by nobody before.
ModelBundle.hash = property(_get_hash, _set_hash)


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 steps: int = 1000) -> torch.Tensor:
    """SD's training schedule: betas linear in sqrt space ("scaled_linear"), as float32 alphas_cumprod."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
