"""Memory modes (which model components live on the GPU) and VAE tiled decode for large images.

- ``"full"``: every component on the device (the fastest; what A1111 does without flags).
- ``"medvram"``: one large component (each text encoder, the UNet, the VAE) on the device at a time: a component
  moves in when it runs and the resident one moves out (A1111's ``--medvram``, diffusers'
  ``enable_model_cpu_offload``).
- ``"lowvram"``: as medvram, and the UNet is streamed: every resnet, transformer and resampler of its down, mid and
  up blocks is a unit of its own; the UNet's small ends (conv_in, time embedding, conv_out) stay on the device
  (A1111's ``--lowvram``).
- ``"auto"``: one of these, from the device's free memory and the model's size (:func:`choose_memory_mode`).

On the CPU every mode is ``"full"``: the model is in RAM whatever the mode, so there is nothing to move.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

MEMORY_MODES = ("auto", "full", "medvram", "lowvram")
OFFLOAD_DEVICE_TYPES = ("cuda", "xpu")  # devices with memory of their own; elsewhere the modes have no effect
GiB = 2**30
# Room kept free beside the weights for one job's activations, attention and the CUDA workspace. ComfyUI reserves
# 0.8 GB + 0.4 GB (minimum_inference_memory), Forge 1 GB by default; 1.5 GiB also covers a native-size VAE decode
# in half precision (ComfyUI's estimate: 1.1 GB for a 64x64 latent).
RESERVE_BYTES = int(1.5 * GiB)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def component_bytes(bundle) -> dict[str, int]:
    """Bytes of each large component of a bundle: ``unet``, ``vae``, ``text_encoder`` (``text_encoder_2``...)."""
    out = {"unet": module_bytes(bundle.unet), "vae": module_bytes(bundle.vae)}
    for i, te in enumerate(bundle.text_encoders):
        out["text_encoder" + (f"_{i + 1}" if i else "")] = module_bytes(te)
    return out


def choose_memory_mode(free_bytes: int, model_bytes: int, largest_bytes: int, *,
                       reserve: int = RESERVE_BYTES) -> tuple[str, str]:
    """``(mode, why)`` for ``memory="auto"``: ``"full"`` when the whole model fits in ``free_bytes`` with ``reserve``
    to spare, ``"medvram"`` when its largest component does, else ``"lowvram"``.

    >>> GB = 2**30
    >>> choose_memory_mode(20 * GB, 7 * GB, 5 * GB)[0]   # SDXL in fp16 on a 24 GB card
    'full'
    >>> choose_memory_mode(7 * GB, 7 * GB, 5 * GB)       # ... on an 8 GB card
    ('medvram', '7.0 GB free: the model (7.0 GB) does not fit, its largest component (5.0 GB) does')
    >>> choose_memory_mode(4 * GB, 7 * GB, 5 * GB)[0]
    'lowvram'
    """
    free, model, largest = free_bytes / GiB, model_bytes / GiB, largest_bytes / GiB
    if model_bytes + reserve <= free_bytes:
        return "full", f"{free:.1f} GB free, the model needs {model:.1f} GB"
    if largest_bytes + reserve <= free_bytes:
        return "medvram", (f"{free:.1f} GB free: the model ({model:.1f} GB) does not fit, its largest component "
                           f"({largest:.1f} GB) does")
    return "lowvram", f"{free:.1f} GB free: not even the largest component ({largest:.1f} GB) fits with room to run"


def free_memory(device: torch.device) -> int | None:
    """Bytes still free on ``device`` (CUDA: ``mem_get_info``; elsewhere the system's available RAM, which an
    Apple GPU shares); None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryPlan:
    """What a session's ``memory`` setting means for the loaded model: ``requested`` (the setting), ``mode`` (what
    runs: ``"full"``, ``"medvram"`` or ``"lowvram"``) and ``reason`` (why, for ``auto`` and on the CPU).

    >>> str(MemoryPlan("auto", "full", "cpu: the model is in RAM"))
    'memory: full (auto: cpu: the model is in RAM)'
    """

    requested: str
    mode: str
    reason: str = ""

    def __str__(self) -> str:
        why = f"{self.requested}: {self.reason}" if self.requested == "auto" else self.reason
        return f"memory: {self.mode}" + (f" ({why})" if why else "")


