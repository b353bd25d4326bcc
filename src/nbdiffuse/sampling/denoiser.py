"""The model contract ``denoiser(x, sigma, **cond) -> x0`` over a diffusers ``UNet2DConditionModel``."""

from __future__ import annotations

import torch

from .base import append_dims
from .schedules import sigma_to_t


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
        # diffusers' ModelMixin.dtype walks every parameter (~5 ms on an SD UNet): read it once per job.
        self.dtype = next(unet.parameters()).dtype

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (fractional) training timestep of each sigma."""
        return sigma_to_t(sigma.detach().float().cpu(), self.sigmas).to(sigma.device)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 added_cond: dict | None = None) -> torch.Tensor:
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        s = append_dims(sigma, x.ndim)
        c_in = 1 / (s**2 + 1) ** 0.5
        dtype = self.dtype
        t = self.timestep(sigma)
        kwargs = {}
        if added_cond is not None:
            kwargs["added_cond_kwargs"] = {k: v.to(device=x.device, dtype=dtype) for k, v in added_cond.items()}
        out = self.unet((x * c_in).to(dtype), t, encoder_hidden_states=context.to(device=x.device, dtype=dtype),
                        return_dict=False, **kwargs)[0].float()
        self.calls += 1
        if self.prediction_type == "epsilon":
            return x - out * s
        c_skip = 1 / (s**2 + 1)
        c_out = -s / (s**2 + 1) ** 0.5
        return x * c_skip + out * c_out
