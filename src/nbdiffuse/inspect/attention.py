"""Where each prompt word attends: cross-attention maps, aggregated DAAM-style (Tang et al. 2022).

>>> with AttentionMaps(session, words=["circle", "red"]) as maps:            # doctest: +SKIP
...     r = session.txt2img(prompt="a red circle", steps=20, seed=1)
>>> maps.heatmap("circle")                 # (H, W) tensor at image size
>>> maps.overlay(r.image, "circle")        # PIL image
>>> maps.heatmap("circle", step=3), maps.heatmap("circle", layer="up_blocks.1.attentions.0.transformer_blocks.0.attn2")

**What is recorded.** Inside the block, the chosen cross-attention layers (``attn2`` of every transformer block;
``layers=`` narrows them by path, prefix, glob or predicate) get a :class:`RecordingAttnProcessor` that computes the
attention probabilities explicitly, ``softmax(q k^T / sqrt(d))`` over the text tokens (so for every query position
they sum to 1 over *all* the context's tokens). The other layers keep their own (fused) processor, and the original
processors come back on exit, also on error. For the positive prompt's first ``AND`` part and every image of the
batch, the probabilities are averaged over heads and accumulated two ways: per step (all layers, each upsampled
bilinearly to the latent resolution) and per layer (all steps, at the layer's own resolution). Every token column is
kept, so any word of the prompt can be looked up afterwards; memory per image is about
``tokens x latent_h x latent_w x 4`` bytes per step (25 MB for 20 steps at 512x512).

**Aggregation.** :meth:`AttentionMaps.token_maps` is the *mean* over heads, layers and UNet calls of the
probabilities (bilinear upsampling keeps the per-pixel sum), so the maps of all tokens sum to 1 at every pixel.
:meth:`heatmap` sums a word's tokens (a word may be several BPE tokens, and every occurrence counts) and upsamples to
the image size; ``normalize=True`` divides by the maximum as DAAM does for display.

**Tokens.** Positions come from the prompt as the model's tokenizer chunks it
(:func:`~nbdiffuse.prompts.conditioning.tokenize_chunks`, 77 tokens per chunk incl. BOS/EOS), after extra-network tags
are removed; with prompt editing (``[a:b:0.5]``) the final text is used. The prompt is ``prompt=`` if given, else the
prompt of ``session.last_result`` (set by ``txt2img`` and by ``Debugger.finish``).

Steps are counted as in :mod:`nbdiffuse.inspect.probes` (0-based ``StepState.i``, first batch of the first job).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ._common import ModuleWatch, StepTracker, select_modules, split_rows


class RecordingAttnProcessor:
    """An attention processor that computes cross-attention probabilities explicitly and passes them to
    ``callback(probs, attn)`` (``probs``: ``(batch, heads, queries, tokens)``) before using them, exactly like
    diffusers' ``AttnProcessor``. Self-attention calls, and calls while ``active()`` is false, go to ``original``
    (the processor it replaces) untouched.

    >>> module.set_processor(RecordingAttnProcessor(record, module.processor))  # doctest: +SKIP
    """

    def __init__(self, callback, original=None, active=None):
        from diffusers.models.attention_processor import AttnProcessor

        self.callback = callback
        self.original = original if original is not None else AttnProcessor()
        self.active = active

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is None or (self.active is not None and not self.active()):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (batch * heads, queries, tokens)
        self.callback(probs.view(batch_size, attn.heads, probs.shape[1], probs.shape[2]), attn)
        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _is_cross_attention(name: str, module: torch.nn.Module) -> bool:
    return bool(getattr(module, "is_cross_attention", False)) and hasattr(module, "set_processor")


def layer_hw(queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The spatial size of a layer with ``queries`` positions in a UNet whose input is ``latent_hw``."""
    h, w = latent_hw
    while h * w > queries and h > 1 and w > 1:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != queries:
        side = int(round(queries**0.5))
        if side * side != queries:
            raise ValueError(f"cannot tell the spatial shape of {queries} query positions (latent {latent_hw})")
        h = w = side
    return h, w


