"""X/Y/Z plots: A1111's axis types and value syntax, a plan made before any image, and the grid run.

``plan_xyz`` parses and validates every cell's parameters and sizes the final grid *before* a model is touched,
so a grid that could never be assembled is refused at once with the way out spelled out. ``run_xyz`` then
generates cell by cell (costly axes outermost), keeps every finished cell when interrupted, and can resume.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import math
import os
import random
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.grid import draw_grid, grid_layout
from ..sampling.noise import MAX_SEED, fix_seed, resolve_randn_source
from ..sampling.registry import SAMPLERS, resolve_sampler, suggest
from ..sampling.schedules import resolve_schedule
from .params import GenerationParams
from .result import Result

_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")
_NUM = r"([+-]?\s*\d+(?:\.\d*)?)"
_FLOAT_RANGE = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}(?:\s*\[(\d+(?:\.\d*)?)\s*\])?\s*")


def split_values(text: str) -> list[str]:
    """A1111's value list: comma-separated, double quotes protect commas (``"a, b", c`` -> 2 values)."""
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    return [v.strip() for row in rows for v in row if v.strip() != ""]


MAX_AXIS_VALUES = 10_000  # far beyond any grid that can be generated and looked at; counted before expanding


def _count_ok(text: str, count: int) -> int:
    if count > MAX_AXIS_VALUES:
        raise ValueError(f"{text!r} expands to {count:,} values, more than the {MAX_AXIS_VALUES:,} an axis may have; "
                         "use a larger step or a [count]")
    return count


def _step(text: str, step: float) -> float:
    if step == 0:
        raise ValueError(f"{text!r} has a step of 0; use a non-zero step like '(+1)' or '(-1)'")
    return step


def expand_ints(values: Sequence[str]) -> list[int]:
    """``1-5`` -> 1..5, ``1-5 (+2)`` -> 1,3,5, ``1-10 [4]`` -> 4 evenly spaced (A1111's rules).

    Ranges are counted before they are expanded: a step of 0 or more than ``MAX_AXIS_VALUES`` values is refused.
    """
    out: list[int] = []
    for v in values:
        m, mc = _INT_RANGE.fullmatch(v), _INT_COUNT.fullmatch(v)
        if m is not None:
            start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", ""))
            step = int(_step(v, int(m.group(3)))) if m.group(3) is not None else 1
            span = range(start, end + 1, step)
            _count_ok(v, len(span))
            out += list(span)
        elif mc is not None:
            start, end = int(mc.group(1).replace(" ", "")), int(mc.group(2).replace(" ", ""))
            num = _count_ok(v, int(mc.group(3))) if mc.group(3) is not None else 1
            out += [int(x) for x in np.linspace(start, end, num).tolist()]
        else:
            out.append(int(v))
        _count_ok(", ".join(values), len(out))
    return out


def expand_floats(values: Sequence[str]) -> list[float]:
    """``0.5-1.5 (+0.5)`` -> 0.5, 1.0, 1.5; ``1-2 [3]`` -> 1.0, 1.5, 2.0 (A1111's rules)."""
    out: list[float] = []
    for v in values:
        m, mc = _FLOAT_RANGE.fullmatch(v), _FLOAT_COUNT.fullmatch(v)
        if m is not None:
            start, end = float(m.group(1).replace(" ", "")), float(m.group(2).replace(" ", ""))
            step = _step(v, float(m.group(3))) if m.group(3) is not None else 1.0
            _count_ok(v, max(0, math.ceil((end + step - start) / step)))
            out += [round(x, 10) for x in np.arange(start, end + step, step).tolist()]
        elif mc is not None:
            start, end = float(mc.group(1).replace(" ", "")), float(mc.group(2).replace(" ", ""))
            num = _count_ok(v, int(float(mc.group(3)))) if mc.group(3) is not None else 1
            out += np.linspace(start, end, num).tolist()
        else:
            out.append(float(v))
        _count_ok(", ".join(values), len(out))
    return out


def _sr(base: dict, value: str, values: Sequence) -> dict:
    """Prompt S/R: the first value is searched for and replaced by this one, in prompt and negative prompt."""
    search = values[0]
    if search not in base.get("prompt", "") and search not in base.get("negative_prompt", ""):
        raise ValueError(f"Prompt S/R: {search!r} (the first value) is in neither the prompt nor the negative prompt")
    return {"prompt": base.get("prompt", "").replace(search, value),
            "negative_prompt": base.get("negative_prompt", "").replace(search, value)}


