import threading

import numpy as np
import pytest
import torch

from nbdiffuse import Session, infotext
from nbdiffuse.sampling.registry import SAMPLERS

BASE = dict(prompt="a red circle", negative_prompt="blue", steps=4, width=64, height=64, seed=42)


def pixels(result, i=0):
    return np.asarray(result.images[i])


def test_same_seed_same_pixels_and_different_seed_differs(session):
    a, b = session.txt2img(**BASE), session.txt2img(**BASE)
    c = session.txt2img(**{**BASE, "seed": 43})
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ 2M"])
def test_batch_image_i_equals_single_image_with_seed_plus_i(session, sampler):
    batch = session.txt2img(**{**BASE, "sampler_name": sampler, "batch_size": 3})
    single = session.txt2img(**{**BASE, "sampler_name": sampler, "seed": 44})
    assert batch.seeds == [42, 43, 44]
    assert torch.equal(batch.latents[2], single.latents[0])


@pytest.mark.parametrize("batch_size", [2, 3])
def test_every_image_of_a_batch_reproduces_alone_from_its_infotext_pixel_for_pixel(session, batch_size):
    # 128x128: batched VAE convolutions round differently from single ones at a few pixels per image at this size
    r = session.txt2img(**{**BASE, "width": 128, "height": 128, "sampler_name": "DPM++ 2M SDE", "subseed": 7,
                           "subseed_strength": 0.3, "batch_size": batch_size})
    assert r.subseeds == [7, 8, 9][:batch_size]
    for i in range(batch_size):
        alone = session.txt2img(**infotext.to_params(infotext.read_png(r.paths[i])))
        assert alone.seeds == [42] and alone.subseeds == [7 + i]
        assert torch.equal(alone.latents[0], r.latents[i]), i
        assert np.array_equal(pixels(alone), pixels(r, i)), i
        assert alone.infotexts[0] == r.infotexts[i]


def test_n_iter_continues_seeds_across_batches(session):
    r = session.txt2img(**{**BASE, "batch_size": 2, "n_iter": 2})
    assert r.seeds == [42, 43, 44, 45] and len(r.images) == 4 and r.latents.shape[0] == 4


def test_variation_seed_changes_image_and_is_in_infotext(session):
    r = session.txt2img(**{**BASE, "subseed": 7, "subseed_strength": 0.3, "batch_size": 2})
    assert r.seeds == [42, 42] and r.subseeds == [7, 8]
    assert not np.array_equal(pixels(r, 0), pixels(r, 1))
    parsed = infotext.parse(r.infotexts[1])
    assert parsed["Variation seed"] == "8" and parsed["Variation seed strength"] == "0.3"


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DPM++ SDE", "DPM++ 3M SDE", "DDIM", "Restart"])
def test_infotext_reproduces_the_image_pixel_for_pixel(session, sampler):
    r = session.txt2img(**{**BASE, "sampler_name": sampler, "scheduler": "Exponential", "cfg_scale": 5.5,
                           "subseed": 3, "subseed_strength": 0.25, "seed_resize_from_w": 48,
                           "seed_resize_from_h": 80, "clip_skip": 2})
    text = infotext.read_png(r.paths[0])
    assert text == r.infotexts[0]
    again = session.txt2img(**infotext.to_params(text))
    assert np.array_equal(pixels(r), pixels(again))
    assert again.infotexts[0] == r.infotexts[0]


def test_infotext_names_the_schedule_actually_used(session):
    r = session.txt2img(**{**BASE, "sampler_name": "DPM++ 2M"})
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    assert parsed["Size-1"] == "64" and parsed["Seed"] == "42" and parsed["Steps"] == "4"
    assert parsed["Negative prompt"] == "blue" and parsed["Prompt"] == "a red circle"


def test_images_saved_in_a1111_layout_with_parameters_chunk(session, tmp_path):
    r = session.txt2img(**{**BASE, "batch_size": 2})
    names = [p.name for p in r.paths]
    assert names[0].endswith("-42.png") and names[1].endswith("-43.png")
    assert r.paths[0].parent.parent.name == "txt2img-images"
    assert int(names[1][:5]) == int(names[0][:5]) + 1


def test_outputs_dir_none_saves_nothing(sd1, tmp_path):
    s = Session(outputs_dir=None, progress=False)
    s.load(sd1)
    r = s.txt2img(**BASE)
    assert r.paths == [None]


def test_hook_sees_every_step_and_can_replace_the_latent(session):
    seen = []

    def hook(state):
        seen.append((state.i, state.total))
        if state.i == state.total - 1:
            return torch.zeros_like(state.x)

    r = session.txt2img(**{**BASE, "sampler_name": "Euler"}, hooks=[hook])
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert torch.count_nonzero(r.latents) == 0


