"""GGUF files that hold bitnet.cpp's I2_S tensors (type 36): a reader and a writer of our own.

The `gguf` package refuses type 36 (upstream reused the number), so these files need their own tensor-info
parser; the value types, names and quantisation sizes of every other tensor type still come from `gguf`.
An I2_S tensor of n = ne0 * ne1 weights occupies n/4 packed bytes (canonical 128/32 layout, see i2s.py) plus 32
tail bytes whose first 4 are the float32 per-tensor scale; the rest of the tail is ignored. Files quantised on
recent ARM builds of bitnet.cpp use an unmarked 64/16 layout: this reader assumes 128/32 (code 3 in the data is
the usual symptom of the other layout and is rejected).
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

I2_S = 36
Q2_0 = 42  # upstream llama.cpp's ternary-capable 2-bit type (blocks of 64: float16 d + 16 bytes); gguf 0.19 lacks it
_EXTRA_SIZES = {Q2_0: (64, 18)}
GGUF_MAGIC = b"GGUF"
_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass
class Tensor:
    name: str
    type: int
    shape: Tuple[int, ...]  # ggml order: ne0 (row length) first
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def n(self) -> int:
        return math.prod(self.shape)


class GGUFFile:
    """Metadata and tensor table of a GGUF (I2_S allowed); tensor data is memory-mapped, never copied."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(24)
            if len(head) < 24 or head[:4] != GGUF_MAGIC:
                raise ValueError(f"{path}: not a GGUF file")
            version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
            if version not in (2, 3):
                raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            if n_tensors > 1 << 20 or n_kv > 1 << 20:
                raise ValueError(f"{path}: corrupt header ({n_tensors} tensors, {n_kv} keys)")
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")
        self._head = memoryview(self._mm)  # the header is read through this: a numpy slice per string is 10x slower
        self._pos = 24
        self.fields: Dict[str, Any] = {}
        # key -> (value type, element type of an array or None): what a copy of the key must be written as
        self.types: Dict[str, Tuple[GGUFValueType, Any]] = {}
        try:
            for _ in range(n_kv):
                key = self._str()
                vt = self._value_type(key)
                sub = self._value_type(key) if vt == GGUFValueType.ARRAY else None
                self.types[key] = (vt, sub)
                self.fields[key] = self._array(sub) if sub is not None else self._value(vt)
            infos = []
            for _ in range(n_tensors):
                name = self._str()
                nd = self._u32()
                if nd > 4:
                    raise ValueError(f"tensor {name} has {nd} dimensions")
                shape = tuple(self._u64() for _ in range(nd))
                infos.append((name, shape, self._u32(), self._u64()))
        except (struct.error, IndexError):
            raise ValueError(f"{path}: the file ends inside its header (truncated)") from None
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, (int, np.integer)) or align <= 0 or align & (align - 1):
            raise ValueError(f"{path}: general.alignment is {align!r}, not a power of two: the header is corrupt")
        align = int(align)
        data_start = (self._pos + align - 1) // align * align
        self.tensors: Dict[str, Tensor] = {}
        # llama.cpp's own GGUF loader refuses misaligned offsets and repeated names; overlapping tensors it rules
        # out by demanding each one start where the last ended, which ties it to its own padding rules. Here an
        # overlap is refused directly: a damaged offset or shape then fails loudly instead of reading another
        # tensor's bytes as weights.
        for name, shape, ttype, off in infos:
            if off % align:
                raise ValueError(f"{path}: tensor {name} starts at data offset {off}, not a multiple of the "
                                 f"alignment {align}: the tensor table is corrupt")
            if name in self.tensors:
                raise ValueError(f"{path}: tensor {name} appears twice: the tensor table is corrupt")
            nbytes = tensor_nbytes(name, ttype, shape)
            t = Tensor(name, ttype, shape, data_start + off, nbytes)
            if t.offset + nbytes > size:
                raise ValueError(f"{path}: tensor {name} runs past the end of the file ({t.offset + nbytes} > {size} "
                                 "bytes): the file is truncated, or its tensor table damaged")
            self.tensors[name] = t
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"{path}: tensors {a} and {b} overlap in the file: the tensor table is corrupt")

    # -- header primitives
    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._mm):
            raise IndexError
        b = bytes(self._head[self._pos:self._pos + n])
        self._pos += n
        return b

    def _value_type(self, key: str) -> GGUFValueType:
        v = self._u32()
        try:
            return GGUFValueType(v)
        except ValueError:
            raise ValueError(f"{self.path}: key {key!r} has value type {v}, which GGUF does not define: the header "
                             "is corrupt") from None

    def _u32(self) -> int:
        return struct.unpack("<I", self._take(4))[0]

    def _u64(self) -> int:
        return struct.unpack("<Q", self._take(8))[0]

    def _str(self) -> str:
        n = self._u64()
        if n > 1 << 30:
            raise ValueError(f"{self.path}: corrupt string length {n}")
        return self._take(n).decode("utf-8", errors="surrogateescape")

    def _value(self, vt: GGUFValueType):
        if vt == GGUFValueType.STRING:
            return self._str()
        if vt == GGUFValueType.ARRAY:
            return self._array(GGUFValueType(self._u32()))
        fmt = _SCALAR[vt]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _array(self, sub: GGUFValueType) -> list:
        n = self._u64()
        if sub in _SCALAR:  # numeric arrays (token types, scores) in one read
            fmt = _SCALAR[sub]
            return list(np.frombuffer(self._take(n * struct.calcsize(fmt)), dtype=np.dtype(fmt)))
        return [self._value(sub) for _ in range(n)]

    # -- data
    def raw(self, name: str) -> np.ndarray:
        t = self.tensor(name)
        return self._mm[t.offset:t.offset + t.nbytes]

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise ValueError(f"{self.path}: tensor {name} is missing")
        return self.tensors[name]

    def array(self, name: str) -> np.ndarray:
        """F32/F16 tensors as [ne1, ne0] (or [ne0]) views."""
        t = self.tensor(name)
        dt = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}.get(t.type)
        if dt is None:
            raise ValueError(f"{self.path}: tensor {name} has type {type_name(t.type)}, expected F32 or F16")
        return self.raw(name).view(dt).reshape(tuple(reversed(t.shape)))

    def i2s(self, name: str) -> Tuple[np.ndarray, float]:
        """An I2_S tensor as ([ne1, ne0/4] packed bytes view, float32 scale)."""
        t = self.tensor(name)
        if t.type != I2_S:
            raise ValueError(f"{self.path}: tensor {name} has type {type_name(t.type)}, expected I2_S")
        raw = self.raw(name)
        n4 = t.n // 4
        scale = float(raw[n4:n4 + 4].view(np.float32)[0])
        if not np.isfinite(scale):
            raise ValueError(f"{self.path}: tensor {name} has a non-finite scale ({scale})")
        return raw[:n4].reshape(t.shape[1], t.shape[0] // 4), scale


def peek_architecture(path: str):
    """general.architecture from the first keys of a GGUF without parsing the rest (writers put it first);
    None when it is not among the leading scalar keys (then parse the file)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:4] != GGUF_MAGIC or len(head) < 24:
        return None
    pos = 24
    try:
        for _ in range(min(8, struct.unpack_from("<Q", head, 16)[0])):
            (n,) = struct.unpack_from("<Q", head, pos)
            key = head[pos + 8:pos + 8 + n].decode("utf-8", "replace")
            pos += 8 + n
            (vt,) = struct.unpack_from("<I", head, pos)
            pos += 4
            if vt == GGUFValueType.STRING:
                (m,) = struct.unpack_from("<Q", head, pos)
                val = head[pos + 8:pos + 8 + m].decode("utf-8", "replace")
                pos += 8 + m
                if key == "general.architecture":
                    return val
            elif vt in _SCALAR:
                pos += struct.calcsize(_SCALAR[GGUFValueType(vt)])
            else:
                return None
    except (struct.error, ValueError):
        return None
    return None


def type_name(t: int) -> str:
    if t == I2_S:
        return "I2_S"
    if t == Q2_0:
        return "Q2_0"
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"unknown type {t}"


def tensor_nbytes(name: str, ttype: int, shape: Tuple[int, ...]) -> int:
    n = math.prod(shape)  # Python integers: a damaged shape must not wrap around to a small size
    if ttype == I2_S:
        if not shape or shape[0] % 128:
            raise ValueError(f"I2_S tensor {name}: rows of {shape[0] if shape else 0} weights; bitnet.cpp's layout "
                             "needs a multiple of 128")
        return n // 4 + 32
    try:
        block, size = _EXTRA_SIZES.get(ttype) or GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        raise ValueError(f"tensor {name} has unknown type {ttype}: neither a ggml type nor I2_S (36)") from None
    if n % block:
        raise ValueError(f"tensor {name}: {n} elements is not a multiple of {type_name(ttype)}'s block {block}")
    return n // block * size


# ------------------------------------------------------------------------------------------------ writer
def _pack_value(v, vt: GGUFValueType, sub: GGUFValueType = None) -> bytes:
    if vt == GGUFValueType.STRING:
        b = v.encode("utf-8", errors="surrogateescape") if isinstance(v, str) else bytes(v)
        return struct.pack("<Q", len(b)) + b
    if vt == GGUFValueType.ARRAY:
        out = [struct.pack("<IQ", sub, len(v))]
        if sub in _SCALAR:
            out.append(np.asarray(v, dtype=np.dtype(_SCALAR[sub])).tobytes())
        else:
            out.extend(_pack_value(x, sub) for x in v)
        return b"".join(out)
    return struct.pack(_SCALAR[vt], v)


def _infer(v) -> Tuple[GGUFValueType, GGUFValueType]:
    if isinstance(v, (list, tuple, np.ndarray)):
        first = v[0] if len(v) else 0
        return GGUFValueType.ARRAY, _infer(first)[0]
    if isinstance(v, (str, bytes)):
        return GGUFValueType.STRING, None
    if isinstance(v, (bool, np.bool_)):
        return GGUFValueType.BOOL, None
    if isinstance(v, (float, np.floating)):
        return GGUFValueType.FLOAT32, None
    return GGUFValueType.UINT32 if v >= 0 else GGUFValueType.INT32, None


def write_gguf(path: str, fields: Dict[str, Any], tensors: List[Tuple[str, int, Tuple[int, ...], Any]],
               types: Dict[str, Tuple[GGUFValueType, GGUFValueType]] = None, align: int = 32) -> None:
    """fields: key -> value (types inferred unless given in `types`); tensors: (name, type, ggml shape, data),
    data being bytes or a callable that returns them (made only when written, so a converter holds one tensor
    at a time)."""
    types = types or {}
    kv = []
    for k, v in fields.items():
        vt, sub = types.get(k) or _infer(v)
        kv.append(_pack_value(k, GGUFValueType.STRING) + struct.pack("<I", vt) + _pack_value(v, vt, sub))
    infos, offset = [], 0
    for name, ttype, shape, _ in tensors:
        infos.append(_pack_value(name, GGUFValueType.STRING) + struct.pack("<I", len(shape)) +
                     struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", ttype, offset))
        offset += (tensor_nbytes(name, ttype, shape) + align - 1) // align * align
    try:
        with open(path, "wb") as f:
            f.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(fields)))
            for b in kv + infos:
                f.write(b)
            f.write(b"\0" * (-f.tell() % align))
            for name, ttype, shape, data in tensors:
                data = memoryview(data() if callable(data) else data).cast("B")
                if data.nbytes != tensor_nbytes(name, ttype, shape):
                    raise ValueError(f"tensor {name}: {data.nbytes} bytes for shape {shape} of type {type_name(ttype)}")
                f.write(data)
                f.write(b"\0" * (-data.nbytes % align))
    except BaseException:
        os.remove(path)  # never leave a half-written GGUF behind
        raise


def i2s_bytes(w: np.ndarray, scale: float) -> bytes:
    """Ternary [ne1, ne0] (-1/0/+1) and its per-tensor scale -> I2_S tensor bytes (packed, scale, zero tail)."""
    from .packing import pack

    tail = np.zeros(32, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return pack(w).tobytes() + tail.tobytes()
