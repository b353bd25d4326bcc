"""Text -> UNet conditioning, the way A1111 encodes prompts.

A prompt is tokenised into 75-token chunks (``BREAK`` and comma backtracking decide where a chunk ends), each
chunk is encoded as ``[BOS] + 75 tokens + [EOS]`` (padding after the first EOS with the encoder's pad id), token
weights from the emphasis syntax scale the hidden states, and the chunks are concatenated on the token axis, so
prompts of any length work. SDXL concatenates CLIP-L's and OpenCLIP-bigG's penultimate hidden states (2048
features) and takes the pooled embedding from bigG's first chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .parser import parse_attention, schedule, split_and

CHUNK = 75
COMMA_BACKTRACK = 20
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass(frozen=True)
class Cond:
    """One text encoded for the UNet: ``context`` (tokens, features) and, for SDXL, ``pooled`` (features,)."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return int(self.context.shape[-2])


@dataclass
class PromptChunk:
    """One 77-token chunk: ids (with BOS/EOS/padding) and the weight of each position."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenCount:
    """A1111's prompt token counter: ``str()`` gives ``"76/150"``."""

    tokens: int
    chunks: int

    @property
    def limit(self) -> int:
        return math.ceil(max(self.tokens, 1) / CHUNK) * CHUNK

    def __str__(self) -> str:
        return f"{self.tokens}/{self.limit}"


def tokenize_chunks(text: str, tokenizer, emphasis: str = "Original",
                    pad_id: int | None = None) -> tuple[list[PromptChunk], int]:
    """Split ``text`` into 77-token chunks as A1111 does; returns ``(chunks, token_count)``.

    ``token_count`` counts every non-final chunk as 75 and the last one by its real tokens (the UI counter).
    ``pad_id`` replaces the positions after the first EOS (0 for OpenCLIP encoders); default: EOS.
    """
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"emphasis={emphasis!r} is not valid: choose one of {', '.join(EMPHASIS_MODES)}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    parsed = parse_attention(text) if emphasis != "None" else [(text, 1.0)]
    tokenized = tokenizer([t for t, _ in parsed], truncation=False, add_special_tokens=False,
                          verbose=False)["input_ids"]
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, count, last_comma
        count += len(chunk.tokens) if is_last else CHUNK
        fill = CHUNK - len(chunk.tokens)
        chunk.tokens += [eos] * fill
        chunk.weights += [1.0] * fill
        chunk.tokens = [bos, *chunk.tokens, eos]
        chunk.weights = [1.0, *chunk.weights, 1.0]
        if pad_id is not None and pad_id != eos:
            first = chunk.tokens.index(eos)
            chunk.tokens[first + 1:] = [pad_id] * (len(chunk.tokens) - first - 1)
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for ids, (piece, weight) in zip(tokenized, parsed):
        if piece == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in ids:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == CHUNK and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                next_chunk()
                chunk.tokens, chunk.weights = moved_tokens, moved_weights
            if len(chunk.tokens) == CHUNK:
                next_chunk()
            chunk.tokens.append(token)
            chunk.weights.append(weight if emphasis != "Ignore" else 1.0)
    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, count


def count_tokens(prompt: str, tokenizer=None) -> TokenCount:
    """A1111's token counter for a prompt (its ``AND`` parts and schedules: the longest text counts).

    >>> str(count_tokens("a BREAK b"))
    '76/150'
    """
    if tokenizer is None:
        from .tokenizer import clip_tokenizer

        tokenizer = clip_tokenizer()
    from .parser import extract_extra_networks

    text, _ = extract_extra_networks(prompt)
    best = TokenCount(0, 1)
    for part, _w in split_and(text):
        for _, scheduled in schedule(part, 1000):
            chunks, n = tokenize_chunks(scheduled, tokenizer)
            if n > best.tokens:
                best = TokenCount(n, len(chunks))
    return best


def final_layer_norm(encoder) -> torch.nn.Module:
    """The text encoder's final LayerNorm (transformers 5 keeps it at the top level, 4 under ``text_model``)."""
    norm = getattr(encoder, "final_layer_norm", None)
    return norm if norm is not None else encoder.text_model.final_layer_norm