def test_session_hooks_apply_to_every_job(session):
    calls = []
    session.hooks.append(lambda state: calls.append(state.i))
    session.txt2img(**BASE)
    session.txt2img(**BASE)
    assert calls == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "Heun", "UniPC"])
def test_stepping_then_finishing_equals_an_uninterrupted_run(session, sampler):
    params = {**BASE, "sampler_name": sampler, "steps": 5}
    full = session.txt2img(**params)
    run = session.steps(**params)
    first = next(run)
    assert first.i == 0 and first.total == 5
    next(run)
    result = run.finish()
    assert torch.equal(result.latents, full.latents)
    assert np.array_equal(pixels(result), pixels(full))


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    """Start ``fn()`` on a worker thread (as the panel runs jobs); ``out["result"]`` or ``out["error"]`` after."""
    out = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_interrupt_from_another_thread_while_the_job_runs_keeps_finished_images(session):
    # The job runs on a worker thread; this thread presses "Stop" while it is held after step 1 of batch 2.
    reached, resume, trace = threading.Event(), threading.Event(), []

    def hook(state):
        trace.append((state.extra["iteration"], state.i))
        if (state.extra["iteration"], state.i) == (1, 1):
            reached.set()
            assert resume.wait(30)

    job, out = run_in_thread(lambda: session.txt2img(**{**BASE, "n_iter": 3}, hooks=[hook]))
    assert reached.wait(30), out.get("error")
    session.interrupt()
    resume.set()
    job.join(30)
    assert not job.is_alive() and "error" not in out, out.get("error")
    r = out["result"]
    assert trace == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]  # stopped right after the step it was in
    assert r.interrupted and len(r.images) == 2  # the finished first batch + the interrupted one's x0
    assert torch.equal(r.latents[0], session.txt2img(**BASE).latents[0])
    ok = session.txt2img(**BASE)
    assert not ok.interrupted and len(ok.images) == 1


def test_interrupt_from_another_thread_stops_a_job_that_is_not_held(session):
    # No hook waits here: the flag set from this thread is read by the running loop after its current step.
    started, trace = threading.Event(), []

    def hook(state):
        trace.append((state.extra["iteration"], state.i))
        started.set()

    job, out = run_in_thread(lambda: session.txt2img(**{**BASE, "n_iter": 200}, hooks=[hook]))
    assert started.wait(30), out.get("error")
    session.interrupt()
    job.join(60)
    assert not job.is_alive() and "error" not in out, out.get("error")
    r = out["result"]
    assert r.interrupted and len(trace) < 200 * BASE["steps"]
    batches = {n for n, _ in trace}
    assert len(r.images) == len(batches) and trace[-1][0] == max(batches)


def test_keyboard_interrupt_during_a_job_returns_what_finished(session):
    def hook(state):
        if state.extra["iteration"] == 1 and state.i == 2:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="Interrupted by the kernel"):
        r = session.txt2img(**{**BASE, "n_iter": 3}, hooks=[hook])
    assert r.interrupted and len(r.images) == 2
    assert not session.txt2img(**BASE).interrupted


def test_skip_ends_the_current_batch_and_goes_on(session):
    trace, skipped_at = [], {}

    def hook(state):
        trace.append((state.extra["iteration"], state.i))
        if state.extra["iteration"] == 0 and state.i == 1:
            skipped_at["x0"] = state.denoised.clone()
            session.skip()

    r = session.txt2img(**{**BASE, "n_iter": 2}, hooks=[hook])
    assert trace == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]  # batch 1 ends after step 1; batch 2 runs
    assert not r.interrupted and len(r.images) == 2 and r.seeds == [42, 43]
    assert torch.equal(r.latents[0], skipped_at["x0"][0])  # the skipped batch keeps its current x0 estimate
    assert torch.equal(r.latents[1], session.txt2img(**{**BASE, "seed": 43}).latents[0])  # the next is whole


def test_invalid_params_fail_before_any_model_call(session):
    calls = []
    session.hooks.append(lambda s: calls.append(1))
    with pytest.raises(ValueError, match="width=65"):
        session.txt2img(**{**BASE, "width": 65})
    with pytest.raises(ValueError, match="Unknown sampler"):
        session.txt2img(**{**BASE, "sampler_name": "Eulr"})
    assert calls == []


def test_no_model_loaded_says_how_to_load():
    with pytest.raises(RuntimeError, match="session.load"):
        Session(outputs_dir=None).txt2img(prompt="x")


