"""A1111 and ComfyUI model folders, and the configs that point elsewhere: what is there, and finding a model by name.

``ModelFolders(models_dir)`` accepts the WebUI/ComfyUI root or its ``models/`` folder and looks in both layouts:

=============  ===============================  ===========================
kind           A1111                            ComfyUI
=============  ===============================  ===========================
checkpoints    models/Stable-diffusion          models/checkpoints, models/diffusers (diffusers folders)
loras          models/Lora, models/LyCORIS      models/loras
vae            models/VAE                       models/vae
embeddings     embeddings (WebUI root)          models/embeddings
upscalers      models/ESRGAN, models/RealESRGAN models/upscale_models
hypernetworks  models/hypernetworks             models/hypernetworks
=============  ===============================  ===========================

Upscalers are also found in A1111's ``models/DAT``, ``models/HAT``, ``models/SwinIR`` and ``models/ScuNET``.
Names are file paths relative to their kind's folder, with forward slashes (``"sub/model.safetensors"``);
:meth:`ModelFolders.find` also accepts the bare file name or the name without extension.

Models elsewhere (a platform's data disk) are found through the configs A1111 and ComfyUI already use; every
folder they name is a *source*, and a name is looked up in this order (the first folder holding it wins):

1. sections of ComfyUI's ``extra_model_paths.yaml`` with ``is_default: true`` (ComfyUI puts their folders first);
2. A1111's folder flags in ``COMMANDLINE_ARGS`` (``--ckpt-dir``, ``--lora-dir``, ``--data-dir``, ``--ckpt``...): from
   ``webui-user.sh``/``webui-user.bat`` in the root, else the environment variable when the root is an A1111
   install;
3. the layouts above under ``models_dir``;
4. the other ``extra_model_paths.yaml`` sections, in file order. The yaml is read when ``models_dir`` *is* that
   file, when it lies in the root (where ComfyUI keeps it), and from ``NBDIFFUSE_EXTRA_MODEL_PATHS`` (files
   separated by ``os.pathsep``);
5. the Hugging Face hub cache (``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), read only: each diffusers pipeline there (a snapshot with ``model_index.json``)
   is a checkpoint named by its repo id, ``"org/name"`` (the snapshot ``refs/main`` points to), plus
   ``"org/name@<ref or short hash>"`` for each snapshot when there are several. ``models_dir`` may also be such a
   cache, or an ``HF_HOME`` folder.

A config that names a folder that is not there is reported (``repr``, ``nbdiffuse.doctor()``), not an error; a
yaml that is not valid raises ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
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
DIFFUSERS = "diffusers"  # folders holding diffusers pipelines (sub-folders with model_index.json): checkpoints
DIFFUSERS_LAYOUT = ("models/diffusers",)  # ComfyUI's
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
# ComfyUI's folder names (folder_paths.py) -> ours; the others (controlnet, clip, configs...) are not models we load
COMFY_KINDS = {"checkpoints": "checkpoints", "loras": "loras", "vae": "vae", "embeddings": "embeddings",
               "upscale_models": "upscalers", "hypernetworks": "hypernetworks", "diffusers": DIFFUSERS}
# A1111 1.10's folder flags: modules/cmd_args.py and paths_internal.py (--data-dir is the base of models/ and
# embeddings/; --models-dir overrides <data-dir>/models), extensions-builtin/{Lora,SwinIR,ScuNET}/preload.py.
# (kind, flag, default folder under ("models" | "data"), whether the flag replaces the default): a flag that is an
# argparse default= replaces it; --ckpt-dir and the upscaler paths are modelloader's command_path, searched before
# the default folder; --vae-dir is searched after models/VAE.
A1111_FLAGS = (
    ("checkpoints", "--ckpt-dir", ("models", "Stable-diffusion"), False),
    ("vae", "--vae-dir", ("models", "VAE"), False),
    ("loras", "--lora-dir", ("models", "Lora"), True),
    ("loras", "--lyco-dir-backcompat", ("models", "LyCORIS"), True),
    ("embeddings", "--embeddings-dir", ("data", "embeddings"), True),
    ("hypernetworks", "--hypernetwork-dir", ("models", "hypernetworks"), True),
    ("upscalers", "--esrgan-models-path", ("models", "ESRGAN"), False),
    ("upscalers", "--realesrgan-models-path", ("models", "RealESRGAN"), False),
    ("upscalers", "--dat-models-path", ("models", "DAT"), False),
    ("upscalers", "--swinir-models-path", ("models", "SwinIR"), False),
    ("upscalers", "--scunet-models-path", ("models", "ScuNET"), False),
)
A1111_FLAG_ALIASES = {"--lyco-dir": "--lyco-dir-backcompat"}  # the preload's help text names it; argparse abbreviation
A1111_MARKERS = ("webui.sh", "webui-user.sh", "webui-user.bat", "webui.py", "launch.py", "models/Stable-diffusion")
EXTRA_MODEL_PATHS = "extra_model_paths.yaml"


def _kind(kind: str) -> str:
    k = kind.lower()
    k = KIND_ALIASES.get(k, k)
    if k not in LAYOUTS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(LAYOUTS)}")
    return k


@dataclass
class ModelSource:
    """One place models are looked for: a ``label`` saying what it is, its folders per kind (``"diffusers"``: folders
    of diffusers pipelines), the folders it names that are not there (``missing``: ``(kind, path, where)``) and the
    ComfyUI keys it has that are not models nbdiffuse loads (``ignored``)."""

    label: str
    folders: dict[str, list[Path]] = field(default_factory=dict)
    missing: list[tuple[str, Path, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    first: bool = False  # a ComfyUI section with is_default: its folders go before everything else
    hf_cache: Path | None = None
    checkpoint: Path | None = None  # A1111's --ckpt: one file, listed first by its file name


def _norm(path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def read_extra_model_paths(path) -> list[ModelSource]:
    """The sections of a ComfyUI ``extra_model_paths.yaml``, read as ComfyUI reads them (``utils/extra_config.py``
    at ComfyUI commit 4328fa89): a section's ``base_path`` has ``~`` and ``$VARS`` expanded and is relative to the
    yaml's folder; each ``kind: folder`` value may be a ``|`` block of several folders, one per line, each relative
    to ``base_path`` (or to the yaml's folder without one); ``is_default: true`` puts the section's folders first.
    Empty sections are skipped, as ComfyUI does. Raises ``ValueError`` naming the file and line when it is not YAML
    or not shaped like that."""
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    fix = ("fix the file: sections like 'a111:' holding 'base_path: <folder>' and one 'kind: <folder>' per line "
           "(or a '|' block of folders), as in ComfyUI's extra_model_paths.yaml.example")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e}); {fix}") from e
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ValueError(f"{path}, line 1: expected sections (a mapping like 'comfyui:'), got a "
                         f"{type(data).__name__}; {fix}")
    lines = {}  # section -> (its line, {key: (line, whether its value is a block: one folder per line after it)})
    for key, value in root.value:
        keys = {k.value: (k.start_mark.line + 1, getattr(v, "style", None) in ("|", ">"))
                for k, v in value.value} if isinstance(value, yaml.MappingNode) else {}
        lines[key.value] = (key.start_mark.line + 1, keys)
    yaml_dir = _norm(path).parent
    sources = []
    for section, conf in data.items():
        line, key_lines = lines.get(str(section), (1, {}))
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise ValueError(f"{path}, line {line}: section {section!r} must hold 'base_path:' and 'kind: folder' "
                             f"lines, got {conf!r}; {fix}")
        conf = dict(conf)
        base = conf.pop("base_path", None)
        if base is not None:
            base = os.path.expandvars(os.path.expanduser(str(base)))
            if not os.path.isabs(base):
                base = str(yaml_dir / base)
        first = bool(conf.pop("is_default", False))
        src = ModelSource(f"{path.name} [{section}]" + (" (is_default)" if first else ""), first=first)
        for key, value in conf.items():
            kind = COMFY_KINDS.get(str(key))
            if value is None:
                continue
            key_line, block = key_lines.get(str(key), (line, False))
            if not isinstance(value, str):
                raise ValueError(f"{path}, line {key_line}: {section}.{key} must be a folder, "
                                 f"or a '|' block of folders one per line; got {value!r}; {fix}")
            if kind is None:
                src.ignored.append(str(key))
                continue
            for i, entry in enumerate(value.split("\n")):
                entry = entry.strip()
                if not entry:
                    continue
                folder = Path(os.path.normpath(os.path.join(base, entry) if base else
                                               entry if os.path.isabs(entry) else yaml_dir / entry))
                src.folders.setdefault(kind, []).append(folder)
                if not folder.is_dir():
                    src.missing.append((kind, folder, f"{path.name} line {key_line + i + block}"))
        sources.append(src)
    return sources


def _flag_values(argv: list[str]) -> dict[str, str]:
    """The values of A1111's folder flags in ``argv`` (``--flag value`` or ``--flag=value``; the last one wins,
    as with argparse); other flags are ignored."""
    known = {flag for _, flag, _, _ in A1111_FLAGS} | {"--data-dir", "--models-dir", "--ckpt"} | \
        set(A1111_FLAG_ALIASES)
    out = {}
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in known:
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                continue
            value = argv[i + 1]
        out[A1111_FLAG_ALIASES.get(flag, flag)] = value
    return out


def a1111_flag_paths(commandline_args: str, root) -> dict[str, Path]:
    """``{flag: folder}`` for A1111's folder flags in ``commandline_args``; relative folders are relative to
    ``root``, where ``webui.sh`` runs A1111 (its ``normalized_filepath`` makes them absolute from there)."""
    opts = _flag_values(shlex.split(commandline_args, posix=os.name != "nt"))
    out = {}
    for flag, value in opts.items():
        value = Path(os.path.expanduser(value.strip('"')))
        out[flag] = Path(os.path.normpath(value if value.is_absolute() else Path(root) / value))
    return out


def a1111_folders(commandline_args: str, root) -> dict[str, list[Path]]:
    """The folders A1111 1.10 searches per kind when started from ``root`` with ``commandline_args`` (its
    ``COMMANDLINE_ARGS``), in its order; relative paths are relative to ``root``, where ``webui.sh`` runs it.

    >>> a1111_folders("--xformers --lora-dir /data/loras", "/sd")["loras"]
    [PosixPath('/data/loras'), PosixPath('/sd/models/LyCORIS')]
    """
    root = Path(root)
    given_paths = a1111_flag_paths(commandline_args, root)
    data = given_paths.get("--data-dir", root)
    models = given_paths.get("--models-dir", data / "models")
    out: dict[str, list[Path]] = {}
    for kind, flag, (base, rel), replaces in A1111_FLAGS:
        default = (models if base == "models" else data) / rel
        given = given_paths.get(flag)
        folders = [default] if given is None else [given] if replaces else \
            [default, given] if kind == "vae" else [given, default]
        out.setdefault(kind, []).extend(f for f in folders if f not in out[kind])
    return out


def _commandline_args(root: Path) -> tuple[str, str] | None:
    """A1111's ``COMMANDLINE_ARGS`` for the install at ``root`` and where they came from: the last assignment in
    ``webui-user.sh`` (``webui-user.bat`` on Windows) when there is one, as webui.sh sources it over the
    environment; else the environment variable, when ``root`` is an A1111 install."""
    files = (root / "webui-user.sh", root / "webui-user.bat")
    for file in (files if os.name != "nt" else files[::-1]):
        if not file.is_file():
            continue
        value = None
        text = file.read_text(encoding="utf-8", errors="replace")
        if file.suffix == ".sh":
            text = text.replace("\\\n", "")  # a line continued with a backslash
        for line in text.splitlines():
            if file.suffix == ".sh":
                m = re.match(r"\s*(?:export\s+)?COMMANDLINE_ARGS=(.*)$", line)
                if m:
                    words = shlex.split(m.group(1), comments=True)
                    value = os.path.expandvars(" ".join(words))
            else:
                m = re.match(r'\s*set\s+"?COMMANDLINE_ARGS=(.*?)"?\s*$', line, re.IGNORECASE)
                if m:
                    value = m.group(1)
        if value is not None:
            return value, file.name
    env = os.environ.get("COMMANDLINE_ARGS")
    if env and any((root / marker).exists() for marker in A1111_MARKERS):
        return env, "$COMMANDLINE_ARGS"
    return None


def env_extra_model_paths() -> list[Path]:
    """The ``extra_model_paths.yaml`` files named by ``NBDIFFUSE_EXTRA_MODEL_PATHS`` (``os.pathsep``-separated), in
    order, whether or not they exist."""
    return [Path(p.strip()).expanduser() for p in os.environ.get("NBDIFFUSE_EXTRA_MODEL_PATHS", "").split(os.pathsep)
            if p.strip()]


def hf_hub_cache() -> Path:
    """Where the Hugging Face hub cache is, as huggingface_hub decides it, read from the environment now (its
    constants are fixed at import): ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _is_hf_cache(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("models--*")) or
                                (folder.name == "hub" and (folder / "version.txt").is_file()))


