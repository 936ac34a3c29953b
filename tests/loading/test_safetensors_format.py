"""The safetensors reader enforces the whole format, and each violation names its rule.

Files are built by hand (8-byte length, JSON header, data) so that each test breaks one rule."""

import json
import struct

import pytest
import torch
from diffusion_kernel import CheckpointError
from diffusion_kernel.weights import MAX_HEADER_BYTES, SafetensorsFile, save_safetensors


def _file(tmp_path, header, data: bytes, pad: int = 0, length_delta: int = 0):
    raw = (header if isinstance(header, bytes) else json.dumps(header).encode()) + b" " * pad
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) + length_delta) + raw + data)
    return path


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _fails(path, rule, message=""):
    with pytest.raises(CheckpointError, match=rf"\(rule: {rule}\): .*{message}"):
        SafetensorsFile(path).close()


def test_a_file_written_by_safetensors_reads_back_exactly(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64),
               "empty": torch.zeros(0, 2, dtype=torch.float16), "c": torch.ones(2, 2).bool()}
    save_safetensors(tensors, tmp_path / "w.safetensors")
    with SafetensorsFile(tmp_path / "w.safetensors") as file:
        assert sorted(file.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(file.tensor(name), tensor)
            assert file.tensor(name).dtype == tensor.dtype


def test_a_header_length_one_short_is_refused_not_shifted(tmp_path):
    # The case: the header's trailing padding space becomes the first data byte, the
    # JSON still parses, and without the exact-end rule every tensor would be read one byte off.
    header = {"a": _entry("F32", [2], 0, 8)}
    path = _file(tmp_path, header, struct.pack("<2f", 1.0, 2.0), pad=1, length_delta=-1)
    _fails(path, "exact end", "tensors end at data byte 8 but the file holds 9 data bytes")


def test_bytes_appended_after_the_last_tensor_are_refused(tmp_path):
    path = _file(tmp_path, {"a": _entry("U8", [2], 0, 2)}, b"\x01\x02\x03")
    _fails(path, "exact end", "1 bytes are unaccounted for")


def test_a_truncated_data_section_is_refused(tmp_path):
    path = _file(tmp_path, {"a": _entry("F32", [2], 0, 8)}, b"\x00" * 7)
    _fails(path, "exact end", "ends at data byte 8 but the file holds only 7 .*truncated")


def test_a_gap_between_tensors_is_refused(tmp_path):
    header = {"a": _entry("U8", [2], 0, 2), "b": _entry("U8", [2], 3, 5)}
    _fails(_file(tmp_path, header, b"\x00" * 5), "contiguity", "'b' begins at data byte 3")


def test_a_first_tensor_not_at_the_start_of_the_data_is_refused(tmp_path):
    _fails(_file(tmp_path, {"a": _entry("U8", [2], 1, 3)}, b"\x00" * 3), "contiguity",
           "gap of 1 bytes")


def test_overlapping_tensors_are_refused(tmp_path):
    header = {"a": _entry("U8", [4], 0, 4), "b": _entry("U8", [2], 2, 4)}
    _fails(_file(tmp_path, header, b"\x00" * 4), "no overlap", "inside tensor 'a'")


def test_two_names_for_the_same_bytes_are_refused(tmp_path):
    header = {"a": _entry("U8", [2], 0, 2), "b": _entry("U8", [2], 0, 2)}
    _fails(_file(tmp_path, header, b"\x00" * 2), "no overlap")


def test_byte_length_must_equal_dtype_size_times_shape(tmp_path):
    _fails(_file(tmp_path, {"a": _entry("F16", [3], 0, 8)}, b"\x00" * 8), "byte length",
           "spans 8 bytes but its shape \\[3\\] and dtype F16 make 6")


def test_a_name_given_twice_is_refused(tmp_path):
    raw = (b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
           b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}')
    _fails(_file(tmp_path, raw, b"\x00\x00"), "duplicate names", "names 'a' twice")


@pytest.mark.parametrize("length", [0, 1, MAX_HEADER_BYTES + 1])
def test_a_header_length_outside_the_bounds_is_refused(tmp_path, length):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b"{}")
    _fails(path, "header size", f"header length is {length} bytes")


def test_a_file_shorter_than_the_length_field_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x02\x00\x00")
    _fails(path, "header size", "3 bytes long")


def test_a_header_not_starting_with_a_brace_is_refused(tmp_path):
    _fails(_file(tmp_path, b' {"a": 1}', b""), "header JSON", "must begin with")


def test_metadata_must_map_strings_to_strings(tmp_path):
    header = {"__metadata__": {"format": 1}, "a": _entry("U8", [1], 0, 1)}
    _fails(_file(tmp_path, header, b"\x00"), "metadata")


@pytest.mark.parametrize("entry", [
    _entry("F33", [1], 0, 4), _entry("F32", [-1], 0, 0), _entry("F32", [1], 4, 0),
    {"dtype": "F32", "shape": [1]}, _entry("F32", [1.0], 0, 4), _entry("F32", [True], 0, 4),
])
def test_a_malformed_entry_is_refused(tmp_path, entry):
    _fails(_file(tmp_path, {"a": entry}, b"\x00" * 4), "tensor entry", "'a'")


def test_an_empty_file_of_tensors_is_valid(tmp_path):
    with SafetensorsFile(_file(tmp_path, {}, b"", pad=6)) as file:
        assert file.keys() == []
