"""The panel's widgets, laid out: no behaviour (that is :mod:`.panel`), and no default of its own.

Every control starts at :class:`~nbdiffuse.jobs.params.GenerationParams`' default; where that default is None ("the
job's default"), at the value the job uses for None. The inpainting controls are the exception, as in A1111: its UI
starts at other values than its API (:data:`INPAINT_UI_DEFAULTS`), and the panel sends every one of them.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Iterator, Sequence
from importlib import resources
from types import SimpleNamespace

import ipywidgets as w

from ..jobs.extras import extras_upscale
from ..jobs.hires import DEFAULT_DENOISING as HIRES_DENOISING
from ..jobs.img2img import DEFAULT_DENOISING as IMG2IMG_DENOISING
from ..jobs.params import GenerationParams
from ..jobs.soft_inpainting import SoftInpainting
from ..jobs.upscalers import PIXEL_UPSCALERS, RESIZE_MODES, is_latent, resolve_upscaler
from ..jobs.xyz import AXES
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import SCHEDULES

#: Parameters with a control in the txt2img tab, in A1111's order.
CONTROLS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
            "seed", "batch_size", "n_iter")
#: Parameters with a control in the txt2img tab's hires fix box (sent only when ``enable_hr`` is ticked).
HIRES_CONTROLS = ("hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength")
#: The img2img tab's modes: A1111's "img2img", "Inpaint" (a painted mask) and "Inpaint upload" (a mask file) tabs.
IMG2IMG_MODES = ("img2img", "inpaint", "inpaint_upload")
#: Parameters with a control in the img2img tab in every mode (besides its denoising strength); the last two are
#: A1111 settings ("Extra noise multiplier for img2img and hires fix", "Noise multiplier for img2img").
IMG2IMG_CONTROLS = ("resize_mode", "extra_noise", "initial_noise_multiplier")
#: Where the inpainting controls of A1111's img2img tab start: its UI defaults (``modules/ui.py``), not its API's
#: (fill, only masked, padding 0).
INPAINT_UI_DEFAULTS = {"mask_blur": 4, "inpainting_mask_invert": 0, "inpainting_fill": 1, "inpaint_full_res": False,
                       "inpaint_full_res_padding": 32}
#: The controls of the inpaint modes: those, and two A1111 settings ("Inpainting conditioning mask strength",
#: "Overlay original for inpaint") at their defaults.
INPAINT_CONTROLS = (*INPAINT_UI_DEFAULTS, "inpainting_mask_weight", "overlay_inpaint")
#: Soft inpainting's sliders: A1111's script names with its slider minimum, maximum and step.
SOFT_INPAINTING_SLIDERS = {"mask_blend_power": (0.0, 8.0, 0.1), "mask_blend_scale": (0.0, 8.0, 0.05),
                           "inpaint_detail_preservation": (1.0, 32.0, 0.5),
                           "composite_mask_influence": (0.0, 1.0, 0.05),
                           "composite_difference_threshold": (0.0, 8.0, 0.25),
                           "composite_difference_contrast": (0.0, 8.0, 0.25)}
#: The Extras tab's controls: ``session.extras``' arguments, each starting at its default there.
EXTRAS_CONTROLS = ("upscaler_1", "upscaler_2", "upscaler_2_visibility", "resize_mode", "upscaling_resize",
                   "max_side_length", "upscaling_resize_w", "upscaling_resize_h", "upscaling_crop")


def extras_defaults() -> dict:
    """Where the Extras tab's controls start: ``session.extras``' defaults (A1111's own tab starts at upscaler 1
    "None" and a scale of 4).

    >>> extras_defaults()["upscaler_1"], extras_defaults()["upscaling_resize"]
    ('Lanczos', 2.0)
    """
    params = inspect.signature(extras_upscale).parameters
    return {name: params[name].default for name in EXTRAS_CONTROLS}


def control_defaults() -> dict:
    """Each control's first value, by name: the A1111 fields' defaults (``GenerationParams().to_dict()``) with the
    job's default spelled out where the field's is None, and the img2img tab's denoising strength.

    >>> d = control_defaults()
    >>> d["steps"], d["sampler_name"], d["hr_upscaler"], d["denoising_strength"], d["img2img_strength"]
    (20, 'DPM++ 2M', 'Latent', 0.7, 0.75)
    >>> d["initial_noise_multiplier"], d["inpainting_mask_weight"]
    (1.0, 1.0)
    """
    values = GenerationParams().to_dict()
    values["hr_upscaler"] = resolve_upscaler(values["hr_upscaler"])
    values["denoising_strength"] = HIRES_DENOISING  # the field's None: each job's own default
    values["img2img_strength"] = IMG2IMG_DENOISING
    if values["initial_noise_multiplier"] is None:  # the field's None: 1.0
        values["initial_noise_multiplier"] = 1.0
    return values


def _css() -> str:
    return resources.files("nbdiffuse.ui").joinpath("static/panel.css").read_text(encoding="utf-8")


def _slider(cls, value, lo, hi, step, label, label_width="150px"):
    return cls(value=value, min=lo, max=hi, step=step, description=label, continuous_update=False,
               style={"description_width": label_width}, layout=w.Layout(width="98%"))


def _choice(options, value, label):
    """A1111's radio row: one button per option, the label on the left (ipywidgets 7 and 8)."""
    return w.ToggleButtons(options=options, value=value, description=label,
                           style={"description_width": "200px", "button_width": "auto"})


