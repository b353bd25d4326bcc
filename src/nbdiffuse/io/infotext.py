"""A1111 infotext: the ``parameters`` text stored in generated images.

Pure string and PNG helpers (no torch, nothing else from nbdiffuse). The layout is A1111's::

    prompt (any number of lines)
    Negative prompt: ... (any number of lines; omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

:func:`format` writes it, :func:`parse` reads it with the semantics of A1111's
``parse_generation_parameters`` and :func:`read_png` pulls it out of an image file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["CORE_ORDER", "build_fields", "format", "format_value", "parse", "png_info", "read_png"]

# A1111's key order for the fields it always knows about (processing.create_infotext). Keys that are
# not core (Hires ..., Lora hashes, Schedule type when it is not in core, ...) follow in insertion order,
# and "Version" / "User" close the line.
CORE_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
    "Init image hash", "RNG", "Tiling",
)
TAIL_ORDER: tuple[str, ...] = ("Version", "User")

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


# --------------------------------------------------------------------------------------------- writing

def format_value(value: Any) -> str:
    """One value as A1111 prints it: ``7.0`` -> ``7``, ``0.7`` -> ``0.7``, ``(512, 768)`` -> ``512x768``.

    Strings holding ``,``, ``:`` or a newline become JSON strings (A1111's ``quote``). So do a few
    strings A1111 writes bare but cannot read back (empty, leading/trailing whitespace, a ``"``);
    A1111's parser reads those JSON strings back unchanged.
    """
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        text = f"{value[0]}x{value[1]}"
    else:
        text = str(value)
    if _needs_quotes(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _needs_quotes(text: str) -> bool:
    if "," in text or ":" in text or "\n" in text:
        return True  # A1111's rule
    # Beyond A1111: values its parser would otherwise lose or change.
    return text == "" or text != text.strip() or '"' in text or "\r" in text


def build_fields(core: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Order infotext fields like A1111.

    Keys of :data:`CORE_ORDER` come first in that order (from ``core`` or ``extra``: A1111 reserves
    slots such as ``Denoising strength`` for extra parameters), then the other ``core`` keys, then
    ``extra`` in insertion order; an ``extra`` key that is already present keeps its earlier position
    (its value is updated); ``Version`` (then ``User``) comes last. ``None`` values are kept
    here and skipped by :func:`format`.
    """
    extra = extra or {}
    fields: dict[str, Any] = {}
    for k in CORE_ORDER:  # a core key gets its A1111 slot wherever it was given (extra wins, as in A1111)
        if k in extra:
            fields[k] = extra[k]
        elif k in core:
            fields[k] = core[k]
    for source in (core, extra):
        for k, v in source.items():
            if k not in TAIL_ORDER and k not in CORE_ORDER:
                fields[k] = v  # an existing key keeps its position, takes the later value
    for k in TAIL_ORDER:
        for source in (core, extra):
            if k in source:
                fields[k] = source[k]
    return fields


def fields_in_order(**kv: Any) -> dict[str, Any]:
    """``build_fields(kv)`` for keyword-friendly keys (``fields_in_order(Steps=20, Seed=1)``)."""
    return build_fields(kv)


def format(prompt: str, negative_prompt: str, fields: Mapping[str, Any]) -> str:
    """The infotext: prompt, ``Negative prompt:`` line when non-empty, then ``Key: value, ...``.

    Fields are written in the mapping's order (see :func:`build_fields`); ``None`` values are skipped.
    """
    line = ", ".join(f"{k}: {format_value(v)}" for k, v in fields.items() if v is not None)
    parts = [prompt]
    if negative_prompt:
        parts.append(f"{_NEGATIVE} {negative_prompt}")
    if line:
        parts.append(line)
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- reading

def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse(text: str) -> dict[str, str]:
    """Read an infotext like A1111's ``parse_generation_parameters`` (without its defaults or styles).

    Returns ``Prompt``, ``Negative prompt`` and every ``Key: value`` of the parameter line, as strings.
    The last line is the parameter line only if it holds at least 3 pairs; otherwise it belongs to the
    prompt. Everything from a line starting with ``Negative prompt:`` on is the negative prompt.
    Quoted values are JSON-decoded. A ``WxH`` value also gives ``Key-1`` (W) and ``Key-2`` (H); unlike
    A1111 the ``Key`` itself is kept too. Empty values are dropped, as A1111 does. Never raises on a str.
    """
    res: dict[str, str] = {}
    *lines, lastline = str(text).strip().split("\n")
    # Each pair needs a ":"; the count check also spares the regex's quadratic scan of long prompts.
    if lastline.count(":") < 3 or len(_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    prompt: list[str] = []
    negative: list[str] = []
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            done_with_prompt = True
            line = line[len(_NEGATIVE):].strip()
        (negative if done_with_prompt else prompt).append(line)

    for key, value in _RE_PARAM.findall(lastline):
        if not value:
            continue  # A1111 fails on v[0] and skips the pair
        value = _unquote(value)
        m = _RE_IMAGESIZE.match(value)
        if m is not None:
            res[f"{key}-1"] = m.group(1)
            res[f"{key}-2"] = m.group(2)
        res[key] = value

    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)
    return res


# --------------------------------------------------------------------------------------------- images

def png_info(text: str):
    """A :class:`PIL.PngImagePlugin.PngInfo` holding ``text`` as the ``parameters`` chunk.

    Pillow writes ``tEXt`` when the text is Latin-1 and ``iTXt`` (UTF-8) otherwise, as A1111 does.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info


_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def _decode_user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes | bytearray) or not raw:
        return None
    prefix, body = bytes(raw[:8]), bytes(raw[8:])
    if prefix == b"UNICODE\x00":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = body.decode("utf-16", errors="ignore")
        else:
            text = body.decode("utf_16_be", errors="ignore")  # piexif's (and A1111's) encoding
    elif prefix == b"ASCII\x00\x00\x00" or prefix == b"\x00" * 8:
        text = body.decode("utf-8", errors="ignore")
    else:
        text = bytes(raw).decode("utf-8", errors="ignore")
    text = text.rstrip("\x00")
    return text or None


def read_png(path_or_file) -> str | None:
    """The infotext stored in an image (a path or a binary file object), or ``None``.

    PNG: the ``parameters`` text chunk (tEXt/iTXt/zTXt). JPEG/WebP (as A1111 saves them): the EXIF
    ``UserComment`` (``UNICODE`` prefix + UTF-16BE as written by piexif, or ASCII). GIF: the comment.
    """
    from PIL import Image

    with Image.open(path_or_file) as img:
        items = dict(img.info or {})
        text = items.get("parameters")
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="ignore")
        comment = None
        try:
            exif = img.getexif()
            comment = _decode_user_comment(exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT))
        except Exception:  # noqa: BLE001 - a broken EXIF block just means "no infotext there"
            comment = None
        if comment:
            text = comment
        elif text is None and "comment" in items:
            c = items["comment"]
            text = c.decode("utf-8", errors="ignore") if isinstance(c, bytes) else str(c)
    return text if text else None
