"""How weights come off disk: converted tensor by tensor with bounded memory, mapped pages
released after conversion, streamed reads chunked (benchmarks/model_loading.py measures the same
on a Stable-Diffusion-size U-Net)."""

from __future__ import annotations

import sys

import pytest
import torch
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.weights import SafetensorsFile, save_safetensors
from torch import nn


@pytest.fixture
def weights(tmp_path):
    tensors = {
        "odd": torch.randn(1000),  # 1000 floats: not a whole number of 64-float chunks
        "matrix": torch.randn(37, 29),
        "bf16": torch.randn(300).to(torch.bfloat16),
        "steps": torch.arange(10),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_safetensors(tensors, path)
    return path, tensors


@pytest.mark.parametrize("mmap_file", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_load_converts_each_tensor_exactly_like_tensor_to(weights, mmap_file, dtype):
    path, tensors = weights
    with SafetensorsFile(path, mmap_file=mmap_file) as file:
        file.stream_chunk_bytes = 256  # 64 floats: many chunks and a partial last one
        for name, original in tensors.items():
            target = dtype if original.is_floating_point() else original.dtype
            loaded = file.load(name, target)
            assert loaded.dtype == target and loaded.shape == original.shape
            assert torch.equal(loaded, original.to(target)), name


def test_streamed_conversion_reads_through_one_chunk_sized_buffer(weights):
    path, tensors = weights
    with SafetensorsFile(path, mmap_file=False) as file:
        file.stream_chunk_bytes = 256
        file.load("odd", torch.float16)
        file.load("matrix", torch.float16)
        assert file._buffer.numel() == 256


def test_streamed_tensor_kept_as_stored_owns_writable_memory(weights):
    path, tensors = weights
    with SafetensorsFile(path, mmap_file=False) as file:
        loaded = file.load("matrix")
    loaded.add_(1.0)  # a closed file, a writable tensor of its own
    assert torch.equal(loaded, tensors["matrix"] + 1.0)


def test_mapped_tensor_kept_as_stored_is_a_view_of_the_file(weights):
    path, tensors = weights
    with SafetensorsFile(path) as file:
        loaded = file.load("matrix")
        assert loaded.untyped_storage().data_ptr() != 0
        assert file.tensor("matrix").data_ptr() == loaded.data_ptr()


def _rss_file() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_mapped_pages_of_converted_tensors_leave_resident_memory(tmp_path):
    path = tmp_path / "big.safetensors"
    save_safetensors({f"w{i}": torch.randn(1 << 20) for i in range(16)}, path)  # 64 MiB
    with SafetensorsFile(path) as file:  # control: views, touched, stay resident
        before = _rss_file()
        views = [file.load(f"w{i}") for i in range(16)]
        total = sum(float(v.sum()) for v in views)
        kept_resident = _rss_file() - before
        del views
    with SafetensorsFile(path) as file:
        before = _rss_file()
        halves = [file.load(f"w{i}", torch.float16) for i in range(16)]
        converted_resident = _rss_file() - before
    assert kept_resident > 60 * 2**20
    assert converted_resident < 4 * 2**20
    assert sum(float(h.float().sum()) for h in halves) == pytest.approx(total, rel=1e-3)


class Frozen(ModelMixin):
    def __init__(self, width: int = 3):
        super().__init__()
        self.trained = nn.Linear(width, width)
        self.fixed = nn.Linear(width, width)
        self.fixed.requires_grad_(False)
        self.register_buffer("running", torch.zeros(width))


@pytest.mark.parametrize("mmap", [True, False])
def test_loaded_parameters_are_real_leaves_that_keep_requires_grad(tmp_path, mmap):
    model = Frozen()
    model.running.fill_(2.0)
    model.save_pretrained(tmp_path)
    loaded = Frozen.from_pretrained(tmp_path, mmap=mmap, torch_dtype=torch.float16)
    params = dict(loaded.named_parameters())
    assert all(isinstance(p, nn.Parameter) and p.is_leaf and p.device.type == "cpu"
               for p in params.values())
    assert {n: p.requires_grad for n, p in params.items()} == {
        "trained.weight": True, "trained.bias": True, "fixed.weight": False, "fixed.bias": False}
    assert torch.equal(loaded.trained.weight, model.trained.weight.half())
    assert torch.equal(loaded.running, torch.full((3,), 2.0, dtype=torch.float16))
