"""What a prompt turns into: AND parts, the schedule over the steps, 75-token chunks and per-token weights."""

from __future__ import annotations

import html
from dataclasses import dataclass

from ..prompts.conditioning import CHUNK, PromptChunk, count_tokens, tokenize_chunks
from ..prompts.parser import extract_extra_networks, schedule, split_and

_PALETTE = ["#fde68a", "#bfdbfe", "#bbf7d0", "#fecaca", "#ddd6fe", "#fbcfe8", "#fed7aa", "#c7d2fe"]


@dataclass
class ScheduledText:
    """One text in force up to ``end`` (1-based, inclusive), with its chunks."""

    start: int
    end: int
    text: str
    chunks: list[PromptChunk]


@dataclass
class PromptPart:
    """One ``AND`` part: its weight and its schedule."""

    text: str
    weight: float
    schedule: list[ScheduledText]


@dataclass
class PromptExplanation:
    """A prompt as the model sees it; renders as tables and a timeline in a notebook.

    >>> explain_prompt("a [red:blue:0.5] ball, (shiny:1.3) AND a tree :0.8", steps=20)   # doctest: +SKIP
    """

    prompt: str
    steps: int
    parts: list[PromptPart]
    networks: list
    counter: str
    tokenizer: object

    def token_rows(self, chunk: PromptChunk) -> list[tuple[int, str, float]]:
        """``(id, token text, weight)`` for the real tokens of a chunk (no BOS, EOS or padding)."""
        rows = []
        eos = self.tokenizer.eos_token_id
        for token, weight in zip(chunk.tokens[1:-1], chunk.weights[1:-1]):
            if token == eos:
                break
            rows.append((token, self.tokenizer.convert_ids_to_tokens(token).replace("</w>", " "), weight))
        return rows

    def _repr_html_(self) -> str:
        out = [f"<div><b>Prompt</b> <code>{html.escape(self.prompt)}</code> &nbsp; tokens: <b>{self.counter}</b>, "
               f"steps: {self.steps}</div>"]
        if self.networks:
            tags = ", ".join(html.escape(f"<{n.kind}:{':'.join(n.items)}>") for n in self.networks)
            out.append(f"<div>extra networks (removed from the text): {tags}</div>")
        for k, part in enumerate(self.parts):
            if len(self.parts) > 1:
                out.append(f"<div style='margin-top:6px'><b>AND part {k + 1}</b>, weight {part.weight:g}: "
                           f"<code>{html.escape(part.text)}</code></div>")
            out.append(self._timeline_html(part))
            for n, entry in enumerate(part.schedule):
                colour = _PALETTE[n % len(_PALETTE)]
                out.append(f"<div style='margin-top:4px'><span style='background:{colour};padding:0 4px'>"
                           f"steps {entry.start}–{entry.end}</span> <code>{html.escape(entry.text)}</code></div>")
                for c, chunk in enumerate(entry.chunks):
                    cells = []
                    for token, text, weight in self.token_rows(chunk):
                        shade = "#fee2e2" if weight > 1 else "#e0f2fe" if weight < 1 else "#f3f4f6"
                        cells.append(f"<td style='background:{shade};padding:2px 4px;text-align:center'>"
                                     f"{html.escape(text)}<br><small>{weight:.3g}</small><br>"
                                     f"<small style='color:#6b7280'>{token}</small></td>")
                    out.append(f"<div style='font-size:11px'>chunk {c + 1} ({len(cells)}/{CHUNK} tokens)</div>"
                               f"<table style='border-collapse:separate;border-spacing:2px'><tr>{''.join(cells)}"
                               "</tr></table>")
        return "".join(out)

    def _timeline_html(self, part: PromptPart) -> str:
        bars = []
        for n, entry in enumerate(part.schedule):
            width = 100.0 * (entry.end - entry.start + 1) / self.steps
            colour = _PALETTE[n % len(_PALETTE)]
            bars.append(f"<div title='steps {entry.start}-{entry.end}: {html.escape(entry.text)}' "
                        f"style='width:{width:.3f}%;background:{colour};overflow:hidden;white-space:nowrap;"
                        f"font-size:11px;padding:2px'>{html.escape(entry.text)}</div>")
        return f"<div style='display:flex;border:1px solid #9ca3af;margin:4px 0'>{''.join(bars)}</div>"

    def timeline(self, ax=None):
        """A matplotlib figure of the schedule: one row per AND part, one bar per scheduled text."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(self.parts)))
        for row, part in enumerate(self.parts):
            for n, entry in enumerate(part.schedule):
                ax.barh(row, entry.end - entry.start + 1, left=entry.start - 0.5,
                        color=_PALETTE[n % len(_PALETTE)], edgecolor="#374151")
                ax.text(entry.start - 0.3, row, entry.text[:40], va="center", fontsize=8)
        ax.set_yticks(range(len(self.parts)), [f"part {k + 1} (w {p.weight:g})" for k, p in enumerate(self.parts)])
        ax.set_xlim(0.5, self.steps + 0.5)
        ax.set_xlabel("step")
        ax.invert_yaxis()
        return ax.figure


def explain_prompt(prompt: str, steps: int = 20, tokenizer=None, hires_steps: int | None = None) -> PromptExplanation:
    """Break a prompt down exactly as generation does (the same functions, not a re-implementation).

    >>> explain_prompt("a [red:blue:0.5] (circle:1.3) BREAK on a white background", steps=20)  # doctest: +SKIP
    """
    if tokenizer is None:
        from ..models.tokenizer import clip_tokenizer

        tokenizer = clip_tokenizer()
    text, networks = extract_extra_networks(prompt)
    parts = []
    for part, weight in split_and(text):
        entries, start = [], 1
        for end, scheduled in schedule(part, steps, hires_steps):
            chunks, _ = tokenize_chunks(scheduled, tokenizer)
            entries.append(ScheduledText(start, end, scheduled, chunks))
            start = end + 1
        parts.append(PromptPart(part, weight, entries))
    total = hires_steps if hires_steps is not None else steps
    return PromptExplanation(prompt, total, parts, networks, str(count_tokens(prompt, tokenizer)), tokenizer)
