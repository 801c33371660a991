"""A GGUF file's metadata and tensor index, read with ``struct`` in one pass.

gguf-py's ``GGUFReader`` makes a numpy view per array element, which takes tens of seconds on a 150k-token
vocabulary with its merges; reading the same bytes with ``struct`` takes a fraction of a second. Byte spans are kept
so callers can compare or copy sections exactly.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from tooltune.errors import TooltuneError

# GGUF value types (spec): fixed-size scalars by struct format, string (8) and array (9).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(TooltuneError):
    pass


@dataclass(frozen=True)
class TensorEntry:
    name: str
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order (fastest-varying dimension first), as stored
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    kv_spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # byte range of each key/value pair
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    tensor_info_span: tuple[int, int] = (0, 0)
    data_offset: int = 0

    def tensor_bytes(self, name: str) -> bytes:
        entry = self.tensors[name]
        with self.path.open("rb") as handle:
            handle.seek(self.data_offset + entry.offset)
            return handle.read(entry.nbytes)


def read_gguf_header(path: str | Path) -> GGUFHeader:
    path = Path(path)
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(path, data)
    except GGUFHeaderError:
        raise
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise GGUFHeaderError(f"{path}: not a readable GGUF file ({exc})") from None


def _parse(path: Path, data: mmap.mmap) -> GGUFHeader:
    if data[:4] != b"GGUF":
        raise GGUFHeaderError(f"{path}: not a GGUF file (bad magic)")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    header = GGUFHeader(path, version)
    pos = 24

    def read_string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", data, at)
        return data[at + 8: at + 8 + length].decode("utf-8"), at + 8 + length

    def read_value(kind: int, at: int) -> tuple[Any, int]:
        if kind == _STRING:
            return read_string(at)
        if kind in _SCALARS:
            fmt = "<" + _SCALARS[kind]
            return struct.unpack_from(fmt, data, at)[0], at + struct.calcsize(fmt)
        if kind == _ARRAY:
            item_kind, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item_kind in _SCALARS:
                fmt = "<" + _SCALARS[item_kind]
                size = struct.calcsize(fmt)
                return list(struct.unpack_from(f"<{count}{_SCALARS[item_kind]}", data, at)), at + count * size
            items = []
            for _ in range(count):
                item, at = read_value(item_kind, at)
                items.append(item)
            return items, at
        raise GGUFHeaderError(f"{path}: unknown GGUF value type {kind}")

    for _ in range(n_kv):
        start = pos
        key, pos = read_string(pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        header.metadata[key], pos = read_value(kind, pos + 4)
        header.kv_spans[key] = (start, pos)

    info_start = pos
    for _ in range(n_tensors):
        name, pos = read_string(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        shape = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
        qtype, offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        nbytes = math.prod(shape) // block * type_size
        header.tensors[name] = TensorEntry(name, gguf.GGMLQuantizationType(qtype), tuple(shape), offset, nbytes)
    header.tensor_info_span = (info_start, pos)
    alignment = int(header.metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
    header.data_offset = -(-pos // alignment) * alignment
    return header
