"""The control panel: A1111's txt2img screen as ipywidgets in the notebook, driving a :class:`~nbdiffuse.Session`.

Layout lives in :func:`build_panel` (widgets only, no behaviour); :class:`Panel` wires the widgets to the public
API — every button is one ``session`` call. Generation runs on a worker thread, so the kernel stays free to handle
Stop/Skip clicks, which set the session's flags (read by the sampling loop after every step).

>>> from nbdiffuse.ui import Panel
>>> panel = Panel(session)        # doctest: +SKIP
>>> panel                         # doctest: +SKIP
>>> panel.params                  # doctest: +SKIP

(``panel`` last in a cell shows it; ``panel.params`` is the dict you would pass to ``session.txt2img(**params)``.)
"""

from __future__ import annotations

import dataclasses
import html
import io
import threading
import time
from importlib import resources
from types import SimpleNamespace

import ipywidgets as w
from PIL import Image

from .. import infotext
from ..jobs.params import GenerationParams
from ..sampling.registry import SAMPLERS, resolve_sampler
from ..sampling.schedules import SCHEDULES, resolve_schedule
from .images import png_bytes, preview_image
from .labels import default_lang, labels

#: Parameters with a control in the txt2img tab, in A1111's order.
CONTROLS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
            "seed", "batch_size", "n_iter")
HIRES_CONTROLS = ("hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength")
#: Infotext fields that A1111 leaves out at their default: a pasted infotext without them means "the default".
_OPTIONAL_INFOTEXT = ("negative_prompt", "scheduler")
_DEFAULTS = GenerationParams()


def _param_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(GenerationParams)} - {"extra"}


def _features(session) -> dict[str, bool]:
    """Which optional parts of the public API this session (and this version of nbdiffuse) has."""
    return {
        "img2img": callable(getattr(session, "img2img", None)),
        "hires_fix": callable(getattr(session, "hires_fix", None)),
        "models": callable(getattr(session, "models", None)),
        "debug": callable(getattr(session, "debug", None)),
        "xyz": callable(getattr(session, "plan_xyz", None)),
        "hires_params": "enable_hr" in _param_fields(),
    }


def _upscalers() -> list[str]:
    try:
        from ..jobs.upscalers import available_upscalers
    except ImportError:
        return ["Latent"]
    return available_upscalers()


def _xyz_axes() -> list[str]:
    from ..jobs.xyz import AXES

    return list(AXES)


def _css() -> str:
    return resources.files("nbdiffuse.ui").joinpath("static/panel.css").read_text(encoding="utf-8")


def _note(text: str) -> w.HTML:
    box = w.HTML(f"<div>{html.escape(text)}</div>")
    box.add_class("nbd-note")
    return box


def _slider(cls, value, lo, hi, step, label):
    return cls(value=value, min=lo, max=hi, step=step, description=label, continuous_update=False,
               style={"description_width": "150px"}, layout=w.Layout(width="98%"))


