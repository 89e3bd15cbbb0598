"""MedusaBitNet heads in a GGUF: ``medusa.head.{k}.layer.{l}.w_in.weight`` / ``w_out.weight``, metadata
``medusa.n_heads``, ``medusa.n_layers_per_head``, ``medusa.hidden_size``; the projection is the backbone's. They
ride in a heads-only GGUF or inside a BitNet model's own I2_S GGUF."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import numpy as np

from ..backbones.gguf_tensors import as_f32, reader_of

_HEAD_RE = re.compile(r"^medusa\.head\.(\d+)\.layer\.(\d+)\.(w_in|w_out)\.weight$")


def _head_tensors(path: str, parsed=None):
    """(metadata getter, {name: float32 [rows, cols]}) of the medusa.head.* tensors, from `parsed` (the file's
    GGUFFile when the caller has it, as a BitNet model with embedded heads does) or a fresh parse."""
    f = parsed if parsed is not None else reader_of(path)
    return f.fields.get, {n: as_f32(f, n) for n in f.tensors if _HEAD_RE.match(n)}


def parts(path: str, parsed=None) -> Dict[str, Any]:
    """MedusaBitNet heads: h + W_out . SiLU(W_in . h) per layer, projection shared with the backbone.
    parsed: the file's backbones.i2s.gguf_file.GGUFFile when the caller already has it (a BitNet model with embedded heads)."""
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
    return dict(blocks=blocks, proj=[None] * len(blocks), hidden_size=H, source=path, format="medusabitnet-gguf")


def layout(heads) -> Tuple[Dict[str, int], List[Tuple[str, np.ndarray]]]:
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


def write(path: str, heads, arch: str = "medusa") -> None:
    """Writes heads in the MedusaBitNet GGUF layout (tests and tools)."""
    import gguf

    meta, tensors = layout(heads)
    w = gguf.GGUFWriter(path, arch)
    for key, value in meta.items():
        w.add_uint32(key, value)
    for name, arr in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
