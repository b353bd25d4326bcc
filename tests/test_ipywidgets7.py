"""The panel's unit tests on ipywidgets 7.7.1, the version Colab ships (our requirement is ``ipywidgets>=7.7,<9``).

A venv with ``--system-site-packages`` gets ``ipywidgets==7.7.1`` from PyPI (with its own widgetsnbextension);
torch, diffusers, anywidget and the rest come from this environment, and nbdiffuse from this checkout's ``src``.
The panel's test modules then run there in a subprocess, and every test they hold must pass (the only skip allowed
is the one for a machine without node, which checks JavaScript syntax and has nothing to do with ipywidgets).
The venv is kept between runs in the temp folder, keyed by this interpreter and the requirement, and checked
before use; a fresh machine builds it (about 10 s).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = "ipywidgets==7.7.1"
VERSION = REQUIREMENT.split("==")[1]
#: The widget tests: the panel driven from Python (tabs, uploads, gallery, inpainting, extras), no browser; and the
#: outputs of a notebook run in a kernel of the venv (the panel's display data, HTML fallbacks) exported to HTML.
MODULES = ["tests/test_panel.py", "tests/test_inpaint_panel.py", "tests/test_extras_panel.py",
           "tests/test_html_fallback.py"]
#: Skips that are not about ipywidgets (a machine without node cannot check the painter's JavaScript syntax).
ALLOWED_SKIPS = ("node is not installed",)

CHECK = f"""
import ipywidgets, anywidget, nbdiffuse, pathlib, sys
assert ipywidgets.__version__ == {VERSION!r}, ipywidgets.__version__
assert pathlib.Path(ipywidgets.__file__).resolve().is_relative_to(pathlib.Path(sys.prefix).resolve()), \\
    ipywidgets.__file__
from nbdiffuse.ui import MaskPainter, Panel
print(pathlib.Path(nbdiffuse.__file__).resolve())
"""


def _env(venv: Path | None = None) -> dict:
    """This checkout's src first on the path, whatever nbdiffuse the system site-packages point at; with ``venv``,
    its ``python`` first on PATH (the installed kernelspec runs ``python -m ipykernel_launcher``)."""
    env = dict(os.environ)
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(_python(venv).parent), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(venv)
        # nbconvert's templates (and kernelspecs) are data files of this environment, which a venv does not search
        data = str(Path(sysconfig.get_path("data")) / "share" / "jupyter")
        env["JUPYTER_PATH"] = os.pathsep.join([data, *filter(None, [env.get("JUPYTER_PATH")])])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _check(venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(_python(venv)), "-c", CHECK], capture_output=True, text=True, env=_env(venv),
                          cwd=ROOT)


def _build(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True,
                   capture_output=True, text=True)
    pip = subprocess.run([str(_python(path)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          REQUIREMENT], capture_output=True, text=True)
    assert pip.returncode == 0, f"pip install {REQUIREMENT} failed (PyPI must be reachable):\n{pip.stderr[-3000:]}"


@pytest.fixture(scope="module")
def venv() -> Path:
    """A venv with ipywidgets 7.7.1 over this environment's packages; reused when it still checks out."""
    key = hashlib.sha256(f"{sys.executable}\n{sys.version}\n{REQUIREMENT}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"nbdiffuse-ipywidgets7-{key}"
    if path.exists() and _check(path).returncode == 0:
        return path
    build = Path(tempfile.mkdtemp(prefix=f"{path.name}-build-", dir=path.parent))
    _build(build)
    # a stale or half-built venv is replaced; another run that got there first is used as it is
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    try:
        build.rename(path)
    except OSError:
        shutil.rmtree(build, ignore_errors=True)
    return path


def test_the_venv_has_ipywidgets_7_and_imports_this_checkouts_nbdiffuse(venv):
    check = _check(venv)
    assert check.returncode == 0, check.stderr
    assert Path(check.stdout.strip()) == ROOT / "src" / "nbdiffuse" / "__init__.py"


def test_the_panels_unit_tests_pass_on_ipywidgets_7(venv, tmp_path):
    collected = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                                *MODULES], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert collected.returncode == 0, collected.stdout[-3000:]
    expected = {line.strip() for line in collected.stdout.splitlines() if "::" in line}
    assert len(expected) > 40, collected.stdout[-3000:]

    report = tmp_path / "junit.xml"
    run = subprocess.run([str(_python(venv)), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                          "ignore::DeprecationWarning", f"--junitxml={report}", *MODULES],
                         capture_output=True, text=True, cwd=ROOT, env=_env(venv))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]

    cases = ET.parse(report).getroot().iter("testcase")
    passed, skipped = set(), {}
    for case in cases:
        node = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        skip = case.find("skipped")
        bad = [c.tag for c in case if c.tag in ("failure", "error")]
        assert not bad, (node, bad)
        if skip is not None:
            skipped[node] = skip.get("message", "")
        else:
            passed.add(node)
    assert passed | skipped.keys() == expected, sorted(expected ^ (passed | skipped.keys()))[:10]
    assert all(any(reason in msg for reason in ALLOWED_SKIPS) for msg in skipped.values()), skipped
    assert len(passed) >= len(expected) - 1  # at most the one JavaScript syntax check
