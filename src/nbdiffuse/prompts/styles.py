"""A1111's prompt styles (``styles.csv``): read, write, apply to a prompt pair, take back out of one.

Styles are applied before anything else of the prompt language (:mod:`nbdiffuse.prompts.parser`) and taken back
out when an infotext is pasted (:func:`extract_styles`). Applying and extracting are total on strings; only the file
I/O of :func:`load_styles` / :func:`save_styles` can raise.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Style", "apply_styles", "extract_styles", "load_styles", "save_styles"]

_STYLE_FIELDS = ["name", "prompt", "negative_prompt"]


@dataclass(frozen=True)
class Style:
    """One row of A1111's ``styles.csv``: a ``{prompt}`` in ``prompt`` takes the user's prompt, else the style's
    text is appended with ``, `` (the negative prompt likewise).

    >>> apply_styles("a cat", "", ["oil"], {"oil": Style("oil", "{prompt}, oil painting", "photo")})
    ('a cat, oil painting', 'photo')
    """

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: str | os.PathLike) -> dict[str, Style]:
    """Read an A1111 ``styles.csv`` (UTF-8, BOM optional; header ``name,prompt,negative_prompt``).

    Like A1111: rows whose name starts with ``#`` are skipped, the old ``name,text`` header is accepted,
    fields get ``skipinitialspace``, a later row with the same name replaces the earlier one. Missing
    fields read as ``""``. I/O errors propagate.

    >>> styles = load_styles("stable-diffusion-webui/styles.csv")      # doctest: +SKIP
    >>> session.txt2img(prompt="a cat", styles=["Oil painting"])       # doctest: +SKIP
    """
    styles: dict[str, Style] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = row.get("name")
            if not row or name is None or name.startswith("#"):
                continue
            prompt = row["prompt"] if "prompt" in row else row.get("text")
            negative = row.get("negative_prompt")
            styles[name] = Style(name, prompt or "", negative or "")
    return styles


def save_styles(styles: dict[str, Style] | Iterable[Style], path: str | os.PathLike) -> None:
    """Write styles as A1111 does: UTF-8 with BOM, header ``name,prompt,negative_prompt``.

    >>> save_styles({"oil": Style("oil", "{prompt}, oil painting")}, "styles.csv")  # doctest: +SKIP
    """
    values = styles.values() if isinstance(styles, dict) else styles
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_STYLE_FIELDS)
        writer.writeheader()
        for s in values:
            writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})


def _merge_style(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(p for p in (prompt.strip(), style_text.strip()) if p)


def apply_styles(
    prompt: str, negative_prompt: str, names: Iterable[str], styles: dict[str, Style]
) -> tuple[str, str]:
    """Apply the named styles in order to both prompts (A1111's ``apply_styles_to_prompt``).

    For each style text: if it contains ``{prompt}`` every occurrence is replaced by the current prompt
    (unstripped); otherwise the result is ``prompt.strip() + ", " + text.strip()``, leaving out whichever
    of the two is empty -- so even an empty style strips the prompt. Unknown names act as an empty style.

    >>> apply_styles("a cat", "", ["oil"], {"oil": Style("oil", "{prompt}, oil painting", "photo")})
    ('a cat, oil painting', 'photo')
    """
    for name in names:
        style = styles.get(name)
        prompt = _merge_style(style.prompt if style else "", prompt)
        negative_prompt = _merge_style(style.negative_prompt if style else "", negative_prompt)
    return prompt, negative_prompt


def _unapply(style_text: str, prompt: str) -> tuple[bool, str]:
    stripped = prompt.strip()
    text = style_text.strip()
    if "{prompt}" in text:
        left, _, right = text.partition("{prompt}")
        if stripped.startswith(left) and stripped.endswith(right):
            return True, stripped[len(left) : len(stripped) - len(right)]
    elif stripped.endswith(text):
        rest = stripped[: len(stripped) - len(text)]
        if rest.endswith(", "):
            rest = rest[:-2]
        return True, rest
    return False, prompt


def extract_styles(prompt: str, negative_prompt: str, styles: dict[str, Style]) -> tuple[list[str], str, str]:
    """Take applied styles back out of a prompt pair (A1111's ``extract_styles_from_prompt``).

    Repeatedly, the first style (in ``styles`` order, each used at most once) with a non-empty prompt or
    negative prompt whose texts both match is removed: a ``{prompt}`` style matches if the stripped prompt
    starts with the part before ``{prompt}`` and ends with the part after; otherwise if the stripped prompt
    ends with the stripped style text (an empty text always matches), which is cut off together with a
    preceding ``", "``. Returns the names in application order (the reverse of extraction) and the rest.

    Deviation (A1111 raises ``ValueError``): a style text with more than one ``{prompt}`` is split at the
    first one only (such a style then simply never matches).

    >>> extract_styles("a cat, oil painting", "photo", {"oil": Style("oil", "{prompt}, oil painting", "photo")})
    (['oil'], 'a cat', '')
    """
    found: list[str] = []
    remaining = list(styles.values())
    while True:
        for idx, style in enumerate(remaining):
            if not style.prompt and not style.negative_prompt:
                continue
            ok_pos, new_prompt = _unapply(style.prompt, prompt)
            if not ok_pos:
                continue
            ok_neg, new_negative = _unapply(style.negative_prompt, negative_prompt)
            if not ok_neg:
                continue
            prompt, negative_prompt = new_prompt, new_negative
            del remaining[idx]
            found.append(style.name)
            break
        else:
            break
    return list(reversed(found)), prompt, negative_prompt
