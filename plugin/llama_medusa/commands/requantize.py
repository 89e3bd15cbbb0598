"""`llama-medusa requantize SRC DST --type f16`: a copy of a GGUF in another weight type, by llama.cpp's quantize
API."""
from __future__ import annotations

from ..default_model import check_model_path

# llama_ftype values. bf16: on CPUs with AVX512_BF16 (Zen 4, Sapphire Rapids) llama.cpp multiplies BF16 weights
# natively, and a batch's second token costs less than F16's there (BENCHMARKS.md, "BF16")
FTYPES = {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3, "f32": 0}


def requantize(src: str, dst: str, ftype: str = "f16", n_threads: int = 0) -> str:
    """A copy of a GGUF in another weight type, by llama.cpp's own quantize API (allow_requantize: the source may
    itself be quantised, so an F16 copy of a Q4_1 file carries the Q4_1 rounding, at F16 cost)."""
    import llama_cpp

    if ftype not in FTYPES:
        raise ValueError(f"unknown weight type {ftype!r}; choose one of {sorted(FTYPES)}")
    check_model_path(src)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True
    params.nthread = n_threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {src} -> {dst}")
    return dst