def _apply_weights(z: torch.Tensor, weights: torch.Tensor, emphasis: str) -> torch.Tensor:
    if emphasis in ("Ignore", "None") or bool((weights == 1).all()):
        return z
    original_mean = z.mean()
    z = z * weights.reshape(weights.shape + (1,)).to(z.dtype)
    if emphasis == "Original":
        z = z * (original_mean / z.mean())
    return z


class TextEncoder:
    """Encodes texts for one loaded model, A1111-style, with a cache per (text, settings).

    ``encode(text)`` gives a :class:`Cond` for one text (no ``AND``/schedule syntax left in it);
    :meth:`conds` and :meth:`uncond` turn whole prompts into schedules for the guidance closure.
    """

    def __init__(self, bundle, emphasis: str = "Original"):
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis={emphasis!r} is not valid: choose one of {', '.join(EMPHASIS_MODES)}")
        self.bundle = bundle
        self.emphasis = emphasis
        self.cache: dict[tuple, Cond] = {}
        self.calls = 0  # encoder forward passes (one per chunk and encoder)

    @property
    def tokenizer(self):
        return self.bundle.tokenizers[0]

    def _pad_id(self, index: int) -> int | None:
        tok = self.bundle.tokenizers[index]
        pad = tok.pad_token_id
        return pad if pad is not None and pad != tok.eos_token_id else None

    @torch.no_grad()
    def _encode_chunk(self, index: int, ids: list[int], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoder = self.bundle.text_encoders[index]
        device = next(encoder.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        self.calls += 1
        out = encoder(input_ids=input_ids, output_hidden_states=True)
        if self.bundle.arch == "sdxl":
            z = out.hidden_states[-2]
            pooled = out.text_embeds if index == 1 else None
            return z[0].float(), (pooled[0].float() if pooled is not None else None)
        if clip_skip > 1:
            z = final_layer_norm(encoder)(out.hidden_states[-clip_skip])
        else:
            z = out.last_hidden_state
        return z[0].float(), None

    def encode(self, text: str, clip_skip: int = 1) -> Cond:
        key = (text, clip_skip if self.bundle.arch != "sdxl" else 1, self.emphasis)
        if key in self.cache:
            return self.cache[key]
        contexts, pooled = [], None
        for index, _encoder in enumerate(self.bundle.text_encoders):
            chunks, _ = tokenize_chunks(text, self.bundle.tokenizers[index], self.emphasis, self._pad_id(index))
            zs = []
            for n, chunk in enumerate(chunks):
                z, p = self._encode_chunk(index, chunk.tokens, clip_skip)
                zs.append(_apply_weights(z, torch.tensor(chunk.weights, device=z.device), self.emphasis))
                if n == 0 and p is not None:
                    pooled = p
            contexts.append(torch.cat(zs, dim=0))
        cond = Cond(torch.cat(contexts, dim=-1), pooled)
        self.cache[key] = cond
        return cond

    def empty(self, clip_skip: int = 1) -> torch.Tensor:
        """The empty prompt's one-chunk context: A1111 pads shorter conditionings with it."""
        return self.encode("", clip_skip).context

    def schedule(self, text: str, steps: int, clip_skip: int = 1, hires_steps: int | None = None):
        """A prompt (no ``AND``) as ``[(end_step, Cond)]``."""
        return [(end, self.encode(t, clip_skip)) for end, t in schedule(text, steps, hires_steps)]

    def conds(self, prompt: str, steps: int, clip_skip: int = 1, hires_steps: int | None = None):
        """The positive prompt as ``[(schedule, weight)]``, one entry per ``AND`` part."""
        return [(self.schedule(part, steps, clip_skip, hires_steps), weight) for part, weight in split_and(prompt)]

    def uncond(self, prompt: str, steps: int, clip_skip: int = 1, hires_steps: int | None = None):
        """The negative prompt's schedule (negative prompts are never split on ``AND``)."""
        return self.schedule(prompt, steps, clip_skip, hires_steps)
