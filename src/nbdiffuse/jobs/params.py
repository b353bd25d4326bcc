"""Generation parameters: A1111's API field names, validated once, frozen.

Every job takes a :class:`GenerationParams`. Invalid values fail here, before any model work, with a
message naming the field, the value given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..sampling.noise import resolve_randn_source
from ..sampling.registry import SAMPLERS, resolve_sampler, suggest
from ..sampling.schedules import SCHEDULES, resolve_schedule

# A1111 API fields we accept so that a pasted payload works, as long as they keep A1111's default value
# (features nbdiffuse does not have; a non-default value is refused with a message naming the field).
_IGNORED_AT_DEFAULT = {
    "restore_faces": (False, None), "do_not_save_samples": (False,), "do_not_save_grid": (False, True),
    "send_images": (True, False), "save_images": (True, False), "script_args": ([], None),
    "script_name": (None, ""), "alwayson_scripts": ({}, None), "override_settings": ({}, None),
    "override_settings_restore_afterwards": (True, False), "sampler_index": (None,), "comments": ({}, None),
    "disable_extra_networks": (False,), "firstpass_image": (None,), "infotext": (None,),
    "force_task_id": (None,),
    "firstphase_width": (0,), "firstphase_height": (0,), "hr_checkpoint_name": (None, "", "Use same checkpoint"),
}
_SAME = ("", "Use same sampler", "Use same scheduler")  # A1111's "keep the first pass's" values
# A1111's setting hires_fix_refiner_pass: in which pass of a hires-fix job the refiner switch may happen
HIRES_REFINER_PASSES = ("second pass", "first pass", "both passes")
_NO_REFINER = ("", "None", "none")  # A1111's "no refiner" values of refiner_checkpoint
_NOT_A1111 = ("extra", "known_upscalers")  # fields that are no A1111 API field

MAX_PIXELS_PER_BATCH = 64 * 1024 * 1024  # width * height * batch_size; far above any GPU's reach
MAX_SEED_VALUE = 2**64 - 1  # torch.Generator.manual_seed's range


@dataclass(frozen=True)
class GenerationParams:
    """The fields of an A1111 txt2img request that nbdiffuse implements.

    >>> p = GenerationParams.from_kwargs(prompt="a cat", sampler_name="DPM++ 2M Karras", cfg_scale=7)
    >>> p.sampler_name, p.scheduler_used, p.width
    ('DPM++ 2M', 'Karras', 512)
    """

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    width: int = 512  # A1111's API default; a Session's jobs default to the model's native size
    height: int = 512  # (see with_native_size)
    batch_size: int = 1
    n_iter: int = 1
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    clip_skip: int = 1
    styles: tuple[str, ...] = ()
    emphasis: str = "Original"  # A1111's emphasis setting: "Original", "No norm", "Ignore", "None"
    tiling: bool = False
    # A1111's "Random number generator source" (infotext "RNG"): "CPU" (ours: the same image on every device),
    # "GPU" (A1111's default: torch.randn on CUDA; emulated where there is none) or "NV" (NVIDIA's generator on
    # the CPU)
    randn_source: str = "CPU"
    # img2img and hires fix
    denoising_strength: float | None = None  # None: the job's default (0.7 hires fix, 0.75 img2img)
    extra_noise: float = 0.0  # A1111's "Extra noise" (its setting img2img_extra_noise)
    resize_mode: int = 0  # img2img: 0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 latent upscale
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None  # None: "Latent"
    hr_second_pass_steps: int = 0  # 0: the first pass's steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None  # None: the first pass's
    hr_scheduler: str | None = None  # None: the first pass's
    hr_prompt: str = ""  # "": the first pass's
    hr_negative_prompt: str = ""
    # inpainting (img2img with a mask): A1111's API fields with the API's defaults (its UI's differ: Masked content
    # "original", Inpaint area "Whole picture", padding 32; see nbdiffuse.ui for those)
    mask_blur: int | None = None  # sets mask_blur_x and mask_blur_y; reads back as their value when they are equal
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True  # threshold RGBA masks and round the latent mask (soft inpainting turns it off)
    inpainting_fill: int = 0  # masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True  # inpaint area: True "Only masked" (crop, upscale, paste back), False "Whole picture"
    inpaint_full_res_padding: int = 0  # "Only masked padding, pixels"
    inpainting_mask_invert: int = 0  # mask mode: 0 "Inpaint masked", 1 "Inpaint not masked"
    initial_noise_multiplier: float | None = None  # A1111's "Noise multiplier for img2img" (None: 1.0)
    inpainting_mask_weight: float = 1.0  # A1111's "Conditional mask weight" (inpainting checkpoints only)
    overlay_inpaint: bool = True  # A1111's setting "Overlay original for inpaint": paste the original back outside
    # A1111's built-in Soft inpainting script (its alwayson_scripts args are read into this): None (off) or a
    # SoftInpainting, a dict of its fields, or True for its defaults
    soft_inpainting: object = None
    # SDXL refiner (A1111's Refiner accordion and its two settings; nbdiffuse.jobs.refiner): a checkpoint (a name in
    # the checkpoints folder, "name [hash]" as infotexts write it, or a path) the sampling switches to at
    # refiner_switch_at (timestep rule; refiner_switch_by_sample_steps: A1111's legacy step rule), and with hires fix
    # in which pass ("second pass", "first pass", "both passes")
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = 0.8
    refiner_switch_by_sample_steps: bool = False
    hires_fix_refiner_pass: str = "second pass"
    extra: dict = field(default_factory=dict, compare=False, repr=False)
    # Not a generation setting: the model upscalers (registered names) that hr_upscaler may name besides the
    # built-in ones and model files, from where the parameters were made (a Session passes its own); replace()
    # keeps them.
    known_upscalers: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        _check(isinstance(self.prompt, str), "prompt", self.prompt, "a string")
        styles = (self.styles,) if isinstance(self.styles, str) else tuple(self.styles or ())
        _check(all(isinstance(s, str) for s in styles), "styles", self.styles, "a list of style names")
        object.__setattr__(self, "styles", styles)
        from ..prompts.conditioning import EMPHASIS_MODES

        _check(self.emphasis in EMPHASIS_MODES, "emphasis", self.emphasis, f"one of {', '.join(EMPHASIS_MODES)}")
        _check(isinstance(self.negative_prompt, str), "negative_prompt", self.negative_prompt, "a string")
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            _check_text(name, getattr(self, name))
        for name in ("steps", "width", "height", "batch_size", "n_iter", "seed", "subseed", "clip_skip",
                     "seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool), name, value, "an integer")
        _check(self.steps >= 1, "steps", self.steps, "at least 1")
        _check(self.steps <= 1000, "steps", self.steps, "at most 1000")
        for name in ("width", "height"):
            value = getattr(self, name)
            _check(value >= 64 and value % 8 == 0, name, value,
                   f"a multiple of 8, at least 64 (try {max(64, round(value / 8) * 8)})")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        _check(self.n_iter >= 1, "n_iter", self.n_iter, "at least 1")
        _check(self.width * self.height * self.batch_size <= MAX_PIXELS_PER_BATCH, "batch_size",
               self.batch_size, f"small enough that width*height*batch_size <= {MAX_PIXELS_PER_BATCH}; "
               "use n_iter for more images")
        last = MAX_SEED_VALUE - self.batch_size * self.n_iter
        _check(-1 <= self.seed <= last, "seed", self.seed, f"-1 (random) or an integer from 0 to {last}")
        _check(-1 <= self.subseed <= last, "subseed", self.subseed, f"-1 (random) or an integer from 0 to {last}")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            _check(getattr(self, name) <= 16384, name, getattr(self, name), "at most 16384 (0 or -1: off)")
        _check(self.clip_skip >= 1, "clip_skip", self.clip_skip, "at least 1 (1 = the last layer)")
        for name in ("cfg_scale", "subseed_strength", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value),
                   name, value, "a number")
            _check(name == "s_tmax" or math.isfinite(value), name, value, "a finite number")
        # Far beyond any useful guidance (A1111's slider stops at 30), and small enough that the guided
        # prediction cannot overflow to inf and come out as a black picture.
        _check(abs(self.cfg_scale) <= 1000, "cfg_scale", self.cfg_scale, "between -1000 and 1000")
        _check(0.0 <= self.subseed_strength <= 1.0, "subseed_strength", self.subseed_strength, "between 0 and 1")
        if self.eta is not None:
            _check(_is_number(self.eta) and 0 <= self.eta < math.inf, "eta", self.eta, "a finite number >= 0")
        for name in ("sampler_name", "scheduler"):
            _check(isinstance(getattr(self, name), str), name, getattr(self, name), "a name (a string)")
        for name in ("hr_sampler_name", "hr_scheduler", "hr_upscaler"):
            value = getattr(self, name)
            _check(value is None or isinstance(value, str), name, value, "a name (a string) or None")
        try:
            sampler, combined_schedule = resolve_sampler(self.sampler_name)
        except ValueError as e:
            raise ValueError(f"sampler_name: {e}") from None
        object.__setattr__(self, "sampler_name", sampler)
        if combined_schedule is not None and self.scheduler == "Automatic":
            default = SAMPLERS[sampler].default_scheduler
            object.__setattr__(self, "scheduler", "Automatic" if combined_schedule == default
                               else combined_schedule)
        if self.scheduler != "Automatic":
            try:
                object.__setattr__(self, "scheduler", resolve_schedule(self.scheduler))
            except ValueError as e:
                raise ValueError(f"scheduler: {e}") from None
        for name in ("cfg_scale", "subseed_strength", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "randn_source", resolve_randn_source(self.randn_source))
        self._check_img2img_and_hires()
        self._check_inpainting()
        self._check_refiner()

    def _check_refiner(self) -> None:
        name = self.refiner_checkpoint
        _check(name is None or isinstance(name, str), "refiner_checkpoint", name,
               "a checkpoint name or path (a string), or None for no refiner")
        object.__setattr__(self, "refiner_checkpoint", None if name is None or name.strip() in _NO_REFINER
                           else name.strip())
        at = self.refiner_switch_at
        if at is not None:
            _check(_is_number(at) and 0 <= at <= 1, "refiner_switch_at", at,
                   "a number from 0 to 1 (A1111's slider: 0.01 to 1; 1 never switches), or None to switch at the "
                   "first model call")
            object.__setattr__(self, "refiner_switch_at", float(at))
        _check(isinstance(self.refiner_switch_by_sample_steps, bool), "refiner_switch_by_sample_steps",
               self.refiner_switch_by_sample_steps, "True or False")
        _check(self.hires_fix_refiner_pass in HIRES_REFINER_PASSES, "hires_fix_refiner_pass",
               self.hires_fix_refiner_pass, " or ".join(map(repr, HIRES_REFINER_PASSES)))

    def _check_inpainting(self) -> None:
        from .soft_inpainting import SoftInpainting

        if self.mask_blur is not None:
            _check(_is_int(self.mask_blur) and 0 <= self.mask_blur <= 256, "mask_blur", self.mask_blur,
                   "an integer from 0 to 256 (A1111's slider: 0 to 64)")
            object.__setattr__(self, "mask_blur_x", self.mask_blur)
            object.__setattr__(self, "mask_blur_y", self.mask_blur)
        for name in ("mask_blur_x", "mask_blur_y"):
            _check(_is_int(getattr(self, name)) and 0 <= getattr(self, name) <= 256, name, getattr(self, name),
                   "an integer from 0 to 256 (A1111's slider: 0 to 64)")
        object.__setattr__(self, "mask_blur", self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None)
        _check(self.inpainting_fill in (0, 1, 2, 3) and not isinstance(self.inpainting_fill, bool), "inpainting_fill",
               self.inpainting_fill, "0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)")
        for name, words in (("inpaint_full_res", "True (Only masked) or False (Whole picture)"),
                            ("inpainting_mask_invert", "0 (Inpaint masked) or 1 (Inpaint not masked)"),
                            ("mask_round", "True or False"), ("overlay_inpaint", "True or False")):
            value = getattr(self, name)
            _check(value in (0, 1), name, value, words)  # A1111's UI sends radio indexes, its API booleans
            object.__setattr__(self, name, int(value) if name == "inpainting_mask_invert" else bool(value))
        _check(_is_int(self.inpaint_full_res_padding) and 0 <= self.inpaint_full_res_padding <= 4096,
               "inpaint_full_res_padding", self.inpaint_full_res_padding, "an integer from 0 to 4096 pixels")
        if self.initial_noise_multiplier is not None:
            value = self.initial_noise_multiplier
            _check(_is_number(value) and 0 <= value <= 10, "initial_noise_multiplier", value,
                   "a number from 0 to 10 (A1111's slider: 0 to 1.5; None: 1.0)")
            object.__setattr__(self, "initial_noise_multiplier", float(value))
        _check(_is_number(self.inpainting_mask_weight) and 0 <= self.inpainting_mask_weight <= 1,
               "inpainting_mask_weight", self.inpainting_mask_weight, "a number between 0 and 1")
        object.__setattr__(self, "inpainting_mask_weight", float(self.inpainting_mask_weight))
        soft = self.soft_inpainting
        if soft is True:
            soft = SoftInpainting()
        elif soft is False:
            soft = None
        elif isinstance(soft, Mapping):
            try:
                soft = SoftInpainting(**soft)
            except TypeError as e:
                raise ValueError(f"soft_inpainting: {e}; its fields are "
                                 f"{', '.join(f.name for f in dataclasses.fields(SoftInpainting))}") from None
        _check(soft is None or isinstance(soft, SoftInpainting), "soft_inpainting", self.soft_inpainting,
               "None, True (A1111's defaults), a dict of SoftInpainting fields or a SoftInpainting")
        object.__setattr__(self, "soft_inpainting", soft)

    @property
    def noise_multiplier(self) -> float:
        """``initial_noise_multiplier``, None read as A1111's default 1.0."""
        return 1.0 if self.initial_noise_multiplier is None else self.initial_noise_multiplier

    def _check_img2img_and_hires(self) -> None:
        from .upscalers import RESIZE_MODES, resolve_upscaler

        for name in ("tiling", "enable_hr"):
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name), "True or False")
        if self.denoising_strength is not None:
            d = self.denoising_strength
            _check(_is_number(d) and 0.0 <= d <= 1.0, "denoising_strength", d, "a number between 0 and 1")
            object.__setattr__(self, "denoising_strength", float(d))
        _check(_is_number(self.extra_noise) and 0.0 <= self.extra_noise <= 1.0, "extra_noise", self.extra_noise,
               "a number between 0 and 1")
        object.__setattr__(self, "extra_noise", float(self.extra_noise))
        _check(self.resize_mode in (0, 1, 2, 3) and not isinstance(self.resize_mode, bool), "resize_mode",
               self.resize_mode, ", ".join(f"{i} ({m})" for i, m in enumerate(RESIZE_MODES)))
        for name in ("hr_second_pass_steps", "hr_resize_x", "hr_resize_y"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name, value,
                   "an integer >= 0")
        _check(self.hr_second_pass_steps <= 1000, "hr_second_pass_steps", self.hr_second_pass_steps, "at most 1000")
        _check(_is_number(self.hr_scale) and self.hr_scale > 0, "hr_scale", self.hr_scale, "a number > 0")
        object.__setattr__(self, "hr_scale", float(self.hr_scale))
        for name in ("hr_prompt", "hr_negative_prompt"):
            _check(isinstance(getattr(self, name), str), name, getattr(self, name), "a string")
        object.__setattr__(self, "known_upscalers", tuple(self.known_upscalers))
        try:
            object.__setattr__(self, "hr_upscaler", resolve_upscaler(self.hr_upscaler, self.known_upscalers)
                               if self.hr_upscaler is not None else None)
        except ValueError as e:
            raise ValueError(f"hr_upscaler: {e}") from None
        hr_sampler = None if self.hr_sampler_name in (None, *_SAME) else self.hr_sampler_name
        hr_scheduler = None if self.hr_scheduler in (None, *_SAME) else self.hr_scheduler
        if hr_sampler is not None:
            try:
                hr_sampler, glued = resolve_sampler(hr_sampler)
            except ValueError as e:
                raise ValueError(f"hr_sampler_name: {e}") from None
            if glued is not None and hr_scheduler is None and glued != SAMPLERS[hr_sampler].default_scheduler:
                hr_scheduler = glued
        if hr_scheduler is not None and hr_scheduler != "Automatic":
            try:
                hr_scheduler = resolve_schedule(hr_scheduler)
            except ValueError as e:
                raise ValueError(f"hr_scheduler: {e}") from None
        object.__setattr__(self, "hr_sampler_name", hr_sampler)
        object.__setattr__(self, "hr_scheduler", hr_scheduler)
        if self.enable_hr:
            w, h = self.hr_size
            _check(w >= 64 and h >= 64, "hr_scale" if not (self.hr_resize_x or self.hr_resize_y) else "hr_resize_x",
                   self.hr_scale if not (self.hr_resize_x or self.hr_resize_y) else self.hr_resize_x,
                   f"large enough for a hires size of at least 64x64 (it gives {w}x{h})")
            _check(w * h * self.batch_size <= MAX_PIXELS_PER_BATCH, "hr_scale", self.hr_scale,
                   f"small enough that the hires size times batch_size fits in {MAX_PIXELS_PER_BATCH} pixels "
                   f"(it gives {w}x{h} x {self.batch_size} = {w * h * self.batch_size})")

    @property
    def hr_upscale_to(self) -> tuple[int, int]:
        """A1111's ``(hr_upscale_to_x, hr_upscale_to_y)``: the size rendered before the centred crop."""
        w, h, x, y = self.width, self.height, self.hr_resize_x, self.hr_resize_y
        if x == 0 and y == 0:
            return int(w * self.hr_scale), int(h * self.hr_scale)
        if y == 0:
            return x, x * h // w
        if x == 0:
            return y * w // h, y
        if w / h < x / y:
            return x, x * h // w
        return y * w // h, y

    @property
    def hr_truncate(self) -> tuple[int, int]:
        """A1111's ``(truncate_x, truncate_y)``, in latent units: how much the centred crop removes."""
        if self.hr_resize_x == 0 or self.hr_resize_y == 0:
            return 0, 0
        to_x, to_y = self.hr_upscale_to
        return (to_x - self.hr_resize_x) // 8, (to_y - self.hr_resize_y) // 8

    @property
    def hr_size(self) -> tuple[int, int]:
        """The final hires image size ``(width, height)``: the latent size after the crop, times 8."""
        to_x, to_y = self.hr_upscale_to
        tx, ty = self.hr_truncate
        return (to_x // 8 - tx) * 8, (to_y // 8 - ty) * 8

    @property
    def hr_sampler_used(self) -> str:
        return self.hr_sampler_name or self.sampler_name

    @property
    def hr_scheduler_used(self) -> str:
        """The second pass's schedule: ``hr_scheduler`` (else the first pass's), "Automatic" resolved for the
        hires sampler."""
        scheduler = self.hr_scheduler or self.scheduler
        if scheduler != "Automatic":
            return scheduler
        return SAMPLERS[self.hr_sampler_used].default_scheduler or "Uniform"

    @classmethod
    def from_kwargs(cls, *, known_upscalers: Iterable[str] = (), **kwargs) -> GenerationParams:
        """Build from A1111 API keyword arguments; unknown fields fail with close-match suggestions.
        ``known_upscalers``: registered upscaler names ``hr_upscaler`` may use (``session.upscalers.files``)."""
        names = {f.name for f in dataclasses.fields(cls)} - set(_NOT_A1111)
        own, extra = {}, {}
        scripts = kwargs.get("alwayson_scripts")
        soft_titles = [t for t in scripts or () if str(t).lower() == "soft inpainting"] if isinstance(
            scripts, Mapping) else []
        if soft_titles:  # A1111's built-in script, matched by title case-insensitively as A1111 does
            from .soft_inpainting import SoftInpainting

            if kwargs.get("soft_inpainting") is not None:
                raise ValueError("soft_inpainting is given twice: as a field and in alwayson_scripts; keep one.")
            soft = SoftInpainting.from_alwayson_scripts({t: scripts[t] for t in soft_titles})
            others = {t: v for t, v in scripts.items() if t not in soft_titles}
            kwargs = {**kwargs, "alwayson_scripts": others, "soft_inpainting": soft}
        for key, value in kwargs.items():
            if key in names:
                own[key] = value
            elif key in _IGNORED_AT_DEFAULT:
                if not any(value == d for d in _IGNORED_AT_DEFAULT[key]):
                    raise ValueError(f"{key}={value!r} is an A1111 field that nbdiffuse does not support yet; "
                                     f"leave it at its default ({_IGNORED_AT_DEFAULT[key][0]!r}) or remove it.")
                extra[key] = value
            else:
                raise TypeError(f"Unknown parameter {key!r}.{suggest(key, names)} "
                                f"Parameters: {', '.join(sorted(names))}.")
        return cls(**own, extra=extra, known_upscalers=tuple(known_upscalers))

    @property
    def scheduler_used(self) -> str:
        """The schedule actually used: "Automatic" resolved to the sampler's default, else the model's own."""
        if self.scheduler != "Automatic":
            return self.scheduler
        return SAMPLERS[self.sampler_name].default_scheduler or "Uniform"

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def hr_steps_used(self) -> int:
        """The hires second pass's steps: ``hr_second_pass_steps``, else (0) the first pass's ``steps``."""
        return self.hr_second_pass_steps or self.steps

    @property
    def total_steps(self) -> int:
        """The steps a job reports progress for (one per hook call): ``n_iter`` batches of ``steps``, plus the
        hires second pass when ``enable_hr``. A step is a sampler step, so second-order samplers (Heun, DPM2, ...)
        count once per step although they call the model twice. The samplers that choose their own steps (DDIM,
        PLMS, UniPC, DPM fast, DPM adaptive) report a different number; progress bars grow to fit.

        >>> GenerationParams(steps=20, n_iter=2).total_steps
        40
        >>> GenerationParams(steps=20, sampler_name="Heun", enable_hr=True, hr_second_pass_steps=10).total_steps
        30
        """
        return (self.steps + (self.hr_steps_used if self.enable_hr else 0)) * self.n_iter

    def replace(self, **changes) -> GenerationParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The A1111 API payload of these parameters (``txt2img(**p.to_dict())`` rebuilds them)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_A1111}
        out["styles"] = list(self.styles)
        if self.soft_inpainting is not None:
            out["soft_inpainting"] = dataclasses.asdict(self.soft_inpainting)
        return out


