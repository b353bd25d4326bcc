"""Single-file checkpoints: round trips, architecture/prediction detection, safety, errors, no network, memory."""

import gc
import json
import pickle
import socket
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from nbdiffuse.models.checkpoint import inspect_checkpoint, load_checkpoint, load_vae, swap_vae
from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.save import save_checkpoint


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIFFUSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The three tiny archs saved as A1111 single files (fresh bundles: fixtures elsewhere get moved/cast)."""
    from nbdiffuse.testing import tiny_sd1, tiny_sd2, tiny_sdxl

    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for make in (tiny_sd1, tiny_sd2, tiny_sdxl):
        b = make()
        out[b.arch] = (b, save_checkpoint(b, d / f"{b.name}.safetensors"))
    return out


def modules(b):
    return [b.unet, b.vae, *b.text_encoders]


def assert_same_weights(a, b):
    for m1, m2 in zip(modules(a), modules(b), strict=True):
        assert type(m1) is type(m2)
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert s1.keys() == s2.keys()
        for k in s1:
            assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k


def strip_metadata(src, dst, drop=(), extra=None):
    tensors = {k: v for k, v in load_file(src).items() if not any(k.startswith(p) for p in drop)}
    tensors.update(extra or {})
    save_file(tensors, dst)
    return dst


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_round_trip_is_bit_identical(files, arch):
    bundle, path = files[arch]
    loaded = load_checkpoint(path, hash=False)
    assert loaded.arch == bundle.arch and loaded.prediction_type == bundle.prediction_type
    assert loaded.info["prediction_source"] == "metadata nbdiffuse.prediction_type"
    assert_same_weights(bundle, loaded)
    for m1, m2 in zip(modules(bundle), modules(loaded)):
        c1 = m1.config if isinstance(m1.config, dict) else m1.config.to_dict()
        c2 = m2.config if isinstance(m2.config, dict) else m2.config.to_dict()
        for k, v in c1.items():
            if not k.startswith("_") and k != "transformers_version":
                w = c2.get(k)
                assert (list(v) if isinstance(v, tuple) else v) == (list(w) if isinstance(w, tuple) else w), k
    assert loaded.tokenizers[0].pad_token_id == bundle.tokenizers[0].pad_token_id
    assert loaded.alphas_cumprod.dtype == torch.float32 and torch.equal(loaded.alphas_cumprod, bundle.alphas_cumprod)
    assert loaded.hash is None and loaded.path == str(path)
    # the same modules compute the same thing (weights are bit-identical above; a loaded weight is a view into the
    # file's memory map, whose address alignment can select another CPU kernel that rounds differently: ~1e-6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, bundle.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    kw = {}
    if arch == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32), "time_ids": torch.ones(1, 6) * 64}
    with torch.no_grad():
        expected, got = bundle.unet(x, 500, ctx, **kw).sample, loaded.unet(x, 500, ctx, **kw).sample
    assert torch.allclose(expected, got, rtol=0, atol=1e-5), (expected - got).abs().max()


def test_file_layout_is_a1111s(files):
    _, p1 = files["sd1"]
    keys = set(load_file(p1))
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert load_file(p1)["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in LDM
    b2, p2 = files["sd2"]
    sd2 = load_file(p2)
    n = b2.text_encoders[0].config.num_hidden_layers
    w = sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert w.shape[0] == 3 * w.shape[1]
    # the extra identity layer (A1111 runs to the penultimate layer) is all zeros
    assert not sd2[f"cond_stage_model.model.transformer.resblocks.{n}.attn.in_proj_weight"].any()
    _, p3 = files["sdxl"]
    xl = load_file(p3)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in xl
    assert "conditioner.embedders.1.model.text_projection" in xl
    assert "model.diffusion_model.label_emb.0.0.weight" in xl


def test_fp16_save_and_load(files, tmp_path):
    bundle, _ = files["sdxl"]
    p = save_checkpoint(bundle, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_checkpoint(p, dtype=torch.float16, hash=False)
    assert loaded.info["file_dtypes"].keys() == {"float16"}
    for m1, m2 in zip(modules(bundle), modules(loaded)):
        s2 = m2.state_dict()
        for k, v in m1.state_dict().items():
            assert torch.equal(v.half(), s2[k]), k


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_architecture_detected_from_keys_and_shapes_alone(files, tmp_path, arch):
    _, path = files[arch]
    bare = strip_metadata(path, tmp_path / "bare.safetensors")
    loaded = load_checkpoint(bare, hash=False)
    assert loaded.arch == arch and not loaded.info["metadata_config"]
    if arch == "sd2":
        assert loaded.info["prediction_source"].startswith("A1111 SD2 test")
    else:
        assert loaded.prediction_type == "epsilon" and loaded.info["prediction_source"].startswith("default")


def test_prediction_type_from_yaml_and_v_pred_key(files, tmp_path):
    _, p2 = files["sd2"]
    bare = strip_metadata(p2, tmp_path / "m.safetensors")
    (tmp_path / "m.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    b = load_checkpoint(bare, hash=False)
    assert b.prediction_type == "v_prediction" and "m.yaml" in b.info["prediction_source"]
    (tmp_path / "m.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert load_checkpoint(bare, hash=False).prediction_type == "epsilon"
    _, p3 = files["sdxl"]
    vp = strip_metadata(p3, tmp_path / "xl.safetensors", extra={"v_pred": torch.zeros(0)})
    b = load_checkpoint(vp, hash=False)
    assert b.arch == "sdxl" and b.prediction_type == "v_prediction" and b.info["prediction_source"] == "v_pred key"


def test_native_size_from_the_file(files, tmp_path):
    # with nbdiffuse's metadata the saved sample_size comes back (the tiny models' 8 latents = 64 pixels)
    for arch in ("sd1", "sd2", "sdxl"):
        assert load_checkpoint(files[arch][1], hash=False).native_size == (64, 64)
    # a bare A1111 file: the family's training size, SD2 told apart by its prediction type (as diffusers' configs)
    sizes = {}
    for arch, parameterization in (("sd1", None), ("sd2", "v"), ("sd2", "eps"), ("sdxl", None)):
        bare = strip_metadata(files[arch][1], tmp_path / f"{arch}-{parameterization}.safetensors")
        if parameterization:
            bare.with_suffix(".yaml").write_text(f"model:\n  params:\n    parameterization: {parameterization}\n")
        b = load_checkpoint(bare, hash=False)
        sizes[(arch, b.prediction_type)] = b.native_size
    assert sizes == {("sd1", "epsilon"): (512, 512), ("sd2", "v_prediction"): (768, 768),
                     ("sd2", "epsilon"): (512, 512), ("sdxl", "epsilon"): (1024, 1024)}


def test_distilled_sdxl_with_dropped_transformer_blocks(files, tmp_path):
    bundle, path = files["sdxl"]
    # SSD-1B-style: drop the second transformer block from one up-side attention layer only (asymmetric UNet)
    drop = ("model.diffusion_model.output_blocks.1.1.transformer_blocks.1.",)
    sd = load_file(path)
    meta = {"nbdiffuse.config": json.dumps({"unet": {"attention_head_dim": [2, 4], "norm_num_groups": 8},
                                            "vae": {"norm_num_groups": 8}})}
    save_file({k: v for k, v in sd.items() if not k.startswith(drop)}, tmp_path / "ssd.safetensors", meta)
    b = load_checkpoint(tmp_path / "ssd.safetensors", hash=False)
    assert b.arch == "sdxl" and "distilled" in b.info["variant"]
    assert b.info["unet_transformer_blocks"] == 7
    assert len(b.unet.up_blocks[0].attentions[1].transformer_blocks) == 1
    assert len(b.unet.up_blocks[0].attentions[0].transformer_blocks) == 2
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = b.unet(x, 10, torch.randn(1, 77, 96),
                     added_cond_kwargs={"text_embeds": torch.randn(1, 32), "time_ids": torch.ones(1, 6)}).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the same file with SDXL base shapes (Turbo/Lightning are SDXL base shapes) is not "distilled"
    assert load_checkpoint(path, hash=False).info["variant"] == "SDXL base"


def test_sdxl_refiner_shapes(tmp_path):
    from diffusers import UNet2DConditionModel

    from nbdiffuse.models.bundle import ModelBundle, scaled_linear_alphas_cumprod
    from nbdiffuse.testing import tiny_sdxl

    xl = tiny_sdxl()
    te2 = xl.text_encoders[1]  # OpenCLIP-style, hidden 64, projection 32
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 5 * 8)
    refiner = ModelBundle(unet=unet, vae=xl.vae, text_encoders=[te2], tokenizers=[xl.tokenizers[1]],
                          arch="sdxl_refiner", prediction_type="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod())
    p = save_checkpoint(refiner, tmp_path / "refiner.safetensors")
    assert any(k.startswith("conditioner.embedders.0.model.") for k in load_file(p))
    b = load_checkpoint(strip_metadata(p, tmp_path / "bare.safetensors"), hash=False)
    assert b.arch == "sdxl_refiner" and b.info["variant"] == "SDXL refiner"
    assert b.unet.config.addition_time_embed_dim == 8 and len(b.text_encoders) == 1
    assert_same_weights(refiner, load_checkpoint(p, hash=False))


def test_ckpt_loads_through_weights_only(files, tmp_path):
    bundle, path = files["sd1"]
    tensors = load_file(path)
    torch.save({"state_dict": tensors, "global_step": 470000, "epoch": 6}, tmp_path / "m.ckpt")
    b = load_checkpoint(tmp_path / "m.ckpt", hash=False)
    assert b.info["format"] == "torch-zip" and b.arch == "sd1"
    assert_same_weights(bundle, b)
    torch.save(tensors, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    b = load_checkpoint(tmp_path / "legacy.pt", hash=False)
    assert b.info["format"] == "torch-legacy"
    assert_same_weights(bundle, b)


class Evil:
    marker = None

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_executing(files, tmp_path):
    _, path = files["sd1"]
    marker = tmp_path / "pwned.txt"
    evil = Evil()
    evil.marker = marker
    torch.save({"state_dict": load_file(path), "callback": evil}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelLoadError, match="refused.*nothing from it was executed") as e:
        load_checkpoint(tmp_path / "evil.ckpt")
    assert "evil.ckpt" in str(e.value)
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump(evil, f)
    with pytest.raises(ModelLoadError):
        load_checkpoint(tmp_path / "raw.pt")
    assert not marker.exists()


def bad_files(files, d):
    """One file per kind of problem: (name, path, what the message must mention)."""
    _, good = files["sd1"]
    data = good.read_bytes()
    out = []
    p = d / "empty.safetensors"
    p.write_bytes(b"")
    out.append((p, "empty"))
    p = d / "truncated.safetensors"
    p.write_bytes(data[: len(data) // 2])
    out.append((p, "truncated"))
    p = d / "corrupt.safetensors"
    p.write_bytes(data[:8] + b"{\x00\xff garbage" + data[20:])
    out.append((p, "corrupt"))
    p = d / "image.safetensors"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    out.append((p, "corrupt"))
    p = d / "notes.ckpt"
    p.write_bytes(b"this is not a checkpoint at all\n" * 10)
    out.append((p, "unrecognised file format"))
    p = d / "zip.ckpt"
    p.write_bytes(b"PK\x03\x04" + bytes(200))
    out.append((p, "corrupt PyTorch"))
    p = d / "unknown.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, p)
    out.append((p, "not a Stable Diffusion checkpoint"))
    p = d / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, p)
    out.append((p, "LoRA"))
    p = d / "missing.safetensors"
    save_file({k: v for k, v in load_file(good).items() if "output_blocks.2.0" not in k}, p)
    out.append((p, "unknown architecture|missing"))
    p = d / "instruct-pix2pix.safetensors"  # inpainting UNets (9 channels) load; 8 is instruct-pix2pix
    sd = load_file(good)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 8, 3, 3)
    save_file(sd, p)
    out.append((p, "8 input channels: an instruct-pix2pix model"))
    p = d / "vae_only.safetensors"
    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(good).items()
               if k.startswith("first_stage_model.")}, p)
    out.append((p, "VAE"))
    p = d / "folder.safetensors"
    p.mkdir()
    out.append((p, "folder"))
    out.append((d / "nonexistent.safetensors", "no such file"))
    return out


def test_each_bad_file_raises_one_clear_error(files, tmp_path):
    for path, what in bad_files(files, tmp_path):
        with pytest.raises(ModelLoadError, match=what) as e:
            load_checkpoint(path)
        assert path.name in str(e.value) and isinstance(e.value, ValueError), str(e.value)


def test_session_keeps_previous_model_after_each_bad_file(files, tmp_path):
    from nbdiffuse import Session

    s = Session(device="cpu", outputs_dir=None, progress=False)
    _, good = files["sd1"]
    model = s.load(good)
    params = dict(prompt="a red circle", steps=2, seed=3, width=64, height=64, sampler_name="Euler")
    before = s.txt2img(**params).latents
    for path, _ in bad_files(files, tmp_path):
        with pytest.raises(ModelLoadError):
            s.load(path)
        assert s.model is model
    with pytest.raises(ModelLoadError, match="no such file"):
        s.load("not-a-model-name")
    for not_a_model in (None, 123, "", " "):  # '' was read as the current folder, None/123 failed inside pathlib
        with pytest.raises(ModelLoadError, match="not a model: pass a file path"):
            s.load(not_a_model)
        if not_a_model is not None:  # load_vae(None) means "the checkpoint's own VAE again"
            with pytest.raises(ModelLoadError, match="not a model: pass a file path"):
                s.load_vae(not_a_model)
        assert s.model is model
    assert torch.equal(s.txt2img(**params).latents, before)
    assert model.info["report"].startswith("Weights loaded in ")


def test_report_and_info(files):
    _, path = files["sdxl"]
    b = load_checkpoint(path)
    assert b.hash == b.info["hash"] and len(b.hash) == 10 and len(b.info["legacy_hash"]) == 8
    t = b.info["timings"]
    assert {"import", "read", "build", "apply", "hash", "total"} <= set(t)
    import re

    assert re.fullmatch(r"Weights loaded in \d+\.\ds \(import: \d+\.\ds, read: \d+\.\ds, build: \d+\.\ds, "
                        r"apply: \d+\.\ds, hash: \d+\.\ds\)", b.info["report"])
    assert b.info["arch"] == "sdxl" and b.info["dtype"] == "float32" and b.info["format"] == "safetensors"


def test_weights_are_assigned_from_the_mapping_not_copied(files):
    """Same dtype on CPU: parameters are views of the file mapping (no random init, no second copy)."""
    _, path = files["sd1"]
    plan = inspect_checkpoint(path)
    assert all(p.is_meta for p in plan.components[0].module.parameters())  # built on the meta device
    file_tensor = plan.sd.tensors["model.diffusion_model.out.2.weight"]
    b = plan.build(device="cpu", dtype=torch.float32)
    assert b.unet.conv_out.weight.data_ptr() == file_tensor.data_ptr()


def test_loading_opens_no_network_connection(files, tmp_path, monkeypatch):
    from nbdiffuse import Session

    attempts = []

    def refuse(name):
        def f(*args, **kwargs):
            attempts.append((name, args[1:] if args else args))
            raise OSError(f"network use during loading: {name}")
        return f

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    s = Session(device="cpu", outputs_dir=None, progress=False)
    for arch in ("sd1", "sd2", "sdxl"):
        _, path = files[arch]
        s.load(strip_metadata(path, tmp_path / f"{arch}.safetensors"))  # the detection paths, hashing included
    _, path = files["sdxl"]
    vae_file = tmp_path / "vae.safetensors"
    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(path).items()
               if k.startswith("first_stage_model.")}, vae_file)
    s.load_vae(vae_file)
    assert attempts == []


def test_vae_files_ldm_and_diffusers_layouts(files, tmp_path):
    from nbdiffuse import Session

    bundle, path = files["sdxl"]
    ldm = tmp_path / "ldm_vae.safetensors"
    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(path).items()
               if k.startswith("first_stage_model.")}, ldm)
    diff = tmp_path / "sdxl_vae_fp16_fix.safetensors"  # the fp16-fix VAE ships in diffusers layout too
    save_file({k: v.half() for k, v in bundle.vae.state_dict().items()}, diff)
    ckpt = tmp_path / "vae.pt"
    torch.save({"state_dict": {**load_file(ldm), "loss.logvar": torch.zeros(())}}, ckpt)
    for f, dtype in ((ldm, torch.float32), (diff, torch.float16), (ckpt, torch.float32)):
        vae = load_vae(f, dtype=dtype, arch="sdxl", scaling_factor=None)
        ref = {k: v.to(dtype) for k, v in bundle.vae.state_dict().items()}
        got = vae.state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), f
    with pytest.raises(ModelLoadError, match="not a VAE.*LoRA"):
        load_vae(_lora_file(tmp_path))
    # session: swap and restore
    s = Session(device="cpu", outputs_dir=None, progress=False)
    model = s.load(path, hash=False)
    own = model.vae
    s.load_vae(ldm)
    assert model.vae is not own and model.vae.config.scaling_factor == own.config.scaling_factor
    s.load_vae(None)
    assert model.vae is own
    old = swap_vae(model, load_vae(ldm, arch="sdxl"))
    assert old is own


def _lora_file(d):
    p = d / "a_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, p)
    return p


def test_switching_frees_the_previous_model(files, tmp_path):
    from nbdiffuse import Session

    s = Session(device="cpu", outputs_dir=None, progress=False)
    refs = []
    order = ["sd1", "sdxl", "sd2", "sd1", "sdxl"]
    for i, arch in enumerate(order):
        _, path = files[arch]
        bundle = s.load(path, hash=False)
        refs.append((weakref.ref(bundle.unet), weakref.ref(bundle.vae), weakref.ref(bundle.text_encoders[0])))
        del bundle
        gc.collect()
        for old in refs[:i]:
            assert all(r() is None for r in old), f"model {i} kept an earlier one alive"
    assert all(r() is not None for r in refs[-1])
    s.unload()
    gc.collect()
    assert all(r() is None for r in refs[-1])


def test_modules_are_built_without_running_weight_initialisers(files, monkeypatch):
    """Every weight comes from the file: the initialisers would only cost time (half the build, measured)."""
    calls = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "constant_", "xavier_uniform_"):
        monkeypatch.setattr(torch.nn.init, name, lambda *a, _n=name, **k: calls.append(_n))
    _, path = files["sdxl"]
    b = load_checkpoint(path, hash=False)
    assert not calls
    assert not any(p.is_meta for m in (b.unet, b.vae, *b.text_encoders) for p in m.parameters())
    ids = next(v for k, v in b.text_encoders[0].named_buffers() if k.endswith("position_ids"))  # from arange
    assert torch.equal(ids, torch.arange(ids.shape[-1]).expand_as(ids))


def test_import_stage_is_reported_apart_from_read(files):
    from nbdiffuse.models.checkpoint import import_model_classes, import_model_classes_in_background

    import_model_classes_in_background()  # already imported here: starts nothing, and the load does not wait
    import_model_classes()
    _, path = files["sd1"]
    t = load_checkpoint(path, hash=False).info["timings"]
    assert t["import"] < 0.05 and set(t) >= {"import", "read", "build", "apply"}


def test_unload_without_a_model_skips_the_full_collection(monkeypatch, files):
    import nbdiffuse.session as session_module
    from nbdiffuse import Session

    calls = []
    monkeypatch.setattr(session_module.gc, "collect", lambda *a: calls.append(a) or 0)
    s = Session(device="cpu", outputs_dir=None, progress=False)
    s.unload()
    assert not calls  # nothing was loaded: nothing to collect
    s.load(files["sd1"][1], hash=False)
    s.unload()
    assert calls and s.model is None


def test_a_session_imports_the_model_classes_in_the_background(files):
    """In a fresh process Session() starts the import; an import of the same modules on the main thread meanwhile
    waits for it (no half-initialised module), and the load then finds them imported."""
    import subprocess
    import sys

    code = f"""
import sys, threading
import nbdiffuse
s = nbdiffuse.Session(device="cpu", outputs_dir=None, progress=False)
assert any(t.name == "nbdiffuse-imports" for t in threading.enumerate()), "no background import"
from diffusers import UNet2DConditionModel, AutoencoderKL
from transformers import CLIPTextModel
m = s.load({str(files["sd1"][1])!r}, hash=False)
print(m.info["timings"]["import"] < 0.5, UNet2DConditionModel.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "UNet2DConditionModel"]
