import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
