"""Open a checkpoint's tensors offline, without copying them and without running code from the file.

:func:`read_state_dict` reads a ``.safetensors`` file memory-mapped (safetensors ``safe_open``: every tensor is a
view of one private file mapping, no second copy) after checking its header against the file size, and a
``.ckpt``/``.pt`` file only through ``torch.load(weights_only=True, mmap=True)`` (nothing from a pickle is
executed; anything but tensors and plain containers is refused). Every problem with the file (empty, truncated,
corrupt, wrong format, a pickle wanting code) raises :class:`~nbdiffuse.models.errors.ModelLoadError` naming it.

>>> sd = read_state_dict("models/Stable-diffusion/v1-5-pruned-emaonly.safetensors")   # doctest: +SKIP
>>> sd.format, sd.shape("model.diffusion_model.out.2.weight")                          # doctest: +SKIP
('safetensors', (4, 320, 3, 3))
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from nbdiffuse.models.errors import ModelLoadError

_ZIP_MAGIC = b"PK\x03\x04"
# safetensors' dtype names (read here, written by nbdiffuse.models.save)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


@dataclass
class StateDict:
    """A checkpoint's tensors (memory-mapped views), plus where they came from."""

    path: Path
    tensors: dict
    metadata: dict
    format: str  # "safetensors" | "torch-zip" | "torch-legacy"
    handle: object = None  # keeps the safetensors file open while tensors are read

    def shape(self, key: str) -> tuple:
        return tuple(self.tensors[key].shape)


def _sniff(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(path, "empty file (0 bytes); the download or copy probably failed")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if size < 8:
            raise ModelLoadError(path, f"truncated .safetensors file ({size} bytes, less than its 8-byte header "
                                       "length)")
        raise ModelLoadError(path, "corrupt .safetensors file: the header does not start with a JSON object")
    raise ModelLoadError(path, f"unrecognised file format (starts with {head[:8]!r}); expected a .safetensors "
                               "file or a PyTorch .ckpt/.pt checkpoint")


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ModelLoadError(path, f"truncated or corrupt .safetensors file: the header claims {n} bytes, "
                                       f"but the file has only {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(path, f"corrupt .safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(path, "corrupt .safetensors header (not a JSON object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            shape = [int(s) for s in entry["shape"]]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(path, f"corrupt .safetensors header (bad entry for {key!r})") from None
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if stop - begin != expected:
            raise ModelLoadError(path, f"corrupt .safetensors header ({key!r}: {stop - begin} bytes for shape "
                                       f"{shape} {entry['dtype']})")
        end = max(end, stop)
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "corrupt (trailing bytes)"
        raise ModelLoadError(path, f"{what} .safetensors file: tensors need {8 + n + end} bytes, the file has "
                                   f"{size}")
    return header, 8 + n


def _weights_only_refusal(path: Path, e: Exception) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for line in str(e).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line or "Unsupported operand" in line:
            first = line.strip()
            break
    return ModelLoadError(path, "refused: this pickle-based checkpoint contains more than tensors and plain "
                                f"containers ({first}). Only torch.load(weights_only=True) is used, so nothing "
                                "from it was executed. If you trust the file, convert it to .safetensors with a "
                                "trusted tool; otherwise delete it.")


def read_state_dict(path) -> StateDict:
    """Open a checkpoint's tensors without copying them: safetensors memory-mapped, torch zip files through
    ``torch.load(weights_only=True, mmap=True)`` (legacy non-zip torch files: weights_only without mmap)."""
    import pickle

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(path, "no such file")
    if path.is_dir():
        raise ModelLoadError(path, "is a folder, not a single-file checkpoint")
    fmt = _sniff(path)
    if fmt == "safetensors":
        header, _ = _read_safetensors_header(path)
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # views of one private mapping
            metadata = handle.metadata() or {}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(path, f"corrupt .safetensors file ({type(e).__name__}: {e})") from None
        return StateDict(path, tensors, dict(metadata), fmt, handle)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as e:
        raise _weights_only_refusal(path, e) from None
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise _weights_only_refusal(path, e) from None
        raise ModelLoadError(path, f"truncated or corrupt PyTorch checkpoint ({msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(path, f"a PyTorch file holding a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(path, "a PyTorch file without any tensors")
    return StateDict(path, tensors, {}, fmt)
