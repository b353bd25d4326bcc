"""Jobs on one Session never overlap: other threads wait, the same thread is refused, module state is undone."""

import threading
import time
import warnings

import pytest
import torch

from nbdiffuse.jobs.lock import SessionBusyError

PLAIN = dict(prompt="a red circle", negative_prompt="", steps=3, seed=7, width=64, height=64, sampler_name="Euler")
TILED = dict(PLAIN, tiling=True, seed=8)


def _conv_modes(session) -> set[str]:
    return {m.padding_mode for model in (session.model.unet, session.model.vae) for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)}


def test_a_job_from_another_thread_waits_for_the_running_one(session):
    plain_alone = session.txt2img(**PLAIN)
    tiled_alone = session.txt2img(**TILED)
    in_tiled_job, go_on = threading.Event(), threading.Event()
    plain_steps, results, errors = [], {}, []

    def hold_first_step(state):
        in_tiled_job.set()
        assert go_on.wait(30)

    def run(name, params, hooks):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results[name] = session.txt2img(hooks=hooks, **params)
            results[name + " warnings"] = [str(w.message) for w in caught]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    tiled = threading.Thread(target=run, args=("tiled", TILED, [hold_first_step]))
    tiled.start()
    assert in_tiled_job.wait(30)
    plain = threading.Thread(target=run, args=("plain", PLAIN, [lambda s: plain_steps.append(s.i)]))
    plain.start()
    time.sleep(0.5)  # room for the plain job to (wrongly) run while the tiled one is paused in its first step
    assert plain_steps == [] and _conv_modes(session) == {"circular"}
    go_on.set()
    tiled.join(60)
    plain.join(60)
    assert not errors, errors
    assert torch.equal(results["tiled"].latents, tiled_alone.latents)
    assert torch.equal(results["plain"].latents, plain_alone.latents)
    assert "Tiling" not in results["plain"].infotexts[0]
    assert _conv_modes(session) == {"zeros"}


def test_a_paused_job_refuses_a_second_job_in_its_own_thread_until_closed(session):
    plain_alone = session.txt2img(**PLAIN)
    run = session.steps(**TILED)
    next(run)
    assert _conv_modes(session) == {"circular"}
    with pytest.raises(SessionBusyError, match=r"still running a txt2img job.*run.close\(\)"):
        session.txt2img(**PLAIN)
    with pytest.raises(SessionBusyError, match="before starting loading a model"):
        session.load(session.model)
    run.close()
    assert _conv_modes(session) == {"zeros"}  # closing the paused job undid its circular padding
    assert torch.equal(session.txt2img(**PLAIN).latents, plain_alone.latents)


def test_a_failing_job_undoes_its_module_changes_and_frees_the_session(session):
    plain_alone = session.txt2img(**PLAIN)

    def fail(state):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        session.txt2img(hooks=[fail], **TILED)
    assert _conv_modes(session) == {"zeros"}
    result = session.txt2img(**PLAIN)
    assert torch.equal(result.latents, plain_alone.latents) and "Tiling" not in result.infotexts[0]


def test_an_abandoned_stepped_job_frees_the_session_when_collected(session):
    run = session.steps(**TILED)
    next(run)
    del run  # a notebook user overwrites the variable
    import gc

    gc.collect()
    assert session._lock.busy is None and _conv_modes(session) == {"zeros"}
    session.txt2img(**PLAIN)


def test_a_probe_holds_the_session_against_other_threads_only(session):
    started = threading.Event()
    done = []

    def other():
        started.set()
        done.append(session.txt2img(**PLAIN))

    with session.probe("Transformer2DModel") as probe:
        session.txt2img(**PLAIN)  # the probe's own thread runs jobs inside it
        assert probe.activations and all(probe.activations.values())
        captured = {name: dict(steps) for name, steps in probe.activations.items()}
        thread = threading.Thread(target=other)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            thread.start()
            assert started.wait(30)
            time.sleep(0.5)
            assert done == []  # waits: it would have been probed
    thread.join(60)
    assert len(done) == 1
    assert {name: dict(steps) for name, steps in probe.activations.items()}.keys() == captured.keys()


def test_two_lora_jobs_from_two_threads_leave_the_model_as_it_was(sd1, tmp_path):
    from safetensors.torch import save_file

    from nbdiffuse import Session

    root = tmp_path / "webui"
    (root / "models" / "Lora").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.randn(4, 32, generator=g) * 0.5,
               f"{key}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.5, f"{key}.alpha": torch.tensor(4.0)},
              str(root / "models" / "Lora" / "detail.safetensors"))
    s = Session(outputs_dir=None, progress=False, models_dir=root)
    s.load(sd1)
    weights = {k: v.clone() for k, v in s.model.unet.state_dict().items()}
    jobs = {"a": dict(PLAIN, prompt="a red circle <lora:detail:0.8>"),
            "b": dict(PLAIN, prompt="a red circle <lora:detail:-0.5>", seed=9)}
    alone = {name: s.txt2img(**params).latents for name, params in jobs.items()}
    results, errors = {}, []

    def run(name):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[name] = s.txt2img(**jobs[name]).latents
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(torch.equal(results[name], alone[name]) for name in jobs)
    assert all(torch.equal(weights[k], v) for k, v in s.model.unet.state_dict().items())
    assert s.model.applied_loras == []
