"""What runs the model: the Backbone interface (base.py) and its implementations, chosen by the model file.

- llamacpp.py: llama.cpp through llama-cpp-python (any GGUF llama.cpp loads);
- i2s/: the native engine for BitNet b1.58 GGUFs in bitnet.cpp's I2_S format, which llama.cpp cannot load;
- gguf_tensors.py: readers of a model's own tensors that heads use (output matrix, token embedding).
"""
from __future__ import annotations

import importlib

from .base import Backbone, Unsupported

# Tried in order: the first whose claims(model_path) returns a handle opens the model; llama.cpp takes the rest.
KINDS = ("llama_medusa.backbones.i2s.backbone:I2SBackbone", "llama_medusa.backbones.llamacpp:LlamaCppBackbone")

__all__ = ["Backbone", "Unsupported", "KINDS", "open_backbone"]


def _kind(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def open_backbone(llm, model_path, *args, **kwargs) -> Backbone:
    """The backbone that runs model_path, loaded and bound to llm (a llama_medusa.Llama)."""
    for spec in KINDS:
        kind = _kind(spec)
        handle = kind.claims(model_path)
        if handle is not None:
            return kind(llm, model_path, handle, *args, **kwargs)
    raise ValueError(f"no backbone runs {model_path}")  # unreachable while llama.cpp is the fallback
