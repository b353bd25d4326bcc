"""Seeds and noise, drawn the way A1111 draws them (with its RNG source set to "CPU").

Every image of a batch has its own ``torch.Generator`` on the CPU seeded with its seed, so a seed gives the
same noise on any device. The first draw of each generator is the initial latent noise; later draws (ancestral
and SDE step noise, churn) continue from the same generators, image by image (:class:`ImageNoise`).
Samplers marked "brownian" draw step noise from a Brownian tree seeded per image instead
(:class:`BrownianNoise`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

MAX_SEED = 4294967294


def fix_seed(seed: int | None) -> int:
    """A1111's ``get_fixed_seed``: -1 (or None) means a random seed."""
    if seed is None or seed == -1:
        return int(random.randrange(MAX_SEED))
    return int(seed)


def image_seeds(seed: int, subseed: int, subseed_strength: float, count: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of ``count`` images: ``seed + i`` (all ``seed`` when a variation strength is set)
    and ``subseed + i``."""
    seeds = [seed + (i if subseed_strength == 0 else 0) for i in range(count)]
    subseeds = [subseed + i for i in range(count)]
    return seeds, subseeds


def randn(seed: int, shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise from a CPU generator (a fresh one seeded with ``seed`` unless given)."""
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, device="cpu")


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed interpolation of two ``(C, H, W)`` noise tensors.

    Norms are taken per (channel, column) vector (dim 1). When the directions nearly coincide A1111 falls back to
    a linear mix whose weights are swapped (``low * val + high * (1 - val)``); we reproduce that output.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def paste_centred(noise: torch.Tensor, shape: Sequence[int], background: torch.Tensor) -> torch.Tensor:
    """Seed resize: put ``noise`` (made at the old size) centred into ``background`` of the new ``shape``,
    cropping it centred where the new size is smaller."""
    x = background.clone()
    dx = (shape[2] - noise.shape[2]) // 2
    dy = (shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    x[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return x


class ImageNoise:
    """Per-image CPU generators: ``first()`` is the initial noise, each later call the next draw.

    ``shape`` is one image's latent shape ``(C, H, W)``. ``seed_resize_from`` is ``(w, h)`` in pixels or None.
    Calling the object (``noise(sigma, sigma_next)``) returns the next draw, so it is a sampler noise source.
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None,
                 downscale: int = 8):
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.noise_shape = self.shape
        if seed_resize_from and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
            w, h = seed_resize_from
            self.noise_shape = (self.shape[0], int(h) // downscale, int(w) // downscale)
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]
        self.draws = 0

    def first(self) -> torch.Tensor:
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            resized = self.noise_shape != self.shape
            noise = randn(seed, self.noise_shape) if resized else randn(seed, self.shape, generator)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, randn(subseed, self.noise_shape))
            if resized:
                noise = paste_centred(noise, self.shape, randn(seed, self.shape, generator))
            xs.append(noise)
        self.draws = 1
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        if self.draws == 0:
            return self.first()
        self.draws += 1
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return self.next()


class BrownianNoise:
    """Step noise from one Brownian tree per image (torchsde), seeded with the image's seed.

    ``noise(sigma, sigma_next)`` returns the normalised Brownian increment between the two sigmas, so the
    same seed gives the same noise whatever the step count. Trees live on the CPU: device independent.
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], sigma_min: float, sigma_max: float):
        import torchsde

        # A hair wider than the schedule: torchsde rounds the ends to its 1e-6 tolerance and warns when a
        # float32 query falls just outside them.
        self.t0, self.t1 = max(float(sigma_min) - 1e-5, 0.0), float(sigma_max) + 1e-5
        w0 = torch.zeros(tuple(shape))
        self.trees = [torchsde.BrownianTree(self.t0, w0, self.t1, entropy=int(s)) for s in seeds]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        # Query times rounded to float32 the same way every time: the tree splits at queried points, and a
        # float64 query next to its float32 twin makes torchsde warn about round-off.
        sigma, sigma_next = (float(torch.tensor(float(v), dtype=torch.float32)) for v in (sigma, sigma_next))
        lo, hi = min(sigma, sigma_next), max(sigma, sigma_next)
        lo, hi = max(lo, self.t0), min(hi, self.t1)
        sign = 1.0 if sigma_next > sigma else -1.0
        if hi <= lo:
            raise ValueError(f"Brownian noise asked for an empty interval {sigma} -> {sigma_next}")
        w = torch.stack([tree(lo, hi) for tree in self.trees])
        return w * (sign / (hi - lo) ** 0.5)
