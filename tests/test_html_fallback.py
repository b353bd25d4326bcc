"""Where no widget front end renders (VS Code offline, some SageMaker set-ups, a notebook exported to HTML), every
output still shows: a notebook made of public API calls on the toy model is executed in a kernel and exported with
nbconvert's HTMLExporter without its widget state, and the HTML, parsed, must hold each Result's pictures as PNG
``<img>`` tags (the same pixels the job returned) with their infotexts, the X/Y/Z grid, hires fix's picture, a viz
figure, and the panel's text saying what to call instead.
"""

import base64
import binascii
import io
import json
from html.parser import HTMLParser

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from PIL import Image

VIEW = "application/vnd.jupyter.widget-view+json"
#: DESIGN, "Hosted Jupyter": each output message well under 1 MB
MAX_OUTPUT_BYTES = 1_000_000

# (cell id, code): the public API as a user writes it, progress bars on (tqdm picks its notebook widgets)
CELLS = [
    ("setup", "import nbdiffuse\nsession = nbdiffuse.Session(outputs_dir=None)\nsession.load('toy')"),
    ("txt2img", "result = session.txt2img(prompt='a red circle', seed=1, steps=4, batch_size=2, width=64, "
                "height=64)\nresult"),
    ("xyz", "grid = session.xyz(('Steps', '2, 3'), ('Seed', '5, 6'), prompt='a blue square', width=64, height=64)\n"
            "grid"),
    ("hires", "hires = session.txt2img(prompt='a green triangle', seed=7, steps=3, width=64, height=64, "
              "enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.5)\nhires"),
    ("preview", "previewed = session.txt2img(prompt='a red circle', seed=8, steps=4, width=64, height=64, "
                "preview=2)\npreviewed"),
    ("viz", "from nbdiffuse.toy import preview_matrix\nfrom nbdiffuse.viz import show_latents\n"
            "show_latents(result, factors=preview_matrix())"),
    ("panel", "panel = session.panel(lang='en')\npanel"),
    ("doctor", "nbdiffuse.doctor(session);"),
]


class _Outputs(HTMLParser):
    """Per notebook cell (nbconvert's ``id="cell-id=..."``), the ``<img>`` sources and the text of its output area."""

    def __init__(self):
        super().__init__()
        self.images: dict[str, list[str]] = {}
        self.text: dict[str, list[str]] = {}
        self._divs: list[str] = []  # what each open <div> started: "cell", "output" or ""
        self._cell: str | None = None
        self._skip = 0  # inside <style>/<script>

    @property
    def _in_output(self) -> bool:
        return "output" in self._divs

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            classes = (attrs.get("class") or "").split()
            if (attrs.get("id") or "").startswith("cell-id="):
                self._cell = attrs["id"].removeprefix("cell-id=")
                self._divs.append("cell")
            elif "jp-OutputArea" in classes and self._cell is not None:
                self._divs.append("output")
            else:
                self._divs.append("")
        elif tag in ("style", "script"):
            self._skip += 1
        elif tag == "img" and self._in_output:
            self.images.setdefault(self._cell, []).append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "div" and self._divs:
            if self._divs.pop() == "cell":
                self._cell = None
        elif tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data):
        if self._in_output and not self._skip:
            self.text.setdefault(self._cell, []).append(data)


