"""The real CLIP BPE tokenizer, built offline from the merges file shipped in ``nbdiffuse/data``.

Stable Diffusion 1.x uses OpenAI's CLIP ViT-L/14 tokenizer, SD 2.x and SDXL's second text encoder use
OpenCLIP's, which has the same vocabulary and merges and differs only in padding with ``"!"`` (id 0)
instead of ``"<|endoftext|>"`` (id 49407). Both are reconstructed here from
``bpe_simple_vocab_16e6.txt.gz`` exactly as CLIP's ``simple_tokenizer`` does, so no Hugging Face hub
access is ever needed (the library never reads ``HF_HUB_OFFLINE``; it simply never asks the hub).

Text -> ids goes through :func:`token_ids` / :func:`encode`, which tokenise as A1111 does for each encoder:
A1111 runs transformers' (slow) ``CLIPTokenizer`` for CLIP-L and open_clip's ``SimpleTokenizer`` for OpenCLIP,
and both clean the text with ``ftfy.fix_text`` first (full-width ``，`` becomes ``,``, mojibake is repaired,
HTML entities are unescaped...), which the fast tokenizer behind ``clip_tokenizer()`` does not do:
"一只可爱的猫，坐在窗台上，阳光，高清" is 41 tokens in A1111, 47 through the fast tokenizer. See :func:`clean_text`.
"""

from __future__ import annotations

import atexit
import functools
import gzip
import html
import json
import shutil
import tempfile
import threading
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import ftfy
import regex

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407

# kind -> pad id. "clip_l": OpenAI CLIP (SD1, SDXL's first tokenizer), pads with <|endoftext|>;
# "open_clip": SD2 / SDXL tokenizer_2, pads with "!" (id 0).
KINDS = {"clip_l": EOS_ID, "open_clip": 0}