def hf_pipelines(cache) -> list[tuple[str, Path]]:
    """``(name, snapshot folder)`` for each diffusers pipeline in a hub cache: ``"org/name"`` is the snapshot
    ``refs/main`` points to (else the only one, else the newest), and with several snapshots each is also
    ``"org/name@<ref>"`` (a ref other than main pointing to it) or ``"org/name@<first 10 hex of its commit>"``.
    Only reads: nothing is created in the cache."""
    out = []
    for repo in sorted(Path(cache).glob("models--*")):
        snaps_dir = repo / "snapshots"
        if not snaps_dir.is_dir():
            continue
        snaps = sorted(s for s in snaps_dir.iterdir() if (s / "model_index.json").is_file())
        if not snaps:
            continue
        refs = {}
        if (repo / "refs").is_dir():
            for ref in sorted((repo / "refs").rglob("*")):
                if ref.is_file():
                    refs[ref.relative_to(repo / "refs").as_posix()] = ref.read_text().strip()
        repo_id = repo.name[len("models--"):].replace("--", "/")
        main = next((s for s in snaps if s.name == refs.get("main")), None)
        if main is None:
            main = max(snaps, key=lambda s: s.stat().st_mtime)
        out.append((repo_id, main))
        if len(snaps) > 1:
            for s in snaps:
                label = next((r for r, sha in refs.items() if sha == s.name and r != "main"), s.name[:10])
                out.append((f"{repo_id}@{label}", s))
    return out


