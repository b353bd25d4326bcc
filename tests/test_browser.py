"""The panel in a real browser: JupyterLab on 127.0.0.1, Debian's chromium driven by playwright.

Types a prompt, clicks Generate and waits for the image in the gallery, starts a long job and clicks Stop, and keeps a
screenshot in ``artifacts/``. When JupyterLab or the browser cannot start this test FAILS with the reason; it is
skipped only when ``NBDIFFUSE_SKIP_BROWSER=1`` is set explicitly.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

SETUP_CELL = """\
from nbdiffuse import Session
from nbdiffuse.testing import tiny_sd1
from nbdiffuse.ui import Panel

session = Session(outputs_dir="outputs", progress=False)
session.load(tiny_sd1())
panel = Panel(session, lang="en")
panel.set_params(width=64, height=64, steps=4, seed=1)
panel"""

pytestmark = pytest.mark.skipif(os.environ.get("NBDIFFUSE_SKIP_BROWSER") == "1",
                                reason="NBDIFFUSE_SKIP_BROWSER=1 is set")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path) -> None:
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "cells": [{"cell_type": "code", "id": "setup", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": SETUP_CELL}]}
    path.write_text(json.dumps(nb), encoding="utf-8")


def start_lab(root: Path, port: int, token: str, log: Path, app: str = "lab") -> subprocess.Popen:
    """Start ``jupyter lab`` (or ``app="notebook"``: Notebook 7) serving ``root`` on 127.0.0.1:``port``."""
    notification = root / ".lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false"}')  # no "Jupyter news?" toast over the screenshot
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".lab-workspaces"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    cmd = [sys.executable, "-m", "jupyter", app, "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False"]
    if app == "lab":
        cmd += ["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly"]
    if os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop the server and its kernels (they share the process group it was started in)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # kernels that outlived the server
    except ProcessLookupError:
        pass
    proc.wait(15)


def dismiss_dialogs(page, seen: list[str]) -> None:
    """Accept any JupyterLab dialog in the way (kernel choice, trust, ...), remembering what it said."""
    for _ in range(3):
        dialog = page.locator(".jp-Dialog")
        if not dialog.count():
            return
        seen.append(dialog.first.inner_text()[:300])
        accept = dialog.first.locator("button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(500)


def set_slider(page, css: str, value: int) -> None:
    """Type a number into an ipywidgets slider's editable readout, as a user does."""
    readout = page.locator(f"{css} .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")
    page.wait_for_function("([sel, v]) => document.querySelector(sel).textContent.trim() === v",
                           arg=[f"{css} .widget-readout", str(value)], timeout=10_000)


def test_panel_generates_and_stops_in_jupyterlab(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"playwright is not installed ({e}): pip install playwright (the browser is Debian's chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")

    port, token = free_port(), secrets.token_hex(16)
    write_notebook(tmp_path / "panel.ipynb")
    log = tmp_path / "jupyter.log"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "panel.png"
    console: list[str] = []
    dialogs: list[str] = []
    server = start_lab(tmp_path, port, token, log)
    browser = None
    try:
        wait_for_server(server, f"http://127.0.0.1:{port}/api/status?token={token}", log)
        with sync_playwright() as pw:
            try:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            except Exception as e:  # noqa: BLE001 - the reason goes into the failure
                pytest.fail(f"chromium did not start: {e}")
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(120_000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            try:
                page.goto(f"http://127.0.0.1:{port}/lab/tree/panel.ipynb?token={token}")

                # run the cell that creates the panel, once the kernel is up (a cell run before that can be lost)
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=180_000)
                dismiss_dialogs(page, dialogs)
                prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
                for attempt in range(3):  # a keypress that lands while JupyterLab is still settling is dropped
                    dismiss_dialogs(page, dialogs)
                    page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
                    page.keyboard.press("Shift+Enter")
                    try:
                        page.wait_for_function("(el) => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                               arg=prompt.element_handle(), timeout=30_000)
                        break
                    except Exception:  # noqa: BLE001 - retried, then the failure says what the prompt shows
                        if attempt == 2:
                            pytest.fail(f"the setup cell never started running (prompt: {prompt.inner_text()!r})")
                panel = page.locator(".nbd-panel")
                panel.wait_for(state="visible", timeout=300_000)

                # type a prompt: the token counter follows
                panel.locator(".nbd-prompt textarea").first.fill("a red circle")
                page.wait_for_function("document.querySelector('.nbd-tokens').textContent.trim() === '3/75'")

                # Generate: the image appears in the gallery with its infotext
                panel.locator("button.nbd-generate").click()
                panel.locator(".nbd-gallery img").first.wait_for(state="visible", timeout=120_000)
                assert "a red circle" in panel.locator(".nbd-gallery .nbd-infotext").first.inner_text()
                assert "Seed: 1" in panel.locator(".nbd-gallery .nbd-infotext").first.inner_text()
                page.wait_for_function("document.querySelector('.nbd-status').textContent.includes('Done: 1 image')")

                # a long job (150 steps x 100 batches), stopped from the Stop button
                set_slider(page, ".nbd-panel .nbd-steps", 150)
                set_slider(page, ".nbd-panel .nbd-n-iter", 100)
                panel.locator("button.nbd-generate").click()
                page.wait_for_function("document.querySelector('.nbd-status').textContent.includes('/15000')",
                                       timeout=60_000)
                assert panel.locator("button.nbd-generate").is_disabled()
                panel.locator("img.nbd-preview").wait_for(state="visible", timeout=60_000)  # the live preview
                clicked = time.monotonic()
                panel.locator("button.nbd-stop").click()
                page.wait_for_function("document.querySelector('.nbd-status').textContent.startsWith('Stopped')",
                                       timeout=60_000)
                stopped_after = time.monotonic() - clicked
                assert "(interrupted)" in panel.locator(".nbd-gallery").inner_text()
                assert panel.locator("button.nbd-generate").is_enabled()
                assert panel.locator("button.nbd-stop").is_disabled()
                panel.locator(".nbd-gallery img").first.wait_for(state="visible")
                page.wait_for_timeout(500)  # let the last images paint before the screenshot
                panel.screenshot(path=str(shot))
                page.screenshot(path=str(ARTIFACTS / "lab.png"))
                print(f"\nscreenshot: {shot} (whole page: {ARTIFACTS / 'lab.png'}); Stop took {stopped_after:.1f} s; "
                      f"dialogs dismissed: {dialogs or 'none'}")
                assert stopped_after < 30
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "failure.png"))  # what the browser showed
                print(f"failure screenshot: {ARTIFACTS / 'failure.png'}")
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
    assert shot.is_file()
