"""The panel's words in English and Simplified Chinese.

A1111's English names stay visible in Chinese labels (``"迭代步数 (Steps)"``) and sampler / schedule names are never
translated, so what a user reads in the panel matches infotexts and A1111 tutorials.
"""

from __future__ import annotations

import locale
import os

LANGS = ("en", "zh")

EN = {
    "tab_txt2img": "txt2img", "tab_img2img": "img2img", "tab_models": "Models", "tab_xyz": "XYZ plot",
    "tab_png": "PNG Info", "tab_code": "Copy as code", "tab_extras": "Extras",
    "prompt": "Prompt", "negative_prompt": "Negative prompt",
    "prompt_placeholder": "Prompt (press Generate to run)", "negative_placeholder": "Negative prompt",
    "sampler_name": "Sampling method", "scheduler": "Schedule type", "steps": "Sampling steps",
    "cfg_scale": "CFG Scale", "width": "Width", "height": "Height", "seed": "Seed",
    "batch_size": "Batch size", "n_iter": "Batch count",
    "random_seed": "random (-1)", "reuse_seed": "reuse last",
    "generate": "Generate", "stop": "Stop", "skip": "Skip",
    "idle": "Ready.", "running": "Generating… step {step}/{total}", "done": "Done: {n} image(s). {info}",
    "stopped": "Stopped: {n} image(s) kept. {info}", "error": "Error", "no_model": "No model loaded.",
    "gallery_empty": "Generated images appear here.",
    "use_seed": "use seed", "send_img2img": "send to img2img", "hires_this": "✨ hires fix this",
    "debug_here": "open step-through debugger here",
    "code_help": "The exact call for the current settings (select all and copy):",
    "paste_help": "Paste an A1111 infotext (the text under an image, or PNG Info) or upload an A1111 PNG:",
    "paste": "Paste into controls", "upload": "Upload PNG",
    "pasted": "Filled the controls from the infotext.", "no_infotext": "This image holds no infotext.",
    "dropped": "Not applied (not available in this version): {keys}",
    "other_params": "Also used (from a pasted infotext): {items}", "clear_other": "clear",
    "img2img_help": "Uses the prompt and settings of the txt2img tab.",
    "init_image": "Init image", "denoising_strength": "Denoising strength", "generate_img2img": "Generate img2img",
    "no_init_image": "Choose an init image first (upload one, or use “send to img2img” in the gallery).",
    "checkpoint": "Checkpoint", "load": "Load", "loading": "Loading {name}…",
    "loaded": "Loaded {name} in {seconds:.1f} s.", "lora": "LoRA", "embedding": "Embedding",
    "vae": "SD VAE", "apply": "Apply", "vae_applied": "VAE: {name}.",
    "insert": "Insert into prompt", "refresh": "Refresh",
    "xyz_plan": "Plan (show the numbers)", "xyz_run": "Run grid",
    "xyz_ray": "On Ray workers (one per GPU)", "xyz_progress": "X/Y/Z plot: {done}/{total} cells…",
    "img2img_mode": "Mode", "mode_img2img": "img2img", "mode_inpaint": "Inpaint",
    "mode_inpaint_upload": "Inpaint upload",
    "resize_mode": "Resize mode", "extra_noise": "Extra noise", "initial_noise_multiplier": "Noise multiplier",
    "inpainting_mask_weight": "Conditional mask weight", "overlay_inpaint": "Overlay original for inpaint",
    "mask_blur": "Mask blur", "mask_mode": "Mask mode", "masked_content": "Masked content",
    "inpaint_area": "Inpaint area", "inpaint_padding": "Only masked padding, pixels",
    "soft_inpainting": "Soft inpainting", "mask_blend_power": "Schedule bias",
    "mask_blend_scale": "Preservation strength", "inpaint_detail_preservation": "Transition contrast boost",
    "composite_mask_influence": "Mask influence", "composite_difference_threshold": "Difference threshold",
    "composite_difference_contrast": "Difference contrast",
    "brush_size": "Brush size", "erase": "Erase", "clear_mask": "Clear",
    "painter_no_image": "Choose an init image first.",
    "painter_help": "Paint the area to inpaint over the image (brush size, Erase and Clear are above it). If no "
                    "image shows here (this front-end cannot show custom widgets), use “Inpaint upload” with a "
                    "mask PNG.",
    "painter_unavailable": "The mask painter needs anywidget ({error}): use “Inpaint upload” with a mask PNG.",
    "mask_upload": "Mask PNG",
    "upload_help": "Choose the init image and a mask PNG: white = inpaint (a mask with transparency uses its alpha).",
    "no_mask": "Paint the area to inpaint on the image first (or use “Inpaint upload” with a mask PNG).",
    "no_mask_upload": "Upload a mask PNG first (white = inpaint).",
    "no_frontend": "The nbdiffuse panel shows only where Jupyter widgets render (JupyterLab or Notebook 7 with "
                   "jupyterlab_widgets, VS Code's Jupyter extension, Colab); here they do not. Run the same job "
                   "from code: the current settings are",
    "extras_help": "Upscales a picture as A1111's Extras tab does (its “Upscale” part; face restoration is not "
                   "available yet) and saves it under extras-images/.",
    "extras_image": "Source", "extras_resize_mode": "Resize", "scale_by": "Scale by", "scale_to": "Scale to",
    "upscaling_resize": "Resize", "max_side_length": "Max side length", "upscaling_crop": "Crop to fit",
    "upscaler_1": "Upscaler 1", "upscaler_2": "Upscaler 2", "upscaler_2_visibility": "Upscaler 2 visibility",
    "generate_extras": "Generate", "no_extras_image": "Choose a picture first (upload one).",
    "extras_done": "{size}: {infotext}", "extras_saved": "Saved {path}.",
}

