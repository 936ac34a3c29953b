"""Weight files: safetensors read with checks (memory-mapped or streamed), written atomically by the
callers; pickles only on request and then with ``weights_only=True``.

The safetensors layout: 8 bytes little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import CheckpointError, UnsafeCheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# The reference reader refuses larger headers (safetensors MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


class SafetensorsFile:
    """One safetensors file, its header checked against the whole format before any tensor is
    read: header length within bounds, a JSON object without repeated names, each tensor's byte
    length equal to its dtype size times its shape, and the tensors tiling the data section
    (contiguous from byte 0, no overlap, the last ending exactly at the end of the file). A
    violation is a ``CheckpointError`` naming the rule.

    ``mmap=True`` maps the file copy-on-write: tensors share pages with the page cache and cost no
    copy. ``mmap=False`` reads each tensor on request (for network disks), one at a time.
    """

    def __init__(self, path: str | os.PathLike, mmap_file: bool = True):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        self._buffer: torch.Tensor | None = None  # the streaming buffer, made on first use
        try:
            self.header, self.metadata, self._data_start = self._read_header()
            self._map = (mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
                         if mmap_file and self._size > 0 else None)
        except BaseException:
            self._file.close()
            raise

    def _read_header(self):
        self._size = os.fstat(self._file.fileno()).st_size
        length = self._header_length(self._file.read(8))
        raw = self._file.read(length)
        header = self._parse_header(raw)
        metadata = header.pop("__metadata__", None)
        metadata = {} if metadata is None else metadata
        if not (isinstance(metadata, dict)
                and all(isinstance(v, str) for v in metadata.values())):
            raise self._corrupt("metadata", "__metadata__ must map strings to strings, got "
                                f"{_short(metadata)}")
        data_start = 8 + length
        for name, info in header.items():
            self._check_entry(name, info)
        self._check_layout(header, self._size - data_start)
        return header, metadata, data_start

    def _header_length(self, prefix: bytes) -> int:
        """The 8-byte little-endian header length N, bounded by the format and by the file."""
        if len(prefix) < 8:
            raise self._corrupt("header size", f"the file is {self._size} bytes long, too short "
                                f"for the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise self._corrupt("header size", f"the header length is {length} bytes; it must lie "
                                f"between 2 (the JSON '{{}}') and {MAX_HEADER_BYTES}")
        if length > self._size - 8:
            raise self._corrupt("header size", f"the header claims {length} bytes but the file "
                                f"has {self._size - 8} after the length field (the file is "
                                f"truncated: download or save it again)")
        return length

    def _parse_header(self, raw: bytes) -> dict:
        """The header JSON: an object starting at its first byte (it may end in padding spaces),
        without repeated names."""
        if not raw.startswith(b"{"):
            raise self._corrupt("header JSON", f"the header must begin with '{{', it begins "
                                f"with {raw[:8]!r}")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except _DuplicateName as exc:
            raise self._corrupt("duplicate names", f"the header names {exc.name!r} twice") \
                from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self._corrupt("header JSON", f"the header is not valid UTF-8 JSON ({exc})") \
                from None
        if not isinstance(header, dict):
            raise self._corrupt("header JSON", "the header is not a JSON object")
        return header

    def _check_entry(self, name: str, info) -> None:
        # ``type(v) is int`` also refuses bools; these checks run for every tensor of every load
        if not (type(info) is dict and type(info.get("dtype")) is str
                and type(shape := info.get("shape")) is list
                and type(offsets := info.get("data_offsets")) is list and len(offsets) == 2
                and all(type(v) is int for v in shape) and all(type(v) is int for v in offsets)):
            raise self._corrupt("tensor entry", f"the entry for {name!r} needs a dtype, a shape "
                                f"and two data offsets, all integers: {_short(info)}")
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise self._corrupt("tensor entry", f"tensor {name!r} has dtype {info['dtype']!r}; "
                                f"known dtypes: {', '.join(DTYPES)}")
        begin, end = offsets
        if not 0 <= begin <= end or any(d < 0 for d in shape):
            raise self._corrupt("tensor entry", f"tensor {name!r} has a negative size or "
                                f"offsets out of order: shape {shape}, offsets {offsets}")
        expected = math.prod(shape) * dtype.itemsize
        if expected != end - begin:
            raise self._corrupt("byte length", f"tensor {name!r} spans {end - begin} bytes but "
                                f"its shape {shape} and dtype {info['dtype']} make {expected}")

    def _check_layout(self, header: dict, data_size: int) -> None:
        """The tensors tile the data section: in offset order each begins where the previous
        ended (the first at 0), and the last ends exactly where the file ends."""
        position, previous = 0, None
        for name in sorted(header, key=lambda n: tuple(header[n]["data_offsets"])):
            begin, end = header[name]["data_offsets"]
            if begin < position:
                raise self._corrupt("no overlap", f"tensor {name!r} begins at data byte {begin}, "
                                    f"inside tensor {previous!r}, which ends at {position}")
            if begin > position:
                raise self._corrupt("contiguity", f"tensor {name!r} begins at data byte {begin} "
                                    f"but the bytes before it end at {position} (a gap of "
                                    f"{begin - position} bytes)")
            position, previous = end, name
        if position > data_size:
            raise self._corrupt("exact end", f"tensor {previous!r} ends at data byte {position} "
                                f"but the file holds only {data_size} data bytes (the file is "
                                f"truncated: download or save it again)")
        if position < data_size:
            raise self._corrupt("exact end", f"the tensors end at data byte {position} but the "
                                f"file holds {data_size} data bytes: {data_size - position} "
                                f"bytes are unaccounted for (a wrong header length or "
                                f"appended bytes)")

    def _corrupt(self, rule: str, why: str) -> CheckpointError:
        return CheckpointError(f"weights file {self.path} is not a valid safetensors file "
                               f"(rule: {rule}): {why}")

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.header[name]["dtype"]]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor as stored: a view of the mapping (mmap), or read into its own memory."""
        info = self.header[name]
        dtype = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        if count == 0:
            return torch.empty(info["shape"], dtype=dtype)
        if self._map is not None:
            flat = torch.frombuffer(self._map, dtype=dtype, count=count,
                                    offset=self._data_start + begin)
        else:
            flat = torch.empty(count, dtype=dtype)
            self._read_into(flat, self._data_start + begin, name)
        return flat.reshape(info["shape"])

    def load(self, name: str, dtype: torch.dtype | None = None,
             device: str | torch.device | None = None) -> torch.Tensor:
        """The tensor as ``dtype`` on ``device`` (default: as stored, on the CPU), using at most
        one tensor's worth of extra memory and never keeping two copies of the file.

        Mapped: a tensor that needs no conversion stays a view of the mapping; one that is
        converted or moved is copied and its mapped pages are released. Streamed: a tensor kept
        as stored is read straight into its own memory; one that is converted is read in chunks
        of ``stream_chunk_bytes`` through one reusable buffer, so the full-size original never
        exists in memory.
        """
        source = self.dtype(name)
        dtype = dtype or source
        device = torch.device(device or "cpu")
        if self._map is not None:
            view = self.tensor(name)
            out = view.to(device=device, dtype=dtype)
            if out.data_ptr() != view.data_ptr():
                self.release(name)
            return out
        if dtype == source and device.type == "cpu":
            return self.tensor(name)
        info = self.header[name]
        out = torch.empty(info["shape"], dtype=dtype, device=device)
        flat = out.view(-1)
        offset = self._data_start + info["data_offsets"][0]
        step = max(1, self.stream_chunk_bytes // source.itemsize)
        for first in range(0, flat.numel(), step):
            count = min(step, flat.numel() - first)
            chunk = self._scratch(count * source.itemsize).view(source)
            self._read_into(chunk, offset + first * source.itemsize, name)
            flat[first:first + count].copy_(chunk)
        return out

    stream_chunk_bytes = 64 * 1024 * 1024

    def _scratch(self, nbytes: int) -> torch.Tensor:
        """A reusable byte buffer of at least ``nbytes`` (a chunk never exceeds the chunk size)."""
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = torch.empty(max(nbytes, min(self.stream_chunk_bytes, self._size)),
                                       dtype=torch.uint8)
        return self._buffer[:nbytes]

    def _read_into(self, flat: torch.Tensor, offset: int, name: str) -> None:
        """Fill a contiguous CPU tensor with the file's bytes from ``offset``: read straight into
        its memory, with no zero-filled buffer in between."""
        buffer = memoryview(flat.view(torch.uint8).numpy())
        self._file.seek(offset)
        if self._file.readinto(buffer) != len(buffer):
            raise self._corrupt("exact end", f"tensor {name!r} could not be read in full (the "
                                f"file shrank while it was read)")

    def release(self, name: str) -> None:
        """Drop the mapped pages of a tensor that was copied (converted), so they stop counting
        towards resident memory; the page cache keeps the file."""
        if self._map is None:
            return
        begin, end = self.header[name]["data_offsets"]
        start = (self._data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = self._data_start + end
        # Dropping a clean page of a private file mapping only forgets it: a later read of a
        # neighbouring tensor that shares the page faults it back in from the file.
        length = (stop - start) // mmap.PAGESIZE * mmap.PAGESIZE
        if length > 0:
            self._map.madvise(mmap.MADV_DONTNEED, start, length)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in sorted(self.header, key=lambda n: self.header[n]["data_offsets"][0]):
            yield name, self.tensor(name)

    def close(self) -> None:
        # The mapping stays alive as long as tensors view it (they hold a reference to it).
        self._file.close()
        self._buffer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _DuplicateName(Exception):
    def __init__(self, name: str):
        self.name = name


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` keeps the last of two equal names; the format allows each name once."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateName(key)
        out[key] = value
    return out


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def load_pickle(path: str | os.PathLike, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Load a ``.bin``/``.ckpt`` checkpoint: refused unless ``allow_pickle``, then tensors only."""
    if not allow_pickle:
        raise UnsafeCheckpointError(
            f"{path} is a pickle checkpoint, which can run code when loaded; it is refused. "
            f"Convert it to safetensors, or pass allow_pickle=True if you trust its source "
            f"(it is then loaded with torch.load(weights_only=True))."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load pickle checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors (contiguous, on CPU) to a safetensors file; the caller stages it atomically."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.fspath(path),
              metadata={"format": "pt", **(metadata or {})})
