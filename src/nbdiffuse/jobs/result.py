"""What a job returns: images, infotexts, seeds, latents, parameters and timings; shows itself in a notebook."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..io.inline import OUTPUT_BUDGET, data_uri
from .params import GenerationParams


@dataclass
class Result:
    """Images of one job with everything needed to reproduce each of them.

    ``infotexts[i]`` is image ``i``'s A1111 parameters text (also in its PNG); ``seeds``/``subseeds`` are per image;
    ``latents`` are the final latents ``(N, C, H/8, W/8)`` on the CPU; ``paths`` where the images were saved
    (``None`` when saving is off); ``interrupted`` tells whether the job was stopped early, and ``warnings`` says
    anything the user should know about these images (NaNs recovered, ignored prompt tags, ...). An inpainting job
    keeps its masks in ``inpaint`` (:func:`nbdiffuse.viz.show_mask` draws them).

    >>> result = session.txt2img(prompt="a red circle", seed=1, batch_size=2)  # doctest: +SKIP
    >>> result.seeds, result.latents.shape, result.paths[0]  # doctest: +SKIP
    ([1, 2], torch.Size([2, 4, 8, 8]), PosixPath('outputs/txt2img-images/2026-12-06/00000-1.png'))
    """

    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    latents: torch.Tensor
    params: GenerationParams
    timings: dict = field(default_factory=dict)
    paths: list[Path | None] = field(default_factory=list)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    # inpainting: each init image's nbdiffuse.masks.PreparedMask (the mask as A1111 processed it, the crop region,
    # the latent mask); None for other jobs
    inpaint: list | None = None
    # inpainting: the mask each image was composited over the original with (255: the new picture shows), A1111's
    # mask_for_overlay, or soft inpainting's adaptive one
    overlay_masks: list | None = None
    # SD upscale: where its tiles lay and their seeds (a jobs.sd_upscale.TilePlan; nbdiffuse.viz.show_tiles)
    sd_upscale: object | None = None

    def __len__(self) -> int:
        return len(self.images)

    def save(self, folder: str | Path) -> list[Path]:
        """Save every image with its infotext as ``folder/YYYY-MM-DD/NNNNN-SEED.png`` (A1111's names, atomic, never
        overwriting); returns the paths and keeps them in ``paths``. For images a job could not save itself:

        >>> result.save("/tmp/rescued")                                   # doctest: +SKIP
        """
        from ..io.outputs import save_image

        self.paths = [save_image(image, folder, seed=seed, infotext=text)
                      for image, seed, text in zip(self.images, self.seeds, self.infotexts)]
        return self.paths

    @property
    def image(self) -> Image.Image:
        """The first image."""
        return self.images[0]

    @property
    def info(self) -> str:
        """A1111's "Time taken" line and the memory line under it (A1111's ``A:/R:/Sys:`` on CUDA, the process's
        peak RSS on the CPU: :mod:`nbdiffuse.jobs.memory_stats`)."""
        line = f"Time taken: {self.timings.get('total_s', 0.0):.1f} sec."
        if "memory" in self.timings:
            line += f"\n{self.timings['memory']}"
        return line

    def _repr_html_(self) -> str:
        cells, notes = [], []
        for i, (image, text) in enumerate(zip(self.images, self.infotexts)):
            src, note = data_uri(image, OUTPUT_BUDGET // max(len(self.images), 1))  # the output stays under 1 MB
            if note is not None:
                notes.append(f"image {i}: {note}")
            width = max(image.width, 256)
            cells.append(
                f'<figure style="display:inline-block;margin:4px;vertical-align:top;max-width:{width}px">'
                f'<img src="{src}" style="image-rendering:pixelated;min-width:128px" '
                f'width="{max(image.width, 128)}"/><figcaption><pre style="white-space:pre-wrap;font-size:11px">'
                f"{html.escape(text)}</pre></figcaption></figure>")
        status = " (interrupted)" if self.interrupted else ""
        warn = "".join(f'<div style="color:#b45309">&#9888; {html.escape(w)}</div>' for w in self.warnings)
        if notes:
            warn += ('<div style="color:#6b7280">Shown smaller to keep this output under 1 MB (result.images and '
                     f"the saved files are the full PNGs): {html.escape('; '.join(notes))}</div>")
        return (f"<div><b>{len(self.images)} image(s){status}</b> · {html.escape(self.info)}{warn}"
                f"<div>{''.join(cells)}</div></div>")

    def __repr__(self) -> str:
        status = ", interrupted" if self.interrupted else ""
        return f"Result({len(self.images)} images, seeds {self.seeds}{status})"
