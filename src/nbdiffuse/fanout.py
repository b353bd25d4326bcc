"""Grids and large batches fanned out over Ray workers: whole cells and whole batches, never one image split.

``session.xyz(..., executor="ray")`` and ``session.txt2img(..., n_iter=N, executor="ray")`` run here. Ray is an
optional extra (``pip install "nbdiffuse[ray]"``); this module is imported only when an executor is asked for, so
the one-GPU path never imports Ray.

- **Where it runs.** :func:`start_ray` joins the Ray that is already initialised in this process, or the cluster at
  ``address`` / ``$RAY_ADDRESS``; without either it starts a local Ray bound to 127.0.0.1 only (dashboard off, usage
  statistics off): nothing listens on another interface and nothing is contacted.
- **Workers.** :class:`RayExecutor` starts one actor per GPU of the cluster (``num_gpus=1`` each), or, on a cluster
  without GPUs, one per CPU slot (``cpus_per_worker`` torch threads each). Each actor builds a
  :class:`~nbdiffuse.Session` with the driver session's settings (dtypes, attention, memory mode, VAE tiling,
  compile, models folder, styles, registered upscalers), loads the same model file once, and refuses to run when
  the file's sha256 differs from the one the driver loaded (a copy on another machine must be the same bytes).
- **Same pictures.** A cell is a txt2img parameter dict; a worker runs it with ``session.txt2img`` exactly as the
  driver would, so seeds, noise (drawn on the CPU per image) and infotexts are the same, and the latents are
  bit-identical to a local run on the same kind of device with the same torch thread count. A large ``n_iter`` is
  cut into its batches (same ``batch_size``, the seeds each batch would have had), never into single images.
- **As they finish.** Results stream back in completion order; the driver saves their images (workers write
  nothing), and the grid fills in place. Stop (``session.interrupt()``, the panel's Stop, or the kernel's interrupt)
  tells running workers to stop after their current step and drops queued cells; finished cells are kept and
  ``grid.resume()`` runs the rest on the same workers.
- **Faults.** A worker that dies loses at most the cell it was running: that cell is retried once on another
  worker (Ray restarts the dead actor once, reloading the model); a cell that dies twice is left empty and named
  in the grid's notes, which say what happened. Errors raised by a job itself (a bad parameter, a NaN) are raised
  here as they would be locally.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = 'pip install "nbdiffuse[ray]"'
_POLL_S = 0.1  # how often the driver looks at the Stop flag while it waits for results


def import_ray():
    """Ray, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"executor='ray' needs Ray, which is not installed here ({e}). Install it with: "
                          f"{INSTALL_HINT}. Without it, leave executor out: the grid runs on this session's device."
                          ) from None
    return ray


def start_ray(address: str | None = None, **init_kwargs) -> dict:
    """Join or start Ray and return what it offers (``ray.cluster_resources()``).

    Already initialised in this process: joined as it is. ``address`` (or ``$RAY_ADDRESS``): that cluster is joined
    (``"auto"`` finds one started with ``ray start`` on this machine). Neither: a local Ray starts, bound to the
    loopback interface only, with the dashboard and usage statistics off; ``init_kwargs`` go to ``ray.init``
    (``num_cpus=2`` for tests, ``num_gpus``...).
    """
    ray = import_ray()
    if ray.is_initialized():
        return dict(ray.cluster_resources())
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="WARNING")
    options.update(init_kwargs)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would report usage over the internet
    if address is not None:
        ray.init(address=address, **options)
        return dict(ray.cluster_resources())
    with _loopback_only():
        ray.init(**options)
    return dict(ray.cluster_resources())


