"""Heads bound to the native evaluator: the CPU engine (cpp/heads.cpp) or the GPU module's (hip/heads.cu)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

PROJ_DTYPES = ("f32", "f16", "i8")


def build(heads, model_path: Optional[str], n_embd: int, n_vocab: int, proj_dtype: str = "i8", n_threads: int = 0,
          backbone_proj: Optional[np.ndarray] = None, device: str = "cpu"):
    """The evaluator of `heads` (a MedusaHeads): the native CPU engine, or with device="gpu" the GPU module's
    (projection kept in float16 there). The shared projection is read from the model GGUF unless given."""
    from .. import _native

    if proj_dtype not in PROJ_DTYPES:
        raise ValueError(f"medusa projection dtype must be one of {PROJ_DTYPES}, got {proj_dtype!r}")
    if device == "gpu":
        from .. import gpu

        if heads.conditioned:
            raise ValueError(f"Medusa heads {heads.source} are token-conditioned; the GPU module evaluates plain "
                             "Medusa heads only: use medusa_device='cpu'")
        reason = gpu.why_not()
        if reason:
            raise ValueError(f"medusa heads on the GPU: {reason}")
        eng = gpu.module().HeadsEngine(heads.hidden_size)
    elif device == "cpu":
        eng = _native.HeadsEngine(heads.hidden_size, n_threads)
    else:
        raise ValueError(f"medusa device must be 'cpu' or 'gpu', got {device!r}")
    ids: Dict[int, int] = {}
    shared_id = None
    for k in range(heads.n_heads):
        p = heads.proj[k]
        if p is None:
            if shared_id is None:
                if backbone_proj is None:
                    if model_path is None:
                        raise ValueError("these heads share the backbone's output matrix: a model path is needed")
                    from ..backbones.gguf_tensors import read_output_matrix

                    backbone_proj = read_output_matrix(model_path)
                if backbone_proj.shape != (n_vocab, n_embd):
                    raise ValueError(
                        f"the model's output matrix has shape {backbone_proj.shape}, expected ({n_vocab}, {n_embd})"
                    )
                shared_id = _add_projection(eng, _rows(heads, backbone_proj), proj_dtype, device)
            pid = shared_id
        else:
            if id(p) not in ids:
                ids[id(p)] = _add_projection(eng, _rows(heads, p), proj_dtype, device)
            pid = ids[id(p)]
        if device == "gpu":
            blocks = list(heads.blocks[k])
        else:  # the CPU engine keeps exactly-float16 weights (heads files store them so) in float16
            blocks = [(_compact(w_in), b_in, None if w_out is None else _compact(w_out))
                      for (w_in, b_in, w_out) in heads.blocks[k]]
        if heads.conditioned:  # CPU engine only (the GPU path refused these heads above)
            eng.add_head(blocks, pid, cond=[_compact(u) for u in heads.cond[k]])
        else:
            eng.add_head(blocks, pid)
    return eng


def _rows(heads, w: np.ndarray) -> np.ndarray:
    return w if heads.draft_vocab is None else w[heads.draft_vocab]


def _compact(w: np.ndarray) -> np.ndarray:
    """w as float16 when that is lossless (weights loaded from a float16 file), else unchanged: the engine streams
    head weights every step, so half the bytes is most of a head's time."""
    h = w.astype(np.float16)
    return h if np.array_equal(h.astype(w.dtype), w) else w


def _add_projection(eng, w: np.ndarray, dtype: str, device: str) -> int:
    if device == "gpu":  # the GPU engine takes float and stores float16 itself
        return eng.add_projection(np.asarray(w, dtype=np.float32))
    return eng.add_projection(*convert_projection(w, dtype))


def convert_projection(w: np.ndarray, dtype: str):
    """[vocab, hidden] float matrix -> (weights, scales or None) in the engine's storage type."""
    w = np.asarray(w, dtype=np.float32)
    if dtype == "f32":
        return np.ascontiguousarray(w), None
    if dtype == "f16":
        return np.ascontiguousarray(w.astype(np.float16)), None
    return quantize_rows_i8(w)


def quantize_rows_i8(w: np.ndarray):
    """Symmetric per-row int8: q = round(w / s), s = absmax / 127 (the engine's I8 projection)."""
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.rint(w / scale[:, None]).astype(np.int8)
    return np.ascontiguousarray(q), scale
