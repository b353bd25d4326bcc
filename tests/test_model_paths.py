"""Models on another disk: ComfyUI's extra_model_paths.yaml, A1111's COMMANDLINE_ARGS folder flags and the diffusers
pipelines of the Hugging Face cache, found by ModelFolders and used by Session.load / load_vae / <lora:...> tags."""

import os
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from nbdiffuse import health
from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.folders import ModelFolders, a1111_folders

BASE = dict(negative_prompt="", steps=2, width=64, height=64, seed=9, sampler_name="Euler")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """The machine's own Hugging Face cache, A1111 arguments and yaml never matter: every test gets empty ones."""
    empty = tmp_path / "no-hf-cache"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "COMMANDLINE_ARGS",
                "NBDIFFUSE_EXTRA_MODEL_PATHS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "hash-cache"))


def touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- ComfyUI's extra_model_paths.yaml --------------------------------------------------------------------------

@pytest.fixture
def shared_disk(tmp_path):
    """A ComfyUI install whose yaml points at an A1111 install and a central models folder on a data disk."""
    comfy, webui, disk = tmp_path / "ComfyUI", tmp_path / "data" / "stable-diffusion-webui", tmp_path / "data" / "store"
    touch(comfy, "models/checkpoints/own.safetensors", "models/loras/own_lora.safetensors")
    touch(webui, "models/Stable-diffusion/dreamshaper_8.safetensors", "models/Lora/detail.safetensors",
          "models/LyCORIS/loha.safetensors", "models/VAE/vae-ft-mse.pt", "embeddings/easyneg.pt",
          "models/ESRGAN/4x.pth", "models/ControlNet/canny.pth")
    touch(disk, "ckpt/juggernaut.safetensors", "lora/style.safetensors", "lora/own_lora.safetensors",
          "upscale/4x-Ultra.pth", "clip/clip_l.safetensors", "diffusers/sd15/model_index.json")
    write(comfy / "extra_model_paths.yaml", """\
        # as in ComfyUI's extra_model_paths.yaml.example
        a111:
            base_path: ../data/stable-diffusion-webui/

            checkpoints: models/Stable-diffusion
            configs: models/Stable-diffusion
            vae: models/VAE
            loras: |
                 models/Lora
                 models/LyCORIS
            upscale_models: |
                          models/ESRGAN
                          models/RealESRGAN
            embeddings: embeddings
            hypernetworks: models/hypernetworks
            controlnet: models/ControlNet

        comfyui:
            base_path: $DATA_DISK/store
            checkpoints: ckpt/
            loras: |
                lora
                not-there
            upscale_models: upscale
            clip: clip
            diffusers: diffusers

        empty_section:
        """)
    return comfy, webui, disk


def test_comfyui_yaml_sections_multiline_entries_and_relative_base_path(shared_disk, monkeypatch):
    comfy, webui, disk = shared_disk
    monkeypatch.setenv("DATA_DISK", str(disk.parent))  # base_path's $VARS are expanded, as ComfyUI does
    for given in (comfy, comfy / "models", comfy / "extra_model_paths.yaml"):
        f = ModelFolders(given)
        assert f.list("checkpoints") == ["dreamshaper_8.safetensors", "juggernaut.safetensors", "own.safetensors",
                                         "sd15"], given
        assert f.list("loras") == ["detail.safetensors", "loha.safetensors", "own_lora.safetensors",
                                   "style.safetensors"]
        assert f.list("vae") == ["vae-ft-mse.pt"] and f.list("embeddings") == ["easyneg.pt"]
        assert f.list("upscalers") == ["4x-Ultra.pth", "4x.pth"]
    # ComfyUI's own models/ first, then the sections in file order: the install's own_lora wins over the disk's
    assert f.find("loras", "own_lora") == comfy / "models/loras/own_lora.safetensors"
    assert f.find("loras", "loha") == webui / "models/LyCORIS/loha.safetensors"
    assert f.find("checkpoints", "sd15") == disk / "diffusers/sd15"
    assert f.folders("loras") == [comfy / "models/loras", webui / "models/Lora", webui / "models/LyCORIS",
                                  disk / "lora"]
    text = repr(f)
    assert "extra_model_paths.yaml [a111]: 1 checkpoints, 2 loras, 1 vae, 1 embeddings, 1 upscalers" in text
    assert f"missing loras folder {disk / 'not-there'} (extra_model_paths.yaml line 23)" in text
    assert "not read (not models nbdiffuse loads): configs, controlnet" in text
    assert "not read (not models nbdiffuse loads): clip" in text
    assert f"models_dir {comfy}: 1 checkpoints, 1 loras" in text


