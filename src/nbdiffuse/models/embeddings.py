"""Textual-inversion embeddings in A1111's formats, and the lookup that finds them in tokenised prompts.

An embedding is used by writing its name (the file stem) in a prompt. As in A1111 (``modules/textual_inversion``
and ``sd_hijack_clip``): the name is tokenised with the encoder's tokenizer; wherever that token sequence occurs
in a prompt's tokens (the longest registered match first) it is replaced by the embedding's vectors, which take the
weight of the text around them. :func:`nbdiffuse.prompts.conditioning.tokenize_chunks` does the replacement
(``embeddings=``), :class:`~nbdiffuse.prompts.conditioning.TextEncoder` feeds the vectors to the encoder.

File formats read (``.pt``/``.bin`` only through ``torch.load(weights_only=True)``, with the allow-list of
:func:`~nbdiffuse.models.state_dict.load_pickle`; ``.safetensors``):

- ``{'string_to_param': {'*': tensor(n, width)}, ...}`` (A1111's own training output, ``.pt``; the original
  textual-inversion code saved it as a ``torch.nn.ParameterDict``);
- ``{'clip_l': tensor(n, 768), 'clip_g': tensor(n, 1280)}`` (SDXL, usually ``.safetensors``);
- a dict with one tensor, e.g. ``{'emb_params': tensor(n, width)}`` (kohya ``.safetensors``) or diffusers'
  ``{'<token>': tensor(width)}`` (``.bin``); a 1-D tensor is one vector.

Vectors are kept on the CPU in float32 (A1111 converts them to float32 too). ``Embedding.vectors`` maps
``"clip_l"``/``"clip_g"`` (SDXL pairs) or ``"vec"`` (one set, SD1/SD2) to ``(n, width)`` tensors.
``Embedding.sha256`` is the sha256 of the whole file and ``hash10`` its first 10 hex, A1111's ``TI hashes`` value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.hashing import hashes_field

EXTENSIONS = (".pt", ".bin", ".safetensors")
MAX_VECTORS = 75  # one chunk: an embedding longer than this cannot be placed (A1111 would corrupt the chunk)
SINGLE = "vec"
SDXL_KEYS = ("clip_l", "clip_g")
_WIDTH_FAMILY = {768: "SD1", 1024: "SD2"}


@dataclass
class Embedding:
    """One textual-inversion embedding: ``name`` (what to write in a prompt), ``vectors`` per encoder key
    (``"vec"``, or ``"clip_l"`` + ``"clip_g"``), ``sha256`` of the file (``""`` when not hashed)."""

    name: str
    vectors: dict[str, torch.Tensor]
    sha256: str = ""
    path: str | None = None
    step: int | None = None  # training step, when the file says

    @property
    def hash10(self) -> str:
        """A1111's short hash (``TI hashes`` in infotexts): first 10 hex of the file's sha256."""
        return self.sha256[:10]

    @property
    def vector_count(self) -> int:
        """How many token positions the embedding fills (A1111 ``Embedding.vectors``; clip_g's for SDXL)."""
        vec = self.vectors.get(SINGLE, self.vectors.get("clip_g", self.vectors.get("clip_l")))
        return int(vec.shape[0])

    @property
    def kind(self) -> str:
        return "sdxl" if SINGLE not in self.vectors else "single"

    def for_encoder(self, index: int, n_encoders: int) -> torch.Tensor:
        """The ``(n, width)`` vectors for text encoder ``index`` of a model with ``n_encoders`` encoders."""
        if n_encoders == 2:
            return self.vectors[SDXL_KEYS[index]]
        return self.vectors[SINGLE]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.vectors.items())
        return f"Embedding({self.name!r}, {shapes}, hash10={self.hash10!r})"


