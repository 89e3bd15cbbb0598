"""bitnet.cpp's I2_S ternary layout in numpy: pack ternary weights into canonical bytes and read them back.

A row of K weights (K a multiple of 128) is K/4 bytes: each 128-weight block is 32 bytes, byte p holding the codes
of weights p, 32+p, 64+p, 96+p at shifts 6, 4, 2, 0, code = w + 1 (00 = -1, 01 = 0, 10 = +1, 11 never written).
A tensor carries one float32 scale: W = scale * (code - 1). See shared notes / README "I2_S".
"""
from __future__ import annotations

import numpy as np


def pack(w: np.ndarray) -> np.ndarray:
    """[N, K] array of -1/0/+1 -> [N, K/4] uint8 in the canonical 128/32 layout."""
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[1] % 128:
        raise ValueError(f"I2_S packs [N, K] with K a multiple of 128, got shape {w.shape}")
    if not np.isin(w, (-1, 0, 1)).all():
        raise ValueError("I2_S holds only -1, 0 and +1")
    n, k = w.shape
    c = (w.astype(np.int16) + 1).astype(np.uint8).reshape(n, k // 128, 4, 32)  # [row, block, group, lane]
    out = (c[:, :, 0] << 6) | (c[:, :, 1] << 4) | (c[:, :, 2] << 2) | c[:, :, 3]
    return np.ascontiguousarray(out.reshape(n, k // 4))


def unpack(b: np.ndarray) -> np.ndarray:
    """[N, K/4] uint8 -> [N, K] int8 of -1/0/+1; rejects code 3, which no writer produces."""
    b = np.asarray(b, dtype=np.uint8)
    if b.ndim != 2 or b.shape[1] % 32:
        raise ValueError(f"I2_S rows are whole 32-byte blocks, got shape {b.shape}")
    n, kb = b.shape
    blocks = b.reshape(n, kb // 32, 1, 32)
    codes = (blocks >> np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3  # [row, block, group, lane]
    if (codes == 3).any():
        raise ValueError("I2_S data holds code 3 (not a ternary value): the file is corrupt or not canonical 128/32")
    return (codes.astype(np.int8) - 1).reshape(n, kb * 4)


def cache_aligned(a: np.ndarray) -> np.ndarray:
    """A copy of a whose data starts on a 64-byte boundary. The kernels read weights and activations in 32-byte
    pieces, which a GGUF's 32-byte tensor alignment keeps within cache lines; numpy's large arrays start 16 bytes
    past one, which splits every other piece and understated the kernels by up to a third in timings."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    off = -buf.ctypes.data % 64
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
