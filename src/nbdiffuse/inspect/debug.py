"""Step through a generation from notebook cells: no threads, no polling.

>>> dbg = Debugger(session, prompt="a red circle", steps=20, seed=1)   # doctest: +SKIP
>>> dbg.step()            # step 1 of 20; the cell shows "step 1 of 20", sigma and a preview of x0
>>> dbg.run_to(10)        # steps 2..10
>>> dbg.state.extra["cond"] - dbg.state.extra["uncond"]     # the guidance direction at step 10
>>> dbg.set_latent(dbg.state.x * 0.9)                        # step 11 starts from this latent
>>> result = dbg.finish()

The generation is the session's ordinary txt2img generator (:meth:`Session.steps`), driven with ``next()``; each
:meth:`Debugger.step` runs exactly one sampler step (one or more UNet calls) and the hooks after it. Stepping and
then finishing gives the same latents, bit for bit, as an uninterrupted ``session.txt2img`` with the same params.

Breakpoints: the hooks run in the kernel's own thread, so a ``breakpoint()`` inside a hook stops right there with
the whole state in scope (``state.x``, ``state.denoised``, ``state.extra["cond"]``...)::

    def stop_at_7(state):
        if state.i == 6:
            breakpoint()     # pdb prompt in the notebook; `c` continues the generation

    session.txt2img(prompt="a red circle", hooks=[stop_at_7])

The job starts at the first :meth:`~Debugger.step`, so probes and attention maps entered after creating the debugger
but before stepping still see the whole job.
"""

from __future__ import annotations

import base64
import html
import io

import torch

from .previews import preview as _preview


class Debugger:
    """A txt2img generation (``params``: A1111's fields) you advance step by step.

    ``hooks``: extra sampler hooks for this job (the session's own hooks run too, first). ``state`` is the current
    :class:`~nbdiffuse.sampling.base.StepState` (``None`` before the first step), ``result`` the
    :class:`~nbdiffuse.jobs.result.Result` once finished (also stored as ``session.last_result``, as ``txt2img``
    does). Steps are 1-based in the display (``state.step``) and 0-based in ``state.i``.

    >>> dbg = Debugger(session, prompt="a red circle", steps=20)  # doctest: +SKIP
    >>> dbg.run_to(7); dbg.preview()  # doctest: +SKIP
    >>> result = dbg.finish()  # doctest: +SKIP
    """

    def __init__(self, session, *, hooks=None, **params):
        self.session = session
        self.params = params
        self.hooks = list(hooks or [])
        self.state = None
        self.result = None
        self.steps_done = 0
        self._run = None
        self._slot: torch.Tensor | None = None
        self._latent_changed = False

    # driving ----------------------------------------------------------------------------------------------
    def _start(self):
        if self._run is None:
            # Our hook runs last, so the latent it hands back is the one the sampler continues from. It hands back a
            # copy of state.x (same values, so the trajectory is unchanged) that set_latent() can overwrite in place
            # after the step was yielded: the driver sends that very tensor to the sampler on the next next().
            self._run = self.session.steps(hooks=[*self.hooks, self._latent_hook], **self.params)
        return self._run

    def _latent_hook(self, state):
        self._slot = state.x.clone()
        self._latent_changed = False
        return self._slot

    @property
    def finished(self) -> bool:
        return self.result is not None

    def step(self, n: int = 1):
        """Run ``n`` more sampler steps (fewer if the generation ends); returns ``self`` so the cell shows it."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        run = self._start()
        for _ in range(n):
            if self.finished:
                break
            try:
                self.state = next(run)
                self.steps_done += 1
            except StopIteration:
                self._finished(run.result)
                break
        return self

    def run_to(self, step: int):
        """Run until ``state.step == step`` (1-based, in the current ``n_iter`` batch); no-op if already there."""
        self._start()
        if self.state is not None and step > self.state.total:
            raise ValueError(f"step {step} is past the last step ({self.state.total})")
        while not self.finished and (self.state is None or self.state.step < step):
            self.step()
        return self

    def finish(self):
        """Run the remaining steps, decode and save as txt2img does; returns the Result."""
        run = self._start()
        while not self.finished:
            self.step()
        return run.result

    def _finished(self, result) -> None:
        self.result = result
        try:
            self.session.last_result = result
        except AttributeError:
            pass

    def close(self) -> None:
        """Abandon the generation (nothing is decoded or saved)."""
        if self._run is not None and not self.finished:
            self._run.close()

    # looking and changing ---------------------------------------------------------------------------------
    def set_latent(self, x: torch.Tensor) -> None:
        """Make the next step start from ``x`` instead of ``state.x`` (same shape); after the last step it becomes
        the final latent that is decoded. ``state.x`` shows the new latent."""
        if self.state is None:
            raise RuntimeError("set_latent: take a step first (the initial latent is drawn inside the job)")
        if self.finished:
            raise RuntimeError("set_latent: the generation has finished")
        if tuple(x.shape) != tuple(self._slot.shape):
            raise ValueError(f"set_latent: expected shape {tuple(self._slot.shape)}, got {tuple(x.shape)}")
        self._slot.copy_(x.to(device=self._slot.device, dtype=self._slot.dtype))
        self._latent_changed = True

    def preview(self, method: str = "cheap", which: str = "denoised", image: int = 0, taesd=None):
        """The current x0 prediction (``which="x"``: the noisy latent) as a PIL image.

        ``method="cheap"`` (default, A1111's linear approximation at latent resolution), ``"taesd"`` (pass
        ``taesd=``) or ``"full"`` (the model's VAE).
        """
        if self.state is None:
            raise RuntimeError("preview: take a step first")
        latent = {"denoised": self.state.denoised, "x": self.state.x}[which][image]
        return _preview(latent, method, bundle=self.session.model, taesd=taesd)

    def __repr__(self) -> str:
        return f"Debugger({self._status()})"

    def _status(self) -> str:
        if self.finished:
            return f"finished: {len(self.result.images)} image(s), {self.steps_done} steps"
        if self.state is None:
            return f"not started ({self.params.get('steps', 20)} steps)"
        s = self.state
        text = f"step {s.step} of {s.total}, sigma {s.sigma:.4g} \u2192 {s.sigma_next:.4g}"
        if s.extra.get("iteration"):
            text += f", batch {s.extra['iteration'] + 1}"
        if self._latent_changed:
            text += ", latent replaced"
        return text

    def _repr_html_(self) -> str:
        img = ""
        try:
            if self.finished and self.result.images:
                im = self.result.images[0]
            elif self.state is not None:
                im = self.preview()
            else:
                im = None
            if im is not None:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                data = base64.b64encode(buf.getvalue()).decode("ascii")
                width = max(128, self.params.get("width", im.width) // 4, im.width)
                img = (f'<img src="data:image/png;base64,{data}" width="{width}" '
                       'style="image-rendering: pixelated; display: block; margin-top: 4px"/>')
        except Exception as e:  # a display must never raise
            img = f"<div>(no preview: {html.escape(str(e))})</div>"
        return (f'<div style="font-family: monospace; font-size: 12px"><b>Debugger</b> '
                f"{html.escape(self._status())}{img}</div>")
