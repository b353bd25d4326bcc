"""viz.show_tiles: SD upscale's tile grid drawn where A1111 cuts the picture (tile_plan), with each tile's seed, the
shaded overlaps and where each feather ends."""

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from nbdiffuse.jobs.sd_upscale import TilePlan
from nbdiffuse.viz import show_tiles


def test_a_picture_gets_a1111s_grid_with_shaded_overlaps_and_feather_ends():
    fig = show_tiles(Image.new("RGB", (160, 96), "white"), width=64, height=64, overlap=16)
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    # split_grid: cols = ceil((160 - 16) / 48) = 3 at x = 0, 48, 96; rows = ceil(80 / 48) = 2 at y = 0, 32
    assert sorted((b.get_x() + 0.5, b.get_y() + 0.5) for b in boxes) == [
        (0, 0), (0, 32), (48, 0), (48, 32), (96, 0), (96, 32)]
    assert [t.get_text() for t in ax.texts] == ["0", "1", "2", "3", "4", "5"]  # no seeds for a bare picture
    shade = ax.images[1].get_array()
    assert shade[10, 56, 3] > 0 and shade[10, 20, 3] == 0  # x 48..63 lies under two tiles, x 20 under one
    assert shade[40, 20, 3] > 0  # rows overlap on y 32..63
    lines = sorted(round(float(line.get_xdata()[0]), 1) for line in ax.lines if line.get_linestyle() == "--"
                   and line.get_xdata()[0] == line.get_xdata()[1])
    assert lines == [63.5, 111.5]  # each later column's feather ends overlap px after its left edge


def test_an_sd_upscale_result_shows_its_picture_and_seeds():
    plan = TilePlan((96, 64), (64, 64), 16, [0, 32], [0], seeds=[[5, 6], [6, 7]], upscaler="Lanczos")
    picture = Image.new("RGB", (96, 64), (10, 200, 30))
    result = SimpleNamespace(images=[picture, picture], sd_upscale=plan)
    ax = show_tiles(result, 1).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0  seed 6", "1  seed 7"]  # round 1's seeds
    assert np.array_equal(ax.images[0].get_array()[0, 0], [10, 200, 30])


def test_clear_errors():
    with pytest.raises(ValueError, match="width=..., height=..."):
        show_tiles(Image.new("RGB", (64, 64)))
    with pytest.raises(TypeError, match="no SD upscale job"):
        show_tiles(SimpleNamespace(images=[], sd_upscale=None))
