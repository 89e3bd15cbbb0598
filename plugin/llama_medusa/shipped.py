"""Heads shipped inside the package, for the embedded default model."""
from __future__ import annotations

import os

from .models import DEFAULT_GGUF

DATA = os.path.join(os.path.dirname(__file__), "data")
SHIPPED = {DEFAULT_GGUF: "smollm2-135m-instruct.heads.safetensors"}


def default_heads_path(model_path: str, flag: str = "--heads") -> str:
    name = SHIPPED.get(os.path.basename(model_path))
    if name is None or not os.path.exists(os.path.join(DATA, name)):
        raise ValueError(
            f"no heads ship with llama-medusa for {os.path.basename(model_path)}; pass {flag} (train some with "
            "`llama-medusa train --model MODEL --out heads.safetensors`)"
        )
    return os.path.join(DATA, name)
