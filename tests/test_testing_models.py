"""Tiny random SD1/SD2/SDXL bundles (nbdiffuse.testing), save_diffusers and load_diffusers_folder."""

import json
import os
import shutil
import socket
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nbdiffuse.models.bundle import scaled_linear_alphas_cumprod  # noqa: E402
from nbdiffuse.models.loading import load_diffusers_folder  # noqa: E402
from nbdiffuse.testing import save_diffusers, tiny_sd1, tiny_sd2, tiny_sdxl  # noqa: E402

BUILDERS = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl}
EXPECTED = {  # arch -> (prediction type, text hidden sizes, pad ids, vae scaling factor)
    "sd1": ("epsilon", [32], [49407], 0.18215),
    "sd2": ("v_prediction", [32], [0], 0.18215),
    "sdxl": ("epsilon", [32, 64], [49407, 0], 0.13025),
}


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"network was tried: {attempts}"


@pytest.fixture(scope="module")
def bundles():
    return {arch: build() for arch, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def saved(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    return {arch: save_diffusers(b, root / f"tiny-{arch}") for arch, b in bundles.items()}


def encode(bundle, prompts):
    """SD-style conditioning: (context [B,77,C], pooled or None) using the bundle's own tokenizers."""
    hidden, pooled = [], None
    for tok, te in zip(bundle.tokenizers, bundle.text_encoders):
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ids = ids.input_ids
        out = te(ids, output_hidden_states=True)
        if bundle.arch == "sdxl":
            hidden.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", pooled)
        else:
            hidden.append(out.last_hidden_state)
    return torch.cat(hidden, dim=-1), pooled


def unet_eps(bundle, x, t, context, pooled):
    kwargs = {}
    if bundle.arch == "sdxl":
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(x.shape[0], 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    return bundle.unet(x, t, encoder_hidden_states=context, **kwargs).sample


def state_dicts_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_build_is_fast_and_deterministic(arch, bundles):
    BUILDERS[arch]()  # warm (lazy imports, tokenizer cache)
    t0 = time.perf_counter()
    again = BUILDERS[arch]()
    elapsed = time.perf_counter() - t0
    print(f"tiny_{arch}: {elapsed:.3f} s")
    assert elapsed < 3.0  # typically ~0.05 s; loose for a shared CI box
    other = BUILDERS[arch](seed=1)
    for m_a, m_b, m_c in zip(bundles[arch].text_encoders + [bundles[arch].unet, bundles[arch].vae],
                             again.text_encoders + [again.unet, again.vae],
                             other.text_encoders + [other.unet, other.vae]):
        assert state_dicts_equal(m_a, m_b)
        assert not state_dicts_equal(m_a, m_c)


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_sd1(seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_bundle_shape(arch, bundles):
    b = bundles[arch]
    prediction, hidden, pads, scaling = EXPECTED[arch]
    assert b.arch == arch and b.prediction_type == prediction
    assert torch.equal(b.alphas_cumprod, scaled_linear_alphas_cumprod())
    assert b.alphas_cumprod.dtype == torch.float32
    assert b.latent_channels == 4 and b.vae_scale_factor == 8 and b.vae.config.latent_channels == 4
    assert b.vae.config.scaling_factor == scaling
    assert b.dtype == torch.float32 and b.device == torch.device("cpu")
    assert [te.config.hidden_size for te in b.text_encoders] == hidden
    assert [t.pad_token_id for t in b.tokenizers] == pads
    for te in b.text_encoders:
        assert te.config.vocab_size == 49408 and te.config.max_position_embeddings == 77
    for m in (b.unet, b.vae, *b.text_encoders):
        assert not m.training
        assert all(p.dtype == torch.float32 for p in m.parameters())
    assert b.unet.config.cross_attention_dim == sum(hidden)
    if arch == "sd2":
        assert b.text_encoders[0].config.hidden_act == "gelu"
        assert b.unet.config.use_linear_projection
        assert isinstance(b.unet.config.attention_head_dim, (list, tuple))
    if arch == "sdxl":
        assert type(b.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
        assert b.unet.config.addition_embed_type == "text_time"
        assert b.unet.config.projection_class_embeddings_input_dim == (
            b.text_encoders[1].config.projection_dim + 6 * b.unet.config.addition_time_embed_dim)


@pytest.mark.parametrize("arch", list(BUILDERS))
@torch.no_grad()
def test_forward_passes(arch, bundles):
    b = bundles[arch]
    context, pooled = encode(b, ["a photo of a cat", "a red circle"])
    assert context.shape == (2, 77, b.unet.config.cross_attention_dim)
    if arch == "sdxl":
        assert pooled.shape == (2, 32)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500])
    out = unet_eps(b, x, t, context, pooled)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.abs().mean() > 1e-3  # non-trivial init
    assert not torch.allclose(out[0], out[1])
    # different conditioning -> different output, for the same latents and timestep
    same_x, same_t = x[:1].repeat(2, 1, 1, 1), torch.tensor([500, 500])
    out2 = unet_eps(b, same_x, same_t, context, pooled)
    assert (out2[0] - out2[1]).abs().max() > 1e-4
    # VAE: 64x64 image <-> 8x8 latent
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    latent = b.vae.encode(img).latent_dist.mean
    assert latent.shape == (1, 4, 8, 8)
    assert b.vae.decode(latent).sample.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_save_load_round_trip(arch, bundles, saved, no_network):
    folder, b = saved[arch], bundles[arch]
    names = {p.name for p in folder.iterdir()}
    expected = {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    if arch == "sdxl":
        expected |= {"text_encoder_2", "tokenizer_2"}
    assert expected <= names
    assert list((folder / "unet").glob("*.safetensors")) and not list(folder.rglob("*.bin"))
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert [sched[k] for k in ("beta_start", "beta_end")] == [0.00085, 0.012]
    assert sched["beta_schedule"] == "scaled_linear"
    assert sched["prediction_type"] == b.prediction_type

    loaded = load_diffusers_folder(folder)
    assert (loaded.arch, loaded.prediction_type) == (b.arch, b.prediction_type)
    assert loaded.name == folder.name and loaded.path == str(folder)
    assert torch.equal(loaded.alphas_cumprod, b.alphas_cumprod)
    for m_a, m_b in zip([b.unet, b.vae, *b.text_encoders], [loaded.unet, loaded.vae, *loaded.text_encoders]):
        assert type(m_a) is type(m_b) and state_dicts_equal(m_a, m_b)
        assert not m_b.training
    assert [t.pad_token_id for t in loaded.tokenizers] == [t.pad_token_id for t in b.tokenizers]
    for t_a, t_b in zip(b.tokenizers, loaded.tokenizers):
        assert t_a("wow! a photo of a cat").input_ids == t_b("wow! a photo of a cat").input_ids
    timings = loaded.info["timings"]
    assert {"configs", "unet", "vae", "text_encoders", "tokenizers", "total"} <= set(timings)
    print(f"load {arch}: " + ", ".join(f"{k}={v:.3f}s" for k, v in timings.items()))


def test_saved_tokenizer_folders_reload_like_diffusers(saved):
    from transformers import CLIPTokenizer

    tok2 = CLIPTokenizer.from_pretrained(str(saved["sdxl"] / "tokenizer_2"), local_files_only=True)
    assert tok2.pad_token_id == 0
    assert tok2("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    for sub in ("tokenizer", "tokenizer_2"):  # as in real SD repos
        for name in ("vocab.json", "merges.txt"):
            assert (saved["sdxl"] / sub / name).is_file()


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_diffusers_pipeline_loads_saved_folder(arch, saved, no_network):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    extra = {} if arch == "sdxl" else {"safety_checker": None}
    pipe = cls.from_pretrained(str(saved[arch]), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3)


def test_diffusers_pipeline_loads_sd2_folder(saved, no_network):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(saved["sd2"]), local_files_only=True,
                                                   safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.pad_token_id == 0


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_unet_names_it(saved, tmp_path):
    folder = copy_folder(saved["sd1"], tmp_path / "broken")
    shutil.rmtree(folder / "unet")
    with pytest.raises(FileNotFoundError, match=r"unet/"):
        load_diffusers_folder(folder)


def test_missing_weights_and_bad_paths(saved, tmp_path):
    folder = copy_folder(saved["sdxl"], tmp_path / "noweights")
    for f in (folder / "text_encoder_2").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="text_encoder_2.*weights"):
        load_diffusers_folder(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_diffusers_folder(tmp_path / "does-not-exist")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_diffusers_folder(tmp_path / "model.safetensors")


def test_missing_tokenizer_and_scheduler_fall_back(saved, tmp_path, no_network):
    folder = copy_folder(saved["sd2"], tmp_path / "minimal")
    shutil.rmtree(folder / "tokenizer")
    shutil.rmtree(folder / "scheduler")
    loaded = load_diffusers_folder(folder)
    # no scheduler config: epsilon by default, but the gelu (OpenCLIP) text encoder still says sd2
    assert loaded.arch == "sd2" and loaded.prediction_type == "epsilon"
    assert loaded.tokenizers[0].pad_token_id == 0
    assert loaded.info["tokenizers"] == ["shipped:open_clip (no tokenizer/ folder)"]
    assert torch.equal(loaded.alphas_cumprod, scaled_linear_alphas_cumprod())


def test_scheduler_variants(saved, tmp_path):
    from diffusers import DDPMScheduler

    folder = copy_folder(saved["sd1"], tmp_path / "linear")
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    # scaled_linear agrees with diffusers' own computation (float32 there, float64 here)
    ref = DDPMScheduler.from_config(cfg).alphas_cumprod
    assert torch.allclose(load_diffusers_folder(folder).alphas_cumprod, ref, rtol=0, atol=1e-5)

    linear = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
    cfg_file.write_text(json.dumps({**cfg, **linear}))
    loaded = load_diffusers_folder(folder)
    ref = DDPMScheduler(**linear).alphas_cumprod
    assert loaded.info["scheduler"]["beta_schedule"] == "linear"
    assert torch.allclose(loaded.alphas_cumprod, ref, rtol=0, atol=1e-5)

    cfg_file.write_text(json.dumps({**cfg, "beta_schedule": "squaredcos_cap_v2"}))
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        load_diffusers_folder(folder)
    cfg_file.write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    assert load_diffusers_folder(folder).arch == "sd2"  # v-prediction without gelu is still called sd2


def test_custom_schedule_round_trips_via_trained_betas(tmp_path):
    b = tiny_sd1()
    b.alphas_cumprod = scaled_linear_alphas_cumprod(0.0001, 0.02)
    loaded = load_diffusers_folder(save_diffusers(b, tmp_path / "custom"))
    assert torch.allclose(loaded.alphas_cumprod, b.alphas_cumprod, rtol=1e-6, atol=1e-7)


def test_load_dtype(saved):
    loaded = load_diffusers_folder(saved["sd1"], dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for m in (loaded.vae, *loaded.text_encoders) for p in m.parameters())
