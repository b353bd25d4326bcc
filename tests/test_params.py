import math

import pytest

from nbdiffuse.jobs.params import GenerationParams


def make(**kw):
    return GenerationParams.from_kwargs(**kw)


def test_defaults_are_a1111s():
    p = make()
    assert (p.steps, p.sampler_name, p.scheduler, p.cfg_scale, p.width, p.height) == (20, "DPM++ 2M", "Automatic",
                                                                                       7.0, 512, 512)
    assert p.scheduler_used == "Karras"
    assert math.isinf(p.s_tmax)


@pytest.mark.parametrize("field,value,fragment", [
    ("width", 500, "width=500 is not valid: it must be a multiple of 8"),
    ("height", 32, "height=32"),
    ("steps", 0, "steps=0"),
    ("batch_size", 0, "batch_size=0"),
    ("subseed_strength", 1.5, "between 0 and 1"),
    ("cfg_scale", float("nan"), "cfg_scale=nan"),
    ("steps", 2.5, "an integer"),
    ("clip_skip", 0, "clip_skip=0"),
    # non-finite and absurd numbers are refused where they enter, not saved as a black PNG with "CFG scale: inf"
    ("cfg_scale", float("inf"), "cfg_scale=inf is not valid: it must be a finite number"),
    ("cfg_scale", 1e308, "cfg_scale=1e.308 is not valid: it must be between -1000 and 1000"),
    ("s_noise", float("inf"), "s_noise=inf is not valid: it must be a finite number"),
    ("s_churn", float("-inf"), "s_churn=-inf"),
    ("eta", float("inf"), "eta=inf"),
    ("seed", float("inf"), "seed=inf is not valid: it must be an integer"),
    ("subseed", 2**64, "subseed=18446744073709551616 is not valid: it must be -1 .random. or an integer from 0"),
    ("seed", 2**64 - 1, "seed=18446744073709551615"),
    ("seed_resize_from_w", 10**6, "seed_resize_from_w=1000000 is not valid: it must be at most 16384"),
    ("sampler_name", None, "sampler_name=None is not valid: it must be a name"),
    ("hr_upscaler", 3, "hr_upscaler=3"),
])
def test_invalid_values_name_the_field_and_the_rule(field, value, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        make(**{field: value})


def test_size_error_suggests_the_nearest_valid_size():
    with pytest.raises(ValueError, match="try 504"):
        make(width=503)


def test_unknown_sampler_lists_close_matches():
    with pytest.raises(ValueError, match=r"Did you mean 'DPM\+\+ 2M'"):
        make(sampler_name="DPM++ 2N")


def test_unknown_field_is_refused_with_suggestion():
    with pytest.raises(TypeError, match="Did you mean 'cfg_scale'"):
        make(cfg_scal=7)


def test_a1111_payload_fields_at_default_are_accepted_and_others_refused():
    p = make(prompt="x", restore_faces=False, send_images=True, save_images=False, override_settings={})
    assert p.prompt == "x"
    with pytest.raises(ValueError, match="restore_faces=True is an A1111 field that nbdiffuse does not support"):
        make(restore_faces=True)


@pytest.mark.parametrize("name,sampler,scheduler", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Automatic"),
    ("DPM++ 2M Exponential", "DPM++ 2M", "Exponential"),
    ("Euler a Karras", "Euler a", "Karras"),
    ("k_euler_a", "Euler a", "Automatic"),
    ("dpm++ 2m sde", "DPM++ 2M SDE", "Automatic"),
])
def test_old_combined_names_and_aliases_resolve(name, sampler, scheduler):
    p = make(sampler_name=name)
    assert (p.sampler_name, p.scheduler) == (sampler, scheduler)


def test_scheduler_api_names_resolve_to_labels():
    assert make(scheduler="karras").scheduler == "Karras"
    assert make(scheduler="sgm_uniform").scheduler == "SGM Uniform"
    with pytest.raises(ValueError, match="scheduler"):
        make(scheduler="karass")


def test_batch_that_cannot_fit_is_refused_before_work():
    with pytest.raises(ValueError, match="use n_iter"):
        make(width=4096, height=4096, batch_size=8)


def test_to_dict_round_trips():
    p = make(prompt="a", seed=3, sampler_name="Euler a", steps=7)
    assert GenerationParams.from_kwargs(**p.to_dict()) == p


def test_a_lone_surrogate_in_a_prompt_is_refused_naming_the_field_and_position():
    with pytest.raises(ValueError, match=r"negative_prompt is not valid: it contains '\\ud800' at position 3"):
        make(prompt="ok", negative_prompt="abc\ud800def")


@pytest.mark.parametrize("fields", [
    {"sampler_name": "Euler a", "steps": 3, "n_iter": 2},
    {"sampler_name": "DPM++ 2M", "steps": 4, "batch_size": 2},
    {"sampler_name": "Heun", "steps": 3, "n_iter": 2},  # second order: two model calls, one step
    {"sampler_name": "Euler", "steps": 3, "enable_hr": True, "hr_scale": 1.5},  # hires: the first pass's steps
    {"sampler_name": "DPM2", "steps": 2, "n_iter": 2, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 3,
     "denoising_strength": 0.5},
])
def test_total_steps_is_the_number_of_steps_a_job_reports(session, fields):
    calls = []
    result = session.txt2img(prompt="a red circle", width=64, height=64, hooks=[calls.append], **fields)
    assert result.params.total_steps == len(calls)
