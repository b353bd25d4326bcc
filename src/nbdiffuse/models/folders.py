"""A1111 and ComfyUI model folders: what is there, and finding a model by name.

``ModelFolders(models_dir)`` accepts the WebUI/ComfyUI root or its ``models/`` folder and looks in both layouts:

=============  ===============================  ===========================
kind           A1111                            ComfyUI
=============  ===============================  ===========================
checkpoints    models/Stable-diffusion          models/checkpoints
loras          models/Lora, models/LyCORIS      models/loras
vae            models/VAE                       models/vae
embeddings     embeddings (WebUI root)          models/embeddings
upscalers      models/ESRGAN, models/RealESRGAN models/upscale_models
hypernetworks  models/hypernetworks             models/hypernetworks
=============  ===============================  ===========================

Upscalers are also found in A1111's ``models/DAT``, ``models/HAT``, ``models/SwinIR`` and ``models/ScuNET``.
Names are file paths relative to their kind's folder, with forward slashes (``"sub/model.safetensors"``);
:meth:`ModelFolders.find` also accepts the bare file name or the name without extension.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from nbdiffuse.models.errors import ModelLoadError

LAYOUTS = {
    "checkpoints": ("models/Stable-diffusion", "models/checkpoints"),
    "loras": ("models/Lora", "models/LyCORIS", "models/loras"),
    "vae": ("models/VAE", "models/vae"),
    "embeddings": ("embeddings", "models/embeddings"),
    "upscalers": ("models/ESRGAN", "models/RealESRGAN", "models/DAT", "models/HAT", "models/SwinIR", "models/ScuNET",
                  "models/upscale_models"),
    "hypernetworks": ("models/hypernetworks",),
}
EXTENSIONS = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth"),
    "loras": (".safetensors", ".pt", ".ckpt"),
    "vae": (".safetensors", ".pt", ".ckpt", ".pth"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "upscalers": (".pth", ".pt", ".safetensors"),
    "hypernetworks": (".pt",),  # A1111 lists only .pt files there
}
KIND_ALIASES = {"checkpoint": "checkpoints", "stable-diffusion": "checkpoints", "models": "checkpoints",
                "lora": "loras", "lycoris": "loras", "vaes": "vae", "embedding": "embeddings",
                "textual_inversion": "embeddings", "upscaler": "upscalers", "esrgan": "upscalers",
                "hypernetwork": "hypernetworks", "hypernet": "hypernetworks"}


def _kind(kind: str) -> str:
    k = kind.lower()
    k = KIND_ALIASES.get(k, k)
    if k not in LAYOUTS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(LAYOUTS)}")
    return k


class ModelFolders:
    """The model folders under an A1111 or ComfyUI installation (or its ``models/`` folder)."""

    def __init__(self, models_dir):
        root = Path(models_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"models_dir not found: {root}")
        # given ".../models": its parent is the install root (for A1111's top-level embeddings/)
        self.root = root.parent if root.name.lower() == "models" and not (root / "models").is_dir() else root
        self.models_dir = root

    def folders(self, kind: str) -> list[Path]:
        """Existing folders for ``kind``, A1111's first."""
        out = []
        for rel in LAYOUTS[_kind(kind)]:
            folder = self.root / rel
            if folder.is_dir() and folder not in out:
                out.append(folder)
        return out

    def _files(self, kind: str) -> list[tuple[str, Path]]:
        kind = _kind(kind)
        exts = EXTENSIONS[kind]
        seen, out = set(), []
        for folder in self.folders(kind):
            for file in sorted(folder.rglob("*")):
                if file.is_file() and file.suffix.lower() in exts and not file.name.startswith("."):
                    name = file.relative_to(folder).as_posix()
                    if name not in seen:
                        seen.add(name)
                        out.append((name, file))
        return out

    def list(self, kind: str) -> list[str]:
        """Names of the ``kind`` files (relative paths, sorted)."""
        return sorted(name for name, _ in self._files(kind))

    def all(self) -> dict[str, list[str]]:
        """``{kind: names}`` for every kind."""
        return {kind: self.list(kind) for kind in LAYOUTS}

    def find(self, kind: str, name: str) -> Path:
        """The file called ``name``: a relative path, a file name, or a name without extension (case-insensitive
        when unambiguous). Raises :class:`ModelLoadError` with close matches when it is not there."""
        kind = _kind(kind)
        want = name.replace("\\", "/").strip()
        files = self._files(kind)
        for match in (
            lambda n, f: n == want,
            lambda n, f: f.name == want,
            lambda n, f: n.rsplit(".", 1)[0] == want or f.stem == want,
            lambda n, f: n.lower() == want.lower() or f.name.lower() == want.lower(),
            lambda n, f: n.rsplit(".", 1)[0].lower() == want.lower() or f.stem.lower() == want.lower(),
        ):
            hits = [f for n, f in files if match(n, f)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                names = [n for n, f in files if f in hits]
                raise ModelLoadError(name, f"ambiguous {kind} name; it matches {', '.join(names)}")
        where = ", ".join(str(f) for f in self.folders(kind)) or \
            f"no {kind} folder ({' or '.join(LAYOUTS[kind])}) under {self.root}"
        names = [n for n, _ in files]
        stems = {n.rsplit(".", 1)[0]: n for n in names}
        close = difflib.get_close_matches(want, names, n=3, cutoff=0.5) + [
            stems[s] for s in difflib.get_close_matches(want, list(stems), n=3, cutoff=0.5)]
        close = list(dict.fromkeys(close))[:3]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
            (f"; there are {len(names)} {kind}" if names else f"; there are no {kind}")
        raise ModelLoadError(name, f"no such {kind} model in {where}{hint}")

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in self.all().items())
        return f"ModelFolders({self.root}; {counts})"
