"""Text -> UNet conditioning, the way A1111 encodes prompts.

A prompt is tokenised into 75-token chunks (``BREAK`` and comma backtracking decide where a chunk ends), each
chunk is encoded as ``[BOS] + 75 tokens + [EOS]`` (padding after the first EOS with the encoder's pad id), token
weights from the emphasis syntax scale the hidden states, and the chunks are concatenated on the token axis, so
prompts of any length work. SDXL concatenates CLIP-L's and OpenCLIP-bigG's penultimate hidden states (2048
features) and takes the pooled embedding from bigG's first chunk.

Textual-inversion embeddings (:mod:`nbdiffuse.models.embeddings`): with ``embeddings=`` an embedding's name in the
text is replaced by placeholder positions (one per vector, id 0, A1111's ``PromptChunkFix``) recorded in
``PromptChunk.fixes``; :class:`TextEncoder` writes the vectors into the token embeddings at those positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..models.tokenizer import token_ids
from ..sampling.guidance import Cond
from .parser import parse_attention, schedule, split_and

CHUNK = 75
COMMA_BACKTRACK = 20
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass
class PromptChunk:
    """One 77-token chunk: ids (with BOS/EOS/padding) and the weight of each position.

    ``fixes``: ``(offset, Embedding)`` for each textual-inversion embedding in the chunk, A1111's
    ``PromptChunkFix``: ``offset`` counts from the first token after BOS, so the vectors occupy ``tokens[offset + 1 :
    offset + 1 + embedding.vector_count]`` (placeholder id 0 there).
    """

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list = field(default_factory=list)


@dataclass(frozen=True)
class TokenCount:
    """A1111's prompt token counter: ``str()`` gives ``"76/150"``.

    >>> count = count_tokens("a BREAK b")
    >>> count.tokens, count.chunks, str(count)
    (76, 2, '76/150')
    """

    tokens: int
    chunks: int

    @property
    def limit(self) -> int:
        return math.ceil(max(self.tokens, 1) / CHUNK) * CHUNK

    def __str__(self) -> str:
        return f"{self.tokens}/{self.limit}"


def _embedding_table(embeddings, tokenizer):
    """The name-token lookup for an :class:`~nbdiffuse.models.embeddings.EmbeddingDB` or a list of embeddings."""
    if not embeddings:
        return None
    if hasattr(embeddings, "lookup"):
        return embeddings.lookup(tokenizer)
    from nbdiffuse.models.embeddings import build_lookup

    return build_lookup(embeddings, tokenizer)


def tokenize_chunks(text: str, tokenizer=None, emphasis: str = "Original",
                    pad_id: int | None = None, embeddings=None) -> tuple[list[PromptChunk], int]:
    """Split ``text`` into 77-token chunks as A1111 does; returns ``(chunks, token_count)``.

    >>> chunks, count = tokenize_chunks("a (red:1.2) circle BREAK blue")   # CLIP-L's tokenizer by default
    >>> count, len(chunks), chunks[0].tokens[:5], chunks[0].weights[:4]
    (76, 2, [49406, 320, 736, 7117, 49407], [1.0, 1.0, 1.2, 1.0])

    ``token_count`` counts every non-final chunk as 75 and the last one by its real tokens (the UI counter).
    Each emphasis run is tokenised as A1111 does for ``tokenizer``'s encoder
    (:func:`~nbdiffuse.models.tokenizer.token_ids`: ftfy first, so ``，`` is a comma for the backtracking too).
    ``pad_id`` replaces the positions after the first EOS (0 for OpenCLIP encoders); default: EOS.

    ``embeddings`` (an ``EmbeddingDB`` or a list of ``Embedding``): where an embedding's name tokens occur (longest
    match first) they become ``vector_count`` placeholder positions with the weight of the text they are in, noted
    in ``chunk.fixes``; an embedding that does not fit in the current chunk starts the next one (A1111's
    ``tokenize_line``). One difference from A1111: when comma backtracking moves the tail of a full chunk to the
    next chunk, the fixes in that tail move with it (A1111 leaves them behind, pointing at padding).
    """
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"emphasis={emphasis!r} is not valid: choose one of {', '.join(EMPHASIS_MODES)}")
    if tokenizer is None:
        from ..models.tokenizer import clip_tokenizer

        tokenizer = clip_tokenizer()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    parsed = parse_attention(text) if emphasis != "None" else [(text, 1.0)]
    tokenized = token_ids([t for t, _ in parsed], tokenizer)
    table = _embedding_table(embeddings, tokenizer)
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
        weight = weight if emphasis != "Ignore" else 1.0
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == CHUNK and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                moved_fixes = [(offset - cut, emb) for offset, emb in chunk.fixes if offset >= cut]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                chunk.fixes = [(offset, emb) for offset, emb in chunk.fixes if offset < cut]
                next_chunk()
                chunk.tokens, chunk.weights, chunk.fixes = moved_tokens, moved_weights, moved_fixes
            if len(chunk.tokens) == CHUNK:
                next_chunk()
            embedding, covered = (None, 0)
            if table is not None:
                from nbdiffuse.models.embeddings import find_embedding_at

                embedding, covered = find_embedding_at(table, ids, position)
            if embedding is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            n = embedding.vector_count
            if len(chunk.tokens) + n > CHUNK:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), embedding))
            chunk.tokens += [0] * n
            chunk.weights += [weight] * n
            position += covered
    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, count


def count_tokens(prompt: str, tokenizer=None, embeddings=None) -> TokenCount:
    """A1111's token counter for a prompt (its ``AND`` parts and schedules: the longest text counts); an
    embedding named in it (``embeddings=``) counts its vectors.

    >>> str(count_tokens("a BREAK b"))
    '76/150'
    """
    if tokenizer is None:
        from ..models.tokenizer import clip_tokenizer

        tokenizer = clip_tokenizer()
    from .parser import extract_extra_networks

    text, _ = extract_extra_networks(prompt)
    best = TokenCount(0, 1)
    for part, _w in split_and(text):
        for _, scheduled in schedule(part, 1000):
            chunks, n = tokenize_chunks(scheduled, tokenizer, embeddings=embeddings)
            if n > best.tokens:
                best = TokenCount(n, len(chunks))
    return best


def final_layer_norm(encoder) -> torch.nn.Module:
    """The text encoder's final LayerNorm (transformers 5 keeps it at the top level, 4 under ``text_model``)."""
    norm = getattr(encoder, "final_layer_norm", None)
    return norm if norm is not None else encoder.text_model.final_layer_norm