def _mask_painter(t: dict[str, str]) -> w.Widget:
    """The mask painter (an anywidget), or a note saying why there is none (the panel works without it)."""
    try:
        from .painter import MaskPainter
    except ImportError as e:
        return w.HTML(html.escape(t["painter_unavailable"].format(error=e)))
    return MaskPainter(labels={"brush_size": t["brush_size"], "erase": t["erase"], "clear": t["clear_mask"],
                               "no_image": t["painter_no_image"]})


def build_panel(t: dict[str, str], upscalers: Sequence[str] = ("Latent",)) -> SimpleNamespace:
    """All the panel's widgets, laid out; no behaviour. ``t`` is the label table, ``upscalers`` the hires fix
    upscaler names.

    >>> from nbdiffuse.ui import build_panel, labels
    >>> ui = build_panel(labels("en"))
    >>> ui.generate.description, ui.steps.value
    ('Generate', 20)
    """
    d = control_defaults()
    ui = SimpleNamespace()
    wide = {"style": {"description_width": "150px"}, "layout": w.Layout(width="98%")}

    # txt2img: prompts and the buttons beside them
    ui.prompt = w.Textarea(value=d["prompt"], placeholder=t["prompt_placeholder"], rows=3,
                           layout=w.Layout(width="98%"))
    ui.negative_prompt = w.Textarea(value=d["negative_prompt"], placeholder=t["negative_placeholder"], rows=2,
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

    # txt2img: generation parameters, A1111's names and ranges
    ui.sampler_name = w.Dropdown(options=list(SAMPLERS), value=d["sampler_name"], description=t["sampler_name"],
                                 **wide)
    ui.scheduler = w.Dropdown(options=["Automatic", *SCHEDULES], value=d["scheduler"], description=t["scheduler"],
                              **wide)
    ui.steps = _slider(w.IntSlider, d["steps"], 1, 150, 1, t["steps"])
    ui.width = _slider(w.IntSlider, d["width"], 64, 2048, 8, t["width"])
    ui.height = _slider(w.IntSlider, d["height"], 64, 2048, 8, t["height"])
    ui.n_iter = _slider(w.IntSlider, d["n_iter"], 1, 100, 1, t["n_iter"])
    ui.batch_size = _slider(w.IntSlider, d["batch_size"], 1, 8, 1, t["batch_size"])
    ui.cfg_scale = _slider(w.FloatSlider, d["cfg_scale"], 1.0, 30.0, 0.5, t["cfg_scale"])
    ui.seed = w.IntText(value=d["seed"], description=t["seed"], style={"description_width": "150px"},
                        layout=w.Layout(width="60%"))
    ui.random_seed = w.Button(description=t["random_seed"], layout=w.Layout(width="auto"))
    ui.reuse_seed = w.Button(description=t["reuse_seed"], layout=w.Layout(width="auto"))
    for name in CONTROLS:
        getattr(ui, name).add_class(f"nbd-{name.replace('_', '-')}")
    ui.extra = w.HTML("")
    ui.clear_extra = w.Button(description=t["clear_other"], layout=w.Layout(width="auto", display="none"))

    # txt2img: hires fix, shown when ticked
    ui.enable_hr = w.Checkbox(value=d["enable_hr"], description="Hires. fix", indent=False)
    ui.hr_upscaler = w.Dropdown(options=list(upscalers), value=d["hr_upscaler"], description="Upscaler", **wide)
    ui.hr_scale = _slider(w.FloatSlider, d["hr_scale"], 1.0, 4.0, 0.05, "Upscale by")
    ui.hr_second_pass_steps = _slider(w.IntSlider, d["hr_second_pass_steps"], 0, 150, 1, "Hires steps")
    ui.denoising_strength = _slider(w.FloatSlider, d["denoising_strength"], 0.0, 1.0, 0.01, t["denoising_strength"])
    ui.hires_box = w.VBox([ui.hr_upscaler, ui.hr_scale, ui.hr_second_pass_steps, ui.denoising_strength],
                          layout=w.Layout(display="" if d["enable_hr"] else "none"))
    txt2img = w.VBox([w.HBox([prompts, buttons]), ui.sampler_name, ui.scheduler, ui.steps, ui.width, ui.height,
                      ui.n_iter, ui.batch_size, ui.cfg_scale, w.VBox([ui.enable_hr, ui.hires_box]),
                      w.HBox([ui.seed, ui.random_seed, ui.reuse_seed]), w.HBox([ui.extra, ui.clear_extra])])

    # img2img: its modes (img2img, Inpaint with the mask painter, Inpaint upload), then A1111's controls
    ui.img2img_mode = _choice([(t[f"mode_{m}"], m) for m in IMG2IMG_MODES], "img2img", t["img2img_mode"])
    ui.init_upload = w.FileUpload(accept="image/*", multiple=False, description=t["init_image"])
    ui.init_image = w.Image(format="png", layout=w.Layout(width="192px", display="none"))  # shown once chosen
    ui.painter = _mask_painter(t)
    ui.painter_box = w.VBox([w.HTML(f"<i>{html.escape(t['painter_help'])}</i>"), ui.painter],
                            layout=w.Layout(display="none"))
    ui.mask_upload = w.FileUpload(accept="image/*", multiple=False, description=t["mask_upload"])
    ui.mask_preview = w.Image(format="png", layout=w.Layout(width="192px", display="none"))
    ui.mask_upload_box = w.VBox([w.HTML(f"<i>{html.escape(t['upload_help'])}</i>"), ui.mask_upload,
                                 ui.mask_preview], layout=w.Layout(display="none"))
    ui.resize_mode = _choice([(name, i) for i, name in enumerate(RESIZE_MODES)], d["resize_mode"], t["resize_mode"])
    ui.img2img_strength = _slider(w.FloatSlider, d["img2img_strength"], 0.0, 1.0, 0.01, t["denoising_strength"])
    ui.extra_noise = _slider(w.FloatSlider, d["extra_noise"], 0.0, 1.0, 0.01, t["extra_noise"])
    ui.initial_noise_multiplier = _slider(w.FloatSlider, d["initial_noise_multiplier"], 0.0, 1.5, 0.001,
                                          t["initial_noise_multiplier"])
    ui.initial_noise_multiplier.readout_format = ".3f"
    # inpainting, at A1111's UI defaults; shown in the two inpaint modes
    i = INPAINT_UI_DEFAULTS
    ui.mask_blur = _slider(w.IntSlider, i["mask_blur"], 0, 64, 1, t["mask_blur"], "200px")
    ui.inpainting_mask_invert = _choice([("Inpaint masked", 0), ("Inpaint not masked", 1)],
                                        i["inpainting_mask_invert"], t["mask_mode"])
    ui.inpainting_fill = _choice([("fill", 0), ("original", 1), ("latent noise", 2), ("latent nothing", 3)],
                                 i["inpainting_fill"], t["masked_content"])
    ui.inpaint_full_res = _choice([("Whole picture", False), ("Only masked", True)], i["inpaint_full_res"],
                                  t["inpaint_area"])
    ui.inpaint_full_res_padding = _slider(w.IntSlider, i["inpaint_full_res_padding"], 0, 256, 4,
                                          t["inpaint_padding"], "200px")
    ui.inpainting_mask_weight = _slider(w.FloatSlider, d["inpainting_mask_weight"], 0.0, 1.0, 0.01,
                                        t["inpainting_mask_weight"], "200px")
    ui.overlay_inpaint = w.Checkbox(value=d["overlay_inpaint"], description=t["overlay_inpaint"], indent=False)
    soft = SoftInpainting()
    ui.soft_inpainting = w.Checkbox(value=False, description=t["soft_inpainting"], indent=False)
    ui.soft_sliders = {name: _slider(w.FloatSlider, getattr(soft, name), lo, hi, step, t[name], "200px")
                       for name, (lo, hi, step) in SOFT_INPAINTING_SLIDERS.items()}
    ui.soft_box = w.VBox(list(ui.soft_sliders.values()), layout=w.Layout(display="none"))
    ui.inpaint_controls = w.VBox([ui.mask_blur, ui.inpainting_mask_invert, ui.inpainting_fill, ui.inpaint_full_res,
                                  ui.inpaint_full_res_padding, ui.inpainting_mask_weight, ui.overlay_inpaint,
                                  w.VBox([ui.soft_inpainting, ui.soft_box])],
                                 layout=w.Layout(display="none"))
    for name in ("img2img_mode", *IMG2IMG_CONTROLS, *INPAINT_CONTROLS, "soft_inpainting"):
        getattr(ui, name).add_class(f"nbd-{name.replace('_', '-')}")
    ui.painter.add_class("nbd-mask-painter")
    ui.init_upload.add_class("nbd-init-upload")
    ui.mask_upload.add_class("nbd-mask-upload")
    ui.generate_img2img = w.Button(description=t["generate_img2img"], button_style="primary")
    ui.generate_img2img.add_class("nbd-generate-img2img")
    img2img = w.VBox([w.HTML(f"<i>{html.escape(t['img2img_help'])}</i>"), ui.img2img_mode,
                      ui.init_upload, ui.init_image, ui.painter_box, ui.mask_upload_box, ui.resize_mode,
                      ui.img2img_strength, ui.extra_noise, ui.initial_noise_multiplier, ui.inpaint_controls,
                      ui.generate_img2img])

    # Extras: A1111's "Upscale" postprocessing (session.extras)
    e = extras_defaults()
    pixel = list(dict.fromkeys([*PIXEL_UPSCALERS, *(n for n in upscalers if not is_latent(n))]))
    ui.extras_upload = w.FileUpload(accept="image/*", multiple=False, description=t["extras_image"])
    ui.extras_source = w.Image(format="png", layout=w.Layout(width="192px", display="none"))
    ui.extras_resize_mode = _choice([(t["scale_by"], 0), (t["scale_to"], 1)], e["resize_mode"],
                                    t["extras_resize_mode"])
    ui.upscaling_resize = _slider(w.FloatSlider, e["upscaling_resize"], 1.0, 8.0, 0.05, t["upscaling_resize"])
    ui.max_side_length = w.BoundedIntText(value=e["max_side_length"], min=0, max=65536, step=8,
                                          description=t["max_side_length"], style={"description_width": "150px"})
    ui.scale_by_box = w.VBox([ui.upscaling_resize, ui.max_side_length],
                             layout=w.Layout(display="" if e["resize_mode"] == 0 else "none"))
    ui.upscaling_resize_w = _slider(w.IntSlider, e["upscaling_resize_w"], 64, 8192, 8, t["width"])
    ui.upscaling_resize_h = _slider(w.IntSlider, e["upscaling_resize_h"], 64, 8192, 8, t["height"])
    ui.upscaling_crop = w.Checkbox(value=e["upscaling_crop"], description=t["upscaling_crop"], indent=False)
    ui.scale_to_box = w.VBox([ui.upscaling_resize_w, ui.upscaling_resize_h, ui.upscaling_crop],
                             layout=w.Layout(display="" if e["resize_mode"] == 1 else "none"))
    ui.extras_upscaler_1 = w.Dropdown(options=pixel, value=e["upscaler_1"], description=t["upscaler_1"], **wide)
    ui.extras_upscaler_2 = w.Dropdown(options=pixel, value=e["upscaler_2"], description=t["upscaler_2"], **wide)
    ui.upscaler_2_visibility = _slider(w.FloatSlider, e["upscaler_2_visibility"], 0.0, 1.0, 0.001,
                                       t["upscaler_2_visibility"])
    ui.upscaler_2_visibility.readout_format = ".3f"
    ui.generate_extras = w.Button(description=t["generate_extras"], button_style="primary")
    ui.extras_output = w.Image(format="png", layout=w.Layout(max_width="98%", display="none"))
    ui.extras_info = w.HTML("")
    for name in ("extras_upload", "extras_resize_mode", "upscaling_resize", "max_side_length", "upscaling_resize_w",
                 "upscaling_resize_h", "upscaling_crop", "extras_upscaler_1", "extras_upscaler_2",
                 "upscaler_2_visibility", "generate_extras", "extras_info"):
        getattr(ui, name).add_class(f"nbd-{name.replace('_', '-')}")
    extras = w.VBox([w.HTML(f"<i>{html.escape(t['extras_help'])}</i>"), ui.extras_upload, ui.extras_source,
                     ui.extras_resize_mode, ui.scale_by_box, ui.scale_to_box, ui.extras_upscaler_1,
                     w.HBox([ui.extras_upscaler_2, ui.upscaler_2_visibility]), ui.generate_extras, ui.extras_info,
                     ui.extras_output])

    # models
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

    # X/Y/Z plot
    ui.xyz_axes = [w.Dropdown(options=list(AXES), value="Nothing", description=f"{a} type",
                              style={"description_width": "60px"}) for a in "XYZ"]
    ui.xyz_values = [w.Text(description=f"{a} values", placeholder="Euler a, DPM++ 2M  |  3-9 (+3)",
                            style={"description_width": "80px"}, layout=w.Layout(width="60%")) for a in "XYZ"]
    ui.xyz_plan = w.Button(description=t["xyz_plan"])
    ui.xyz_run = w.Button(description=t["xyz_run"], button_style="primary")
    ui.xyz_ray = w.Checkbox(value=False, description=t["xyz_ray"], indent=False)
    ui.xyz_info = w.HTML("")
    ui.xyz_grid = w.Image(format="png", layout=w.Layout(display="none", max_width="98%"))
    xyz = w.VBox([*(w.HBox([a, v]) for a, v in zip(ui.xyz_axes, ui.xyz_values)),
                  w.HBox([ui.xyz_plan, ui.xyz_run, ui.xyz_ray]), ui.xyz_info, ui.xyz_grid])

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

    ui.tabs = w.Tab(children=[txt2img, img2img, extras, models, xyz, png_info, code])
    for i, key in enumerate(("tab_txt2img", "tab_img2img", "tab_extras", "tab_models", "tab_xyz", "tab_png",
                             "tab_code")):
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


def widget_tree(root: w.Widget) -> Iterator[w.Widget]:
    """``root`` and every widget under it."""
    todo = [root]
    while todo:
        widget = todo.pop()
        todo.extend(getattr(widget, "children", ()))
        yield widget


def close_tree(root: w.Widget) -> None:
    """Close ``root`` and every widget under it (frees their front-end state)."""
    for widget in list(widget_tree(root)):
        widget.close()
