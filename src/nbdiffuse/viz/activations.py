"""Figures of what a :class:`~nbdiffuse.inspect.probes.Probe` captured: channel maps and norms over steps."""

from __future__ import annotations

import math

import torch


def _spatial(t: torch.Tensor) -> torch.Tensor:
    """One image's activation as ``(channels, H, W)``: 4-D ``(C, H, W)`` as is, tokens ``(HW, C)`` made square."""
    if t.ndim == 3:
        return t
    if t.ndim == 2:
        side = int(round(math.sqrt(t.shape[0])))
        if side * side == t.shape[0]:
            return t.T.reshape(t.shape[1], side, side)
    raise ValueError(f"cannot show an activation of shape {tuple(t.shape)} as channel maps")


def activation_grid(probe, name: str, step: int | None = None, *, which: str = "cond", image: int = 0,
                    channels: int = 16, cmap: str = "RdBu_r"):
    """A matplotlib figure for one module: the first ``channels`` channel maps at ``step`` (default: the first
    captured) of ``which`` (``"cond"``, ``"uncond"`` or ``"diff"`` = cond − uncond), and the RMS of the cond half,
    the uncond half and their difference over the captured steps.

    >>> with session.probe("Transformer2DModel") as probe:  # doctest: +SKIP
    ...     session.txt2img(prompt="a red circle", steps=20)
    >>> activation_grid(probe, probe.names[0], step=10)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if name not in probe.activations:
        raise KeyError(f"{name!r} was not probed; probed: {list(probe.activations)}")
    per_step = probe.activations[name]
    if not per_step:
        raise ValueError(f"nothing captured for {name!r} (did the job run inside the `with` block?)")
    step = min(per_step) if step is None else step
    if step not in per_step:
        raise KeyError(f"step {step} not captured for {name!r}; captured steps: {sorted(per_step)}")
    a = per_step[step]
    if which == "diff":
        if a["uncond"] is None:
            raise ValueError("no uncond half was captured (CFG scale 1?)")
        t = a["cond"][image].float() - a["uncond"][image].float()
    else:
        if a[which] is None:
            raise ValueError(f"no {which} half was captured")
        t = a[which][image].float()
    maps = _spatial(t)[:channels]
    cols = min(8, maps.shape[0])
    rows = math.ceil(maps.shape[0] / cols)
    fig = plt.figure(figsize=(1.4 * cols, 1.4 * rows + 2.4))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1] * rows + [1.6])
    limit = float(maps.abs().max()) or 1.0
    for k in range(maps.shape[0]):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(maps[k].numpy(), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"ch {k}", fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(grid[rows, :])
    for kind, style in (("cond", "o-"), ("uncond", "s-"), ("diff", "^:")):
        norms = probe.norms(name, kind)
        if norms:
            ax.plot([s + 1 for s in norms], list(norms.values()), style, ms=3, label=f"rms({kind})")
    ax.axvline(step + 1, color="grey", lw=0.8)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    fig.suptitle(f"{name} ({probe.capture}), step {step + 1}, {which}", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig
