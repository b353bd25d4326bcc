"""A1111 infotext: the ``parameters`` text stored in generated images.

Pure string and PNG helpers (no torch, nothing else from nbdiffuse). The layout is A1111's::

    prompt (any number of lines)
    Negative prompt: ... (any number of lines; omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

:func:`format` writes it, :func:`parse` reads it with the semantics of A1111's
``parse_generation_parameters`` and :func:`read_png` pulls it out of an image file.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "A1111_DEFAULTS", "CORE_ORDER", "build_fields", "decode", "format", "format_value", "parse", "png_info", "read_png",
]

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

# A1111's pair regex is r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'. Its findall is quadratic: at every
# position of a long run of key characters ([\w \-/]) it scans to the end of the run before failing for want of a
# ":". _param_pairs finds exactly the same pairs in linear time with two regexes:
# - a key starts at the first \w of a run of key characters (after any " ", "-", "/") whose end is a ":", with at
#   least two characters before it (\s and \w share no character, and A1111's leading \s* only moves the start);
#   the look-behind starts one attempt per run, not one per character;
# - the value is A1111's, its quoted alternative unrolled so that the regex engine repeats one character class.
_RE_KEY = re.compile(r"(?<![\w \-/])[ \-/]*(\w[\w \-/]+):")
_RE_VALUE = re.compile(r'\s*("(?:[^\\"]|\\.)[^\\"]*(?:\\.[^\\"]*)*"|[^,]*)(?:,|$)')
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

    >>> list(build_fields({"Seed": 1, "Steps": 20, "Model": "m"}, {"Version": "1.10.1", "Sampler": "Euler a"}))
    ['Steps', 'Sampler', 'Seed', 'Model', 'Version']
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

    >>> print(format("a cat", "blurry", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 1,
    ...                                   "Size": (512, 512)}))
    a cat
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512
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


# What A1111's parse assumes for keys the text lacks, in the order it adds them (``parse(text, defaults=True)``).
# "Hires resize-1"/"-2" (0 = use the scale) are added before the pre-1.0 hires move, the rest after it.
_DEFAULTS_BEFORE_HIRES_MOVE: dict[str, Any] = {
    "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32,
}
_DEFAULTS_AFTER_HIRES_MOVE: dict[str, Any] = {
    "RNG": "GPU", "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
    "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
}
A1111_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1", **_DEFAULTS_BEFORE_HIRES_MOVE, **_DEFAULTS_AFTER_HIRES_MOVE,
    "Refiner switch by sampling steps": False,
}
"""Values A1111's ``parse_generation_parameters`` fills in for missing keys (besides ``Emphasis: Original`` when
the prompts use weights, and ``Cache FP16 weight for LoRA: False`` when FP8 is on)."""
_RE_VERSION_HEAD = re.compile(r"([^-]+-[^-]+)-.*")


def _version(text: Any):
    """A1111's reading of ``Version`` (``v1.7.0-133-gde03882d`` -> 1.7.0.post133), or None."""
    if not isinstance(text, str):
        return None
    from packaging import version  # a dependency of transformers

    m = _RE_VERSION_HEAD.match(text)
    try:
        return version.parse(m.group(1) if m else text)
    except version.InvalidVersion:
        return None


def _first_pass_size(width: int, height: int) -> tuple[int, int]:
    """The first pass old hires fix chose for "First pass size: 0x0": about 512x512 pixels, multiples of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def decode(text: str | bytes | bytearray) -> str:
    """An infotext as ``str``: a str as it is; bytes as UTF-8, or UTF-16 after a byte order mark, or as an EXIF
    ``UserComment`` (``UNICODE``/``ASCII`` prefix, as :func:`read_png` reads it).

    Raises ``ValueError`` for bytes that are none of these (decode them yourself: a raw PNG ``tEXt`` chunk is
    Latin-1) and ``TypeError`` for anything else.

    >>> decode("Steps: 20".encode("utf-16"))
    'Steps: 20'
    """
    if isinstance(text, str):
        return text
    if not isinstance(text, bytes | bytearray):
        raise TypeError(f"An infotext is a str (or bytes), not {type(text).__name__}: {text!r:.80}")
    data = bytes(text)
    if data[:8] in (b"UNICODE\x00", b"ASCII\x00\x00\x00"):
        return _decode_user_comment(data) or ""
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"These infotext bytes are not {encoding.replace('-sig', '')} text ({e.reason} at byte "
                         f"{e.start}): decode them first, e.g. parse(data.decode('latin-1')) for a PNG tEXt chunk."
                         ) from None


def _param_pairs(line: str) -> list[tuple[str, str]]:
    """``(key, value)`` pairs as A1111's pair regex finds them in ``line`` (its ``findall``), in linear time."""
    pairs = []
    pos = 0
    while (key := _RE_KEY.search(line, pos)) is not None:
        value = _RE_VALUE.match(line, key.end())  # never fails: [^,]* runs to a "," or the end
        pairs.append((key.group(1), value.group(1)))
        pos = value.end()  # a "," or the end: no run of key characters goes on across it
    return pairs