def _has_embedding_key(key: tuple) -> bool:
    return bool(key) and isinstance(key[-1], tuple) and key[-1][:1] == ("embeddings",)


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

    ``embeddings``: an :class:`~nbdiffuse.models.embeddings.EmbeddingDB` (a list of ``Embedding`` is wrapped in
    one) whose embeddings are used where their names appear; only those fitting this model's text encoders are
    used (``EmbeddingDB.bound``). Their vectors replace the token embeddings at the chunk's fix positions (a forward
    hook on ``encoder.get_input_embeddings()`` for that call: transformers' ``CLIPTextModel`` needs ``input_ids``
    for pooling, so ``inputs_embeds`` cannot be passed). ``used_embeddings`` (name -> ``Embedding``) accumulates
    every embedding any ``encode`` call used, cached results included, until :meth:`clear_used_embeddings`;
    :attr:`ti_hashes` formats it for the infotext's ``TI hashes``. Changing the database (``add``) or assigning
    another one invalidates the affected cache entries.
    """

    def __init__(self, bundle, emphasis: str = "Original", embeddings=None):
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis={emphasis!r} is not valid: choose one of {', '.join(EMPHASIS_MODES)}")
        self.bundle = bundle
        self.emphasis = emphasis
        self.cache: dict[tuple, Cond] = {}
        self.cache_tag = None  # set while a LoRA changes the text encoder's weights
        self.calls = 0  # encoder forward passes (one per chunk and encoder)
        self._embeddings = None
        self._used_by_key: dict[tuple, tuple] = {}
        self.used_embeddings: dict = {}
        self.embeddings = embeddings

    @property
    def embeddings(self):
        """The :class:`~nbdiffuse.models.embeddings.EmbeddingDB` in use, or ``None``."""
        return self._embeddings

    @embeddings.setter
    def embeddings(self, db) -> None:
        if db is not None and not hasattr(db, "bound"):
            from nbdiffuse.models.embeddings import EmbeddingDB

            wrapped = EmbeddingDB()
            for embedding in db:
                wrapped.add(embedding)
            db = wrapped
        if db is not self._embeddings:
            self.cache = {k: v for k, v in self.cache.items() if not _has_embedding_key(k)}
            self._used_by_key.clear()
        self._embeddings = db

    def clear_used_embeddings(self) -> None:
        """Forget which embeddings were used (call at the start of a job)."""
        self.used_embeddings = {}

    @property
    def ti_hashes(self) -> str:
        """``TI hashes`` for the infotext from :attr:`used_embeddings` (``""`` when none was used)."""
        from nbdiffuse.models.embeddings import ti_hashes

        return ti_hashes(self.used_embeddings.values())

    def _active_embeddings(self):
        if not self._embeddings:
            return None
        from nbdiffuse.models.embeddings import embedding_widths

        db = self._embeddings.bound(embedding_widths(self.bundle))
        return db if len(db) else None

    @property
    def tokenizer(self):
        return self.bundle.tokenizers[0]

    def _pad_id(self, index: int) -> int | None:
        tok = self.bundle.tokenizers[index]
        pad = tok.pad_token_id
        return pad if pad is not None and pad != tok.eos_token_id else None

    @torch.no_grad()
    def _encode_chunk(self, index: int, ids: list[int], clip_skip: int,
                      fixes=()) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoder = self.bundle.text_encoders[index]
        device = next(encoder.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        self.calls += 1
        hook = None
        if fixes:
            n_encoders = len(self.bundle.text_encoders)
            vectors = [(offset, emb.for_encoder(index, n_encoders)) for offset, emb in fixes]

            def substitute(_module, _args, output):  # A1111's EmbeddingsWithFixes
                output = output.clone()
                for offset, vec in vectors:
                    n = min(output.shape[1] - offset - 1, vec.shape[0])
                    output[0, offset + 1:offset + 1 + n] = vec[:n].to(output.device, output.dtype)
                return output

            hook = encoder.get_input_embeddings().register_forward_hook(substitute)
        try:
            out = encoder(input_ids=input_ids, output_hidden_states=True)
        finally:
            if hook is not None:
                hook.remove()
        if self.bundle.arch in ("sdxl", "sdxl_refiner"):  # the refiner: bigG alone, penultimate layer + pooled
            z = out.hidden_states[-2]
            pooled = out.text_embeds if index == len(self.bundle.text_encoders) - 1 else None
            return z[0].float(), (pooled[0].float() if pooled is not None else None)
        if clip_skip > 1:
            z = final_layer_norm(encoder)(out.hidden_states[-clip_skip])
        else:
            z = out.last_hidden_state
        return z[0].float(), None

    def encode(self, text: str, clip_skip: int = 1) -> Cond:
        key = (text, clip_skip if self.bundle.arch not in ("sdxl", "sdxl_refiner") else 1, self.emphasis)
        if self.cache_tag is not None:  # LoRAs merged into the text encoder change every encoding
            key = (*key, ("weights", self.cache_tag))
        db = self._active_embeddings()
        if db is not None:
            key = (*key, ("embeddings", self._embeddings.version))
        if key in self.cache:
            self.used_embeddings.update((e.name, e) for e in self._used_by_key.get(key, ()))
            return self.cache[key]
        contexts, pooled = [], None
        used: dict = {}
        for index, _encoder in enumerate(self.bundle.text_encoders):
            chunks, _ = tokenize_chunks(text, self.bundle.tokenizers[index], self.emphasis, self._pad_id(index),
                                        embeddings=db)
            zs = []
            for n, chunk in enumerate(chunks):
                used.update((emb.name, emb) for _, emb in chunk.fixes)
                z, p = self._encode_chunk(index, chunk.tokens, clip_skip, chunk.fixes)
                zs.append(_apply_weights(z, torch.tensor(chunk.weights, device=z.device), self.emphasis))
                if n == 0 and p is not None:
                    pooled = p
            contexts.append(torch.cat(zs, dim=0))
        cond = Cond(torch.cat(contexts, dim=-1), pooled)
        self.cache[key] = cond
        if used:
            self._used_by_key[key] = tuple(used.values())
            self.used_embeddings.update(used)
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
