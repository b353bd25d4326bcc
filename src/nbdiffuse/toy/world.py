"""The toy model's world: one or two flat-coloured shapes on a plain or two-tone background, 64x64 RGB.

Everything is deterministic from a ``numpy.random.Generator``::

    >>> import numpy as np
    >>> from nbdiffuse.toy.world import sample
    >>> image, caption, labels = sample(np.random.default_rng(0))
    >>> image.size
    (64, 64)

``labels`` is a plain dict (JSON-serialisable) describing the scene: the objects (colour, shape, size word,
position word, centre, size in pixels, visible area in pixels), the background, the object ``count`` and the
index of the ``largest`` object (by visible pixel area). ``render(labels)`` redraws the same image from it.

Shapes are axis-aligned (never rotated); objects never overlap or leave the canvas, and their colours differ
from the background's and from each other.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side in pixels
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges

# Colour name -> sRGB, every pair far apart in RGB (the checker classifies pixels by nearest colour).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 180),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
SIZES = ("small", "large")
# Position word -> (column, row) on a 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "centre": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
# Object side in pixels, per size word (drawn at a random side in this range).
SIZE_RANGE = {"small": (20, 26), "large": (32, 40)}
# Grid coordinates of the object centre, per size word (large objects sit closer to the middle to fit).
GRID = {"small": (16, 32, 48), "large": (22, 32, 42)}
JITTER = 2

# Every word a caption can use (besides colours, shapes, sizes and position words above).
FUNCTION_WORDS = ("a", "an", "and", "on", "in", "at", "the", "background")
VOCABULARY: dict[str, tuple[str, ...]] = {
    "colours": tuple(COLOURS),
    "shapes": SHAPES,
    "sizes": SIZES,
    "positions": tuple(POSITIONS),
    "other words": FUNCTION_WORDS,
}

# Probabilities of the scene generator.
P_TWO_OBJECTS = 0.3
P_TWO_TONE = 0.3


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --- shapes -------------------------------------------------------------------------------------------------


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` centred at (cx, cy) inside a ``side`` x ``side`` box; None for the circle."""
    h = side / 2
    if shape == "circle":
        return None
    if shape == "square":
        s = h * 0.9  # a square of the same nominal size looks larger than a circle: shrink a little
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h * 0.8), (cx - h, cy + h * 0.8)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h * 0.85, cy), (cx, cy + h), (cx - h * 0.85, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = h * 1.05 if k % 2 == 0 else h * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + 0.08 * h + r * math.sin(a)))
        return pts
    if shape == "cross":
        w = h * 0.36
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy - w), (cx + h, cy - w), (cx + h, cy + w),
                (cx + w, cy + w), (cx + w, cy + h), (cx - w, cy + h), (cx - w, cy + w), (cx - h, cy + w),
                (cx - h, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill,
                k: int) -> None:
    """Draw at supersampling factor ``k`` (coordinates given at 1x)."""
    if shape == "circle":
        h = side / 2
        draw.ellipse([(cx - h) * k, (cy - h) * k, (cx + h) * k - 1, (cy + h) * k - 1], fill=fill)
    else:
        draw.polygon([(x * k, y * k) for x, y in shape_polygon(shape, cx, cy, side)], fill=fill)


def shape_mask(shape: str, side: int, canvas: int | None = None) -> np.ndarray:
    """A boolean mask of ``shape`` centred on a ``canvas`` x ``canvas`` grid (the checker's templates)."""
    canvas = canvas or side + 4
    k = SUPERSAMPLE
    img = Image.new("L", (canvas * k, canvas * k), 0)
    _draw_shape(ImageDraw.Draw(img), shape, canvas / 2, canvas / 2, side, 255, k)
    img = img.resize((canvas, canvas), Image.BOX)
    return np.asarray(img) >= 128


# --- scenes -------------------------------------------------------------------------------------------------


def render(labels: dict) -> Image.Image:
    """Draw the scene described by ``labels`` (as returned by :func:`sample`) as a 64x64 RGB image."""
    k = SUPERSAMPLE
    bg = labels["background"]
    img = Image.new("RGB", (SIZE * k, SIZE * k), COLOURS[bg["colours"][0]])
    draw = ImageDraw.Draw(img)
    if bg["kind"] == "two-tone":
        split = bg["split"] * k
        second = COLOURS[bg["colours"][1]]
        if bg["direction"] == "vertical":  # left | right
            draw.rectangle([split, 0, SIZE * k, SIZE * k], fill=second)
        else:  # top / bottom
            draw.rectangle([0, split, SIZE * k, SIZE * k], fill=second)
    for obj in labels["objects"]:
        _draw_shape(draw, obj["shape"], obj["cx"], obj["cy"], obj["side"], COLOURS[obj["colour"]], k)
    return img.resize((SIZE, SIZE), Image.BOX)


def object_masks(labels: dict) -> list[np.ndarray]:
    """Per object, its boolean 64x64 mask (pixels at least half covered), in ``labels["objects"]`` order."""
    k = SUPERSAMPLE
    masks = []
    for obj in labels["objects"]:
        img = Image.new("L", (SIZE * k, SIZE * k), 0)
        _draw_shape(ImageDraw.Draw(img), obj["shape"], obj["cx"], obj["cy"], obj["side"], 255, k)
        masks.append(np.asarray(img.resize((SIZE, SIZE), Image.BOX)) >= 128)
    return masks