def _tensor(value, path: Path, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ModelLoadError(path, f"{what} is a {type(value).__name__}, not a tensor")
    value = value.detach().to("cpu", torch.float32)
    if value.ndim == 1:
        value = value.unsqueeze(0)
    if value.ndim != 2 or value.shape[0] == 0:
        raise ModelLoadError(path, f"{what} has shape {tuple(value.shape)}; expected (vectors, width)")
    return value


def embedding_from_data(data, name: str, path) -> Embedding:
    """Interpret a loaded file's contents like A1111's ``create_embedding_from_data``."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ModelLoadError(path, f"holds a {type(data).__name__}; not a textual-inversion embedding")
    step = data.get("step") if isinstance(data.get("step"), int) else None
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, (dict, torch.nn.ParameterDict)) or len(params) != 1:
            raise ModelLoadError(path, "string_to_param must hold exactly one tensor (the file has several terms)")
        vectors = {SINGLE: _tensor(next(iter(params.values())), path, "string_to_param")}
    elif "clip_l" in data and "clip_g" in data:
        vectors = {k: _tensor(data[k], path, k) for k in SDXL_KEYS}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise ModelLoadError(path, f"clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g "
                                       f"{vectors['clip_g'].shape[0]}")
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            raise ModelLoadError(path, f"not a textual-inversion embedding (expected string_to_param, clip_l + "
                                       f"clip_g, or one tensor such as emb_params; found {len(tensors)} tensors)")
        key, value = next(iter(tensors.items()))
        vectors = {SINGLE: _tensor(value, path, key)}
    return Embedding(name, vectors, path=str(path), step=step)


def load_embedding(path, name: str | None = None, hash: bool = True) -> Embedding:
    """Read one embedding file (``name`` defaults to the file stem). Raises
    :class:`~nbdiffuse.models.errors.ModelLoadError` naming the file when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(path, "the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        elif suffix in (".pt", ".bin"):
            from nbdiffuse.models.state_dict import load_pickle

            data = load_pickle(path)
        else:
            raise ModelLoadError(path, f"unsupported embedding file type {suffix!r} (expected {', '.join(EXTENSIONS)})")
    except ModelLoadError:
        raise
    except Exception as e:  # safetensors / unpickler errors
        how = "safetensors" if suffix == ".safetensors" else "torch.load(weights_only=True)"
        raise ModelLoadError(path, f"cannot be read with {how} ({type(e).__name__}: {e})") from e
    embedding = embedding_from_data(data, name or path.stem, path)
    if hash:
        from nbdiffuse.models.hashing import sha256

        embedding.sha256 = sha256(path)
    return embedding


def embedding_widths(bundle) -> tuple[int, ...]:
    """The token-embedding width of each of ``bundle``'s text encoders (SD1 (768,), SD2 (1024,),
    SDXL (768, 1280))."""
    return tuple(int(enc.get_input_embeddings().weight.shape[1]) for enc in bundle.text_encoders)


def incompatibility(embedding: Embedding, widths: tuple[int, ...]) -> str | None:
    """Why ``embedding`` cannot be used with text encoders of these ``widths`` (``None``: it can)."""
    n = embedding.vector_count
    if n > MAX_VECTORS:
        return f"{n} vectors; at most {MAX_VECTORS} fit in a prompt chunk"
    if len(widths) == 2:
        if SINGLE in embedding.vectors:
            w = embedding.vectors[SINGLE].shape[1]
            return (f"an {_WIDTH_FAMILY.get(w, 'SD1/SD2')} embedding ({w}-wide vectors); SDXL needs clip_l + "
                    f"clip_g pairs")
        got = tuple(int(embedding.vectors[k].shape[1]) for k in SDXL_KEYS)
        if got != widths:
            return f"clip_l/clip_g widths {got[0]}/{got[1]} do not match the text encoders ({widths[0]}/{widths[1]})"
        return None
    if SINGLE not in embedding.vectors:
        return f"an SDXL embedding (clip_l + clip_g); the loaded model has one text encoder ({widths[0]} wide)"
    w = int(embedding.vectors[SINGLE].shape[1])
    if w != widths[0]:
        family = _WIDTH_FAMILY.get(w)
        return (f"{w}-wide vectors{f' (an {family} embedding)' if family else ''}; the text encoder is "
                f"{widths[0]} wide")
    return None


@dataclass
class EmbeddingDB:
    """Embeddings by name, A1111's ``EmbeddingDatabase``: ``embeddings`` usable ones, ``skipped`` name -> why
    (does not fit the model's text encoders: A1111's "skipped" list), ``errors`` file -> why (unreadable).

    ``widths`` are the text-encoder widths the embeddings were checked against (``None``: not checked). Any
    change bumps ``version`` (text encoders key their caches on it).
    """

    embeddings: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    widths: tuple[int, ...] | None = None
    version: int = 0
    _lookups: dict = field(default_factory=dict, repr=False)
    _bound: dict = field(default_factory=dict, repr=False)

    def add(self, embedding: Embedding) -> bool:
        """Register ``embedding`` (replacing one of the same name) unless it does not fit ``widths`` (then it
        goes to ``skipped``); returns whether it was registered."""
        reason = incompatibility(embedding, self.widths) if self.widths is not None else None
        self.version += 1
        if reason is not None:
            self.skipped[embedding.name] = reason
            self.embeddings.pop(embedding.name, None)
            return False
        self.skipped.pop(embedding.name, None)
        self.embeddings[embedding.name] = embedding
        return True

    def __len__(self) -> int:
        return len(self.embeddings)

    def __contains__(self, name) -> bool:
        return name in self.embeddings

    def __getitem__(self, name: str) -> Embedding:
        return self.embeddings[name]

    def __iter__(self):
        return iter(self.embeddings.values())

    def get(self, name: str) -> Embedding | None:
        return self.embeddings.get(name)

    def unused_names(self, text: str) -> list[str]:
        """Why words of ``text`` that look meant as embeddings will be read as plain text (A1111 says nothing):
        the name of an embedding that does not fit the model, or a near miss of a loaded one's name.

        >>> db.unused_names("easynegativ, blurry")                       # doctest: +SKIP
        ["'easynegativ' is not an embedding (read as plain text); did you mean 'easynegative'?"]
        """
        import difflib
        import re

        notes = []
        for word in dict.fromkeys(re.findall(r"[\w\-]+", text)):
            if word in self.embeddings:
                continue
            if word in self.skipped:
                notes.append(f"Embedding {word!r} is not used: {self.skipped[word]}; it is read as plain text.")
                continue
            close = difflib.get_close_matches(word, list(self.embeddings), n=1, cutoff=0.85) if len(word) >= 5 else []
            if close:
                notes.append(f"{word!r} is not an embedding (read as plain text); did you mean {close[0]!r}?")
        return notes

    def bound(self, widths: tuple[int, ...]) -> EmbeddingDB:
        """This database checked against ``widths``: itself when already checked against them, else a filtered
        copy (cached until this database changes)."""
        widths = tuple(widths)
        if self.widths == widths:
            return self
        key = (widths, self.version)
        if key not in self._bound:
            db = EmbeddingDB(widths=widths)
            for embedding in self.embeddings.values():
                db.add(embedding)
            db.errors = dict(self.errors)
            self._bound = {key: db}
        return self._bound[key]

    def lookup(self, tokenizer) -> dict[int, list[tuple[tuple[int, ...], Embedding]]]:
        """first token id -> [(token ids of the name, embedding)], longest first (A1111's ``ids_lookup``)."""
        key = (id(tokenizer), self.version)
        table = self._lookups.get(key)
        if table is None:
            table = build_lookup(self.embeddings.values(), tokenizer)
            self._lookups = {k: v for k, v in self._lookups.items() if k[1] == self.version}
            self._lookups[key] = table
        return table

    def find_at(self, tokens, offset: int, tokenizer) -> tuple[Embedding | None, int]:
        """A1111's ``find_embedding_at_position``: the embedding whose name's tokens start at ``offset``
        (longest match first) and how many prompt tokens it covers, else ``(None, 0)``."""
        return find_embedding_at(self.lookup(tokenizer), tokens, offset)


def build_lookup(embeddings: Iterable[Embedding], tokenizer) -> dict[int, list[tuple[tuple[int, ...], Embedding]]]:
    from nbdiffuse.models.tokenizer import token_ids

    table: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
    for embedding in embeddings:
        ids = tuple(token_ids([embedding.name], tokenizer)[0])  # A1111: cond_stage_model.tokenize([name])
        if not ids:
            continue
        entries = table.setdefault(ids[0], [])
        entries.append((ids, embedding))
        entries.sort(key=lambda item: len(item[0]), reverse=True)  # stable: equal lengths keep their order
    return table


def find_embedding_at(table, tokens, offset: int) -> tuple[Embedding | None, int]:
    for ids, embedding in table.get(tokens[offset], ()):
        if tuple(tokens[offset:offset + len(ids)]) == ids:
            return embedding, len(ids)
    return None, 0


def load_embeddings(folder, bundle=None, widths: tuple[int, ...] | None = None, hash: bool = True) -> EmbeddingDB:
    """Every ``.pt``/``.bin``/``.safetensors`` embedding under ``folder`` (recursively, sorted by path; other
    files are ignored), named by file stem; ``folder`` may be a list of folders, read in its order. With ``bundle``
    (or ``widths``) each is checked against the text encoders and incompatible ones land in ``db.skipped`` with
    the reason; unreadable files in ``db.errors``. When two files share a stem the first (by folder, then path)
    wins and the other is listed in ``errors``."""
    if bundle is not None and widths is None:
        widths = embedding_widths(bundle)
    db = EmbeddingDB(widths=tuple(widths) if widths is not None else None)
    folders = [Path(f) for f in folder] if isinstance(folder, (list, tuple)) else [Path(folder)]
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"embeddings folder not found: {folder}")
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            files += [Path(root) / n for n in sorted(names)
                      if n.lower().endswith(EXTENSIONS) and not n.startswith(".")]
    seen: dict[str, Path] = {}
    for file in files:
        if file.stem in seen:
            db.errors[str(file)] = f"another embedding is already named {file.stem!r} ({seen[file.stem]})"
            continue
        try:
            embedding = load_embedding(file, hash=hash)
        except (ModelLoadError, OSError) as e:
            db.errors[str(file)] = getattr(e, "problem", str(e))
            continue
        seen[file.stem] = file
        db.add(embedding)
    return db


def ti_hashes(embeddings: Iterable[Embedding]) -> str:
    """The infotext ``TI hashes`` value: ``"name: hash10, ..."`` (A1111 drops ``:`` and ``,`` from names and
    leaves out embeddings without a hash)."""
    return hashes_field((embedding.name, embedding.hash10) for embedding in embeddings)
