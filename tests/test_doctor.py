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
