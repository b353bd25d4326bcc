"""The panel's gallery: the last few jobs' images with their infotexts, and a row of buttons under each image.

A job is kept as what its buttons need (PNG bytes, infotexts, seeds, the parameters), never as its Result: the
gallery holds no tensors, and its memory is its images' PNG size.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as w
from PIL import Image

from ..jobs.params import GenerationParams
from .images import MAX_MESSAGE_BYTES, png_bytes
from .layout import close_tree, widget_tree

#: The class of buttons that show under the newest job only (they need its Result, which the panel keeps).
NEWEST_ONLY = "nbd-newest-only"


@dataclass(frozen=True)
class Picture:
    """One image of a job: the whole image as PNG (lossless), its infotext, seed and subseed."""

    png: bytes
    infotext: str
    seed: int
    subseed: int

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png)).convert("RGB")


@dataclass(frozen=True)
class Job:
    """One job of the gallery: its pictures, its parameters, the line shown above them, whether it was stopped.

    >>> from nbdiffuse.ui.gallery import Job
    >>> job = Job.of(session.txt2img(prompt="a red circle", batch_size=2, seed=7))  # doctest: +SKIP
    >>> job.seeds                                                                   # doctest: +SKIP
    [7, 8]
    """

    pictures: tuple[Picture, ...]
    params: GenerationParams
    info: str
    interrupted: bool = False

    @classmethod
    def of(cls, result) -> Job:
        pictures = tuple(Picture(png_bytes(image, max_bytes=math.inf), text, seed, subseed) for image, text, seed,
                         subseed in zip(result.images, result.infotexts, result.seeds, result.subseeds))
        return cls(pictures, result.params, result.info, result.interrupted)

    @property
    def seeds(self) -> list[int]:
        return [picture.seed for picture in self.pictures]


class Gallery:
    """The newest ``keep`` jobs in the ``box`` widget, newest first. ``buttons(job, i)`` makes the buttons under
    image ``i`` (the panel's wiring); those with the class :data:`NEWEST_ONLY` are hidden once a newer job comes."""

    def __init__(self, box: w.Box, keep: int, buttons: Callable[[Job, int], list[w.Button]]):
        self.box, self.keep, self.buttons = box, keep, buttons
        self.jobs: list[Job] = []  # newest first

    @property
    def newest(self) -> Job | None:
        return self.jobs[0] if self.jobs else None

    def add(self, result) -> Job:
        """Show ``result`` first; the oldest job beyond ``keep`` goes (its widgets closed)."""
        job = Job.of(result)
        older = [box for box in self.box.children if "nbd-job" in box._dom_classes]
        for widget in (widget for box in older for widget in widget_tree(box)):
            if NEWEST_ONLY in widget._dom_classes:
                widget.layout.display = "none"
        boxes = [self._job_box(job, result.images), *older]
        for old in boxes[self.keep:]:
            close_tree(old)
        self.jobs = [job, *self.jobs][: self.keep]
        self.box.children = boxes[: self.keep]
        return job

    def _job_box(self, job: Job, images: list[Image.Image]) -> w.Widget:
        cards = [self._card(job, i, image) for i, image in enumerate(images[: len(job.pictures)])]
        head = f"{len(job.pictures)} image(s)" + (" (interrupted)" if job.interrupted else "")
        box = w.VBox([w.HTML(f"<b>{html.escape(head)}</b> · {html.escape(job.info)}"),
                      w.HBox(cards, layout=w.Layout(flex_flow="row wrap"))])
        box.add_class("nbd-job")
        return box

    def _card(self, job: Job, i: int, image: Image.Image) -> w.Widget:
        png = job.pictures[i].png
        shown = png if len(png) <= MAX_MESSAGE_BYTES else png_bytes(image)
        picture = w.Image(value=shown, format="png", layout=w.Layout(width=f"{max(image.width, 192)}px"))
        picture.add_class("nbd-pixelated")
        text = w.HTML(f"<pre>{html.escape(job.pictures[i].infotext)}</pre>")
        text.add_class("nbd-infotext")
        card = w.VBox([picture, text, w.HBox(self.buttons(job, i), layout=w.Layout(flex_flow="row wrap"))])
        card.add_class("nbd-card")
        return card
