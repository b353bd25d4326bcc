"""A job's memory numbers and A1111's memory line (``A: … GB, R: … GB, Sys: …/… GB (…%)``).

On CUDA, from torch's peak counters, with A1111's meanings (``modules/call_queue.py``, ``modules/memmon.py``):
``A`` is the peak of *active* bytes (what tensors used, caching allocator's spare blocks excluded), ``R`` the peak
reserved by torch's allocator, ``Sys`` the device's used memory out of its total (all processes, the CUDA context
included); each rounded up to MiB and shown /1024 as "GB" (they are GiB). A1111 polls ``Sys`` eight times a second
for its minimum of free memory; we read it once when the job ends (no thread polling the GPU), so it is the use
then, not the peak. The peaks count from the start of the job (:func:`reset_peaks`, called by the Session).

On the CPU the line is the process's peak resident memory since it started (``getrusage``), labelled as such: a
job's share of it cannot be told apart without resetting a counter other measurements rely on.
"""

from __future__ import annotations

import sys

import torch


def reset_peaks(device: torch.device) -> None:
    """Start counting peak memory anew (CUDA; nothing elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss() -> int | None:
    """The process's peak resident set size in bytes since it started (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS gives bytes, Linux KiB


def memory_numbers(device: torch.device) -> dict:
    """The job's memory in bytes: on CUDA ``active``, ``reserved`` and ``allocated`` peaks, ``used`` and ``total``
    of the device; always ``peak_rss`` (the process, since it started; absent where unknown).

    >>> sorted(memory_numbers(torch.device("cpu")))
    ['peak_rss']
    """
    out = {}
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        free, total = torch.cuda.mem_get_info(device)
        out = {"active": int(stats.get("active_bytes.all.peak", 0)),
               "reserved": int(stats.get("reserved_bytes.all.peak", 0)),
               "allocated": int(stats.get("allocated_bytes.all.peak", 0)),
               "used": int(total - free), "total": int(total)}
    rss = peak_rss()
    if rss is not None:
        out["peak_rss"] = rss
    return out


def _gb(n: int) -> float:
    return -(n // -2**20) / 1024  # A1111: MiB rounded up, /1024


def memory_line(numbers: dict) -> str | None:
    """A1111's line from :func:`memory_numbers` (CUDA), or the labelled peak-RSS line (CPU); None with neither.

    >>> memory_line({"active": 3 * 2**30, "reserved": 4 * 2**30, "allocated": 3 * 2**30, "used": 6 * 2**30,
    ...              "total": 80 * 2**30, "peak_rss": 2**30})
    'A: 3.00 GB, R: 4.00 GB, Sys: 6.0/80 GB (7.5%)'
    >>> memory_line({"peak_rss": 3 * 2**29})
    'RAM: 1.50 GB peak RSS (the process, since it started)'
    """
    if "active" in numbers:
        used, total = _gb(numbers["used"]), _gb(numbers["total"])
        return (f"A: {_gb(numbers['active']):.2f} GB, R: {_gb(numbers['reserved']):.2f} GB, "
                f"Sys: {used:.1f}/{total:g} GB ({used / max(total, 1e-9) * 100:.1f}%)")
    if "peak_rss" in numbers:
        return f"RAM: {_gb(numbers['peak_rss']):.2f} GB peak RSS (the process, since it started)"
    return None


__all__ = ["memory_line", "memory_numbers", "peak_rss", "reset_peaks"]
