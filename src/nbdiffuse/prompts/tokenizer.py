"""The real CLIP BPE tokenizer, built offline from the merges file shipped in ``nbdiffuse/data``.

Stable Diffusion 1.x uses OpenAI's CLIP ViT-L/14 tokenizer, SD 2.x and SDXL's second text encoder use
OpenCLIP's, which has the same vocabulary and merges and differs only in padding with ``"!"`` (id 0)
instead of ``"<|endoftext|>"`` (id 49407). Both are reconstructed here from
``bpe_simple_vocab_16e6.txt.gz`` exactly as CLIP's ``simple_tokenizer`` does, so no Hugging Face hub
access is ever needed (the library never reads ``HF_HUB_OFFLINE``; it simply never asks the hub).
"""

from __future__ import annotations

import atexit
import functools
import gzip
import json
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path

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
    return tok


def is_clip_vocab(tokenizer) -> bool:
    """Whether ``tokenizer`` has exactly the stock CLIP vocabulary (no added or changed tokens)."""
    try:
        return tokenizer.get_vocab() == clip_vocab_and_merges()[0]
    except Exception:  # noqa: BLE001 - any odd tokenizer object simply is not ours
        return False
