"""``nbdiffuse.doctor()``: what this kernel can run, in one cell, before anything is loaded. (The module is
``health`` so that ``nbdiffuse.doctor`` stays the function: a submodule of that name would shadow it.)

Every check is independent and never raises: what it cannot find becomes a line that says so and what to do.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

GiB = 2**30
# Typical half-precision sizes (parameters x 2 bytes), for what memory="auto" would pick before a model is loaded:
# (whole model, largest component = the UNet). SD1.5: UNet 860M, CLIP-L 123M, VAE 84M; SDXL: UNet 2.57B, CLIP-L +
# OpenCLIP-bigG 818M, VAE 84M.
TYPICAL_MODELS = {"SD1.5": (2.1 * GiB, 1.72 * GiB), "SDXL": (6.9 * GiB, 5.14 * GiB)}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device(session):
    import torch

    if session is not None:
        return session.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_torch(session=None) -> str:
    import torch

    cuda = torch.version.cuda
    line = f"torch {torch.__version__}, " + (f"built for CUDA {cuda}" if cuda else "a CPU-only build")
    driver = _nvidia_driver()
    line += f"; NVIDIA driver {driver}" if driver else "; no NVIDIA driver found (nvidia-smi)"
    if driver and not cuda:
        line += ". This torch cannot use the GPU: install a CUDA build (https://pytorch.org/get-started/locally/)"
    return line


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def check_card(session=None) -> str:
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA device: models run on the CPU (minutes per image at 512x512). On a GPU machine, check the "
                "driver line above and that torch is a CUDA build")
    device = _device(session)
    device = device if device.type == "cuda" else torch.device("cuda")
    free, total = torch.cuda.mem_get_info(device)
    major, minor = torch.cuda.get_device_capability(device)
    return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}): "
            f"{free / GiB:.1f} of {total / GiB:.1f} GB free")


def check_precision(session=None) -> str:
    import torch

    try:
        from .models.precision import choose_dtypes
    except ImportError:
        return "not available in this version (the dtype policy module is missing)"
    if session is not None:
        return session.precision.describe().removeprefix("Precision: ")
    device = _device(session)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    policy = choose_dtypes(device, capability).describe().removeprefix("Precision: ")
    return policy + " (before a model is loaded: diffusers' default configs)"


def check_memory(session=None) -> str:
    try:
        from .models.memory import choose_memory_mode, free_memory, offloads
    except ImportError:
        return "not available in this version (the memory modes module is missing)"
    device = _device(session)
    if not offloads(device):
        return f"full ({device.type}: the model is in RAM, memory modes have no effect)"
    free = free_memory(device)
    if free is None:
        return f"full (free memory on {device} unknown)"
    picks = [f"{name} -> {choose_memory_mode(int(free), int(size), int(largest))[0]}"
             for name, (size, largest) in TYPICAL_MODELS.items()]
    return f"auto would pick, with {free / GiB:.1f} GB free: " + ", ".join(picks)


def check_attention(session=None) -> str:
    from .models.attention import attention_backends
    from .models.compile import compile_problem

    device = _device(session)
    parts = [name + (" (usable)" if why is None else f" (not usable: {why})")
             for name, why in attention_backends(device).items()]
    chosen = getattr(session, "attention", "sdpa")
    problem = compile_problem(device)
    return (f"{chosen} in use; " + ", ".join(parts) + "; session.compile(): "
            + ("available" if problem is None else f"not available ({problem})"))


def check_widgets(session=None) -> str:
    version = _version("ipywidgets")
    if version is None:
        return "ipywidgets is not installed: pip install ipywidgets (session.panel() needs it)"
    line = f"ipywidgets {version}"
    front = [f"{p} {v}" for p in ("jupyterlab_widgets", "widgetsnbextension") if (v := _version(p))]
    line += f", {', '.join(front)}" if front else ", no front-end package (pip install jupyterlab_widgets)"
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return line + "; not running in a Jupyter kernel, so no widget can be shown here"
    comms = getattr(kernel, "comm_manager", None) is not None or _version("comm") is not None
    return line + ("; a Jupyter kernel with comms: widgets can render if the front end has the widget extension "
                   "(if the panel shows as text like 'VBox(...)', install jupyterlab_widgets where JupyterLab runs "
                   "and reload the page)" if comms else "; the kernel has no comm support: update ipykernel")


def check_ray(session=None) -> str:
    """Whether grids and batches can fan out on Ray workers (``executor="ray"``); never imports or starts Ray."""
    version = _version("ray")
    if version is None:
        return ("not installed: grids and batches run on this session's device (pip install \"nbdiffuse[ray]\" "
                "for executor=\"ray\")")
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return f"ray {version}, initialised in this kernel: executor=\"ray\" uses it"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return f"ray {version}; RAY_ADDRESS={address}: executor=\"ray\" joins that cluster"
    return (f"ray {version}; executor=\"ray\" starts a local Ray bound to 127.0.0.1 (one worker per GPU; "
            "RAY_ADDRESS or ray.init(address=...) joins a cluster)")


def check_models(session=None, models_dir=None) -> str:
    from .models.folders import ModelFolders

    folder = models_dir or getattr(session, "models_dir", None)
    candidates = [Path(folder).expanduser()] if folder else [Path("models"), Path.home() / "stable-diffusion-webui",
                                                              Path.home() / "ComfyUI"]
    for path in candidates:
        if path.is_dir() or path.suffix.lower() in (".yaml", ".yml") and path.is_file():
            folders = ModelFolders(path)
            counts = ", ".join(f"{len(v)} {k}" for k, v in folders.all().items() if v) or "no model files"
            return f"{path}: {counts} (sources read: {' | '.join(folders.summary())})"
    where = " or ".join(str(p) for p in candidates)
    return (f"no models folder at {where}: pass Session(models_dir=...) (an A1111 or ComfyUI folder), or load a file "
            "with session.load(path)")


def check_disk(session=None, outputs_dir="outputs") -> str:
    target = getattr(session, "outputs_dir", outputs_dir) if session is not None else outputs_dir
    if target is None:
        return "saving is off (outputs_dir=None)"
    path = Path(target).expanduser().resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    low = " (low: an SD1.5 PNG is about 0.5 MB, a grid several MB)" if usage.free < 1 * GiB else ""
    return f"{usage.free / GiB:.1f} GB free for {path}{low}"


CHECKS: dict[str, Callable] = {
    "torch": check_torch, "card": check_card, "precision": check_precision, "memory": check_memory,
    "attention": check_attention, "widgets": check_widgets, "ray": check_ray, "models": check_models,
    "disk": check_disk,
}


def doctor(session=None, *, models_dir=None, outputs_dir="outputs", file=None) -> list[str]:
    """Print what this kernel can run: torch, CUDA and the driver, the card and its free memory, the dtypes and
    memory mode ``auto`` would pick, attention back-ends and compile, ipywidgets and the front end, Ray, the models
    folder and free disk for outputs. Pass a ``session`` to check its settings. Never raises: a check that fails
    prints what it could not find. Returns the lines.

    >>> import nbdiffuse
    >>> lines = nbdiffuse.doctor(file=open("/dev/null", "w"))
    >>> [line.split(":")[0] for line in lines][:3]
    ['torch', 'card', 'precision']
    """
    lines = []
    for name, check in CHECKS.items():
        try:
            if name == "models":
                text = check(session, models_dir)
            elif name == "disk":
                text = check(session, outputs_dir)
            else:
                text = check(session)
        except Exception as e:  # a check must never stop the others
            text = (f"could not check ({type(e).__name__}: {e}); the rest of nbdiffuse may still work: "
                    "report it with this line")
        lines.append(f"{name}: {text}")
    print("\n".join(lines), file=file or sys.stdout)
    return lines
