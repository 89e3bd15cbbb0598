"""`llama-medusa convert-i2s IN OUT --to q2_0|tq2_0|tq1_0`: an I2_S BitNet GGUF -> a GGUF stock llama.cpp loads
(arch "bitnet").

All three targets hold the exact ternary codes; the per-tensor float32 scale becomes each block's float16 d
(relative error at most 2^-11, the same for every block):
- q2_0 (upstream type 42, CPU + CUDA + HIP kernels): blocks of 64, d then 16 bytes, weight j at bits 2(j%4) of
  byte j/4, code w + 1. Packed here: the gguf package (0.19) does not know the type.
- tq2_0 (CPU only upstream): the same 2-bit codes as I2_S in blocks of 256 with the field order inside each byte
  reversed: a TQ2_0 block is two consecutive I2_S blocks through a bit-reversal table, plus d.
- tq1_0 (CPU only upstream, 1.69 bits/weight): base-3 packing, done by gguf.quants from the dequantised tensor
  (exact: every nonzero block's absmax is the scale).
The file is written by our GGUF writer (gguf_file.write_gguf), since gguf's writer refuses type 42.

Loud limit: upstream llama.cpp's "bitnet" graph uses a SiLU FFN. BitNet-b1.58-2B-4T needs ReLU^2, so a converted
2B-4T runs, but wrongly (perplexity about 100 instead of 17), until llama.cpp's src/models/bitnet.cpp is patched.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from .gguf_file import I2_S, Q2_0, GGUFFile, write_gguf
from .packing import unpack

# bits 7-6 -> 1-0, 5-4 -> 3-2, 3-2 -> 5-4, 1-0 -> 7-6
REV = np.array([((b >> 6) & 3) | (((b >> 4) & 3) << 2) | (((b >> 2) & 3) << 4) | ((b & 3) << 6)
                for b in range(256)], dtype=np.uint8)
TQ1_0, TQ2_0 = 34, 35
# target -> (ggml type, llama_ftype for general.file_type)
TARGETS = {"q2_0": (Q2_0, 41), "tq2_0": (TQ2_0, 37), "tq1_0": (TQ1_0, 36)}

SILU_WARNING = ("llama-medusa: NOTE: upstream llama.cpp's 'bitnet' architecture runs a SiLU FFN; "
                "BitNet-b1.58 models need ReLU^2. The converted model loads, but its outputs are wrong until "
                "llama.cpp's src/models/bitnet.cpp uses LLM_FFN_RELU_SQR.")


def upstream_metadata(f: GGUFFile) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """f's metadata as upstream llama.cpp's "bitnet" architecture names it: (fields, value types). Keys are renamed
    from f's architecture and keep the source's value types; LLaMA-3's pre-tokenizer is named when the file has none
    (2B-4T ships without it). Shared by convert-i2s and the tokenizer-only GGUF the native backbone gives llama.cpp."""
    arch = f.fields.get("general.architecture")
    fields, types = {"general.architecture": "bitnet"}, {}
    for k, v in f.fields.items():
        if k in ("general.architecture", "general.file_type", "general.alignment"):
            continue
        t = f.types[k]
        if k.startswith(arch + "."):
            k = "bitnet." + k[len(arch) + 1:]
        fields[k], types[k] = v, t
    if "tokenizer.ggml.pre" not in fields:
        fields["tokenizer.ggml.pre"] = "llama-bpe"
    return fields, types


def _block_d(rows: int, n_blocks: int, scale: float) -> np.ndarray:
    """Every block's float16 d (the per-tensor scale) as [rows, n_blocks, 2] bytes."""
    return np.full((rows, n_blocks, 1), np.float16(scale)).view(np.uint8).reshape(rows, n_blocks, 2)


def i2s_to_tq2_0(packed: np.ndarray, scale: float) -> np.ndarray:
    """[rows, K/4] I2_S bytes -> [rows, K/256 * 66] TQ2_0 bytes."""
    packed = np.asarray(packed, dtype=np.uint8)
    rows, kq = packed.shape
    if (kq * 4) % 256:
        raise ValueError(f"TQ2_0 needs rows of a multiple of 256 weights, got {kq * 4}")
    unpack(packed)  # rejects code 3
    qs = REV[packed].reshape(rows, kq // 64, 64)
    return np.concatenate([qs, _block_d(rows, kq // 64, scale)], axis=2).reshape(rows, -1)


def i2s_to_q2_0(packed: np.ndarray, scale: float) -> np.ndarray:
    """[rows, K/4] I2_S bytes -> [rows, K/64 * 18] Q2_0 bytes."""
    codes = (unpack(packed) + 1).astype(np.uint8)  # [rows, K], 0..2; I2_S rows are whole 128-weight blocks
    rows, K = codes.shape
    c = codes.reshape(rows, K // 64, 16, 4)
    qs = c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)
    return np.concatenate([_block_d(rows, K // 64, scale), qs], axis=2).reshape(rows, -1)


def i2s_to_tq1_0(packed: np.ndarray, scale: float) -> np.ndarray:
    """[rows, K/4] I2_S bytes -> [rows, K/256 * 54] TQ1_0 bytes (gguf's packer)."""
    import gguf

    w = unpack(packed).astype(np.float32) * np.float32(np.float16(scale))
    if w.shape[1] % 256:
        raise ValueError(f"TQ1_0 needs rows of a multiple of 256 weights, got {w.shape[1]}")
    return gguf.quants.quantize(w, gguf.GGMLQuantizationType.TQ1_0)


PACKERS = {"q2_0": i2s_to_q2_0, "tq2_0": i2s_to_tq2_0, "tq1_0": i2s_to_tq1_0}


def convert(src: str, dst: str, to: str = "q2_0", log=print) -> None:
    if to not in TARGETS:
        raise ValueError(f"convert-i2s --to must be one of {', '.join(TARGETS)}; got {to!r}")
    ttype, ftype = TARGETS[to]
    f = GGUFFile(src)
    arch = f.fields.get("general.architecture")
    if arch not in ("bitnet-b1.58", "bitnet-25", "bitnet"):
        raise ValueError(f"{src}: architecture {arch!r} is not a BitNet model")
    fields, types = upstream_metadata(f)
    fields["general.file_type"] = ftype
    tensors = []
    for name, t in f.tensors.items():
        if name.startswith("medusa."):
            continue  # embedded heads: llama.cpp refuses tensors its graph does not use (run them with our Llama)
        if t.type == I2_S:
            tensors.append((name, ttype, t.shape, lambda name=name: PACKERS[to](*f.i2s(name))))
        else:
            tensors.append((name, t.type, t.shape, lambda name=name: f.raw(name)))
    write_gguf(dst, fields, tensors, types)
    if arch != "bitnet":
        log(SILU_WARNING)
