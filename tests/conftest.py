import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A models_dir also lists this machine's Hugging Face cache, A1111's COMMANDLINE_ARGS folders and the
# NBDIFFUSE_EXTRA_MODEL_PATHS yaml (models/folders.py): the tests see none of the machine's own
# (tests/test_model_paths.py makes its own). Inherited by the kernels and Ray workers the tests start.
os.environ["HF_HUB_CACHE"] = _EMPTY_HF_CACHE = tempfile.mkdtemp(prefix="nbdiffuse-tests-hf-")
atexit.register(shutil.rmtree, _EMPTY_HF_CACHE, True)
for _name in ("HUGGINGFACE_HUB_CACHE", "COMMANDLINE_ARGS", "NBDIFFUSE_EXTRA_MODEL_PATHS"):
    os.environ.pop(_name, None)
# The tiny test models are overhead-bound: one intra-op thread is as fast, and two threads per process thrash when
# notebook kernels, JupyterLab and the browser test share the two cores. Inherited by the kernels we start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd1():
    from nbdiffuse.testing import tiny_sd1

    return tiny_sd1()


@pytest.fixture(scope="session")
def sd2():
    from nbdiffuse.testing import tiny_sd2

    return tiny_sd2()


@pytest.fixture(scope="session")
def sdxl():
    from nbdiffuse.testing import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture
def session(sd1, tmp_path):
    from nbdiffuse import Session

    s = Session(outputs_dir=tmp_path / "outputs", progress=False)
    s.load(sd1)
    return s


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A Session with the embedded toy model, saving into a temporary folder (one per test module)."""
    from nbdiffuse import Session

    s = Session(outputs_dir=tmp_path_factory.mktemp("outputs"), progress=False)
    s.load("toy")
    return s


@pytest.fixture(scope="module")
def red(toy):
    """The toy model's own picture of a large red circle on white (64x64)."""
    return toy.txt2img(prompt="a large red circle in the centre on a white background", seed=3, steps=12).image


def drive(gen, replace=None):
    """Run a step generator (a sampler, a job) to its end, sending ``replace(state)`` after each step (None: keep
    the latent); returns ``(what it returned, every StepState)``. Tests import it: ``from conftest import drive``."""
    states = []
    try:
        state = next(gen)
        while True:
            states.append(state)
            state = gen.send(replace(state) if replace is not None else None)
    except StopIteration as stop:
        return stop.value, states
