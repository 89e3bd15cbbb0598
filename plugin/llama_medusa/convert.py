"""`llama-medusa convert-i2s`: an I2_S BitNet GGUF -> a GGUF stock llama.cpp loads (arch "bitnet", TQ2_0).

TQ2_0 holds the same 2-bit codes (w + 1) as I2_S, in blocks of 256 with the field order inside each byte reversed:
a TQ2_0 block is two consecutive I2_S blocks through a bit-reversal table, plus a float16 d. The codes are exact;
the per-tensor float32 scale becomes each block's float16 d (relative error at most 2^-11).

Loud limit: upstream llama.cpp's "bitnet" graph uses a SiLU FFN. BitNet-b1.58-2B-4T needs ReLU^2, so a converted
2B-4T runs, but wrongly (perplexity about 100 instead of 17), until llama.cpp's src/models/bitnet.cpp is patched.
"""
from __future__ import annotations

import sys

import numpy as np

from .i2s_gguf import I2_S, GGUFFile

# bits 7-6 -> 1-0, 5-4 -> 3-2, 3-2 -> 5-4, 1-0 -> 7-6
REV = np.array([((b >> 6) & 3) | (((b >> 4) & 3) << 2) | (((b >> 2) & 3) << 4) | ((b & 3) << 6)
                for b in range(256)], dtype=np.uint8)

SILU_WARNING = ("llama-medusa: NOTE: upstream llama.cpp's 'bitnet' architecture runs a SiLU FFN; "
                "BitNet-b1.58 models need ReLU^2. The converted model loads, but its outputs are wrong until "
                "llama.cpp's src/models/bitnet.cpp uses LLM_FFN_RELU_SQR.")


def i2s_to_tq2_0(packed: np.ndarray, scale: float) -> np.ndarray:
    """[rows, K/4] I2_S bytes -> [rows, K/256 * 66] TQ2_0 bytes."""
    packed = np.asarray(packed, dtype=np.uint8)
    rows, kq = packed.shape
    if (kq * 4) % 256:
        raise ValueError(f"TQ2_0 needs rows of a multiple of 256 weights, got {kq * 4}")
    from .i2s import unpack

    unpack(packed)  # rejects code 3
    qs = REV[packed].reshape(rows, kq // 64, 64)
    d = np.full((rows, kq // 64, 1), np.float16(scale)).view(np.uint8).reshape(rows, kq // 64, 2)
    return np.concatenate([qs, d], axis=2).reshape(rows, -1)


def convert(src: str, dst: str, to: str = "tq2_0", log=print) -> None:
    import gguf
    from gguf import GGMLQuantizationType as Q

    if to != "tq2_0":
        raise ValueError(f"convert-i2s writes tq2_0 (the gguf package here has no {to} type); got --to {to}")
    f = GGUFFile(src)
    arch = f.fields.get("general.architecture")
    if arch not in ("bitnet-b1.58", "bitnet-25", "bitnet"):
        raise ValueError(f"{src}: architecture {arch!r} is not a BitNet model")
    w = gguf.GGUFWriter(dst, "bitnet")
    for k, v in f.fields.items():
        if k in ("general.architecture", "general.file_type", "general.alignment"):
            continue
        vt, sub = f.types[k]  # written back with the source file's own value types
        if k.startswith(arch + "."):
            k = "bitnet." + k[len(arch) + 1:]
        w.add_key_value(k, v, vt, sub_type=sub)
    if "tokenizer.ggml.pre" not in f.fields:
        w.add_tokenizer_pre("llama-bpe")  # 2B-4T ships without it; it is LLaMA-3's tokenizer
    w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
    for name, t in f.tensors.items():
        if t.type == I2_S:
            packed, scale = f.i2s(name)
            data = i2s_to_tq2_0(packed, scale)
            w.add_tensor(name, data, raw_dtype=Q.TQ2_0)  # [rows, bytes]: gguf derives the element shape
        else:
            w.add_tensor(name, np.array(f.array(name)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if arch != "bitnet":
        log(SILU_WARNING)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
