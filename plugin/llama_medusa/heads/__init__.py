"""Medusa heads: the model in memory (model.py), its file formats (files.py, own.py, fasterdecoding.py,
medusabitnet.py), the native evaluator they bind to (engine.py) and the heads that ship in the package
(shipped.py)."""
from .model import MedusaHeads

__all__ = ["MedusaHeads"]
