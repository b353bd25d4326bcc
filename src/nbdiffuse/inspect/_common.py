"""What probes and attention maps share: telling which sampler step a UNet call belongs to, and which rows of
the UNet batch are the positive (cond) and negative (uncond) halves of classifier-free guidance."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch

from ..sampling.denoiser import unet_rows


def batch_layout(sample: torch.Tensor) -> tuple[int, int]:
    """``(entries, batch)`` of a guided UNet batch, read off the UNet's input.

    An entry-major batch holds the same ``batch`` latents once per entry (the positive ``AND`` parts, then the
    negative prompt). The input is therefore periodic with period ``batch`` (the images of one batch start from
    different noise, so the period is exactly the batch size), and ``entries = rows // batch``. With CFG scale 1
    and one positive part the negative half is skipped and ``entries == 1``. (:class:`~nbdiffuse.sampling.guidance.
    CFGDenoiser` runs one image per UNet forward: each forward is ``(entries, 1)``, see :meth:`StepTracker.gather`.)
    """
    rows = sample.shape[0]
    for period in range(1, rows + 1):
        if rows % period:
            continue
        first = sample[:period]
        if all(torch.equal(sample[k * period:(k + 1) * period], first) for k in range(1, rows // period)):
            return rows // period, period
    return 1, rows  # unreachable: period == rows always matches


def split_rows(entries: int, batch: int) -> tuple[slice, slice | None]:
    """Row slices ``(cond, uncond)`` for a layout: all positive parts, then the negative prompt (or ``None``)."""
    if entries <= 1:
        return slice(0, batch), None
    return slice(0, (entries - 1) * batch), slice((entries - 1) * batch, entries * batch)


class StepTracker:
    """Attributes UNet calls to sampler steps.

    The step index is :attr:`StepState.i <nbdiffuse.sampling.base.StepState.i>` (0-based) of the step during which
    the call happened: a sampler hook (:meth:`hook`) runs after every step and advances the counter, so the calls
    made before the hook of step ``i`` belong to step ``i``. ``call`` counts the UNet calls within the current step
    (second-order samplers make two); probes record the first. Only the first batch (``n_iter`` iteration) of the
    first job is tracked: after its last step ``done`` is set. A model call of a batch runs one UNet forward per
    image (:func:`~nbdiffuse.sampling.denoiser.unet_rows` says which); :meth:`gather` joins them back into one
    entry-major batch, and ``layout`` is the whole call's.

    ``install()`` appends :meth:`hook` to ``session.hooks`` (a job reads that list when it starts: enter the probe
    before starting the job); for a bare bundle, pass ``tracker.hook`` in the job's ``hooks=``.
    """

    def __init__(self, session=None):
        self.session = session
        self.step = 0
        self.call = -1
        self.done = False
        self.layout: tuple[int, int] = (1, 1)
        self.latent_hw: tuple[int, int] | None = None
        self.rows = None  # the running forward's UNetRows (None: a forward that is a whole model call)
        self._pieces: dict = {}
        self._installed = False
        self._handle = None

    def hook(self, state) -> None:
        if self.done:
            return
        if state.extra.get("iteration", 0) > 0:
            self.done = True
            return
        self.step = state.i + 1
        self.call = -1
        if state.i + 1 >= state.total:
            self.done = True

    def unet_pre_hook(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if sample is None or self.done:
            return
        rows = unet_rows()
        self.rows = rows if rows is not None and (rows.stop - rows.start) < rows.total else None
        if self.rows is None or self.rows.start == 0:
            self.call += 1
            self._pieces.clear()
        entries, batch = batch_layout(sample)
        self.layout = (entries, self.rows.total // entries) if self.rows is not None else (entries, batch)
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    def gather(self, key, tensor: torch.Tensor) -> torch.Tensor | None:
        """``tensor`` (a module's capture ``key`` in this forward) joined with the same capture of the model call's
        other per-image forwards, entry-major as one batched call would give it; ``None`` until the last forward.
        Tensors whose first axis is not the forward's rows are joined along it as they come."""
        if self.rows is None:
            return tensor
        pieces = self._pieces.setdefault(key, [])
        pieces.append(tensor.detach().clone() if self.rows.stop < self.rows.total else tensor)
        if self.rows.stop < self.rows.total:
            return None
        del self._pieces[key]
        entries, batch = self.layout
        if len(pieces) != batch or any(p.shape[0] != entries for p in pieces):
            return torch.cat(pieces)
        stacked = torch.stack(pieces, dim=1)  # (entries, batch, ...)
        return stacked.reshape(entries * batch, *stacked.shape[2:])

    @property
    def first_call(self) -> bool:
        return not self.done and self.call == 0

    def install(self, unet: torch.nn.Module) -> None:
        self._handle = unet.register_forward_pre_hook(self.unet_pre_hook, with_kwargs=True)
        hooks = getattr(self.session, "hooks", None)
        if isinstance(hooks, list):
            self._bound = self.hook
            hooks.append(self._bound)
            self._installed = True

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._installed:
            hooks = self.session.hooks
            for k, h in enumerate(hooks):
                if h is self._bound:
                    del hooks[k]
                    break
            self._installed = False


def hold_session(session_or_bundle, what: str) -> Callable[[], None]:
    """Hold a Session for a ``with`` block that changes its UNet (probes, attention processors): other threads'
    jobs wait until the returned release is called; jobs of this thread run inside (:mod:`nbdiffuse.jobs.lock`)."""
    lock = getattr(session_or_bundle, "_lock", None)
    if lock is None:
        return lambda: None
    return lock.acquire(what, job=False, exclusive=False)


def unet_of(session_or_bundle) -> torch.nn.Module:
    """The UNet of a Session (its loaded model), a ModelBundle, or a UNet given directly."""
    model = getattr(session_or_bundle, "model", None)
    if model is not None and hasattr(model, "unet"):
        return model.unet
    if hasattr(session_or_bundle, "unet"):
        return session_or_bundle.unet
    if isinstance(session_or_bundle, torch.nn.Module):
        return session_or_bundle
    raise RuntimeError("No model is loaded: call session.load(...) first.")


def select_modules(root: torch.nn.Module, selectors, candidates: Callable[[str, torch.nn.Module], bool] | None = None,
                   what: str = "module") -> dict[str, torch.nn.Module]:
    """Modules of ``root`` chosen by class name, module path (exact, prefix or ``fnmatch`` pattern) or predicate.

    A string is first tried as a class name (``"Transformer2DModel"``), then as a path: an exact path
    (``"down_blocks.1.attentions.0"``), a glob (``"up_blocks.*.attentions.*"``) or, for ``candidates`` lists,
    a path prefix (``"up_blocks.1"`` selects every candidate under it). A callable is called as
    ``predicate(path, module)``. A selector that matches nothing raises ``ValueError`` naming some paths.
    """
    if selectors is None:
        selectors = [lambda name, m: True]
    elif isinstance(selectors, str) or callable(selectors):
        selectors = [selectors]
    named = [(n, m) for n, m in root.named_modules() if n and (candidates is None or candidates(n, m))]
    chosen: dict[str, torch.nn.Module] = {}
    for sel in selectors:
        if callable(sel):
            hits = [(n, m) for n, m in named if sel(n, m)]
        else:
            hits = [(n, m) for n, m in named if type(m).__name__ == sel]
            if not hits:
                hits = [(n, m) for n, m in named
                        if n == sel or fnmatch.fnmatchcase(n, sel)
                        or (candidates is not None and n.startswith(sel + "."))]
        if not hits:
            examples = ", ".join(n for n, _ in named[:8])
            classes = sorted({type(m).__name__ for _, m in named})[:12]
            raise ValueError(f"{what} selector {sel!r} matches nothing; paths look like: {examples}, ...; "
                             f"classes: {', '.join(classes)}")
        for n, m in hits:
            chosen.setdefault(n, m)
    return chosen


class ModuleWatch:
    """The life of a probe on UNet modules (:class:`~nbdiffuse.inspect.probes.Probe`,
    :class:`~nbdiffuse.inspect.attention.AttentionMaps`): entering selects the modules, holds the session, installs
    the subclass's hooks and the step tracker, all or nothing; leaving (or :meth:`remove`) takes them out again.

    A subclass sets ``session`` and ``_tracker`` and implements ``_select(unet)`` (-> name -> module), ``_install(name,
    module)`` and ``_uninstall()``; ``what`` names it in the session's busy message.
    """

    what = "a probe"

    @property
    def step_hook(self):
        """The sampler hook that advances the step counter (installed in ``session.hooks`` automatically)."""
        return self._tracker.hook

    def __enter__(self):
        unet = unet_of(self.session)
        self.modules = self._select(unet)
        self._release = hold_session(self.session, self.what)
        try:
            for name, module in self.modules.items():
                self._install(name, module)
            self._tracker.install(unet)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        """Take out every hook this probe installed and let the session go (``__exit__`` does it)."""
        self._uninstall()
        self._tracker.remove()
        release, self._release = getattr(self, "_release", None), None
        if release is not None:
            release()
