"""ESRGAN-family upscaler files through spandrel, run as A1111 runs them: real architectures' state dicts (tiny, with
random or constructed weights) saved as files and loaded by the loader users use."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from nbdiffuse.jobs import upscalers
from nbdiffuse.jobs.guards import JobInterrupted

pytest.importorskip("einops")
try:
    spandrel = upscalers.import_spandrel()
except ImportError as e:  # the optional upscale extra is not installed
    pytest.skip(f"spandrel not installed: {e}", allow_module_level=True)

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

SMALL = ("grid", 16, 4)  # tiles small enough for tiny pictures (A1111's defaults are 192 / 8)


def save(module, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    else:
        torch.save(module.state_dict(), path)
    return path


def esrgan(scale=4):
    torch.manual_seed(0)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)


@torch.no_grad()
def compact(scale, residual):
    """A Compact (SRVGG, RealESRGAN General) net whose output is ``nearest(x) + upsample(residual * x)``: the first
    conv is ``residual`` (3x3 kernels, zero-padded at the tile's edge), then identity convs and PReLUs of slope 1."""
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=3, num_conv=1, upscale=scale)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.zero_()
            m.bias.zero_()
        if isinstance(m, torch.nn.PReLU):
            m.weight.fill_(1.0)
    net.body[0].weight.copy_(residual)
    for c in range(3):
        net.body[2].weight[c, c, 1, 1] = 1.0
        for k in range(scale * scale):
            net.body[4].weight[c * scale * scale + k, c, 1, 1] = 1.0
    return net


def box_minus_identity():
    """Per channel: the 3x3 mean minus the pixel; zero on a linear gradient, negative at a zero-padded edge."""
    w = torch.zeros(3, 3, 3, 3)
    for c in range(3):
        w[c, c] = 1 / 9
        w[c, c, 1, 1] -= 1
    return w


def gradient(w=48, h=40):
    y, x = np.mgrid[0:h, 0:w]
    v = 30 + x + y
    return Image.fromarray(np.stack([v, v * 0.9, v * 0.8], -1).astype(np.uint8), "RGB")


def passes(ups, name, image, scale):
    """``upscale_image`` and the number of model passes it ran (progress restarts at 1 each pass)."""
    seen = []
    out = upscalers.upscale_image(image, scale, name, ups, progress=lambda done, total: seen.append(done))
    return out, seen.count(1)


def test_files_load_through_spandrel(tmp_path):
    files = [save(esrgan(), tmp_path / "ESRGAN" / "4x_Tiny.pth"),
             save(compact(2, box_minus_identity()), tmp_path / "upscale_models" / "2x_Compact.safetensors"),
             save(SwinIR(img_size=16, window_size=4, embed_dim=8, depths=[1], num_heads=[1], mlp_ratio=1.0,
                         upscale=2, upsampler="pixelshuffledirect"), tmp_path / "upscale_models" / "2x_Swin.pth")]
    got = [(d.architecture.name, d.scale, d.family) for d in map(upscalers.load_model, files)]
    assert got == [("ESRGAN", 4, "ESRGAN"), ("RealESRGAN Compact", 2, "ESRGAN"), ("SwinIR", 2, "SwinIR")]
    # A1111 picks the upscaler by folder: a file in models/SwinIR runs as SwinIR whatever its architecture
    assert upscalers.load_model(save(esrgan(), tmp_path / "SwinIR" / "x.pth")).family == "SwinIR"
    ups = upscalers.Upscalers()
    ups.tiling["SwinIR"] = ("average", 16, 4)
    out, n = passes(ups, str(files[2]), gradient(40, 24), 2)
    assert out.size == (80, 48) and n == 1


def test_a1111_size_rule(tmp_path):
    ups = upscalers.Upscalers()
    ups.tiling["ESRGAN"] = SMALL
    name = ups.register(save(esrgan(4), tmp_path / "4x_Tiny.pth"))
    image = gradient(24, 16)
    out, n = passes(ups, name, image, 2)
    assert (out.size, n) == ((48, 32), 1)  # one pass (96x64), then Lanczos down to dest
    out, n = passes(ups, name, image, 8)
    assert (out.size, n) == ((192, 128), 2)  # 4x, 4x, Lanczos down from 384x256
    out, n = passes(ups, name, image, 2.3)
    assert (out.size, n) == ((48, 32), 1)  # dest = int(w * scale) // 8 * 8 = 55 // 8 * 8
    one = ups.register(save(compact(1, torch.zeros(3, 3, 3, 3)), tmp_path / "1x_Denoise.pth"))
    out, n = passes(ups, one, image, 2)
    assert (out.size, n) == ((48, 32), 1)  # a pass that keeps the size stops the loop (A1111 #15555)


