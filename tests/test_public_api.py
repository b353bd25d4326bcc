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
          "nbdiffuse.inspect", "nbdiffuse.ui", "nbdiffuse.masks"]


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
                                    "nbdiffuse.session", "nbdiffuse.sampling.base", "nbdiffuse.testing",
                                    "nbdiffuse.prompts.styles", "nbdiffuse.io.keys", "nbdiffuse.masks",
                                    "nbdiffuse.viz.masks", "nbdiffuse.ui.painter"])
def test_the_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------------- what users read uses public names only
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _code_sources():
    """(where, python source) of every notebook code cell, README python block and benchmark script."""
    import json
    import re

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                yield f"{nb.name} cell {i}", "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                                                       for line in lines)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme, re.S)):
        yield f"README.md python block {i}", block
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        yield script.name, script.read_text(encoding="utf-8")


def non_public_uses(source: str) -> list[str]:
    """The nbdiffuse names ``source`` imports or reaches (``nbdiffuse.x.y``) that are not public: a module of
    ``PUBLIC`` and a name in its ``__all__``."""
    import ast

    public = {m: set(importlib.import_module(m).__all__) for m in PUBLIC}
    submodules = {m.rpartition(".")[2] for m in PUBLIC if m != "nbdiffuse"}
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nbdiffuse"):
            for alias in node.names:
                if node.module not in public or (alias.name not in public[node.module]
                                                  and not (node.module == "nbdiffuse" and alias.name in submodules)):
                    bad.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names if a.name.startswith("nbdiffuse") and a.name not in public]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nbdiffuse"
              and node.attr not in public["nbdiffuse"] and node.attr not in submodules):
            bad.append(f"nbdiffuse.{node.attr}")
    return bad


def test_the_public_name_check_finds_internals():
    assert non_public_uses("from nbdiffuse.jobs.img2img import img2img_sigmas") == [
        "from nbdiffuse.jobs.img2img import img2img_sigmas"]
    assert non_public_uses("import nbdiffuse.toy\nnbdiffuse.toy.load_toy()") == ["import nbdiffuse.toy",
                                                                               "nbdiffuse.toy"]
    assert non_public_uses("from nbdiffuse.prompts import parser") == ["from nbdiffuse.prompts import parser"]
    assert non_public_uses("import nbdiffuse\nfrom nbdiffuse import Session, viz\nfrom nbdiffuse.models import "
                           "tiny_sd1\nnbdiffuse.infotext.parse('')") == []


def test_notebooks_readme_and_benchmarks_use_public_names_only():
    found = {where: bad for where, source in _code_sources() if (bad := non_public_uses(source))}
    assert not found, found
