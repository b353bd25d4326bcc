"""The control panel: A1111's txt2img screen as ipywidgets in the notebook, driving a :class:`~nbdiffuse.Session`.

The widgets are laid out in :mod:`.layout`, the gallery is :mod:`.gallery`; this module wires them to the public
API: every button is one ``session`` call. Generation runs on a worker thread, so the kernel stays free to handle
Stop/Skip clicks, which set the session's flags (read by the sampling loop after every step).

>>> from nbdiffuse.ui import Panel
>>> panel = Panel(session)        # doctest: +SKIP
>>> panel                         # doctest: +SKIP
>>> panel.params                  # doctest: +SKIP

(``panel`` last in a cell shows it; ``panel.params`` is the dict you would pass to ``session.txt2img(**params)``,
``panel.img2img_params`` the one for ``session.img2img(**params)`` from the img2img tab, mask included.)
"""

from __future__ import annotations

import html
import io
import threading
import time
from collections.abc import Callable

import ipywidgets as w
from PIL import Image

from .. import infotext
from ..jobs.params import GenerationParams
from ..jobs.soft_inpainting import SoftInpainting
from ..sampling.registry import resolve_sampler
from ..sampling.schedules import resolve_schedule
from .gallery import NEWEST_ONLY, Gallery, Job
from .images import png_bytes, preview_image
from .labels import default_lang, labels
from .layout import (
    CONTROLS,
    EXTRAS_CONTROLS,
    HIRES_CONTROLS,
    IMG2IMG_CONTROLS,
    INPAINT_CONTROLS,
    INPAINT_UI_DEFAULTS,
    build_panel,
    close_tree,
    control_defaults,
)

