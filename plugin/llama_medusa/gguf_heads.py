"""GGUF access through the `gguf` package: the backbone's output matrix and MedusaBitNet heads embedded in a GGUF."""
from __future__ import annotations

import functools
import os
import re
from typing import Dict, List, Tuple

import numpy as np

from .heads import MedusaHeads

_HEAD_RE = re.compile(r"^medusa\.head\.(\d+)\.layer\.(\d+)\.(w_in|w_out)\.weight$")


def _reader(path: str):
    """A parsed GGUF (memory-mapped). Parsing SmolLM2's takes about 2 s (its 49k-token vocabulary), and loading
    conditioned heads reads both the output matrix and the token embedding: the last files parsed are kept, keyed
    by size and modification time so a rewritten file is parsed again."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read GGUF ({type(e).__name__}: {e})") from None
    return _parsed(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _parsed(path: str, size: int, mtime_ns: int):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # GGUFReader raises ValueError/KeyError/struct errors on damaged files
        raise ValueError(f"{path}: cannot read GGUF ({type(e).__name__}: {e})") from None


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def _as_f32(tensor, path: str) -> np.ndarray:
    """Dequantises one tensor to a float32 [rows, cols] array (GGUF lists dims fastest-first; numpy wants rows first)."""
    import gguf

    try:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ValueError(
            f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which the gguf package cannot dequantise"
        ) from None
    cols = int(tensor.shape[0])
    return np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(-1, cols))


def read_output_matrix(model_path: str) -> np.ndarray:
    """The backbone's vocabulary projection: output.weight, or token_embd.weight when the embedding is tied."""
    reader = _reader(model_path)
    by_name = {t.name: t for t in reader.tensors}
    t = by_name.get("output.weight") or by_name.get("token_embd.weight")
    if t is None:
        raise ValueError(f"{model_path}: neither output.weight nor token_embd.weight is in this GGUF")
    return _as_f32(t, model_path)


def _head_tensors(path: str, parsed=None):
    """(metadata getter, {name: float32 [rows, cols]}) of the medusa.head.* tensors. Heads embedded in a bitnet.cpp
    I2_S model are read with our own parser (or from `parsed`, that file's GGUFFile when the caller has one):
    gguf refuses the file's type-36 tensors."""
    f = parsed
    if f is None:
        try:
            reader = _reader(path)
        except ValueError:
            from .i2s_gguf import GGUFFile

            f = GGUFFile(path)
    if f is not None:
        return f.fields.get, {n: np.asarray(f.array(n), np.float32) for n in f.tensors if _HEAD_RE.match(n)}
    return (lambda key: _field(reader, key)), {t.name: _as_f32(t, path) for t in reader.tensors if _HEAD_RE.match(t.name)}


def load_gguf_heads(path: str, parsed=None) -> MedusaHeads:
    """MedusaBitNet heads: h + W_out . SiLU(W_in . h) per layer, projection shared with the backbone.
    parsed: the file's i2s_gguf.GGUFFile when the caller already has it (a BitNet model with embedded heads)."""
    field, tensors = _head_tensors(path, parsed)
    found: Dict[int, Dict[int, Dict[str, np.ndarray]]] = {}
    for name, arr in tensors.items():
        m = _HEAD_RE.match(name)
        k, l, which = int(m.group(1)), int(m.group(2)), m.group(3)
        found.setdefault(k, {}).setdefault(l, {})[which] = arr
    if not found:
        raise ValueError(f"{path}: no medusa.head.* tensors in this GGUF")
    n_heads = field("medusa.n_heads")
    n_layers = field("medusa.n_layers_per_head")
    hidden = field("medusa.hidden_size")
    if n_heads is not None and int(n_heads) != len(found):
        raise ValueError(f"{path}: metadata says {n_heads} Medusa heads, the file holds tensors for {len(found)}")
    blocks: List[list] = []
    for k in range(len(found)):
        if k not in found:
            raise ValueError(f"{path}: Medusa head {k} is missing (heads found: {sorted(found)})")
        layers = found[k]
        if n_layers is not None and len(layers) != int(n_layers):
            raise ValueError(f"{path}: head {k} has {len(layers)} layers, metadata says {n_layers}")
        head = []
        for l in range(len(layers)):
            if l not in layers or set(layers[l]) != {"w_in", "w_out"}:
                raise ValueError(f"{path}: head {k} layer {l} needs both w_in and w_out")
            head.append((layers[l]["w_in"], None, layers[l]["w_out"]))
        blocks.append(head)
    H = int(hidden) if hidden is not None else blocks[0][0][0].shape[1]
    return MedusaHeads(blocks, [None] * len(blocks), H, source=path, format="medusabitnet-gguf")


