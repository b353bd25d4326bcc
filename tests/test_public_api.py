"""The names users were promised exist, work without internals, and document themselves with an example."""

import doctest
import importlib

import pytest
import torch

PROMISED = {
    "nbdiffuse.prompts": ["parse_attention", "schedule", "split_and", "count_tokens", "tokenize_chunks"],
    "nbdiffuse.models": ["save_checkpoint", "load_checkpoint"],
}


@pytest.mark.parametrize("module,names", PROMISED.items())
def test_promised_names_exist_and_are_in_all(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert callable(getattr(mod, name)), name
        assert name in mod.__all__ and name in dir(mod)


def test_tokenizing_needs_no_tokenizer_argument():
    from nbdiffuse import prompts

    chunks, count = prompts.tokenize_chunks("a (red:1.2) circle BREAK blue")
    assert count == 76 and len(chunks) == 2 and chunks[0].weights[2] == pytest.approx(1.2)
    assert str(prompts.count_tokens("一只可爱的猫，坐在窗台上，阳光，高清")) == "41/75"  # A1111's count


def test_save_checkpoint_takes_a_session_and_a_dtype(session, tmp_path):
    from nbdiffuse import models

    path = models.save_checkpoint(session, tmp_path / "half.safetensors", torch.float16)
    loaded = models.load_checkpoint(path, hash=False)
    assert loaded.unet.dtype == torch.float32 and loaded.arch == session.model.arch
    with pytest.raises(TypeError, match="saves a ModelBundle or a Session"):
        models.save_checkpoint("not a model", tmp_path / "x.safetensors")


PUBLIC = ["nbdiffuse", "nbdiffuse.prompts", "nbdiffuse.models", "nbdiffuse.infotext", "nbdiffuse.viz",
          "nbdiffuse.inspect", "nbdiffuse.ui"]


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_has_an_example(module):
    mod = importlib.import_module(module)
    names = [name for name in mod.__all__ if callable(getattr(mod, name))]  # constants document themselves
    assert names
    missing = [name for name in names if ">>>" not in (getattr(mod, name).__doc__ or "")]
    assert not missing, f"{module}: no example in the docstring of {missing}"


@pytest.mark.parametrize("module", ["nbdiffuse.prompts", "nbdiffuse.prompts.parser", "nbdiffuse.prompts.conditioning",
                                    "nbdiffuse.models.bundle", "nbdiffuse.models.errors", "nbdiffuse.suggest",
                                    "nbdiffuse.infotext", "nbdiffuse.io.infotext", "nbdiffuse.viz.latents",
                                    "nbdiffuse.inspect.previews", "nbdiffuse.ui.labels", "nbdiffuse.jobs.params",
                                    "nbdiffuse.session", "nbdiffuse.sampling.base"])
def test_the_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
