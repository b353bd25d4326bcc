"""What opening the sampling loop costs: hooks, previews, probes and attention maps vs a plain run.

One model (a mid-size SD1-style UNet built from config, random weights, CPU, float32), one process, the
configurations interleaved round-robin so that machine load hits them alike; the median of each is compared with
the median of the plain run (sampling time only: ``Result.timings["sample_s"]``, no encode/decode/save).

    python benchmarks/inspect_overhead.py            # 256x256, 12 steps, 5 rounds
    python benchmarks/inspect_overhead.py --quick    # 256x256, 3 steps, 3 rounds (~2 min on 2 quiet CPU cores)

Appends a section to benchmarks/RESULTS.md (``--no-write`` to skip). Targets (issue 8): empty hook list <= 1%,
cheap preview every step <= 2%, probe on every Transformer2DModel output <= 15%, attention maps for two words:
reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
INSIDE = [0.0]  # seconds spent inside the tools' own hooks during the current run
TARGETS = {"empty hook list": 1.0, "no-op hook": 1.0, "cheap preview every step": 2.0,
           "probe every Transformer2DModel output": 15.0}


def mid_unet(text_hidden: int):
    """A mid-size SD1-style UNet (about 1/10 of SD1's width), random weights, for a text encoder of width
    ``text_hidden``."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(64, 128, 128),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_hidden,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    return unet.eval().requires_grad_(False)


def build_session():
    from nbdiffuse import Session
    from nbdiffuse.models import tiny_sd1

    bundle = tiny_sd1()
    bundle.unet = mid_unet(bundle.text_encoders[0].config.hidden_size)
    bundle.name = "bench-mid-sd1"
    session = Session(device="cpu", dtype=torch.float32, outputs_dir=None, progress=False)
    session.load(bundle)
    return session


class TimedProbe:
    """A ``Probe`` whose forward hooks are timed: a hook put in front of the probe's on each probed module
    (``prepend=True``) and one behind it bracket exactly the probe's own work, which goes to ``INSIDE``."""

    def __init__(self, session, modules):
        from nbdiffuse.inspect import Probe

        self.probe = Probe(session, modules=modules)
        self.handles = []

    def __enter__(self):
        self.probe.__enter__()
        started = [0.0]

        def start(module, args, output):
            started[0] = time.perf_counter()

        def stop(module, args, output):
            INSIDE[0] += time.perf_counter() - started[0]

        for module in self.probe.modules.values():
            self.handles.append(module.register_forward_hook(start, prepend=True))
            self.handles.append(module.register_forward_hook(stop))
        return self.probe

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return self.probe.__exit__(*exc)


def configurations(session):
    from nbdiffuse.inspect import AttentionMaps, preview_hook

    class Null:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def noop(state):
        return None

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                INSIDE[0] += time.perf_counter() - t
        return wrapper

    return {
        "no hooks": (lambda: None, Null),
        "empty hook list": (lambda: [], Null),
        "no-op hook": (lambda: [timed(noop)], Null),
        "cheap preview every step": (
            lambda: [timed(preview_hook(every=1, session=session, callback=lambda im, s: None))], Null),
        "probe every Transformer2DModel output": (lambda: None, lambda: TimedProbe(session, "Transformer2DModel")),
        "attention maps, two words": (lambda: None, lambda: AttentionMaps(session, words=["red", "circle"])),
    }


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import diffusers

    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"diffusers {diffusers.__version__}, Python {platform.python_version()}, {platform.system()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps, 3 rounds")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable CPU-time figures)")
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    steps = args.steps or (3 if args.quick else 12)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 5)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    session = build_session()
    params = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=steps, seed=1,
                  width=args.size, height=args.size, sampler_name="Euler")
    configs = configurations(session)
    session.txt2img(**dict(params, steps=2))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    inside: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, (hooks, context) in configs.items():
            INSIDE[0] = 0.0
            with context():
                c0 = time.process_time()
                result = session.txt2img(hooks=hooks(), **params)
                cpu[name].append(time.process_time() - c0)
            times[name].append(result.timings["sample_s"])
            inside[name].append(INSIDE[0])
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    load_after = os.getloadavg()
    base = statistics.median(times["no hooks"])
    base_cpu = statistics.median(cpu["no hooks"])
    base_min = min(times["no hooks"])
    lines = ["| configuration | CPU s per job (median) | extra CPU | wall s sampling (median / min) "
             "| extra wall (median / min) | time inside the tool's hooks | target |", "|---|---|---|---|---|---|---|"]
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        extra, extra_cpu = (med / base - 1) * 100, (med_cpu / base_cpu - 1) * 100
        extra_min = (min(ts) / base_min - 1) * 100
        own = statistics.median(inside[name])
        own_text = f"{own * 1000:.1f} ms = {own / base * 100:.2f}%" if own else "-"
        target = TARGETS.get(name)
        verdict = "report" if target is None else f"\u2264 {target:g}%"
        if target is not None and own:
            verdict += f" ({'met' if own / base * 100 <= target else 'NOT met'} on time inside hooks)"
        lines.append(f"| {name} | {med_cpu:.3f} | {extra_cpu:+.1f}% | {med:.3f} / {min(ts):.3f} | "
                     f"{extra:+.1f}% / {extra_min:+.1f}% | {own_text} | {verdict} |")
    table = "\n".join(lines)
    header = (f"\n## Inspect overhead (issue 8) \u2014 {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
              f"`python benchmarks/inspect_overhead.py{' --quick' if args.quick else ''}`: mid-size SD1-style UNet "
              f"(block_out_channels 64/128/128, random weights), {args.size}\u00d7{args.size}, Euler, {steps} steps, "
              f"CFG 7 (batch of 2 per UNet call), CPU float32, {torch.get_num_threads()} torch thread(s); "
              f"medians of {rounds} interleaved runs per configuration.\n\n"
              f"Machine: {machine_info()}. Load average (1/5/15 min) before: "
              f"{' / '.join(f'{x:.2f}' for x in load_before)}, after: {' / '.join(f'{x:.2f}' for x in load_after)}. "
              f"Wall time {time.perf_counter() - t0:.0f} s.\n\n")
    note = ("\n\"empty hook list\" runs exactly the code path of \"no hooks\" (the session turns `hooks=None` into "
            "an empty list), so its difference measures the run-to-run noise of this machine at this load. End-to-end "
            "differences smaller than that noise say nothing; the time inside the hooks is measured directly.\n")
    text = header + table + "\n" + note
    print(text)
    if not args.no_write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            if f.tell() == 0:
                f.write("# Benchmark results\n")
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
