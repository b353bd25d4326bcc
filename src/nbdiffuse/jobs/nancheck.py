"""NaN/inf in the latents: seen at the step it appears, on every element, without waiting for the GPU every step.

:class:`FiniteWatch` checks each step's latent with one ``torch.isfinite(x).all()`` on the device and keeps the
first bad step there; the host learns it through a non-blocking copy into pinned memory that it reads only once
the copy is done (a CUDA event), so the loop never waits for the GPU (on the CPU the copy is done at once). A
failure is seen at the step it happens on the CPU, one or two steps later on a GPU, and always named by the step
where it appeared. The job then stops with :class:`NonFiniteLatents`: no black image, and a message that names
the step, the component and what to try.
"""

from __future__ import annotations

import torch

from ..models.precision import dtype_name


class NonFiniteLatents(RuntimeError):
    """The latents hold NaN/inf: the job stopped at the step where they appeared (the message says what to try)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class FiniteWatch:
    """Records the first step whose latent holds NaN/inf, on the latent's device.

    >>> watch = FiniteWatch(torch.device("cpu"))
    >>> watch.see(torch.zeros(2), 0), watch.see(torch.tensor([1.0, float("nan")]), 1), watch.see(torch.zeros(2), 2)
    (None, 1, 1)
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.host = torch.full((), -1, dtype=torch.int64, pin_memory=self.cuda)
        self.copied = None  # the CUDA event of the copy into ``host`` in flight

    def see(self, x: torch.Tensor, i: int) -> int | None:
        """Note step ``i``'s latent ``x``; the first bad step once the host knows it, else None."""
        bad = ~torch.isfinite(x).all()
        self.first = torch.where(bad & (self.first < 0), i, self.first)
        if self.copied is not None and not self.copied.query():
            return None  # the last copy is still queued behind the GPU's work: look again next step
        found = int(self.host)  # pinned host memory the finished copy wrote: no wait for the device
        if found >= 0:
            return found
        self.host.copy_(self.first, non_blocking=self.cuda)
        if self.cuda:
            self.copied = torch.cuda.Event()
            self.copied.record()
            return None
        found = int(self.host)
        return found if found >= 0 else None

    def first_bad(self, x: torch.Tensor | None = None, i: int = -1) -> int | None:
        """The first bad step, after noting the final latent ``x`` as step ``i``: waits for the device (once per
        pass)."""
        if x is not None:
            self.first = torch.where(~torch.isfinite(x).all() & (self.first < 0), i, self.first)
        found = int(self.first.cpu())
        return found if found >= 0 else None


def unet_failure(step: int, total: int, dtype: torch.dtype, pass_name: str = "txt2img", *,
                 cfg_scale: float | None = None, cond_ok: bool = True, init_ok: bool = True) -> str:
    """What to say when the latents turned NaN/inf at ``step`` (0-based): the component, and what to try."""
    where = f"at step {step + 1} of {total} of the {pass_name} pass"
    if not init_ok:
        return (f"The init latents hold NaN/inf values (noticed {where}): the VAE encoder overflowed on the init "
                "image; try Session(vae_dtype=torch.float32) or another VAE. The job stopped there.")
    if not cond_ok:
        return (f"The text encoder's output holds NaN/inf values (noticed {where}): try "
                "Session(text_encoder_dtype=torch.float32) or less extreme emphasis weights. The job stopped there.")
    if dtype == torch.float32:
        return (f"The UNet produced NaN/inf latents {where} although it ran in float32, so precision is not the "
                "cause: look at what feeds the model (an extreme CFG scale, LoRA weight or emphasis, a hook's "
                "replacement latent, a broken model file). The job stopped there.")
    cfg = f" (it is {cfg_scale:g})" if cfg_scale is not None else ""
    return (f"The UNet produced NaN/inf latents {where} in {dtype_name(dtype)}: the job stopped there. Try "
            "Session(upcast_attention=True), Session(unet_dtype=torch.bfloat16) (float32's range) or "
            f"Session(dtype=torch.float32), or a lower CFG scale{cfg}.")


def all_finite(tensors) -> bool:
    """Whether every tensor in a nested list/tuple/dict/object-with-tensors holds only finite values (on failure
    only: it waits for the device)."""
    if isinstance(tensors, torch.Tensor):
        return not tensors.is_floating_point() or bool(torch.isfinite(tensors).all())
    if isinstance(tensors, dict):
        return all(all_finite(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return all(all_finite(v) for v in tensors)
    if hasattr(tensors, "__dict__"):
        return all(all_finite(v) for v in vars(tensors).values())
    return True
