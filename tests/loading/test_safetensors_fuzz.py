"""Seeded mutants of a saved checkpoint: every one either loads exactly the original tensors or
raises the library's own error, never anything else.

- Mutants of the file's structure (its 8-byte header length, its header bytes and JSON, its
  length) are caught by the format checks alone: no hash needed.
- A mutant that is a valid file with other content (a bit flip in the tensor data, two tensors'
  offsets swapped) loads without complaint unless ``verify=True`` compares the file with the
  sha256 its save recorded: then every mutant is refused.
"""

import json
import random
import struct

import pytest
import torch
from diffusion_kernel import DiffusionKernelError
from diffusion_kernel.modeling import ModelMixin
from torch import nn

WEIGHTS = "diffusion_pytorch_model.safetensors"
SEED = 17
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X"]


class Fuzzed(ModelMixin):
    """Tensors of several dtypes and shapes, two of them of the same size and dtype."""

    def __init__(self, width: int = 3):
        super().__init__()
        self.proj = nn.Linear(width, 2)
        self.gate = nn.Parameter(torch.full((2,), 0.5))
        self.low = nn.Parameter(torch.tensor([1.5, -2.0, 3.25], dtype=torch.float16))
        self.register_buffer("steps", torch.arange(4))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(SEED)
    model = Fuzzed()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p.float()).to(p.dtype))
    model.save_pretrained(folder)
    return folder, (folder / WEIGHTS).read_bytes(), {k: v.clone() for k, v in
                                                      model.state_dict().items()}


def _split(data: bytes):
    (length,) = struct.unpack("<Q", data[:8])
    return length, data[8:8 + length], data[8 + length:]


def _join(header: dict, pad: int, rest: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - (len(raw) + pad) % 8) % 8 + pad)
    return struct.pack("<Q", len(raw)) + raw + rest


# Mutations of the structure -----------------------------------------------------------------------
def _edit_entry(rng, data):
    _, raw, rest = _split(data)
    header = json.loads(raw)
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[name]
    edit = rng.randrange(7)
    if edit == 0:
        entry["dtype"] = rng.choice(DTYPES)
    elif edit == 1 and entry["shape"]:
        i = rng.randrange(len(entry["shape"]))
        entry["shape"][i] = max(0, entry["shape"][i] + rng.choice([-1, 1, 2, 10**12]))
    elif edit == 2:
        entry["shape"] = list(reversed(entry["shape"])) + [1] * rng.randrange(2)
    elif edit == 3:
        entry["data_offsets"][rng.randrange(2)] += rng.choice([-8, -1, 1, 2, 8])
    elif edit == 4:
        header[name + "x"] = header.pop(name)
    elif edit == 5:
        del header[name]
    else:
        header["__metadata__"] = {"format": rng.choice([1, None, ["pt"], "pt"])}
    return _join(header, rng.randrange(3), rest)


def _duplicate_name(rng, data):
    _, raw, rest = _split(data)
    text = raw.decode().rstrip()
    header = json.loads(text)
    name = rng.choice([k for k in header if k != "__metadata__"])
    twin = json.dumps({name: header[name]})[1:-1]
    return _join_raw(text[:-1] + ", " + twin + "}", rest)


def _join_raw(text: str, rest: bytes) -> bytes:
    raw = text.encode() + b" " * ((8 - len(text.encode()) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + rest


def _header_length(rng, data):
    length, _, _ = _split(data)
    return struct.pack("<Q", max(0, length + rng.choice([-9, -2, -1, 1, 2, 7, 2**40]))) + data[8:]


def _header_bit(rng, data):
    length, _, _ = _split(data)
    i = rng.randrange(8 + length)
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def _length(rng, data):
    cut = rng.choice([1, 2, 7, 8, len(data) // 2, len(data) - 8])
    return data[:-cut] if rng.random() < 0.5 else data + bytes(rng.randrange(1, 9))


def _repadded(rng, data):
    """A valid rewrite (more padding): must load the same tensors."""
    _, raw, rest = _split(data)
    return _join(json.loads(raw), 8 * rng.randrange(1, 4), rest)


STRUCTURE = [_edit_entry, _edit_entry, _duplicate_name, _header_length, _header_bit,
             _header_bit, _length, _repadded]


# Valid files with other content --------------------------------------------------------------
def _data_bit(rng, data):
    length, _, rest = _split(data)
    i = 8 + length + rng.randrange(len(rest))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def _swap_same_size(rng, data):
    _, raw, rest = _split(data)
    header = json.loads(raw)
    a, b = "gate", "proj.bias"  # both two float32 values
    header[a]["data_offsets"], header[b]["data_offsets"] = (header[b]["data_offsets"],
                                                            header[a]["data_offsets"])
    return _join(header, 0, rest)


CONTENT = [_data_bit, _swap_same_size]


def _load(folder, data, verify):
    (folder / WEIGHTS).write_bytes(data)
    try:
        return Fuzzed.from_pretrained(folder, verify=verify).state_dict()
    except DiffusionKernelError:
        return None


def _exact(state, original):
    return state.keys() == original.keys() and all(
        state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in original.items())


def test_structure_mutants_load_exactly_or_are_refused_without_hashes(original, tmp_path):
    folder, data, tensors = original
    for name in ("config.json", "SHA256SUMS"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    rng = random.Random(SEED)
    outcomes = {"exact": 0, "refused": 0}
    for number in range(300):
        mutant = rng.choice(STRUCTURE)(rng, data)
        state = _load(tmp_path, mutant, verify=False)
        assert state is None or _exact(state, tensors), f"mutant {number} loaded other tensors"
        outcomes["exact" if state is not None else "refused"] += 1
    assert outcomes["refused"] >= 200 and outcomes["exact"] >= 20, outcomes


def test_every_mutant_is_refused_with_verify(original, tmp_path):
    folder, data, tensors = original
    for name in ("config.json", "SHA256SUMS"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    rng = random.Random(SEED + 1)
    loaded_other = 0
    for number in range(60):
        mutate = rng.choice(STRUCTURE + CONTENT * 3)
        mutant = mutate(rng, data)
        if mutant == data:
            continue
        if mutate in CONTENT:  # the format alone lets these through
            unverified = _load(tmp_path, mutant, verify=False)
            loaded_other += unverified is not None and not _exact(unverified, tensors)
        assert _load(tmp_path, mutant, verify=True) is None, f"mutant {number} was accepted"
    assert loaded_other >= 20  # what the format cannot see, the recorded hash does
