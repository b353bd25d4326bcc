"""The mask painter in a real browser: JupyterLab (and Notebook 7 where it is installed) on 127.0.0.1, Debian's
chromium driven by playwright.

Opens the panel with the toy model, uploads an init image through the img2img tab's file button, switches to the
Inpaint mode, paints one stroke with the mouse on the painter's canvas, clicks Generate, then checks in the kernel
that the painted mask is where the mouse went and that only the painted region changed: every pixel farther from it
than the mask blur reaches is the init image's, exactly (the original is overlaid after paste-back). Then a second
view of the painter draws the same mask from the model, an Erase stroke and Clear reach the kernel and that view.
Keeps screenshots in ``artifacts/inpaint-*.png``. Like tests/test_browser.py it FAILS when JupyterLab or the browser
cannot start, and is skipped only when ``NBDIFFUSE_SKIP_BROWSER=1`` is set.
"""

import json
import os
import secrets
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    dismiss_dialogs,
    free_port,
    start_lab,
    stop_process_group,
    wait_for_server,
)

SETUP_CELL = """\
from nbdiffuse import Session
from nbdiffuse.ui import Panel

session = Session(outputs_dir="outputs", progress=False)
session.load("toy")
panel = Panel(session, lang="en")
panel.set_params(width=64, height=64, steps=4, seed=1, prompt="a blue square")
panel.w.painter.brush_size = 8
panel"""

# in the kernel, after Generate: where the mask is, and which pixels changed (blur 4: A1111's kernel is 21 wide, so
# the blurred mask reaches 10 px beyond the painted one; 12 px is "far")
CHECK_CELL = """\
import json
import cv2
import numpy as np

init = np.asarray(panel.init_image).astype(int)
out = np.asarray(panel.result.images[0]).astype(int)
painted = np.asarray(panel.mask) > 128
near = cv2.dilate(painted.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
changed = np.abs(out - init).max(axis=2) > 0
ys, xs = np.nonzero(painted)
print("CHECK " + json.dumps({
    "painted": int(painted.sum()), "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
    "far": int((~near).sum()), "changed_far": int((changed & ~near).sum()),
    "changed_painted": float(changed[painted].mean()), "infotext": panel.result.infotexts[0],
}))"""

# a second view of the same painter (JupyterLab re-creates views of outputs scrolled away): drawn from the model
VIEW_CELL = "panel.w.painter"
ERASED_CELL = """\
m = np.asarray(panel.mask)
print("ERASED " + json.dumps({"painted": int((m > 128).sum()), "middle": int(m[28:37, 30:35].max()),
                             "left": int(m[31:34, 16:24].min())}))"""
CLEARED_CELL = 'print("CLEARED", panel.mask is None)'

STROKE = ((16, 32), (48, 32))  # image pixels of the 64x64 init image: a horizontal stroke through the middle
ERASE = ((32, 20), (32, 44))  # then erased with a vertical stroke through its middle
COUNT_JS = """(i) => {
  const c = document.querySelectorAll('canvas.nbd-painter-canvas')[i];
  if (!c || !c.width) return -1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let k = 3; k < d.length; k += 4) if (d[k] > 128) n++;
  return n;
}"""

pytestmark = pytest.mark.skipif(os.environ.get("NBDIFFUSE_SKIP_BROWSER") == "1",
                                reason="NBDIFFUSE_SKIP_BROWSER=1 is set")


def write_notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "id": name, "metadata": {}, "execution_count": None, "outputs": [],
              "source": source} for name, source in (("setup", SETUP_CELL), ("check", CHECK_CELL),
                                                     ("view", VIEW_CELL), ("erased", ERASED_CELL),
                                                     ("cleared", CLEARED_CELL))]
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "cells": cells}
    path.write_text(json.dumps(nb), encoding="utf-8")


def init_image(path: Path) -> None:
    """A red disc on light grey: any change shows."""
    image = Image.new("RGB", (64, 64), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=(200, 30, 30))
    image.save(path)


def stroke(page, canvas, start, end) -> None:
    """Drag the mouse from ``start`` to ``end`` (image pixels of the 64x64 image) over ``canvas`` as shown."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    scale = box["width"] / 64
    page.mouse.move(box["x"] + start[0] * scale, box["y"] + start[1] * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * scale, box["y"] + end[1] * scale, steps=12)
    page.mouse.up()
    page.wait_for_timeout(1000)  # the stroke's PNG goes to the kernel when the stroke ends


def cell_output(page, index: int, marker: str) -> str:
    """The text after ``marker`` in code cell ``index``'s output, once it is there."""
    output = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output")
    output.filter(has_text=marker).wait_for(timeout=60_000)
    text = output.inner_text()
    assert "Error" not in text, text
    return text.split(marker, 1)[1].strip().splitlines()[0]


