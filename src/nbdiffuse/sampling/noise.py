"""Seeds and noise, drawn the way A1111 draws them, from any of A1111's three RNG sources.

Every image of a batch has its own generator seeded with its seed. The first draw of each generator is the
initial latent noise; later draws (ancestral and SDE step noise, churn) continue from the same generators, image
by image (:class:`ImageNoise`). Samplers marked "brownian" draw step noise from a Brownian tree seeded per image
instead (:class:`BrownianNoise`).

The RNG source (A1111's setting ``randn_source``, infotext key ``RNG``) picks the generator:

* ``"CPU"``: ``torch.randn`` with a CPU generator: the same numbers on any machine. nbdiffuse's default.
* ``"GPU"``: ``torch.randn`` on the CUDA device, A1111's default (an infotext without ``RNG`` means this). On a
  machine without CUDA the numbers come from the ``"NV"`` emulation, which gives CUDA's numbers.
* ``"NV"``: NVIDIA's Philox4x32-10 counter generator and curand's Box–Muller transform computed on the CPU
  (:class:`PhiloxNormal`), so any machine gets the numbers an NVIDIA GPU gives.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

MAX_SEED = 4294967294
RANDN_SOURCES = ("GPU", "CPU", "NV")  # A1111's choices for its "Random number generator source" setting
DEFAULT_RANDN_SOURCE = "CPU"  # ours: the same seed gives the same image on every device
GPU_EMULATED_NOTE = ('RNG source "GPU" without a CUDA device: the noise comes from NVIDIA\'s Philox generator '
                     'emulated on the CPU (A1111\'s "NV"), i.e. the numbers an NVIDIA GPU draws.')


def resolve_randn_source(source: str) -> str:
    """``"gpu"`` -> ``"GPU"``; anything but GPU, CPU or NV fails with a message naming the choices."""
    name = str(source).strip().upper()
    if name not in RANDN_SOURCES:
        raise ValueError(f"randn_source={source!r} is not an RNG source: use one of {', '.join(RANDN_SOURCES)} "
                         '(A1111\'s infotext key "RNG"; "GPU" when the infotext has none).')
    return name


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


# ------------------------------------------------------------------------------------------ generators

# Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011), as curand
# runs it: round multipliers, Weyl key increments, 10 rounds.
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# curand's single-precision Box–Muller constants (CURAND_2POW32_INV, CURAND_2POW32_INV_2PI).
_2POW32_INV = float(np.float32(2.3283064e-10))
_2POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: Sequence[np.ndarray], key: tuple[int, int], rounds: int = 10) -> tuple[np.ndarray, ...]:
    """The Philox4x32 block function on arrays of counters: four arrays of 32-bit words (held as uint64) and a
    two-word key -> the four output words.

    >>> [hex(int(w[0])) for w in philox4x32([np.zeros(1, np.uint64)] * 4, (0, 0))]  # Random123's known answer
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _PHILOX_W[0]) & 0xFFFFFFFF, (k1 + _PHILOX_W[1]) & 0xFFFFFFFF
        p0, p1 = c0 * _PHILOX_M[0], c2 * _PHILOX_M[1]  # 32 x 32 -> 64-bit products, exact in uint64
        c0, c1, c2, c3 = ((p1 >> _SHIFT32) ^ c1 ^ np.uint64(k0), p1 & _LOW32,
                          (p0 >> _SHIFT32) ^ c3 ^ np.uint64(k1), p0 & _LOW32)
    return c0, c1, c2, c3