#: Infotext fields that A1111 leaves out at their default: a pasted infotext without them means "the default".
_OPTIONAL_INFOTEXT = ("negative_prompt", "scheduler")
#: What pasting an infotext sets for img2img keys it lacks: A1111's paste defaults (``modules/infotext_utils.py``:
#: "Inpaint masked", "original", "Whole picture", padding 32), soft inpainting off, and the settings an infotext
#: overrides only when it names them (extra noise, noise multiplier, conditional mask weight) at their defaults.
_INFOTEXT_IMG2IMG_DEFAULTS = {
    **{k: INPAINT_UI_DEFAULTS[k] for k in ("inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                                           "inpaint_full_res_padding")},
    "soft_inpainting": None, "extra_noise": 0.0, "initial_noise_multiplier": None, "inpainting_mask_weight": 1.0,
}
_DEFAULTS = control_defaults()
_FIELDS = frozenset(GenerationParams().to_dict())  # A1111's fields, each of which set_params takes


def _set_control(widget: w.Widget, value) -> None:
    """Set a control, stretching a slider's range (a pasted 300 steps is not clamped to 150) and adding a missing
    dropdown choice (e.g. an upscaler registered after the panel)."""
    if isinstance(widget, w.Dropdown) and value not in widget.options:
        widget.options = [*widget.options, value]
    if isinstance(widget, w.IntSlider | w.FloatSlider):
        widget.max = max(widget.max, value)
        widget.min = min(widget.min, value)
    widget.value = value


def _upload_files(value) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of a FileUpload's value: a tuple of dicts in ipywidgets 8, a name -> dict map in 7.x."""
    items = value.values() if isinstance(value, dict) else value
    out = []
    for item in items:
        name = item.get("name") or item.get("metadata", {}).get("name", "upload")
        out.append((name, bytes(item["content"])))
    return out


def _widget_view(widget: w.Widget) -> dict:
    """The display data that shows ``widget``'s view, as ipywidgets 8 (``_repr_mimebundle_``) and 7.x
    (``_ipython_display_``) both make it; none once the widget is closed."""
    if getattr(widget, "comm", None) is None or widget._view_name is None:
        return {}
    return {"application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                         "model_id": widget.model_id}}


class Panel:
    """A1111's txt2img and img2img screens for a :class:`~nbdiffuse.Session`, in the notebook, with no server.

    ``panel.params`` is the dict you would pass to ``session.txt2img``, ``panel.img2img_params`` the one for
    ``session.img2img`` (init image, and in the Inpaint modes the painted or uploaded mask with every inpainting
    control); ``panel.set_params(...)`` fills the controls; ``panel.generate()`` / ``panel.generate_img2img()``
    (the Generate buttons) run them on a worker thread and ``panel.wait()`` waits for it. ``lang``: ``"en"`` or
    ``"zh"`` (default: from the locale). ``preview_every``: live preview every N steps (0: off). ``gallery_jobs``:
    how many past jobs the gallery keeps (``panel.gallery.jobs``).

    >>> from nbdiffuse.ui import Panel
    >>> Panel(session, lang="zh")  # doctest: +SKIP
    """

    def __init__(self, session, lang: str | None = None, *, preview_every: int = 2, gallery_jobs: int = 4):
        self.session = session
        self.lang = default_lang() if lang is None else lang
        self.t = labels(self.lang)
        self.preview_every = preview_every
        self.result = None  # the last finished job's Result (what "✨ hires fix this" upscales)
        self.error: str | None = None  # the last error message shown
        self._extra: dict = {}  # parameters with no control (from a pasted infotext): kept and shown
        self._init_image: Image.Image | None = None
        self._mask_upload: Image.Image | None = None  # the "Inpaint upload" mode's mask, as uploaded (RGBA)
        self._extras_image: Image.Image | None = None  # the Extras tab's picture, with its PNG text
        self.extras_result = None  # the Extras tab's last ExtrasResult
        self._code_call = "txt2img"  # which call "Copy as code" shows: the last generation tab's
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._steps_done = 0
        self._returned = None
        self.w = build_panel(self.t, session.upscalers.names())
        self.widget = self.w.root
        self.gallery = Gallery(self.w.gallery, gallery_jobs, self._card_buttons)
        self._follow_native_size(None)
        self._wire()
        self._update_tokens()
        self._update_code()

    # the parameter object -------------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """The current settings as ``session.txt2img`` keyword arguments."""
        p = {name: getattr(self.w, name).value for name in CONTROLS}
        p.update(self._extra)
        if self.w.enable_hr.value:
            p["enable_hr"] = True
            p.update({name: getattr(self.w, name).value for name in HIRES_CONTROLS})
        return p

    @property
    def _painter(self):
        """The mask painter, or None where it could not be made (then the panel says why, and "Inpaint upload"
        works)."""
        return self.w.painter if hasattr(self.w.painter, "mask_image") else None

    @property
    def init_image(self) -> Image.Image | None:
        """The img2img tab's init image (uploaded, or sent from the gallery)."""
        return self._init_image

    @property
    def mask(self) -> Image.Image | None:
        """The mask the img2img tab's mode uses: the painted one ("Inpaint"), the uploaded one ("Inpaint upload"),
        None in "img2img" mode or when there is none yet."""
        mode = self.w.img2img_mode.value
        if mode == "inpaint":
            return self._painter.mask_image() if self._painter is not None else None
        return self._mask_upload if mode == "inpaint_upload" else None

    @property
    def img2img_params(self) -> dict:
        """The img2img tab's settings as ``session.img2img`` keyword arguments: the init image, the denoising
        strength, resize mode and extra noise, and in the inpaint modes the mask and every inpainting control (all
        of them: A1111's UI starts at other values than its API); the rest is :attr:`params` (the txt2img tab's
        prompt and settings; A1111's img2img has no hires fix)."""
        ui = self.w
        p = {"init_images": None if self._init_image is None else [self._init_image]}
        if ui.img2img_mode.value != "img2img":
            p["mask"] = self.mask
        p.update({k: v for k, v in self.params.items() if k != "enable_hr" and k not in HIRES_CONTROLS})
        p["denoising_strength"] = ui.img2img_strength.value
        p.update({name: getattr(ui, name).value for name in IMG2IMG_CONTROLS})
        if ui.img2img_mode.value != "img2img":
            p.update({name: getattr(ui, name).value for name in INPAINT_CONTROLS})
            if {"mask_blur_x", "mask_blur_y"} & self._extra.keys():  # a blur per axis (from set_params) is used
                del p["mask_blur"]
            p["soft_inpainting"] = ({name: s.value for name, s in ui.soft_sliders.items()}
                                    if ui.soft_inpainting.value else None)
        return p

    def set_params(self, params: dict | None = None, **changes) -> None:
        """Set controls from A1111 API fields (``set_params(steps=30, seed=1)``); others keep their values.

        Fields without a control (``clip_skip``, ``subseed``, ...) are kept and shown under the seed. The img2img
        tab's fields (``resize_mode``, ``mask_blur``, ``inpainting_fill``, ``soft_inpainting``, ...) set its
        controls. Invalid values raise ``ValueError``/``TypeError`` (from :class:`GenerationParams`) and change
        nothing.
        """
        changes = {**(params or {}), **changes}
        if "sampler_name" in changes:
            changes["sampler_name"] = resolve_sampler(changes["sampler_name"])[0]
        if changes.get("scheduler", "Automatic") != "Automatic":
            changes["scheduler"] = resolve_schedule(changes["scheduler"])
        wanted = {**self.params, **changes}
        if not wanted.get("enable_hr"):
            wanted = {k: v for k, v in wanted.items() if k not in HIRES_CONTROLS}
        self._validated(wanted)  # raises before any control changes
        blur = changes.get("mask_blur_x"), changes.get("mask_blur_y")
        if blur[0] is not None and blur[0] == blur[1]:  # one blur for both: the Mask blur slider
            changes = {k: v for k, v in changes.items() if k not in ("mask_blur_x", "mask_blur_y")}
            changes["mask_blur"] = blur[0]
        for key, value in changes.items():
            if key in CONTROLS or key in HIRES_CONTROLS:
                if value is None:  # "the job's default" (hr_upscaler, denoising_strength): the control's default
                    value = _DEFAULTS[key]
                _set_control(getattr(self.w, key), value)
            elif key == "enable_hr":
                self.w.enable_hr.value = bool(value)
            elif key in IMG2IMG_CONTROLS or key in INPAINT_CONTROLS:
                if key == "mask_blur":
                    if value is None:  # x and y differ: they are kept as fields without a control (below)
                        continue
                    self._extra.pop("mask_blur_x", None)
                    self._extra.pop("mask_blur_y", None)
                if value is None:  # initial_noise_multiplier: 1.0
                    value = _DEFAULTS[key]
                _set_control(getattr(self.w, key), bool(value) if isinstance(_DEFAULTS[key], bool) else value)
            elif key == "soft_inpainting":
                self._set_soft_inpainting(value)
            elif key in _FIELDS:
                if value == _DEFAULTS[key] or (key == "styles" and not value):
                    self._extra.pop(key, None)
                else:
                    self._extra[key] = value
        self._show_extra()

    def _set_soft_inpainting(self, settings) -> None:
        """The soft inpainting checkbox and sliders from None (off), True (A1111's defaults), a ``SoftInpainting`` or
        a dict of its fields."""
        self.w.soft_inpainting.value = bool(settings)
        if settings is True:
            settings = SoftInpainting()
        if settings:
            values = settings if isinstance(settings, dict) else {n: getattr(settings, n) for n in self.w.soft_sliders}
            for name, value in values.items():
                _set_control(self.w.soft_sliders[name], value)

    def _validated(self, params: dict) -> GenerationParams:
        """``params`` checked as the session's jobs check them (its registered upscalers are names too)."""
        return GenerationParams.from_kwargs(**params, known_upscalers=self.session.upscalers.files)

    @property
    def code(self) -> str:
        """The exact ``session.txt2img(...)`` call for :attr:`params` or, after the img2img tab was last chosen,
        :attr:`img2img_code`."""
        if self._code_call == "img2img":
            return self.img2img_code
        lines = [f"    {key}={value!r}," for key, value in self.params.items()]
        return "result = session.txt2img(\n" + "\n".join(lines) + "\n)"

    @property
    def img2img_code(self) -> str:
        """The exact ``session.img2img(...)`` call for :attr:`img2img_params`; the images are the panel's
        (``panel.init_image``, ``panel.mask``)."""
        images = {"init_images": "[panel.init_image]", "mask": "panel.mask"}
        lines = [f"    {key}={images[key] if key in images else repr(value)},"
                 for key, value in self.img2img_params.items()]
        return "result = session.img2img(\n" + "\n".join(lines) + "\n)"

    # actions (one public API call each) ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def generate(self, _button=None) -> None:
        """Start ``session.txt2img(**panel.params)`` on a worker thread (the Generate button)."""
        self._start(self.session.txt2img, self.params)

    def generate_img2img(self, _button=None) -> None:
        """Start ``session.img2img(**panel.img2img_params)`` (the img2img tab's Generate button); in the inpaint
        modes, a missing mask is said before anything runs."""
        params = self.img2img_params
        images = {key: params.pop(key) for key in ("init_images", "mask") if key in params}
        if images["init_images"] is None:
            self._show_error(self.t["no_init_image"])
            return
        if "mask" in images and images["mask"] is None:
            self._show_error(self.t["no_mask" if self.w.img2img_mode.value == "inpaint" else "no_mask_upload"])
            return
        self._start(lambda hooks, **p: self.session.img2img(hooks=hooks, **images, **p), params)

    @property
    def extras_image(self) -> Image.Image | None:
        """The Extras tab's picture (uploaded, with its PNG text, which A1111 keeps in the saved file)."""
        return self._extras_image

    @property
    def extras_params(self) -> dict:
        """The Extras tab's settings as ``session.extras`` keyword arguments (the picture is :attr:`extras_image`)."""
        ui = self.w
        widgets = {"upscaler_1": ui.extras_upscaler_1, "upscaler_2": ui.extras_upscaler_2,
                   "resize_mode": ui.extras_resize_mode}
        return {name: (widgets.get(name) or getattr(ui, name)).value for name in EXTRAS_CONTROLS}

    def run_extras(self, _button=None):
        """``session.extras(panel.extras_image, **panel.extras_params)`` (the Extras tab's Generate button), at
        once on this thread (no sampling: it waits for nothing but the upscaler); the picture and its
        postprocessing text show in the tab. Returns the ExtrasResult (None when it could not run)."""
        self._clear_error()
        if self.running:
            return None
        if self._extras_image is None:
            self._show_error(self.t["no_extras_image"])
            return None
        try:
            out = self.session.extras(self._extras_image, **self.extras_params)
        except Exception as e:  # noqa: BLE001 - the API's message is shown; the panel stays usable
            self._show_error(e)
            return None
        self.extras_result = out
        ui = self.w
        ui.extras_output.value = png_bytes(out.image)
        ui.extras_output.layout.display = ""
        lines = [self.t["extras_done"].format(size=f"{out.image.width}x{out.image.height}", infotext=out.infotext)]
        if out.path is not None:
            lines.append(self.t["extras_saved"].format(path=out.path))
        lines += [f"\u26a0 {warning}" for warning in out.warnings]
        ui.extras_info.value = "<br/>".join(html.escape(line) for line in lines)
        return out

    def _xyz_spec(self) -> list:
        return [(a.value, v.value) if a.value != "Nothing" else None
                for a, v in zip(self.w.xyz_axes, self.w.xyz_values)]

    @property
    def xyz_executor(self) -> str | None:
        """``"ray"`` when the X/Y/Z tab's "On Ray workers" box is ticked (:mod:`nbdiffuse.fanout`), else None."""
        return "ray" if self.w.xyz_ray.value else None

    def plan_xyz(self, _button=None):
        """``session.plan_xyz(x, y, z, executor=panel.xyz_executor, **panel.params)``: the grid's numbers (and with
        Ray, how many workers), shown before anything runs."""
        self._clear_error()
        plan = self.session.plan_xyz(*self._xyz_spec(), executor=self.xyz_executor, **self.params)
        self.w.xyz_info.value = plan._repr_html_()
        return plan

    def run_xyz(self, _button=None) -> None:
        """``session.xyz(x, y, z, executor=panel.xyz_executor, **panel.params)`` on the worker thread; the grid
        fills in the tab as cells arrive (in any order from Ray workers); Stop keeps the finished cells."""
        x, y, z = self._xyz_spec()
        executor = self.xyz_executor
        self._start(lambda hooks, **p: self.session.xyz(x, y, z, show=self._grid_progress, executor=executor, **p),
                    self.params, done=self._show_grid)

    def _grid_progress(self, grid) -> None:
        """After each cell: the grid so far, and how many cells are done."""
        total = len(grid.plan.order)
        self.w.progress.max, self.w.progress.value = max(total, 1), grid.done
        if grid.grid is not None:
            self.w.xyz_grid.value = png_bytes(grid.grid)
            self.w.xyz_grid.layout.display = ""
        self.w.status.value = html.escape(self.t["xyz_progress"].format(done=grid.done, total=total))

    def _show_grid(self, grid) -> None:
        image = grid.grid
        if image is not None:
            self.w.xyz_grid.value = png_bytes(image)
            self.w.xyz_grid.layout.display = ""
        key = "stopped" if grid.interrupted else "done"
        self.w.status.value = html.escape(self.t[key].format(n=grid.done, info="X/Y/Z plot"))
        if grid.notes:  # what happened on the way (a Ray worker died, a cell was retried)
            self.w.xyz_info.value = "<br/>".join(f"\u26a0 {html.escape(note)}" for note in grid.notes)

    def stop(self, _button=None) -> None:
        """Stop the running job after its current step (``session.interrupt()``); finished images are kept."""
        self._stop_requested = True
        self.session.interrupt()

    def skip(self, _button=None) -> None:
        """Skip to the next batch (``session.skip()``)."""
        self.session.skip()

    def wait(self, timeout: float | None = None):
        """Wait for the running job; returns what it returned (a Result; a GridResult for the XYZ tab), or ``None``
        if it failed (the message is in :attr:`error`)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the panel's job is still running after {timeout} s")
        return self._returned if self.error is None else None

    def paste_infotext(self, text: str) -> dict:
        """Fill every control from an A1111 infotext (``infotext.to_params``); returns the fields applied.

        Fields that are no parameter of a job (A1111 settings nbdiffuse does not have) are listed in the panel.
        """
        found = infotext.to_params(text)
        applied = {k: v for k, v in found.items() if k in _FIELDS}
        dropped = sorted(k for k in found if k not in _FIELDS)
        for key in _OPTIONAL_INFOTEXT:
            applied.setdefault(key, _DEFAULTS[key])
        for key, value in _INFOTEXT_IMG2IMG_DEFAULTS.items():  # A1111's paste assumes these when they are absent
            if key in _FIELDS:
                applied.setdefault(key, value)
        self._extra.clear()  # A1111 resets what an infotext leaves out (clip skip, variation seed, ...)
        self.set_params(applied)
        if applied.get("denoising_strength") is not None:  # A1111 pastes it into its img2img tab's slider too
            _set_control(self.w.img2img_strength, applied["denoising_strength"])
        note = self.t["pasted"]
        if dropped:
            note += " " + self.t["dropped"].format(keys=", ".join(dropped))
        self.w.paste_status.value = html.escape(note)
        self._clear_error()
        return applied

    def load_png(self, data: bytes | str) -> dict:
        """Fill the controls from an A1111 image's infotext (bytes or a path): "re-run this old image"."""
        text = infotext.read_png(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data)
        if not text:
            raise ValueError(self.t["no_infotext"])
        self.w.paste_text.value = text
        return self.paste_infotext(text)

    def close(self) -> None:
        """Close every widget of the panel (frees front-end state)."""
        close_tree(self.widget)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict:
        """The panel's widget view and, for front ends that render no widgets (VS Code offline, nbconvert's HTML,
        some SageMaker set-ups), text saying so with the ``session.txt2img(...)`` call for the current settings.
        Front ends with a widget manager rank the view first (as ipympl's figures, which add a PNG)."""
        note = self.t["no_frontend"]
        return {
            **_widget_view(self.widget),
            "text/plain": f"{note}:\n{self.code}",
            "text/html": (f'<div class="nbdiffuse-no-widgets"><p>{html.escape(note)}:</p>'
                          f"<pre>{html.escape(self.code)}</pre></div>"),
        }

    def __repr__(self) -> str:
        return f"Panel({self.session!r}, lang={self.lang!r})"

    # wiring ---------------------------------------------------------------------------------------------
    def _wire(self) -> None:
        ui = self.w
        ui.generate.on_click(self.generate)
        ui.stop.on_click(self.stop)
        ui.skip.on_click(self.skip)
        ui.random_seed.on_click(lambda _: setattr(ui.seed, "value", -1))
        ui.reuse_seed.on_click(self._reuse_seed)
        ui.clear_extra.on_click(self._clear_extra)
        ui.paste.on_click(lambda _: self._guard(self.paste_infotext, ui.paste_text.value))
        ui.upload.observe(self._on_upload, names="value")
        ui.prompt.observe(lambda _: self._update_tokens(), names="value")
        ui.negative_prompt.observe(lambda _: self._update_tokens(), names="value")
        for name in (*CONTROLS, "enable_hr", *HIRES_CONTROLS):
            getattr(ui, name).observe(lambda _: self._update_code(), names="value")
        ui.enable_hr.observe(lambda c: setattr(ui.hires_box.layout, "display", "" if c["new"] else "none"),
                             names="value")
        ui.xyz_plan.on_click(lambda _: self._guard(self.plan_xyz))
        ui.xyz_run.on_click(self.run_xyz)
        ui.generate_img2img.on_click(self.generate_img2img)
        ui.init_upload.observe(self._on_init_upload, names="value")
        ui.mask_upload.observe(self._on_mask_upload, names="value")
        ui.img2img_mode.observe(lambda c: self._show_mode(c["new"]), names="value")
        ui.extras_upload.observe(self._on_extras_upload, names="value")
        ui.generate_extras.on_click(self.run_extras)
        ui.extras_resize_mode.observe(lambda c: self._show_extras_mode(c["new"]), names="value")
        ui.soft_inpainting.observe(lambda c: setattr(ui.soft_box.layout, "display", "" if c["new"] else "none"),
                                   names="value")
        ui.tabs.observe(self._on_tab, names="selected_index")
        ui.mask_blur.observe(lambda _: self._drop_extra("mask_blur_x", "mask_blur_y"), names="value")
        img2img_controls = ("img2img_mode", "img2img_strength", *IMG2IMG_CONTROLS, *INPAINT_CONTROLS,
                            "soft_inpainting")
        for widget in (*(getattr(ui, n) for n in img2img_controls), *ui.soft_sliders.values()):
            widget.observe(lambda _: self._update_code(), names="value")
        if self._painter is not None:
            self._painter.observe(lambda _: self._update_code(), names="mask")
        ui.refresh_models.on_click(lambda _: self._guard(self._refresh_models))
        ui.load.on_click(lambda _: self._load_model(ui.checkpoint.value))
        ui.apply_vae.on_click(lambda _: self._guard(self._apply_vae, ui.vae.value))
        ui.insert_lora.on_click(lambda _: self._insert(f"<lora:{ui.lora.value}:1>" if ui.lora.value else ""))
        ui.insert_embedding.on_click(lambda _: self._insert(ui.embedding.value or ""))
        self._guard(self._refresh_models)

    def _guard(self, fn, *args):
        """Run a UI action; an error shows in the panel instead of escaping into the browser console."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any API error is shown to the user, and the panel stays usable
            self._show_error(e)

    def _update_tokens(self) -> None:
        for box, out in ((self.w.prompt, self.w.prompt_tokens), (self.w.negative_prompt, self.w.negative_tokens)):
            try:
                out.value = str(self.session.count_tokens(box.value))
            except Exception as e:  # noqa: BLE001 - a counter failure must not break typing
                out.value = html.escape(f"? ({e})")

    def _update_code(self) -> None:
        self.w.code.value = self.code

    def _show_extra(self) -> None:
        items = ", ".join(f"{k}={v!r}" for k, v in self._extra.items())
        self.w.extra.value = html.escape(self.t["other_params"].format(items=items)) if items else ""
        self.w.clear_extra.layout.display = "" if items else "none"
        self._update_code()

    def _drop_extra(self, *keys) -> None:
        dropped = [self._extra.pop(key, None) for key in keys]
        if any(value is not None for value in dropped):
            self._show_extra()

    def _clear_extra(self, _button=None) -> None:
        self._extra.clear()
        self._show_extra()

    def _reuse_seed(self, _button=None) -> None:
        if self.gallery.newest is not None and self.gallery.newest.pictures:
            self.w.seed.value = self.gallery.newest.seeds[0]

    def _show_error(self, error) -> None:
        message = str(error) if not isinstance(error, Exception) else f"{type(error).__name__}: {error}"
        self.error = message
        self.w.error.value = f"<b>{html.escape(self.t['error'])}</b>: {html.escape(message)}"
        self.w.error.layout.display = ""

    def _clear_error(self) -> None:
        self.error = None
        self.w.error.value = ""
        self.w.error.layout.display = "none"

    def _on_upload(self, change) -> None:
        files = _upload_files(change["new"])
        if files:
            self._guard(self.load_png, files[-1][1])

    def _on_init_upload(self, change) -> None:
        files = _upload_files(change["new"])
        if files:
            self._guard(self._set_init_image, Image.open(io.BytesIO(files[-1][1])).convert("RGB"))

    def _set_init_image(self, image: Image.Image) -> None:
        self._init_image = image
        self.w.init_image.value = png = png_bytes(image)
        if self._painter is not None:
            self._painter.set_image(image, png)  # a new image starts with no mask painted
        self._show_mode(self.w.img2img_mode.value)
        self._update_code()

    def _on_extras_upload(self, change) -> None:
        files = _upload_files(change["new"])
        if files:
            self._guard(self._set_extras_image, files[-1][1])

    def _set_extras_image(self, data: bytes) -> None:
        image = Image.open(io.BytesIO(data))
        image.load()  # its PNG text (.info) comes along: A1111 keeps it in the saved picture
        self._extras_image = image
        self.w.extras_source.value = png_bytes(image)
        self.w.extras_source.layout.display = ""

    def _show_extras_mode(self, mode: int) -> None:
        self.w.scale_by_box.layout.display = "" if mode == 0 else "none"
        self.w.scale_to_box.layout.display = "" if mode == 1 else "none"

    def _on_mask_upload(self, change) -> None:
        files = _upload_files(change["new"])
        if files:
            self._guard(self._set_mask_upload, files[-1][1])

    def _set_mask_upload(self, data: bytes) -> None:
        """The "Inpaint upload" mask, kept as A1111's upload field holds it (RGBA: a mask with transparency is its
        alpha, any other its grey levels; ``session.img2img`` reads it so)."""
        mask = Image.open(io.BytesIO(data)).convert("RGBA")
        self._mask_upload = mask
        self.w.mask_preview.value = png_bytes(mask)
        self.w.mask_preview.layout.display = ""
        self._update_code()

    def _show_mode(self, mode: str) -> None:
        """The img2img tab's mode: the painter (Inpaint) or the mask upload (Inpaint upload) and the inpainting
        controls, or neither (img2img)."""
        ui = self.w
        # the painter shows the image in Inpaint mode
        ui.init_image.layout.display = "" if mode != "inpaint" and self._init_image is not None else "none"
        ui.painter_box.layout.display = "" if mode == "inpaint" else "none"
        ui.mask_upload_box.layout.display = "" if mode == "inpaint_upload" else "none"
        ui.inpaint_controls.layout.display = "none" if mode == "img2img" else ""

    def _on_tab(self, change) -> None:
        """"Copy as code" shows the call of the generation tab chosen last (txt2img or img2img)."""
        if change["new"] in (0, 1):
            self._code_call = "txt2img" if change["new"] == 0 else "img2img"
            self._update_code()

    def _insert(self, text: str) -> None:
        if text:
            sep = ", " if self.w.prompt.value.strip() else ""
            self.w.prompt.value = f"{self.w.prompt.value.rstrip()}{sep}{text}"

    # running jobs on the worker thread ------------------------------------------------------------------
    def _start(self, fn, params: dict, total: Callable[[], int] | None = None, done=None) -> None:
        """Run ``fn(hooks=[...], **params)`` on the worker thread. ``total()``, the progress bar's length (default:
        the ``total_steps`` of ``params``), runs first, so a bad value shows at once, before the thread starts."""
        if self.running:
            return
        self._clear_error()
        try:
            if self.session.model is None:
                raise RuntimeError(self.t["no_model"] + " session.load(...)")
            steps = total() if total is not None else self._validated(params).total_steps
        except Exception as e:  # noqa: BLE001 - shown in the panel
            self._show_error(e)
            return
        self._stop_requested = False
        self._steps_done = 0
        self._returned = None
        self.w.progress.max, self.w.progress.value = max(steps, 1), 0
        self._set_busy(True)
        self._thread = threading.Thread(target=self._run, args=(fn, params, done or self._show_result),
                                        name="nbdiffuse-panel", daemon=True)
        self._thread.start()

    def _run(self, fn, params: dict, done) -> None:
        try:
            result = fn(hooks=[self._on_step], **params)
        except Exception as e:  # noqa: BLE001 - the API's message is shown; the panel stays usable
            self._set_busy(False)
            self._show_error(e)
            self.w.status.value = html.escape(self.t["idle"])
            return
        self._returned = result
        if not result.interrupted:
            self.w.progress.value = self.w.progress.max
        self._set_busy(False)  # the buttons are back before the status says the job is over
        done(result)

    def _show_result(self, result) -> None:
        self.result = result
        self.gallery.add(result)
        key = "stopped" if result.interrupted else "done"
        # result.info's lines (time taken, memory) on lines of their own
        text = self.t[key].format(n=len(result.images), info=result.info)
        self.w.status.value = "<br/>".join(html.escape(line) for line in text.split("\n"))
        for warning in result.warnings:
            self.w.status.value += f"<br/>&#9888; {html.escape(warning)}"

    def _set_busy(self, busy: bool) -> None:
        self.w.generate.disabled = self.w.generate_img2img.disabled = busy
        self.w.stop.disabled = self.w.skip.disabled = not busy

    def _on_step(self, state) -> None:
        """The job's hook (worker thread): progress, status and every ``preview_every`` steps the live preview."""
        if self._stop_requested:  # Stop clicked before the job had cleared and armed the session's flag
            self.session.interrupt()
        self._steps_done += 1
        bar = self.w.progress
        bar.max = max(bar.max, self._steps_done)
        bar.value = self._steps_done
        self.w.status.value = html.escape(self.t["running"].format(step=self._steps_done, total=bar.max))
        every = self.preview_every
        if every and (state.i + 1) % every == 0:
            image = preview_image(state.denoised[0], self.session.model)
            self.w.preview.value = png_bytes(image.resize((128, 128), Image.Resampling.NEAREST))
            self.w.preview.layout.display = ""

    # the gallery's buttons ------------------------------------------------------------------------------
    def _card_buttons(self, job: Job, i: int) -> list[w.Button]:
        """The buttons under image ``i`` of ``job``: use its seed, send it to img2img, ✨ hires fix it (the newest
        job only), open the step-through debugger on it."""
        seed = job.pictures[i].seed
        buttons = {
            "use_seed": lambda: setattr(self.w.seed, "value", seed),
            "send_img2img": lambda: self._send_to_img2img(job.pictures[i].image),
            "hires_this": lambda: self._hires_fix(job, i),
            "debug_here": lambda: self._guard(self._open_debugger, job, i),
        }
        out = []
        for key, action in buttons.items():
            button = w.Button(description=self.t[key], layout=w.Layout(width="auto"))
            button.on_click(lambda _, action=action: action())
            out.append(button)
        out[0].tooltip = str(seed)
        out[2].add_class(NEWEST_ONLY)
        return out

    def _send_to_img2img(self, image: Image.Image) -> None:
        self._set_init_image(image)
        self.w.tabs.selected_index = 1

    def _hires_fix(self, job: Job, i: int) -> None:
        """A1111's ✨: ``session.hires_fix(result, indices=[i], **hires settings)`` on the worker thread, for an
        image of the newest job (the panel keeps that job's Result, whose first-pass latents the pass starts from;
        the button is hidden under older jobs)."""
        if job is not self.gallery.newest:
            return
        result = self.result
        changes = {n: getattr(self.w, n).value for n in HIRES_CONTROLS}
        self._start(lambda hooks, **c: self.session.hires_fix(result, indices=[i], hooks=hooks, **c), changes,
                    lambda: result.params.replace(**changes).hr_steps_used)

    def _open_debugger(self, job: Job, i: int) -> None:
        """``session.debug(**params)`` for image ``i`` alone (its seed, batch of one), shown under the gallery."""
        from IPython.display import display

        picture = job.pictures[i]
        params = {**job.params.to_dict(), "seed": picture.seed, "subseed": picture.subseed, "batch_size": 1,
                  "n_iter": 1}
        debugger = self.session.debug(**params)
        self.w.debugger.clear_output()
        with self.w.debugger:
            display(debugger)

    # the models tab -------------------------------------------------------------------------------------
    def _follow_native_size(self, before: tuple[int, int] | None) -> None:
        """Width/height sliders to the loaded model's native size: when the panel opens, and after a model change
        if they still showed the previous model's (a size the user chose is kept)."""
        size = _native_size(self.session.model)
        if size is None or (before is not None and (self.w.width.value, self.w.height.value) != before):
            return
        for slider, value in zip((self.w.width, self.w.height), size):
            slider.max = max(slider.max, value)
            slider.value = value

    def _refresh_models(self) -> None:
        listing = self.session.models()
        self.w.checkpoint.options = ["toy", "toy-inpainting", *listing["checkpoints"]]
        self.w.vae.options = ["Automatic", *listing["vae"]]
        self.w.lora.options = listing["loras"]
        self.w.embedding.options = listing["embeddings"]
        for box in (self.w.checkpoint, self.w.lora, self.w.embedding):
            if box.value is None and box.options:  # ipywidgets 8 leaves nothing selected after new options
                box.value = box.options[0]

    def _apply_vae(self, name) -> None:
        """``session.load_vae(name)``; "Automatic" puts the checkpoint's own VAE back."""
        self.session.load_vae(None if name in (None, "Automatic") else name)
        self.w.model_status.value = html.escape(self.t["vae_applied"].format(name=name))

    def _load_model(self, name) -> None:
        if not name or self.running:
            return
        self.w.model_status.value = html.escape(self.t["loading"].format(name=name))

        def load():
            start = time.perf_counter()
            before = _native_size(self.session.model)
            try:
                bundle = self.session.load(name)
            except Exception as e:  # noqa: BLE001 - the previous model stays usable; say why this one failed
                self._show_error(e)
                self.w.model_status.value = ""
                return
            self._follow_native_size(before)
            line = self.t["loaded"].format(name=name, seconds=time.perf_counter() - start)
            if bundle.info.get("load_line"):  # timings (read, build, apply, hash), precision, attention, memory
                line += " " + bundle.info["load_line"]
            self.w.model_status.value = html.escape(line)
            self._update_tokens()

        self._clear_error()
        self._thread = threading.Thread(target=load, name="nbdiffuse-panel-load", daemon=True)
        self._thread.start()


def _native_size(model) -> tuple[int, int] | None:
    """The model's ``native_size`` (None without a model)."""
    return None if model is None else tuple(model.native_size)