def test_is_default_section_comes_first_and_absolute_paths_ignore_base_path(tmp_path):
    comfy, store = tmp_path / "ComfyUI", tmp_path / "store"
    touch(comfy, "models/loras/same.safetensors")
    touch(store, "loras/same.safetensors", "abs/other.safetensors")
    write(comfy / "extra_model_paths.yaml", f"""\
        store:
            base_path: {store}
            is_default: true
            loras: |
                loras
                {store / 'abs'}
        """)
    f = ModelFolders(comfy)
    assert f.find("loras", "same") == store / "loras/same.safetensors"
    # each is_default folder is inserted at the front, as ComfyUI's add_model_folder_path(..., is_default=True)
    assert f.folders("loras") == [store / "abs", store / "loras", comfy / "models/loras"]


def test_yaml_without_base_path_is_relative_to_its_folder_and_found_by_env_var(tmp_path, monkeypatch):
    from nbdiffuse import Session

    touch(tmp_path / "disk", "models/ckpt/far.safetensors")
    yaml_file = write(tmp_path / "disk" / "paths.yaml", "mine:\n  checkpoints: models/ckpt\n")
    touch(tmp_path, "webui/models/Stable-diffusion/near.safetensors")
    monkeypatch.setenv("NBDIFFUSE_EXTRA_MODEL_PATHS", f"{yaml_file}{os.pathsep}{tmp_path / 'gone.yaml'}")
    f = ModelFolders(tmp_path / "webui")
    assert f.list("checkpoints") == ["far.safetensors", "near.safetensors"]
    assert f"missing config {tmp_path / 'gone.yaml'}" in repr(f)
    # a platform that sets the variable needs no models_dir at all
    assert Session(device="cpu", outputs_dir=None).models()["checkpoints"] == ["far.safetensors"]


@pytest.mark.parametrize("text,line,what", [
    ("a111:\n  base_path: x\n  loras: [a, b\n", 4, "not valid YAML"),
    ("a111:\n  base_path: x\n    checkpoints: y\n", 3, "not valid YAML"),
    ("- just\n- a list\n", 1, "expected sections"),
    ("a111:\n  base_path: x\n  loras:\n    - a\n    - b\n", 3, "a111.loras must be a folder"),
])
def test_malformed_yaml_names_the_file_and_line(tmp_path, text, line, what):
    yaml_file = write(tmp_path / "extra_model_paths.yaml", text)
    with pytest.raises(ValueError, match=what) as e:
        ModelFolders(yaml_file)
    assert f"{yaml_file}, line {line}:" in str(e.value)


# --- A1111's COMMANDLINE_ARGS ------------------------------------------------------------------------------------

def test_commandline_args_in_webui_user_sh(tmp_path):
    webui, disk = tmp_path / "stable-diffusion-webui", tmp_path / "disk"
    touch(webui, "models/Stable-diffusion/local.safetensors", "models/Lora/ignored.safetensors")
    touch(disk, "ckpt/sub/far.safetensors", "loras/detail.safetensors", "esrgan/4x.pth")
    write(webui / "webui-user.sh", f"""\
        #!/bin/bash
        #export COMMANDLINE_ARGS="--ckpt-dir /nowhere"
        export COMMANDLINE_ARGS="--xformers --ckpt-dir '{disk / 'ckpt'}' --lora-dir={disk / 'loras'} --medvram \\
        --esrgan-models-path ../disk/esrgan --vae-dir /missing/vae --port 7860"
        """)
    f = ModelFolders(webui)
    # --ckpt-dir is searched before models/Stable-diffusion; --lora-dir replaces models/Lora, as in A1111
    assert f.list("checkpoints") == ["local.safetensors", "sub/far.safetensors"]
    assert f.folders("checkpoints") == [disk / "ckpt", webui / "models/Stable-diffusion"]
    assert f.list("loras") == ["detail.safetensors", "ignored.safetensors"]  # models_dir's own layout is kept too
    assert f.find("upscalers", "4x") == disk / "esrgan/4x.pth"  # relative to the WebUI root, where webui.sh runs
    text = repr(f)
    assert "COMMANDLINE_ARGS (webui-user.sh): --ckpt-dir" in text and "1 checkpoints, 1 loras, 1 upscalers" in text
    assert f"missing vae folder {os.path.normpath('/missing/vae')} (--vae-dir in webui-user.sh)" in text


