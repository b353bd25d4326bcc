"""Capture the inputs or outputs of UNet modules during a generation, cond and uncond halves separated.

>>> with Probe(session, modules="Transformer2DModel", steps=[4]) as probe:     # doctest: +SKIP
...     session.txt2img(prompt="a red circle", steps=20, seed=1)
>>> a = probe.activations["down_blocks.0.attentions.0"][4]                     # step i == 4 (the 5th step)
>>> (a["cond"] - a["uncond"]).norm()
>>> probe.summary()                                                            # a table in the notebook

Modules are chosen by class name (``"Transformer2DModel"``, diffusers' name for LDM's SpatialTransformer), by module
path (``"down_blocks.1.attentions.0"``, or a glob ``"up_blocks.*.attentions.*"``) or by a predicate
``f(path, module) -> bool``; a list mixes them. Keys of ``activations`` are module paths.

**Steps.** The step key is :attr:`StepState.i` (0-based) of the sampler step during which the UNet call happened:
the probe adds a hook to ``session.hooks`` that advances its step counter after every step (so enter the ``with``
block before starting the job, or create a :class:`~nbdiffuse.inspect.debug.Debugger` inside it). For samplers that
call the UNet more than once per step (Heun, DPM2, ...), the first call of each step is recorded (the one at
``state.sigma``). Only the first ``n_iter`` batch of the first job inside the block is captured.

**Cond/uncond.** Guidance runs each image's positive prompt(s) and negative prompt in one UNet forward (one forward
per image, so an image of a batch is computed exactly as alone); a capture joins a model call's forwards entry-major:
for one positive part and batch size ``b``, rows ``[:b]`` are cond and rows ``[b:2b]`` uncond (with ``AND``, all
positive parts come first, the negative last). The layout is read off each UNet forward's input (the latent is
repeated once per entry). ``activations[name][i]`` is ``{"cond": tensor, "uncond": tensor or None}``: ``uncond``
is ``None`` when guidance skipped the negative half (CFG scale 1). Tensors are detached copies on the CPU, in the
model's dtype.

**Memory.** Captures stop, with one warning saying where, once ``budget_bytes`` (default 1 GiB) would be exceeded;
``probe.truncated`` tells. Hooks are removed when the block exits, also on error.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Iterable

import torch

from ._common import ModuleWatch, StepTracker, select_modules, split_rows

CAPTURE = ("output", "input")


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
        return None
    sample = getattr(value, "sample", None)  # diffusers ModelOutput
    return sample if isinstance(sample, torch.Tensor) else None


class Probe(ModuleWatch):
    """Context manager recording UNet module activations per sampler step (see the module docs).

    ``session``: a :class:`~nbdiffuse.session.Session` (or a ModelBundle / UNet; then pass ``probe.step_hook`` in
    the job's ``hooks=`` to count steps). ``capture``: ``"output"`` or ``"input"`` (the first positional tensor,
    ``hidden_states``). ``steps``: step indices (0-based ``StepState.i``) to record, ``None`` for all.
    ``budget_bytes``: memory limit for everything captured. ``dtype``: convert captures (e.g. ``torch.float32``).

    >>> with Probe(session, "Transformer2DModel") as probe:  # doctest: +SKIP
    ...     session.txt2img(prompt="a red circle", steps=20)
    >>> probe.summary()  # doctest: +SKIP
    """

    def __init__(self, session, modules="Transformer2DModel", capture: str = "output",
                 steps: Iterable[int] | None = None, budget_bytes: int = 2**30, dtype: torch.dtype | None = None):
        if capture not in CAPTURE:
            raise ValueError(f"capture={capture!r} is not valid: choose 'output' or 'input'")
        self.session = session
        self.selectors = modules
        self.capture = capture
        self.steps = None if steps is None else {int(s) for s in steps}
        self.budget_bytes = int(budget_bytes)
        self.dtype = dtype
        self.activations: dict[str, dict[int, dict[str, torch.Tensor | None]]] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        self.bytes = 0
        self.truncated = False
        self.calls_seen = 0
        self._tracker = StepTracker(session)
        self._handles: list = []

    @property
    def names(self) -> list[str]:
        return list(self.modules)

    # install / remove -------------------------------------------------------------------------------------
    def _select(self, unet) -> dict[str, torch.nn.Module]:
        modules = select_modules(unet, self.selectors)
        self.activations = {name: {} for name in modules}
        return modules

    def _install(self, name: str, module: torch.nn.Module) -> None:
        if self.capture == "output":
            handle = module.register_forward_hook(self._output_hook(name))
        else:
            handle = module.register_forward_pre_hook(self._input_hook(name), with_kwargs=True)
        self._handles.append(handle)

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # capturing --------------------------------------------------------------------------------------------
    def _output_hook(self, name):
        def hook(module, args, output):
            self._record(name, _first_tensor(output))
        return hook

    def _input_hook(self, name):
        def hook(module, args, kwargs):
            value = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            self._record(name, _first_tensor(value))
        return hook

    def _wanted(self) -> bool:
        tracker = self._tracker
        return (not self.truncated and tracker.first_call
                and (self.steps is None or tracker.step in self.steps))

    def _record(self, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or not self._wanted():
            return
        tensor = self._tracker.gather(name, tensor)
        if tensor is None:  # more per-image forwards of this model call to come
            return
        step = self._tracker.step
        entries, batch = self._tracker.layout
        if tensor.shape[0] != entries * batch:  # not batch-major like the UNet input: keep it whole
            cond_rows, uncond_rows = slice(None), None
        else:
            cond_rows, uncond_rows = split_rows(entries, batch)
        size = tensor[cond_rows].nelement() * tensor.element_size()
        if uncond_rows is not None:
            size += tensor[uncond_rows].nelement() * tensor.element_size()
        if self.dtype is not None:
            size = size // tensor.element_size() * torch.empty((), dtype=self.dtype).element_size()
        if self.bytes + size > self.budget_bytes:
            self.truncated = True
            warnings.warn(f"Probe memory budget reached: {self.bytes / 2**20:.1f} MiB captured, the next capture "
                          f"({name}, step {step}, {size / 2**20:.1f} MiB) would pass budget_bytes="
                          f"{self.budget_bytes / 2**20:.1f} MiB; capturing stopped here, later modules/steps are "
                          "missing. Raise budget_bytes, or choose fewer modules or steps=[...].", stacklevel=2)
            return

        def copy(rows):
            t = tensor[rows].detach()
            return t.to("cpu", dtype=self.dtype or t.dtype, copy=True)

        self.activations[name][step] = {"cond": copy(cond_rows),
                                        "uncond": copy(uncond_rows) if uncond_rows is not None else None}
        self.bytes += size

    # reading ----------------------------------------------------------------------------------------------
    def summary(self) -> ProbeSummary:
        """Per module and step: shape and statistics of the cond half, the uncond half and their difference."""
        rows = []
        for name, per_step in self.activations.items():
            for step in sorted(per_step):
                a = per_step[step]
                c = a["cond"].float()
                row = {"module": name, "step": step, "shape": tuple(a["cond"].shape),
                       "cond_mean": float(c.mean()), "cond_std": float(c.std()) if c.numel() > 1 else 0.0,
                       "cond_absmax": float(c.abs().max()), "uncond_std": None, "diff_rms": None}
                if a["uncond"] is not None:
                    u = a["uncond"].float()
                    row["uncond_std"] = float(u.std()) if u.numel() > 1 else 0.0
                    if u.shape == c.shape:
                        row["diff_rms"] = float((c - u).pow(2).mean().sqrt())
                rows.append(row)
        return ProbeSummary(rows)

    def norms(self, name: str, which: str = "cond") -> dict[int, float]:
        """RMS of one module's capture per step (``which``: ``"cond"``, ``"uncond"`` or ``"diff"``)."""
        out = {}
        for step, a in sorted(self.activations[name].items()):
            if which == "diff":
                if a["uncond"] is None or a["uncond"].shape != a["cond"].shape:
                    continue
                t = a["cond"].float() - a["uncond"].float()
            else:
                if a[which] is None:
                    continue
                t = a[which].float()
            out[step] = float(t.pow(2).mean().sqrt())
        return out

    def __repr__(self) -> str:
        steps = sorted({s for per in self.activations.values() for s in per})
        return (f"Probe({len(self.modules)} module(s), capture={self.capture!r}, steps captured {steps}, "
                f"{self.bytes / 2**20:.1f} MiB{', TRUNCATED' if self.truncated else ''})")


class ProbeSummary(list):
    """A list of row dicts (one per module and step) that shows itself as a table.

    >>> probe.summary()          # one row per module and step: shape, mean, std  # doctest: +SKIP
    """

    COLUMNS = ("module", "step", "shape", "cond_mean", "cond_std", "cond_absmax", "uncond_std", "diff_rms")

    @staticmethod
    def _fmt(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        if isinstance(v, tuple):
            return "\u00d7".join(map(str, v))
        return str(v)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(r[c]))}</td>" for c in self.COLUMNS) + "</tr>"
                       for r in self)
        return f'<table style="font-size: 12px"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __str__(self) -> str:
        table = [list(self.COLUMNS)] + [[self._fmt(r[c]) for c in self.COLUMNS] for r in self]
        widths = [max(len(row[k]) for row in table) for k in range(len(self.COLUMNS))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table)