@contextlib.contextmanager
def _loopback_only():
    """While a local Ray starts: its node address is 127.0.0.1, so its servers (GCS, raylet, workers, object
    manager) listen on the loopback interface only. Ray does this itself where clusters are off (its
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` switch, read by ``get_node_ip_address``); the processes it starts now
    inherit the variable, and the node keeps the address once started."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


# ------------------------------------------------------------------------------------------------ workers

@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to become a copy of the driver's session: the model (a path, or ``"toy"``), its sha256,
    the VAE swapped in (path, sha256), and the Session settings."""

    model: str
    sha256: str | None
    vae: str | None = None
    vae_sha256: str | None = None
    session: dict = field(default_factory=dict)  # Session(...) keywords: dtypes, attention, memory, models_dir...
    styles: dict = field(default_factory=dict)
    upscalers: dict = field(default_factory=dict)  # registered name -> path
    compile: dict | None = None
    threads: int | None = None  # torch threads of a CPU worker


def _file_sha256(path: str) -> str:
    """The full sha256 of a model file, or of a diffusers folder's files (each file's sha256, in name order)."""
    from .models.hashing import sha256

    p = Path(path)
    if p.is_file():
        return sha256(p)
    if p.is_dir():
        import hashlib

        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
            h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256(f).encode() + b"\n")
        return h.hexdigest()
    raise FileNotFoundError(f"{p}: no such file or folder")


def _model_file(bundle) -> str:
    """The path a worker loads ``bundle`` from: its file or folder, or the toy model's name."""
    if bundle.info.get("source") == "nbdiffuse.toy":
        return bundle.name  # "toy" / "toy-inpainting": the package's own file on every worker
    if bundle.path is None:
        raise ValueError(f"executor='ray': the loaded model {bundle.name!r} was built in memory, so workers cannot "
                         "load it. Fix: save it (nbdiffuse.models.save_checkpoint) and session.load(the file), or run "
                         "without executor.")
    return str(bundle.path)


def _model_path(model: str) -> str:
    """The file behind a WorkerSpec's model: itself, or for ``"toy"``/``"toy-inpainting"`` the package's own."""
    if model not in ("toy", "toy-inpainting"):
        return model
    from .toy import CHECKPOINT_NAME, INPAINTING_CHECKPOINT_NAME, WEIGHTS_DIR

    return str(Path(WEIGHTS_DIR) / (INPAINTING_CHECKPOINT_NAME if model == "toy-inpainting" else CHECKPOINT_NAME))


def worker_spec(session, *, threads: int | None = None) -> WorkerSpec:
    """The :class:`WorkerSpec` of ``session`` (refused, saying why, when its state cannot travel)."""
    bundle = session._require_model()
    if session.hooks:
        raise ValueError("executor='ray': session.hooks run in this kernel; workers cannot call them. Fix: "
                         "session.hooks.clear() for the fan-out, or run without executor.")
    model = _model_file(bundle)
    digest = _file_sha256(_model_path(model))
    vae_path = vae_digest = None
    if session._original_vae is not None:  # load_vae() swapped another VAE in
        vae_path = bundle.info.get("vae")
        if not vae_path or not Path(str(vae_path)).exists():
            raise ValueError("executor='ray': the VAE in use was given as a module, so workers cannot load it. Fix: "
                             "session.load_vae(a file or a name in the VAE folder).")
        vae_path = str(vae_path)
        vae_digest = _file_sha256(vae_path)
    kwargs = dict(session._overrides, attention=session.attention, memory=session.memory,
                  vae_tiling=session.vae_tiling,
                  models_dir=str(session.models_dir) if session.models_dir is not None else None)
    return WorkerSpec(model=model, sha256=digest, vae=vae_path, vae_sha256=vae_digest, session=kwargs,
                      styles=dict(session.styles), upscalers={k: str(v) for k, v in session.upscalers.files.items()},
                      compile=session._compile_options, threads=threads)


