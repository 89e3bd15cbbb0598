"""A model's own tensors that heads read: the output matrix (for heads that share the backbone's projection) and
the token embedding (for token-conditioned heads). The file is parsed by this project's GGUF reader
(i2s/gguf_file.py, which knows every type by the `gguf` package's block sizes) and tensors are dequantised by
`gguf.quants`: gguf's own GGUFReader takes seconds over a 49k-token vocabulary, the reader here a tenth of that."""
from __future__ import annotations

import functools
import os

import numpy as np


def reader_of(path: str):
    """A parsed GGUF (i2s.gguf_file.GGUFFile, memory-mapped). Loading conditioned heads reads both the output matrix
    and the token embedding: the last files parsed are kept, keyed by size and modification time so a rewritten
    file is parsed again."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read GGUF ({type(e).__name__}: {e})") from None
    return _parsed(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _parsed(path: str, size: int, mtime_ns: int):
    from .i2s.gguf_file import GGUFFile

    return GGUFFile(path)


def _quant_type(f, name: str):
    import gguf

    t = f.tensor(name)
    try:
        return t, gguf.GGMLQuantizationType(t.type)
    except ValueError:
        raise ValueError(f"{f.path}: tensor {name} has type {t.type}, which the gguf package does not know") from None


def rows_of(f, name: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-D tensor, dequantised to float32 [rows, cols]."""
    import gguf

    t, qt = _quant_type(f, name)
    cols = int(t.shape[0])
    row_bytes = t.nbytes // int(t.shape[1])
    raw = f.raw(name)[start * row_bytes : stop * row_bytes].reshape(stop - start, row_bytes)
    if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(raw.view(np.float32 if qt == gguf.GGMLQuantizationType.F32 else np.float16),
                          dtype=np.float32).reshape(stop - start, cols)
    try:
        return np.asarray(gguf.quants.dequantize(raw, qt), dtype=np.float32).reshape(stop - start, cols)
    except NotImplementedError:
        raise ValueError(f"{f.path}: tensor {name} has type {qt.name}, which the gguf package cannot dequantise") \
            from None


def as_f32(f, name: str) -> np.ndarray:
    """One whole 2-D tensor dequantised to a float32 [rows, cols] array (GGUF lists dims fastest-first)."""
    t = f.tensor(name)
    return np.ascontiguousarray(rows_of(f, name, 0, int(t.shape[1]) if len(t.shape) > 1 else 1))


def read_output_matrix(model_path: str) -> np.ndarray:
    """The backbone's vocabulary projection: output.weight, or token_embd.weight when the embedding is tied."""
    f = reader_of(model_path)
    name = next((n for n in ("output.weight", "token_embd.weight") if n in f.tensors), None)
    if name is None:
        raise ValueError(f"{model_path}: neither output.weight nor token_embd.weight is in this GGUF")
    return as_f32(f, name)


class TokenEmbedding:
    """Rows of the backbone's token embedding, for token-conditioned heads: a few rows per step are dequantised
    from the memory-mapped GGUF instead of holding the whole [n_vocab, n_embd] matrix in float32. Rows already
    dequantised are kept (a decode step needs up to a tree's worth of rows, and common tokens come back often)."""

    CACHED_ROWS = 8192

    def __init__(self, row_fn, n_vocab: int, n_embd: int, source: str):
        self._row = row_fn
        self._cache = {}
        self.n_vocab, self.n_embd, self.source = n_vocab, n_embd, source
        self.rows(np.array([0]))  # fail at load, not mid-generation, on a type gguf cannot dequantise

    @classmethod
    def from_gguf(cls, model_path: str) -> "TokenEmbedding":
        f = reader_of(model_path)
        if "token_embd.weight" not in f.tensors:
            raise ValueError(f"{model_path}: token_embd.weight is not in this GGUF (token-conditioned heads need it)")
        t = f.tensor("token_embd.weight")
        n_embd, n_vocab = int(t.shape[0]), int(t.shape[1])
        return cls(lambda i: rows_of(f, "token_embd.weight", i, i + 1)[0], n_vocab, n_embd, model_path)

    @classmethod
    def from_array(cls, arr: np.ndarray, source: str = "<array>") -> "TokenEmbedding":
        """[n_vocab, n_embd] array (float16 memmap of an I2_S model's embedding, or float32)."""
        return cls(lambda i: np.asarray(arr[i], dtype=np.float32), arr.shape[0], arr.shape[1], source)

    def rows(self, toks) -> np.ndarray:
        toks = np.asarray(toks).reshape(-1)
        bad = toks[(toks < 0) | (toks >= self.n_vocab)]
        if len(bad):
            raise ValueError(f"token id {int(bad[0])} is outside the embedding's {self.n_vocab} rows")
        return np.stack([self._cached_row(int(t)) for t in toks])

    def _cached_row(self, t: int) -> np.ndarray:
        r = self._cache.get(t)
        if r is None:
            if len(self._cache) >= self.CACHED_ROWS:
                self._cache.clear()
            r = self._cache[t] = np.asarray(self._row(t), dtype=np.float32)
        return r
