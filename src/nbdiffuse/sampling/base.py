"""The sampler contract, shared by every sampler, schedule and driver.

A *model* here is a denoiser: ``model(x, sigma) -> denoised`` where ``sigma`` is a tensor of shape
``(batch,)`` and ``denoised`` is the model's prediction of the clean latent (x0). Conditioning and guidance
are closed over by the caller (see :mod:`nbdiffuse.sampling.guidance`).

A *sampler* is a generator function::

    def sample_x(model, x, sigmas, *, noise, **options):
        ...
        replacement = yield StepState(...)   # once per step, after the step's update
        if replacement is not None:
            x = replacement
        ...
        return x

It yields one :class:`StepState` per step (per interval ``sigmas[i] -> sigmas[i + 1]``), after the step's
update, and returns the final latent (``StopIteration.value``). Whoever drives it may ``send()`` a
replacement latent back; the sampler continues from that latent. Multi-call steps (Heun, DPM2, ...) yield
once, after the step is complete: half a Heun step is not a point on the trajectory.

``noise`` is the only source of randomness: a callable ``noise(sigma, sigma_next) -> Tensor`` shaped like
``x`` (see :mod:`nbdiffuse.sampling.noise`). Deterministic samplers accept and ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SamplerGen = Generator["StepState", "torch.Tensor | None", torch.Tensor]


@dataclass
class StepState:
    """What a sampler reports after each step.

    ``i`` is the 0-based step index, ``total`` the number of steps, ``x`` the latent after the step,
    ``denoised`` the model's x0 prediction made during the step (at ``sigma``), ``calls`` how many model
    calls the step used. ``extra`` carries what else is cheap (e.g. the guidance closure's cond/uncond
    predictions, filled in by the driver).

    >>> def show(state):                       # a hook: called after every step
    ...     print(state.i, state.total, round(state.sigma, 3))
    >>> session.txt2img(prompt="a red circle", steps=3, hooks=[show])  # doctest: +SKIP
    """

    i: int
    total: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor
    calls: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        """1-based step number, as progress bars count."""
        return self.i + 1

    def __repr__(self) -> str:
        return (f"StepState(step {self.i + 1}/{self.total}, sigma {self.sigma:.4g} -> {self.sigma_next:.4g}, "
                f"x {tuple(self.x.shape)}, calls {self.calls})")


def run_to_end(gen):
    """Drive a step generator (a sampler, a job) to its end and return what it returns.

    >>> x = run_to_end(sample_euler(model, x, sigmas))                  # doctest: +SKIP
    """
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dimensions until ``x`` has ``target_dims`` dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Convert a denoiser output to a Karras ODE derivative."""
    if sigma.ndim == 0 and sigma.device != x.device:  # a CPU sigma with a GPU latent: a scalar operand, no copy
        return (x - denoised) / sigma
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step from ``sigma_from`` to ``sigma_to`` into a deterministic part and added noise.

    Returns ``(sigma_down, sigma_up)``.
    """
    if not eta or not sigma_to:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """Append a 0 to a 1-D sigma tensor."""
    return torch.cat([x, x.new_zeros([1])])