def build_panel(t: dict[str, str], features: dict[str, bool]) -> SimpleNamespace:
    """All the panel's widgets, laid out; no behaviour. ``t`` is the label table, ``features`` from the session.

    >>> ui = build_panel(labels("en"), {"xyz": True})  # doctest: +SKIP
    >>> ui.generate.description  # doctest: +SKIP
    'Generate'
    """
    d = _DEFAULTS
    ui = SimpleNamespace()
    wide = {"style": {"description_width": "150px"}, "layout": w.Layout(width="98%")}

    # txt2img: prompts and the buttons beside them
    ui.prompt = w.Textarea(value=d.prompt, placeholder=t["prompt_placeholder"], rows=3,
                           layout=w.Layout(width="98%"))
    ui.negative_prompt = w.Textarea(value=d.negative_prompt, placeholder=t["negative_placeholder"], rows=2,
                                    layout=w.Layout(width="98%"))
    ui.prompt_tokens, ui.negative_tokens = w.HTML("0/75"), w.HTML("0/75")
    for box in (ui.prompt, ui.negative_prompt):
        box.add_class("nbd-prompt")
    for box in (ui.prompt_tokens, ui.negative_tokens):
        box.add_class("nbd-tokens")
    ui.generate = w.Button(description=t["generate"], button_style="primary", layout=w.Layout(width="98%"))
    ui.generate.add_class("nbd-generate")
    ui.stop = w.Button(description=t["stop"], button_style="danger", disabled=True, layout=w.Layout(width="49%"))
    ui.skip = w.Button(description=t["skip"], disabled=True, layout=w.Layout(width="49%"))
    ui.stop.add_class("nbd-stop")
    ui.skip.add_class("nbd-skip")
    prompts = w.VBox([w.HTML(f"<b>{html.escape(t['prompt'])}</b>"), ui.prompt, ui.prompt_tokens,
                      w.HTML(f"<b>{html.escape(t['negative_prompt'])}</b>"), ui.negative_prompt,
                      ui.negative_tokens], layout=w.Layout(width="75%"))
    buttons = w.VBox([ui.generate, w.HBox([ui.stop, ui.skip])], layout=w.Layout(width="25%"))

    # txt2img: generation parameters, A1111's names, ranges and defaults
    ui.sampler_name = w.Dropdown(options=list(SAMPLERS), value=d.sampler_name, description=t["sampler_name"], **wide)
    ui.scheduler = w.Dropdown(options=["Automatic", *SCHEDULES], value=d.scheduler, description=t["scheduler"],
                              **wide)
    ui.steps = _slider(w.IntSlider, d.steps, 1, 150, 1, t["steps"])
    ui.width = _slider(w.IntSlider, d.width, 64, 2048, 8, t["width"])
    ui.height = _slider(w.IntSlider, d.height, 64, 2048, 8, t["height"])
    ui.batch_count = ui.n_iter = _slider(w.IntSlider, d.n_iter, 1, 100, 1, t["n_iter"])
    ui.batch_size = _slider(w.IntSlider, d.batch_size, 1, 8, 1, t["batch_size"])
    ui.cfg_scale = _slider(w.FloatSlider, d.cfg_scale, 1.0, 30.0, 0.5, t["cfg_scale"])
    ui.seed = w.IntText(value=d.seed, description=t["seed"], style={"description_width": "150px"},
                        layout=w.Layout(width="60%"))
    ui.random_seed = w.Button(description=t["random_seed"], layout=w.Layout(width="auto"))
    ui.reuse_seed = w.Button(description=t["reuse_seed"], layout=w.Layout(width="auto"))
    for name in CONTROLS:
        getattr(ui, name).add_class(f"nbd-{name.replace('_', '-')}")
    ui.extra = w.HTML("")
    ui.clear_extra = w.Button(description=t["clear_other"], layout=w.Layout(width="auto", display="none"))
    settings = [ui.sampler_name, ui.scheduler, ui.steps, ui.width, ui.height, ui.batch_count, ui.batch_size,
                ui.cfg_scale, w.HBox([ui.seed, ui.random_seed, ui.reuse_seed]), w.HBox([ui.extra, ui.clear_extra])]
    if features["hires_params"]:
        ui.enable_hr = w.Checkbox(value=False, description="Hires. fix", indent=False)
        ui.hr_upscaler = w.Dropdown(options=_upscalers(), value="Latent", description="Upscaler", **wide)
        ui.hr_scale = _slider(w.FloatSlider, 2.0, 1.0, 4.0, 0.05, "Upscale by")
        ui.hr_second_pass_steps = _slider(w.IntSlider, 0, 0, 150, 1, "Hires steps")
        ui.denoising_strength = _slider(w.FloatSlider, 0.7, 0.0, 1.0, 0.01, t["denoising_strength"])
        ui.hires_box = w.VBox([ui.hr_upscaler, ui.hr_scale, ui.hr_second_pass_steps, ui.denoising_strength],
                              layout=w.Layout(display="none"))
        settings.insert(-2, w.VBox([ui.enable_hr, ui.hires_box]))
    txt2img = w.VBox([w.HBox([prompts, buttons]), *settings])

    # img2img
    if features["img2img"]:
        ui.init_upload = w.FileUpload(accept="image/*", multiple=False, description=t["init_image"])
        ui.init_image = w.Image(format="png", layout=w.Layout(width="192px"))
        ui.img2img_strength = _slider(w.FloatSlider, 0.75, 0.0, 1.0, 0.01, t["denoising_strength"])
        ui.generate_img2img = w.Button(description=t["generate_img2img"], button_style="primary")
        img2img = w.VBox([w.HTML(f"<i>{html.escape(t['img2img_help'])}</i>"),
                          ui.init_upload, ui.init_image, ui.img2img_strength, ui.generate_img2img])
    else:
        img2img = _note(t["not_available"].format(feature="img2img"))

    # models
    if features["models"]:
        ui.checkpoint = w.Dropdown(options=[], description=t["checkpoint"], **wide)
        ui.load = w.Button(description=t["load"])
        ui.vae = w.Dropdown(options=["Automatic"], value="Automatic", description=t["vae"], **wide)
        ui.apply_vae = w.Button(description=t["apply"])
        ui.lora = w.Dropdown(options=[], description=t["lora"], **wide)
        ui.insert_lora = w.Button(description=t["insert"])
        ui.embedding = w.Dropdown(options=[], description=t["embedding"], **wide)
        ui.insert_embedding = w.Button(description=t["insert"])
        ui.refresh_models = w.Button(description=t["refresh"])
        ui.model_status = w.HTML("")
        models = w.VBox([w.HBox([ui.checkpoint, ui.load]), w.HBox([ui.vae, ui.apply_vae]),
                         w.HBox([ui.lora, ui.insert_lora]),
                         w.HBox([ui.embedding, ui.insert_embedding]), ui.refresh_models, ui.model_status])
    else:
        models = _note(t["not_available"].format(feature=t["tab_models"]))

    if features["xyz"]:
        axes = _xyz_axes()
        ui.xyz_axes = [w.Dropdown(options=axes, value="Nothing", description=f"{a} type",
                                  style={"description_width": "60px"}) for a in "XYZ"]
        ui.xyz_values = [w.Text(description=f"{a} values", placeholder="Euler a, DPM++ 2M  |  3-9 (+3)",
                                style={"description_width": "80px"}, layout=w.Layout(width="60%")) for a in "XYZ"]
        ui.xyz_plan = w.Button(description=t["xyz_plan"])
        ui.xyz_run = w.Button(description=t["xyz_run"], button_style="primary")
        ui.xyz_info = w.HTML("")
        ui.xyz_grid = w.Image(format="png", layout=w.Layout(display="none", max_width="98%"))
        xyz = w.VBox([*(w.HBox([a, v]) for a, v in zip(ui.xyz_axes, ui.xyz_values)),
                      w.HBox([ui.xyz_plan, ui.xyz_run]), ui.xyz_info, ui.xyz_grid])
    else:
        xyz = _note(t["not_available"].format(feature=t["tab_xyz"]))

    # PNG info: paste an infotext or upload an A1111 PNG
    ui.paste_text = w.Textarea(placeholder="a red circle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, "
                                           "Size: 512x512", rows=5, layout=w.Layout(width="98%"))
    ui.paste = w.Button(description=t["paste"])
    ui.upload = w.FileUpload(accept=".png,.jpg,.jpeg,.webp", multiple=False, description=t["upload"])
    ui.paste_status = w.HTML("")
    png_info = w.VBox([w.HTML(html.escape(t["paste_help"])), ui.paste_text, w.HBox([ui.paste, ui.upload]),
                       ui.paste_status])

    # copy as code
    ui.code = w.Textarea(rows=14, layout=w.Layout(width="98%"))
    ui.code.add_class("nbd-code")
    code = w.VBox([w.HTML(html.escape(t["code_help"])), ui.code])

    ui.tabs = w.Tab(children=[txt2img, img2img, models, xyz, png_info, code])
    for i, key in enumerate(("tab_txt2img", "tab_img2img", "tab_models", "tab_xyz", "tab_png", "tab_code")):
        ui.tabs.set_title(i, t[key])

    # shared by every tab: progress, live preview, errors, gallery
    ui.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="60%"))
    ui.status = w.HTML(html.escape(t["idle"]))
    ui.status.add_class("nbd-status")
    ui.error = w.HTML("", layout=w.Layout(display="none"))
    ui.error.add_class("nbd-error")
    ui.preview = w.Image(format="png", layout=w.Layout(width="128px", height="128px", display="none"))
    ui.preview.add_class("nbd-pixelated")
    ui.preview.add_class("nbd-preview")
    ui.gallery = w.VBox([w.HTML(f"<i>{html.escape(t['gallery_empty'])}</i>")])
    ui.gallery.add_class("nbd-gallery")
    ui.debugger = w.Output()
    ui.root = w.VBox([w.HTML(f"<style>{_css()}</style>"), ui.tabs, w.HBox([ui.progress, ui.status]), ui.error,
                      w.HBox([ui.preview, ui.gallery]), ui.debugger])
    ui.root.add_class("nbd-panel")
    return ui