def prompt_tokens(prompt: str, tokenizer) -> list[int]:
    """The token ids of the conditioning the UNet sees for ``prompt`` (first ``AND`` part), 77 per chunk."""
    from ..prompts.conditioning import tokenize_chunks
    from ..prompts.parser import extract_extra_networks, schedule, split_and

    text, _ = extract_extra_networks(prompt)
    parts = split_and(text)
    text = parts[0][0] if parts else text
    text = schedule(text, 1000)[-1][1]
    chunks, _ = tokenize_chunks(text, tokenizer)
    return [t for chunk in chunks for t in chunk.tokens]


def word_positions(prompt: str, word: str, tokenizer) -> list[int]:
    """Context positions of ``word`` (all its BPE tokens, every occurrence) in ``prompt``'s conditioning."""
    from ..models.tokenizer import token_ids

    ids = prompt_tokens(prompt, tokenizer)
    word_ids = token_ids([word], tokenizer)[0]
    if not word_ids:
        raise ValueError(f"{word!r} has no tokens")
    n = len(word_ids)
    hits = [p + k for p in range(len(ids) - n + 1) if ids[p:p + n] == word_ids for k in range(n)]
    if not hits:
        special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        words = tokenizer.convert_ids_to_tokens([t for t in ids if t not in special])
        raise KeyError(f"{word!r} (tokens {tokenizer.convert_ids_to_tokens(word_ids)}) is not in the prompt "
                       f"{prompt!r}; its tokens are {words}")
    return hits