def test_feathered_tiles_leave_no_seam(tmp_path):
    ups = upscalers.Upscalers()
    model = ups.model(save(compact(2, box_minus_identity()), tmp_path / "2x_Box.pth"))
    image = gradient()
    whole = np.asarray(upscalers.upscale_with_model(model, image, tile=0, overlap=0), dtype=int)
    inner = (slice(4, -4), slice(4, -4))  # the picture's own edge is zero-padded in every run
    # a tile's edge pixel is darkened by a third of its value (up to ~39 levels here, more at a tile's corner); the
    # feather (4 px x 2 = 8 px) weighs the other tile's edge pixels at most 2/8, so a pixel moves by ~10 levels
    feathered = np.asarray(upscalers.upscale_with_model(model, image, tile=16, overlap=4), dtype=int)
    assert np.abs(feathered - whole)[inner].max() <= 12
    hard = np.asarray(upscalers.upscale_with_model(model, image, tile=16, overlap=0), dtype=int)
    assert np.abs(hard - whole)[inner].max() >= 30  # butted tiles without overlap: a step at every boundary
    averaged = np.asarray(upscalers.upscale_with_model(model, image, tile=16, overlap=4, method="average"),
                          dtype=int)
    assert np.abs(averaged - whole)[inner].max() >= 10  # SwinIR's plain average does not feather (A1111 too)


def test_a1111_feeds_models_bgr(tmp_path):
    drop_first = torch.zeros(3, 3, 3, 3)
    drop_first[0, 0, 1, 1] = -1.0  # the model zeroes its first input channel
    path = save(compact(2, drop_first), tmp_path / "2x_DropFirst.pth")
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    a1111 = upscalers.Upscalers()
    assert a1111.a1111_bgr is True
    assert upscalers.upscale_image(white, 2, str(path), a1111).getpixel((5, 5)) == (255, 255, 0)  # blue is channel 0
    rgb = upscalers.Upscalers(a1111_bgr=False)
    assert upscalers.upscale_image(white, 2, str(path), rgb).getpixel((5, 5)) == (0, 255, 255)  # spandrel's order


def test_interrupt_between_tiles(tmp_path):
    ups = upscalers.Upscalers()
    ups.tiling["ESRGAN"] = SMALL
    name = ups.register(save(esrgan(2), tmp_path / "2x_Tiny.pth"))
    seen, flag = [], threading.Event()

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            flag.set()

    with pytest.raises(JobInterrupted, match="after 2 of 12 tiles"):
        upscalers.upscale_image(gradient(), 2, name, ups, progress=progress, interrupt=flag)
    assert seen == [(1, 12), (2, 12)]
    with pytest.raises(JobInterrupted):
        upscalers.upscale_image(gradient(), 2, name, ups, interrupt=lambda: True)


def test_unknown_architecture_names_the_extra_arches_opt_in(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"some.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="does not recognise.*CC BY-NC 4.0.*extra_arches=True"):
        upscalers.Upscalers().model(path)


def test_folder_files_are_hires_upscalers(sd1, tmp_path):
    from nbdiffuse import Session

    webui = tmp_path / "webui"
    save(compact(2, torch.zeros(3, 3, 3, 3)), webui / "models" / "DAT" / "2x_Folder.safetensors")
    save(esrgan(2), webui / "models" / "HAT" / "2x_Hat.pth")
    session = Session(outputs_dir=None, progress=False, models_dir=webui)
    assert {"2x_Folder", "2x_Hat"} <= set(session.upscalers.names())
    session.load(sd1)
    r = session.txt2img(prompt="a red circle", steps=2, width=64, height=64, seed=1, enable_hr=True,
                        hr_upscaler="2x_Folder", hr_second_pass_steps=1)
    assert r.images[0].size == (128, 128) and "Hires upscaler: 2x_Folder" in r.infotexts[0]
    assert session.upscalers._loaded[0][0].endswith("2x_Folder.safetensors")  # the model ran (and stays loaded)


def test_no_torchvision_stand_in_is_left_behind():
    import sys

    tv = sys.modules.get("torchvision")
    assert tv is None or getattr(tv, "__file__", None)  # spandrel imported; torchvision is the real one or absent


def test_stop_while_hires_upscales_with_a_model_keeps_the_batches_before(sd1, tmp_path):
    """The hires pass hands the job's Stop flag to the model upscaler: Stop during the second batch's tiles ends the
    job there, with the first batch's images kept (a model upscale can take minutes at 4x on a large picture)."""
    from nbdiffuse import Session

    session = Session(outputs_dir=None, progress=False)
    session.load(sd1)
    session.upscalers.tiling["ESRGAN"] = SMALL
    name = session.upscalers.register(save(esrgan(2), tmp_path / "2x_Tiny.pth"))
    net = session.upscalers.model(name).model
    calls = []

    def stop_on_the_second_batch(module, args):
        calls.append(1)
        if len(calls) == 25 + 2:  # 64x64 in 16 px tiles with 4 px overlap: 5x5 = 25 tiles per image
            session.interrupt()

    handle = net.register_forward_pre_hook(stop_on_the_second_batch)
    try:
        with pytest.warns(UserWarning, match="Interrupted while upscaling with 2x_Tiny"):
            r = session.txt2img(prompt="a red circle", steps=2, width=64, height=64, seed=1, n_iter=2,
                                enable_hr=True, hr_upscaler=name, hr_second_pass_steps=1)
    finally:
        handle.remove()
    assert r.interrupted and len(r.images) == 1 and r.images[0].size == (128, 128)
    assert len(calls) == 25 + 2  # no tile ran after the Stop
