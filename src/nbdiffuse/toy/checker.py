"""A deterministic checker for images of the toy world: what colour and shape is the largest object, how many.

Method (no learning, numpy only):

1. every pixel is classified to the nearest named colour of :data:`nbdiffuse.toy.world.COLOURS`;
2. the background colours are those covering >= 25% of a 2-pixel border ring (one: plain, two: two-tone);
3. the other pixels form the foreground; a 3x3 morphological opening removes thin lines (anti-aliasing
   fringes, the blend along a blurry two-tone split) and specks; the remaining 4-connected components with
   at least :data:`MIN_AREA` pixels are the objects;
4. an object's colour is the majority colour of its interior (eroded) pixels; its shape is the template
   (each shape of the world, rendered at several sizes and processed the same way) with the highest IoU
   after both masks are cropped to their bounding box and resampled to 24x24.

``check(image)`` returns ``{"count", "colour", "shape", "objects", "background"}`` where ``colour`` and
``shape`` are those of the largest object (None when no object is found). Accuracy on ground-truth renders is
measured by ``tests/test_toy_world.py`` and :func:`validate`.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .world import COLOURS, SHAPES, shape_mask

NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in NAMES], dtype=np.float32)
MIN_AREA = 30  # pixels (after opening); the smallest object of the world has ~90
BORDER = 2
BG_FRACTION = 0.25
NORM = 24  # side of the normalised mask used for shape matching


def classify_pixels(image) -> np.ndarray:
    """(64, 64) int array: index into ``NAMES`` of the nearest named colour, per pixel."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    d = ((rgb[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def _shift_stack(mask: np.ndarray) -> list[np.ndarray]:
    p = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    return [p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def erode(mask: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce(_shift_stack(mask))


def dilate(mask: np.ndarray) -> np.ndarray:
    return np.logical_or.reduce(_shift_stack(mask))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: (labels with 0 = background, count)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    stack.append((yy, xx))
    return labels, n


def _normalise(mask: np.ndarray) -> np.ndarray:
    """Crop a mask to its bounding box and resample it to NORM x NORM (float in [0, 1])."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    img = Image.fromarray(crop).resize((NORM, NORM), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _clean(raw: np.ndarray) -> np.ndarray:
    """The processing applied to the foreground: opening, then one dilation restricted to the raw mask."""
    opened = dilate(erode(raw))
    return dilate(opened) & raw


@functools.cache
def _templates() -> dict[str, list[np.ndarray]]:
    out = {}
    for shape in SHAPES:
        out[shape] = [_normalise(_clean(shape_mask(shape, side, canvas=side + 6)))
                      for side in (16, 20, 26, 34)]
    return out


def classify_shape(mask: np.ndarray) -> tuple[str, dict[str, float]]:
    """Best-matching shape name of a boolean object mask, and the IoU score per shape."""
    m = _normalise(mask)
    scores = {}
    for shape, temps in _templates().items():
        best = 0.0
        for t in temps:
            inter = np.minimum(m, t).sum()
            union = np.maximum(m, t).sum()
            best = max(best, float(inter / max(union, 1e-6)))
        scores[shape] = best
    return max(scores, key=scores.get), scores


def check(image) -> dict:
    """Analyse one image of the toy world (PIL image or HxWx3 array); see the module docstring."""
    cls = classify_pixels(image)
    h, w = cls.shape
    ring = np.ones_like(cls, dtype=bool)
    ring[BORDER : h - BORDER, BORDER : w - BORDER] = False
    counts = np.bincount(cls[ring], minlength=len(NAMES)) / ring.sum()
    bg = [int(i) for i in np.argsort(-counts) if counts[i] >= BG_FRACTION][:2]
    if not bg:
        bg = [int(counts.argmax())]
    raw = ~np.isin(cls, bg)
    fg = _clean(raw)
    labels, n = label_components(fg)
    objects = []
    for k in range(1, n + 1):
        comp = labels == k
        area = int(comp.sum())
        if area < MIN_AREA:
            continue
        core = erode(comp)
        votes = cls[core] if core.any() else cls[comp]
        colour = NAMES[int(np.bincount(votes, minlength=len(NAMES)).argmax())]
        shape, scores = classify_shape(comp)
        ys, xs = np.nonzero(comp)
        objects.append({"colour": colour, "shape": shape, "area": area, "iou": scores[shape],
                        "cx": float(xs.mean()), "cy": float(ys.mean())})
    objects.sort(key=lambda o: -o["area"])
    largest = objects[0] if objects else None
    return {
        "count": len(objects),
        "colour": largest["colour"] if largest else None,
        "shape": largest["shape"] if largest else None,
        "objects": objects,
        "background": [NAMES[i] for i in bg],
    }


def matches(result: dict, labels: dict, area_tolerance: float = 0.15) -> dict[str, bool]:
    """Whether a :func:`check` result agrees with ground-truth ``labels``: per field (colour, shape, count).

    When the two objects of a scene have visible areas within ``area_tolerance`` of each other, either
    counts as "the largest"."""
    objs = labels["objects"]
    big = max(o["area"] for o in objs)
    candidates = [o for o in objs if o["area"] >= (1 - area_tolerance) * big]
    return {
        "colour": any(result["colour"] == o["colour"] for o in candidates),
        "shape": any(result["shape"] == o["shape"] for o in candidates),
        "count": result["count"] == labels["count"],
        "all": any(result["colour"] == o["colour"] and result["shape"] == o["shape"] for o in candidates)
        and result["count"] == labels["count"],
    }


def validate(n: int = 1000, seed: int = 1234) -> dict[str, float]:
    """Checker accuracy on ``n`` ground-truth renders from ``seed``: fraction correct per field."""
    from .world import sample

    rng = np.random.default_rng(seed)
    totals = {"colour": 0, "shape": 0, "count": 0, "all": 0}
    for _ in range(n):
        image, _caption, labels = sample(rng)
        for key, ok in matches(check(image), labels).items():
            totals[key] += ok
    return {k: v / n for k, v in totals.items()}


if __name__ == "__main__":
    import sys

    print(validate(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
