"""No host sync per step: on a GPU, reading a device tensor's value on the host (``.item()``, ``float(t)``,
``bool(t)``, ``.cpu()``, ``.tolist()``) waits for every queued kernel, so one per step stalls the GPU every step.

The run is on the CPU; :class:`OnDevice` stands for "this tensor lives on the GPU": the UNet's outputs are marked,
the mark spreads through every op (``__torch_function__``), and any host read of a marked tensor is counted with
where it happened. Sigmas stay plain (the samplers keep them on the CPU, as the GPU path does). A job of N steps
and one of M steps must count the same: a few reads per job are fine (the final NaN check, saving), one per step
is not.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from conftest import drive

from nbdiffuse.sampling.registry import SAMPLERS

_HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
_HOST_FUNCS = {getattr(torch.Tensor, name): name for name in _HOST_READS}
# DPM adaptive accepts or rejects each try from its error norm on the host: a sync per try by design.
_SYNCING_BY_DESIGN = {"DPM adaptive"}


class OnDevice(torch.Tensor):
    """A CPU tensor standing for a device tensor; host reads of it are recorded in ``reads``."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _HOST_FUNCS:
            frame = traceback.extract_stack(limit=3)[0]
            cls.reads.append(f"{_HOST_FUNCS[func]} at {frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}")
        return super().__torch_function__(func, types, args, kwargs or {})


def _plain(v):
    return v.as_subclass(torch.Tensor) if isinstance(v, OnDevice) else v


def _marked(v):
    return v.as_subclass(OnDevice) if isinstance(v, torch.Tensor) else v


class _MarkOutputs:
    """Forward hooks: the UNet computes on plain tensors (its insides are not ours to count) and returns marked ones."""

    def __init__(self, unet):
        self.unet = unet

    def __enter__(self):
        def pre(module, args, kwargs):
            return tuple(_plain(a) for a in args), {k: _plain(v) for k, v in kwargs.items()}

        def post(module, args, kwargs, out):
            return tuple(_marked(o) for o in out) if isinstance(out, tuple) else _marked(out)

        self.handles = [self.unet.register_forward_pre_hook(pre, with_kwargs=True),
                        self.unet.register_forward_hook(post, with_kwargs=True)]
        OnDevice.reads = []
        return OnDevice.reads

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _reads_per_job(session, steps, **params) -> list[str]:
    with _MarkOutputs(session.model.unet) as reads:
        session.txt2img(prompt="a red circle", negative_prompt="blue", steps=steps, seed=1, width=64, height=64,
                        **params)
    return list(reads)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ 2M SDE", "Heun", "DDIM", "UniPC"])
def test_a_job_reads_no_device_tensor_per_step(session, sampler):
    few = _reads_per_job(session, 2, sampler_name=sampler)
    more = _reads_per_job(session, 4, sampler_name=sampler)
    assert len(more) == len(few), f"{sampler}: {len(more) - len(few)} more host reads for 2 more steps: {more}"


class _Gaussian:
    """An exact denoiser for data N(0.5, 0.7^2) whose output is marked as a device tensor."""

    def __call__(self, x, sigma):
        s = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.device)
        return _marked((0.5 * s**2 + 0.49 * _plain(x)) / (s**2 + 0.49))


def _sampler_reads(name, steps):
    from nbdiffuse.sampling.schedules import karras

    spec = SAMPLERS[name]
    sigmas = spec.grid(steps, torch.linspace(0.03, 14.6, 1000)).sigmas if spec.grid is not None \
        else karras(steps, 0.03, 14.6)
    gen = torch.Generator().manual_seed(0)
    x = _marked(torch.randn(2, 4, 8, 8, generator=gen) * sigmas[0])

    def noise(sigma=None, sigma_next=None):
        return _marked(torch.randn(2, 4, 8, 8, generator=gen))

    options = dict(spec.options)
    if spec.needs_uncond:
        options["uncond"] = lambda: None
    OnDevice.reads = []
    drive(spec.func(_Gaussian(), x, sigmas, noise=noise, **options))
    return list(OnDevice.reads)


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - _SYNCING_BY_DESIGN))
def test_no_sampler_reads_a_device_tensor_per_step(name):
    few, more = _sampler_reads(name, 4), _sampler_reads(name, 8)
    assert len(more) == len(few), f"{name}: host reads per step: {sorted(set(more))}"
