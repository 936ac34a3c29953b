"""Property: whatever bytes or JSON the config and weight loaders are given, they either load or
raise one of the library's own errors (a DiffusionKernelError), never another exception, a
crash or a hang. Examples are few, derandomized and tiny, so the whole file runs in seconds."""

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from diffusion_kernel import DiffusionKernelError, DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusion_kernel.configuration import read_json
from diffusion_kernel.weights import DTYPES, SafetensorsFile
from hub_toys import HubToyModel, HubToyScheduler, toy_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Derandomized (the same examples every run) and few: the file runs in seconds. No per-example
# deadline: the machine is shared, and a slow example is not a failure (every input is tiny).
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.filterwarnings("ignore:.*does not use config keys:UserWarning")

# JSON values with small numbers (a config may name a layer size: keep allocations tiny).
scalars = (st.none() | st.booleans() | st.integers(-64, 64)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
config_keys = st.sampled_from(["in_features", "out_features", "scale", "_class_name", "other"])
configs = st.dictionaries(config_keys | st.text(max_size=6), json_values, max_size=5)


def _only_library_errors(call):
    """Run ``call``; a DiffusionKernelError is an accepted outcome, any other exception fails."""
    try:
        return call()
    except DiffusionKernelError:
        return None


def _tmp(name: str, data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / name
    path.write_bytes(data)
    return path


def _read_all(path: Path) -> None:
    with SafetensorsFile(path) as file:
        for _, tensor in file.items():
            tensor.sum()  # every byte of every tensor is really read


# Random bytes --------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=512))
def test_read_json_of_random_bytes(data):
    _only_library_errors(lambda: read_json(_tmp("config.json", data)))


@FUZZ
@given(st.binary(max_size=512))
def test_safetensors_of_random_bytes(data):
    _only_library_errors(lambda: _read_all(_tmp("w.safetensors", data)))


@FUZZ
@given(st.binary(max_size=256), st.binary(max_size=256))
def test_safetensors_of_a_random_header_length_and_header(header, rest):
    data = struct.pack("<Q", len(header)) + header + rest
    _only_library_errors(lambda: _read_all(_tmp("w.safetensors", data)))


# Random structure in valid JSON --------------------------------------------------------------
entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(sorted(DTYPES)) | json_values,
    "shape": st.lists(st.integers(-2, 5), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-4, 300) | st.floats(), min_size=0, max_size=3)
    | json_values,
})
headers = st.dictionaries(st.text(max_size=6), entries | json_values, max_size=4)


@FUZZ
@given(headers, st.integers(0, 300))
def test_safetensors_of_a_random_json_header(header, data_size):
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * 2
    path = _tmp("w.safetensors", data[:8 + len(raw) + data_size])
    _only_library_errors(lambda: _read_all(path))


@FUZZ
@given(st.integers(1, 3000))
def test_safetensors_nested_deeply_is_refused_cleanly(depth):
    raw = b"[" * depth + b"]" * depth
    path = _tmp("w.safetensors", struct.pack("<Q", len(raw)) + raw)
    _only_library_errors(lambda: _read_all(path))


@FUZZ
@given(configs)
def test_from_config_of_random_json(config):
    _only_library_errors(lambda: HubToyModel.from_config(config))


@FUZZ
@given(st.integers(1, 3000))
def test_read_json_nested_deeply(depth):
    data = b'{"a": ' * depth + b"1" + b"}" * depth
    _only_library_errors(lambda: HubToyModel.from_config(read_json(_tmp("config.json", data))))


# A whole model folder ------------------------------------------------------------------------
_GOOD = tempfile.mkdtemp(prefix="fuzz-good-")
toy_model().save_pretrained(_GOOD)
GOOD_CONFIG = (Path(_GOOD) / "config.json").read_bytes()
GOOD_WEIGHTS = (Path(_GOOD) / "diffusion_pytorch_model.safetensors").read_bytes()


def _load_folder(config: bytes, weights: bytes):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-model-"))
    (folder / "config.json").write_bytes(config)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return _only_library_errors(lambda: HubToyModel.from_pretrained(folder))


@FUZZ
@given(configs)
def test_from_pretrained_with_a_random_config(config):
    _load_folder(json.dumps(config).encode(), GOOD_WEIGHTS)


@FUZZ
@given(st.integers(0, len(GOOD_WEIGHTS) - 1), st.integers(0, 255) | st.none())
def test_from_pretrained_with_one_byte_changed_or_the_file_cut(position, value):
    if value is None:  # cut the file there
        weights = GOOD_WEIGHTS[:position]
    else:
        weights = bytearray(GOOD_WEIGHTS)
        weights[position] = value
    model = _load_folder(GOOD_CONFIG, bytes(weights))
    if model is not None:  # a change in the data part: loads, with finite or non-finite values
        assert all(p.dtype == torch.float32 for p in model.parameters())


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_from_pretrained_with_random_config_and_weight_bytes(config, weights):
    _load_folder(config, weights)


@FUZZ
@given(configs)
def test_model_mixin_from_pretrained_with_a_random_config(config):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-model-"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(GOOD_WEIGHTS)
    _only_library_errors(lambda: ModelMixin.from_pretrained(folder))


@FUZZ
@given(configs, st.booleans())
def test_scheduler_from_pretrained_with_a_random_config(config, through_the_base_class):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-scheduler-"))
    (folder / "scheduler_config.json").write_text(json.dumps(config))
    cls = SchedulerMixin if through_the_base_class else HubToyScheduler
    _only_library_errors(lambda: cls.from_pretrained(folder))


component_specs = st.lists(st.sampled_from(["diffusers", "transformers", "hub_toys"])
                           | st.sampled_from(["HubToyModel", "HubToyScheduler"]) | json_values,
                           max_size=3) | json_values
model_indexes = st.dictionaries(
    st.sampled_from(["_class_name", "unet", "scheduler"]) | st.text(max_size=6),
    st.sampled_from(["HubToyPipeline"]) | component_specs, max_size=4)


@FUZZ
@given(model_indexes)
def test_pipeline_from_pretrained_with_a_random_model_index(index):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-pipeline-"))
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").write_bytes(GOOD_CONFIG)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(GOOD_WEIGHTS)
    _only_library_errors(lambda: DiffusionPipeline.from_pretrained(folder))