def _place(rng: np.random.Generator, size: str, position: str) -> tuple[float, float, int]:
    lo, hi = SIZE_RANGE[size]
    side = int(rng.integers(lo, hi + 1))
    col, row = POSITIONS[position]
    grid = GRID[size]
    jitter = JITTER if size == "small" else 1
    cx = grid[col] + float(rng.uniform(-jitter, jitter))
    cy = grid[row] + float(rng.uniform(-jitter, jitter))
    return cx, cy, side


def sample_labels(rng: np.random.Generator, n_objects: int | None = None) -> dict:
    """A random scene description (without caption); see :func:`sample`."""
    colour_names = list(COLOURS)
    if n_objects is None:
        n_objects = 2 if rng.random() < P_TWO_OBJECTS else 1
    two_tone = bool(rng.random() < P_TWO_TONE)
    n_colours = n_objects + (2 if two_tone else 1)
    picked = [colour_names[i] for i in rng.choice(len(colour_names), size=n_colours, replace=False)]
    obj_colours, bg_colours = picked[:n_objects], picked[n_objects:]

    positions = list(POSITIONS)
    if n_objects == 1:
        chosen = [positions[int(rng.integers(len(positions)))]]
        sizes = [SIZES[int(rng.integers(2))]]
    else:
        # Two small objects whose grid cells are two apart along some axis: they can never touch.
        while True:
            a, b = (positions[i] for i in rng.choice(len(positions), size=2, replace=False))
            (ca, ra), (cb, rb) = POSITIONS[a], POSITIONS[b]
            if max(abs(ca - cb), abs(ra - rb)) == 2:
                break
        chosen = [a, b]
        sizes = ["small", "small"]

    objects = []
    for colour, position, size in zip(obj_colours, chosen, sizes):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        cx, cy, side = _place(rng, size, position)
        objects.append({"colour": colour, "shape": shape, "size": size, "position": position,
                        "cx": round(cx, 3), "cy": round(cy, 3), "side": side})
    background = {"kind": "two-tone" if two_tone else "plain", "colours": bg_colours}
    if two_tone:
        background["direction"] = "vertical" if rng.random() < 0.5 else "horizontal"
        background["split"] = int(rng.integers(24, 41))
    labels = {"objects": objects, "background": background, "count": n_objects}
    areas = [int(m.sum()) for m in object_masks(labels)]
    for obj, area in zip(objects, areas):
        obj["area"] = area
    labels["largest"] = int(np.argmax(areas))
    return labels


def _background_phrase(bg: dict) -> str:
    if bg["kind"] == "plain":
        return f"{_article(bg['colours'][0])} {bg['colours'][0]} background"
    a, b = bg["colours"]
    return f"{_article(a)} {a} and {b} background"


def _position_phrase(rng: np.random.Generator, position: str) -> str:
    """", top left" / " in the top left" / " at the top left"."""
    style = int(rng.integers(3))
    if style == 0:
        return f", {position}"
    if style == 1 or position == "centre":
        return f" in the {position}"
    return f" at the {position}"


def caption_for(labels: dict, rng: np.random.Generator) -> str:
    """A caption for ``labels`` in a randomly chosen phrasing; attributes it leaves out are unconstrained."""
    objs, bg = labels["objects"], labels["background"]
    if len(objs) == 2:
        parts = []
        with_position = rng.random() < 0.4
        for obj in objs:
            text = f"{_article(obj['colour'])} {obj['colour']} {obj['shape']}"
            if with_position:
                text += f" {'in' if obj['position'] == 'centre' else 'at'} the {obj['position']}"
            parts.append(text)
        if rng.random() < 0.5:
            parts.reverse()
        caption = " and ".join(parts)
        if rng.random() < 0.4:
            caption += f" on {_background_phrase(bg)}"
        return caption

    obj = objs[0]
    words = []
    if rng.random() < 0.4:
        words.append(obj["size"])
    words += [obj["colour"], obj["shape"]]
    core = " ".join(words)
    if rng.random() < 0.7:
        core = f"{_article(core)} {core}"
    with_bg, with_pos = rng.random() < 0.4, rng.random() < 0.4
    bg_text = f" on {_background_phrase(bg)}" if with_bg else ""
    pos_text = _position_phrase(rng, obj["position"]) if with_pos else ""
    if with_bg and with_pos and rng.random() < 0.5:
        return core + pos_text + bg_text
    return core + bg_text + pos_text


def sample(rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    """One random scene: ``(image, caption, labels)``; deterministic given the generator's state."""
    labels = sample_labels(rng)
    caption = caption_for(labels, rng)
    return render(labels), caption, labels


def caption_words(caption: str) -> list[str]:
    """The caption's words, punctuation stripped (for vocabulary checks)."""
    return caption.replace(",", " ").split()


def all_words() -> set[str]:
    """Every single word a caption can contain."""
    words = set(FUNCTION_WORDS)
    for group in ("colours", "shapes", "sizes", "positions"):
        for item in VOCABULARY[group]:
            words.update(item.split())
    return words