class ModelFolders:
    """The model folders of an A1111 or ComfyUI installation (or its ``models/`` folder), of the configs that point
    elsewhere (ComfyUI's ``extra_model_paths.yaml``, A1111's ``COMMANDLINE_ARGS``) and the diffusers pipelines in
    the Hugging Face hub cache; see the module's docstring for the order. ``models_dir`` may also be an
    ``extra_model_paths.yaml`` (its folder is the root) or a hub cache / ``HF_HOME`` folder. ``hf_cache``:
    ``"auto"`` reads the environment's hub cache when there is one, ``None`` none, or a folder.

    >>> folders = ModelFolders("ComfyUI/extra_model_paths.yaml")  # doctest: +SKIP
    >>> folders.list("loras")  # doctest: +SKIP
    ['detail.safetensors', 'style.safetensors']
    """

    def __init__(self, models_dir, *, hf_cache: str | Path | None = "auto"):
        given = Path(models_dir).expanduser()
        yamls = []
        if given.is_file() and given.suffix.lower() in (".yaml", ".yml"):
            yamls.append(given)
            given = given.parent
        elif not given.is_dir():
            raise FileNotFoundError(f"models_dir not found: {given} (pass an A1111 or ComfyUI folder, its models/ "
                                    "folder, an extra_model_paths.yaml, or a Hugging Face cache folder)")
        # given ".../models": its parent is the install root (for A1111's top-level embeddings/)
        self.root = given.parent if given.name.lower() == "models" and not (given / "models").is_dir() else given
        self.models_dir = given
        if hf_cache == "auto":
            hub = next((p for p in (given, given / "hub") if _is_hf_cache(p)), None) or hf_hub_cache()
            hf_cache = hub if hub.is_dir() else None
        self.hf_cache = Path(hf_cache).expanduser() if hf_cache is not None else None
        if not yamls and (self.root / EXTRA_MODEL_PATHS).is_file():
            yamls.append(self.root / EXTRA_MODEL_PATHS)
        self.sources: list[ModelSource] = []
        """Every source read, in the order names are looked up."""
        args = _commandline_args(self.root)
        own = {kind: [self.root / rel for rel in rels] for kind, rels in LAYOUTS.items()}
        own[DIFFUSERS] = [self.root / rel for rel in DIFFUSERS_LAYOUT]
        if args is not None:
            value, where = args
            src = ModelSource(f"COMMANDLINE_ARGS ({where})")
            flags = a1111_flag_paths(value, self.root)
            for kind, folders in a1111_folders(value, self.root).items():
                folders = [f for f in folders if f not in own[kind]]
                if folders:
                    src.folders[kind] = folders
                    src.missing += [(kind, f, f"{flag} in {where}") for f in folders if not f.is_dir()
                                    for flag, named in flags.items() if named == f]
            src.missing += [(flag, f, where) for flag, f in flags.items()
                            if flag in ("--data-dir", "--models-dir") and not f.is_dir()]
            if "--ckpt" in flags:  # A1111 adds this file to its checkpoint list, first, by its file name
                src.checkpoint = flags["--ckpt"]
                if not src.checkpoint.is_file():
                    src.missing.append(("--ckpt", src.checkpoint, where))
            src.label += f": {' '.join(f'{k} {v}' for k, v in flags.items())}" if flags else ": no folder flags"
            self.sources.append(src)
        self.sources.append(ModelSource(f"models_dir {self.root}", folders=own))
        for extra in env_extra_model_paths():
            if _norm(extra) not in {_norm(y) for y in yamls}:
                yamls.append(extra)
        for yaml_file in yamls:
            if not yaml_file.is_file():  # named by NBDIFFUSE_EXTRA_MODEL_PATHS
                self.sources.append(ModelSource(f"{yaml_file.name} (NBDIFFUSE_EXTRA_MODEL_PATHS)",
                                                missing=[("config", yaml_file, "NBDIFFUSE_EXTRA_MODEL_PATHS")]))
                continue
            self.sources += read_extra_model_paths(yaml_file)
        if self.hf_cache is not None:
            self.sources.append(ModelSource(f"Hugging Face cache {self.hf_cache}", hf_cache=self.hf_cache))
        # ComfyUI's order: each is_default folder is inserted at the front (so a later one comes first), the others
        # appended after the default folders
        self._order: dict[str, list[tuple[Path, ModelSource]]] = {kind: [] for kind in (*LAYOUTS, DIFFUSERS)}
        for src in self.sources:
            for kind, folders in src.folders.items():
                for folder in folders:
                    if src.first:
                        self._order[kind].insert(0, (folder, src))
                    else:
                        self._order[kind].append((folder, src))

    def _folders(self, kind: str) -> list[tuple[Path, ModelSource]]:
        out, seen = [], set()
        for folder, src in self._order[kind]:
            key = _norm(folder)
            if key not in seen and folder.is_dir():
                seen.add(key)
                out.append((folder, src))
        return out

    def folders(self, kind: str) -> list[Path]:
        """Existing folders for ``kind``, in lookup order (A1111's before ComfyUI's within ``models_dir``);
        ``"diffusers"``: the folders of diffusers pipelines."""
        return [folder for folder, _ in self._folders(DIFFUSERS if kind == DIFFUSERS else _kind(kind))]

    def _entries(self, kind: str) -> list[tuple[str, Path, ModelSource]]:
        kind = _kind(kind)
        exts = EXTENSIONS[kind]
        seen, out = set(), []

        def add(name, path, src):
            if name not in seen:
                seen.add(name)
                out.append((name, path, src))

        if kind == "checkpoints":
            for src in self.sources:
                if src.checkpoint is not None and src.checkpoint.is_file():
                    add(src.checkpoint.name, src.checkpoint, src)
        for folder, src in self._folders(kind):
            for file in sorted(folder.rglob("*")):
                if file.is_file() and file.suffix.lower() in exts and not file.name.startswith("."):
                    add(file.relative_to(folder).as_posix(), file, src)
        if kind == "checkpoints":
            for folder, src in self._folders(DIFFUSERS):
                for index in sorted(folder.rglob("model_index.json")):
                    if index.parent != folder:
                        add(index.parent.relative_to(folder).as_posix(), index.parent, src)
            for src in self.sources:
                if src.hf_cache is not None and src.hf_cache.is_dir():
                    for name, snapshot in hf_pipelines(src.hf_cache):
                        add(name, snapshot, src)
        return out

    def _files(self, kind: str) -> list[tuple[str, Path]]:
        return [(name, path) for name, path, _ in self._entries(kind)]

    def list(self, kind: str) -> list[str]:
        """Names of the ``kind`` models (relative paths, diffusers folders and hub repo ids; sorted)."""
        return sorted(name for name, _ in self._files(kind))

    def all(self) -> dict[str, list[str]]:
        """``{kind: names}`` for every kind."""
        return {kind: self.list(kind) for kind in LAYOUTS}

    def find(self, kind: str, name: str) -> Path:
        """The file called ``name``: a relative path, a file name, or a name without extension (case-insensitive
        when unambiguous); for a hub pipeline ``"org/name"`` or ``"org/name@<ref or commit prefix>"``, its snapshot
        folder. Raises :class:`ModelLoadError` with close matches when it is not there."""
        kind = _kind(kind)
        want = name.replace("\\", "/").strip()
        files = self._files(kind)
        repo, _, rev = want.partition("@")
        for match in (
            lambda n, f: n == want,
            lambda n, f: f.name == want,
            lambda n, f: n.rsplit(".", 1)[0] == want or f.stem == want,
            lambda n, f: n.lower() == want.lower() or f.name.lower() == want.lower(),
            lambda n, f: n.rsplit(".", 1)[0].lower() == want.lower() or f.stem.lower() == want.lower(),
            lambda n, f: len(rev) >= 7 and n.split("@")[0] == repo and f.parent.name == "snapshots"
            and f.name.startswith(rev),
        ):
            hits = list(dict.fromkeys(f for n, f in files if match(n, f)))
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                names = [n for n, f in files if f in hits]
                raise ModelLoadError(name, f"ambiguous {kind} name; it matches {', '.join(names)}")
        where = ", ".join([str(f) for f in self.folders(kind)] + (
            [str(self.hf_cache)] if kind == "checkpoints" and self.hf_cache is not None else [])) or \
            f"no {kind} folder ({' or '.join(LAYOUTS[kind])}) under {self.root}"
        names = [n for n, _ in files]
        stems = {n.rsplit(".", 1)[0]: n for n in names}
        close = difflib.get_close_matches(want, names, n=3, cutoff=0.5) + [
            stems[s] for s in difflib.get_close_matches(want, list(stems), n=3, cutoff=0.5)]
        close = list(dict.fromkeys(close))[:3]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
            (f"; there are {len(names)} {kind}" if names else f"; there are no {kind}")
        raise ModelLoadError(name, f"no such {kind} model in {where}{hint}")

    def summary(self) -> list[str]:
        """One line per source read: what it is, how many models of each kind it holds (a name found in an
        earlier source counts there), the folders it names that are not there, and ComfyUI keys left aside."""
        counts: dict[int, dict[str, int]] = {id(src): {} for src in self.sources}
        for kind in LAYOUTS:
            for _, _, src in self._entries(kind):
                counts[id(src)][kind] = counts[id(src)].get(kind, 0) + 1
        lines = []
        for src in self.sources:
            text = ", ".join(f"{n} {k}" for k, n in counts[id(src)].items()) or "no models"
            text += "".join(f"; missing config {path}" if kind == "config" else f"; missing {kind} {path} ({where})"
                            if kind == "--ckpt" else f"; missing {kind} folder {path} ({where})"
                            for kind, path, where in src.missing)
            if src.ignored:
                text += f"; not read (not models nbdiffuse loads): {', '.join(src.ignored)}"
            lines.append(f"{src.label}: {text}")
        return lines

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in self.all().items())
        return "\n  ".join([f"ModelFolders({self.root}; {counts})", *self.summary()])
