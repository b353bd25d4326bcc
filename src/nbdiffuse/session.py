"""Session: the one stateful object — the loaded model, device/dtype policy, hooks, caches, stop flags."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .jobs.params import GenerationParams
from .jobs.result import Result
from .jobs.txt2img import Hook, JobControl, txt2img_steps
from .models.bundle import ModelBundle
from .prompts.conditioning import TextEncoder, TokenCount, count_tokens
from .sampling.base import StepState


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (what A1111 runs), float32 elsewhere (CPU half precision is slow and lossy)."""
    return torch.float16 if device.type == "cuda" else torch.float32


class StepRun:
    """A generation driven step by step: iterate it (or call ``next()``); ``result`` is set after the last step.

    >>> run = session.steps(prompt="a red circle", steps=20)   # doctest: +SKIP
    >>> state = next(run)                                       # step 1 of 20
    >>> for state in run: pass                                  # the rest
    >>> run.result.images[0]
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
    """Holds the loaded model and runs jobs on it.

    >>> from nbdiffuse import Session
    >>> s = Session(outputs_dir=None)                             # doctest: +SKIP
    >>> s.load("path/to/diffusers-folder")                       # doctest: +SKIP
    >>> r = s.txt2img(prompt="a red circle", steps=20, seed=1)   # doctest: +SKIP

    ``device``: default CUDA when present, else CPU. ``dtype``: default float16 on CUDA, float32 on CPU.
    ``outputs_dir``: where images are saved (A1111 layout); ``None`` disables saving.
    ``hooks``: callables ``hook(state)`` run after every step of every job (a returned tensor replaces the latent).
    """

    def __init__(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 outputs_dir: str | Path | None = "outputs", progress: bool = True):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.progress = progress
        self.hooks: list[Hook] = []
        self.model: ModelBundle | None = None
        self.encoder: TextEncoder | None = None
        self.last_result: Result | None = None
        self._control = JobControl()

    # models -----------------------------------------------------------------------------------------------
    def load(self, model: str | Path | ModelBundle) -> ModelBundle:
        """Load a model (a diffusers folder or an already built :class:`ModelBundle`) and make it current.

        The previous model stays loaded and usable if this one fails to load; on success it is freed.
        """
        if isinstance(model, ModelBundle):
            bundle = model
        else:
            from .models.loading import load_diffusers_folder

            bundle = load_diffusers_folder(model, device=self.device, dtype=self.dtype)
        bundle.to(self.device, self.dtype)
        self.unload()
        self.model = bundle
        self.encoder = TextEncoder(bundle)
        return bundle

    def unload(self) -> None:
        """Free the current model."""
        self.model = None
        self.encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _require_model(self) -> ModelBundle:
        if self.model is None:
            raise RuntimeError("No model is loaded: call session.load(...) first "
                               "(e.g. session.load(nbdiffuse.testing.tiny_sd1()) for a tiny test model).")
        return self.model

    # prompts ----------------------------------------------------------------------------------------------
    def count_tokens(self, prompt: str) -> TokenCount:
        """A1111's token counter (``str()`` gives ``"76/150"``) with the loaded model's tokenizer."""
        tokenizer = self.model.tokenizers[0] if self.model is not None else None
        return count_tokens(prompt, tokenizer)

    # jobs -------------------------------------------------------------------------------------------------
    def _job(self, params: dict, hooks: Sequence[Hook] | None):
        p = GenerationParams.from_kwargs(**params)
        bundle = self._require_model()
        self._control.interrupt.clear()
        self._control.skip.clear()
        all_hooks = [*self.hooks, *(hooks or [])]
        return p, txt2img_steps(bundle, p, self.encoder, hooks=all_hooks, control=self._control,
                                outputs_dir=self.outputs_dir)

    def txt2img(self, *, hooks: Sequence[Hook] | None = None, **params) -> Result:
        """Generate images from text. Parameters are A1111's API fields (``prompt``, ``steps``, ``seed``, ...)."""
        p, gen = self._job(params, hooks)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=p.steps * p.n_iter, desc=p.sampler_name, leave=False)
        try:
            while True:
                state = next(gen)
                if bar is not None:
                    bar.total = max(bar.total, state.total * p.n_iter)  # Restart/DPM adaptive step counts vary
                    bar.update(1)
        except StopIteration as stop:
            result = stop.value
        finally:
            if bar is not None:
                bar.close()
        self.last_result = result
        return result

    def steps(self, *, hooks: Sequence[Hook] | None = None, **params) -> StepRun:
        """A txt2img generation as a :class:`StepRun` you drive with ``next()``: no threads, no polling."""
        return StepRun(self._job(params, hooks)[1])

    def interrupt(self) -> None:
        """Stop the running job after its current step (safe from any thread); what finished is kept."""
        self._control.interrupt.set()

    def skip(self) -> None:
        """Finish the current batch after its current step and go on with the next ``n_iter`` batch."""
        self._control.skip.set()

    def __repr__(self) -> str:
        model = self.model.name if self.model is not None else "no model"
        return f"Session({model}, {self.device}, {str(self.dtype).replace('torch.', '')})"
