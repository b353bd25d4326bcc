"""X/Y/Z cells per second on Ray workers (``session.xyz(..., executor=...)``) with 1 and 2 workers, against the same
grid run here, and what each cell costs beyond its own generation.

Measured in one run:

- **cells/s** of one grid (``--cells`` seeds × ``--steps`` steps) run here, on 1 Ray worker and on 2 (or
  ``--workers``), each after the workers have started, and the ratio to the local run;
- **per-cell overhead**: a cell's round trip as the driver sees it (sent → its Result back) minus the time the worker
  spent on it (median over the cells): Ray's scheduling, the Result's serialisation and transfer;
- **serialisation**: ``pickle.dumps``/``loads`` of one cell's Result (what Ray does to it) and its size;
- **model load, amortised**: a worker's start (Session, imports, model load, hash check) divided by the cells it ran.

On a CPU machine every worker is one CPU slot with one torch thread, and the local run uses one thread too, so the
ratios say what the fan-out adds; the driver itself idles in ``ray.wait``. On a multi-GPU machine each worker is a
GPU (``--model`` a checkpoint file; the toy model is far too small to keep a GPU busy).

    python benchmarks/fanout.py                       # toy model, CPU, 16 cells, 1 and 2 workers
    python benchmarks/fanout.py --smoke               # 4 cells, 2 steps: checks the script runs (tests run it)
    python benchmarks/fanout.py --model m.safetensors --width 512 --height 512 --steps 20 --workers 1 2 4 8
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import torch

import nbdiffuse


def grid_cells(grid) -> list:
    return [grid.cells[ix][iy][iz] for ix, iy, iz in grid.plan.order]


def run(session, kw: dict, executor=None) -> tuple[float, list]:
    t = time.perf_counter()
    grid = session.xyz(**kw, executor=executor, show=False, save_grid=False)
    elapsed = time.perf_counter() - t
    assert grid.done == len(grid.plan.order) and not grid.interrupted, grid.notes
    return elapsed, grid_cells(grid)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="4 cells of 2 steps: checks the script runs")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--cells", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    if args.smoke:
        args.cells, args.steps = 4, 2
    gpus = torch.cuda.device_count()
    cpu_slots = max(args.workers) + 1 if not gpus else None  # one slot each, and the driver's own
    torch.set_num_threads(1)  # as each CPU worker (a float sum's order depends on the thread count)
    session = nbdiffuse.Session(outputs_dir=None, progress=False)
    session.load(args.model)
    kw = dict(x=("Seed", f"1-{args.cells}"), prompt="a red circle", steps=args.steps, subseed=1)
    if args.width:
        kw.update(width=args.width, height=args.height or args.width)
    run(session, {**kw, "x": ("Seed", "1")})  # warm-up
    local_s, local_cells = run(session, kw)
    rows = [("here (1 thread)" if not gpus else "here", local_s, None, None)]
    result = {"local_cells_per_s": args.cells / local_s}
    print(f"# fan-out benchmark{' (smoke: numbers mean nothing)' if args.smoke else ''}: {args.model}, "
          f"{args.cells} cells of {args.steps} steps, torch {torch.__version__}, "
          f"{gpus} GPU(s)" + ("" if gpus else f", Ray with {cpu_slots} CPU slots"))
    for n in args.workers:
        init = dict(num_cpus=cpu_slots) if cpu_slots else {}
        ex = nbdiffuse.RayExecutor(workers=n, init=init)
        t = time.perf_counter()
        ex.start(session)
        start_s = time.perf_counter() - t
        load_s = max(i["load_s"] for i in ex.infos)
        run(session, {**kw, "x": ("Seed", f"1-{n}")}, ex)  # each worker's first cell (warm-up)
        elapsed, cells = run(session, kw, ex)
        where = ex.describe()
        ex.shutdown()
        overhead = statistics.median(r.timings["roundtrip_s"] - r.timings["worker_s"] for r in cells)
        same = all(torch.equal(a.latents, b.latents) for a, b in zip(cells, local_cells))
        rows.append((f"{n} Ray worker(s)", elapsed, overhead, load_s / (args.cells / n)))
        result[f"ray{n}_cells_per_s"] = args.cells / elapsed
        result[f"ray{n}_overhead_s"] = overhead
        result[f"ray{n}_bit_identical"] = same
        print(f"  {n} worker(s): started in {start_s:.1f} s (model load {load_s:.1f} s in the worker); "
              f"latents bit-identical to here: {same}; {where}")
    one = local_cells[0]
    t = time.perf_counter()
    blob = pickle.dumps(one, protocol=5)
    dump_s = time.perf_counter() - t
    t = time.perf_counter()
    pickle.loads(blob)
    load_back_s = time.perf_counter() - t
    result["pickle_bytes"] = len(blob)
    print("| where | cells/s | vs here | per-cell overhead | model load per cell |")
    print("|---|---|---|---|---|")
    for name, elapsed, overhead, amortised in rows:
        print(f"| {name} | {args.cells / elapsed:.2f} | {local_s / elapsed:.2f}× | "
              f"{'' if overhead is None else f'{overhead * 1000:.1f} ms'} | "
              f"{'' if amortised is None else f'{amortised:.2f} s'} |")
    print(f"One cell's Result pickled: {len(blob) / 1024:.1f} KiB, dumps {dump_s * 1000:.2f} ms, "
          f"loads {load_back_s * 1000:.2f} ms")
    return result


if __name__ == "__main__":
    main()
