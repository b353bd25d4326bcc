import pytest
import torch

from nbdiffuse.sampling.guidance import CFGDenoiser, Cond, cond_at, pad_context


class ValueDenoiser:
    """A stand-in UNet whose prediction is the first feature of the context's first token, everywhere."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, context, added=None, rows_per_call=None):
        self.batches.append((x.shape[0], context.shape[1], added, rows_per_call))
        return torch.ones_like(x) * context[:, 0, 0].reshape(-1, 1, 1, 1)


def const(value, tokens=77, pooled=None):
    return Cond(torch.full((tokens, 8), float(value)), pooled)


X = torch.zeros(2, 4, 3, 3)
SIGMA = torch.ones(2)


def test_cfg_combines_as_uncond_plus_scale_times_difference():
    g = CFGDenoiser(ValueDenoiser(), [([(20, const(3.0))], 1.0)], [(20, const(1.0))], 7.5)
    assert torch.allclose(g(X, SIGMA), torch.full_like(X, 1.0 + 7.5 * (3.0 - 1.0)))
    assert torch.allclose(g.last_uncond, torch.full_like(X, 1.0))
    assert torch.allclose(g.last_cond, torch.full_like(X, 3.0))


def test_and_parts_are_weighted_sum_of_differences():
    g = CFGDenoiser(ValueDenoiser(), [([(20, const(3.0))], 1.0), ([(20, const(5.0))], 0.5)],
                    [(20, const(1.0))], 2.0)
    expected = 1.0 + 1.0 * 2.0 * (3.0 - 1.0) + 0.5 * 2.0 * (5.0 - 1.0)
    assert torch.allclose(g(X, SIGMA), torch.full_like(X, expected))


def test_all_conditionings_run_in_one_model_call_one_image_per_unet_forward():
    d = ValueDenoiser()
    g = CFGDenoiser(d, [([(20, const(3.0))], 1.0), ([(20, const(5.0))], 1.0)], [(20, const(1.0))], 7.0)
    g(X, SIGMA)
    assert d.batches == [(6, 77, None, 3)]  # image-major rows: an image's 3 entries per UNet forward


def test_cfg_one_skips_the_negative_half():
    d = ValueDenoiser()
    g = CFGDenoiser(d, [([(20, const(3.0))], 1.0)], [(20, const(1.0))], 1.0)
    assert torch.allclose(g(X, SIGMA), torch.full_like(X, 3.0))
    assert d.batches[0][0] == 2
    g2 = CFGDenoiser(ValueDenoiser(), [([(20, const(3.0))], 1.0)], [(20, const(1.0))], 1.0, need_uncond=True)
    g2(X, SIGMA)
    assert g2.last_uncond is not None


def test_schedule_switches_after_end_step_counting_model_calls():
    # A1111: the entry in force is the first with call_index <= end_step, so [a:b:2] uses a for calls 0, 1, 2.
    g = CFGDenoiser(ValueDenoiser(), [([(2, const(3.0)), (5, const(4.0))], 1.0)], [(5, const(0.0))], 1.0)
    seen = [g(X, SIGMA)[0, 0, 0, 0].item() for _ in range(5)]
    assert seen == [3.0, 3.0, 3.0, 4.0, 4.0]
    assert cond_at([(2, "a"), (5, "b")], 99) == "b"


def test_shorter_conditioning_is_padded_with_empty_prompt_chunks():
    empty = torch.full((77, 8), 9.0)
    d = ValueDenoiser()
    g = CFGDenoiser(d, [([(20, const(3.0, tokens=154))], 1.0)], [(20, const(1.0))], 7.0, empty=empty)
    g(X, SIGMA)
    assert d.batches[0][1] == 154
    padded = pad_context(torch.zeros(77, 8), 231, empty)
    assert padded.shape == (231, 8) and torch.equal(padded[77:], torch.full((154, 8), 9.0))
    with pytest.raises(ValueError, match="cannot pad"):
        pad_context(torch.zeros(77, 8), 100, empty)


def test_sdxl_pooled_and_time_ids_go_to_added_cond():
    d = ValueDenoiser()
    time_ids = torch.tensor([64.0, 64, 0, 0, 64, 64])
    g = CFGDenoiser(d, [([(20, const(3.0, pooled=torch.ones(5)))], 1.0)],
                    [(20, const(1.0, pooled=torch.zeros(5)))], 7.0, time_ids=time_ids)
    g(X, SIGMA)
    added = d.batches[0][2]
    assert added["text_embeds"].shape == (4, 5) and added["time_ids"].shape == (4, 6)
    assert torch.equal(added["text_embeds"][0::2], torch.ones(2, 5))  # image-major: [cond, uncond] per image
    assert torch.equal(added["text_embeds"][1::2], torch.zeros(2, 5))