def run_cell(page, index: int, dialogs: list[str]) -> None:
    """Run code cell ``index`` as a user does (click into it, Shift+Enter), retried while JupyterLab settles."""
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").nth(index)
    for attempt in range(3):  # a keypress that lands while JupyterLab is still settling is dropped
        dismiss_dialogs(page, dialogs)
        page.locator(".jp-Notebook .jp-Cell .cm-content").nth(index).click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function("(el) => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                   arg=prompt.element_handle(), timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - retried, then the failure says what the prompt shows
            if attempt == 2:
                pytest.fail(f"cell {index} never started running (prompt: {prompt.inner_text()!r})")


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_a_painted_stroke_inpaints_only_the_painted_region(tmp_path, app):
    if app == "notebook":
        pytest.importorskip("notebook", minversion="7", reason="Notebook 7 is not installed (pip install notebook)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"playwright is not installed ({e}): pip install playwright (the browser is Debian's chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")

    port, token = free_port(), secrets.token_hex(16)
    write_notebook(tmp_path / "inpaint.ipynb")
    init_image(tmp_path / "init.png")
    log = tmp_path / "jupyter.log"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"inpaint-{app}.png"
    console: list[str] = []
    dialogs: list[str] = []
    server = start_lab(tmp_path, port, token, log, app)
    browser = None
    try:
        wait_for_server(server, f"http://127.0.0.1:{port}/api/status?token={token}", log)
        with sync_playwright() as pw:
            try:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            except Exception as e:  # noqa: BLE001 - the reason goes into the failure
                pytest.fail(f"chromium did not start: {e}")
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(120_000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            try:
                page.goto(f"http://127.0.0.1:{port}/{'lab/tree' if app == 'lab' else 'notebooks'}/inpaint.ipynb"
                          f"?token={token}")
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=180_000)
                dismiss_dialogs(page, dialogs)
                run_cell(page, 0, dialogs)
                panel = page.locator(".nbd-panel")
                panel.wait_for(state="visible", timeout=300_000)

                # the img2img tab: upload the init image with its file button, then the Inpaint mode
                panel.get_by_role("tab", name="img2img", exact=True).click()
                with page.expect_file_chooser() as chooser:  # the upload button opens the browser's file dialog
                    panel.locator(".nbd-init-upload").click()
                chooser.value.set_files(str(tmp_path / "init.png"))
                panel.locator(".nbd-img2img-mode").get_by_role("button", name="Inpaint", exact=True).click()
                canvas = panel.locator("canvas.nbd-painter-canvas")
                canvas.wait_for(state="visible", timeout=60_000)
                page.wait_for_function("document.querySelector('canvas.nbd-painter-canvas').width === 64")

                # one stroke with the mouse, in image pixels mapped onto the canvas as shown
                stroke(page, canvas, *STROKE)
                panel.locator(".nbd-mask-painter").screenshot(path=str(ARTIFACTS / f"inpaint-painter-{app}.png"))

                panel.locator("button.nbd-generate-img2img").click()
                page.wait_for_function("document.querySelector('.nbd-status').textContent.includes('Done: 1 image')",
                                       timeout=120_000)
                panel.locator(".nbd-gallery img").first.wait_for(state="visible")
                page.wait_for_timeout(300)
                panel.screenshot(path=str(shot))

                run_cell(page, 1, dialogs)
                check = json.loads(cell_output(page, 1, "CHECK "))
                print(f"\nscreenshots: {shot}, {ARTIFACTS / f'inpaint-painter-{app}.png'}; kernel check: {check}")
                assert page.evaluate(COUNT_JS, 0) == check["painted"]  # the canvas is what the kernel has

                # a second view of the painter draws the same mask from the model
                run_cell(page, 2, dialogs)
                page.wait_for_function(f"({COUNT_JS})(1) === {check['painted']}", timeout=30_000)

                # Erase: a stroke across the middle takes the mask away there, in the kernel and in the other view
                panel.locator(".nbd-painter-erase input").check()
                stroke(page, canvas, *ERASE)
                run_cell(page, 3, dialogs)
                erased = json.loads(cell_output(page, 3, "ERASED "))
                page.wait_for_function(f"({COUNT_JS})(1) === {erased['painted']}", timeout=30_000)

                # Clear: nothing painted
                panel.locator("button.nbd-painter-clear").click()
                page.wait_for_timeout(1000)
                run_cell(page, 4, dialogs)
                cleared = cell_output(page, 4, "CLEARED")
                page.wait_for_function(f"({COUNT_JS})(1) === 0", timeout=30_000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / f"failure-{app}.png"))
                print(f"failure screenshot: {ARTIFACTS / f'failure-{app}.png'}")
                raise
    except Exception:
        if console:
            print("browser console errors:\n" + "\n".join(console[-20:]))
        if dialogs:
            print("JupyterLab dialogs dismissed:\n" + "\n---\n".join(dialogs))
        print("jupyter log tail:\n" + log.read_text(errors="replace")[-3000:])
        raise
    finally:
        if browser is not None:
            try:
                browser.close()
            except Exception:  # noqa: BLE001 - the playwright context may already be gone
                pass
        stop_process_group(server)

    # the mask is where the mouse went: the stroke's line, as wide as the brush (8 px), round ends
    x_min, y_min, x_max, y_max = check["bbox"]
    assert abs(x_min - (STROKE[0][0] - 4)) <= 2 and abs(x_max - (STROKE[1][0] + 4)) <= 2, check
    assert abs(y_min - (STROKE[0][1] - 4)) <= 2 and abs(y_max - (STROKE[0][1] + 4)) <= 2, check
    # only the painted region changed: far from it every pixel is the init image's, exactly; inside it changed
    assert check["far"] > 1000 and check["changed_far"] == 0, check
    assert check["changed_painted"] > 0.9, check
    assert "Mask blur: 4" in check["infotext"] and "Denoising strength: 0.75" in check["infotext"]
    # the erasing stroke removed the middle of the painted line and kept its ends
    assert erased["middle"] == 0 and erased["left"] == 255 and 0 < erased["painted"] < check["painted"], erased
    assert cleared == "True"
