"""A1111's model hashes, computed at disk speed and cached across sessions.

- :func:`model_hash`: A1111's ``Model hash`` (infotext), the first 10 hex digits of the sha256 of the whole file.
- :func:`legacy_hash`: A1111's old 8-hex hash: sha256 of the 64 KiB at offset 1 MiB (``[xxxxxxxx]`` in old UIs).
- :func:`addnet_hash`: the LoRA hash of infotexts' ``Lora hashes`` (kohya/"addnet" hash): sha256 of a
  ``.safetensors`` file's bytes after the 8-byte header length and the JSON header. Returns the full hex digest;
  A1111 writes its first 12 digits (``addnet_hash(p)[:12]``).

Full sha256 values are cached in one JSON file, ``$NBDIFFUSE_CACHE/hashes.json`` (default
``~/.cache/nbdiffuse/hashes.json``), keyed by kind + absolute path, and valid while the file's size and
``mtime_ns`` are unchanged. A corrupt or unwritable cache is ignored (the hash is recomputed).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from concurrent.futures import Future
from pathlib import Path

CHUNK = 16 * 1024 * 1024  # 16 MiB reads: sha256 runs at ~1 GB/s; syscall overhead is negligible at this size
_LOCK = threading.Lock()
_BACKGROUND = threading.Lock()  # background hashes run one at a time


def cache_dir() -> Path:
    """``$NBDIFFUSE_CACHE`` or ``~/.cache/nbdiffuse``."""
    env = os.environ.get("NBDIFFUSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nbdiffuse"


def cache_file() -> Path:
    return cache_dir() / "hashes.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(data: dict) -> None:
    file = cache_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only home is not worth failing a load for


def _sha256_file(path: Path, offset: int = 0, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        remaining = length
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            n = f.readinto(view[:want])
            if not n:
                break
            h.update(view[:n])
            if remaining is not None:
                remaining -= n
    return h.hexdigest()


def _safetensors_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path}: too short to be a .safetensors file ({len(head)} bytes)")
    (n,) = struct.unpack("<Q", head)
    size = path.stat().st_size
    if n > size - 8:
        raise ValueError(f"{path}: not a .safetensors file (header length {n} exceeds the file size {size})")
    return 8 + n


def _lookup(kind: str, p: Path, st: os.stat_result) -> str | None:
    with _LOCK:
        entry = _read_cache().get(f"{kind}:{p}")
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        value = entry.get("sha256")
        if isinstance(value, str) and len(value) == 64:
            return value
    return None


def _cached(kind: str, path, compute) -> str:
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = f"{kind}:{p}"
    value = _lookup(kind, p, st)
    if value is not None:
        return value
    value = compute(p)
    with _LOCK:  # re-read: another session may have added entries meanwhile
        data = _read_cache()
        data[key] = {"sha256": value, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        _write_cache(data)
    return value


def sha256(path, *, use_cache: bool = True) -> str:
    """Full hex sha256 of the file (cached)."""
    return _cached("sha256", path, _sha256_file) if use_cache else _sha256_file(Path(path))


def cached_sha256(path) -> str | None:
    """The file's sha256 from the cache, or None when it was never computed for this size and mtime."""
    p = Path(path).expanduser().resolve()
    return _lookup("sha256", p, p.stat())


def sha256_in_background(path) -> Future:
    """Start :func:`sha256` of ``path`` in a daemon thread (hashlib releases the GIL, so jobs run meanwhile);
    returns a ``concurrent.futures.Future`` of the hex digest. Hashes queue one at a time (one disk)."""
    future: Future = Future()

    def work():
        with _BACKGROUND:
            try:
                future.set_result(sha256(path))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the result
                future.set_exception(e)

    threading.Thread(target=work, name=f"nbdiffuse-sha256 {Path(path).name}", daemon=True).start()
    return future


def model_hash(path, *, use_cache: bool = True) -> str:
    """A1111's ``Model hash``: the first 10 hex digits of the file's sha256."""
    return sha256(path, use_cache=use_cache)[:10]


def legacy_hash(path) -> str:
    """A1111's legacy 8-hex model hash: sha256 of the 64 KiB at offset 1 MiB (not cached: one small read)."""
    return _sha256_file(Path(path), offset=0x100000, length=0x10000)[:8]


def addnet_hash(path, *, use_cache: bool = True) -> str:
    """Full hex sha256 of a ``.safetensors`` file's tensor data (the bytes after the 8-byte length and the JSON
    header) — the LoRA hash of A1111 infotexts' ``Lora hashes``, which show its first 12 digits."""

    def compute(p: Path) -> str:
        return _sha256_file(p, offset=_safetensors_data_offset(p))

    return _cached("addnet", path, compute) if use_cache else compute(Path(path))


def hashes_field(named_hashes) -> str:
    """An infotext ``Lora hashes`` / ``TI hashes`` value from ``(name, hash)`` pairs: ``"name: hash, ..."``, as
    A1111 writes it (``:`` and ``,`` dropped from names, the first of each name kept, pairs without a hash left out).

    >>> hashes_field([("detail, v2", "0123456789ab"), ("detail, v2", "ffff"), ("nohash", None)])
    'detail v2: 0123456789ab'
    """
    out: dict[str, str] = {}
    for name, digest in named_hashes:
        if digest:
            out.setdefault(name.replace(":", "").replace(",", ""), digest)
    return ", ".join(f"{name}: {digest}" for name, digest in out.items())

