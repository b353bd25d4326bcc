"""A1111 model hashes: values against hashlib, the cross-session cache, and hash=False."""

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from nbdiffuse.models import hashing
from nbdiffuse.models.hashing import addnet_hash, cache_file, legacy_hash, model_hash


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def big(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"a": torch.arange(600_000, dtype=torch.float32), "b": torch.ones(3, 5)}, p,
              metadata={"ss_network_dim": "4"})  # ~2.4 MB: past the legacy hash's 1 MiB offset
    return p


def test_hash_values_match_hashlib(big):
    data = big.read_bytes()
    assert model_hash(big) == hashlib.sha256(data).hexdigest()[:10]
    assert legacy_hash(big) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    (n,) = struct.unpack("<Q", data[:8])
    full = addnet_hash(big)
    assert full == hashlib.sha256(data[8 + n:]).hexdigest() and len(full) == 64
    # metadata lives in the header, so the LoRA hash ignores it
    other = big.with_name("renamed_meta.safetensors")
    save_file({"a": torch.arange(600_000, dtype=torch.float32), "b": torch.ones(3, 5)}, other,
              metadata={"ss_network_dim": "8", "ss_output_name": "x"})
    assert addnet_hash(other) == full and model_hash(other) != model_hash(big)


def test_cache_hit_does_not_read_the_file_and_mtime_invalidates(big, monkeypatch):
    calls = []
    real = hashing._sha256_file

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(hashing, "_sha256_file", counting)
    first = model_hash(big)
    assert len(calls) == 1
    entry = json.loads(cache_file().read_text())[f"sha256:{big.resolve()}"]
    assert entry["size"] == big.stat().st_size and entry["mtime_ns"] == big.stat().st_mtime_ns
    assert entry["sha256"].startswith(first)
    assert model_hash(big) == first and len(calls) == 1  # cached: no read
    addnet_hash(big)
    addnet_hash(big)
    assert len(calls) == 2  # its own cache entry
    st = big.stat()
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert model_hash(big) == first and len(calls) == 3  # same bytes, new mtime: recomputed
    with open(big, "r+b") as f:  # changed content (size kept) with a new mtime
        f.seek(200)
        f.write(b"\x01\x02\x03\x04")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert model_hash(big) == hashlib.sha256(big.read_bytes()).hexdigest()[:10] != first
    assert len(calls) == 4


def test_corrupt_cache_is_ignored(big):
    cache_file().parent.mkdir(parents=True, exist_ok=True)
    cache_file().write_text("{not json")
    assert model_hash(big) == hashlib.sha256(big.read_bytes()).hexdigest()[:10]
    assert json.loads(cache_file().read_text())  # rewritten


def test_load_checkpoint_hash_false_skips_hashing(tmp_path, monkeypatch):
    from nbdiffuse.models.checkpoint import load_checkpoint
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.testing import tiny_sd1

    p = save_checkpoint(tiny_sd1(), tmp_path / "m.safetensors")

    def boom(*a, **k):
        raise AssertionError("hashed although hash=False")

    with monkeypatch.context() as m:
        m.setattr(hashing, "_sha256_file", boom)
        b = load_checkpoint(p, hash=False)
    assert b.hash is None and "hash" not in b.info["timings"]
    b = load_checkpoint(p)
    assert b.hash == hashlib.sha256(p.read_bytes()).hexdigest()[:10]
    with monkeypatch.context() as m:  # second load: from the cache
        m.setattr(hashing, "_sha256_file", lambda path, offset=0, length=None: (
            boom() if offset == 0 and length is None else hashlib.sha256(b"").hexdigest()))
        assert load_checkpoint(p).hash == b.hash


def test_session_load_hashes_in_the_background(tmp_path, monkeypatch):
    """A cold cache: load returns before the hash is done; the job's infotext waits for it and has it right;
    the next load takes it from the cache (no thread); hash=False still hashes nothing."""
    import threading

    from nbdiffuse import Session
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.testing import tiny_sd1

    p = save_checkpoint(tiny_sd1(), tmp_path / "m.safetensors")
    want = hashlib.sha256(p.read_bytes()).hexdigest()
    real, release, calls = hashing._sha256_file, threading.Event(), []

    def slow(path, offset=0, length=None):
        if offset == 0 and length is None:  # the full hash: held until the test lets it go
            calls.append(path)
            assert release.wait(30)
        return real(path, offset, length)

    monkeypatch.setattr(hashing, "_sha256_file", slow)
    s = Session(device="cpu", outputs_dir=None, progress=False)
    model = s.load(p)
    assert calls and not model.__dict__["_pending_sha256"].done()  # returned while hashing
    assert "hash: in the background" in model.info["report"]
    threading.Timer(0.2, release.set).start()
    result = s.txt2img(prompt="a cat", steps=1, width=64, height=64, seed=1)
    assert f"Model hash: {want[:10]}" in result.infotexts[0]
    assert model.hash == want[:10] and model.info["sha256"] == want
    calls.clear()
    assert s.load(p).hash == want[:10] and not calls  # cached: no thread, no wait
    assert s.load(p, hash=False).hash is None and not calls
