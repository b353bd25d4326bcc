"""Saving images: A1111 numbering, atomic writes, no overwrites, infotext chunk."""

from __future__ import annotations

import datetime as dt
import os
import threading

from PIL import Image

from nbdiffuse.infotext import read_png
from nbdiffuse.io import outputs
from nbdiffuse.io.outputs import next_sequence_number, save_image

DAY = dt.date(2024, 5, 17)


def _img(color=(10, 20, 30)):
    return Image.new("RGB", (16, 16), color)


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".") or n.endswith(".tmp")]


def test_first_save_and_chunk(tmp_path):
    text = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 16x16"
    path = save_image(_img(), tmp_path, seed=42, infotext=text, date=DAY)
    assert path == tmp_path / "2024-05-17" / "00000-42.png"
    assert read_png(path) == text
    with Image.open(path) as im:
        assert im.size == (16, 16) and im.getpixel((0, 0)) == (10, 20, 30)
    p2 = save_image(_img(), tmp_path, seed=7, infotext=None, date="2024-05-17")
    assert p2.name == "00001-7.png" and read_png(p2) is None
    assert _leftovers(p2.parent) == []


def test_date_defaults_to_today(tmp_path):
    path = save_image(_img(), tmp_path, seed=1, infotext="x")
    assert path.parent.name == dt.date.today().strftime("%Y-%m-%d")


def test_numbering_continues_after_existing_files(tmp_path):
    day = tmp_path / "2024-05-17"
    day.mkdir()
    for name in ("00003-111.png", "00011-5.jpg", "00007.png", "notes.txt", "grid-0004.png", "0abc-9.png"):
        (day / name).write_bytes(b"x")
    assert next_sequence_number(day) == 12
    assert save_image(_img(), tmp_path, seed=99, infotext="t", date=DAY).name == "00012-99.png"
    assert save_image(_img(), tmp_path, seed=99, infotext="t", date=DAY).name == "00013-99.png"
    assert next_sequence_number(tmp_path / "missing") == 0
    (day / "123456-1.png").write_bytes(b"x")  # past 5 digits, as A1111
    assert save_image(_img(), tmp_path, seed=3, infotext="t", date=DAY).name == "123457-3.png"


def test_never_overwrites(tmp_path, monkeypatch):
    day = tmp_path / "2024-05-17"
    day.mkdir()
    (day / "00000-1.png").write_bytes(b"old")
    # Another saver takes the next name between our scan and our claim.
    real_next = outputs.next_sequence_number
    calls = []

    def racing_next(folder):
        n = real_next(folder)
        if not calls:
            (day / f"{n:05}-1.png").write_bytes(b"theirs")
        calls.append(n)
        return n

    monkeypatch.setattr(outputs, "next_sequence_number", racing_next)
    path = save_image(_img(), tmp_path, seed=1, infotext="mine", date=DAY)
    assert path.name == "00002-1.png"
    assert (day / "00000-1.png").read_bytes() == b"old"
    assert (day / "00001-1.png").read_bytes() == b"theirs"
    assert read_png(path) == "mine"
    assert _leftovers(day) == []


def test_never_overwrites_without_hard_links(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", no_link)
    day = tmp_path / "2024-05-17"
    day.mkdir()
    (day / "00004-8.png").write_bytes(b"old")
    p = save_image(_img(), tmp_path, seed=8, infotext="fallback", date=DAY)
    assert p.name == "00005-8.png" and read_png(p) == "fallback"
    assert (day / "00004-8.png").read_bytes() == b"old"
    assert _leftovers(day) == []


def test_concurrent_saves(tmp_path):
    n = 24
    paths, errors = [], []
    barrier = threading.Barrier(8)

    def worker(k):
        try:
            barrier.wait()
            for i in range(n // 8):
                seed = k * 100 + i
                paths.append(save_image(_img((k, i, 0)), tmp_path, seed=seed, infotext=f"seed {seed}",
                                        date=DAY))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(paths)) == n
    numbers = sorted(int(p.name.split("-")[0]) for p in paths)
    assert numbers == list(range(n))  # unique numbers within a process, whatever the seed
    for p in paths:
        seed = int(p.stem.split("-")[1])
        assert read_png(p) == f"seed {seed}"
    assert _leftovers(tmp_path / "2024-05-17") == []


def test_failed_save_leaves_nothing(tmp_path):
    class Broken:
        def save(self, f, **kwargs):
            f.write(b"partial")
            raise OSError("disk full")

    try:
        save_image(Broken(), tmp_path, seed=1, infotext="x", date=DAY)
    except OSError:
        pass
    else:
        raise AssertionError("expected the error to propagate")
    assert os.listdir(tmp_path / "2024-05-17") == []
