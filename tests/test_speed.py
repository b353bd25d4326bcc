"""Attention back-ends by name and session.compile() (issue 17, Speed), on the CPU with the tiny SD1 model."""

from __future__ import annotations

import pytest
import torch

from nbdiffuse import Session
from nbdiffuse.models import attention as A
from nbdiffuse.models import compile as C


def _processors(module):
    return {type(m.processor).__name__ for m in module.modules() if hasattr(m, "set_processor")}


def test_sdpa_is_the_default_and_is_said(session):
    assert session.attention == "sdpa"
    assert _processors(session.model.unet) == {"AttnProcessor2_0"}
    assert "attention=sdpa" in repr(session)
    assert "attention sdpa" in session.model.info["load_line"]


def test_unknown_attention_names_the_usable_ones(tmp_path):
    names = r"unknown attention 'flash9'.*'sdpa', 'xformers', 'plain'.*usable here: sdpa, plain"
    with pytest.raises(ValueError, match=names):
        Session(outputs_dir=None, attention="flash9")


def test_xformers_missing_or_on_cpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(A, "xformers_version", lambda: None)
    with pytest.raises(ValueError, match=r"pip install 'nbdiffuse\[gpu\]'"):
        Session(outputs_dir=None, attention="xformers")
    monkeypatch.setattr(A, "xformers_version", lambda: "0.0.28")
    with pytest.raises(ValueError, match="CUDA only"):
        Session(outputs_dir=None, device="cpu", attention="xformers")


def test_xformers_installs_its_processor_where_cuda_is(sd1, monkeypatch):
    monkeypatch.setattr(A, "xformers_version", lambda: "0.0.28")
    try:
        assert A.set_attention(sd1, "xformers", device="cuda") == "xformers"
        assert _processors(sd1.unet) == {"XFormersAttnProcessor"}
        assert _processors(sd1.vae) == {"XFormersAttnProcessor"}
    finally:
        A.set_attention(sd1, "sdpa")
    assert _processors(sd1.unet) == {"AttnProcessor2_0"}


def test_plain_attention_gives_the_same_image_and_attention_maps_still_work(session):
    ref = session.txt2img(prompt="a red circle", steps=3, seed=1, width=64, height=64).latents[0]
    session.set_attention("plain")
    try:
        assert _processors(session.model.unet) == {"AttnProcessor"}
        with session.attention_maps(words=["circle"]) as maps:
            r = session.txt2img(prompt="a red circle", steps=3, seed=1, width=64, height=64)
        assert maps.heatmap("circle").shape == (64, 64)
        assert _processors(session.model.unet) == {"AttnProcessor"}  # the recording processors are gone again
        torch.testing.assert_close(r.latents[0], ref, atol=1e-4, rtol=1e-4)
        assert "attention=plain" in repr(session)
    finally:
        session.set_attention("sdpa")


def test_a_custom_processor_is_left_alone(sd1):
    layer = next(m for m in sd1.unet.modules() if hasattr(m, "set_processor"))
    original = layer.processor

    class Mine:
        def __call__(self, *args, **kwargs):
            return original(*args, **kwargs)

    layer.set_processor(Mine())
    try:
        A.set_attention(sd1, "plain")
        assert isinstance(layer.processor, Mine)
        assert A.attention_of(sd1) == "mixed"
    finally:
        layer.set_processor(original)
        A.set_attention(sd1, "sdpa")


def test_compile_reuses_one_graph_across_prompts_seeds_and_cfg(session):
    """The eager back-end traces with dynamo exactly as inductor does (graphs, guards, recompiles) but skips code
    generation, which on the CPU takes a minute per shape even for the tiny UNet."""
    import torch._dynamo

    eager = session.txt2img(prompt="a red circle", steps=2, seed=1, width=64, height=64).latents[0]
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    session.compile(backend="eager")
    try:
        assert C.is_compiled(session.model.unet) and "compiled" in repr(session)
        first = session.txt2img(prompt="a red circle", steps=2, seed=1, width=64, height=64).latents[0]
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        session.txt2img(prompt="a blue square", steps=2, seed=2, cfg_scale=4, width=64, height=64)
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile
        torch.testing.assert_close(first, eager, atol=1e-4, rtol=1e-4)  # channels_last rounds a little differently
    finally:
        session.compile(False)
    assert not C.is_compiled(session.model.unet) and "compiled" not in repr(session)


def test_compile_without_a_cpp_compiler_says_so(session, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C.. compiler on the CPU.*apt-get install g\\+\\+"):
        session.compile()
    assert not C.is_compiled(session.model.unet)


def test_a_vae_loaded_later_gets_the_sessions_attention(session):
    from nbdiffuse.models import tiny_sd1

    session.set_attention("plain")
    try:
        session.load_vae(tiny_sd1(seed=5).vae)  # another VAE module, made with diffusers' default processors
        assert _processors(session.model.vae) == {"AttnProcessor"}
        session.load_vae(None)  # the checkpoint's own again
        assert _processors(session.model.vae) == {"AttnProcessor"}
        line = session.model.info["load_line"]  # the load line still says all of it, once
        assert line.count("attention plain") == 1 and "Precision:" in line and line.endswith(
            session.model.info["memory"])
    finally:
        session.set_attention("sdpa")
