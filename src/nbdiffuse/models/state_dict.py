"""Open a checkpoint's tensors offline, without copying them and without running code from the file.

:func:`read_state_dict` reads a ``.safetensors`` file memory-mapped (safetensors ``safe_open``: every tensor is a
view of one private file mapping, no second copy) after checking its header against the file size, and a
``.ckpt``/``.pt`` file only through ``torch.load(weights_only=True, mmap=True)``: nothing from a pickle is
executed, and the only globals it may name are torch's own plus :data:`LEGACY_CKPT_GLOBALS`, the numpy and
pytorch-lightning objects that 2022-2023 training runs pickled next to the weights (the same list A1111's restricted
unpickler allows; lightning's classes become inert stand-ins, lightning is never imported). Every problem with the
file (empty, truncated, corrupt, wrong format, a pickle naming any other global) raises
:class:`~nbdiffuse.models.errors.ModelLoadError` naming it.

>>> sd = read_state_dict("models/Stable-diffusion/v1-5-pruned-emaonly.safetensors")   # doctest: +SKIP
>>> sd.format, sd.shape("model.diffusion_model.out.2.weight")                          # doctest: +SKIP
('safetensors', (4, 320, 3, 3))
"""

from __future__ import annotations

import json
import math
import re
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


class LightningStandIn:
    """An inert stand-in for a pytorch-lightning object an old ``.ckpt`` pickled (its ``ModelCheckpoint`` callback,
    usually only as a dict key): constructing or filling it runs nothing and imports nothing.

    >>> LightningStandIn("anything").args
    ('anything',)
    """

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


# Globals an old .ckpt may name beyond torch's weights_only set, as "module.name" -> object: the pytorch-lightning
# and numpy objects 2022-2023 training runs saved next to the weights. The same names A1111's restricted unpickler
# allows (its torch ones are already in torch's own set); numpy's are listed under numpy 1's ``numpy.core`` and
# numpy 2's ``numpy._core`` module names. Filled on first use, so reading a .safetensors file never imports numpy.
LEGACY_CKPT_GLOBALS: dict = {}


def _legacy_ckpt_globals() -> dict:
    if not LEGACY_CKPT_GLOBALS:
        import numpy as np

        rc = {}
        multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            rc[f"{module}.scalar"] = multiarray.scalar
            rc[f"{module}._reconstruct"] = multiarray._reconstruct
        rc["numpy.dtype"] = np.dtype
        rc["numpy.ndarray"] = np.ndarray
        # BUILD (a dtype's __setstate__) is only allowed on allow-listed types: numpy >= 1.25 gives each dtype a class
        for code in np.typecodes["All"]:
            cls = type(np.dtype(code))
            rc[f"{cls.__module__}.{cls.__qualname__}"] = cls
        rc["torch.nn.modules.container.ParameterDict"] = torch.nn.ParameterDict
        rc["__builtin__.set"] = set
        for name in ("pytorch_lightning.callbacks.model_checkpoint",
                     "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"):
            rc[name] = LightningStandIn
        LEGACY_CKPT_GLOBALS.update(rc)  # whole, for a second thread
    return LEGACY_CKPT_GLOBALS


def load_pickle(path, fmt: str | None = None):
    """The object a PyTorch ``.ckpt``/``.pt`` file holds, read by ``torch.load(weights_only=True)`` with
    :data:`LEGACY_CKPT_GLOBALS` allowed and nothing else: a file naming any other global raises
    :class:`~nbdiffuse.models.errors.ModelLoadError` naming that global, before anything of it runs.

    >>> load_pickle("models/hypernetworks/anime.pt")["layer_structure"]   # doctest: +SKIP
    [1, 2, 1]
    """
    import pickle

    path = Path(path).expanduser()
    fmt = fmt or _sniff(path)
    allowed = [(obj, name) for name, obj in _legacy_ckpt_globals().items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as e:
        raise _weights_only_refusal(path, e) from None
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise _weights_only_refusal(path, e) from None
        raise ModelLoadError(path, f"truncated or corrupt PyTorch checkpoint ({msg})") from None


def _weights_only_refusal(path: Path, e: Exception) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for line in str(e).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line or "Unsupported operand" in line:
            first = line.strip()
            break
    named = re.search(r"GLOBAL (\S+)", first)
    if named:  # torch's own line goes on to suggest allow-listing it: not advice for an unknown file
        first = f"it names the global {named.group(1)}"
    return ModelLoadError(path, "refused: this pickle-based checkpoint names more than tensors, plain containers "
                                f"and the numpy/pytorch-lightning objects old checkpoints hold ({first}). Only "
                                "torch.load(weights_only=True) is used, so nothing from it was executed. If you "
                                "trust the file, convert it to .safetensors with a trusted tool; otherwise delete "
                                "it.")


def read_state_dict(path) -> StateDict:
    """Open a checkpoint's tensors without copying them: safetensors memory-mapped, torch zip files through
    ``torch.load(weights_only=True, mmap=True)`` (legacy non-zip torch files: weights_only without mmap), with
    :data:`LEGACY_CKPT_GLOBALS` allowed (:func:`load_pickle`)."""
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
    obj = load_pickle(path, fmt)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(path, f"a PyTorch file holding a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(path, "a PyTorch file without any tensors")
    return StateDict(path, tensors, {}, fmt)
