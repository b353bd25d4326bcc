"""The picture that explains why samplers and schedules differ: x and x0 across the steps of one generation.

>>> from nbdiffuse.inspect import Recorder
>>> from nbdiffuse.viz.trajectory import trajectory
>>> rec = Recorder()
>>> r = session.txt2img(prompt="a red circle", steps=20, hooks=[rec])   # doctest: +SKIP
>>> trajectory(rec, bundle=session.model)                               # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np


def _states(states_or_recorder) -> list:
    states = getattr(states_or_recorder, "states", states_or_recorder)
    states = list(states)
    if not states:
        raise ValueError("no steps recorded: pass a Recorder used as a hook in a finished job, or StepStates")
    return states


def _rms(t) -> float:
    return float(t.float().pow(2).mean().sqrt())


def trajectory_stats(states_or_recorder, image: int = 0) -> list[dict]:
    """Per recorded step: ``i``, ``sigma``, ``sigma_next``, ``x_std`` (latent after the step), ``x0_std``
    (the prediction), ``eps_rms`` (the noise prediction ``(x_in - x0) / sigma``, where ``x_in`` is the previous
    recorded step's ``x``: only for consecutive steps, else ``nan``) and ``guidance_rms`` (RMS of
    ``cond - uncond`` in x0 space; ``nan`` without an uncond prediction).

    >>> [round(row["sigma"], 2) for row in trajectory_stats(rec)][:3]  # doctest: +SKIP
    [14.61, 10.75, 7.84]
    """
    states = _states(states_or_recorder)
    rows = []
    prev = None
    for s in states:
        x = s.x[image] if s.x is not None else None
        x0 = s.denoised[image] if s.denoised is not None else None
        eps = math.nan
        if prev is not None and prev.i + 1 == s.i and prev.x is not None and x0 is not None and s.sigma > 0:
            eps = _rms((prev.x[image].to(x0.device) - x0) / s.sigma)
        cond, uncond = s.extra.get("cond"), s.extra.get("uncond")
        guidance = _rms(cond[image] - uncond[image]) if cond is not None and uncond is not None else math.nan
        rows.append({"i": s.i, "sigma": s.sigma, "sigma_next": s.sigma_next,
                     "x_std": float(x.float().std()) if x is not None else math.nan,
                     "x0_std": float(x0.float().std()) if x0 is not None else math.nan,
                     "eps_rms": eps, "guidance_rms": guidance})
        prev = s
    return rows


def trajectory(states_or_recorder, *, bundle=None, arch: str | None = None, image: int = 0, columns: int = 8,
               title: str | None = None):
    """A matplotlib figure: cheap previews of ``x`` (top row) and ``x0`` (second row) at up to ``columns`` evenly
    spaced steps, then the sigma schedule, latent std (x and x0), noise-prediction RMS and cond−uncond RMS per step.

    ``states_or_recorder``: a :class:`~nbdiffuse.inspect.previews.Recorder` or a list of StepStates (CPU copies).
    ``bundle``/``arch``: which cheap-preview matrix (default SD1's).

    >>> from nbdiffuse.inspect import Recorder  # doctest: +SKIP
    >>> rec = Recorder()  # doctest: +SKIP
    >>> session.txt2img(prompt="a red circle", steps=20, hooks=[rec])  # doctest: +SKIP
    >>> trajectory(rec, bundle=session.model)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    from ..inspect.previews import cheap_preview

    states = _states(states_or_recorder)
    stats = trajectory_stats(states, image)
    matrix = bundle if bundle is not None else (arch or "sd1")
    picks = sorted({round(k) for k in np.linspace(0, len(states) - 1, min(columns, len(states)))})
    ncols = max(len(picks), 4)
    fig = plt.figure(figsize=(1.6 * ncols, 1.6 * 2 + 2.6))
    grid = fig.add_gridspec(3, ncols, height_ratios=[1, 1, 1.6])
    for col, k in enumerate(picks):
        s = states[k]
        for row, (latent, label) in enumerate(((s.x, "x"), (s.denoised, "x0"))):
            ax = fig.add_subplot(grid[row, col])
            if latent is not None:
                ax.imshow(cheap_preview(latent[image].float(), matrix), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"step {s.i + 1}\n\u03c3 {s.sigma:.3g}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label)
    steps = [r["i"] + 1 for r in stats]
    half = ncols // 2
    ax = fig.add_subplot(grid[2, :half])
    ax.plot(steps, [r["sigma"] for r in stats], "o-", ms=3, label="\u03c3 (start of step)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("sigma schedule", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[2, half:])
    ax.plot(steps, [r["x_std"] for r in stats], "o-", ms=3, label="std(x)")
    ax.plot(steps, [r["x0_std"] for r in stats], "o-", ms=3, label="std(x0)")
    ax.plot(steps, [r["eps_rms"] for r in stats], "s--", ms=3, label="rms(noise pred.)")
    ax.plot(steps, [r["guidance_rms"] for r in stats], "^:", ms=3, label="rms(cond\u2212uncond)")
    ax.set_xlabel("step")
    ax.set_title("per-step statistics", fontsize=9)
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
