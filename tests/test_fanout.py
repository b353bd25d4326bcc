"""Grids and batches on Ray workers (nbdiffuse.fanout): one local Ray with two CPU slots for the module, two workers
holding the toy model. What a worker makes is compared with what this process makes itself (same torch thread
count as a worker: one), never with stored values."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from nbdiffuse import RayExecutor, Session
from nbdiffuse.fanout import CellWorker, WorkerSpec, makespan, start_ray, worker_spec

GRID = dict(x=("Seed", "1, 2, 3"), y=("CFG Scale", "3, 7"), prompt="a red circle", steps=6, subseed=5)


def listening() -> set[tuple[str, int]]:
    """(local address, port) of every listening TCP socket on this machine (/proc/net/tcp and tcp6)."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr, port = fields[1].split(":")
            found.add((addr, int(port, 16)))
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def cluster():
    before = listening()
    start_ray(num_cpus=2)
    yield before
    ray.shutdown()


@pytest.fixture(scope="module")
def fan(cluster, tmp_path_factory):
    session = Session(outputs_dir=tmp_path_factory.mktemp("fanout") / "outputs", progress=False)
    session.load("toy")
    ex = RayExecutor()
    ex.start(session)
    yield session, ex
    ex.shutdown()


LONG = dict(GRID, x=("Seed", "1, 2, 3, 4"), steps=30)  # eight cells long enough to stop or kill a worker mid-grid


@pytest.fixture(scope="module")
def long_local(fan):
    """LONG run here, with a worker's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return local_grid(fan[0], **LONG)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def one_thread():
    """The local reference runs with a worker's thread count: a float sum's order depends on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def local_grid(session, **kw):
    saved, session.outputs_dir = session.outputs_dir, None
    try:
        return session.xyz(**{**GRID, **kw}, show=False, save_grid=False)
    finally:
        session.outputs_dir = saved


def cells(grid):
    return [(key, grid.cells[key[0]][key[1]][key[2]]) for key in grid.plan.order]


def assert_same_cell(a, b):
    assert torch.equal(a.latents, b.latents)
    assert a.infotexts == b.infotexts and a.seeds == b.seeds and a.subseeds == b.subseeds
    assert [np.asarray(i).tobytes() for i in a.images] == [np.asarray(i).tobytes() for i in b.images]


def test_ray_listens_on_loopback_only_with_the_dashboard_off(cluster):
    new = listening() - cluster
    assert new, "Ray started no server?"
    assert {addr for addr, _ in new} <= LOOPBACK, sorted(new)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert 8265 not in {port for _, port in new}  # the dashboard's port


def test_two_workers_hold_the_model_and_say_so(fan):
    session, ex = fan
    assert ex.workers == 2
    assert {i["device"] for i in ex.infos} == {"cpu"} and {i["threads"] for i in ex.infos} == {1}
    assert len({i["pid"] for i in ex.infos}) == 2 and os.getpid() not in {i["pid"] for i in ex.infos}
    assert "2 Ray worker(s) on 1 machine(s)" in ex.describe() and "float32" in ex.describe()


def test_grid_cells_from_workers_are_bit_identical_to_local_ones(fan, one_thread):
    session, ex = fan
    grid = session.xyz(**GRID, executor=ex, show=False)
    local = local_grid(session)
    assert grid.done == 6 and not grid.interrupted and not grid.notes
    assert {r.timings["worker"] for _, r in cells(grid)} == {0, 1}  # both workers ran cells
    for (key, a), (local_key, b) in zip(cells(grid), cells(local)):
        assert key == local_key
        assert_same_cell(a, b)
    assert np.array_equal(np.asarray(grid.grid), np.asarray(local.grid))
    # the driver saved every image with its infotext, and the grid
    for _, r in cells(grid):
        assert r.paths[0] is not None and Image.open(r.paths[0]).info["parameters"] == r.infotexts[0]
    assert grid.paths and Path(grid.paths[0]).is_file()