def test_commandline_args_env_var_data_dir_and_models_dir(tmp_path, monkeypatch):
    webui, data = tmp_path / "webui", tmp_path / "data"
    touch(webui, "webui.sh", "launch.py")
    touch(data, "models/Stable-diffusion/a.safetensors", "embeddings/neg.pt", "models/hypernetworks/h.pt")
    monkeypatch.setenv("COMMANDLINE_ARGS", f"--data-dir {data} --unknown-flag x --ckpt ../one/z.ckpt")
    touch(tmp_path, "one/z.ckpt")
    f = ModelFolders(webui)
    assert f.all() == {"checkpoints": ["a.safetensors", "z.ckpt"], "loras": [], "vae": [], "embeddings": ["neg.pt"],
                       "upscalers": [], "hypernetworks": ["h.pt"]}
    assert f.find("checkpoints", "z") == tmp_path / "one/z.ckpt"  # --ckpt: one more file, by its name
    # --models-dir overrides <data-dir>/models; embeddings stay in <data-dir>/embeddings (A1111 1.10)
    touch(tmp_path, "elsewhere/Stable-diffusion/b.safetensors")
    monkeypatch.setenv("COMMANDLINE_ARGS", f"--data-dir={data} --models-dir {tmp_path / 'elsewhere'}")
    assert ModelFolders(webui).all()["checkpoints"] == ["b.safetensors"]
    assert ModelFolders(webui).all()["embeddings"] == ["neg.pt"]
    # the variable is A1111's: a folder that is not an A1111 install ignores it
    (tmp_path / "ComfyUI" / "models").mkdir(parents=True)
    assert ModelFolders(tmp_path / "ComfyUI").all()["checkpoints"] == []


def test_a1111_folder_flags_combine_like_a1111():
    got = a1111_folders("--models-dir /m --lyco-dir /ly --embeddings-dir e --vae-dir /v --ckpt-dir=/c", "/sd")
    assert [str(p) for p in got["checkpoints"]] == ["/c", "/m/Stable-diffusion"]
    assert [str(p) for p in got["loras"]] == ["/m/Lora", "/ly"]
    assert [str(p) for p in got["vae"]] == ["/m/VAE", "/v"]
    assert [str(p) for p in got["embeddings"]] == ["/sd/e"]
    assert [str(p) for p in got["hypernetworks"]] == ["/m/hypernetworks"]


# --- the Hugging Face cache ---------------------------------------------------------------------------------------

def _snapshot_state(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns, p.is_dir() or p.stat().st_size)
                  for p in [root, *root.rglob("*")])


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """A hub cache as huggingface_hub writes it: blobs, snapshots of symlinks, refs/main; two snapshots of one repo."""
    from nbdiffuse.testing import save_diffusers, tiny_sd1

    cache = tmp_path_factory.mktemp("hf") / "hub"
    folder = save_diffusers(tiny_sd1(), tmp_path_factory.mktemp("src") / "pipe")
    repo = cache / "models--org--tiny-sd"
    old, new = "a" * 40, "b" * 40
    for sha in (old, new):
        for file in folder.rglob("*"):
            if file.is_file():
                blob = repo / "blobs" / f"{sha[:4]}{file.relative_to(folder).as_posix().replace('/', '_')}"
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(file.read_bytes())
                link = repo / "snapshots" / sha / file.relative_to(folder)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.relpath(blob, link.parent))
    write(repo / "refs" / "main", old)  # main is the older snapshot: refs decide, not which is newest
    write(repo / "refs" / "fp32", new)
    os.utime(repo / "snapshots" / old, (1e9, 1e9))
    touch(cache, "models--org--a-text-model/snapshots/" + "c" * 40 + "/config.json")  # not a diffusers pipeline
    (cache / "version.txt").write_text("1")
    return cache


