"""Finished images are never lost: not to an unwritable outputs folder, not to a Ctrl-C while decoding or saving."""

import errno

import pytest
import torch

import nbdiffuse.jobs.driver as driver_module
from nbdiffuse.infotext import read_png

PARAMS = dict(prompt="a red circle", steps=2, seed=3, width=64, height=64, sampler_name="Euler", batch_size=2,
              n_iter=2)


def _failing_save(error):
    def save_image(*args, **kwargs):
        raise error
    return save_image


@pytest.mark.parametrize("error", [OSError(errno.EROFS, "Read-only file system"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_an_unwritable_folder_keeps_every_image_and_says_where_and_why(session, monkeypatch, error, tmp_path):
    monkeypatch.setattr(driver_module, "save_image", _failing_save(error))
    with pytest.warns(UserWarning, match=r"Could not save images to .*txt2img-images \(OSError: .*"
                                         r"result.save\(folder\)"):
        result = session.txt2img(**PARAMS)
    assert len(result.images) == 4 and result.paths == [None] * 4 and not result.interrupted
    assert session.last_result is result
    assert sum("Could not save" in w for w in result.warnings) == 1  # said once, not per image
    monkeypatch.undo()
    paths = result.save(tmp_path / "rescued")
    assert len(paths) == 4 and all(p.exists() for p in paths)
    assert read_png(paths[3]) == result.infotexts[3]


def test_a_file_where_the_outputs_folder_should_be(session, tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("not a folder")
    session.outputs_dir = blocker
    with pytest.warns(UserWarning, match=r"Could not save images to .*outputs/txt2img-images"):
        result = session.txt2img(**PARAMS)
    assert len(result.images) == 4 and result.paths == [None] * 4


def test_ctrl_c_while_saving_keeps_what_was_done(session, monkeypatch):
    real_save = driver_module.save_image
    saved = []

    def save_then_ctrl_c(image, folder, **kwargs):
        if len(saved) == 1:
            raise KeyboardInterrupt
        saved.append(real_save(image, folder, **kwargs))
        return saved[-1]

    monkeypatch.setattr(driver_module, "save_image", save_then_ctrl_c)
    with pytest.warns(UserWarning, match="Interrupted while decoding and saving: kept 2 of this batch's 2 images"):
        result = session.txt2img(**PARAMS)
    # the second image was decoded but not saved: it is kept, unsaved; the second batch never ran
    assert result.interrupted and len(result.images) == 2 and result.seeds == [3, 4]
    assert result.paths == [saved[0], None] and saved[0].exists()
    assert result.latents.shape[0] == 2
    assert session.last_result is result


def test_ctrl_c_while_decoding_keeps_the_images_already_decoded(session, monkeypatch):
    real_decode = driver_module.decode
    calls = []

    def decode_then_ctrl_c(bundle, latents, notes, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first image of the second batch
            raise KeyboardInterrupt
        return real_decode(bundle, latents, notes, **kwargs)

    monkeypatch.setattr(driver_module, "decode", decode_then_ctrl_c)
    with pytest.warns(UserWarning, match="kept 0 of this batch's 2 images"):
        result = session.txt2img(**PARAMS)
    assert result.interrupted and result.seeds == [3, 4] and len(result.images) == 2
    assert torch.isfinite(result.latents).all() and result.latents.shape[0] == 2
