"""X/Y/Z grid vs nine separate txt2img calls on the same model (issue 9: the grid must be no slower).

A 3x3 grid (Seed x CFG Scale) on the SD1-shaped benchmark model of ``loop_overhead.py`` (random weights, built
from config), against the same nine images made with nine ``txt2img`` calls — once as a user would run them in
one session (prompt encodings cached by the session) and once with an empty encoding cache for every call (what a
tool without a shared cache does: the session loads the model again before each call, outside the timing, since a
freshly loaded model starts with an empty prompt cache). Every timed run starts with an empty cache. Grid assembly
and the inline display are included in the grid time.

    python benchmarks/xyz.py            # 128x128, 10 steps, 3 alternating rounds
    python benchmarks/xyz.py --quick    # 4 steps, 1 round
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from loop_overhead import NEGATIVE, PROMPT, build_model, cpu_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, rounds = (4, 1) if args.quick else (10, 3)

    from nbdiffuse import Session

    bundle, unet_params = build_model()
    session = Session(outputs_dir=None, progress=False)
    session.load(bundle)
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, width=args.size, height=args.size,
                sampler_name="Euler a")
    seeds, cfgs = [1, 2, 3], [3.0, 6.0, 9.0]

    def grid() -> float:
        session.load(bundle)  # an empty prompt cache
        t = time.perf_counter()
        session.xyz(("Seed", seeds), ("CFG Scale", cfgs), show=False, save_grid=False, **base)
        return time.perf_counter() - t

    def separate(clear_each: bool) -> float:
        """The nine calls' time together; ``clear_each``: each call with an empty prompt cache."""
        session.load(bundle)
        total = 0.0
        for cfg in cfgs:
            for seed in seeds:
                if clear_each:
                    session.load(bundle)
                t = time.perf_counter()
                session.txt2img(**base, seed=seed, cfg_scale=cfg)
                total += time.perf_counter() - t
        return total

    runs = {"grid": [], "nine calls, shared cache": [], "nine calls, no cache": []}
    separate(False)  # warm-up
    for _ in range(rounds):
        for name, fn in (("grid", grid), ("nine calls, shared cache", lambda: separate(False)),
                         ("nine calls, no cache", lambda: separate(True))):
            runs[name].append(fn())
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"model: SD1-shaped UNet {unet_params:.1f} M params, {args.size}x{args.size}, {steps} steps, Euler a")
    grid_t = statistics.median(runs["grid"])
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"{name:28s} median {med:7.2f} s  runs {', '.join(f'{t:.2f}' for t in times)}  "
              f"grid/this {grid_t / med:.3f}")


if __name__ == "__main__":
    main()
