"""Session: the one stateful object — the loaded model, device/dtype policy, hooks, caches, stop flags."""

from __future__ import annotations

import collections
import functools
import gc
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from .jobs.driver import Hook, JobControl
from .jobs.lock import HeldJob, JobLock
from .jobs.memory_stats import reset_peaks
from .jobs.params import GenerationParams, with_native_size
from .jobs.result import Result
from .jobs.txt2img import txt2img_steps
from .jobs.upscalers import Upscalers
from .models.bundle import ModelBundle
from .models.memory import (
    VAE_TILING,
    MemoryPlan,
    Offload,
    check_memory_mode,
    offloads,
    plan_memory,
    return_freed_heap,
)
from .models.precision import Policy, apply_policy, choose_dtypes, loading_dtypes
from .prompts.conditioning import TextEncoder, TokenCount, count_tokens
from .sampling.base import StepState


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (what A1111 runs), float32 elsewhere (CPU half precision is slow and lossy)."""
    return torch.float16 if device.type == "cuda" else torch.float32


MAX_EMPHASIS = 100.0  # (x:100) or 48 nested brackets; beyond this the conditioning overflows into NaN pictures


def _check_emphasis(p: GenerationParams) -> None:
    """Refuse, before any work, an emphasis weight so large (3,000 nested brackets: x1.1^3000) that the text
    encoder's output overflows and the picture comes out black."""
    from .prompts.parser import parse_attention

    for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        for piece, weight in parse_attention(getattr(p, name)):
            if not abs(weight) <= MAX_EMPHASIS:
                raise ValueError(f"{name}: the emphasis on {piece.strip()[:40]!r} multiplies it by {weight:.3g}; "
                                 f"weights beyond ±{MAX_EMPHASIS:g} only make NaN pictures. Use fewer brackets or "
                                 "an explicit weight like (word:1.5).")


def _exclusive(what: str):
    """Run a Session method with the session held (:mod:`nbdiffuse.jobs.lock`): never during another thread's job,
    and refused while this thread's own job is paused."""
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            release = self._lock.acquire(what, job=False)
            try:
                return method(self, *args, **kwargs)
            finally:
                release()
        return run
    return wrap


class StepRun:
    """A generation driven step by step: iterate it (or call ``next()``); ``result`` is set after the last step.

    >>> run = session.steps(prompt="a red circle", steps=20)   # doctest: +SKIP
    >>> state = next(run)                                       # doctest: +SKIP
    >>> for state in run: pass                                  # doctest: +SKIP
    >>> run.result.images[0]                                    # doctest: +SKIP

    (``next(run)`` is step 1 of 20; the loop runs the rest.)
    """

    def __init__(self, gen):
        self._gen = gen
        self.result: Result | None = None
        self.state: StepState | None = None

    def __iter__(self) -> Iterator[StepState]:
        return self

    def __next__(self) -> StepState:
        if self.result is not None:
            raise StopIteration
        try:
            self.state = next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            raise
        return self.state

    def finish(self) -> Result:
        """Run the remaining steps and return the Result."""
        for _ in self:
            pass
        return self.result

    def close(self) -> None:
        self._gen.close()