def return_freed_heap() -> None:
    """Give the C heap's freed pages back to the OS (glibc's ``malloc_trim``; nothing elsewhere). Without it a
    freed model's many small allocations stay in the process's RSS (0.3-0.5 GB per SDXL switch measured)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def offloads(device: torch.device) -> bool:
    """Whether memory modes mean anything on ``device`` (a device with memory of its own)."""
    return torch.device(device).type in OFFLOAD_DEVICE_TYPES


def check_memory_mode(mode: str) -> str:
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory={mode!r} is not a memory mode: use one of {', '.join(map(repr, MEMORY_MODES))}.")
    return mode


def plan_memory(requested: str, device: torch.device, bundle=None, free_bytes: int | None = None) -> MemoryPlan:
    """The :class:`MemoryPlan` for a ``memory`` setting on ``device`` (with ``bundle`` loaded, for ``auto``).

    >>> plan_memory("medvram", torch.device("cpu"))
    MemoryPlan(requested='medvram', mode='full', reason='medvram has no effect on cpu: the whole model is in RAM')
    """
    check_memory_mode(requested)
    device = torch.device(device)
    if not offloads(device):
        if requested in ("auto", "full"):
            return MemoryPlan(requested, "full", f"{device.type}: the model is in RAM" if requested == "auto" else "")
        return MemoryPlan(requested, "full", f"{requested} has no effect on {device.type}: the whole model is in RAM")
    if requested != "auto":
        return MemoryPlan(requested, requested)
    if bundle is None:
        return MemoryPlan(requested, "full", "no model loaded yet")
    sizes = component_bytes(bundle)
    free = free_bytes if free_bytes is not None else free_memory(device)
    if free is None:
        return MemoryPlan(requested, "full", f"free memory on {device} unknown")
    mode, why = choose_memory_mode(free, sum(sizes.values()), max(sizes.values()))
    return MemoryPlan(requested, mode, why)


# ------------------------------------------------------------------------------------------------- offloading

def _swap_hook_class():
    from accelerate.hooks import CpuOffload

    class SwapIn(CpuOffload):
        """accelerate's ``CpuOffload`` hook (moves its module to the device before it runs, with its inputs), which
        first sends back to the CPU whichever other unit of the group is resident. accelerate's own chaining
        (``prev_module_hook``) names one fixed predecessor, as a diffusers pipeline's order is fixed; our jobs use
        the components in varying order (img2img encodes with the VAE first, hires fix decodes between passes, a
        Debugger or probe can call any of them), so the resident one is looked up instead: A1111's
        ``send_me_to_gpu``."""

        def __init__(self, offload: Offload, name: str):
            super().__init__(execution_device=offload.device)
            self.offload, self.name = offload, name

        def pre_forward(self, module, *args, **kwargs):
            self.offload._swap_in(self.name, module)
            return super().pre_forward(module, *args, **kwargs)

    return SwapIn


def _unet_units(unet: torch.nn.Module) -> tuple[list[tuple[str, torch.nn.Module]], list[torch.nn.Module]]:
    """``(streamed units, parts kept on the device)`` of a diffusers UNet for lowvram: each child of every down, mid
    and up block (a ModuleList's elements one by one), and the UNet's other children (conv_in, time and class
    embeddings, conv_norm_out, conv_out: small, used once per call)."""
    units, kept = [], []
    for name, child in unet.named_children():
        if name not in ("down_blocks", "mid_block", "up_blocks"):
            kept.append(child)
            continue
        blocks = child if isinstance(child, torch.nn.ModuleList) else [child]
        for b, block in enumerate(blocks):
            prefix = f"{name}.{b}" if isinstance(child, torch.nn.ModuleList) else name
            for part_name, part in block.named_children():
                parts = list(enumerate(part)) if isinstance(part, torch.nn.ModuleList) else [(None, part)]
                for j, module in parts:
                    units.append((f"{prefix}.{part_name}" + (f".{j}" if j is not None else ""), module))
    return units, kept


class Offload:
    """medvram/lowvram on a bundle: accelerate ``CpuOffload`` hooks that keep exactly one unit (a text encoder, the
    UNet or one UNet block, the VAE) on ``device`` and the others on the CPU. ``moves`` lists the units moved in,
    in order (tests and benchmarks read it); ``remove()`` takes the hooks away and leaves every unit on the CPU.

    >>> from nbdiffuse.models import tiny_sd1
    >>> bundle = tiny_sd1()
    >>> offload = Offload(bundle, "medvram", torch.device("cpu"))  # on the CPU nothing moves, the hooks still run
    >>> offload.units()
    ['text_encoder', 'unet', 'vae']
    >>> offload.remove()
    """

    def __init__(self, bundle, mode: str, device: torch.device):
        from accelerate.hooks import UserCpuOffloadHook, add_hook_to_module

        if mode not in ("medvram", "lowvram"):
            raise ValueError(f"Offload is for medvram and lowvram, not {mode!r}")
        self.mode, self.device = mode, torch.device(device)
        self.resident: torch.nn.Module | None = None
        self.moves: list[str] = []
        named = [("text_encoder" + (f"_{i + 1}" if i else ""), te) for i, te in enumerate(bundle.text_encoders)]
        if mode == "lowvram":
            blocks, kept = _unet_units(bundle.unet)
            named += [(f"unet.{name}", module) for name, module in blocks]
        else:
            named.append(("unet", bundle.unet))
        named.append(("vae", bundle.vae))
        if mode == "lowvram":
            bundle.unet.to("cpu")  # the streamed blocks start on the CPU; only the small ends go to the device
            for module in kept:
                module.to(self.device)
        hook_class = _swap_hook_class()
        self._hooks: list[tuple[str, UserCpuOffloadHook]] = []
        for name, module in named:
            hook = hook_class(self, name)
            add_hook_to_module(module, hook, append=True)  # init_hook: the module goes to the CPU
            self._hooks.append((name, UserCpuOffloadHook(module, hook)))

    def units(self) -> list[str]:
        return [name for name, _ in self._hooks]

    def _swap_in(self, name: str, module: torch.nn.Module) -> None:
        if self.resident is module:
            return
        if self.resident is not None:
            self.resident.to("cpu")
        self.resident = module
        self.moves.append(name)

    def offload_all(self) -> None:
        """Send the resident unit back to the CPU (the device is then free of weights but for lowvram's ends)."""
        if self.resident is not None:
            self.resident.to("cpu")
            self.resident = None

    def remove(self) -> None:
        """Remove the hooks; every unit is left on the CPU (move the bundle where it should go next)."""
        from accelerate.hooks import remove_hook_from_module

        self.offload_all()
        for _, hook in self._hooks:
            remove_hook_from_module(hook.model)
        self._hooks = []


# ------------------------------------------------------------------------------------------------- VAE tiling

VAE_TILING = ("auto", True, False)


def vae_decode_bytes(latent_shape, dtype: torch.dtype) -> int:
    """Memory a whole-image VAE decode may take for one latent ``(..., h, w)``: ComfyUI's estimate
    ``2178 * h * w * 64 * bytes per element`` (about 1.1 GB for a 64x64 latent in half precision)."""
    h, w = latent_shape[-2:]
    return 2178 * int(h) * int(w) * 64 * (torch.finfo(dtype).bits // 8)


def wants_vae_tiling(vae, latent_shape, setting: bool | str = "auto", free_bytes: int | None = None) -> bool:
    """Whether to decode a latent of ``latent_shape`` in tiles: ``setting=False`` never (A1111's decode, exact),
    ``True`` whenever the latent is larger than the VAE's tile, ``"auto"`` only when it is larger than a tile *and*
    the whole-image decode (:func:`vae_decode_bytes`) would not fit in ``free_bytes`` (default: the VAE's device's
    free memory), where the untiled decode would run out of memory. VAEs without diffusers' tiling never tile.

    >>> from nbdiffuse.models import tiny_sd1
    >>> vae = tiny_sd1().vae
    >>> wants_vae_tiling(vae, (1, 4, 8, 8), True), wants_vae_tiling(vae, (1, 4, 300, 300), "auto", free_bytes=2**40)
    (False, False)
    >>> wants_vae_tiling(vae, (1, 4, 300, 300), "auto", free_bytes=2**30)
    True
    """
    if setting not in VAE_TILING:
        raise ValueError(f"vae_tiling={setting!r}: use 'auto', True or False")
    if setting is False or not hasattr(vae, "tile_latent_min_size"):
        return False
    h, w = latent_shape[-2:]
    if max(int(h), int(w)) <= vae.tile_latent_min_size:
        return False
    if setting is True:
        return True
    param = next(vae.parameters())
    free = free_bytes if free_bytes is not None else free_memory(param.device)
    return free is not None and vae_decode_bytes(latent_shape, param.dtype) > free


@contextlib.contextmanager
def vae_tiling(vae, on: bool) -> Iterator[None]:
    """Within the block, the VAE's ``decode`` works in tiles (diffusers' ``use_tiling``) when ``on``."""
    if not on:
        yield
        return
    before = vae.use_tiling
    vae.use_tiling = True
    try:
        yield
    finally:
        vae.use_tiling = before


__all__ = ["MEMORY_MODES", "MemoryPlan", "Offload", "check_memory_mode", "choose_memory_mode", "component_bytes",
           "free_memory", "module_bytes", "offloads", "plan_memory", "vae_decode_bytes", "vae_tiling",
           "wants_vae_tiling"]
