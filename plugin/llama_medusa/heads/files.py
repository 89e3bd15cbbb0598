"""Reading any supported heads file, told apart by its bytes (not its name): this project's safetensors
(own.py), FasterDecoding/Medusa's safetensors (fasterdecoding.py), MedusaBitNet heads in a GGUF (medusabitnet.py).
PyTorch pickles are refused with a one-line conversion command: a pickle can run arbitrary code."""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from . import fasterdecoding, medusabitnet, own

_PICKLE_HINT = (
    "{path} is a PyTorch pickle; llama-medusa never unpickles files (a pickle can run arbitrary code). Convert it "
    "once with PyTorch: python -c \"import torch; from safetensors.torch import save_file; "
    "save_file({{k: v.float().contiguous() for k, v in torch.load('{path}', map_location='cpu').items()}}, "
    "'medusa_lm_head.safetensors')\" and keep config.json beside it."
)


def read(path) -> Dict[str, Any]:
    """MedusaHeads fields of a heads file, or of the heads file in a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("medusa_lm_head.safetensors", "model.safetensors", "heads.safetensors"):
            if os.path.exists(os.path.join(path, name)):
                return read(os.path.join(path, name))
        pickles = [n for n in ("medusa_lm_head.pt", "pytorch_model.bin") if os.path.exists(os.path.join(path, n))]
        if pickles:
            raise ValueError(_PICKLE_HINT.format(path=os.path.join(path, pickles[0])))
        raise ValueError(f"{path}: no Medusa heads file in this directory (looked for medusa_lm_head.safetensors)")
    if not os.path.exists(path):
        raise ValueError(f"Medusa heads file does not exist: {path}")
    with open(path, "rb") as f:
        magic = f.read(9)
    if magic[:4] == b"GGUF":
        return medusabitnet.parts(path)
    # safetensors first: its first byte is the header length's low byte, which is 0x80 for a 128-byte header,
    # so testing for a pickle's 0x80 first would call such a file a pickle
    if len(magic) == 9 and magic[8:9] == b"{":
        return _load_safetensors(path)
    if magic[:4] == b"PK\x03\x04" or (magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise ValueError(_PICKLE_HINT.format(path=path))
    raise ValueError(f"{path}: not a safetensors or GGUF file (unrecognised header {magic[:8]!r})")


def _load_safetensors(path: str) -> Dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    except Exception as e:  # safetensors raises bare exceptions for some malformed headers
        raise ValueError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    draft_vocab = tensors.pop("draft_vocab", None)
    answers = tensors.pop("answers", None)
    reference = (tensors.pop("reference", None), tensors.pop("reference_prompt_tokens", None))
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    if own.FORMAT_KEY in meta:
        return own.parts(path, tensors, own.meta_of(path, meta[own.FORMAT_KEY]), draft_vocab, answers, reference)
    return fasterdecoding.parts(path, tensors)

