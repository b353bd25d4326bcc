"""The panel's widgets, laid out: no behaviour (that is :mod:`.panel`), and no default of its own.

Every control starts at :class:`~nbdiffuse.jobs.params.GenerationParams`' default; where that default is None ("the
job's default"), at the value the job uses for None.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from importlib import resources
from types import SimpleNamespace

import ipywidgets as w

from ..jobs.hires import DEFAULT_DENOISING as HIRES_DENOISING
from ..jobs.img2img import DEFAULT_DENOISING as IMG2IMG_DENOISING
from ..jobs.params import GenerationParams
from ..jobs.upscalers import resolve_upscaler
from ..jobs.xyz import AXES
from ..sampling.registry import SAMPLERS
from ..sampling.schedules import SCHEDULES

#: Parameters with a control in the txt2img tab, in A1111's order.
CONTROLS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
            "seed", "batch_size", "n_iter")
#: Parameters with a control in the txt2img tab's hires fix box (sent only when ``enable_hr`` is ticked).
HIRES_CONTROLS = ("hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength")


def control_defaults() -> dict:
    """Each control's first value, by name: the A1111 fields' defaults (``GenerationParams().to_dict()``) with the
    job's default spelled out where the field's is None, and the img2img tab's denoising strength.

    >>> d = control_defaults()
    >>> d["steps"], d["sampler_name"], d["hr_upscaler"], d["denoising_strength"], d["img2img_strength"]
    (20, 'DPM++ 2M', 'Latent', 0.7, 0.75)
    """
    values = GenerationParams().to_dict()
    values["hr_upscaler"] = resolve_upscaler(values["hr_upscaler"])
    values["denoising_strength"] = HIRES_DENOISING  # the field's None: each job's own default
    values["img2img_strength"] = IMG2IMG_DENOISING
    return values


def _css() -> str:
    return resources.files("nbdiffuse.ui").joinpath("static/panel.css").read_text(encoding="utf-8")


def _slider(cls, value, lo, hi, step, label):
    return cls(value=value, min=lo, max=hi, step=step, description=label, continuous_update=False,
               style={"description_width": "150px"}, layout=w.Layout(width="98%"))


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

    # img2img
    ui.init_upload = w.FileUpload(accept="image/*", multiple=False, description=t["init_image"])
    ui.init_image = w.Image(format="png", layout=w.Layout(width="192px"))
    ui.img2img_strength = _slider(w.FloatSlider, d["img2img_strength"], 0.0, 1.0, 0.01, t["denoising_strength"])
    ui.generate_img2img = w.Button(description=t["generate_img2img"], button_style="primary")
    img2img = w.VBox([w.HTML(f"<i>{html.escape(t['img2img_help'])}</i>"),
                      ui.init_upload, ui.init_image, ui.img2img_strength, ui.generate_img2img])

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
    ui.xyz_info = w.HTML("")
    ui.xyz_grid = w.Image(format="png", layout=w.Layout(display="none", max_width="98%"))
    xyz = w.VBox([*(w.HBox([a, v]) for a, v in zip(ui.xyz_axes, ui.xyz_values)),
                  w.HBox([ui.xyz_plan, ui.xyz_run]), ui.xyz_info, ui.xyz_grid])

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