def _png(src: str) -> Image.Image:
    """The picture of a ``data:image/png;base64,...`` source (anything else fails)."""
    head, _, data = src.partition(",")
    assert head == "data:image/png;base64", head[:80]
    raw = base64.b64decode(data, validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a kernel ran it, and the pictures the jobs returned (saved by the notebook itself)."""
    folder = tmp_path_factory.mktemp("html_fallback")
    cells = [nbformat.v4.new_code_cell(code, id=cid) for cid, code in CELLS]
    # the jobs' own pictures and infotexts, to compare what the HTML shows with
    save = (f"import json, pathlib\nfolder = pathlib.Path({str(folder)!r})\n"
            "kept = {}\n"
            "for name, r in [('txt2img', result), ('hires', hires), ('preview', previewed)]:\n"
            "    for i, image in enumerate(r.images):\n"
            "        image.save(folder / f'{name}-{i}.png')\n"
            "    kept[name] = r.infotexts\n"
            "grid.grids[0].save(folder / 'grid.png')\n"
            "(folder / 'infotexts.json').write_text(json.dumps(kept));")
    cells.append(nbformat.v4.new_code_cell(save, id="save"))
    nb = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, "\n".join("\n".join(o.traceback) for o in errors)
    return nb, folder


@pytest.fixture(scope="module")
def html_outputs(executed):
    """The notebook exported to HTML as a viewer without widgets sees it (no widget state saved), parsed per cell."""
    nb, _ = executed
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # a copy
    nb.metadata.pop("widgets", None)
    body, _ = HTMLExporter().from_notebook_node(nb)
    parser = _Outputs()
    parser.feed(body)
    parser.close()
    return parser


def _text(parsed: _Outputs, cell: str) -> str:
    return "".join(parsed.text.get(cell, []))


def _same_picture(shown: Image.Image, path) -> bool:
    kept = Image.open(path).convert("RGB")
    return shown.size == kept.size and np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(kept))


def test_each_results_pictures_and_infotexts_are_in_the_html(executed, html_outputs):
    _, folder = executed
    infotexts = json.loads((folder / "infotexts.json").read_text())
    sizes = {"txt2img": (64, 64), "hires": (128, 128), "preview": (64, 64)}
    counts = {"txt2img": 2, "hires": 1, "preview": 1}
    for cell, size in sizes.items():
        pngs = [_png(src) for src in html_outputs.images.get(cell, [])
                if src.startswith("data:image/png") and _png(src).size == size]
        for i in range(counts[cell]):
            assert any(_same_picture(p, folder / f"{cell}-{i}.png") for p in pngs), (cell, i, [p.size for p in pngs])
        text = _text(html_outputs, cell)
        assert len(infotexts[cell]) == counts[cell]
        for info in infotexts[cell]:
            assert info.splitlines()[-1] in text  # "Steps: 4, Sampler: ..., Seed: 1, ..."
    txt = _text(html_outputs, "txt2img")
    assert "Steps: 4, Sampler: DPM++ 2M" in txt and "Seed: 1," in txt and "Seed: 2," in txt
    assert "Hires upscale: 2" in _text(html_outputs, "hires")


def test_the_xyz_grid_picture_is_in_the_html(executed, html_outputs):
    _, folder = executed
    grid = Image.open(folder / "grid.png")
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # two by two cells with labels
    shown = [_png(src) for src in html_outputs.images.get("xyz", []) if src.startswith("data:image/png")]
    assert sum(_same_picture(p, folder / "grid.png") for p in shown) >= 1
    assert "X/Y/Z grid" in _text(html_outputs, "xyz") and "4/4 cells" in _text(html_outputs, "xyz")


def test_no_progress_bar_is_left_at_0_percent(executed, html_outputs):
    nb, _ = executed
    bars = [o for c in nb.cells if c.id in ("txt2img", "hires", "preview") for o in c.outputs
            if o.output_type == "display_data" and "it/s" in repr(o)]
    assert not bars, bars  # each job's bar went away (leave=False), in the saved outputs too
    for cell in ("txt2img", "hires", "preview"):
        assert "0%|" not in _text(html_outputs, cell)


def test_a_viz_figure_shows_as_a_png(executed, html_outputs):
    nb, _ = executed
    (out,) = [o for c in nb.cells if c.id == "viz" for o in c.outputs if o.output_type == "execute_result"]
    assert "image/png" in out.data
    (src,) = html_outputs.images.get("viz", [])
    figure = _png(src)
    assert figure.width > 400 and figure.height > 100
    assert "<Figure size" not in _text(html_outputs, "viz")


def test_the_panel_says_what_to_call_where_widgets_do_not_render(executed, html_outputs):
    nb, _ = executed
    (out,) = [o for c in nb.cells if c.id == "panel" for o in c.outputs]
    assert VIEW in out.data  # front ends with widgets still show the panel
    text = _text(html_outputs, "panel")
    assert "Jupyter widgets" in text and "result = session.txt2img(" in text and "prompt=''" in text
    assert "VBox(" not in text


def test_loading_a_model_shows_one_line_not_every_module(html_outputs):
    text = _text(html_outputs, "setup").strip()
    assert "ModelBundle('toy', sd1, epsilon, native 64x64" in text and len(text) < 300 and "Conv2d" not in text


def test_doctor_prints_its_report_from_a_kernel_with_this_ipywidgets(html_outputs):
    import ipywidgets

    text = _text(html_outputs, "doctor")
    assert "torch:" in text and f"widgets: ipywidgets {ipywidgets.__version__}," in text


def test_every_widget_output_has_a_text_fallback_and_no_output_is_near_1_mb(executed):
    nb, _ = executed
    for cell in nb.cells:
        for out in cell.outputs:
            data = out.get("data", {})
            if VIEW in data:
                fallback = data.get("text/html") or data.get("text/plain") or ""
                assert fallback.strip(), (cell.id, data)
            size = len(json.dumps(out))
            assert size < MAX_OUTPUT_BYTES, (cell.id, out.output_type, size)


def test_the_panels_bundle_keeps_the_view_and_adds_text(session):
    from nbdiffuse.ui import Panel

    panel = Panel(session, lang="en")
    bundle = panel._repr_mimebundle_()
    assert bundle[VIEW]["model_id"] == panel.widget.model_id and bundle[VIEW]["version_major"] == 2
    assert bundle["text/plain"].endswith(panel.code) and panel.code in bundle["text/html"].replace("&#x27;", "'")
    panel.w.steps.value = 31
    assert "steps=31," in panel._repr_mimebundle_()["text/plain"]
    zh = Panel(session, lang="zh")
    assert "控制面板" in zh._repr_mimebundle_()["text/plain"]
    panel.close()
    zh.close()
    assert VIEW not in panel._repr_mimebundle_()  # a closed panel has no view left to show


def test_data_uris_are_checked_as_pngs():
    with pytest.raises(AssertionError):
        _png("data:image/jpeg;base64,AAAA")
    with pytest.raises((AssertionError, binascii.Error)):
        _png("data:image/png;base64," + base64.b64encode(b"not a png").decode())


# ------------------------------------------------------------------------------ real-sized pictures stay under 1 MB

@pytest.fixture(scope="module")
def photo():
    """A 512x512 photograph (about 420 KB as PNG, as a generation of that size is)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


def _bundle(obj) -> dict:
    """What IPython sends for ``obj`` last in a cell (the message's data)."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(obj)
    return data


def _shown(html_text: str) -> list[Image.Image]:
    parser = _Outputs()
    parser._cell, parser._divs = "x", ["output"]
    parser.feed(html_text)
    images = []
    for src in parser.images["x"]:
        head, _, data = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head[:40]
        images.append(Image.open(io.BytesIO(base64.b64decode(data))))
    return images


def _result(images):
    import torch

    from nbdiffuse.jobs.params import GenerationParams
    from nbdiffuse.jobs.result import Result

    n = len(images)
    return Result(images=images, infotexts=[f"a photo\nSteps: 20, Seed: {i}" for i in range(n)],
                  seeds=list(range(n)), subseeds=list(range(n)), latents=torch.zeros(n, 4, 1, 1),
                  params=GenerationParams())


def test_a_picture_that_fits_is_shown_losslessly(photo):
    (shown,) = _shown(_bundle(_result([photo]))["text/html"])
    assert shown.format == "PNG" and np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(photo))


def test_a_batch_and_an_sdxl_sized_picture_stay_under_1_mb(photo):
    for images in ([photo] * 4, [photo.resize((1024, 1024))], [photo] * 16):
        data = _bundle(_result(images))
        assert len(json.dumps(data)) < MAX_OUTPUT_BYTES, (len(images), images[0].size)
        shown = _shown(data["text/html"])
        assert len(shown) == len(images)
        assert all(max(s.size) >= 128 for s in shown)  # smaller or lossy, never a thumbnail
        assert "under 1 MB" in data["text/html"]  # says that the pictures shown are not the full PNGs
        assert f"Seed: {len(images) - 1}" in data["text/html"]


def test_a_large_grid_and_an_extras_upscale_stay_under_1_mb(toy, photo):
    from nbdiffuse.jobs.extras import ExtrasResult

    grid = toy.xyz(("Steps", "1, 2"), None, prompt="a red circle", show=False)
    grid.grids = [photo.resize((2048, 2048))]  # a 4x4 grid of 512x512 cells
    data = _bundle(grid)
    assert len(json.dumps(data)) < MAX_OUTPUT_BYTES and len(_shown(data["text/html"])) == 1
    upscaled = ExtrasResult(photo.resize((2048, 2048)), "Postprocess upscale by: 4, Postprocess upscaler: Lanczos")
    data = _bundle(upscaled)
    assert len(json.dumps(data)) < MAX_OUTPUT_BYTES
    assert "Postprocess upscaler: Lanczos" in data["text/html"] and len(_shown(data["text/html"])) == 1