def test_large_n_iter_runs_batch_by_batch_with_local_seeds_noise_and_infotexts(fan, one_thread):
    session, ex = fan
    kw = dict(prompt="a blue square", steps=5, seed=11, subseed=3, batch_size=2, n_iter=3, sampler_name="Euler a")
    r, local = session.txt2img(**kw, executor=ex), local_txt2img(session, kw)
    assert r.seeds == local.seeds == [11, 12, 13, 14, 15, 16]
    assert_same_cell(r, local)
    assert not r.interrupted and len(r.paths) == 6 and all(p is not None and p.is_file() for p in r.paths)
    # variation seeds: every image keeps the seed, subseeds count on across the batches
    kw = dict(kw, subseed=100, subseed_strength=0.3, sampler_name="DPM++ 2M")
    r, local = session.txt2img(**kw, executor=ex), local_txt2img(session, kw)
    assert r.seeds == [11] * 6 and r.subseeds == list(range(100, 106))
    assert_same_cell(r, local)


def local_txt2img(session, kw):
    saved, session.outputs_dir = session.outputs_dir, None
    try:
        return session.txt2img(**kw)
    finally:
        session.outputs_dir = saved


def test_plan_says_how_many_workers_and_the_estimate_before_any_cell(fan):
    session, ex = fan
    plan = session.plan_xyz(**GRID, executor=ex)
    assert "2 Ray worker(s)" in plan.executor and "2 Ray worker(s)" in plan._repr_html_()
    assert plan.seconds_estimate is not None and plan.seconds_one_worker is not None
    assert plan.seconds_estimate < plan.seconds_one_worker  # six cells shared by two workers
    assert plan.seconds_estimate >= plan.seconds_one_worker / 2 * 0.99
    assert makespan([3, 1, 1, 1], 2) == 3 and makespan([1, 1, 1, 1], 2) == 2 and makespan([], 3) == 0


