"""Old .ckpt files that pickle pytorch-lightning and numpy objects load through weights_only plus an allow-list;
anything else in a pickle is still refused before it runs. pytorch_lightning is not needed: the files are built
with a fake module registered only while saving."""

import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from nbdiffuse.models.errors import ModelLoadError
from nbdiffuse.models.state_dict import LightningStandIn, load_pickle, read_state_dict

WEIGHTS = {"model.diffusion_model.out.2.weight": torch.arange(24.0).reshape(2, 3, 2, 2),
           "first_stage_model.decoder.conv_out.bias": torch.tensor([1.0, -2.0, 3.0])}


class _FakeLightning:
    """pytorch_lightning.callbacks.model_checkpoint in sys.modules while a test saves, gone before it loads."""

    NAMES = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    MODULES = [types.ModuleType(name) for name in NAMES]
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": NAMES[2]})
    MODULES[2].ModelCheckpoint = ModelCheckpoint
    MODULES[1].model_checkpoint = MODULES[2]

    def __enter__(self):
        for m in self.MODULES:
            sys.modules[m.__name__] = m
        return self.ModelCheckpoint

    def __exit__(self, *exc):
        for name in self.NAMES:
            del sys.modules[name]


def lightning_checkpoint(extra=None):
    """A checkpoint dict the way pytorch-lightning 1.x saved SD models: the callback's class as a dict key, an
    instance of it, numpy scalars (bytes through _codecs.encode), a dtype, an array and a set."""
    with _FakeLightning() as ModelCheckpoint:
        callback = ModelCheckpoint()
        callback.__dict__.update(monitor="val/loss", best_k_models={})
        obj = {"state_dict": dict(WEIGHTS), "epoch": 6, "global_step": np.int64(470000),
               "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.125), "dirpath": "logs/ckpts"}},
               "callback_instance": callback, "dtype": np.dtype("float32"), "loss_history": np.arange(3.0),
               "tags": {"sd", "v1"}, "optimizer_states": [], "lr_schedulers": [], **(extra or {})}
        return obj


def save(obj, path, legacy=False):
    with _FakeLightning():  # pickling a class looks it up by module name
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_lightning_ckpt_loads_without_pytorch_lightning(tmp_path):
    path = save(lightning_checkpoint(), tmp_path / "sd-v1-4.ckpt")
    assert "pytorch_lightning" not in sys.modules
    sd = read_state_dict(path)
    assert sd.format == "torch-zip" and set(sd.tensors) == set(WEIGHTS)
    assert all(torch.equal(sd.tensors[k], v) for k, v in WEIGHTS.items())
    obj = load_pickle(path)
    assert obj["global_step"] == 470000 and obj["loss_history"].tolist() == [0.0, 1.0, 2.0]
    assert obj["dtype"] == np.dtype("float32") and obj["tags"] == {"sd", "v1"}
    [(key, state)] = obj["callbacks"].items()
    assert key is LightningStandIn and state["best_model_score"] == 0.125
    assert isinstance(obj["callback_instance"], LightningStandIn)
    assert "pytorch_lightning" not in sys.modules  # a stand-in, never an import


def test_numpy_1_module_names_in_a_legacy_file_load(tmp_path):
    """Files from 2022 name ``numpy.core.multiarray`` (numpy 2 writes ``numpy._core``), in the old non-zip format."""
    path = save(lightning_checkpoint(), tmp_path / "old.ckpt", legacy=True)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    sd = read_state_dict(path)
    assert sd.format == "torch-legacy" and all(torch.equal(sd.tensors[k], v) for k, v in WEIGHTS.items())
    assert load_pickle(path)["global_step"] == 470000


class RunsCommand:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_lightning_ckpt_that_also_calls_a_command_is_refused_naming_it(tmp_path, legacy):
    marker = tmp_path / "pwned.txt"
    for func, args, name in [(subprocess.call, (["touch", str(marker)],), ".call"),
                             (__import__("os").system, (f"touch {marker}",), ".system")]:
        path = save(lightning_checkpoint({"hook": RunsCommand(func, args)}), tmp_path / "evil.ckpt", legacy)
        with pytest.raises(ModelLoadError, match="refused.*nothing from it was executed") as e:
            read_state_dict(path)
        assert name in str(e.value) and "evil.ckpt" in str(e.value)
        assert "add_safe_globals" not in str(e.value)  # torch's advice to allow-list it is not passed on
        assert not marker.exists()


def test_allowed_globals_cannot_be_used_to_reach_other_code(tmp_path):
    """The stand-in only stores what it is given: a pickle calling it with a command runs nothing."""
    marker = tmp_path / "pwned.txt"
    with _FakeLightning() as ModelCheckpoint:
        evil = {"state_dict": dict(WEIGHTS), "x": RunsCommand(ModelCheckpoint, (f"touch {marker}",))}
        torch.save(evil, tmp_path / "m.ckpt")
    assert isinstance(load_pickle(tmp_path / "m.ckpt")["x"], LightningStandIn)
    assert not marker.exists()


def test_original_textual_inversion_embedding_with_a_parameter_dict_loads(tmp_path):
    """rinongal's textual-inversion code (2022) saved string_to_param as an nn.ParameterDict, which A1111 allows."""
    from nbdiffuse.models.embeddings import load_embedding

    vec = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": params}, tmp_path / "old_ti.pt")
    emb = load_embedding(tmp_path / "old_ti.pt", hash=False)
    assert torch.equal(next(iter(emb.vectors.values())), vec)


def test_a_pt_lora_goes_through_the_same_allow_list(tmp_path):
    """A LoRA saved as .pt with numpy objects beside its tensors loads; one whose pickle runs a command is refused."""
    from nbdiffuse.models.lora import load_lora

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {f"{key}.lora_down.weight": torch.randn(4, 32), f"{key}.lora_up.weight": torch.randn(32, 4),
               f"{key}.alpha": torch.tensor(4.0)}
    torch.save({**tensors, "epoch": np.float64(3.0)}, tmp_path / "old.pt")
    assert key in load_lora(tmp_path / "old.pt", hash=False).modules
    marker = tmp_path / "pwned.txt"
    torch.save({**tensors, "hook": RunsCommand(subprocess.call, (["touch", str(marker)],))}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="refused"):
        load_lora(tmp_path / "evil.pt", hash=False)
    assert not marker.exists()
