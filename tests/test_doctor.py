"""nbdiffuse.doctor(): one line per check on this machine, and a failing check still prints its line."""

from __future__ import annotations

import io
import sys

import nbdiffuse
from nbdiffuse import health as D


def test_doctor_prints_every_check_on_this_machine(session):
    out = io.StringIO()
    lines = nbdiffuse.doctor(session, file=out)
    assert [line.split(":")[0] for line in lines] == list(D.CHECKS)
    assert out.getvalue().splitlines() == lines
    text = out.getvalue()
    assert "torch " in text and "sdpa in use" in text and "GB free for" in text
    assert "could not check" not in text


def test_a_failing_check_still_prints_a_line_and_the_others_run(monkeypatch):
    def broken(session=None):
        raise OSError("nvidia-smi hung")

    monkeypatch.setitem(D.CHECKS, "card", broken)
    out = io.StringIO()
    lines = nbdiffuse.doctor(file=out)
    card = next(line for line in lines if line.startswith("card:"))
    assert "could not check (OSError: nvidia-smi hung)" in card
    assert len(lines) == len(D.CHECKS) and lines[-1].startswith("disk:")


def test_missing_helpers_say_not_available(monkeypatch):
    monkeypatch.setitem(sys.modules, "nbdiffuse.models.memory", None)  # importing it raises ImportError
    assert D.check_memory().startswith("not available")


def test_no_models_folder_says_what_to_do(tmp_path):
    assert "pass Session(models_dir=...)" in D.check_models(models_dir=tmp_path / "nowhere")


def test_the_ray_line_says_what_executor_ray_would_do_without_importing_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(D, "_version", lambda name: None if name == "ray" else "1.0")
    assert D.check_ray().startswith("not installed") and 'pip install "nbdiffuse[ray]"' in D.check_ray()
    monkeypatch.setattr(D, "_version", lambda name: "2.60.0")
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert "starts a local Ray bound to 127.0.0.1" in D.check_ray()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "RAY_ADDRESS=10.0.0.5:6379: executor=\"ray\" joins that cluster" in D.check_ray()
    assert "ray" not in sys.modules  # the check reads the installed version only
