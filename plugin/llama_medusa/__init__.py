"""llama-medusa: several tokens per backbone pass for llama.cpp models, through llama-cpp-python.

    from llama_medusa import Llama
    llm = Llama.from_default()                     # the embedded SmolLM2-135M-Instruct and its shipped heads
    llm = Llama(model_path="model.gguf", medusa_heads="heads.safetensors")
"""
try:  # llama_cpp before numpy: on some CUDA images the reverse order crashes at model load
    import llama_cpp  # noqa: F401
except ImportError:  # the kernels and heads formats work without it; Llama itself needs it
    pass

from .default_model import default_model_path
from .drafting.tree import Tree
from .heads import MedusaHeads
from .stats import MedusaStats

__version__ = "0.2.0"
__all__ = ["Llama", "MedusaHeads", "MedusaStats", "Tree", "default_model_path", "__version__"]


def __getattr__(name):
    if name == "Llama":  # imported on first use, so `llama_medusa._gpu` and friends load without llama_cpp
        from .llama import Llama

        return Llama
    raise AttributeError(f"module 'llama_medusa' has no attribute {name!r}")
