"""Heads shipped inside the package, found for a model by what the model is, not by its file name.

A model is recognised by its GGUF metadata: architecture, layer count, widths, head counts and a hash of its
vocabulary (the token strings). A copy in another weight type (`llama-medusa requantize`) or under another name
is the same model to its heads; a fine-tune keeps all of these and is recognised too (its heads then draft worse,
never wrongly: every draft is verified).
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")

# EAGLE draft heads, the default (`medusa_heads="auto"`); the token-conditioned heads ship beside them, loadable
# by path (and the plain heads the GPU module evaluates are their blocks)
SMOLLM2_EAGLE = os.path.join(DATA, "smollm2-135m-instruct.eagle.safetensors")
SMOLLM2_HEADS = os.path.join(DATA, "smollm2-135m-instruct.heads.safetensors")
# identity (see identity()) -> heads file
SHIPPED = {
    ("llama", 30, 576, 9, 3, 49152, "381c4c76a3b0ae34"): SMOLLM2_EAGLE,
}

KNOWN = "SmolLM2-135M-Instruct, in any weight type and under any file name"


def identity(model_path: str) -> tuple:
    """(architecture, layers, width, heads, KV heads, vocabulary size, vocabulary hash) from the GGUF's metadata."""
    from ..backbones.gguf_tensors import reader_of  # the parse is kept: the heads read the same file next

    f = reader_of(model_path).fields
    arch = f.get("general.architecture")

    def key(name):
        v = f.get(f"{arch}.{name}")
        return int(v) if v is not None else None

    tokens = f.get("tokenizer.ggml.tokens") or []
    vocab = hashlib.sha1("\x00".join(tokens).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return (arch, key("block_count"), key("embedding_length"), key("attention.head_count"),
            key("attention.head_count_kv"), len(tokens), vocab)


def shipped_heads_path(model_path: str) -> Optional[str]:
    """The heads file that ships for this model, or None."""
    try:
        name = SHIPPED.get(identity(os.fspath(model_path)))
    except (OSError, ValueError):
        return None  # unreadable here: loading the model says what is wrong with it
    return name if name and os.path.exists(name) else None


def shipped_heads_for(model_path: str, flag: str = "medusa_heads") -> str:
    """As shipped_heads_path, or a ValueError that says how to get heads."""
    path = shipped_heads_path(model_path)
    if path is None:
        raise ValueError(f"no heads ship with llama-medusa for {os.path.basename(os.fspath(model_path))}; pass {flag} "
                         f"a heads file: train some with `llama-medusa train --model {model_path} --out "
                         "heads.safetensors`, or use heads you have (FasterDecoding/Medusa, MedusaBitNet GGUF). "
                         f"The heads that ship are for {KNOWN}")
    return path