class CellWorker:
    """One worker: a Session holding the driver's model, running whole cells (txt2img parameter dicts)."""

    def __init__(self, spec: WorkerSpec, index: int):
        start = time.perf_counter()
        import torch

        if spec.threads:
            torch.set_num_threads(spec.threads)
        from .session import Session

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.index, self.spec = index, spec
        self.session = Session(device=device, outputs_dir=None, progress=False, **spec.session)
        self.session.styles.update(spec.styles)
        for name, path in spec.upscalers.items():
            self.session.upscalers.register(name, path)
        if spec.compile is not None:
            self.session.compile(**spec.compile)
        path = _model_path(spec.model)
        found = _file_sha256(path)
        if found != spec.sha256:
            raise ValueError(f"worker {index} on {socket.gethostname()}: {path} is not the driver's model file "
                             f"(sha256 {found[:12]}…, the driver's {str(spec.sha256)[:12]}…). Fix: give every "
                             "machine the same file at the same path (a shared disk).")
        self.session.load(spec.model)
        if spec.vae is not None:
            if _file_sha256(spec.vae) != spec.vae_sha256:
                raise ValueError(f"worker {index} on {socket.gethostname()}: {spec.vae} is not the driver's VAE file.")
            self.session.load_vae(spec.vae)
        self.loaded = {}  # what the cells' Checkpoint/VAE axes switched to
        self.load_s = time.perf_counter() - start

    def info(self) -> dict:
        import torch

        s = self.session
        gpu = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else None
        return dict(index=self.index, pid=os.getpid(), host=socket.gethostname(), device=str(s.device), gpu=gpu,
                    precision=s.precision.short(), attention=s.attention, threads=torch.get_num_threads(),
                    load_s=self.load_s)

    def run(self, cell: dict):
        """One cell: ``(Result, seconds the worker spent)``. A cell without a Checkpoint/VAE axis value runs on the
        driver's model and VAE again, as a local grid loads them back after such an axis."""
        t = time.perf_counter()
        wanted = cell.get("_load", {})
        if "model" not in wanted and self.loaded.pop("model", None) is not None:
            self.session.load(self.spec.model)
            self.loaded.pop("vae", None)
            if self.spec.vae is not None:
                self.session.load_vae(self.spec.vae)
        if "vae" not in wanted and self.loaded.pop("vae", None) is not None:
            self.session.load_vae(self.spec.vae)
        result = self.session._cell(cell, self.loaded)
        return result, time.perf_counter() - t

    def cell_seconds(self, cells: list) -> list:
        """The time estimate of each cell on this worker (a short timed probe here, as ``session.plan_xyz``)."""
        return self.session._cell_seconds(cells)

    def interrupt(self) -> None:
        self.session.interrupt()


# ------------------------------------------------------------------------------------------------ driver

