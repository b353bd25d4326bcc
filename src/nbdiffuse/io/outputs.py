"""Saving generated images the way A1111 names them: ``folder/YYYY-MM-DD/NNNNN-SEED.png``.

Saves are atomic: the PNG is written to a hidden temp file in the target folder, fsynced, then
hard-linked to its final name, which fails instead of overwriting when that name already exists (a
concurrent saver took it): the next number is tried. A crash never leaves a partial ``NNNNN-*.png``.
Within one process numbers are unique; two processes saving different seeds at the same instant may
share a number (never a file name), as in A1111.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import tempfile
import threading
from pathlib import Path

from .infotext import png_info

__all__ = ["next_sequence_number", "save_image", "save_postprocessed"]

_NUMBER = re.compile(r"[0-9]+")
_LOCK = threading.Lock()  # numbers stay unique between this process's threads, whatever the seed


def next_sequence_number(folder: str | os.PathLike) -> int:
    """1 + the highest leading number among the folder's files (``00012-42.png`` -> 12), 0 if none.

    As A1111's ``get_next_sequence_number`` with an empty basename: the number is the part of the
    file name (extension removed) before the first ``-``.
    """
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        first = os.path.splitext(name)[0].split("-")[0]
        if _NUMBER.fullmatch(first):
            highest = max(highest, int(first))
    return highest + 1


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; nothing to do
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _claim(tmp: Path, target: Path) -> bool:
    """Give ``tmp``'s content the name ``target`` unless it exists. False: the name was taken."""
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # no hard links on this file system: reserve the name, then replace it
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    os.replace(tmp, target)  # (here a crash can leave an empty placeholder, never a partial PNG)
    return True


def save_image(image, folder: str | os.PathLike, *, seed: int, infotext: str | None,
               date: _dt.date | str | None = None) -> Path:
    """Save ``image`` (a PIL image) as ``folder/YYYY-MM-DD/NNNNN-SEED.png`` and return the path.

    ``NNNNN`` continues A1111's numbering in that dated folder (1 + the highest number there, from
    ``00000``). ``infotext`` goes into the PNG ``parameters`` chunk (none when ``None``). ``date``
    defaults to today; a string is used as the folder name as given.
    """
    if date is None:
        date = _dt.date.today()
    day = date if isinstance(date, str) else date.strftime("%Y-%m-%d")
    return _save(image, Path(folder) / day, png_info(infotext) if infotext is not None else None, f"-{seed}")


def save_postprocessed(image, folder: str | os.PathLike, chunks: dict[str, str]) -> Path:
    """Save an Extras picture as A1111 does: ``folder/NNNNN.png`` (no dated folder, no seed), every entry of
    ``chunks`` a PNG text chunk in that order (A1111: the source picture's own chunks, then ``postprocessing`` and
    ``extras``, both the postprocessing infotext).

    >>> save_postprocessed(image, "outputs/extras-images", {"extras": "Postprocess upscaler: Lanczos"})
    ...                                                                                  # doctest: +SKIP
    PosixPath('outputs/extras-images/00000.png')
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, str(value))
    return _save(image, Path(folder), info, "")


def _save(image, out: Path, pnginfo, suffix: str) -> Path:
    """``image`` saved atomically as ``out/NNNNN{suffix}.png`` with the next free number."""
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".nbdiffuse-", suffix=".png.tmp", dir=out)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            kwargs = {"pnginfo": pnginfo} if pnginfo is not None else {}
            image.save(f, format="PNG", **kwargs)
            f.flush()
            os.fsync(f.fileno())
        with _LOCK:
            number = next_sequence_number(out)
            while True:
                target = out / f"{number:05}{suffix}.png"
                if _claim(tmp, target):
                    break
                number = max(number + 1, next_sequence_number(out))
        _fsync_dir(out)
        return target
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
