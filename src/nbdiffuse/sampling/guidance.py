"""Classifier-free guidance as a closure around the denoiser, with A1111's prompt schedules and ``AND``.

Conditioning is data, not state: a :class:`Cond` is one text's encoding, a *schedule* is A1111's list of
``(end_step, Cond)`` (the text in force up to and including ``end_step``), and the positive side is a list of
``(schedule, weight)`` parts (``AND``). The guided model counts its own calls, exactly as A1111's
``CFGDenoiser`` does, which is why second-order samplers count double in prompt schedules.

``denoised = uncond + sum_i w_i * cfg_scale * (cond_i - uncond)``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .denoiser import Denoiser


@dataclass(frozen=True)
class Cond:
    """One text encoded for the UNet: ``context`` (tokens, features) and, for SDXL, ``pooled`` (features,).

    :mod:`nbdiffuse.prompts.conditioning` makes them; guidance and samplers only consume them, so the type lives here.
    """

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return int(self.context.shape[-2])


Schedule = Sequence[tuple[int, Cond]]


def cond_at(schedule: Schedule, step: int) -> Cond:
    """The entry in force at ``step`` (A1111's ``reconstruct_cond_batch``: the first with ``step <= end``)."""
    for end, cond in schedule:
        if step <= end:
            return cond
    return schedule[-1][1]


def pad_context(context: torch.Tensor, tokens: int, empty: torch.Tensor | None) -> torch.Tensor:
    """Pad a ``(tokens, features)`` context to ``tokens`` by repeating the empty prompt's 77-token chunk."""
    missing = tokens - context.shape[-2]
    if missing <= 0:
        return context
    if empty is None or missing % empty.shape[-2]:
        raise ValueError(f"cannot pad a {context.shape[-2]}-token conditioning to {tokens} tokens")
    return torch.cat([context, empty.repeat(missing // empty.shape[-2], 1)], dim=-2)


class CFGDenoiser:
    """``model(x, sigma) -> denoised`` with guidance; one instance per job.

    ``conds`` are the positive parts ``[(schedule, weight), ...]``; ``uncond`` is the negative prompt's
    schedule; ``time_ids`` (SDXL) is the ``(6,)`` size/crop conditioning; ``empty`` is the empty prompt's
    context, used to pad conditionings of different lengths as A1111 does; ``image_cond`` (inpainting models) is
    the ``(batch or 1, 5, h, w)`` mask + masked-image latents, the same for an image's positive and negative rows
    (A1111's ``image_uncond = image_cond``). ``uncond_time_ids``: the negative rows' own time ids where they differ
    (the SDXL refiner's aesthetic score: 6.0 for the prompt, 2.5 for the negative). After each call ``last_cond``,
    ``last_uncond`` hold the (combined positive / negative) predictions, for hooks and CFG++.
    """

    def __init__(self, denoiser: Denoiser, conds: Sequence[tuple[Schedule, float]], uncond: Schedule,
                 cfg_scale: float, *, time_ids: torch.Tensor | None = None, empty: torch.Tensor | None = None,
                 need_uncond: bool = False, image_cond: torch.Tensor | None = None,
                 uncond_time_ids: torch.Tensor | None = None):
        self.denoiser = denoiser
        self.conds = list(conds)
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)
        self.time_ids = time_ids
        self.empty = empty
        self.image_cond = image_cond
        self.uncond_time_ids = uncond_time_ids
        # cfg 1 with a single part is the positive prediction alone: skip the negative batch half.
        self.skip_uncond = (self.cfg_scale == 1.0 and len(self.conds) == 1 and self.conds[0][1] == 1.0
                            and not need_uncond)
        self.step = 0
        self.last_cond: torch.Tensor | None = None
        self.last_uncond: torch.Tensor | None = None

    def current(self) -> tuple[list[tuple[Cond, float]], Cond]:
        """The conditionings in force at this call."""
        return [(cond_at(s, self.step), w) for s, w in self.conds], cond_at(self.uncond, self.step)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        parts, uncond = self.current()
        entries = [c for c, _ in parts] + ([] if self.skip_uncond else [uncond])
        tokens = max(c.tokens for c in entries)
        contexts = [pad_context(c.context, tokens, self.empty) for c in entries]
        n, b = len(entries), x.shape[0]
        # image-major rows (image 0's n entries, then image 1's, ...), run n rows per UNet call: image i of a batch
        # then gets exactly the computation it gets alone (a batched call rounds differently from a single one)
        x_in = x.repeat_interleave(n, dim=0)
        sigma_in = sigma.reshape(-1).expand(b).repeat_interleave(n)
        context = torch.stack(contexts).repeat(b, 1, 1)
        added = None
        if entries[0].pooled is not None:
            pooled = torch.stack([c.pooled for c in entries]).repeat(b, 1)
            ids = self.time_ids.reshape(1, -1)
            if self.uncond_time_ids is not None and not self.skip_uncond:  # one row per entry, the negative last
                ids = torch.cat([ids.expand(n - 1, -1), self.uncond_time_ids.reshape(1, -1).to(ids)])
                time_ids = ids.repeat(b, 1)
            else:
                time_ids = ids.repeat(n * b, 1)
            added = {"text_embeds": pooled, "time_ids": time_ids}
        kwargs = {}
        if self.image_cond is not None:
            kwargs["image_cond"] = self.image_cond.expand(b, -1, -1, -1).repeat_interleave(n, dim=0)
        out = self.denoiser(x_in, sigma_in, context, added, rows_per_call=n, **kwargs)
        out = out.reshape(b, n, *out.shape[1:]).unbind(1)
        self.step += 1
        if self.skip_uncond:
            self.last_cond, self.last_uncond = out[0], None
            return out[0]
        u = out[-1]
        denoised = u.clone()
        for (_, weight), c in zip(parts, out[:-1]):
            denoised += (c - u) * (weight * self.cfg_scale)
        self.last_cond = out[0] if len(parts) == 1 else sum(w * c for (_, w), c in zip(parts, out[:-1]))
        self.last_uncond = u
        return denoised