class RayExecutor:
    """Runs whole cells (txt2img parameter dicts) on Ray workers; see the module's docstring.

    ``workers``: how many (default: one per GPU of the cluster, or one per CPU slot without GPUs).
    ``cpus_per_worker``: CPU slots (and torch threads) per worker on a cluster without GPUs. ``address`` and
    ``init`` (``ray.init`` keywords) say which Ray to join or start (:func:`start_ray`).

    >>> grid = session.xyz(x=("Seed", "1-8"), prompt="a cat", executor="ray")              # doctest: +SKIP
    >>> ex = RayExecutor(workers=2, init=dict(num_cpus=2))                                  # doctest: +SKIP
    >>> grid = session.xyz(x=("Steps", "10, 20"), executor=ex); ex.shutdown()              # doctest: +SKIP
    """

    def __init__(self, workers: int | None = None, *, address: str | None = None, cpus_per_worker: int = 1,
                 init: dict | None = None):
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers={workers!r}: give a positive number of workers, or None for one per GPU "
                             "(or CPU slot)")
        self.requested = workers
        self.address = address
        self.cpus_per_worker = int(cpus_per_worker)
        self.init = dict(init or {})
        self.actors: list = []
        self.infos: list[dict] = []
        self.deaths: list[int] = []
        self.running: dict[int, tuple] = {}  # worker index -> (cell key, start time) while it runs a cell
        self._spec: WorkerSpec | None = None
        self._gpus = 0

    # ---- workers
    def start(self, session) -> RayExecutor:
        """Start (or keep) the workers for ``session``'s model and settings; a changed model restarts them.
        Raises before any cell runs when no worker could load the model."""
        ray = import_ray()
        resources = start_ray(self.address, **self.init)
        self._gpus = int(resources.get("GPU", 0))
        threads = None if self._gpus else self.cpus_per_worker
        spec = worker_spec(session, threads=threads)
        options = dict(num_gpus=1, num_cpus=1) if self._gpus else dict(num_cpus=self.cpus_per_worker)
        # max_concurrency=2: interrupt() runs beside run() (the driver sends at most one cell per worker);
        # max_restarts=1: a worker that dies is started once more, loading the model again.
        remote = ray.remote(max_concurrency=2, max_restarts=1, **options)(CellWorker)
        if self.actors and spec == self._spec:
            dead = [i for i, d in enumerate(self.deaths) if d > 1]
            for i in dead:  # died twice: Ray gave up on it; a new one takes its place
                self.actors[i], self.deaths[i] = remote.remote(spec, i), 0
            if dead:
                self._wait_ready(dead)
            return self
        self.shutdown(keep_ray=True)
        count = self.requested or (self._gpus or max(1, int(resources.get("CPU", 1)) // self.cpus_per_worker))
        self.actors = [remote.remote(spec, i) for i in range(count)]
        self.deaths = [0] * count
        self.infos = [{}] * count
        self._wait_ready(range(count))
        self._spec = spec
        return self

    def _wait_ready(self, which) -> None:
        """Wait until the workers ``which`` hold the model (their :meth:`CellWorker.info` answers)."""
        ray = import_ray()
        for i in which:
            try:
                self.infos[i] = ray.get(self.actors[i].info.remote())
            except Exception as e:  # noqa: BLE001 - a worker that could not load: say which and why
                self.shutdown(keep_ray=True)
                raise RuntimeError(f"Ray worker {i} could not start: {_cause(e)}") from None

    def shutdown(self, keep_ray: bool = True) -> None:
        """Stop the workers (and, with ``keep_ray=False``, this process's connection to Ray: ``ray.shutdown()``)."""
        if self.actors:
            ray = import_ray()
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.actors, self.infos, self._spec, self.running = [], [], None, {}
        if not keep_ray and "ray" in sys.modules:
            sys.modules["ray"].shutdown()

    @property
    def workers(self) -> int:
        return len(self.actors)

    def describe(self) -> str:
        """One line: how many workers, where, and how long the model load took."""
        if not self.infos:
            return "Ray workers not started"
        kinds = collections.Counter((i["gpu"] or i["device"]) for i in self.infos)
        where = ", ".join(f"{n}× {k}" for k, n in kinds.items())
        threads = "" if self._gpus else f", {self.infos[0]['threads']} thread(s) each"
        hosts = len({i["host"] for i in self.infos})
        load = max(i["load_s"] for i in self.infos)
        return (f"{len(self.infos)} Ray worker(s) on {hosts} machine(s) ({where}{threads}; "
                f"{self.infos[0]['precision']}, attention={self.infos[0]['attention']}; model loaded in "
                f"{load:.1f} s)")

    def cell_seconds(self, cells: list) -> list:
        """Each cell's estimated seconds, measured on the first worker."""
        ray = import_ray()
        return ray.get(self.actors[0].cell_seconds.remote(cells))

    # ---- cells
    def run(self, items: Iterable[tuple], *, control=None, notes: list | None = None,
            save_to: str | os.PathLike | None = None) -> Iterator[tuple]:
        """Run ``(key, cell)`` items, yielding ``(key, Result)`` as they finish.

        ``control``: the session's stop flags (``control.interrupt`` set: running cells stop after their step,
        queued ones are dropped; the interrupted Results are yielded too, with ``interrupted=True``).
        ``notes``: what happened (a worker died, a cell was retried or failed) is appended there.
        ``save_to``: each Result's images are saved under this folder (A1111's dated layout) as they arrive.
        """
        ray = import_ray()
        if not self.actors:
            raise RuntimeError("RayExecutor.run: call start(session) first")
        notes = notes if notes is not None else []
        queue = collections.deque((key, cell, None) for key, cell in items)  # (key, cell, worker to avoid)
        retried: set = set()
        live = [i for i in range(len(self.actors)) if self.deaths[i] <= 1]
        idle = collections.deque(w for w in live if self.deaths[w] == 0)
        pending: dict = {}  # ObjectRef -> (worker, key, cell, submitted at)
        # a worker Ray is starting again -> when to ask next whether it is back (one that died in an earlier run
        # is asked first: a cell sent to a worker still loading would fail as if it had died)
        restarting: dict[int, float] = {w: 0.0 for w in live if self.deaths[w] == 1}
        probes: dict = {}  # ObjectRef of info() -> worker
        stopping = False
        self.running = {}

        def submit():
            while idle and queue and not stopping:
                key, cell, avoid = queue[0]
                choice = next((w for w in idle if w != avoid), None)
                if choice is None and any(w not in idle for w in live if w != avoid):
                    return  # the retry waits for another worker to be free
                choice = idle[0] if choice is None else choice
                idle.remove(choice)
                queue.popleft()
                ref = self.actors[choice].run.remote(cell)
                pending[ref] = (choice, key, cell, time.perf_counter())
                self.running[choice] = (key, time.perf_counter())

        def probe():
            now = time.monotonic()
            for w, when in restarting.items():
                if when <= now and w not in probes.values():
                    probes[self.actors[w].info.remote()] = w
                    restarting[w] = now + 0.5

        def died(w: int) -> None:
            self.deaths[w] += 1
            restarting.pop(w, None)
            if self.deaths[w] > 1:  # Ray restarts a worker once (max_restarts=1)
                live.remove(w)
            else:
                restarting[w] = time.monotonic() + 0.5  # the model loads again: ask when it is back

        def stop():
            nonlocal stopping
            if not stopping:
                stopping = True
                for w, *_ in pending.values():
                    self.actors[w].interrupt.remote()
                queue.clear()

        try:
            while queue or pending:
                submit()
                if control is not None and control.interrupt.is_set():
                    stop()
                if not pending and not restarting:
                    if queue:  # nobody left to run them
                        notes.append(f"No Ray worker is left alive: {len(queue)} cell(s) were not generated "
                                     "(resume() starts new workers).")
                    break
                probe()
                try:
                    if pending or probes:
                        ready, _ = ray.wait([*pending, *probes], num_returns=1, timeout=_POLL_S)
                    else:
                        ready = []
                        time.sleep(_POLL_S)
                except KeyboardInterrupt:
                    stop()
                    continue
                for ref in ready:
                    if ref in probes:
                        w = probes.pop(ref)
                        try:
                            self.infos[w] = ray.get(ref)
                        except ray.exceptions.ActorUnavailableError:
                            continue  # still loading: asked again later
                        except ray.exceptions.RayActorError:
                            died(w)
                            continue
                        restarting.pop(w, None)
                        idle.append(w)
                        continue
                    w, key, cell, submitted = pending.pop(ref)
                    self.running.pop(w, None)
                    try:
                        result, worker_s = ray.get(ref)
                    except ray.exceptions.RayActorError as e:  # ActorDiedError, or ActorUnavailableError: Ray
                        # restarts the worker (what a killed one gets while it is running a cell)
                        died(w)
                        what = f"Ray worker {w} died while running cell {_label(key)} ({_cause(e)})"
                        if stopping:
                            notes.append(f"{what}.")
                        elif key in retried:
                            notes.append(f"{what}; it had been retried already, so it is left empty: resume() "
                                         "tries it again.")
                        else:
                            retried.add(key)
                            queue.appendleft((key, cell, w))
                            notes.append(f"{what}; retried on another worker.")
                        continue
                    except ray.exceptions.RayTaskError as e:
                        stop()
                        self._drain(pending)
                        raise e.as_instanceof_cause() from None
                    idle.append(w)
                    result.timings["worker"] = w
                    result.timings["worker_s"] = worker_s
                    result.timings["roundtrip_s"] = time.perf_counter() - submitted
                    if save_to is not None and not result.interrupted:
                        _save(result, save_to)
                    yield key, result
        finally:
            if pending:  # the consumer stopped early, or an error: nothing may keep running for nobody
                stop()
                self._drain(pending)
            self.running = {}

    def _drain(self, pending: dict, timeout: float = 60.0) -> None:
        """Wait (bounded) for interrupted cells to come back, so the workers are free for the next run."""
        ray = import_ray()
        if pending:
            with contextlib.suppress(Exception):
                ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
            pending.clear()

    def __repr__(self) -> str:
        return f"RayExecutor({self.describe()})"


def _save(result, folder) -> None:
    """The driver saves what workers made (a worker on another machine cannot write here); never loses it."""
    try:
        result.save(Path(folder))
    except OSError as e:
        result.paths = [None] * len(result.images)
        result.warnings.append(f"Could not save images to {folder} ({type(e).__name__}: {e}); they are kept in "
                               "the Result: result.save(folder) writes them elsewhere.")


def _cause(e: BaseException) -> str:
    text = str(getattr(e, "cause", None) or e).strip().splitlines()
    last = [line for line in text if line.strip()]
    return (last[-1] if last else type(e).__name__)[:300]


def _label(key) -> str:
    return str(key) if not isinstance(key, tuple) else "(" + ", ".join(map(str, key)) + ")"


def executor_for(session, executor) -> RayExecutor:
    """``executor`` ("ray" or a :class:`RayExecutor`) started for ``session``: the session keeps the "ray" one, so
    its workers (and their loaded models) serve the next grid too."""
    if isinstance(executor, str):
        if executor.lower() != "ray":
            raise ValueError(f"executor={executor!r}: the one executor is \"ray\" (or a nbdiffuse.RayExecutor); "
                             "leave it out to run here")
        executor = session.__dict__.get("_ray_executor") or RayExecutor()
        session.__dict__["_ray_executor"] = executor
    elif not isinstance(executor, RayExecutor):
        raise ValueError(f"executor={executor!r}: give \"ray\" or a nbdiffuse.RayExecutor")
    return executor.start(session)


def merge_results(stream: Iterator[tuple], p, notes: list, *, progress: bool = True, show: bool = True):
    """One Result from the ``(batch index, Result)`` pairs of ``stream`` (in any order), in batch order, as a local
    ``n_iter`` run returns it; shown in place as batches arrive. Interrupted batches are left out and make the
    Result ``interrupted``; what the executor noted (a worker died...) becomes its warnings."""
    import torch

    from .jobs.progress import progress_bar
    from .jobs.result import Result

    start = time.perf_counter()
    parts: dict[int, object] = {}
    interrupted = False
    handle = _display(f"txt2img: {p.n_iter} batches on Ray workers…") if show else None
    bar = progress_bar(p.n_iter, "batches", leave=False, disable=not progress)

    def merged():
        done = [parts[b] for b in sorted(parts)]
        timings = {"total_s": time.perf_counter() - start, "batches": len(done),
                   "worker_s": sum(r.timings.get("worker_s", 0.0) for r in done)}
        warnings = list(dict.fromkeys([w for r in done for w in r.warnings] + notes))
        latents = torch.cat([r.latents for r in done]) if done else torch.empty(0)
        return Result(images=[i for r in done for i in r.images], infotexts=[t for r in done for t in r.infotexts],
                      seeds=[s for r in done for s in r.seeds], subseeds=[s for r in done for s in r.subseeds],
                      latents=latents, params=p, timings=timings, paths=[q for r in done for q in r.paths],
                      interrupted=interrupted or len(done) < p.n_iter, warnings=warnings)

    try:
        for b, r in stream:
            if r.interrupted:
                interrupted = True
                continue
            parts[b] = r
            bar.update(1)
            if handle is not None:
                handle.update(merged())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stream.close()
        bar.close()
    result = merged()
    if handle is not None:
        handle.update(result)
    return result


def _display(text: str):
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return None
    return display(text, display_id=True) if get_ipython() is not None else None


def makespan(seconds: list, workers: int) -> float:
    """The time ``workers`` take for cells of ``seconds`` handed out in order to whichever worker is free first
    (what :meth:`RayExecutor.run` does)."""
    if not seconds:
        return 0.0
    free = [0.0] * max(1, workers)
    for s in seconds:
        i = free.index(min(free))
        free[i] += s
    return max(free)


__all__ = ["RayExecutor", "start_ray", "makespan"]