class AttentionMaps(ModuleWatch):
    """Context manager recording cross-attention maps of the prompt's tokens (see the module docs).

    ``session``: a Session (or ModelBundle; then pass ``maps.step_hook`` in ``hooks=``). ``words``: the words shown by
    default (any word of the prompt can be asked for later). ``layers``: cross-attention layers to record (paths,
    prefixes like ``"up_blocks"``, globs or predicates); ``None`` for all. ``steps``: 0-based step indices to record,
    ``None`` for all. ``prompt``: the prompt for token lookup (default: ``session.last_result``'s).

    >>> with AttentionMaps(session, words=["circle"]) as maps:  # doctest: +SKIP
    ...     result = session.txt2img(prompt="a red circle", steps=20)
    >>> maps.overlay(result.images[0], "circle")  # doctest: +SKIP
    """

    def __init__(self, session, words: Iterable[str] = (), layers=None, steps: Iterable[int] | None = None,
                 prompt: str | None = None):
        self.session = session
        self.words = [words] if isinstance(words, str) else list(words)
        self.layer_selectors = layers
        self.steps_wanted = None if steps is None else {int(s) for s in steps}
        self.prompt = prompt
        self.modules: dict[str, torch.nn.Module] = {}
        self.by_step: dict[int, torch.Tensor] = {}  # (b, tokens, H, W) sums at latent resolution
        self.step_calls: dict[int, int] = {}
        self.by_layer: dict[str, torch.Tensor] = {}  # (b, tokens, h, w) sums at the layer's resolution
        self.layer_calls: dict[str, int] = {}
        self.latent_hw: tuple[int, int] | None = None
        self._tracker = StepTracker(session)
        self._originals: dict[str, object] = {}
        self._names: dict[int, str] = {}

    # install / remove -------------------------------------------------------------------------------------
    what = "attention maps"

    def _select(self, unet) -> dict[str, torch.nn.Module]:
        return select_modules(unet, self.layer_selectors, candidates=_is_cross_attention, what="cross-attention layer")

    def _install(self, name: str, module: torch.nn.Module) -> None:
        self._originals[name] = module.processor
        self._names[id(module)] = name
        module.set_processor(RecordingAttnProcessor(self._record, module.processor, self._active))

    def _uninstall(self) -> None:
        """Put the original attention processors back (the maps so far move to the CPU)."""
        for name, original in self._originals.items():
            self.modules[name].set_processor(original)
        self._originals.clear()
        for d in (self.by_step, self.by_layer):
            for k, v in d.items():
                d[k] = v.cpu()

    # recording --------------------------------------------------------------------------------------------
    def _active(self) -> bool:
        t = self._tracker
        return not t.done and (self.steps_wanted is None or t.step in self.steps_wanted)

    @torch.no_grad()
    def _record(self, probs: torch.Tensor, attn) -> None:
        tracker = self._tracker
        probs = tracker.gather(self._names[id(attn)], probs)
        if probs is None:  # more per-image forwards of this model call to come
            return
        entries, batch = tracker.layout
        if probs.shape[0] == entries * batch:
            rows = slice(0, batch)  # the first positive part of each image
        else:
            rows = split_rows(1, probs.shape[0])[0]
        p = probs[rows].float().mean(dim=1)  # (b, queries, tokens), averaged over heads
        b, queries, tokens = p.shape
        latent_hw = tracker.latent_hw or layer_hw(queries, (queries, 1))
        self.latent_hw = latent_hw
        h, w = layer_hw(queries, latent_hw)
        maps = p.transpose(1, 2).reshape(b, tokens, h, w)
        name = self._names[id(attn)]
        self._add(self.by_layer, self.layer_calls, name, maps)
        if (h, w) != latent_hw:
            maps = F.interpolate(maps, size=latent_hw, mode="bilinear", align_corners=False)
        self._add(self.by_step, self.step_calls, tracker.step, maps)

    @staticmethod
    def _add(sums: dict, counts: dict, key, maps: torch.Tensor) -> None:
        if key in sums and sums[key].shape[1] < maps.shape[1]:  # a longer context later (prompt schedules)
            sums[key] = F.pad(sums[key], (0, 0, 0, 0, 0, maps.shape[1] - sums[key].shape[1]))
        elif key in sums and sums[key].shape[1] > maps.shape[1]:
            maps = F.pad(maps, (0, 0, 0, 0, 0, sums[key].shape[1] - maps.shape[1]))
        sums[key] = sums[key] + maps if key in sums else maps.clone()
        counts[key] = counts.get(key, 0) + 1

    # reading ----------------------------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        return sorted(self.by_step)

    @property
    def layers(self) -> list[str]:
        return list(self.by_layer)

    def _bundle(self):
        return getattr(self.session, "model", None) or self.session

    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the generated image (latent size times the VAE factor)."""
        if self.latent_hw is None:
            raise RuntimeError("nothing recorded yet: run a generation inside the `with` block")
        bundle = self._bundle()
        factor = getattr(bundle, "vae_scale_factor", 8)
        return self.latent_hw[0] * factor, self.latent_hw[1] * factor

    def token_maps(self, step: int | None = None, layer: str | None = None, image: int = 0,
                   size: tuple[int, int] | None = None) -> torch.Tensor:
        """Mean attention probability of every context token, ``(tokens, H, W)``: sums to 1 over tokens at every
        pixel. ``step``/``layer`` restrict to one step (all layers) or one layer (all steps); ``size=(H, W)``
        (default: the layer's / latent resolution) upsamples bilinearly."""
        if step is not None and layer is not None:
            raise ValueError("give step= or layer=, not both (maps are kept per step and per layer, not per pair)")
        if layer is not None:
            if layer not in self.by_layer:
                raise KeyError(f"layer {layer!r} not recorded; recorded: {self.layers}")
            maps = self.by_layer[layer] / self.layer_calls[layer]
        elif step is not None:
            if step not in self.by_step:
                raise KeyError(f"step {step} not recorded; recorded: {self.steps}")
            maps = self.by_step[step] / self.step_calls[step]
        else:
            if not self.by_step:
                raise RuntimeError("nothing recorded yet: run a generation inside the `with` block")
            tokens = max(m.shape[1] for m in self.by_step.values())
            total = sum(F.pad(m, (0, 0, 0, 0, 0, tokens - m.shape[1])) for m in self.by_step.values())
            maps = total / sum(self.step_calls.values())
        maps = maps[image].float().cpu()
        if size is not None and tuple(size) != tuple(maps.shape[-2:]):
            maps = F.interpolate(maps[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        return maps

    def tokens(self, prompt: str | None = None) -> list[tuple[int, str]]:
        """``(position, token)`` for the prompt's tokens (BOS, EOS and padding left out)."""
        tok = self._tokenizer()
        ids = prompt_tokens(self._prompt(prompt), tok)
        special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        return [(k, tok.convert_ids_to_tokens(t)) for k, t in enumerate(ids) if t not in special]

    def _tokenizer(self):
        return self._bundle().tokenizers[0]

    def _prompt(self, prompt: str | None) -> str:
        prompt = prompt or self.prompt
        if prompt is None:
            last = getattr(self.session, "last_result", None)
            prompt = last.params.prompt if last is not None else None
        if prompt is None:
            raise RuntimeError("which prompt? pass prompt= (to AttentionMaps or here); "
                               "session.last_result is not set")
        return prompt

    def positions(self, word: str, prompt: str | None = None) -> list[int]:
        return word_positions(self._prompt(prompt), word, self._tokenizer())

    def heatmap(self, word: str, step: int | None = None, layer: str | None = None, image: int = 0,
                size: tuple[int, int] | None = None, normalize: bool = False, prompt: str | None = None
                ) -> torch.Tensor:
        """``(H, W)`` attention mass of ``word`` (sum over its tokens), at image size unless ``size=`` says.

        Values are mean probabilities in [0, 1]; ``normalize=True`` divides by the maximum (DAAM's display)."""
        positions = self.positions(word, prompt)
        maps = self.token_maps(step=step, layer=layer, image=image)
        positions = [p for p in positions if p < maps.shape[0]]
        heat = maps[positions].sum(dim=0)
        size = tuple(size) if size is not None else self.image_size()
        heat = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        if normalize:
            heat = heat / heat.max().clamp_min(1e-12)
        return heat

    def per_step(self, word: str, **kwargs) -> dict[int, torch.Tensor]:
        return {s: self.heatmap(word, step=s, **kwargs) for s in self.steps}

    def per_layer(self, word: str, **kwargs) -> dict[str, torch.Tensor]:
        return {name: self.heatmap(word, layer=name, **kwargs) for name in self.layers}

    def overlay(self, image, word: str, alpha: float = 0.5, cmap: str = "jet", **kwargs):
        """``image`` (PIL) with ``word``'s normalized heatmap blended over it in a matplotlib colormap."""
        from matplotlib import colormaps
        from PIL import Image

        heat = self.heatmap(word, size=(image.height, image.width), normalize=True, **kwargs).numpy()
        colored = (colormaps[cmap](heat)[..., :3] * 255).astype(np.uint8)
        return Image.blend(image.convert("RGB"), Image.fromarray(colored), alpha)

    def figure(self, image=None, words: Iterable[str] | None = None, **kwargs):
        """A matplotlib figure: one panel per word (overlaid on ``image`` when given)."""
        import matplotlib.pyplot as plt

        words = list(words) if words is not None else self.words
        if not words:
            raise ValueError("which words? pass words= here or to AttentionMaps")
        fig, axes = plt.subplots(1, len(words), figsize=(3 * len(words), 3), squeeze=False)
        for ax, word in zip(axes[0], words):
            if image is not None:
                ax.imshow(self.overlay(image, word, **kwargs))
            else:
                ax.imshow(self.heatmap(word, normalize=True, **kwargs).numpy(), cmap="jet")
            ax.set_title(word)
            ax.axis("off")
        fig.tight_layout()
        plt.close(fig)
        return fig

    def __repr__(self) -> str:
        return (f"AttentionMaps({len(self.modules)} layer(s), words={self.words}, steps recorded {self.steps}, "
                f"latent {self.latent_hw})")