def _wait(predicate, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_stop_keeps_finished_cells_and_resume_completes_them(fan, long_local, tmp_path):
    session, ex = fan
    session.outputs_dir = out = tmp_path / "stop"
    grid_kw = LONG
    pngs = lambda: list(out.rglob("*.png"))  # noqa: E731 - the driver saves each cell as it arrives

    def stop():
        _wait(lambda: len(pngs()) >= 1)
        session.interrupt()

    t = threading.Thread(target=stop)
    t.start()
    started = time.perf_counter()
    grid = session.xyz(**grid_kw, executor=ex, show=False)
    t.join()
    assert grid.interrupted and 1 <= grid.done < 8
    assert not list((out / "txt2img-grids").rglob("*.png"))  # an unfinished grid is not saved
    local = long_local
    done = [(k, r) for k, r in cells(grid) if r is not None]
    for key, r in done:
        assert_same_cell(r, local.cells[key[0]][key[1]][key[2]])
    assert time.perf_counter() - started < 60
    grid.resume()
    assert grid.done == 8 and not grid.interrupted
    for (key, a), (local_key, b) in zip(cells(grid), cells(local)):
        assert key == local_key
        assert_same_cell(a, b)


def test_a_killed_worker_loses_only_its_cell_which_is_retried_elsewhere(fan, long_local):
    session, ex = fan
    grid_kw = LONG
    killed = {}

    def kill():
        killed["waited"] = _wait(lambda: 0 in ex.running and 1 in ex.running)
        os.kill(ex.infos[0]["pid"], signal.SIGKILL)

    t = threading.Thread(target=kill)
    t.start()
    grid = session.xyz(**grid_kw, executor=ex, show=False)
    t.join()
    assert killed["waited"] and grid.done == 8 and not grid.interrupted
    notes = [n for n in grid.notes if "worker 0 died" in n and "retried on another worker" in n]
    assert len(notes) == 1 and len(grid.notes) == 1, grid.notes
    assert "died" in grid._repr_html_()
    ix, iy, iz = (int(i) for i in re.search(r"cell \((\d+), (\d+), (\d+)\)", notes[0]).groups())
    assert grid.cells[ix][iy][iz].timings["worker"] == 1  # the cell worker 0 lost was retried elsewhere
    local = long_local
    for (key, a), (local_key, b) in zip(cells(grid), cells(local)):
        assert key == local_key
        assert_same_cell(a, b)


def worker_pid(ex, w: int) -> int:
    """The process of worker ``w``, once it answers (Ray may be starting it again)."""
    end = time.monotonic() + 120
    while True:
        try:
            return ray.get(ex.actors[w].info.remote())["pid"]
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_a_cell_whose_worker_dies_twice_is_left_empty_named_and_resumed_on_a_new_worker(fan, long_local):
    session, ex = fan
    pids = {w: worker_pid(ex, w) for w in range(2)}  # worker 0 was restarted above: a new process
    killed = {}

    def kill():
        _wait(lambda: 0 in ex.running and 1 in ex.running)
        key, _ = ex.running[0]
        killed["key"] = key
        os.kill(pids[0], signal.SIGKILL)  # its second death: Ray gives up on worker 0
        if _wait(lambda: ex.running.get(1, (None,))[0] == key):  # the retry, on worker 1
            os.kill(pids[1], signal.SIGKILL)
            killed["again"] = True

    t = threading.Thread(target=kill)
    t.start()
    grid = session.xyz(**LONG, executor=ex, show=False)
    t.join()
    assert killed.get("again")
    ix, iy, iz = killed["key"]
    assert grid.cells[ix][iy][iz] is None and grid.done == 7 and grid.interrupted
    assert any("retried already, so it is left empty" in n for n in grid.notes), grid.notes
    assert ex.deaths[0] == 2
    grid.resume()  # a new worker 0 takes the place of the one Ray gave up on
    assert ex.deaths[0] == 0 and grid.done == 8 and not grid.interrupted
    for (key, a), (local_key, b) in zip(cells(grid), cells(long_local)):
        assert key == local_key
        assert_same_cell(a, b)


def test_what_cannot_travel_is_refused_before_any_worker_runs(fan):
    session, ex = fan
    with pytest.raises(ValueError, match="the one executor is \"ray\""):
        session.xyz(**GRID, executor="dask")
    with pytest.raises(ValueError, match="hooks"):
        session.txt2img(prompt="x", n_iter=2, hooks=[lambda s: None], executor=ex)
    session.hooks.append(lambda s: None)
    try:
        with pytest.raises(ValueError, match="session.hooks"):
            session.xyz(**GRID, executor=ex)
    finally:
        session.hooks.clear()
    with pytest.raises(ValueError, match="steps"):
        session.txt2img(prompt="x", steps=0, n_iter=2, executor=ex)
    from nbdiffuse.models import tiny_sd1

    other = Session(outputs_dir=None, progress=False)
    other.load(tiny_sd1())
    with pytest.raises(ValueError, match="built in memory"):
        worker_spec(other)


def test_a_worker_refuses_a_model_file_that_is_not_the_drivers(fan):
    session, _ = fan
    spec = worker_spec(session, threads=1)
    assert spec.model == "toy" and len(spec.sha256) == 64
    wrong = WorkerSpec(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="not the driver's model file"):
        CellWorker(wrong, 3)


def python_out(code: str) -> str:
    """The stdout of ``code`` run in a fresh Python, which must succeed."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_one_gpu_path_never_imports_ray():
    code = ("import sys, nbdiffuse\n"
            "s = nbdiffuse.Session(outputs_dir=None, progress=False); s.load('toy')\n"
            "s.txt2img(prompt='a', steps=2, n_iter=2); s.xyz(x=('Steps', '1,2'), prompt='a', show=False)\n"
            "s.plan_xyz(x=('Steps', '1,2'), prompt='a'); import io; nbdiffuse.doctor(s, file=io.StringIO())\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'nbdiffuse.fanout'))))\n")
    assert python_out(code).strip().splitlines()[-1] == "[]"


def test_without_ray_the_error_says_how_to_install_it():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import nbdiffuse\n"
            "s = nbdiffuse.Session(outputs_dir=None, progress=False); s.load('toy')\n"
            "try:\n    s.xyz(x=('Steps', '1,2'), prompt='a', executor='ray')\n"
            "except ImportError as e:\n    print(e)\n")
    assert 'pip install "nbdiffuse[ray]"' in python_out(code)


def test_the_fanout_benchmark_runs(fan):
    """benchmarks/fanout.py --smoke on this module's Ray (its workers stopped first, to free the CPU slots)."""
    import runpy

    fan[1].shutdown()
    bench = runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / "fanout.py"))
    out = bench["main"](["--smoke", "--workers", "2"])
    assert out["ray2_bit_identical"]
    assert out["ray2_cells_per_s"] > 0 and 0 < out["ray2_overhead_s"] < 5 and out["pickle_bytes"] > 1000
