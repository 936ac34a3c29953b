"""``diffusion_kernel.noise.randn``: the per-sample-generator draw every plugin shares, against
the reference's ``randn_tensor`` and against plain ``torch.randn``."""

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from diffusion_kernel.noise import randn


def seeded(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_one_generator_gives_torch_randn_numbers_and_advances_it_alike():
    mine, theirs = seeded(3, 3)
    got = randn((2, 4, 8, 8), mine)
    expected = torch.randn((2, 4, 8, 8), generator=theirs)
    assert torch.equal(got, expected)
    assert torch.equal(mine.get_state(), theirs.get_state())


def test_a_batch_with_one_generator_per_sample_equals_batch_one_runs():
    batch = randn((3, 4, 5, 7), seeded(11, 12, 13))
    singles = torch.cat([randn((1, 4, 5, 7), g) for g in seeded(11, 12, 13)])
    assert torch.equal(batch, singles)
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("seeds", [(5,), (5, 6, 7)])
def test_matches_the_reference_randn_tensor(seeds):
    shape = (len(seeds), 4, 6, 6)

    def generators():
        return seeded(*seeds) if len(seeds) > 1 else seeded(*seeds)[0]

    expected = randn_tensor(shape, generator=generators())
    got = randn(shape, generators())
    assert torch.equal(got, expected)


@pytest.mark.parametrize("seeds", [(1,), (1, 2), (1, 2, 3, 4)])
def test_drawing_into_a_buffer_gives_the_numbers_of_a_fresh_draw(seeds):
    shape = (len(seeds), 2, 9, 9)
    buffer = torch.full(shape, float("nan"))
    generators = seeded(*seeds)
    out = randn(shape, generators if len(seeds) > 1 else generators[0], out=buffer)
    assert out is buffer
    fresh_generators = seeded(*seeds)
    expected = randn(shape, fresh_generators if len(seeds) > 1 else fresh_generators[0])
    assert torch.equal(buffer, expected)


def test_dtype_and_device_are_those_asked_for_and_the_buffer_wins():
    got = randn((1, 3), seeded(0)[0], device="cpu", dtype=torch.float64)
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    buffer = torch.empty(2, 3, dtype=torch.float16)
    out = randn((9, 9), seeded(0)[0], dtype=torch.float32, out=buffer)
    assert out is buffer and out.shape == (2, 3) and out.dtype == torch.float16
    assert torch.isfinite(out).all() and out.std() > 0.3


def test_without_a_generator_draws_from_torch_global_generator():
    torch.manual_seed(42)
    expected = torch.randn(2, 3)
    torch.manual_seed(42)
    assert torch.equal(randn((2, 3)), expected)
