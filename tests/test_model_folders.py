"""A1111 and ComfyUI model folder layouts: listing, finding by name, and Session(models_dir=...)."""

import pytest

from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.folders import ModelFolders


@pytest.fixture(autouse=True)
def _no_other_sources(tmp_path, monkeypatch):
    """Only the folders made here: not this machine's Hugging Face cache, A1111 arguments or extra yaml."""
    for var in ("HUGGINGFACE_HUB_CACHE", "HF_HOME", "COMMANDLINE_ARGS", "NBDIFFUSE_EXTRA_MODEL_PATHS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))


def touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


@pytest.fixture
def a1111(tmp_path):
    root = tmp_path / "stable-diffusion-webui"
    touch(root, "models/Stable-diffusion/dreamshaper_8.safetensors", "models/Stable-diffusion/xl/juggernaut.ckpt",
          "models/Stable-diffusion/dreamshaper_8.yaml", "models/Stable-diffusion/readme.txt",
          "models/Lora/detail.safetensors", "models/LyCORIS/loha.safetensors", "models/VAE/vae-ft-mse.pt",
          "embeddings/easynegative.safetensors", "models/ESRGAN/4x.pth", "models/RealESRGAN/x4plus.pth")
    return root


@pytest.fixture
def comfy(tmp_path):
    root = tmp_path / "ComfyUI"
    touch(root, "models/checkpoints/sd_xl_base_1.0.safetensors", "models/loras/style.safetensors",
          "models/vae/sdxl_vae.safetensors", "models/embeddings/neg.pt", "models/upscale_models/4x-Ultra.pth")
    return root


def test_a1111_layout_from_root_or_models_folder(a1111):
    for given in (a1111, a1111 / "models"):
        f = ModelFolders(given)
        assert f.list("checkpoints") == ["dreamshaper_8.safetensors", "xl/juggernaut.ckpt"]
        assert f.list("loras") == ["detail.safetensors", "loha.safetensors"]
        assert f.list("vae") == ["vae-ft-mse.pt"]
        assert f.list("embeddings") == ["easynegative.safetensors"]
        assert f.list("upscalers") == ["4x.pth", "x4plus.pth"]


def test_comfyui_layout(comfy):
    f = ModelFolders(comfy / "models")
    assert f.all() == {"checkpoints": ["sd_xl_base_1.0.safetensors"], "loras": ["style.safetensors"],
                       "vae": ["sdxl_vae.safetensors"], "embeddings": ["neg.pt"], "upscalers": ["4x-Ultra.pth"],
                       "hypernetworks": []}


def test_find_by_name_with_or_without_extension_or_relative_path(a1111):
    f = ModelFolders(a1111)
    want = a1111 / "models/Stable-diffusion/xl/juggernaut.ckpt"
    for name in ("xl/juggernaut.ckpt", "juggernaut.ckpt", "juggernaut", "xl/juggernaut", "Juggernaut"):
        assert f.find("checkpoints", name) == want, name
    assert f.find("lora", "detail") == a1111 / "models/Lora/detail.safetensors"
    with pytest.raises(ModelLoadError, match="did you mean 'dreamshaper_8.safetensors'") as e:
        f.find("checkpoints", "dreamshaper8")
    assert "Stable-diffusion" in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="unknown model kind"):
        f.list("controlnets")


def test_session_models_and_load_by_name(tmp_path, monkeypatch):
    from nbdiffuse import Session
    from nbdiffuse.models.save import save_checkpoint
    from nbdiffuse.testing import tiny_sd1

    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "webui"
    (root / "models/Stable-diffusion").mkdir(parents=True)
    save_checkpoint(tiny_sd1(), root / "models/Stable-diffusion/tiny.safetensors")
    s = Session(device="cpu", outputs_dir=None, progress=False, models_dir=root / "models")
    assert s.models()["checkpoints"] == ["tiny.safetensors"]
    b = s.load("tiny")
    assert b.arch == "sd1" and s.model is b and b.name == "tiny"
    with pytest.raises(ModelLoadError, match="did you mean 'tiny.safetensors'"):
        s.load("tinny")
    assert s.model is b
    assert Session(device="cpu", outputs_dir=None).models()["checkpoints"] == []


def test_toy_or_clear_error():
    from nbdiffuse import Session

    s = Session(device="cpu", outputs_dir=None, progress=False)
    try:
        b = s.load("toy")
    except ModelLoadError as e:
        assert "toy" in str(e)
    else:
        assert b.arch == "sd1" and s.model is b