def _order(base: dict, value: tuple, values: Sequence) -> dict:
    """Prompt order: the listed terms, found in the prompt, are put back in this permutation's order."""
    prompt = base.get("prompt", "")
    positions = []
    for term in value:
        at = prompt.find(term)
        if at < 0:
            raise ValueError(f"Prompt order: {term!r} is not in the prompt")
        positions.append((at, term))
    slots = sorted(positions)
    out, last = [], 0
    for (at, original), term in zip(slots, value):
        out += [prompt[last:at], term]
        last = at + len(original)
    return {"prompt": "".join(out) + prompt[last:]}


def _size(base: dict, value: str, values: Sequence) -> dict:
    w, _, h = value.lower().partition("x")
    return {"width": int(w), "height": int(h)}


@dataclass(frozen=True)
class Axis:
    """One A1111 axis type: how its value strings parse and which parameters a value sets."""

    name: str
    kind: str  # "int", "float", "str", "sampler", "schedule", "rng", "order", "size", "model", "vae"
    field: str | None = None
    apply: Callable[[dict, object, Sequence], dict] | None = None
    cost: float = 0.0  # costlier axes iterate outermost (checkpoint and VAE changes reload weights)

    def parse(self, values) -> list:
        raw = split_values(values) if isinstance(values, str) else list(values)
        if not raw:
            raise ValueError(f"Axis {self.name!r} has no values")
        try:
            if self.kind == "int":
                return expand_ints([str(v) for v in raw]) if isinstance(values, str) else [int(v) for v in raw]
            if self.kind == "float":
                return expand_floats([str(v) for v in raw]) if isinstance(values, str) else [float(v) for v in raw]
        except ValueError as e:
            raise ValueError(f"Axis {self.name!r}: cannot read {values!r} as {self.kind} values ({e}); use a list "
                             "like '1, 2, 3', a range '1-5', '1-5 (+2)' or a count '1-10 [4]'") from None
        if self.kind == "sampler":
            return [resolve_sampler(str(v))[0] for v in raw]
        if self.kind == "hr_sampler":
            return [resolve_sampler(str(v))[0] for v in raw]
        if self.kind == "schedule":
            return [resolve_schedule(str(v)) for v in raw]
        if self.kind == "rng":
            return [resolve_randn_source(str(v)) for v in raw]
        if self.kind == "order":
            return list(itertools.permutations([str(v) for v in raw]))
        if self.kind == "size":
            for v in raw:
                if not re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", str(v)):
                    raise ValueError(f"Axis 'Size': {v!r} is not WIDTHxHEIGHT (e.g. 512x768)")
            return [str(v).replace(" ", "") for v in raw]
        return [str(v) for v in raw]

    def changes(self, base: dict, value, values: Sequence) -> dict:
        if self.apply is not None:
            return self.apply(base, value, values)
        if self.kind == "str" and self.field == "styles":
            return {"styles": [*base.get("styles", []), *[s.strip() for s in str(value).split(",") if s.strip()]]}
        return {self.field: value}

    def label(self, value) -> str:
        if self.kind == "order":
            return ", ".join(value)
        if isinstance(value, float):
            return f"{self.name}: {value:g}"
        return f"{self.name}: {value}"


AXES: dict[str, Axis] = {a.name: a for a in [
    Axis("Nothing", "str", None, lambda base, v, vs: {}),
    Axis("Seed", "int", "seed"),
    Axis("Var. seed", "int", "subseed"),
    Axis("Var. strength", "float", "subseed_strength"),
    Axis("Steps", "int", "steps"),
    Axis("Hires steps", "int", "hr_second_pass_steps"),
    Axis("CFG Scale", "float", "cfg_scale"),
    Axis("Prompt S/R", "str", None, _sr),
    Axis("Prompt order", "order", None, _order),
    Axis("Sampler", "sampler", "sampler_name"),
    Axis("Hires sampler", "hr_sampler", "hr_sampler_name"),
    Axis("Schedule type", "schedule", "scheduler"),
    Axis("Checkpoint name", "model", None, cost=1.0),
    Axis("VAE", "vae", None, cost=0.7),
    Axis("Sigma Churn", "float", "s_churn"),
    Axis("Sigma min", "float", "s_tmin"),
    Axis("Sigma max", "float", "s_tmax"),
    Axis("Sigma noise", "float", "s_noise"),
    Axis("Eta", "float", "eta"),
    Axis("Clip skip", "int", "clip_skip"),
    Axis("Denoising", "float", "denoising_strength"),
    Axis("Extra noise", "float", "extra_noise"),
    Axis("Hires upscaler", "str", "hr_upscaler"),
    Axis("Styles", "str", "styles"),
    Axis("Size", "size", None, _size),
    Axis("RNG source", "rng", "randn_source"),  # A1111's values GPU, CPU, NV
    Axis("Refiner checkpoint", "str", "refiner_checkpoint", cost=1.0),  # "None": no refiner; loading one costs
    Axis("Refiner switch at", "float", "refiner_switch_at"),
]}


def resolve_axis(name: str) -> Axis:
    for key, axis in AXES.items():
        if key.lower() == name.strip().lower():
            return axis
    raise ValueError(f"Unknown axis type {name!r}.{suggest(name, AXES)} Available axes: {', '.join(AXES)}.")


def final_size(params: dict) -> tuple[int, int]:
    """The size of a finished image: the first pass, or the hires target (A1111's rule, crop included)."""
    w, h = int(params.get("width", 512)), int(params.get("height", 512))
    if not params.get("enable_hr"):
        return w, h
    rx, ry = int(params.get("hr_resize_x", 0) or 0), int(params.get("hr_resize_y", 0) or 0)
    if rx == 0 and ry == 0:
        scale = float(params.get("hr_scale", 2.0))
        return int(w * scale), int(h * scale)
    if ry == 0:
        return rx, rx * h // w
    if rx == 0:
        return ry * w // h, ry
    return rx, ry


@dataclass
class GridPlan:
    """Everything about a grid decided before any model work."""

    axes: list[tuple[Axis, list]]  # x, y, z (an absent axis is ("Nothing", [None]))
    cells: dict[tuple[int, int, int], dict]  # (ix, iy, iz) -> txt2img params
    images_per_cell: int
    sizes: dict[tuple[int, int, int], tuple[int, int]]
    grid_sizes: list[tuple[int, int]]  # one grid per z value
    limit_mp: float | None
    order: list[tuple[int, int, int]]  # generation order, costly axes outermost
    base: dict = field(default_factory=dict)  # the parameters before any axis changed them
    font_size: int = 24
    seconds_estimate: float | None = None
    seconds_range: tuple[float, float] | None = None  # what the measured spread of step times allows
    executor: str | None = None  # where the cells run when not here ("2 Ray worker(s) on 1 machine(s) (...)")
    seconds_one_worker: float | None = None  # the estimate for one worker, beside the executor's

    @property
    def count(self) -> int:
        return len(self.cells) * self.images_per_cell

    @property
    def grid_mp(self) -> float:
        return sum(w * h for w, h in self.grid_sizes) / 1e6

    def _repr_html_(self) -> str:
        (xa, xs), (ya, ys), (za, zs) = self.axes
        eta = _duration(self.seconds_estimate, self.seconds_range)
        sizes = sorted(set(self.sizes.values()))
        return (f"<div><b>X/Y/Z plan</b>: {len(xs)} × {len(ys)} × {len(zs)} cells "
                f"({xa.name} × {ya.name} × {za.name}), {self.count} images, cell sizes "
                f"{', '.join(f'{w}x{h}' for w, h in sizes)}, grid {self.grid_mp:.1f} MP "
                f"(limit {self.limit_mp} MP), estimated time {eta}{self._where()}</div>")

    def _where(self) -> str:
        if not self.executor:
            return ""
        one = f"; one worker: {_duration(self.seconds_one_worker, None)}" if self.seconds_one_worker else ""
        return f" on {self.executor}{one}"

    def __repr__(self) -> str:
        (xa, xs), (ya, ys), (za, zs) = self.axes
        return (f"GridPlan({len(xs)}x{len(ys)}x{len(zs)} cells, {self.count} images, grid {self.grid_mp:.1f} MP, "
                f"estimate {_duration(self.seconds_estimate, self.seconds_range)}{self._where()})")


def _round2(seconds: float) -> str:
    """Two significant figures: an estimate from a few timed steps is not more precise than that."""
    return f"{float(f'{seconds:.2g}'):g}"


def _duration(mid: float | None, spread: tuple[float, float] | None) -> str:
    if mid is None:
        return "not measured"
    if spread is None or _round2(spread[0]) == _round2(spread[1]):
        return f"about {_round2(mid)} s"
    return f"about {_round2(mid)} s ({_round2(spread[0])}–{_round2(spread[1])} s)"


def estimate_seconds(cells, call_costs: Sequence[float], fixed_per_pixel: float, *,
                     upscalers: Collection[str] = ()) -> tuple[float, float, float]:
    """``(low, typical, high)`` seconds for generating ``cells`` (txt2img parameter dicts; ``upscalers``: the
    registered upscaler names they may use, as for :func:`plan_xyz`).

    ``call_costs``: measured seconds of one model call per latent pixel-image (width × height × batch), warm-up
    excluded; their min, median and max give the three figures. ``fixed_per_pixel``: seconds per pixel-image
    outside the sampling loop (prompt encoding, VAE decode). Each cell counts its model calls (second-order
    samplers twice per step) at its own size, and the hires pass at the hires size.
    """
    if not call_costs:
        raise ValueError("estimate_seconds needs at least one measured model call")
    costs = sorted(call_costs)
    figures = (costs[0], costs[len(costs) // 2] if len(costs) % 2 else
               (costs[len(costs) // 2 - 1] + costs[len(costs) // 2]) / 2, costs[-1])
    work, fixed = 0.0, 0.0
    for cell in cells:
        p = GenerationParams.from_kwargs(**{k: v for k, v in cell.items() if k != "_load"},
                                         known_upscalers=upscalers)
        images = p.batch_size * p.n_iter
        work += SAMPLERS[p.sampler_name].total_steps(p.steps) * p.width * p.height * images
        w, h = p.width, p.height
        if p.enable_hr:
            w, h = p.hr_size
            work += SAMPLERS[p.hr_sampler_used].total_steps(p.hr_steps_used) * w * h * images
        fixed += fixed_per_pixel * w * h * images
    low, typical, high = (work * c + fixed for c in figures)
    return low, typical, high


def _axis_values(spec) -> tuple[Axis, list]:
    if spec is None:
        return AXES["Nothing"], [None]
    if isinstance(spec, str) or not isinstance(spec, Sequence) or len(spec) != 2:
        raise ValueError(f"An axis is a pair (axis type, values), e.g. (\"Steps\", \"10, 20, 30\"); got {spec!r}")
    name, values = spec
    if not isinstance(name, str):
        raise ValueError(f"An axis type is a name like \"Steps\" or \"CFG Scale\"; got {name!r}")
    axis = resolve_axis(name)
    try:
        parsed = axis.parse(values)
    except ValueError as e:
        raise ValueError(f"Axis {axis.name!r}: {e}") from None
    if axis.name == "Seed" or axis.name == "Var. seed":
        parsed = [random.randrange(MAX_SEED) if v == -1 else v for v in parsed]
    return axis, parsed


def plan_xyz(x=None, y=None, z=None, *, limit_mp: float | None = 200.0, checkpoints=None, vaes=None,
             upscalers: Collection[str] = (), font_size: int | None = None, no_fixed_seeds: bool = False,
             **params) -> GridPlan:
    """Parse the axes, build and validate every cell's parameters, size the grid; refuse an impossible grid.

    A random ``seed``/``subseed`` (-1) is drawn once for the whole grid, as A1111's X/Y/Z plot does unless "Keep -1
    for seeds" (``no_fixed_seeds=True``) is on: cells then differ only by their axes.

    ``checkpoints``/``vaes``: names that the Checkpoint name / VAE axes may use (None: those axes are refused).
    ``upscalers``: registered upscaler names that ``hr_upscaler`` and the Hires upscaler axis may use besides the
    built-in ones (a session's ``session.upscalers.files``).
    """
    axes = [_axis_values(x), _axis_values(y), _axis_values(z)]
    for axis, values in axes:
        if axis.kind == "model":
            _check_names(axis, values, checkpoints, "checkpoint")
        if axis.kind == "vae":
            _check_names(axis, values, vaes, "VAE")
    base = GenerationParams.from_kwargs(**params, known_upscalers=upscalers)  # the base before the cells
    if not no_fixed_seeds:  # A1111: modules.processing.fix_seed(p) before the grid
        params = {**params, "seed": fix_seed(base.seed), "subseed": fix_seed(base.subseed)}
    _refuse_too_many_cells(axes, base, limit_mp)
    base_dict = {**params}
    cells, sizes = {}, {}
    for ix, iy, iz in itertools.product(*(range(len(v)) for _, v in axes)):
        cell = dict(base_dict)
        for (axis, values), i in zip(axes, (ix, iy, iz)):
            if axis.kind in ("model", "vae"):
                cell.setdefault("_load", {})[axis.kind] = values[i]
                continue
            cell.update(axis.changes(base_dict if axis.kind != "str" or axis.field != "styles" else cell,
                                     values[i], values))
        validated = {k: v for k, v in cell.items() if k != "_load"}
        try:
            GenerationParams.from_kwargs(**validated, known_upscalers=upscalers)
        except (ValueError, TypeError) as e:
            labels = ", ".join(a.label(vs[i]) for (a, vs), i in zip(axes, (ix, iy, iz)) if a.name != "Nothing")
            raise ValueError(f"Grid cell ({labels}) is not valid: {e}") from None
        cells[(ix, iy, iz)] = cell
        sizes[(ix, iy, iz)] = final_size(validated)
    nx, ny, nz = (len(v) for _, v in axes)
    labelled = nx > 1 or ny > 1
    if font_size is None:  # A1111 sizes label text to the images: (width + height) // 25
        mean_w = sum(w for w, _ in sizes.values()) / len(sizes)
        mean_h = sum(h for _, h in sizes.values()) / len(sizes)
        font_size = int(min(48, max(10, (mean_w + mean_h) // 25)))
    grid_sizes = []
    for iz in range(nz):
        col_w = [max(sizes[(ix, iy, iz)][0] for iy in range(ny)) for ix in range(nx)]
        row_h = [max(sizes[(ix, iy, iz)][1] for ix in range(nx)) for iy in range(ny)]
        w, h, _, _ = grid_layout(col_w, row_h, labelled, font_size, title=nz > 1)
        grid_sizes.append((w, h))
    images = base.batch_size * base.n_iter
    # Costlier axes outermost; among equals A1111's order (z, then y, then x).
    nesting = sorted(range(3), key=lambda k: (-axes[k][0].cost, -k))
    order = [tuple(idx[nesting.index(k)] for k in range(3))
             for idx in itertools.product(*(range(len(axes[k][1])) for k in nesting))]
    plan = GridPlan(axes, cells, images, sizes, grid_sizes, limit_mp, order, {**base.to_dict(), **params}, font_size)
    if limit_mp is not None and plan.grid_mp > limit_mp:
        raise ValueError(_too_large(plan))
    return plan


MAX_CELLS = 100_000


def _refuse_too_many_cells(axes: list[tuple[Axis, list]], base: GenerationParams, limit_mp: float | None) -> None:
    """Refuse from the counts alone, before any cell is built: even at the smallest cell size the grid is too big."""
    count = math.prod(len(values) for _, values in axes)
    sizes = [(base.width, base.height)]
    for axis, values in axes:
        if axis.kind == "size":
            sizes += [tuple(int(n) for n in v.lower().split("x")) for v in values]
    smallest_mp = min(w * h for w, h in sizes) / 1e6
    names = " × ".join(f"{len(vs)} {a.name}" for a, vs in axes if a.name != "Nothing")
    if count > MAX_CELLS:
        raise ValueError(f"The grid has {count:,} cells ({names}), more than the {MAX_CELLS:,} a grid may have. "
                         "Nothing was generated. Fix: use fewer axis values.")
    # Up to a thousand cells are cheap to build, and the full check below then names the better fix (split by Z).
    if limit_mp is not None and count > 1_000 and count * smallest_mp > limit_mp:
        raise ValueError(f"The grid would be at least {count * smallest_mp:,.0f} MP ({count:,} cells: {names}, of at "
                         f"least {smallest_mp:.2f} MP each), over the {limit_mp} MP limit. Nothing was generated. "
                         "Fix: use fewer axis values, or raise limit_mp.")


def _check_names(axis: Axis, values, known, what: str) -> None:
    if known is None:
        raise ValueError(f"Axis {axis.name!r} needs a session with a models folder (Session(models_dir=...)).")
    for v in values:
        if v not in known:
            raise ValueError(f"Axis {axis.name!r}: unknown {what} {v!r}.{suggest(str(v), known)} "
                             f"Available: {', '.join(known) or 'none'}.")


def _too_large(plan: GridPlan) -> str:
    (xa, xs), (ya, ys), (za, zs) = plan.axes
    biggest = max(w * h for w, h in plan.grid_sizes) / 1e6
    fix = []
    if len(zs) > 1 and biggest <= plan.limit_mp:
        fix.append(f"each X×Y grid fits ({biggest:.0f} MP): split by Z (run one Z value at a time)")
    fix.append("or pass save_grid=False to generate and save the cells only")
    fix.append(f"or raise limit_mp (now {plan.limit_mp})")
    return (f"The grid would be {plan.grid_mp:.0f} MP ({len(xs)}×{len(ys)}×{len(zs)} cells of up to "
            f"{max(w for w, _ in plan.sizes.values())}x{max(h for _, h in plan.sizes.values())} px, hires and Size "
            f"axes counted), over the {plan.limit_mp} MP limit. Nothing was generated. Fix: " + "; ".join(fix) + ".")


@dataclass
class GridResult:
    """A grid in progress or finished: ``cells[x][y][z]`` are Results (None until generated)."""

    plan: GridPlan
    cells: list = field(default_factory=list)
    grids: list = field(default_factory=list)
    interrupted: bool = False
    paths: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what happened on the way (a worker died, a cell was retried...)
    _resume: Callable | None = None

    @property
    def grid(self):
        """The grid image (the first Z value's when there are several)."""
        return self.grids[0] if self.grids else None

    @property
    def infotext(self) -> str | None:
        """A1111 writes the first cell's infotext into the grid."""
        for ix, iy, iz in self.plan.order:
            r = self.cells[ix][iy][iz]
            if r is not None and r.infotexts:
                return r.infotexts[0]
        return None

    @property
    def done(self) -> int:
        return sum(1 for ix, iy, iz in self.plan.order if self.cells[ix][iy][iz] is not None)

    def resume(self) -> GridResult:
        """Generate the cells an interruption left out; returns this GridResult, completed."""
        if self._resume is None:
            return self
        return self._resume()

    def _repr_html_(self) -> str:
        from ..io.inline import OUTPUT_BUDGET, data_uri

        parts = [f"<div><b>X/Y/Z grid</b>: {self.done}/{len(self.plan.order)} cells"
                 f"{' (interrupted: call .resume())' if self.interrupted else ''}"
                 f"{f' on {html.escape(self.plan.executor)}' if self.plan.executor else ''}</div>"]
        parts += [f'<div style="color:#b45309">&#9888; {html.escape(n)}</div>' for n in self.notes]
        for g in self.grids:
            src, note = data_uri(g, OUTPUT_BUDGET // max(len(self.grids), 1))  # the output stays under 1 MB
            parts.append(f'<img src="{src}" style="max-width:100%"/>')
            if note is not None:
                parts.append(f'<div style="color:#6b7280">Shown as {html.escape(note)} to keep this output under '
                             "1 MB (grid.grids and the saved grid are the full PNGs)</div>")
        return "".join(parts)


def assemble(result: GridResult) -> list:
    """Render one grid image per Z value from the cells generated so far."""
    (xa, xs), (ya, ys), (za, zs) = result.plan.axes
    base, font_size = result.plan.base, result.plan.font_size
    grids = []
    for iz in range(len(zs)):
        rows = []
        for iy in range(len(ys)):
            row = []
            for ix in range(len(xs)):
                r = result.cells[ix][iy][iz]
                row.append(r.images[0] if r is not None and r.images else None)
            rows.append(row)
        col_w = [max(result.plan.sizes[(ix, iy, iz)][0] for iy in range(len(ys))) for ix in range(len(xs))]
        row_h = [max(result.plan.sizes[(ix, iy, iz)][1] for ix in range(len(xs))) for iy in range(len(ys))]
        col_labels = [xa.label(v) for v in xs] if xa.name != "Nothing" else []
        row_labels = [ya.label(v) for v in ys] if ya.name != "Nothing" else []
        title = za.label(zs[iz]) if za.name != "Nothing" and len(zs) > 1 else None
        grids.append(draw_grid(rows, col_labels, row_labels, title=title, font_size=font_size,
                               col_highlight=[_differs(xa, v, base) for v in xs],
                               row_highlight=[_differs(ya, v, base) for v in ys],
                               cell_sizes=(col_w, row_h)))
    return grids


def _differs(axis: Axis, value, base: dict) -> bool:
    """Whether an axis value changes the base parameters (labels of unchanged values are drawn grey)."""
    if axis.field is None or axis.field not in base:
        return True
    current = base[axis.field]
    if axis.kind == "sampler":
        return value != resolve_sampler(str(current))[0]
    if isinstance(value, float) and isinstance(current, (int, float)):
        return not math.isclose(value, current)
    return value != current


__all__ = ["AXES", "Axis", "GridPlan", "GridResult", "assemble", "estimate_seconds", "expand_floats", "expand_ints",
           "final_size", "plan_xyz", "resolve_axis", "split_values", "SAMPLERS"]


def run_xyz(generate: Callable[[dict], Result], plan: GridPlan, *, outputs_dir: str | os.PathLike | None = None,
            progress: bool = True, save_grid: bool = True, show: bool | Callable = True,
            result: GridResult | None = None, run_cells: Callable | None = None) -> GridResult:
    """Generate the planned cells (skipping those already in ``result``), updating one inline display.

    ``generate(cell) -> Result`` makes one cell: ``cell`` is txt2img parameters plus, under ``"_load"``, the
    checkpoint/VAE the cell needs (``Session.xyz`` passes one that switches them and runs ``session.txt2img``).
    ``run_cells(items, notes)``, when given, runs the ``(key, cell)`` items elsewhere instead (an executor's: Ray
    workers), yielding ``(key, Result)`` as they finish, in any order, and appending what happened to ``notes``.
    The grid images are saved under ``outputs_dir/txt2img-grids`` (None: not saved); ``progress`` shows a bar;
    ``show``: True updates one inline display as cells arrive, a callable is called with the GridResult instead
    (the panel's X/Y/Z tab). A cell left empty (interrupted, or lost with a worker) leaves the grid
    ``interrupted``: ``resume()`` runs it.
    """
    (xa, xs), (ya, ys), (za, zs) = plan.axes
    if result is None:
        result = GridResult(plan, [[[None for _ in zs] for _ in ys] for _ in xs])
    result.interrupted = False
    handle = _display_handle(plan.executor) if show is True else _Callback(show) if callable(show) else None
    if isinstance(handle, _Callback):
        handle.result = result
    todo = [key for key in plan.order if result.cells[key[0]][key[1]][key[2]] is None]
    items = [(key, plan.cells[key]) for key in todo]
    stream = run_cells(items, result.notes) if run_cells is not None else _one_by_one(generate, items)
    from .progress import progress_bar  # tqdm's, with an output right where widgets don't show

    bar = progress_bar(len(plan.order), "X/Y/Z grid", initial=len(plan.order) - len(todo), disable=not progress)
    try:
        for (ix, iy, iz), r in stream:
            if r.interrupted:  # stopped part-way: not a cell of the grid
                result.interrupted = True
                continue
            result.cells[ix][iy][iz] = r
            bar.update(1)
            if handle is not None:
                result.grids = assemble(result)
                handle.update(result)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        stream.close()
        bar.close()
    result.interrupted = result.interrupted or result.done < len(plan.order)
    result.grids = assemble(result)
    if handle is not None:
        handle.update(result)
    if save_grid and not result.interrupted and outputs_dir is not None and result.infotext:
        from ..io.outputs import save_image

        first = next(result.cells[ix][iy][iz] for ix, iy, iz in plan.order)
        result.paths = [save_image(g, Path(outputs_dir) / "txt2img-grids", seed=first.seeds[0],
                                   infotext=result.infotext) for g in result.grids]
    result._resume = lambda: run_xyz(generate, plan, outputs_dir=outputs_dir, progress=progress,
                                     save_grid=save_grid, show=show, result=result)
    return result


class _Callback:
    """A display handle that hands the GridResult to a function (``run_xyz(show=fn)``)."""

    def __init__(self, fn: Callable):
        self.fn, self.result = fn, None

    def update(self, shown) -> None:
        self.fn(self.result)


def _one_by_one(generate: Callable[[dict], Result], items: list) -> Iterator[tuple]:
    """The local run: cells in plan order, stopping after an interrupted one."""
    for key, cell in items:
        r = generate(cell)
        yield key, r
        if r.interrupted:
            return


def _display_handle(where: str | None = None):
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return None
    if get_ipython() is None:
        return None
    return display(f"X/Y/Z grid: waiting for the first cell{f' (on {where})' if where else ''}…", display_id=True)