def test_hf_cache_pipelines_are_listed_and_loaded_read_only(hf_cache, tmp_path, monkeypatch):
    from nbdiffuse import Session

    monkeypatch.setenv("HF_HOME", str(hf_cache.parent))
    monkeypatch.delenv("HF_HUB_CACHE")
    webui = tmp_path / "webui"
    touch(webui, "models/Stable-diffusion/local.safetensors")
    before = _snapshot_state(hf_cache)
    s = Session(device="cpu", outputs_dir=None, progress=False, models_dir=webui)
    assert s.models()["checkpoints"] == ["local.safetensors", "org/tiny-sd", "org/tiny-sd@aaaaaaaaaa",
                                         "org/tiny-sd@fp32"]
    assert s.folders.find("checkpoints", "org/tiny-sd") == hf_cache / "models--org--tiny-sd/snapshots" / ("a" * 40)
    assert s.folders.find("checkpoints", "org/tiny-sd@bbbbbbb").name == "b" * 40  # a commit prefix
    b = s.load("org/tiny-sd@fp32")
    assert b.arch == "sd1" and b.name == "org/tiny-sd" and b.path.endswith("b" * 40)
    r = s.txt2img(prompt="a red circle", **BASE)
    assert "Model: org/tiny-sd" in r.infotexts[0]
    assert _snapshot_state(hf_cache) == before  # nothing written, touched or created in the cache
    assert f"Hugging Face cache {hf_cache}: 3 checkpoints" in repr(s.folders)
    assert "Hugging Face cache" in health.check_models(s)
    assert Session(device="cpu", outputs_dir=None).models()["checkpoints"] == []  # no models_dir: nothing is read
    # the cache folder itself (or an HF_HOME) can be the models_dir
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-home"))
    for given in (hf_cache, hf_cache.parent):
        assert ModelFolders(given).list("checkpoints")[0] == "org/tiny-sd"
    assert ModelFolders(webui).list("checkpoints") == ["local.safetensors"]


def test_hf_cache_off_and_refs_main_decides(hf_cache, tmp_path):
    webui = tmp_path / "webui"
    webui.mkdir()
    assert ModelFolders(webui, hf_cache=None).list("checkpoints") == []
    assert ModelFolders(webui, hf_cache=hf_cache).find("checkpoints", "org/tiny-sd").name == "a" * 40


# --- names from the new sources in real jobs ----------------------------------------------------------------------

def _lora(path):
    g = torch.Generator().manual_seed(0)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.randn(4, 32, generator=g) * 0.5,
               f"{key}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.5, f"{key}.alpha": torch.tensor(4.0)},
              str(path))


def test_session_loads_checkpoint_vae_and_lora_tags_through_yaml_and_commandline_args(tmp_path):
    from nbdiffuse import Session, infotext
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.testing import tiny_sd1

    comfy, disk = tmp_path / "ComfyUI", tmp_path / "disk"
    (disk / "ckpt").mkdir(parents=True)
    (disk / "vae").mkdir()
    (disk / "loras").mkdir()
    save_checkpoint(tiny_sd1(), disk / "ckpt" / "tiny.safetensors")
    full = load_file(str(disk / "ckpt" / "tiny.safetensors"))
    save_file({k.removeprefix("first_stage_model."): v for k, v in full.items() if k.startswith("first_stage_model.")},
              str(disk / "vae" / "other.vae.safetensors"))
    _lora(disk / "loras" / "detail.safetensors")
    g = torch.Generator().manual_seed(1)
    for folder, name in ((comfy / "models" / "embeddings", "own"), (disk / "embeddings", "shinystyle")):
        folder.mkdir(parents=True)
        torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=g)}}, folder / f"{name}.pt")
    write(comfy / "extra_model_paths.yaml", f"""\
        disk:
            base_path: {disk}
            checkpoints: ckpt
            vae: vae
            loras: loras
            embeddings: embeddings
        """)
    s = Session(device="cpu", outputs_dir=None, progress=False, models_dir=comfy)
    assert s.load("tiny").name == "tiny"
    s.load_vae("other.vae")
    plain = s.txt2img(prompt="a red circle", **BASE)
    tagged = s.txt2img(prompt="a red circle <lora:detail:1>", **BASE)
    assert not torch.equal(plain.latents, tagged.latents)
    fields = infotext.parse(tagged.infotexts[0])
    assert "detail" in fields["Lora hashes"] and fields["VAE"] == "other.vae"
    with pytest.raises(ModelLoadError, match="did you mean 'detail.safetensors'"):
        s.folders.find("loras", "detial")
    # embeddings from every source: ComfyUI's own folder and the yaml's
    both = infotext.parse(s.txt2img(prompt="own shinystyle", **BASE).infotexts[0])["TI hashes"]
    assert "own:" in both and "shinystyle:" in both

    # the same folders through A1111's flags
    webui = tmp_path / "webui"
    write(webui / "webui-user.sh", f'export COMMANDLINE_ARGS="--ckpt-dir {disk / "ckpt"} --lora-dir {disk / "loras"}'
                                   f' --vae-dir {disk / "vae"}"\n')
    s2 = Session(device="cpu", outputs_dir=None, progress=False, models_dir=webui)
    s2.load("tiny")
    s2.load_vae("other.vae")
    assert torch.equal(s2.txt2img(prompt="a red circle <lora:detail:1>", **BASE).latents, tagged.latents)