def parse(text: str | bytes, *, defaults: bool = False) -> dict[str, Any]:
    """Read an infotext exactly as A1111's ``parse_generation_parameters`` does (1.10, default settings).

    Returns ``Prompt``, ``Negative prompt`` and every ``Key: value`` of the parameter line, as strings.
    The last line is the parameter line only if it holds at least 3 pairs; otherwise it belongs to the
    prompt. Everything from a line starting with ``Negative prompt:`` on is the negative prompt (blank
    lines before its first text are dropped). Quoted values are JSON-decoded; empty values are dropped.
    A ``WxH`` value gives ``Key-1`` (W) and ``Key-2`` (H). Like A1111 it then:

    - appends ``<hypernet:NAME:STRENGTH>`` to the prompt for ``Hypernet`` (strength ``1.0`` if not given);
    - turns a pre-1.0 ``First pass size`` into the generation size (``Size-1``/``-2``, now ints; ``0x0`` is
      computed as old hires fix did) and moves the old ``Size`` to ``Hires resize-1``/``-2``;
    - reports a ``Hires prompt``/``Hires negative prompt`` equal to the first pass's as ``""``;
    - adds the compatibility keys ``Version`` implies (``Downcast alphas_cumprod`` before 1.7.0-225, ...).

    Beyond A1111, a ``WxH`` value is also kept whole under its key (``"Size": "512x768"``; after the hires
    move ``Size`` and ``Hires resize`` describe the moved values). With ``defaults=True`` the result is
    exactly A1111's dict instead, key for key and in its order: no whole ``WxH`` keys, and A1111's values
    for missing keys (:data:`A1111_DEFAULTS`, ``Emphasis``). Never raises on a str; takes time linear in its
    length. Bytes are decoded (:func:`decode`).

    >>> parse("a cat\\nSteps: 20, Sampler: Euler a, CFG scale: 7, Size: 512x768")["Size-2"]
    '768'
    """
    res: dict[str, Any] = {}
    *lines, lastline = decode(text).strip().split("\n")
    pairs = _param_pairs(lastline)
    if len(pairs) < 3:
        lines.append(lastline)
        pairs = []

    prompt = negative = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            done_with_prompt = True
            line = line[len(_NEGATIVE):].strip()
        # A newline is added only once there is text: leading blank lines vanish, later ones stay.
        if done_with_prompt:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line

    whole: set[str] = set()  # keys holding our whole "WxH" value (A1111 keeps only Key-1 / Key-2)
    for key, value in pairs:
        if not value:
            continue  # A1111 fails on v[0] and skips the pair
        value = _unquote(value)
        m = _RE_IMAGESIZE.match(value)
        if m is not None:
            res[f"{key}-1"] = m.group(1)
            res[f"{key}-2"] = m.group(2)
            if key in whole or key not in res:
                res[key] = value
                whole.add(key)
        else:
            if key in whole:  # A1111 inserts the key here, not where our whole value was
                del res[key]
                whole.discard(key)
            res[key] = value

    # A1111 compares hires prompts with the first pass's after taking styles out (none here: no style database).
    if "Hires prompt" in res or "Hires negative prompt" in res:
        ver = _version(res.get("Version"))
        if ver is None or ver > _version("1.8.0-139"):
            hr_prompt, hr_negative = res.get("Hires prompt", prompt), res.get("Hires negative prompt", negative)
            res["Hires prompt"] = "" if hr_prompt == prompt else hr_prompt
            res["Hires negative prompt"] = "" if hr_negative == negative else hr_negative

    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    if defaults:
        res.setdefault("Clip skip", "1")
    if "Hypernet" in res:
        res["Prompt"] += f"<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    if defaults:
        if "Hires resize-1" not in res:
            res["Hires resize-1"] = res["Hires resize-2"] = 0
        for key, value in _DEFAULTS_BEFORE_HIRES_MOVE.items():
            res.setdefault(key, value)
    _restore_old_hires_fix(res, whole)
    if defaults:
        for key, value in _DEFAULTS_AFTER_HIRES_MOVE.items():
            res.setdefault(key, value)
        if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
            res["Cache FP16 weight for LoRA"] = False
        if "Emphasis" not in res and _uses_emphasis(prompt, negative):
            res["Emphasis"] = "Original"
        res.setdefault("Refiner switch by sampling steps", False)
    _backcompat(res)
    if defaults:
        for key in whole:
            del res[key]
    return res


def _restore_old_hires_fix(res: dict[str, Any], whole: set[str]) -> None:
    """Pre-1.0 hires fix: ``Size`` was the final size and ``First pass size`` the generation size."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    first_w, first_h = int(first_w), int(first_h)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if first_w == 0 or first_h == 0:
        first_w, first_h = _first_pass_size(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height
    for key, (w, h) in (("Size", (first_w, first_h)), ("Hires resize", (width, height))):
        if key in whole or key not in res:
            res[key] = f"{w}x{h}"
            whole.add(key)


def _uses_emphasis(prompt: str, negative: str) -> bool:
    from ..prompts.parser import BREAK, parse_attention

    runs = parse_attention(prompt) + parse_attention(negative)
    return any(weight != 1.0 and text != BREAK for text, weight in runs)


def _backcompat(res: dict[str, Any]) -> None:
    """The compatibility settings A1111 switches on for infotexts from older versions (infotext_versions)."""
    ver = _version(res.get("Version"))
    if ver is None:
        return
    if ver < _version("1.6.0") and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < _version("1.6.0") and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < _version("v1.7.0-225"):
        res["Downcast alphas_cumprod"] = True
    if ver < _version("1.8.0") and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


# --------------------------------------------------------------------------------------------- images

def png_info(text: str):
    """A :class:`PIL.PngImagePlugin.PngInfo` holding ``text`` as the ``parameters`` chunk.

    Pillow writes ``tEXt`` when the text is Latin-1 and ``iTXt`` (UTF-8) otherwise, as A1111 does.

    >>> image.save("cat.png", pnginfo=png_info(result.infotexts[0]))     # doctest: +SKIP
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

    >>> text = read_png("outputs/txt2img-images/2026-12-06/00000-1.png")   # doctest: +SKIP
    >>> session.txt2img(**to_params(text))                                    # doctest: +SKIP
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
