"""benchmarks/gpu.py --smoke runs end to end on the CPU, so that the GPU benchmark works the first time a GPU is
there (its numbers are meaningless here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_runs_end_to_end():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--models", "sd15"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "smoke: numbers mean nothing" in text
    assert "| 1 |" in text and "| 2 |" in text  # batch rows: ours, diffusers, ratio, compiled
    assert "NaN check" in text and "% of one step" in text
    assert "memory mode" in text or "memory modes: not measured" in text