class PhiloxNormal:
    """Standard normal draws as ``torch.randn`` makes them on an NVIDIA GPU, computed on the CPU (A1111's "NV").

    Element ``i`` of the ``n``-th draw of a generator seeded with ``seed`` is curand's Box–Muller sine of the first
    two words of Philox4x32-10 with key ``seed`` and counter ``(n, 0, i, 0)``, in double precision from curand's
    single-precision constants, rounded to float32 (as A1111's emulation computes it; CUDA's fast float32 math
    differs in the last bits). This is the mapping of PyTorch's CUDA kernel while a tensor fits in one pass of the
    GPU's threads (multiprocessors x threads per multiprocessor: 270,336 numbers on an H100, 43,008 on an RTX 3060,
    whose SDXL 1024x1024 latents, 65,536 numbers, are drawn differently on the GPU from element 43,008 on).

    >>> PhiloxNormal(0).randn((4,))
    tensor([-0.9247, -0.4253, -2.6438,  0.1452])
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0  # draws so far: one counter step per draw

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64))
        zeros = np.zeros(n, dtype=np.uint64)
        index = np.arange(n, dtype=np.uint64)
        w0, w1, _, _ = philox4x32((zeros + np.uint64(self.offset), zeros, index, zeros),
                                  (self.seed & 0xFFFFFFFF, self.seed >> 32))
        self.offset += 1
        u = w0.astype(np.float64) * _2POW32_INV + _2POW32_INV / 2  # in (0, 1): log(u) is finite
        v = w1.astype(np.float64) * _2POW32_INV_2PI + _2POW32_INV_2PI / 2
        z = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return torch.from_numpy(z.astype(np.float32).reshape(shape))


class TorchNormal:
    """Standard normal draws from a ``torch.Generator`` on ``device`` seeded with ``seed``."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(int(seed))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(int(s) for s in shape), generator=self.generator, device=self.device)


def gpu_is_emulated(source: str, device: torch.device | str | None) -> bool:
    """True when RNG source "GPU" has no CUDA device to draw on and uses the NV emulation."""
    return resolve_randn_source(source) == "GPU" and (device is None or torch.device(device).type != "cuda")


def create_generator(seed: int, source: str = DEFAULT_RANDN_SOURCE,
                     device: torch.device | str | None = None) -> TorchNormal | PhiloxNormal:
    """One image's generator for an RNG source: ``.randn(shape)`` gives its next draw.

    "GPU" draws on ``device`` when it is a CUDA device, and emulates NVIDIA's generator otherwise.
    """
    source = resolve_randn_source(source)
    if source == "CPU":
        return TorchNormal(seed, "cpu")
    if source == "GPU" and not gpu_is_emulated(source, device):
        return TorchNormal(seed, device)
    return PhiloxNormal(seed)


