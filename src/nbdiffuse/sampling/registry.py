"""The sampler registry: A1111 display names -> sampler functions and their options.

The panel's dropdowns, the xyz axes, parameter validation and the infotext parser all read
:data:`SAMPLERS`; schedules live in :data:`nbdiffuse.sampling.schedules.SCHEDULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..suggest import suggest
from . import samplers as k
from . import timestep_samplers as ts
from .schedules import SCHEDULES, ddim_grid, unipc_grid


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: its function and how A1111 drives it."""

    name: str
    func: Callable
    aliases: tuple[str, ...] = ()
    default_scheduler: str | None = None  # None: the model's own ("Uniform"); "Automatic": the samplers with a grid
    second_order: bool = False  # two model calls per step: prompt schedules count double
    brownian: bool = False  # step noise from a Brownian tree seeded per image
    discard_penultimate: bool = False  # compute steps + 1 sigmas and drop the next-to-last
    options: dict = field(default_factory=dict)  # fixed keyword options for func
    uses_eta: bool = False
    uses_churn: bool = False  # s_churn/s_tmin/s_tmax/s_noise apply
    needs_uncond: bool = False  # reads the guidance closure's uncond prediction (CFG++)
    cfg_divisor: float = 1.0  # CFG++ works on a 0..1 guidance scale: A1111 divides the UI's CFG by 12.5
    # A1111's timestep samplers run on their own grid (schedules.ddim_grid / unipc_grid), whatever the schedule
    # type; their infotext keeps the schedule type as chosen ("Automatic" by default), as A1111 writes it.
    grid: Callable | None = None

    def total_steps(self, steps: int) -> int:
        """A1111's step count for prompt schedules, and the model calls of ``steps`` steps: second-order samplers
        (two model calls a step) count double."""
        return steps * 2 if self.second_order else steps


_S = SamplerSpec
SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in [
    _S("DPM++ 2M", k.sample_dpmpp_2m, ("k_dpmpp_2m",), "Karras"),
    _S("DPM++ SDE", k.sample_dpmpp_sde, ("k_dpmpp_sde",), "Karras", second_order=True, brownian=True,
       uses_eta=True),
    _S("DPM++ 2M SDE", k.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), "Exponential", brownian=True,
       uses_eta=True),
    _S("DPM++ 2M SDE Heun", k.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",), "Exponential", brownian=True,
       options={"solver_type": "heun"}, uses_eta=True),
    _S("DPM++ 2S a", k.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), "Karras", second_order=True,
       uses_eta=True),
    _S("DPM++ 3M SDE", k.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), "Exponential", brownian=True,
       discard_penultimate=True, uses_eta=True),
    _S("Euler a", k.sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), uses_eta=True),
    _S("Euler", k.sample_euler, ("k_euler",), uses_churn=True),
    _S("LMS", k.sample_lms, ("k_lms",)),
    _S("Heun", k.sample_heun, ("k_heun",), second_order=True, uses_churn=True),
    _S("DPM2", k.sample_dpm_2, ("k_dpm_2",), "Karras", second_order=True, discard_penultimate=True,
       uses_churn=True),
    _S("DPM2 a", k.sample_dpm_2_ancestral, ("k_dpm_2_a",), "Karras", second_order=True,
       discard_penultimate=True, uses_eta=True),
    _S("DPM fast", k.sample_dpm_fast, ("k_dpm_fast",), uses_eta=True),
    _S("DPM adaptive", k.sample_dpm_adaptive, ("k_dpm_ad",), uses_eta=True),
    _S("Restart", k.sample_restart, ("restart",), "Karras", second_order=True),
    _S("DDIM", ts.sample_ddim, ("ddim",), "Automatic", uses_eta=True, grid=ddim_grid),
    _S("DDIM CFG++", ts.sample_ddim_cfgpp, ("ddim_cfgpp",), "Automatic", needs_uncond=True, uses_eta=True,
       cfg_divisor=12.5, grid=ddim_grid),
    _S("PLMS", ts.sample_plms, ("plms",), "Automatic", grid=ddim_grid),
    _S("UniPC", ts.sample_unipc, ("unipc",), "Automatic", grid=unipc_grid),
    _S("LCM", k.sample_lcm, ("k_lcm",)),
]}

_BY_ALIAS: dict[str, str] = {}
for _spec in SAMPLERS.values():
    _BY_ALIAS[_spec.name.lower()] = _spec.name
    for _alias in _spec.aliases:
        _BY_ALIAS[_alias.lower()] = _spec.name


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """Map a sampler name, alias or pre-1.9 combined name to ``(sampler, scheduler-or-None)``.

    >>> resolve_sampler("DPM++ 2M Karras")
    ('DPM++ 2M', 'Karras')
    >>> resolve_sampler("k_euler_a")
    ('Euler a', None)
    """
    key = name.strip().lower()
    if key in _BY_ALIAS:
        return _BY_ALIAS[key], None
    # Pre-1.9 names glue a schedule label to the sampler: "DPM++ 2M Karras", "Euler a Exponential".
    for label in sorted(SCHEDULES, key=len, reverse=True):
        suffix = " " + label.lower()
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_ALIAS:
            return _BY_ALIAS[key[: -len(suffix)]], label
    raise ValueError(f"Unknown sampler {name!r}.{suggest(name, SAMPLERS)} "
                     f"Available samplers: {', '.join(SAMPLERS)}.")