_lock = threading.Lock()
_files_dir: Path | None = None
_shipped: dict[int, str] = {}  # id() of each tokenizer clip_tokenizer() built -> its kind


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table (256 entries, in CLIP's order)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_path() -> Path:
    """Path of the shipped (gzipped) CLIP merges file."""
    return Path(str(resources.files("nbdiffuse") / "data" / BPE_FILE))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id, 49408 entries) and the BPE merges ("a b" strings), in rank order."""
    with (resources.files("nbdiffuse") / "data" / BPE_FILE).open("rb") as raw:  # works from a zip too
        lines = gzip.decompress(raw.read()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens.extend("".join(m.split(" ")) for m in merges)
    tokens.extend([BOS_TOKEN, EOS_TOKEN])
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:  # would mean a corrupted data file
        raise RuntimeError(f"{bpe_path()}: expected a {VOCAB_SIZE}-token CLIP vocabulary, got {len(vocab)}")
    return vocab, merges


def tokenizer_files() -> tuple[Path, Path]:
    """``(vocab.json, merges.txt)`` written once per process into a private temporary folder.

    A temp folder (rather than a file next to the package) keeps this working on read-only installs; it is
    removed when the interpreter exits.
    """
    global _files_dir
    with _lock:
        if _files_dir is None or not (_files_dir / "merges.txt").is_file():
            vocab, merges = clip_vocab_and_merges()
            folder = Path(tempfile.mkdtemp(prefix="nbdiffuse-clip-bpe-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            # Same layout as openai/clip-vit-large-patch14's merges.txt: a version header, then the merges.
            (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
            _files_dir = folder
        return _files_dir / "vocab.json", _files_dir / "merges.txt"


def clip_tokenizer(kind: str = "clip_l"):
    """A ``transformers.CLIPTokenizer`` for SD's text encoders, built offline (cached: one shared instance).

    ``kind="clip_l"``: OpenAI CLIP ViT-L/14 (SD1, SDXL ``tokenizer``), pads with ``<|endoftext|>`` (49407).
    ``kind="open_clip"``: OpenCLIP ViT-H / bigG (SD2, SDXL ``tokenizer_2``), same vocabulary, pads with
    ``"!"`` (id 0) as diffusers' ``tokenizer_2`` does. Unlike the hub's ``tokenizer_2`` (diffusers issue
    #4153), a literal ``"!"`` in the prompt still tokenises as ``"!</w>"`` (256), as in open_clip and A1111:
    id 0 is only used for padding. ``model_max_length`` is 77, BOS 49406, EOS 49407.
    The returned object is shared between callers; ``copy.deepcopy`` it before changing its settings.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown CLIP tokenizer kind {kind!r}; expected one of {list(KINDS)}")
    return _build_tokenizer(kind)


@functools.cache
def _build_tokenizer(kind: str):
    from transformers import CLIPTokenizer

    vocab_file, _ = tokenizer_files()
    # from_pretrained on a local folder with local_files_only=True never touches the network, and reads
    # vocab.json/merges.txt both in transformers 4.x (Python tokenizer) and 5.x (tokenizers backend).
    tok = CLIPTokenizer.from_pretrained(
        str(vocab_file.parent),
        local_files_only=True,
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    for key in ("local_files_only", "is_local", "name_or_path", "vocab_file", "merges_file"):
        tok.init_kwargs.pop(key, None)  # keep the temp folder and loading flags out of saved configs
    if kind == "open_clip":
        # Setting the id (not pad_token="!") makes "!" the pad token *without* registering it as a special
        # added token, so "!" in text keeps its BPE id.
        tok.pad_token_id = 0
    if (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) != (BOS_ID, EOS_ID, KINDS[kind]):
        raise RuntimeError(f"CLIP tokenizer built wrongly: bos={tok.bos_token_id} eos={tok.eos_token_id} "
                           f"pad={tok.pad_token_id}")
    _shipped[id(tok)] = kind  # functools.cache keeps tok alive, so its id stays unique
    return tok


def is_clip_vocab(tokenizer) -> bool:
    """Whether ``tokenizer`` has exactly the stock CLIP vocabulary (no added or changed tokens)."""
    try:
        return tokenizer.get_vocab() == clip_vocab_and_merges()[0]
    except Exception:  # noqa: BLE001 - any odd tokenizer object simply is not ours
        return False


# ------------------------------------------------------------------------------------ A1111's tokenisation
# The two reference tokenizers differ only in their clean-up and in what they treat as special tokens:
# - CLIP-L (transformers' slow CLIPTokenizer): "<|startoftext|>" / "<|endoftext|>" are cut out of the raw text
#   first (added tokens), then each piece is ftfy-fixed, whitespace-collapsed and lowercased;
# - OpenCLIP (open_clip's SimpleTokenizer): ftfy, then html.unescape twice, then the same whitespace clean-up and
#   lowercasing on the whole text; its special tokens are spelt "<start_of_text>" / "<end_of_text>".
# Both then split with the same regular expression (the `regex` module's Unicode classes) and run CLIP's BPE.
_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
_SPECIAL_NAMES = {"clip_l": (BOS_TOKEN, EOS_TOKEN), "open_clip": ("<start_of_text>", "<end_of_text>")}
_SPLIT = {kind: regex.compile("|".join(regex.escape(t) for t in names) + "|" + _WORDS, regex.IGNORECASE)
          for kind, names in _SPECIAL_NAMES.items()}
_ADDED_TOKENS = regex.compile(f"({regex.escape(BOS_TOKEN)}|{regex.escape(EOS_TOKEN)})")
_WHITESPACE = regex.compile(r"\s+")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown CLIP tokenizer kind {kind!r}; expected one of {list(KINDS)}")


def clean_text(text: str, kind: str = "clip_l") -> str:
    """``text`` as A1111's tokenizer for that encoder sees it before splitting it into words.

    ``ftfy.fix_text`` (full-width forms to ASCII, curly quotes to straight ones, mojibake repaired, ligatures split,
    HTML entities unescaped unless the text contains ``<``, control characters removed, NFC), then for
    ``kind="open_clip"`` ``html.unescape`` twice, then runs of whitespace become one space, the ends are stripped and
    the text is lowercased.

    >>> clean_text("一只猫，ＨＤ  “Cute”")
    '一只猫,hd "cute"'
    >>> clean_text("<i>fish &amp; chips</i>", "clip_l"), clean_text("<i>fish &amp; chips</i>", "open_clip")
    ('<i>fish &amp; chips</i>', '<i>fish & chips</i>')
    """
    _check_kind(kind)
    text = ftfy.fix_text(text)
    if kind == "open_clip":
        text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip().lower()


@functools.lru_cache(maxsize=1)
def _bpe_tables() -> tuple[dict[tuple[str, str], int], dict[int, str]]:
    merges = clip_vocab_and_merges()[1]
    return {tuple(m.split(" ")): rank for rank, m in enumerate(merges)}, bytes_to_unicode()


@functools.lru_cache(maxsize=1 << 16)
def _bpe(word: str) -> tuple[str, ...]:
    """CLIP's byte-pair merges for one (byte-encoded) word: the best-ranked adjacent pair is merged everywhere,
    left to right, until no ranked pair is left."""
    ranks = _bpe_tables()[0]
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return tuple(parts)


def _words_to_ids(cleaned: str, kind: str) -> list[int]:
    vocab = clip_vocab_and_merges()[0]
    byte_chars = _bpe_tables()[1]
    specials = dict(zip(_SPECIAL_NAMES[kind], (BOS_ID, EOS_ID)))
    ids: list[int] = []
    for word in _SPLIT[kind].findall(cleaned):
        if word in specials:
            ids.append(specials[word])
        else:
            ids.extend(vocab[p] for p in _bpe("".join(byte_chars[b] for b in word.encode("utf-8"))))
    return ids


def encode(text: str, kind: str = "clip_l") -> list[int]:
    """Token ids of ``text`` (no BOS/EOS, no truncation) exactly as A1111 tokenises it for that encoder.

    ``kind="clip_l"``: SD1 and SDXL's first encoder (transformers' ``CLIPTokenizer`` with ftfy);
    ``kind="open_clip"``: SD2 and SDXL's second encoder (open_clip's ``SimpleTokenizer``). See :func:`clean_text`.

    >>> len(encode("一只可爱的猫，坐在窗台上，阳光，高清"))
    41
    >>> encode("a photo of a cat")
    [320, 1125, 539, 320, 2368]
    """
    _check_kind(kind)
    if kind == "open_clip":
        return _words_to_ids(clean_text(text, kind), kind)
    ids: list[int] = []
    for i, piece in enumerate(_ADDED_TOKENS.split(text)):
        if i % 2:
            ids.append(BOS_ID if piece == BOS_TOKEN else EOS_ID)
        elif piece:
            ids.extend(_words_to_ids(clean_text(piece, kind), kind))
    return ids


def tokenizer_kind(tokenizer) -> str:
    """``"clip_l"`` or ``"open_clip"``: which A1111 tokenisation applies to ``tokenizer`` (one of a bundle's).

    The shipped tokenizers know their kind; any other is taken as OpenCLIP when it pads with id 0, else CLIP-L.
    """
    kind = _shipped.get(id(tokenizer))
    if kind is not None:
        return kind
    return "open_clip" if getattr(tokenizer, "pad_token_id", None) == 0 else "clip_l"


def token_ids(texts: Iterable[str], tokenizer) -> list[list[int]]:
    """Token ids (no BOS/EOS, no truncation) of each text, as A1111 tokenises them for ``tokenizer``'s encoder.

    Every place in nbdiffuse that turns text into ids goes through here (chunking, the token counter, embedding
    names, attention-map words), so ftfy's clean-up applies everywhere. ``tokenizer`` is one of a bundle's
    tokenizers: the shipped ones (and any with the stock CLIP vocabulary) tokenise exactly as A1111;
    a tokenizer with another vocabulary gets A1111's clean-up (:func:`clean_text`) and then its own BPE.

    >>> token_ids(["ｃａｔ，ｄｏｇ"], clip_tokenizer())
    [[2368, 267, 1929]]
    """
    texts = list(texts)
    kind = tokenizer_kind(tokenizer)
    if id(tokenizer) in _shipped or is_clip_vocab(tokenizer):
        return [encode(t, kind) for t in texts]
    if not texts:
        return []
    cleaned = [clean_text(t, kind) for t in texts]
    return tokenizer(cleaned, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]