def randn(seed: int, shape: Sequence[int], generator: torch.Generator | TorchNormal | PhiloxNormal | None = None,
          source: str = DEFAULT_RANDN_SOURCE, device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise from ``generator`` (a torch CPU generator or one of :func:`create_generator`'s), or
    the first draw of a fresh generator seeded with ``seed`` for ``source``."""
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device)
    if generator is None:
        generator = create_generator(seed, source, device)
    return generator.randn(shape)


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
    """Per-image generators: ``first()`` is the initial noise, each later call the next draw.

    ``shape`` is one image's latent shape ``(C, H, W)``. ``seed_resize_from`` is ``(w, h)`` in pixels or None.
    ``source`` is the RNG source ("CPU", "GPU" or "NV"); ``device`` the CUDA device "GPU" draws on (without
    one, "GPU" is emulated). Draws come back on the CPU, or on the CUDA device for "GPU" there.
    Calling the object (``noise(sigma, sigma_next)``) returns the next draw, so it is a sampler noise source.
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None,
                 downscale: int = 8, source: str = DEFAULT_RANDN_SOURCE, device: torch.device | str | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.source, self.device = resolve_randn_source(source), device
        self.noise_shape = self.shape
        if seed_resize_from and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
            w, h = seed_resize_from
            self.noise_shape = (self.shape[0], int(h) // downscale, int(w) // downscale)
        self.generators = [create_generator(s, self.source, device) for s in self.seeds]
        self.draws = 0

    def _fresh(self, seed: int, shape: Sequence[int]) -> torch.Tensor:
        return randn(seed, shape, source=self.source, device=self.device)

    def first(self) -> torch.Tensor:
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            resized = self.noise_shape != self.shape
            noise = self._fresh(seed, self.noise_shape) if resized else generator.randn(self.shape)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, self._fresh(subseed, self.noise_shape))
            if resized:
                noise = paste_centred(noise, self.shape, generator.randn(self.shape))
            xs.append(noise)
        self.draws = 1
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        if self.draws == 0:
            return self.first()
        self.draws += 1
        return torch.stack([g.randn(self.shape) for g in self.generators])

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return self.next()


# ------------------------------------------------------------------------------------------ Brownian trees

# torchsde draws a tree node's normals with a module function ``_randn(size, dtype, device, seed)``. A1111 replaces
# it so that the nodes' normals come from its RNG source (sd_samplers_common.replace_torchsde_browinan). We install
# one replacement that does the same for the trees built and queried inside :class:`BrownianNoise` and leaves every
# other torchsde user (and the "CPU" source, which gives torchsde's own numbers) on torchsde's function.
_TREE_RANDN: contextvars.ContextVar[Callable[[int, Sequence[int]], torch.Tensor] | None] = contextvars.ContextVar(
    "nbdiffuse_tree_randn", default=None)


def _install_tree_randn() -> None:
    from torchsde._brownian import brownian_interval

    original = brownian_interval._randn
    if getattr(original, "_nbdiffuse", False):
        return

    def tree_randn(size, dtype, device, seed):
        draw = _TREE_RANDN.get()
        if draw is None:
            return original(size, dtype, device, seed)
        return draw(int(seed), size).to(device=device, dtype=dtype)

    tree_randn._nbdiffuse = True
    brownian_interval._randn = tree_randn


class BrownianNoise:
    """Step noise from one Brownian tree per image (torchsde), seeded with the image's seed: k-diffusion's
    ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds)``, number for number.

    ``noise(sigma, sigma_next)`` returns the Brownian increment between the two sigmas divided by the square root
    of their distance, so the same seed gives the same noise whatever the step count. ``sigma_min`` and
    ``sigma_max`` are the smallest non-zero and the largest sigma of the *whole* schedule (A1111 builds the trees
    from it also when an img2img or hires pass runs only its tail). The trees live on the CPU; their normals come
    from ``source`` ("CPU": torchsde's own CPU generator, as in A1111; "NV", and "GPU" without CUDA: the NV
    emulation; "GPU" on CUDA: a CUDA generator), seeded with torchsde's per-node seeds as A1111 does.
    """

    _TOL_DIGITS = 6  # torchsde's BrownianTree rounds its ends and query times to tol=1e-6

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], sigma_min, sigma_max,
                 source: str = DEFAULT_RANDN_SOURCE, device: torch.device | str | None = None):
        import torchsde

        _install_tree_randn()
        self.source, self.device = resolve_randn_source(source), device
        # k-diffusion keeps the ends as tensors of the schedule's dtype; torchsde turns them into rounded floats.
        t0, t1 = torch.as_tensor(sigma_min).cpu(), torch.as_tensor(sigma_max).cpu()
        if t0 > t1:
            t0, t1 = t1, t0
        self.start, self.end = round(float(t0), self._TOL_DIGITS), round(float(t1), self._TOL_DIGITS)
        w0 = torch.zeros(tuple(int(s) for s in shape))
        with self._tree_normals():
            self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(s)) for s in seeds]

    @contextlib.contextmanager
    def _tree_normals(self):
        """Inside this context torchsde draws the trees' normals from our RNG source."""
        draw = None
        if self.source != "CPU":
            def draw(seed, size):
                return create_generator(seed, self.source, self.device).randn(size).cpu()
        token = _TREE_RANDN.set(draw)
        try:
            yield
        finally:
            _TREE_RANDN.reset(token)

    def _clamp(self, t: float) -> float:
        # What torchsde does to a query time outside [t0, t1] (rounded ends), minus its warning: same numbers.
        return min(max(t, self.start), self.end)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma).cpu(), torch.as_tensor(sigma_next).cpu()
        lo, hi, sign = (sigma, sigma_next, 1.0) if sigma < sigma_next else (sigma_next, sigma, -1.0)
        with self._tree_normals():
            w = torch.stack([tree(self._clamp(float(lo)), self._clamp(float(hi))) for tree in self.trees])
        return w * sign / (sigma_next - sigma).abs().sqrt()
