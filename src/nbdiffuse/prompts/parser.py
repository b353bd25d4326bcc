"""A1111 (stable-diffusion-webui v1.10.1) prompt language, reimplemented as pure functions.

Pipeline, in A1111's order (see ``A1111.md``, "Prompt language")::

    apply_styles (:mod:`.styles`) -> extract_extra_networks -> split_and -> schedule (per AND part)
    -> parse_attention

Everything here is total on strings: no function raises on any input text. Where A1111 itself crashes on a
pathological input (an emphasis weight such as ``(x:.)``, a schedule number such as ``1e999``) we pick a
documented, non-raising behaviour instead; every other output matches A1111 exactly.

This is an independent implementation: the schedule grammar is parsed by a small single-pass,
non-recursive bracket parser (no ``lark`` dependency), the emphasis tokeniser uses the regular
expressions given in the spec.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BREAK",
    "ExtraNetwork",
    "extract_extra_networks",
    "get_schedules",
    "parse_attention",
    "schedule",
    "split_and",
]

BREAK = "BREAK"

# --------------------------------------------------------------------------------------------------
# Emphasis: (x) (x:w) [x], escapes, BREAK
# --------------------------------------------------------------------------------------------------

# Tokeniser from the spec; alternatives are tried in this order at every position.
_RE_ATTENTION = re.compile(
    r"""
    \\\(            # escaped (
  | \\\)            # escaped )
  | \\\[            # escaped [
  | \\]             # escaped ]
  | \\\\            # escaped backslash
  | \\              # any other backslash: dropped (yields empty text)
  | \(
  | \[
  | :\s*([+-]?[.\d]+)\s*\)   # explicit weight, closes the innermost open "("
  | \)
  | ]
  | [^\\()\[\]:]+   # plain text
  | :
    """,
    re.VERBOSE,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

_ROUND = 1.1
_SQUARE = 1 / 1.1


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(fragment, weight)`` runs, A1111's ``parse_prompt_attention``.

    * ``(x)`` multiplies by 1.1, ``[x]`` by ``1/1.1``, ``(x:w)`` by ``w``. A multiplier is applied when its
      bracket closes, to every fragment produced since it opened, so nesting multiplies in closing order
      (``((x))`` is ``1.1 * 1.1 == 1.2100000000000002``).
    * Brackets still open at the end apply to the end: first the open ``(`` in opening order, then the
      open ``[``.
    * A closer with no open bracket of its kind is literal text. ``(`` and ``[`` are tracked on separate
      stacks, so ``(a [b) c]`` closes ``(`` at ``)`` and ``[`` at ``]``.
    * ``:w)`` is a weight only while some ``(`` is open (else it is literal text); inside ``[...]`` alone a
      ``:`` is literal (``[x:0.5]`` is ``x:0.5`` at ``1/1.1``).
    * ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal characters; any other backslash is dropped.
    * ``BREAK`` (a whole word, uppercase) inside a text run becomes ``("BREAK", -1.0)``, eating the
      whitespace around it. The entry is multiplied like any other, so inside brackets it is no longer
      exactly ``-1`` (``(a BREAK b)`` gives ``("BREAK", -1.1...)``), which a chunker must treat as the plain
      word "break" with that weight -- exactly what A1111 does.
    * Adjacent runs of equal weight are merged; an empty result is ``[("", 1.0)]``.

    Deviation (A1111 raises ``ValueError``): a weight that is not a number, such as ``(x:.)`` or
    ``(x:1.2.3)``, is treated as if the weight alternative had not matched: ``:.`` is literal text and the
    ``)`` closes with 1.1.

    >>> parse_attention("a (red:1.5) [circle]")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('circle', 0.9090909090909091)]
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for entry in res[start:]:
            entry[1] *= factor

    def add_text(chunk: str) -> None:
        for i, part in enumerate(_RE_BREAK.split(chunk)):
            if i:
                res.append([BREAK, -1.0])
            res.append([part, 1.0])

    for m in _RE_ATTENTION.finditer(text):
        tok = m.group(0)
        weight = m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(res))
        elif tok == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                add_text(tok[:-1])
                multiply(round_open.pop(), _ROUND)
            else:
                multiply(round_open.pop(), factor)
        elif tok == ")" and round_open:
            multiply(round_open.pop(), _ROUND)
        elif tok == "]" and square_open:
            multiply(square_open.pop(), _SQUARE)
        else:
            add_text(tok)

    for pos in round_open:
        multiply(pos, _ROUND)
    for pos in square_open:
        multiply(pos, _SQUARE)

    if not res:
        return [("", 1.0)]

    merged: list[list] = [res[0]]
    for entry in res[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return [(t, float(w)) for t, w in merged]


# --------------------------------------------------------------------------------------------------
# Prompt editing / alternation: [a:b:N] [a:N] [a::N] [:b:N] [a|b|c]
# --------------------------------------------------------------------------------------------------

# lark's common.SIGNED_NUMBER (ASCII digits), padded by optional whitespace, as the last field of [..:N].
_RE_SCHED_NUMBER = re.compile(
    r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?))\s*"
)


class _Scheduled:
    __slots__ = ("before", "after", "number", "when")

    def __init__(self, before: list | None, after: list, number: str) -> None:
        self.before = before  # None when written as [after:N]
        self.after = after
        self.number = number
        self.when: float = 0


class _Alternate:
    __slots__ = ("options",)

    def __init__(self, options: list[list]) -> None:
        self.options = options


class _Frame:
    """An open ``(`` or ``[`` whose closer has not been seen yet."""

    __slots__ = ("opener", "segments", "seps")

    def __init__(self, opener: str) -> None:
        self.opener = opener
        self.segments: list[list] = [[]]
        self.seps: list[str] = []

    def flatten(self) -> list:
        out: list = [self.opener]
        for i, seg in enumerate(self.segments):
            if i:
                out.append(self.seps[i - 1])
            out.extend(seg)
        return out


class _Unparsable(Exception):
    pass


def _close(frame: _Frame, closer: str) -> list | None:
    """Items replacing a frame closed by ``closer``, or None if the bracket is not a valid construct."""
    segs, seps = frame.segments, frame.seps
    if frame.opener == "(":
        if closer != ")":
            return None
        # emphasized: "(" prompt ")" | "(" prompt ":" prompt ")"   (at most one ":", enforced on push)
        return ["(", *segs[0], *([":", *segs[1]] if seps else []), ")"]
    if closer != "]":
        return None
    if not seps:  # emphasized: "[" prompt "]"
        return ["[", *segs[0], "]"]
    if seps[0] == "|":  # alternate: "[" prompt ("|" [prompt])+ "]"
        return [_Alternate(segs)]
    # scheduled: "[" [prompt ":"] prompt ":" NUMBER "]"
    last = segs[-1]
    if not all(isinstance(x, str) for x in last):
        return None
    m = _RE_SCHED_NUMBER.fullmatch("".join(last))
    if m is None:
        return None
    before = segs[0] if len(seps) == 2 else None
    return [_Scheduled(before, segs[-2], m.group(1))]


def _parse_schedule_tree(prompt: str) -> list:
    """Parse into a list of str / _Scheduled / _Alternate; raise _Unparsable where A1111's grammar fails.

    A1111's grammar (``!start: (prompt | /[][():]/+)*``) accepts stray ``[ ] ( ) :`` characters at the top
    level only; inside a bracket construct everything must nest. A bracket construct's extent is fixed by
    nesting, so a construct that fails makes every construct enclosing it fail too: on failure all open
    brackets become literal text and scanning continues at the top level. Constructs that did close stay
    constructs, and a construct is always preferred to reading its brackets as stray text (``[a:3]]`` is a
    schedule then a literal ``]``; ``[[a:b:5]:c:3]`` is one schedule). A1111's Earley parser has no fixed
    preference there: which reading it picks for such ambiguous prompts depends on Python's hash seed, so
    it varies between A1111 processes; ours is always one of its possible results. A ``|``
    that ends up outside an alternation, or a backslash followed by a newline or by nothing, makes the whole
    prompt unparsable.
    """
    top: list = []
    frames: list[_Frame] = []
    buf: list[str] = []  # pending plain text
    n = len(prompt)
    i = 0

    def target() -> list:
        return frames[-1].segments[-1] if frames else top

    def flush() -> None:
        if buf:
            target().append("".join(buf))
            buf.clear()

    def fail_all() -> None:
        flush()
        for fr in frames:
            if "|" in fr.seps:
                raise _Unparsable
            top.extend(fr.flatten())
        frames.clear()

    while i < n:
        c = prompt[i]
        if c == "\\":
            if i + 1 >= n or prompt[i + 1] == "\n":
                raise _Unparsable
            buf.append(prompt[i : i + 2])
            i += 2
            continue
        if c not in "()[]:|":
            buf.append(c)
            i += 1
            continue
        flush()
        if c in "([":
            frames.append(_Frame(c))
        elif not frames:
            if c == "|":
                raise _Unparsable
            top.append(c)  # stray ) ] :
        elif c in ")]":
            items = _close(frames[-1], c)
            if items is None:
                fail_all()
                top.append(c)
            else:
                frames.pop()
                target().extend(items)
        else:  # ":" or "|" inside a bracket
            fr = frames[-1]
            ok = (
                (fr.opener == "[" and (not fr.seps or fr.seps[0] == "|"))
                if c == "|"
                else (not fr.seps if fr.opener == "(" else (len(fr.seps) < 2 and "|" not in fr.seps))
            )
            if ok:
                fr.seps.append(c)
                fr.segments.append([])
            else:
                fail_all()
                if c == "|":
                    raise _Unparsable
                top.append(c)
        i += 1
    fail_all()
    return top


def _walk(tree: list) -> Iterable:
    """Every _Scheduled / _Alternate node, iteratively (prompts may nest deeply)."""
    stack = [tree]
    while stack:
        for item in stack.pop():
            if isinstance(item, _Scheduled):
                yield item
                if item.before is not None:
                    stack.append(item.before)
                stack.append(item.after)
            elif isinstance(item, _Alternate):
                yield item
                stack.extend(item.options)


def _render(tree: list, step: int) -> str:
    out: list[str] = []
    stack = [iter(tree)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, _Scheduled):
                stack.append(iter((item.before or []) if step <= item.when else item.after))
                break
            else:
                stack.append(iter(item.options[(step - 1) % len(item.options)]))
                break
        else:
            stack.pop()
    return "".join(out)


def _when(number: str, steps: int, int_offset: int, flt_offset: float, use_old_scheduling: bool) -> float:
    v = float(number)
    if use_old_scheduling:
        v = v * steps if v < 1 else v
    elif "." in number:
        v = (v - flt_offset) * steps
    else:
        v = v - int_offset
    # A1111: min(steps, int(v)). int() of inf/nan raises there; we clamp instead.
    if math.isnan(v):
        return steps
    if v >= steps:
        return steps
    if math.isinf(v):
        return -math.inf
    return int(v)


def get_schedules(
    prompts: Sequence[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[tuple[int, str]]]:
    """:func:`schedule` for several prompts (A1111's ``get_learned_conditioning_prompt_schedules``)."""
    return [schedule(p, steps, hires_steps, use_old_scheduling=use_old_scheduling) for p in prompts]


def schedule(
    prompt: str,
    steps: int,
    hires_steps: int | None = None,
    *,
    use_old_scheduling: bool = False,
) -> list[tuple[int, str]]:
    """Resolve prompt editing and alternation into ``[(end_step, text), ...]``.

    The text for sampling step ``t`` (1-based) is the one of the first entry with ``end_step >= t``. Entries
    are sorted, end steps strictly increase and the last one is the pass's step count. Emphasis brackets,
    weights and escapes are kept verbatim (they are for :func:`parse_attention`).

    ``[before:after:N]`` renders ``before`` while ``t <= when`` and ``after`` from then on; ``[after:N]`` is
    ``[:after:N]`` (added after ``when``), ``[before::N]`` removes it. ``[a|b|c]`` renders
    ``options[(t - 1) % 3]`` and puts a boundary at every step. Nesting is allowed. ``N`` with a ``.`` in
    its text is a fraction, otherwise (``5``, ``5e-1``) an absolute step:

    * first pass (``hires_steps is None``), ``S = steps``: ``when = min(S, int(N * S))`` for a fraction,
      ``min(S, int(N))`` for an integer.
    * hires pass (``hires_steps`` given), ``S = hires_steps``, returned steps count hires steps 1..S:
      fractions run from 1 to 2 over the hires pass, ``when = min(S, int((N - 1) * S))``; integers count on
      from the end of the first pass, ``when = min(S, int(N - steps))``. Example with ``steps=20,
      hires_steps=10``: ``[a:b:1.5]`` and ``[a:b:25]`` are both ``[(5, "a"), (10, "b")]`` (``b`` from hires
      step 6); ``[a:b:0.5]`` and ``[a:b:15]`` are ``b`` for the whole hires pass.

    A schedule contributes a boundary only if ``when >= 1``; e.g. at 20 steps ``[a:b:1.0]`` is ``a``
    throughout, ``[a:b:0.01]`` (``when = 0``) and ``[a:b:5e-1]`` (``int(0.5) = 0``) are ``b`` throughout.

    Stray brackets at the top level are literal text; where a prompt could be read either way (``x [a:3]]``)
    the bracket construct wins (A1111's choice there varies from process to process).

    ``steps`` is the sampler's total step count (second-order samplers count double). A prompt that does
    not parse (a ``|`` outside ``[...]``, a trailing backslash) is returned unchanged as
    ``[(S, prompt)]``. ``use_old_scheduling`` is A1111's pre-1.6 option (``N < 1`` is a fraction of
    ``steps``, else absolute; hires offsets ignored).

    Deviation (A1111 raises ``OverflowError``): an ``N`` that overflows a float (``1e999``) is clamped.

    >>> schedule("a [red:blue:0.5] circle", 10)
    [(5, 'a red circle'), (10, 'a blue circle')]
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, total = 0, 0.0, steps
    else:
        int_offset, flt_offset, total = steps, 1.0, hires_steps
    try:
        tree = _parse_schedule_tree(prompt)
    except _Unparsable:
        return [(total, prompt)]

    bounds = {total}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            node.when = _when(node.number, total, int_offset, flt_offset, use_old_scheduling)
            if node.when >= 1:
                bounds.add(int(node.when))
        else:
            bounds.update(range(1, total + 1))
    return [(t, _render(tree, t)) for t in sorted(bounds)]


# --------------------------------------------------------------------------------------------------
# AND
# --------------------------------------------------------------------------------------------------

_RE_AND = re.compile(r"\bAND\b")
_RE_PART_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split on the word ``AND`` (case-sensitive) into ``(text, weight)`` parts.

    A trailing ``:number`` (and the whitespace around it) is the part's weight, default 1.0; trailing
    whitespace is removed, leading whitespace is kept exactly as A1111 keeps it (it does not change the
    tokens): ``"a cat :1.2 AND a dog"`` -> ``[("a cat", 1.2), (" a dog", 1.0)]``. Empty parts are kept.

    >>> split_and("a cat AND a dog:0.5")
    [('a cat', 1.0), (' a dog', 0.5)]
    """
    out = []
    for part in _RE_AND.split(prompt):
        m = _RE_PART_WEIGHT.match(part)
        if m is None:  # cannot happen: every group is optional
            out.append((part, 1.0))
            continue
        text, weight = m.groups()
        try:
            w = float(weight) if weight is not None else 1.0
        except ValueError:
            text, w = part, 1.0
        out.append((text, w))
    return out


# --------------------------------------------------------------------------------------------------
# Extra networks: <lora:name:weights...>
# --------------------------------------------------------------------------------------------------

_RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetwork:
    """One ``<kind:item:item...>`` tag; ``items`` is the text after ``kind:`` split on ``:``."""

    kind: str
    items: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The first item (for ``<lora:detail:0.6>``, ``"detail"``)."""
        return self.items[0] if self.items else ""

    @property
    def args(self) -> list[str]:
        """The items after the name, as written."""
        return self.items[1:]

    @property
    def positional(self) -> list[str]:
        """Items that are not ``key=value`` (A1111's ``ExtraNetworkParams.positional``), name included."""
        return [it for it in self.items if len(it.split("=", 2)) != 2]

    @property
    def named(self) -> dict[str, str]:
        """``key=value`` items (A1111's ``ExtraNetworkParams.named``), e.g. ``te=0.5``."""
        out = {}
        for it in self.items:
            parts = it.split("=", 2)
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out

    @property
    def weights(self) -> list[float | None]:
        """Positional items after the name as floats (``None`` where not a number); for a LoRA
        ``weights[0]`` is the text-encoder multiplier and ``weights[1]`` the UNet one."""
        out: list[float | None] = []
        for it in self.positional[1:]:
            try:
                out.append(float(it))
            except ValueError:
                out.append(None)
        return out


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove every ``<kind:args>`` tag (regex ``<(\\w+):([^>]+)>``); return the rest and the tags in order.

    Only the tag is removed, surrounding whitespace and commas stay: ``"a <lora:x:1> b"`` -> ``"a  b"``.

    >>> extract_extra_networks("a cat <lora:detail:0.6>")
    ('a cat ', [ExtraNetwork(kind='lora', items=['detail', '0.6'])])
    """
    found: list[ExtraNetwork] = []

    def take(m: re.Match) -> str:
        found.append(ExtraNetwork(m.group(1), m.group(2).split(":")))
        return ""

    return _RE_EXTRA_NET.sub(take, prompt), found
