"""The model contract ``denoiser(x, sigma, **cond) -> x0`` over a diffusers ``UNet2DConditionModel``."""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple

import torch

from .base import append_dims
from .schedules import sigma_to_t, vp_sigma_to_t


class UNetRows(NamedTuple):
    """The rows ``start:stop`` of a model call's ``total`` rows that one UNet forward computes."""

    start: int
    stop: int
    total: int


_rows: ContextVar[UNetRows | None] = ContextVar("unet_rows", default=None)


def on_device(v: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (sigmas, timesteps) on ``device`` without waiting for the device: a fill when its entries
    are equal (one sigma for the batch, as the samplers give it), else a non-blocking copy. A plain ``.to(cuda)``
    of a pageable CPU tensor synchronises the stream, which on every step would stall the GPU between steps."""
    if v.device == device:
        return v
    if v.device.type == "cpu" and v.numel() and bool((v == v.reshape(-1)[0]).all()):
        return torch.full(v.shape, float(v.reshape(-1)[0]), dtype=v.dtype, device=device)
    return v.to(device, non_blocking=True)


def unet_rows() -> UNetRows | None:
    """Inside a UNet forward run by :class:`Denoiser`: which rows of the model call it computes (``None``
    elsewhere). Probes use it to put the per-image forwards of one model call back together."""
    return _rows.get()


class Denoiser:
    """Wraps an eps- or v-prediction UNet as a Karras denoiser.

    Sampling happens in k-diffusion's variable ``x = x0 + sigma * eps``; the UNet sees ``x / sqrt(sigma^2 + 1)``
    at the timestep whose training sigma is ``sigma`` (log-sigma interpolation over ``alphas_cumprod``).
    The sampler's arithmetic stays in float32 whatever the UNet's dtype.

    >>> d = Denoiser(bundle.unet, bundle.alphas_cumprod, "epsilon")      # doctest: +SKIP
    >>> x0 = d(x, sigma, context=cond)                                     # doctest: +SKIP
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        self.unet = unet
        ac = alphas_cumprod.detach().float().cpu()
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.prediction_type = prediction_type
        self.calls = 0
        # A sigma between the table's entries is the timestep k-diffusion's log-sigma rule finds, or with ``vp_time``
        # (the jobs set it for A1111's timestep samplers, UniPC's fractional timesteps) the VP log-alpha rule's.
        self.vp_time = False
        # diffusers' ModelMixin.dtype walks every parameter (~5 ms on an SD UNet): read it once per job.
        self.dtype = next(unet.parameters()).dtype

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (fractional) training timestep of each sigma. Computed on the CPU: free for the samplers' CPU
        sigmas, a host sync for a sigma on the GPU."""
        to_t = vp_sigma_to_t if self.vp_time else sigma_to_t
        return on_device(to_t(sigma.detach().float().cpu(), self.sigmas), sigma.device)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 added_cond: dict | None = None, *, rows_per_call: int | None = None,
                 image_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x0`` for every row; ``rows_per_call`` runs the UNet on that many rows at a time (one model call all
        the same): the guidance passes one image's cond and uncond rows, so that every image is computed exactly
        as it would be alone. ``image_cond``: an inpainting model's extra input channels, one row per row of ``x``
        (LDM's ``c_concat``: the UNet sees ``cat([x * c_in, image_cond])``, the conditioning unscaled)."""
        t = on_device(self.timestep(sigma), x.device).reshape(-1).expand(len(x))  # from the CPU sigma: no sync
        sigma = on_device(sigma.to(dtype=torch.float32), x.device)
        s = append_dims(sigma, x.ndim)
        c_in = 1 / (s**2 + 1) ** 0.5
        dtype = self.dtype
        x_in = (x * c_in).to(dtype)
        if image_cond is not None:
            x_in = torch.cat([x_in, image_cond.to(device=x.device, dtype=dtype)], dim=1)
        context = context.to(device=x.device, dtype=dtype)
        added = {k: v.to(device=x.device, dtype=dtype) for k, v in added_cond.items()} if added_cond else None
        rows = rows_per_call or len(x)
        outs = []
        for i in range(0, len(x), rows):
            kwargs = {}
            if added is not None:
                kwargs["added_cond_kwargs"] = {k: v[i:i + rows] for k, v in added.items()}
            token = _rows.set(UNetRows(i, min(i + rows, len(x)), len(x)))
            try:
                outs.append(self.unet(x_in[i:i + rows], t[i:i + rows], encoder_hidden_states=context[i:i + rows],
                                      return_dict=False, **kwargs)[0])
            finally:
                _rows.reset(token)
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).float()
        self.calls += 1
        if self.prediction_type == "epsilon":
            return x - out * s
        c_skip = 1 / (s**2 + 1)
        c_out = -s / (s**2 + 1) ** 0.5
        return x * c_skip + out * c_out
