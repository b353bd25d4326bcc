"""Generation parameters: A1111's API field names, validated once, frozen.

Every job takes a :class:`GenerationParams`. Invalid values fail here, before any model work, with a
message naming the field, the value given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

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
    "refiner_checkpoint": (None, ""), "refiner_switch_at": (None, 0), "force_task_id": (None,),
    "enable_hr": (False,), "tiling": (False,), "denoising_strength": (None, 0, 0.0, 0.7),
    "firstphase_width": (0,), "firstphase_height": (0,), "hr_scale": (2.0, 2), "hr_upscaler": (None, "Latent"),
    "hr_second_pass_steps": (0,), "hr_resize_x": (0,), "hr_resize_y": (0,), "hr_checkpoint_name": (None,),
    "hr_sampler_name": (None,), "hr_scheduler": (None,), "hr_prompt": ("",), "hr_negative_prompt": ("",),
}

MAX_PIXELS_PER_BATCH = 64 * 1024 * 1024  # width * height * batch_size; far above any GPU's reach


@dataclass(frozen=True)
class GenerationParams:
    """The fields of an A1111 txt2img request that nbdiffuse implements."""

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
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    clip_skip: int = 1
    styles: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        _check(isinstance(self.prompt, str), "prompt", self.prompt, "a string")
        styles = (self.styles,) if isinstance(self.styles, str) else tuple(self.styles or ())
        _check(all(isinstance(s, str) for s in styles), "styles", self.styles, "a list of style names")
        object.__setattr__(self, "styles", styles)
        _check(isinstance(self.negative_prompt, str), "negative_prompt", self.negative_prompt, "a string")
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
        _check(self.seed >= -1, "seed", self.seed, "-1 (random) or a non-negative integer")
        _check(self.subseed >= -1, "subseed", self.subseed, "-1 (random) or a non-negative integer")
        _check(self.clip_skip >= 1, "clip_skip", self.clip_skip, "at least 1 (1 = the last layer)")
        for name in ("cfg_scale", "subseed_strength", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value),
                   name, value, "a number")
        _check(0.0 <= self.subseed_strength <= 1.0, "subseed_strength", self.subseed_strength, "between 0 and 1")
        if self.eta is not None:
            _check(isinstance(self.eta, (int, float)) and self.eta >= 0, "eta", self.eta, "a number >= 0")
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

    @classmethod
    def from_kwargs(cls, **kwargs) -> GenerationParams:
        """Build from A1111 API keyword arguments; unknown fields fail with close-match suggestions."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        own, extra = {}, {}
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
        return cls(**own, extra=extra)

    @property
    def scheduler_used(self) -> str:
        """The schedule actually used: "Automatic" resolved to the sampler's default, else the model's own."""
        if self.scheduler != "Automatic":
            return self.scheduler
        return SAMPLERS[self.sampler_name].default_scheduler or "Uniform"

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    def replace(self, **changes) -> GenerationParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The A1111 API payload of these parameters (``txt2img(**p.to_dict())`` rebuilds them)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["styles"] = list(self.styles)
        return out


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not valid: it must be {allowed}.")


__all__ = ["GenerationParams", "SCHEDULES"]