def with_native_size(params: Mapping, bundle) -> dict:
    """``params`` with ``width``/``height`` set to ``bundle.native_size`` where they are missing (or None).

    :class:`GenerationParams` keeps A1111's API default of 512x512 for every model; a session's jobs (txt2img,
    img2img, loopback, X/Y/Z grids) default instead to the size the loaded model was trained at: 64 for the toy
    model, 512 SD1 and SD2-base, 768 SD2-v, 1024 SDXL. Explicit values, as in any A1111 payload, are kept.

    >>> with_native_size({"prompt": "a cat", "height": 768}, session.model)    # doctest: +SKIP
    {'prompt': 'a cat', 'height': 768, 'width': 512}
    """
    out = dict(params)
    for key, value in zip(("width", "height"), bundle.native_size):
        if out.get(key) is None:
            out[key] = value
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _check_text(name: str, text) -> None:
    """A prompt must be text that can be written into a PNG: a lone surrogate (from a bad copy-paste or a broken
    decode) fails in the tokenizer or when saving, after the work is done."""
    if not isinstance(text, str):
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid: it contains {text[e.start]!r} at position {e.start}, half of a "
                         "character pair (a broken copy-paste); remove it or paste the text again.") from None


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not valid: it must be {allowed}.")


__all__ = ["GenerationParams", "SCHEDULES", "with_native_size"]