class Session:
    """Holds the loaded model and runs jobs on it: the one object a notebook user works with.

    What you can do with it:

    - **Models**: ``load(path | name | "toy")``, ``load_vae(...)``, ``unload()``, ``models()`` (what the models
      folders hold; ``models_dir`` may be an A1111/ComfyUI folder, an ``extra_model_paths.yaml`` or a Hugging Face
      cache: :mod:`nbdiffuse.models.folders`), ``model`` (the loaded :class:`~nbdiffuse.models.ModelBundle`;
      ``model.native_size``),
      ``upscalers`` (``upscalers.register(path)`` makes an ESRGAN-family file an ``hr_upscaler`` name).
    - **Generate** with A1111's API fields: ``txt2img(...)``, ``img2img(init_images, ...)``, ``loopback(...)``,
      ``hires_fix(result)`` (A1111's ✨); each returns a :class:`~nbdiffuse.Result` and saves under ``outputs_dir``.
    - **Grids**: ``plan_xyz(x, y, z, ...)`` (counts, sizes, time estimate, before any work), ``xyz(...)``.
    - **Open the loop**: ``steps(...)`` (a generation driven with ``next()``), ``debug(...)`` (step-through
      debugger), ``probe(...)`` (UNet activations), ``attention_maps(...)``, ``hooks`` (run after every step),
      ``sigmas(...)`` (the noise levels a job would run, hires pass included).
    - **Stop**: ``interrupt()`` / ``skip()`` from any thread; jobs on one session never overlap (another thread's
      job waits; the same thread's is refused while a stepped job is paused).
    - **Prompts**: ``count_tokens(prompt)`` (A1111's ``76/150``), ``load_styles(path)`` / ``styles``.
    - **The panel**: ``panel()``, the same as ``nbdiffuse.ui.Panel(session)`` (ipywidgets).

    >>> from nbdiffuse import Session
    >>> s = Session(outputs_dir=None)                             # doctest: +SKIP
    >>> s.load("path/to/diffusers-folder")                       # doctest: +SKIP
    >>> r = s.txt2img(prompt="a red circle", steps=20, seed=1)   # doctest: +SKIP

    ``device``: default CUDA when present, else CPU. ``dtype``: default float16 on CUDA, float32 on CPU.
    ``unet_dtype``, ``vae_dtype``, ``text_encoder_dtype``: one component's dtype; left out, the VAE runs in bfloat16
    on cards that have it (else float32; float16 only for a VAE whose config says it is safe) and the others in
    ``dtype``. ``upcast_attention``: q·k and softmax in float32 (``None``: where the model asks for it, SD2.x-v in
    float16). ``session.precision`` is the policy (:mod:`nbdiffuse.models.precision`); a load says it in
    ``model.info["load_line"]``, and ``repr(session)`` shows it.
    ``memory``: ``"auto"`` (default), ``"full"``, ``"medvram"`` or ``"lowvram"``, which components stay on the GPU
    (:mod:`nbdiffuse.models.memory`; no effect on the CPU); ``session.memory = ...`` changes it, and
    ``session.memory_plan`` says what runs and why (also in ``model.info["load_line"]`` and ``repr(session)``).
    ``vae_tiling``: ``"auto"`` decodes in tiles only an image whose whole decode would not fit in free memory,
    ``True`` every image larger than one tile, ``False`` never (A1111's decode, pixel for pixel); a tiled image's
    infotext says ``VAE tiling: True``. Every Result's ``timings["memory"]`` is A1111's memory line (CUDA) or
    the process's peak RSS (CPU).
    ``outputs_dir``: where images are saved (A1111 layout); ``None`` disables saving.
    ``hooks``: callables ``hook(state)`` run after every step of every job (a returned tensor replaces the latent).
    """

    def __init__(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 outputs_dir: str | Path | None = "outputs", progress: bool = True,
                 models_dir: str | Path | None = None, *, attention: str = "sdpa",
                 unet_dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None,
                 text_encoder_dtype: torch.dtype | None = None, upcast_attention: bool | None = None,
                 memory: str = "auto", vae_tiling: bool | str = "auto"):
        self._overrides = dict(dtype=dtype, unet_dtype=unet_dtype, vae_dtype=vae_dtype,
                               text_encoder_dtype=text_encoder_dtype, upcast_attention=upcast_attention)
        self.models_dir = Path(models_dir).expanduser() if models_dir is not None else None
        self._folders = None
        self._original_vae = None  # the checkpoint's own VAE while load_vae() has swapped in another
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.progress = progress
        self.hooks: list[Hook] = []
        self.model: ModelBundle | None = None
        self.encoder: TextEncoder | None = None
        self.last_result: Result | None = None
        self._control = JobControl()
        self._lock = JobLock()
        self._call_costs: collections.deque[float] = collections.deque(maxlen=20)  # s per model call per pixel
        self._loras = {}  # (path, mtime) -> LoRA read from disk
        self._hypernets = {}  # (path, mtime) -> Hypernetwork read from disk
        self.upscalers = Upscalers()  # hr_upscaler model files by name, and the one upscaler model in memory
        self._refiner: tuple | None = None  # (name asked for, ModelBundle, TextEncoder): the refiner jobs switch to
        self._find_upscaler()  # the models folder's upscalers are choices from the start (the panel lists them)
        from .models.attention import check_attention

        self.attention = check_attention(attention, self.device)  # the attention back-end of every model loaded
        self._compile_options: dict | None = None  # set by compile(): every model loaded is compiled
        self._offload: Offload | None = None  # medvram/lowvram's hooks on the loaded model
        self.memory_plan: MemoryPlan
        self.vae_tiling = vae_tiling
        self.memory = memory
        from .models.checkpoint import import_model_classes_in_background

        import_model_classes_in_background()  # the first load() needs them: several seconds of imports

    # models -----------------------------------------------------------------------------------------------
    @property
    def precision(self) -> Policy:
        """The dtype of each component and whether attention is upcast: the loaded model's, or (before a load)
        what a model with diffusers' default configs would get."""
        if self.model is not None and isinstance(self.model.info.get("precision"), Policy):
            return self.model.info["precision"]
        return self._policy()

    def _policy(self, bundle: ModelBundle | None = None) -> Policy:
        capability = torch.cuda.get_device_capability(self.device) if self.device.type == "cuda" else None
        return choose_dtypes(self.device, capability, bundle.vae.config if bundle is not None else None,
                             self._overrides, bundle.unet.config if bundle is not None else None)

    def _apply_precision(self, bundle: ModelBundle) -> None:
        """Cast the components as the policy says for this model (recorded in ``info["precision"]``)."""
        apply_policy(bundle, self._policy(bundle), self._load_device())  # _apply_memory puts it on the device

    @staticmethod
    def _say_loaded(bundle: ModelBundle) -> None:
        """``info["load_line"]``: the loader's timings, whether it is an inpainting model, then the precision,
        attention and memory the model runs with now (what :meth:`load`, :meth:`load_vae`, :meth:`set_attention`
        and ``memory = ...`` recorded)."""
        precision = bundle.info.get("precision")
        attention = bundle.info.get("attention")
        inpainting = "inpainting model (9-channel UNet: the mask and masked image go in)" if bundle.is_inpainting \
            else None
        parts = (bundle.info.get("report"), inpainting, precision.describe() if isinstance(precision, Policy) else None,
                 f"attention {attention}" if attention else None, bundle.info.get("memory"))
        bundle.info["load_line"] = "; ".join(part for part in parts if part)

    @property
    def memory(self) -> str:
        """The memory mode asked for: ``"auto"``, ``"full"``, ``"medvram"`` or ``"lowvram"``; setting it applies it to
        the loaded model at once (``session.memory_plan`` says what runs, and why).

        >>> s = Session(device="cpu", outputs_dir=None)
        >>> s.memory, str(s.memory_plan)
        ('auto', 'memory: full (auto: cpu: the model is in RAM)')
        """
        return self._memory

    @memory.setter
    def memory(self, mode: str) -> None:
        check_memory_mode(mode)
        release = self._lock.acquire("changing the memory mode", job=False)
        try:
            self._memory = mode
            if self.model is not None:
                self._apply_memory(self.model)
            else:
                self.memory_plan = plan_memory(mode, self.device)
        finally:
            release()
        if mode in ("medvram", "lowvram") and self.memory_plan.mode == "full":
            warnings.warn(f"memory={mode!r}: {self.memory_plan.reason}.", stacklevel=2)

    @property
    def vae_tiling(self) -> bool | str:
        """``"auto"``, ``True`` or ``False``: when the VAE decodes in tiles (see the class docstring)."""
        return self._vae_tiling

    @vae_tiling.setter
    def vae_tiling(self, setting: bool | str) -> None:
        if setting not in VAE_TILING:
            raise ValueError(f"vae_tiling={setting!r}: use 'auto', True or False")
        self._vae_tiling = setting
        if self.model is not None:
            self.model.vae_tiling = setting

    def _load_device(self) -> torch.device:
        """Where a model's weights go when it loads: the device, or the CPU when the memory mode may keep them there
        (loading to the GPU first would need the whole model to fit, the very thing medvram/lowvram avoid)."""
        if self._memory != "full" and offloads(self.device):
            return torch.device("cpu")
        return self.device

    def _apply_memory(self, bundle: ModelBundle) -> None:
        """Put the model where the memory plan says: every component on the device, or medvram/lowvram's offload
        hooks (accelerate's CpuOffload, :class:`~nbdiffuse.models.memory.Offload`); say it in the load line."""
        if self._offload is not None:
            self._offload.remove()
            self._offload = None
        plan = self.memory_plan = plan_memory(self._memory, self.device, bundle)
        if plan.mode == "full":
            bundle.execution_device = None
            for module in (bundle.unet, bundle.vae, *bundle.text_encoders):
                module.to(self.device)
        else:
            self._offload = Offload(bundle, plan.mode, self.device)
            bundle.execution_device = self.device
        bundle.vae_tiling = self._vae_tiling
        bundle.info["memory"] = str(plan)
        self._say_loaded(bundle)

    @property
    def folders(self):
        """The :class:`~nbdiffuse.models.folders.ModelFolders` of ``models_dir``: its A1111/ComfyUI folders, the
        ``extra_model_paths.yaml`` and ``COMMANDLINE_ARGS`` folders it points to, and the diffusers pipelines in the
        Hugging Face cache. Without ``models_dir``: the first ``extra_model_paths.yaml`` in the environment variable
        ``NBDIFFUSE_EXTRA_MODEL_PATHS`` when there is one (a platform's data disk), else ``None`` (no models by
        name; the Hugging Face cache is read only with a ``models_dir``, which may also be that cache)."""
        if self._folders is None:
            from .models.folders import ModelFolders, env_extra_model_paths

            where = self.models_dir
            if where is None:
                env = env_extra_model_paths()
                where = env[0] if env and env[0].is_file() else None
            if where is None:
                return None
            self._folders = ModelFolders(where)
        return self._folders

    def models(self) -> dict[str, list[str]]:
        """What the model folders hold, per kind (``checkpoints``, ``loras``, ``vae``, ``embeddings``,
        ``upscalers``, ``hypernetworks``): names usable with :meth:`load`/:meth:`load_vae` (and in prompt tags).
        Empty lists without ``models_dir``."""
        from .models.folders import LAYOUTS

        if self.folders is None:
            return {kind: [] for kind in LAYOUTS}
        return self.folders.all()

    def _resolve(self, model, kind: str) -> Path | str:
        """A path for ``model``: an existing file/folder, or a name in the ``kind`` model folder."""
        from .models.errors import ModelLoadError

        if not isinstance(model, (str, Path)) or not str(model).strip():
            raise ModelLoadError(repr(model), f"not a model: pass a file path, a folder or a name in the {kind} "
                                 "folder (a non-empty string or Path)" + (', or "toy"' if kind == "checkpoints"
                                                                           else ""))
        path = Path(model).expanduser()
        if path.exists():
            return path
        if self.folders is not None:
            return self.folders.find(kind, str(model))
        raise ModelLoadError(model, "no such file or folder" + ("" if path.is_absolute() else
                                    " (and no models_dir is configured to look the name up in)"))

    @_exclusive("loading a model")
    def load(self, model: str | Path | ModelBundle, *, hash: bool = True) -> ModelBundle:
        """Load a model and make it current: a :class:`ModelBundle`, a single-file checkpoint (``.safetensors``;
        ``.ckpt``/``.pt`` through ``torch.load(weights_only=True)`` only), a diffusers folder, a name in the
        checkpoints folder of ``models_dir`` (A1111 ``models/Stable-diffusion`` or ComfyUI ``models/checkpoints``,
        and the folders its ``extra_model_paths.yaml`` / ``COMMANDLINE_ARGS`` name), a diffusers pipeline already in
        the Hugging Face cache by repo id (``"org/name"``, never downloaded), or ``"toy"`` (the embedded toy
        model; ``"toy-inpainting"``: its inpainting variant, a 9-channel UNet).
        ``hash=False`` skips the ``Model hash``; a file's first-time hash
        is computed in the background while the first job runs (its infotext waits only if the job ends first).

        Any problem with the file raises :class:`~nbdiffuse.models.errors.ModelLoadError` (a ``ValueError``) that
        names it, and the previous model stays loaded and usable: single files are fully validated before the
        previous model is touched. On success the previous model is freed. On CUDA, the previous model is released
        after validation and before the new weights are materialised, so two models never share the GPU.
        """
        from .models.errors import ModelLoadError

        load_as = loading_dtypes(self._policy(), self._overrides)  # the VAE's final dtype needs its config
        if isinstance(model, ModelBundle):
            bundle = model
        elif isinstance(model, str) and model in ("toy", "toy-inpainting") and not Path(model).exists():
            try:
                from .toy import load_toy
            except ImportError as e:
                raise ModelLoadError(model, f"the embedded toy model is not available in this install ({e})") from e
            try:
                bundle = load_toy(device=self._load_device(), dtype=load_as, inpainting=model == "toy-inpainting")
            except (OSError, ValueError) as e:
                raise ModelLoadError(model, str(e)) from e
        else:
            path = self._resolve(model, "checkpoints")
            if path.is_dir():
                from .models.loading import load_diffusers_folder

                try:
                    bundle = load_diffusers_folder(path, device=self._load_device(), dtype=load_as)
                except ModelLoadError:
                    raise
                except (OSError, ValueError) as e:
                    raise ModelLoadError(path, str(e).removeprefix(f"{path}: ")) from e
            else:
                from .models.checkpoint import inspect_checkpoint, load_checkpoint

                plan = inspect_checkpoint(path)  # raises ModelLoadError; the current model is untouched
                if self.device.type != "cpu":
                    self.unload()
                bundle = load_checkpoint(path, device=self._load_device(), dtype=load_as,
                                         hash="background" if hash else False, plan=plan)
        self._apply_precision(bundle)
        self._apply_speed(bundle)
        self.unload()
        self.model = bundle
        self._apply_memory(bundle)
        self.encoder = TextEncoder(bundle, embeddings=self._embeddings_for(bundle))
        return bundle

    def _embeddings_for(self, bundle: ModelBundle):
        """The textual-inversion embeddings of every embeddings folder of ``models_dir`` (and the folders its
        configs name, in lookup order) that fit ``bundle`` (None without a folder)."""
        if self.folders is None:
            return None
        from .models.embeddings import load_embeddings

        folders = self.folders.folders("embeddings")
        if not folders:
            return None
        return load_embeddings(folders, bundle=bundle)

    @_exclusive("loading a VAE")
    def load_vae(self, vae: str | Path | torch.nn.Module | None) -> ModelBundle:
        """Use another VAE with the current model: a VAE file (LDM or diffusers layout), a name in the VAE
        folder of ``models_dir``, an ``AutoencoderKL``, or ``None`` for the checkpoint's own VAE again."""
        from .models.attention import set_attention
        from .models.checkpoint import load_vae, swap_vae

        bundle = self._require_model()
        if vae is None:
            if self._original_vae is not None:
                swap_vae(bundle, self._original_vae)
                bundle.info["vae"] = "checkpoint"
                self._original_vae = None
                self._apply_precision(bundle)
                self._apply_memory(bundle)
                set_attention(bundle, self.attention, self.device)
            return bundle
        vae_hash = None
        if not isinstance(vae, torch.nn.Module):
            from .models.hashing import model_hash

            path = self._resolve(vae, "vae")
            vae = load_vae(path, device=self.device, dtype=torch.float32)  # cast once its config is known
            vae_hash = model_hash(path)
        old = swap_vae(bundle, vae, dtype=next(vae.parameters()).dtype)
        self._apply_precision(bundle)
        self._apply_memory(bundle)  # the new VAE gets the mode's hook
        set_attention(bundle, self.attention, self.device)  # and the session's attention back-end
        bundle.info["vae_hash"] = vae_hash
        if self._original_vae is None:
            self._original_vae = old
        return bundle

    @_exclusive("unloading the model")
    def unload(self) -> None:
        """Free the current model (and the upscaler model hires fix loaded)."""
        had = self.model is not None  # an upscaler model is loaded only by a job, and freed with the model
        if self._offload is not None:
            self._offload.remove()  # its hooks refer to the model's modules
            self._offload = None
        self.model = None
        self.encoder = None
        self._original_vae = None
        self.upscalers.free()
        self._refiner = None
        if had:  # a full collection costs ~0.25 s, for nothing when nothing was loaded
            gc.collect()
        return_freed_heap()  # the freed model's heap, or a first model's construction garbage
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _require_model(self) -> ModelBundle:
        if self.model is None:
            raise RuntimeError("No model is loaded: call session.load(...) first "
                               "(e.g. session.load(nbdiffuse.models.tiny_sd1()) for a tiny test model).")
        return self.model

    def _apply_speed(self, bundle: ModelBundle) -> None:
        """The session's attention back-end (and compile, after ``compile()``) on a model being loaded."""
        from .models.attention import set_attention
        from .models.compile import compile_unet

        set_attention(bundle, self.attention, self.device)
        if self._compile_options is not None:
            bundle.info["compile"] = compile_unet(bundle.unet, **self._compile_options)

    def set_attention(self, name: str) -> str:
        """Use attention back-end ``name`` (``"sdpa"``, ``"xformers"``, ``"plain"``: see
        :mod:`nbdiffuse.models.attention`) for the loaded model and every later one; an unknown or unusable name
        raises ValueError with the ones that work here.

        >>> session.set_attention("plain")                            # doctest: +SKIP
        'plain'
        """
        from .models.attention import check_attention, set_attention

        self.attention = check_attention(name, self.device)
        if self.model is not None:
            set_attention(self.model, name, self.device)
            self._say_loaded(self.model)
        return name

    @_exclusive("compiling the UNet")
    def compile(self, enabled: bool = True, *, mode: str | None = None, backend: str = "inductor",
                fullgraph: bool = False, channels_last: bool = True) -> None:
        """``torch.compile`` the UNet (in place, channels_last; :mod:`nbdiffuse.models.compile`) of the loaded
        model and of every later one; ``compile(False)`` goes back to eager. Each image size compiles once, on its
        first job (seconds to minutes); prompt, seed, CFG and sampler changes reuse the graph. Raises RuntimeError
        when compiling cannot work here (no C++ compiler for the CPU, no triton for CUDA), saying what to install.

        >>> session.compile()                                          # doctest: +SKIP
        """
        from .models.compile import compile_problem, compile_unet, uncompile_unet

        if not enabled:
            self._compile_options = None
            if self.model is not None:
                uncompile_unet(self.model.unet)
                self.model.info.pop("compile", None)
            return
        problem = compile_problem(self.device, backend)
        if problem:
            raise RuntimeError(f"cannot compile on {self.device}: {problem}")
        self._compile_options = dict(mode=mode, backend=backend, fullgraph=fullgraph, channels_last=channels_last)
        if self.model is not None:
            self.model.info["compile"] = compile_unet(self.model.unet, **self._compile_options)

    # prompts ----------------------------------------------------------------------------------------------
    def count_tokens(self, prompt: str) -> TokenCount:
        """A1111's token counter (``str()`` gives ``"76/150"``) with the loaded model's tokenizer."""
        tokenizer = self.model.tokenizers[0] if self.model is not None else None
        return count_tokens(prompt, tokenizer)

    def sigmas(self, *, img2img: bool = False, **params) -> dict[str, torch.Tensor]:
        """The noise levels a job with these parameters would sample, without running it: ``"first pass"``
        (txt2img's, or with ``img2img=True`` the tail of the schedule an img2img pass runs for
        ``denoising_strength``) and, with ``enable_hr``, ``"hires"`` (what the second pass runs) and ``"hires
        schedule"`` (the whole schedule of ``int(steps / denoising_strength)`` steps it is the tail of).
        Timestep samplers (DDIM, PLMS, UniPC) give their A1111 grid as sigmas.

        >>> from nbdiffuse.models import tiny_sd1
        >>> session = Session(outputs_dir=None, progress=False)
        >>> _ = session.load(tiny_sd1())
        >>> s = session.sigmas(steps=8, sampler_name="Euler", scheduler="Uniform", enable_hr=True,
        ...                    denoising_strength=0.3)
        >>> len(s["first pass"]), len(s["hires"]), len(s["hires schedule"])  # 8 and 8 of int(8 / 0.3) = 26 steps
        (9, 9, 27)
        >>> bool((s["hires"] == s["hires schedule"][-9:]).all())
        True
        """
        from .jobs.hires import hires_sigmas
        from .jobs.img2img import DEFAULT_DENOISING, img2img_sigmas
        from .jobs.txt2img import first_pass_sigmas
        from .sampling.registry import SAMPLERS

        bundle = self._require_model()
        p = self._params(params)
        if img2img:
            denoising = p.denoising_strength if p.denoising_strength is not None else DEFAULT_DENOISING
            out = {"first pass": img2img_sigmas(p.scheduler_used, p.steps, denoising, bundle,
                                                SAMPLERS[p.sampler_name])}
        else:
            out = {"first pass": first_pass_sigmas(bundle, p)}
        if p.enable_hr and not img2img:
            out["hires"], out["hires schedule"] = hires_sigmas(bundle, p)
        return {name: sigmas.cpu() for name, sigmas in out.items()}

    # jobs -------------------------------------------------------------------------------------------------
    def _start(self, hooks: Sequence[Hook] | None, preview: int | None = None) -> tuple[ModelBundle, dict]:
        """The loaded model and the job keywords every job takes; clears the stop flags. ``preview=N`` shows the
        x0 estimate every N steps in the notebook (A1111's "Approx cheap", updated in place)."""
        bundle = self._require_model()
        if bundle.arch not in ("sd1", "sd2", "sdxl", "sdxl_refiner"):
            raise ValueError(f"{bundle.name} is an {bundle.arch} model: it loads, but nbdiffuse cannot generate with "
                             "it yet (an SDXL refiner needs its own conditioning); load a base model to generate.")
        hooks = list(hooks or [])
        if preview:
            from .inspect.previews import preview_hook

            hooks.append(preview_hook(int(preview), session=self))
        self._control.interrupt.clear()
        self._control.skip.clear()
        self.encoder.clear_used_embeddings()
        reset_peaks(bundle.device)  # the Result's memory line counts this job's peaks
        return bundle, dict(hooks=[*self.hooks, *(hooks or [])], control=self._control,
                            outputs_dir=self.outputs_dir, styles=self.styles)

    def _networks(self, p: GenerationParams):
        """Merge the prompt's ``<lora:name:w>`` tags into the model for one job; a handle to undo it, or None.

        Every file is found, read and checked against the model before any weight changes.
        """
        from .jobs.driver import apply_styled
        from .prompts.parser import extract_extra_networks

        texts = [apply_styled(p, self.styles)[0]]
        if p.enable_hr and p.hr_prompt:
            texts.append(p.hr_prompt)
        tags = [n for t in texts for n in extract_extra_networks(t)[1] if n.kind in ("lora", "lyco")]
        if not tags:
            return None
        if self.folders is None:
            names = ", ".join(f"<{t.kind}:{t.name}>" for t in tags)
            raise ValueError(f"The prompt uses {names}, but LoRAs are looked up in a models folder: create the "
                             "session with Session(models_dir=...) (an A1111 or ComfyUI folder).")
        from .models.lora import apply_loras, load_lora, lora_tag_weights

        for text in texts:
            written: dict = {}
            for tag in extract_extra_networks(text)[1]:
                if tag.kind in ("lora", "lyco") and written.setdefault(tag.name, tag.items) != tag.items:
                    raise ValueError(f"The prompt names <{tag.kind}:{tag.name}> twice with different weights "
                                     f"(<{tag.kind}:{':'.join(written[tag.name])}> and <{tag.kind}:"
                                     f"{':'.join(tag.items)}>): write it once, with the weight you want.")
        entries, seen = [], set()
        for tag in tags:
            if tag.name in seen:
                continue
            seen.add(tag.name)
            path = self.folders.find("loras", tag.name)
            key = (str(path), path.stat().st_mtime_ns)
            lora = self._loras.get(key) or self._loras.setdefault(key, load_lora(path))
            weights = lora_tag_weights(tag)
            entries.append((lora, weights.unet, weights.te))
        bundle = self.model
        handle = apply_loras(bundle, entries)
        bundle.applied_loras = [lora for lora, _, _ in entries]
        if handle.text_encoder_changed:
            self.encoder.cache_tag = tuple((lora.sha256, te) for lora, _, te in entries)
        return handle

    def _hypernetworks(self, p: GenerationParams) -> list:
        """The prompt's ``<hypernet:name:strength>`` tags as ``(name, Hypernetwork, strength)``, in the prompt's order
        (A1111 chains them so); every file is found and read before the job changes anything."""
        from .jobs.driver import apply_styled
        from .prompts.parser import extract_extra_networks

        texts = [apply_styled(p, self.styles)[0]]
        if p.enable_hr and p.hr_prompt:
            texts.append(p.hr_prompt)
        tags = [n for t in texts for n in extract_extra_networks(t)[1] if n.kind == "hypernet"]
        if not tags or self.folders is None:  # without a models folder the job notes them as not applied
            return []
        from .models.hypernetwork import load_hypernetwork

        entries = {}
        for tag in tags:
            try:
                strength = float(tag.items[1]) if len(tag.items) > 1 else 1.0
            except ValueError:
                raise ValueError(f"<hypernet:{':'.join(tag.items)}>: the strength must be a number") from None
            if entries.setdefault(tag.name, strength) != strength:
                raise ValueError(f"The prompt names <hypernet:{tag.name}> twice with different strengths "
                                 f"({entries[tag.name]} and {strength}): write it once, with the strength you want.")
        out = []
        for name, strength in entries.items():
            path = self.folders.find("hypernetworks", name)
            key = (str(path), path.stat().st_mtime_ns)
            net = self._hypernets.get(key) or self._hypernets.setdefault(key, load_hypernetwork(path))
            out.append((name, net, strength))
        return out

    def _with_networks(self, p: GenerationParams, gen):
        """Run a job generator with the prompt's LoRAs merged and hypernetworks hooked into the UNet, and both
        undone afterwards (also on error)."""
        hypernets = self._hypernetworks(p)
        handle = self._networks(p)
        hooks = None
        try:
            if hypernets:
                from .models.hypernetwork import apply_hypernetworks

                hooks = apply_hypernetworks(self.model.unet, [(net, strength) for _, net, strength in hypernets])
                self.model.applied_hypernetworks = hypernets
            return (yield from gen)
        finally:
            if hooks is not None:
                hooks.remove()
            self.model.applied_hypernetworks = []
            if handle is not None:
                handle.restore()
                self.model.applied_loras = []
                self.encoder.cache_tag = None

    def _run(self, gen, total: int, desc: str) -> Result:
        """Drive a job generator to its Result, with a progress bar when ``self.progress``."""
        bar = None
        if self.progress:
            from .jobs.progress import progress_bar  # tqdm.auto's, with an output right where widgets don't show

            bar = progress_bar(total, desc, leave=False)
        run = StepRun(gen)
        try:
            for _ in run:
                if bar is not None:
                    bar.total = max(bar.total, bar.n + 1)  # Restart/DPM adaptive step counts vary
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        result = self.last_result = run.result
        p, calls = result.params, result.timings.get("model_calls", 0)
        if calls and not p.enable_hr and result.timings.get("sample_s"):
            self._call_costs.append(result.timings["sample_s"] / calls / (p.width * p.height * p.batch_size))
        return result

    def _params(self, params: dict) -> GenerationParams:
        """Validate a job's parameters (upscaler model files in the models folder count as known upscalers)."""
        self._find_upscaler(params.get("hr_upscaler"))
        refiner = params.get("refiner_checkpoint")
        if isinstance(refiner, ModelBundle):  # a model in memory: kept as the refiner, named in the parameters
            if self._refiner is None or self._refiner[1] is not refiner:
                self._refiner = None
                self._prepare_refiner(refiner)
                self._refiner = (refiner.name, refiner, TextEncoder(refiner))
            params = {**params, "refiner_checkpoint": refiner.name}
        p = GenerationParams.from_kwargs(**self._sized(params), known_upscalers=self.upscalers.files)
        if self.model is not None and self.model.unet is not None:
            from .jobs.guards import check_size

            check_size(self.model, p.width, p.height)  # a size no interrupt could stop is refused up front
            if p.enable_hr:
                check_size(self.model, *p.hr_size, what="hires size")
            layers = min((getattr(getattr(te, "config", None), "num_hidden_layers", 99) for te in
                          self.model.text_encoders), default=99)
            if p.clip_skip > layers:
                raise ValueError(f"clip_skip={p.clip_skip} is not valid: this model's text encoder has {layers} "
                                 f"layers, so it must be between 1 and {layers} (1 = the last layer, 2 is common).")
        _check_emphasis(p)
        embeddings = getattr(self.encoder, "embeddings", None)
        if embeddings is not None and hasattr(embeddings, "unused_names"):
            for name in ("prompt", "negative_prompt"):
                for note in embeddings.unused_names(getattr(p, name)):
                    warnings.warn(f"{name}: {note}", stacklevel=4)
        if self.encoder is not None:
            self.encoder.emphasis = p.emphasis
        return p

    def _find_upscaler(self, name: str | None = "") -> None:
        """Register the models folder's upscaler files when ``name`` is not a known upscaler yet (always when
        ``name`` is left out: a file may have been added to the folder since)."""
        if self.folders is not None and name is not None and name not in self.upscalers.names():
            for found in self.folders.list("upscalers"):
                self.upscalers.register(self.folders.find("upscalers", found))

    def _sized(self, params: dict) -> dict:
        """``width``/``height`` default to the loaded model's native size (A1111's API: 512 for every model)."""
        return with_native_size(params, self.model) if self.model is not None else params

    def _held(self, what: str, build: Callable[[], tuple]) -> tuple:
        """``build()`` -> ``(params, job generator)`` with the session held from before the job's set-up until the
        generator ends (:mod:`nbdiffuse.jobs.lock`: other threads wait, the same thread is refused)."""
        release = self._lock.acquire(what)
        try:
            p, gen = build()
        except BaseException:
            release()
            raise
        return p, HeldJob(gen, release)

    def _txt2img_job(self, params: dict, hooks: Sequence[Hook] | None, preview: int | None = None):
        def build():
            p = self._params(params)
            bundle, kw = self._start(hooks, preview)
            p, refiner = self._refiner_for(p)
            return p, self._with_networks(p, txt2img_steps(bundle, p, self.encoder, upscalers=self.upscalers,
                                                           refiner=refiner, **kw))

        return self._held("a txt2img job", build)

    def _img2img_job(self, init_images, params: dict, hooks: Sequence[Hook] | None, preview: int | None = None,
                     mask=None, latent_mask=None):
        from .jobs.img2img import img2img_steps

        def build():
            p = self._params(params)
            bundle, kw = self._start(hooks, preview)
            p, refiner = self._refiner_for(p)
            return p, self._with_networks(p, img2img_steps(bundle, p, self.encoder, init_images, mask=mask,
                                                           latent_mask=latent_mask, refiner=refiner, **kw))

        return self._held("an img2img job", build)

    def _refiner_for(self, p: GenerationParams) -> tuple[GenerationParams, object]:
        """``(p, the job's Refiner)`` for ``p.refiner_checkpoint`` (:class:`~nbdiffuse.jobs.refiner.Refiner`):
        ``(p, None)`` without one; ``(p without it, None)`` with a warning when it names the loaded model, which
        A1111 ignores too.

        Memory: the refiner is loaded on first use (a file or folder path, a name in the checkpoints folder, or
        ``name [hash]`` as infotexts write it) and kept beside the base model, both in memory, until another
        refiner is asked for or :meth:`unload` frees it; so a job switches without loading anything (A1111, with
        its default of one checkpoint in memory, swaps the weights at every switch). The refiner always sits
        whole on the session's device (no medvram/lowvram offload), in the session's precision.
        """
        from .models.errors import ModelLoadError

        name = p.refiner_checkpoint
        if name is None:
            return p, None
        from .jobs.refiner import Refiner

        base = self._require_model()
        if self._refiner is None or self._refiner[0] != name:
            path, problem = None, None
            for candidate in (name, re.sub(r"\s*\[[0-9a-fA-F]{8,12}\]$", "", name)):  # "name [hash]" too
                try:
                    path = self._resolve(candidate, "checkpoints")
                    break
                except ModelLoadError as e:
                    problem = problem or e
            if path is None:
                raise ValueError(f"refiner_checkpoint={name!r}: no such checkpoint ({problem}); pass a file, a "
                                 "folder, a name in the checkpoints folder of models_dir, or a ModelBundle.")
            if base.path is not None and Path(base.path).resolve() == Path(path).resolve():
                return self._same_refiner(p)
            self._refiner = None  # the previous refiner goes before the next one loads
            gc.collect()
            bundle = self._read_refiner(path)
            self._prepare_refiner(bundle)
            self._refiner = (name, bundle, TextEncoder(bundle))
        _, bundle, encoder = self._refiner
        if bundle is base or (base.path is not None and bundle.path is not None
                              and Path(base.path).resolve() == Path(bundle.path).resolve()):
            return self._same_refiner(p)
        if bundle.latent_channels != base.latent_channels or bundle.vae_scale_factor != base.vae_scale_factor:
            raise ValueError(f"refiner_checkpoint={name!r}: its latents ({bundle.latent_channels} channels, 1/"
                             f"{bundle.vae_scale_factor} scale) are not the loaded model's ({base.latent_channels}, "
                             f"1/{base.vae_scale_factor}): it cannot continue this model's sampling.")
        if bundle.is_inpainting and not base.is_inpainting:
            raise ValueError(f"refiner_checkpoint={name!r} is an inpainting model (9-channel UNet): it needs the "
                             "mask conditioning only an inpainting base model's job makes.")
        encoder.emphasis = p.emphasis
        from .jobs.driver import apply_styled
        from .prompts.parser import extract_extra_networks

        tags = [t for t in extract_extra_networks(apply_styled(p, self.styles)[0])[1]
                if t.kind in ("lora", "lyco", "hypernet")]
        if tags:
            names = ", ".join(f"<{t.kind}:{t.name}>" for t in tags)
            warnings.warn(f"refiner_checkpoint={name!r}: the prompt's {names} apply to the loaded model only; the "
                          "refiner runs without them.", stacklevel=5)
        return p, Refiner.of(bundle, encoder, p)

    @staticmethod
    def _same_refiner(p: GenerationParams) -> tuple[GenerationParams, None]:
        warnings.warn(f"refiner_checkpoint={p.refiner_checkpoint!r} is the loaded model: no switch (A1111 ignores "
                      "it too).", stacklevel=5)
        return p.replace(refiner_checkpoint=None), None

    def _read_refiner(self, path: Path) -> ModelBundle:
        from .models.errors import ModelLoadError

        load_as = loading_dtypes(self._policy(), self._overrides)
        if Path(path).is_dir():
            from .models.loading import load_diffusers_folder

            try:
                return load_diffusers_folder(path, device=self._load_device(), dtype=load_as)
            except ModelLoadError:
                raise
            except (OSError, ValueError) as e:
                raise ModelLoadError(path, str(e).removeprefix(f"{path}: ")) from e
        from .models.checkpoint import load_checkpoint

        return load_checkpoint(path, device=self._load_device(), dtype=load_as, hash="background")

    def _prepare_refiner(self, bundle: ModelBundle) -> None:
        """A refiner model in the session's precision and attention, whole on its device."""
        self._apply_precision(bundle)
        self._apply_speed(bundle)
        bundle.execution_device = None
        for module in (bundle.unet, bundle.vae, *bundle.text_encoders):
            module.to(self.device)

    def txt2img(self, *, hooks: Sequence[Hook] | None = None, preview: int | None = None, executor=None,
                **params) -> Result:
        """Generate images from text. Parameters are A1111's API fields (``prompt``, ``steps``, ``seed``, ...);
        ``enable_hr=True`` adds the hires-fix second pass, ``tiling=True`` makes seamless textures,
        ``preview=N`` shows a live x0 preview every N steps. ``width``/``height`` default to the model's native size
        (``session.model.native_size``: 64 for the toy model, 512 SD1, 768 SD2-v, 1024 SDXL), not A1111's 512.

        ``refiner_checkpoint`` (a name, path or :class:`ModelBundle`; A1111's Refiner) switches the sampling to that
        model at ``refiner_switch_at`` (0.8: the model timestep falls to 199 or below; 1.0 never), with the same
        prompts encoded by the refiner's own text encoder (:mod:`nbdiffuse.jobs.refiner`);
        ``refiner_switch_by_sample_steps=True`` is A1111's older step rule, ``hires_fix_refiner_pass`` ("second
        pass", "first pass", "both passes") where it switches with hires fix. The refiner stays loaded beside the
        model (both in memory) until ``unload()``.

        ``executor="ray"`` (or a :class:`nbdiffuse.RayExecutor`) runs the ``n_iter`` batches on Ray workers, one
        per GPU (:mod:`nbdiffuse.fanout`): each batch has the seeds, noise and infotexts it would have here, and the
        Result holds them in batch order."""
        if executor is not None:
            return self._txt2img_fanout(executor, hooks, preview, params)
        p, gen = self._txt2img_job(params, hooks, preview)
        return self._run(gen, p.total_steps, p.sampler_name)

    def img2img(self, init_images=None, *, mask=None, hooks: Sequence[Hook] | None = None,
                preview: int | None = None, **params) -> Result:
        """img2img from PIL images (or paths) with A1111's fields (``denoising_strength``, ``resize_mode``,
        ``extra_noise``, ...); images are saved under ``img2img-images/``. The init images are resized to
        ``width x height`` as in A1111, and those default, as in txt2img, to the model's native size (not to the
        init image's size: pass ``width=image.width, height=image.height`` to keep it).

        ``mask`` (a PIL image, an array, a file; white = inpaint; :mod:`nbdiffuse.masks` draws them) makes it
        A1111's inpainting, with its fields and their API defaults: ``mask_blur=4``, ``inpainting_fill=0`` (fill;
        1 original, 2 latent noise, 3 latent nothing), ``inpaint_full_res=True`` (only masked) with
        ``inpaint_full_res_padding=0``, ``inpainting_mask_invert=0``, ``initial_noise_multiplier``,
        ``inpainting_mask_weight`` (inpainting checkpoints) and ``soft_inpainting`` (True or its settings).
        ``result.inpaint`` keeps the processed masks (:func:`nbdiffuse.viz.show_mask`)."""
        p, gen = self._img2img_job(init_images, params, hooks, preview, mask=mask)
        return self._run(gen, p.steps * p.n_iter, p.sampler_name)

    def loopback(self, init_images=None, *, loops: int = 4, final_denoising_strength: float = 0.5,
                 denoising_curve: str = "Linear", mask=None, hooks: Sequence[Hook] | None = None,
                 **params) -> Result:
        """img2img ``loops`` times, feeding each output back in, the denoising strength moving towards
        ``final_denoising_strength`` along ``denoising_curve`` (A1111's Loopback script); with a ``mask`` each loop
        inpaints the same region."""
        from .jobs.img2img import loopback_steps

        def build():
            p = self._params(params)
            bundle, kw = self._start(hooks)
            return p, self._with_networks(p, loopback_steps(
                bundle, p, self.encoder, init_images, loops=loops, final_denoising_strength=final_denoising_strength,
                denoising_curve=denoising_curve, mask=mask, **kw))

        p, gen = self._held("a loopback job", build)
        return self._run(gen, p.steps * loops * p.n_iter, "Loopback")

    def outpaint(self, init_images=None, *, method: str = "poor man's", pixels: int = 128,
                 mask_blur: int | None = None, direction: Sequence[str] = ("left", "right", "up", "down"),
                 noise_q: float = 1.0, color_variation: float = 0.05, hooks: Sequence[Hook] | None = None,
                 **params) -> Result:
        """Grow a picture by ``pixels`` on each ``direction`` side with A1111's outpainting scripts.

        ``method="poor man's"`` ("Poor man's outpainting", ``mask_blur=4``): the grown canvas is cut into
        ``width x height`` tiles overlapping by ``pixels``, and each tile at an edge is inpainted with the next seed
        (masked content ``inpainting_fill``, default fill). ``method="mk2"`` ("Outpainting mk2", ``mask_blur=8``):
        one direction after the other, each new strip starting from noise matched to the picture (``noise_q``,
        ``color_variation``). The other parameters are img2img's; the scripts set mask blur, inpaint area and (mk2)
        masked content themselves, as in A1111. The result is saved with the first job's infotext.

        >>> result = session.outpaint([picture], method="mk2", pixels=64, direction=["left", "right"])
        ...                                                                      # doctest: +SKIP
        """
        from .jobs.outpaint import outpaint_method, outpainting_mk2_steps, poor_mans_outpainting_steps

        kind = outpaint_method(method)

        def build():
            p = self._params(params)
            bundle, kw = self._start(hooks)
            if kind == "poor man's":
                gen = poor_mans_outpainting_steps(bundle, p, self.encoder, init_images, pixels=pixels,
                                                  mask_blur=4 if mask_blur is None else mask_blur,
                                                  inpainting_fill=p.inpainting_fill, direction=direction, **kw)
            else:
                gen = outpainting_mk2_steps(bundle, p, self.encoder, init_images, pixels=pixels,
                                            mask_blur=8 if mask_blur is None else mask_blur, direction=direction,
                                            noise_q=noise_q, color_variation=color_variation, **kw)
            return p, self._with_networks(p, gen)

        p, gen = self._held("an outpainting job", build)
        return self._run(gen, p.steps * 4 * p.n_iter, "Outpainting")

    def sd_upscale(self, init_images=None, *, overlap: int = 64, scale_factor: float = 2.0, upscaler: str = "None",
                   hooks: Sequence[Hook] | None = None, **params) -> Result:
        """A1111's "SD upscale" script: upscale the picture ``scale_factor`` times with ``upscaler`` (None, Lanczos,
        Nearest or an upscaler model; ``"None"`` keeps the size and ignores the scale factor, as A1111 does), cut it
        into ``width x height`` tiles overlapping by ``overlap`` and redraw each tile with img2img (the other
        parameters are img2img's; ``batch_size`` tiles per job, the seed rising after each job as in A1111; ``n_iter``
        repeats it with ``seed + n``). The joined picture is saved under img2img-images with the first tile's
        infotext; ``result.sd_upscale`` says where the tiles lay (:func:`nbdiffuse.viz.show_tiles`).

        >>> result = session.sd_upscale([picture], upscaler="Lanczos", scale_factor=2, width=64, height=64,
        ...                             overlap=16, denoising_strength=0.3)   # doctest: +SKIP
        """
        from .jobs.sd_upscale import plan_sd_upscale, sd_upscale_steps

        self._find_upscaler(upscaler)

        def build():
            p = self._params(params)
            plan = plan_sd_upscale(p, init_images, overlap=overlap, scale_factor=scale_factor, upscaler=upscaler,
                                   upscalers=self.upscalers)[2]
            bundle, kw = self._start(hooks)
            gen = sd_upscale_steps(bundle, p, self.encoder, init_images, overlap=overlap, scale_factor=scale_factor,
                                   upscaler=upscaler, upscalers=self.upscalers, **kw)
            jobs.append(-(-plan.cols * plan.rows // p.batch_size) * p.n_iter)
            return p, self._with_networks(p, gen)

        jobs: list[int] = []  # img2img jobs the run makes, for the progress bar
        p, gen = self._held("an SD upscale job", build)
        return self._run(gen, p.steps * jobs[0], "SD upscale")

    def extras(self, image, *, upscaler_1: str = "Lanczos", upscaler_2: str = "None",
               upscaler_2_visibility: float = 0.0, upscaling_resize: float = 2.0, upscaling_resize_w: int = 512,
               upscaling_resize_h: int = 512, upscaling_crop: bool = True, resize_mode: int = 0,
               max_side_length: int = 0):
        """A1111's Extras tab, "Upscale": ``resize_mode=0`` ("Scale by") upscales ``upscaling_resize`` times (at most
        ``max_side_length`` on the longer side when set); ``resize_mode=1`` ("Scale to") to ``upscaling_resize_w x
        upscaling_resize_h``, cropped to fit with ``upscaling_crop``. ``upscaler_2`` is blended in by
        ``upscaler_2_visibility``. Upscalers are None, Lanczos, Nearest or upscaler models (no model needs to be
        loaded). The picture is saved as ``extras-images/NNNNN.png`` with A1111's ``postprocessing`` text
        (``Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos``). A1111's own defaults differ: its tab
        starts with upscaler 1 "None" and a scale of 4. Face restoration is not available yet.

        >>> out = session.extras(picture, upscaler_1="Lanczos", upscaling_resize=2)   # doctest: +SKIP
        >>> out.image.size, out.infotext                                              # doctest: +SKIP
        ((128, 128), 'Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos')
        """
        from .jobs.extras import extras_upscale, open_picture, save_extras

        source = open_picture(image)
        for name in (upscaler_1, upscaler_2):
            self._find_upscaler(name)
        release = self._lock.acquire("an extras job")
        try:
            result = extras_upscale(source, upscaler_1=upscaler_1, upscaler_2=upscaler_2,
                                    upscaler_2_visibility=upscaler_2_visibility, upscaling_resize=upscaling_resize,
                                    upscaling_resize_w=upscaling_resize_w, upscaling_resize_h=upscaling_resize_h,
                                    upscaling_crop=upscaling_crop, resize_mode=resize_mode,
                                    max_side_length=max_side_length, upscalers=self.upscalers)
            if self.outputs_dir is not None:
                save_extras(result, source, self.outputs_dir)
        finally:
            release()
        return result

    def hires_fix(self, result: Result | None = None, *, indices=None, hooks: Sequence[Hook] | None = None,
                  **changes) -> Result:
        """A1111's ✨: the hires second pass on an earlier txt2img result (default: the last one), reusing its
        seeds and first-pass latents; ``changes`` are hires fields (``hr_scale``, ``denoising_strength``, ...)."""
        from .jobs.hires import hires_fix_steps

        result = result if result is not None else self.last_result
        if result is None:
            raise ValueError("hires_fix needs a result: run txt2img first or pass result=...")
        self._find_upscaler(changes.get("hr_upscaler"))

        def build():
            bundle, kw = self._start(hooks)
            self.encoder.emphasis = result.params.emphasis
            _, refiner = self._refiner_for(result.params)
            return result.params, self._with_networks(result.params, hires_fix_steps(
                bundle, result, self.encoder, indices=indices, upscalers=self.upscalers, refiner=refiner, **changes,
                **kw))

        _, gen = self._held("a hires fix job", build)
        return self._run(gen, result.params.hr_steps_used, "Hires fix")

    def steps(self, *, init_images=None, mask=None, hooks: Sequence[Hook] | None = None, **params) -> StepRun:
        """A generation (txt2img, or img2img with ``init_images``, inpainting with a ``mask`` too) as a
        :class:`StepRun` you drive with ``next()``: no threads, no polling."""
        if init_images is not None:
            return StepRun(self._img2img_job(init_images, params, hooks, mask=mask)[1])
        return StepRun(self._txt2img_job(params, hooks)[1])

    # the open loop ------------------------------------------------------------------------------------------
    def panel(self, lang: str | None = None, **options):
        """A1111's txt2img screen for this session, as ipywidgets (``session.panel()`` last in a cell shows it)."""
        from .ui import Panel

        return Panel(self, lang=lang, **options)

    def debug(self, *, hooks: Sequence[Hook] | None = None, **params):
        """A step-through debugger for a generation (txt2img params, or img2img with ``init_images``):
        ``dbg.step()``, ``dbg.run_to(7)``, ``dbg.state``, ``dbg.preview()``, ``dbg.set_latent(x)``, ``dbg.finish()``."""
        from .inspect import Debugger

        return Debugger(self, hooks=hooks, **params)

    def probe(self, modules="Transformer2DModel", **kwargs):
        """``with session.probe("Transformer2DModel") as probe:`` captures UNet module outputs (or inputs) at every
        step, cond and uncond halves apart, on the CPU, within a memory budget; hooks go away on exit."""
        from .inspect import Probe

        return Probe(self, modules=modules, **kwargs)

    def attention_maps(self, words=(), **kwargs):
        """``with session.attention_maps(["circle"]) as maps:`` records cross-attention per prompt token;
        ``maps.heatmap("circle")``, ``maps.overlay(image, "circle")``."""
        from .inspect import AttentionMaps

        return AttentionMaps(self, words=words, **kwargs)

    def interrupt(self) -> None:
        """Stop the running job after its current step (safe from any thread); what finished is kept."""
        self._control.interrupt.set()

    def skip(self) -> None:
        """Finish the current batch after its current step and go on with the next ``n_iter`` batch."""
        self._control.skip.set()

    # styles -----------------------------------------------------------------------------------------------
    _styles: dict | None = None

    @property
    def styles(self) -> dict:
        """Prompt styles by name (A1111 ``styles.csv``), used by the ``styles=[...]`` parameter."""
        if self._styles is None:
            self._styles = {}
        return self._styles

    def load_styles(self, path: str | Path) -> dict:
        """Read an A1111 ``styles.csv`` (UTF-8 with BOM; name, prompt, negative_prompt) into ``session.styles``."""
        from .prompts.styles import load_styles

        self.styles.update(load_styles(path))
        return self.styles

    # grids ------------------------------------------------------------------------------------------------
    def plan_xyz(self, x=None, y=None, z=None, *, limit_mp: float | None = 200.0, estimate: bool = True,
                 executor=None, **params):
        """Plan an X/Y/Z grid without generating: cells, image count, final sizes, grid pixels, time estimate.

        Refuses (``ValueError``, before any model call) a grid over ``limit_mp`` megapixels, saying how to fix it.
        Without ``width``/``height`` every cell is the loaded model's native size (a Checkpoint axis keeps it).
        ``executor="ray"``: the plan starts the Ray workers and says how many there are, and the estimate is
        measured on one of them, for the cells handed out to all of them.
        """
        from .jobs.xyz import plan_xyz

        names = self._model_names()
        self._find_upscaler(params.get("hr_upscaler"))
        plan = plan_xyz(x, y, z, limit_mp=limit_mp, checkpoints=names.get("checkpoints"),
                        vaes=names.get("vae"), upscalers=self.upscalers.files, **self._sized(params))
        if executor is not None:
            from .fanout import executor_for, makespan  # imported on call: the one-GPU path never imports Ray

            ex = executor_for(self, executor)
            plan.executor = ex.describe()
            if estimate:
                per_cell = ex.cell_seconds([plan.cells[key] for key in plan.order])
                low, plan.seconds_estimate, high = (makespan([c[k] for c in per_cell], ex.workers) for k in range(3))
                plan.seconds_range = (low, high)
                plan.seconds_one_worker = sum(c[1] for c in per_cell)
        elif estimate and self.model is not None:
            low, plan.seconds_estimate, high = self._estimate_seconds(plan)
            plan.seconds_range = (low, high)
        return plan

    def xyz(self, x=None, y=None, z=None, *, limit_mp: float | None = 200.0, save_grid: bool = True,
            show: bool | Callable = True, executor=None, **params):
        """Run an X/Y/Z grid: axes are ``(A1111 axis name, "value, string")`` or ``(name, [values])``.

        >>> grid = session.xyz(x=("Sampler", "Euler a, DPM++ 2M"), y=("CFG Scale", "3-9 (+3)"), prompt="a cat")
        ...                                                                      # doctest: +SKIP
        The grid shows inline and fills in cell by cell; an interrupted grid keeps its cells and can ``resume()``.
        ``executor="ray"`` (or a :class:`nbdiffuse.RayExecutor`) runs whole cells on Ray workers, one per GPU
        (:mod:`nbdiffuse.fanout`); they fill the grid as they finish, with the pictures a local run would make.
        ``show``: a function instead of True is called with the GridResult after every cell (the panel's tab).
        """
        self._require_model()
        plan = self.plan_xyz(x, y, z, limit_mp=limit_mp if save_grid else None, estimate=False,
                             executor=executor, **params)
        return self._run_grid(plan, save_grid, show, executor=executor)

    def _cell(self, cell: dict, loaded: dict) -> Result:
        """One grid cell: a txt2img without its own progress bar, after loading the checkpoint/VAE the cell names
        (``_load``) when it is not the one ``loaded`` says is in (``loaded`` is updated)."""
        wanted = cell.get("_load", {})
        if "model" in wanted and loaded.get("model") != wanted["model"]:
            self.load(wanted["model"])
            loaded["model"] = wanted["model"]
        if "vae" in wanted and loaded.get("vae") != wanted["vae"]:
            self.load_vae(wanted["vae"])
            loaded["vae"] = wanted["vae"]
        progress, self.progress = self.progress, False
        try:
            return self.txt2img(**{k: v for k, v in cell.items() if k != "_load"})
        finally:
            self.progress = progress

    def _run_grid(self, plan, save_grid: bool, show: bool | Callable, result=None, executor=None):
        """Run (or resume) a planned grid with :func:`~nbdiffuse.jobs.xyz.run_xyz`: here, each cell is
        :meth:`_cell`, and the model the grid started with is loaded again afterwards, also when it was
        interrupted; with an ``executor``, the cells run on its workers and their images are saved here."""
        from .jobs.xyz import run_xyz

        original = self.model
        loaded: dict = {}
        run_cells = None
        if executor is not None:
            from .fanout import executor_for

            ex = executor_for(self, executor)  # the same workers when they still hold this model
            plan.executor = ex.describe()
            self._control.interrupt.clear()
            folder = self.outputs_dir / "txt2img-images" if self.outputs_dir is not None else None

            def run_cells(items, notes):
                return ex.run(items, control=self._control, notes=notes, save_to=folder)

        try:
            grid = run_xyz(lambda cell: self._cell(cell, loaded), plan, outputs_dir=self.outputs_dir,
                           progress=self.progress, save_grid=save_grid, show=show, result=result,
                           run_cells=run_cells)
        finally:
            if loaded.get("model") is not None:
                self.load(original if getattr(original, "path", None) is None else original.path)
        grid._resume = lambda: self._run_grid(plan, save_grid, show, grid, executor=executor)
        return grid

    def _txt2img_fanout(self, executor, hooks, preview, params: dict) -> Result:
        """txt2img's ``n_iter`` batches on an executor's workers, merged into one Result in batch order."""
        from .fanout import executor_for, merge_results
        from .sampling.noise import fix_seed, image_seeds

        if hooks or preview:
            raise ValueError("executor='ray': hooks and preview run in this kernel, and workers cannot call them. "
                             "Fix: leave hooks/preview out for the fan-out, or run without executor.")
        p = self._params(params)  # a bad parameter fails here, before any worker starts
        ex = executor_for(self, executor)
        seed, subseed = fix_seed(p.seed), fix_seed(p.subseed)
        seeds, subseeds = image_seeds(seed, subseed, p.subseed_strength, p.total_images)
        n = p.batch_size
        items = [(b, {**params, "n_iter": 1, "seed": seeds[b * n], "subseed": subseeds[b * n]})
                 for b in range(p.n_iter)]
        self._control.interrupt.clear()
        folder = self.outputs_dir / "txt2img-images" if self.outputs_dir is not None else None
        return merge_results(ex.run(items, control=self._control, notes=(notes := []), save_to=folder), p,
                             notes, progress=self.progress, show=self.progress)

    def _model_names(self) -> dict:
        models = getattr(self, "models", None)
        if models is None:
            return {}
        try:
            listing = models()
        except Exception:  # no models folder configured
            return {}
        return {kind: [getattr(m, "name", str(m)) for m in entries] for kind, entries in dict(listing).items()}

    def _estimate_seconds(self, plan) -> tuple[float, float, float]:
        """``(low, typical, high)`` seconds for the plan's cells, from a short timed run at the first cell's size
        (:meth:`_probe_costs`)."""
        from .jobs.xyz import estimate_seconds

        costs, fixed = self._probe_costs(next(iter(plan.cells.values())))
        return estimate_seconds(plan.cells.values(), costs, fixed, upscalers=self.upscalers.files)

    def _cell_seconds(self, cells: list) -> list[tuple[float, float, float]]:
        """``(low, typical, high)`` seconds of each cell, from one probe at the first cell's size."""
        from .jobs.xyz import estimate_seconds

        costs, fixed = self._probe_costs(cells[0])
        return [estimate_seconds([cell], costs, fixed, upscalers=self.upscalers.files) for cell in cells]

    def _probe_costs(self, cell: dict) -> tuple[list[float], float]:
        """``(seconds per model call per pixel-image, fixed seconds per pixel-image)`` measured on ``cell``'s size.

        The probe runs 5 Euler steps and times each step apart: the first (warm-up: allocations, kernel selection)
        is left out, the other four give the spread; model calls timed in this session's earlier jobs join them.
        """
        import time

        first = {k: v for k, v in cell.items() if k != "_load"}
        probe = {**first, "steps": 5, "n_iter": 1, "enable_hr": False, "sampler_name": "Euler"}
        stamps: list[float] = []
        saved, self.outputs_dir = self.outputs_dir, None
        progress, self.progress = self.progress, False
        try:
            t = time.perf_counter()
            r = self.txt2img(hooks=[lambda state: stamps.append(time.perf_counter())], **probe)
            elapsed = time.perf_counter() - t
        finally:
            self.outputs_dir, self.progress = saved, progress
        p = r.params
        pixel_images = p.width * p.height * p.batch_size
        costs = [(b - a) / pixel_images for a, b in zip(stamps[1:], stamps[2:])]
        costs += list(self._call_costs)
        fixed = max(elapsed - r.timings["sample_s"], 0.0) / pixel_images
        return costs, fixed

    def __repr__(self) -> str:
        model = self.model.name if self.model is not None else "no model"
        speed = f"attention={self.attention}" + (", compiled" if self._compile_options is not None else "")
        return f"Session({model}, {self.device}, {self.precision.short()}, memory={self.memory_plan.mode}, {speed})"
