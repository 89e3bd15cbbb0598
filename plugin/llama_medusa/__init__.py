"""llama-medusa: Medusa speculative decoding for llama.cpp models through llama-cpp-python.

    from llama_medusa import Llama
    llm = Llama(model_path="model.gguf", medusa_heads="heads.safetensors")
"""
from .heads import MedusaHeads
from .llama import Llama
from .stats import MedusaStats
from .tree import Tree

__all__ = ["Llama", "MedusaHeads", "MedusaStats", "Tree"]
__version__ = "0.1.0"