def test_extra_network_tags_are_removed_and_reported(session):
    with pytest.warns(UserWarning, match="<hypernet:detail>"):
        r = session.txt2img(**{**BASE, "prompt": "a red circle <hypernet:detail:0.6>"})
    plain = session.txt2img(**BASE)
    assert np.array_equal(pixels(r), pixels(plain))
    assert r.warnings


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_at_one_two_three_steps_through_txt2img(sd1, sampler):
    s = Session(outputs_dir=None, progress=False)
    s.load(sd1)
    for steps in (1, 2, 3):
        r = s.txt2img(**{**BASE, "sampler_name": sampler, "steps": steps, "cfg_scale": 3.0})
        assert torch.isfinite(r.latents).all() and r.images[0].size == (64, 64), (sampler, steps)


def test_sd2_v_prediction_and_sdxl_generate(sd2, sdxl, tmp_path):
    for bundle in (sd2, sdxl):
        s = Session(outputs_dir=None, progress=False)
        s.load(bundle)
        r = s.txt2img(**{**BASE, "steps": 3})
        assert r.images[0].size == (64, 64) and torch.isfinite(r.latents).all()


def test_result_renders_as_html_gallery_with_infotext(session):
    r = session.txt2img(**BASE)
    html = r._repr_html_()
    assert "data:image/png;base64," in html and "Steps: 4" in html


def test_emphasis_and_clip_skip_that_cannot_work_are_refused_before_any_model_call(session):
    calls = []
    hooks = [lambda s: calls.append(1)]
    with pytest.raises(ValueError, match=r"prompt: the emphasis on 'red' multiplies it by 1.51e\+124"):
        session.txt2img(prompt="(" * 3000 + "red" + ")" * 3000, steps=2, width=64, height=64, hooks=hooks)
    with pytest.raises(ValueError, match=r"negative_prompt: the emphasis on 'blur'"):
        session.txt2img(prompt="a", negative_prompt="(blur:1000000)", steps=2, width=64, height=64, hooks=hooks)
    layers = session.model.text_encoders[0].config.num_hidden_layers
    with pytest.raises(ValueError, match=rf"clip_skip=100 is not valid: this model's text encoder has {layers}"):
        session.txt2img(prompt="a", clip_skip=100, steps=2, width=64, height=64, hooks=hooks)
    assert calls == []
    assert len(session.txt2img(prompt="((red))", clip_skip=layers, steps=1, width=64, height=64).images) == 1


def test_nan_latents_in_float32_do_not_blame_precision(session):
    """Issue 17: NaN latents stop the job at the step they appeared (no black image); in float32 the message
    does not blame precision."""
    from nbdiffuse.jobs.nancheck import NonFiniteLatents

    def poison_denoiser_output(module, args, output):
        return (output[0] * float("nan"),)

    handle = session.model.unet.register_forward_hook(poison_denoiser_output)
    try:
        with pytest.raises(NonFiniteLatents, match="at step 1 of 2 .*although it ran in float32, so precision is "
                                                   "not the cause") as caught:
            session.txt2img(prompt="a", steps=2, width=64, height=64)
    finally:
        handle.remove()
    assert caught.value.step == 0 and "bfloat16" not in str(caught.value)


@pytest.mark.parametrize("sampler,scheduler,written", [
    ("Euler", "Automatic", "Automatic"),  # A1111: no default schedule -> the model's own, written as "Automatic"
    ("Euler", "Uniform", "Uniform"),
    ("DPM++ 2M", "Automatic", "Karras"),  # A1111's get_sigmas relabels it with the sampler's default
    ("Euler a", "Karras", "Karras"),
])
def test_schedule_type_is_written_as_a1111_writes_it(session, sampler, scheduler, written):
    from nbdiffuse import infotext

    r = session.txt2img(prompt="a", steps=2, width=64, height=64, seed=2, sampler_name=sampler, scheduler=scheduler)
    assert infotext.parse(r.infotexts[0])["Schedule type"] == written
    again = session.txt2img(**infotext.to_params(r.infotexts[0]))
    assert torch.equal(again.latents, r.latents)


def test_a_broken_vae_is_reported_once_per_job_not_once_per_image(session):
    def poison(module, args, output):
        return output * float("nan")

    handle = session.model.vae.decoder.register_forward_hook(poison)
    try:
        with pytest.warns(UserWarning, match="The VAE produced NaN/inf pixels even in float32"):
            result = session.txt2img(prompt="a", steps=1, width=64, height=64, batch_size=3)
    finally:
        handle.remove()
    assert len(result.images) == 3
    assert sum("The VAE produced NaN/inf" in w for w in result.warnings) == 1