def medusabitnet_layout(heads: MedusaHeads) -> Tuple[Dict[str, int], List[Tuple[str, np.ndarray]]]:
    """Heads in the MedusaBitNet GGUF layout: (uint32 metadata, [(tensor name, float32 [rows, cols])]). Shared by
    the heads-only writer below and synth.write_bitnet, which embeds them in a model."""
    meta = {"medusa.n_heads": heads.n_heads, "medusa.n_layers_per_head": len(heads.blocks[0]),
            "medusa.hidden_size": heads.hidden_size}
    tensors = []
    for k, head in enumerate(heads.blocks):
        for l, (w_in, b_in, w_out) in enumerate(head):
            if b_in is not None or w_out is None or heads.proj[k] is not None:
                raise ValueError("the MedusaBitNet GGUF layout has no bias, needs W_out and shares the projection")
            for which, w in (("w_in", w_in), ("w_out", w_out)):
                tensors.append((f"medusa.head.{k}.layer.{l}.{which}.weight", np.ascontiguousarray(w, np.float32)))
    return meta, tensors


def write_gguf_heads(path: str, heads: MedusaHeads, arch: str = "medusa") -> None:
    """Writes heads in the MedusaBitNet GGUF layout (tests and tools)."""
    import gguf

    meta, tensors = medusabitnet_layout(heads)
    w = gguf.GGUFWriter(path, arch)
    for key, value in meta.items():
        w.add_uint32(key, value)
    for name, arr in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class TokenEmbedding:
    """Rows of the backbone's token embedding, for token-conditioned heads: a few rows per step are dequantised
    from the memory-mapped GGUF instead of holding the whole [n_vocab, n_embd] matrix in float32."""

    def __init__(self, row_fn, n_vocab: int, n_embd: int, source: str):
        self._row = row_fn
        self.n_vocab, self.n_embd, self.source = n_vocab, n_embd, source
        self.rows(np.array([0]))  # fail at load, not mid-generation, on a type gguf cannot dequantise

    @classmethod
    def from_gguf(cls, model_path: str) -> "TokenEmbedding":
        import gguf

        reader = _reader(model_path)
        t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if t is None:
            raise ValueError(f"{model_path}: token_embd.weight is not in this GGUF (token-conditioned heads need it)")
        n_embd, n_vocab = int(t.shape[0]), int(t.shape[1])
        data, ttype = t.data, t.tensor_type
        if ttype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            row = lambda i: np.asarray(data[i], dtype=np.float32)
        else:
            def row(i):
                try:
                    return gguf.quants.dequantize(data[i : i + 1], ttype)[0]
                except NotImplementedError:
                    raise ValueError(f"{model_path}: token_embd.weight has type {ttype.name}, which the gguf "
                                     "package cannot dequantise") from None
        return cls(row, n_vocab, n_embd, model_path)

    @classmethod
    def from_array(cls, arr: np.ndarray, source: str = "<array>") -> "TokenEmbedding":
        """[n_vocab, n_embd] array (float16 memmap of an I2_S model's embedding, or float32)."""
        return cls(lambda i: np.asarray(arr[i], dtype=np.float32), arr.shape[0], arr.shape[1], source)

    def rows(self, toks) -> np.ndarray:
        toks = np.asarray(toks).reshape(-1)
        bad = toks[(toks < 0) | (toks >= self.n_vocab)]
        if len(bad):
            raise ValueError(f"token id {int(bad[0])} is outside the embedding's {self.n_vocab} rows")
        return np.stack([self._row(int(t)) for t in toks]).astype(np.float32, copy=False)