ZH = {
    "tab_txt2img": "文生图 (txt2img)", "tab_img2img": "图生图 (img2img)", "tab_models": "模型 (Models)",
    "tab_xyz": "XYZ 图表 (XYZ plot)", "tab_png": "图片信息 (PNG Info)", "tab_code": "复制为代码",
    "tab_extras": "后期处理 (Extras)",
    "prompt": "提示词 (Prompt)", "negative_prompt": "反向提示词 (Negative prompt)",
    "prompt_placeholder": "提示词（按“生成”开始）", "negative_placeholder": "反向提示词",
    "sampler_name": "采样方法 (Sampler)", "scheduler": "调度类型 (Schedule type)", "steps": "迭代步数 (Steps)",
    "cfg_scale": "提示词引导系数 (CFG scale)", "width": "宽度 (Width)", "height": "高度 (Height)",
    "seed": "随机种子 (Seed)", "batch_size": "单批数量 (Batch size)", "n_iter": "总批次数 (Batch count)",
    "random_seed": "随机 (-1)", "reuse_seed": "使用上次的种子",
    "generate": "生成 (Generate)", "stop": "中止 (Stop)", "skip": "跳过 (Skip)",
    "idle": "就绪。", "running": "生成中… 第 {step}/{total} 步", "done": "完成：{n} 张图像。{info}",
    "stopped": "已中止：保留 {n} 张图像。{info}", "error": "错误", "no_model": "尚未加载模型。",
    "gallery_empty": "生成的图像会显示在这里。",
    "use_seed": "使用此种子", "send_img2img": "发送到图生图", "hires_this": "✨ 高分辨率修复",
    "debug_here": "在此打开逐步调试器",
    "code_help": "当前设置对应的完整调用（全选后复制）：",
    "paste_help": "粘贴 A1111 的生成参数（infotext）或上传 A1111 生成的 PNG：",
    "paste": "填入参数", "upload": "上传 PNG",
    "pasted": "已根据生成参数填好各项设置。", "no_infotext": "这张图像不含生成参数。",
    "dropped": "未应用（此版本不支持）：{keys}",
    "other_params": "另外使用（来自粘贴的参数）：{items}", "clear_other": "清除",
    "img2img_help": "使用文生图页面的提示词和设置。",
    "init_image": "初始图像 (Init image)", "denoising_strength": "重绘幅度 (Denoising strength)",
    "generate_img2img": "生成 (img2img)",
    "no_init_image": "请先选择初始图像（上传，或在图库中点“发送到图生图”）。",
    "checkpoint": "模型 (Checkpoint)", "load": "加载", "loading": "正在加载 {name}…",
    "loaded": "已加载 {name}，用时 {seconds:.1f} 秒。", "lora": "LoRA", "embedding": "嵌入式 (Embedding)",
    "vae": "VAE 模型 (SD VAE)", "apply": "应用", "vae_applied": "VAE：{name}。",
    "insert": "插入提示词", "refresh": "刷新",
    "xyz_plan": "规划（先显示数量）", "xyz_run": "生成图表",
    "xyz_ray": "在 Ray 工作进程上运行（每块 GPU 一个）", "xyz_progress": "X/Y/Z 图表：{done}/{total} 格…",
    "img2img_mode": "模式", "mode_img2img": "图生图 (img2img)", "mode_inpaint": "局部重绘 (Inpaint)",
    "mode_inpaint_upload": "上传重绘蒙版 (Inpaint upload)",
    "resize_mode": "缩放模式 (Resize mode)", "extra_noise": "额外噪声 (Extra noise)",
    "initial_noise_multiplier": "噪声倍数 (Noise multiplier)",
    "inpainting_mask_weight": "蒙版条件权重 (Conditional mask weight)",
    "overlay_inpaint": "蒙版外区域叠加原图 (Overlay original for inpaint)",
    "mask_blur": "蒙版边缘模糊度 (Mask blur)", "mask_mode": "蒙版模式 (Mask mode)",
    "masked_content": "蒙版区域内容处理 (Masked content)", "inpaint_area": "重绘区域 (Inpaint area)",
    "inpaint_padding": "仅蒙版区域边缘预留像素 (Only masked padding, pixels)",
    "soft_inpainting": "软重绘 (Soft inpainting)", "mask_blend_power": "调度偏移 (Schedule bias)",
    "mask_blend_scale": "保留强度 (Preservation strength)",
    "inpaint_detail_preservation": "过渡对比度增强 (Transition contrast boost)",
    "composite_mask_influence": "蒙版影响 (Mask influence)",
    "composite_difference_threshold": "差异阈值 (Difference threshold)",
    "composite_difference_contrast": "差异对比度 (Difference contrast)",
    "brush_size": "画笔大小 (Brush size)", "erase": "橡皮擦 (Erase)", "clear_mask": "清除 (Clear)",
    "painter_no_image": "请先选择初始图像。",
    "painter_help": "在图像上涂抹要重绘的区域（上方可调画笔大小、橡皮擦、清除）。如果这里不显示图像（此前端无法显示"
                    "自定义组件），请用“上传重绘蒙版”上传蒙版 PNG。",
    "painter_unavailable": "蒙版画板需要 anywidget（{error}）：请用“上传重绘蒙版”上传蒙版 PNG。",
    "mask_upload": "蒙版 PNG (Mask)",
    "upload_help": "选择初始图像和蒙版 PNG：白色为重绘区域（带透明度的蒙版使用其透明通道）。",
    "no_mask": "请先在图像上涂抹要重绘的区域（或用“上传重绘蒙版”上传蒙版 PNG）。",
    "no_mask_upload": "请先上传蒙版 PNG（白色为重绘区域）。",
    "no_frontend": "nbdiffuse 控制面板只在能显示 Jupyter 小部件的前端中显示（装有 jupyterlab_widgets 的 JupyterLab 或 "
                   "Notebook 7、VS Code 的 Jupyter 扩展、Colab），此处不能显示。可用代码运行同样的任务，当前设置为",
    "extras_help": "按 A1111 后期处理页面的方式放大图像（其“放大”部分；面部修复暂不可用），保存到 extras-images/。",
    "extras_image": "源图像 (Source)", "extras_resize_mode": "缩放方式 (Resize)", "scale_by": "等比缩放 (Scale by)",
    "scale_to": "指定尺寸 (Scale to)", "upscaling_resize": "缩放比例 (Resize)",
    "max_side_length": "最大边长 (Max side length)", "upscaling_crop": "裁剪以适应宽高比 (Crop to fit)",
    "upscaler_1": "放大算法 1 (Upscaler 1)", "upscaler_2": "放大算法 2 (Upscaler 2)",
    "upscaler_2_visibility": "放大算法 2 强度 (Upscaler 2 visibility)", "generate_extras": "生成 (Generate)",
    "no_extras_image": "请先选择图像（上传一张）。", "extras_done": "{size}：{infotext}",
    "extras_saved": "已保存 {path}。",
}

TABLES = {"en": EN, "zh": ZH}


def default_lang() -> str:
    """``"zh"`` when the locale (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``, Python's) is Chinese.

    >>> default_lang() in ("en", "zh")
    True
    """
    names = [os.environ.get(k, "") for k in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")]
    try:
        names.append(locale.getlocale()[0] or "")
    except ValueError:  # an unparsable locale setting just means "not Chinese"
        pass
    first = next((n for n in names if n and n not in ("C", "POSIX")), "")
    return "zh" if first.lower().startswith("zh") else "en"


def labels(lang: str | None = None) -> dict[str, str]:
    """The label table for ``lang`` (``None``: from the locale).

    >>> labels("zh")["generate"]
    '生成 (Generate)'
    """
    lang = default_lang() if lang is None else lang
    if lang not in TABLES:
        raise ValueError(f"lang={lang!r} is not available: use one of {', '.join(LANGS)} (or None for the locale).")
    return TABLES[lang]