def _upload_files(value) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of a FileUpload's value: a tuple of dicts in ipywidgets 8, a name -> dict map in 7.x."""
    items = value.values() if isinstance(value, dict) else value
    out = []
    for item in items:
        name = item.get("name") or item.get("metadata", {}).get("name", "upload")
        out.append((name, bytes(item["content"])))
    return out


def _names(listing, kind: str) -> list[str]:
    """Names of one kind of model (``"checkpoints"``, ``"loras"``, ...) in what ``session.models()`` returned."""
    items = listing.get(kind) if isinstance(listing, dict) else getattr(listing, kind, None)
    return [item if isinstance(item, str) else str(getattr(item, "name", item)) for item in (items or [])]


class Panel:
    """A1111's txt2img screen for a :class:`~nbdiffuse.Session`, in the notebook, with no server.

    ``panel.params`` is the dict you would pass to ``session.txt2img``; ``panel.set_params(...)`` fills the
    controls; ``panel.generate()`` (the Generate button) runs it on a worker thread and ``panel.wait()`` waits
    for it. ``lang``: ``"en"`` or ``"zh"`` (default: from the locale). ``preview_every``: live preview every N
    steps (0: off). ``gallery_jobs``: how many past jobs the gallery keeps.

    >>> from nbdiffuse.ui import Panel
    >>> Panel(session, lang="zh")  # doctest: +SKIP
    """

    def __init__(self, session, lang: str | None = None, *, preview_every: int = 2, gallery_jobs: int = 4):
        self.session = session
        self.lang = default_lang() if lang is None else lang
        self.t = labels(self.lang)
        self.features = _features(session)
        self.preview_every = preview_every
        self.gallery_jobs = gallery_jobs
        self.results: list = []  # newest first
        self.result = None  # the last finished job's Result
        self.error: str | None = None  # the last error message shown
        self._extra: dict = {}  # parameters with no control (from a pasted infotext): kept and shown
        self._init_image: Image.Image | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._steps_done = 0
        self._returned = None
        self.w = build_panel(self.t, self.features)
        self.widget = self.w.root
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
        if self.features["hires_params"] and self.w.enable_hr.value:
            p["enable_hr"] = True
            p.update({name: getattr(self.w, name).value for name in HIRES_CONTROLS})
        return p

    def set_params(self, params: dict | None = None, **changes) -> None:
        """Set controls from A1111 API fields (``set_params(steps=30, seed=1)``); others keep their values.

        Fields without a control (``clip_skip``, ``subseed``, ...) are kept and shown under the seed. Invalid
        values raise ``ValueError``/``TypeError`` (from :class:`GenerationParams`) and change nothing.
        """
        changes = {**(params or {}), **changes}
        if "sampler_name" in changes:
            changes["sampler_name"] = resolve_sampler(changes["sampler_name"])[0]
        if changes.get("scheduler", "Automatic") != "Automatic":
            changes["scheduler"] = resolve_schedule(changes["scheduler"])
        hires = self.features["hires_params"]
        wanted = {**self.params, **changes}
        if hires and not wanted.get("enable_hr"):
            wanted = {k: v for k, v in wanted.items() if k not in HIRES_CONTROLS}
        GenerationParams.from_kwargs(**wanted)  # raises before any control changes
        for key, value in changes.items():
            widget = getattr(self.w, key, None) if key in CONTROLS or (hires and key in HIRES_CONTROLS) else None
            if widget is not None:
                if value is None:  # "the job's default" (hr_upscaler, denoising_strength): the control's default
                    value = {"hr_upscaler": "Latent", "denoising_strength": 0.7}[key]
                if isinstance(widget, w.Dropdown) and value not in widget.options:
                    widget.options = [*widget.options, value]  # e.g. an upscaler registered after the panel
                if isinstance(widget, w.IntSlider | w.FloatSlider):
                    widget.max = max(widget.max, value)  # a pasted 300 steps is not clamped to 150
                    widget.min = min(widget.min, value)
                widget.value = value
            elif hires and key == "enable_hr":
                self.w.enable_hr.value = bool(value)
            elif key in _param_fields():
                if value == getattr(_DEFAULTS, key) or (key == "styles" and not value):
                    self._extra.pop(key, None)
                else:
                    self._extra[key] = value
        self._show_extra()

    @property
    def code(self) -> str:
        """The exact ``session.txt2img(...)`` call for :attr:`params`."""
        lines = [f"    {key}={value!r}," for key, value in self.params.items()]
        return "result = session.txt2img(\n" + "\n".join(lines) + "\n)"

    # actions (one public API call each) ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def generate(self, _button=None) -> None:
        """Start ``session.txt2img(**panel.params)`` on a worker thread (the Generate button)."""
        self._start(self.session.txt2img, self.params, validate=True)

    def generate_img2img(self, _button=None) -> None:
        """Start ``session.img2img(init_images=[...], denoising_strength=..., **panel.params)``."""
        if self._init_image is None:
            self._show_error(self.t["no_init_image"])
            return
        params = {**self.params, "init_images": [self._init_image],
                  "denoising_strength": self.w.img2img_strength.value}
        self._start(self.session.img2img, params)

    def _xyz_spec(self) -> list:
        return [(a.value, v.value) if a.value != "Nothing" else None
                for a, v in zip(self.w.xyz_axes, self.w.xyz_values)]

    def plan_xyz(self, _button=None):
        """``session.plan_xyz(x, y, z, **panel.params)``: the grid's numbers, shown before anything runs."""
        self._clear_error()
        plan = self.session.plan_xyz(*self._xyz_spec(), **self.params)
        self.w.xyz_info.value = plan._repr_html_()
        return plan

    def run_xyz(self, _button=None) -> None:
        """``session.xyz(x, y, z, show=False, **panel.params)`` on the worker thread; the grid shows in the tab."""
        x, y, z = self._xyz_spec()
        if self._guard(self.plan_xyz) is None:
            return
        self._start(lambda hooks, **p: self.session.xyz(x, y, z, show=False, **p), self.params, done=self._show_grid)

    def _show_grid(self, grid) -> None:
        image = grid.grid
        if image is not None:
            self.w.xyz_grid.value = png_bytes(image)
            self.w.xyz_grid.layout.display = ""
        key = "stopped" if grid.interrupted else "done"
        self.w.status.value = html.escape(self.t[key].format(n=grid.done, info="X/Y/Z plot"))

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

        Fields this version cannot use (hires fix, denoising strength, ...) are listed in the panel, not applied.
        """
        found = infotext.to_params(text)
        fields = _param_fields()
        applied = {k: v for k, v in found.items() if k in fields}
        dropped = sorted(k for k, v in found.items() if k not in fields and k != "enable_hr")
        for key in _OPTIONAL_INFOTEXT:
            applied.setdefault(key, getattr(_DEFAULTS, key))
        self._extra.clear()  # A1111 resets what an infotext leaves out (clip skip, variation seed, ...)
        self.set_params(applied)
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
        _close_tree(self.widget)

    def _ipython_display_(self, **kwargs):
        from IPython.display import display

        display(self.widget)

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
        for name in CONTROLS:
            getattr(ui, name).observe(lambda _: self._update_code(), names="value")
        if self.features["hires_params"]:
            for name in ("enable_hr", *HIRES_CONTROLS):
                getattr(ui, name).observe(lambda _: self._update_code(), names="value")
        if self.features["hires_params"]:
            ui.enable_hr.observe(lambda c: setattr(ui.hires_box.layout, "display", "" if c["new"] else "none"),
                                 names="value")
        if self.features["xyz"]:
            ui.xyz_plan.on_click(lambda _: self._guard(self.plan_xyz))
            ui.xyz_run.on_click(self.run_xyz)
        if self.features["img2img"]:
            ui.generate_img2img.on_click(self.generate_img2img)
            ui.init_upload.observe(self._on_init_upload, names="value")
        if self.features["models"]:
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

    def _clear_extra(self, _button=None) -> None:
        self._extra.clear()
        self._show_extra()

    def _reuse_seed(self, _button=None) -> None:
        if self.result is not None and self.result.seeds:
            self.w.seed.value = int(self.result.seeds[0])

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
        self.w.init_image.value = png_bytes(image)

    def _insert(self, text: str) -> None:
        if text:
            sep = ", " if self.w.prompt.value.strip() else ""
            self.w.prompt.value = f"{self.w.prompt.value.rstrip()}{sep}{text}"

    # running jobs on the worker thread ------------------------------------------------------------------
    def _start(self, fn, params: dict, validate: bool = False, done=None, total: int | None = None) -> None:
        if self.running:
            return
        self._clear_error()
        try:
            if validate:
                GenerationParams.from_kwargs(**params)  # a bad value shows at once, before the thread starts
            if getattr(self.session, "model", True) is None:
                raise RuntimeError(self.t["no_model"] + " session.load(...)")
        except Exception as e:  # noqa: BLE001 - shown in the panel
            self._show_error(e)
            return
        steps = int(params.get("steps", 1)) * int(params.get("n_iter", 1))
        self._stop_requested = False
        self._steps_done = 0
        self._returned = None
        self.w.progress.max, self.w.progress.value = max(total or steps, 1), 0
        self._set_busy(True)
        self._thread = threading.Thread(target=self._run, args=(fn, params, done or self._show_result),
                                        name="nbdiffuse-panel", daemon=True)
        self._thread.start()

    def _run(self, fn, params: dict, done) -> None:
        try:
            result = fn(hooks=[self._on_step], **params)
        except Exception as e:  # noqa: BLE001 - the API's message is shown; the panel stays usable
            self._show_error(e)
            self.w.status.value = html.escape(self.t["idle"])
        else:
            self._returned = result
            done(result)
            if not getattr(result, "interrupted", False):
                self.w.progress.value = self.w.progress.max
        finally:
            self._set_busy(False)

    def _show_result(self, result) -> None:
        self.result = result
        self._add_to_gallery(result)
        key = "stopped" if result.interrupted else "done"
        self.w.status.value = html.escape(self.t[key].format(n=len(result.images), info=result.info))
        for warning in result.warnings:
            self.w.status.value += f"<br/>&#9888; {html.escape(warning)}"

    def _set_busy(self, busy: bool) -> None:
        self.w.generate.disabled = busy
        self.w.stop.disabled = not busy
        self.w.skip.disabled = not busy
        if self.features["img2img"]:
            self.w.generate_img2img.disabled = busy

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
            image = preview_image(state.denoised[0], getattr(self.session, "model", None))
            self.w.preview.value = png_bytes(image.resize((128, 128), Image.Resampling.NEAREST))
            self.w.preview.layout.display = ""

    # the gallery ----------------------------------------------------------------------------------------
    def _add_to_gallery(self, result) -> None:
        boxes = [self._job_box(result), *(b for b in self.w.gallery.children if "nbd-job" in b._dom_classes)]
        for old in boxes[self.gallery_jobs:]:
            _close_tree(old)
        self.results = [result, *self.results][: self.gallery_jobs]
        self.w.gallery.children = boxes[: self.gallery_jobs]

    def _job_box(self, result) -> w.Widget:
        cards = [self._card(result, i) for i in range(len(result.images))]
        head = f"{len(result.images)} image(s)" + (" (interrupted)" if result.interrupted else "")
        box = w.VBox([w.HTML(f"<b>{html.escape(head)}</b> · {html.escape(result.info)}"),
                      w.HBox(cards, layout=w.Layout(flex_flow="row wrap"))])
        box.add_class("nbd-job")
        return box

    def _card(self, result, i: int) -> w.Widget:
        image = result.images[i]
        picture = w.Image(value=png_bytes(image), format="png", layout=w.Layout(width=f"{max(image.width, 192)}px"))
        picture.add_class("nbd-pixelated")
        text = w.HTML(f"<pre>{html.escape(result.infotexts[i])}</pre>")
        text.add_class("nbd-infotext")
        buttons = []
        seed = result.seeds[i]
        use_seed = w.Button(description=self.t["use_seed"], tooltip=str(seed), layout=w.Layout(width="auto"))
        use_seed.on_click(lambda _: setattr(self.w.seed, "value", int(seed)))
        buttons.append(use_seed)
        if self.features["img2img"]:
            send = w.Button(description=self.t["send_img2img"], layout=w.Layout(width="auto"))
            send.on_click(lambda _: self._send_to_img2img(image))
            buttons.append(send)
        if self.features["hires_fix"]:
            hires = w.Button(description=self.t["hires_this"], layout=w.Layout(width="auto"))
            hires.on_click(lambda _: self._hires_fix(result, i))
            buttons.append(hires)
        if self.features["debug"]:
            debug = w.Button(description=self.t["debug_here"], layout=w.Layout(width="auto"))
            debug.on_click(lambda _: self._guard(self._open_debugger, result, i))
            buttons.append(debug)
        card = w.VBox([picture, text, w.HBox(buttons, layout=w.Layout(flex_flow="row wrap"))])
        card.add_class("nbd-card")
        return card

    def _send_to_img2img(self, image: Image.Image) -> None:
        self._set_init_image(image)
        self.w.tabs.selected_index = 1

    def _hires_fix(self, result, i: int) -> None:
        """A1111's ✨: ``session.hires_fix(result, indices=[i], **hires settings)`` on the worker thread."""
        changes = {n: getattr(self.w, n).value for n in HIRES_CONTROLS} if self.features["hires_params"] else {}
        total = changes.get("hr_second_pass_steps") or result.params.steps
        self._start(lambda hooks, **c: self.session.hires_fix(result, indices=[i], hooks=hooks, **c), changes,
                    total=total)

    def _open_debugger(self, result, i: int) -> None:
        """``session.debug(**params)`` for image ``i`` alone (its seed, batch of one), shown under the gallery."""
        from IPython.display import display

        params = {**result.params.to_dict(), "seed": result.seeds[i], "subseed": result.subseeds[i],
                  "batch_size": 1, "n_iter": 1}
        debugger = self.session.debug(**params)
        self.w.debugger.clear_output()
        with self.w.debugger:
            display(debugger)

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
        toy = ["toy"] if resources.files("nbdiffuse").joinpath("toy/weights/toy.safetensors").is_file() else []
        self.w.checkpoint.options = [*toy, *_names(listing, "checkpoints")]
        self.w.vae.options = ["Automatic", *_names(listing, "vae")]
        self.w.lora.options = _names(listing, "loras")
        self.w.embedding.options = _names(listing, "embeddings")
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
            info = getattr(bundle, "info", None) or {}
            seconds = info.get("load_s", time.perf_counter() - start)
            line = self.t["loaded"].format(name=name, seconds=seconds)
            if info.get("report"):  # the loader's A1111-style timing line (read, build, apply, hash)
                line += " " + info["report"]
            self.w.model_status.value = html.escape(line)
            self._update_tokens()

        self._clear_error()
        self._thread = threading.Thread(target=load, name="nbdiffuse-panel-load", daemon=True)
        self._thread.start()


def _native_size(model) -> tuple[int, int] | None:
    """The model's ``native_size`` (None without a model, or for a stand-in without one)."""
    size = getattr(model, "native_size", None)
    return tuple(size) if size is not None else None


def _close_tree(root: w.Widget) -> None:
    todo = [root]
    while todo:
        widget = todo.pop()
        todo.extend(getattr(widget, "children", ()))
        widget.close()
