"""Medusa heads: the model in memory (model.py), its file formats (files.py, own.py, fasterdecoding.py,
medusabitnet.py), the native evaluator they bind to (engine.py) and the heads that ship in the package
(shipped.py)."""
from .model import MedusaHeads

__all__ = ["MedusaHeads", "load_heads"]


def load_heads(path):
    """A heads file or checkpoint of either kind: EagleHeads where it is an EAGLE draft, else MedusaHeads."""
    from .eagle import EagleHeads, is_eagle

    return (EagleHeads if is_eagle(path) else MedusaHeads).load(path)
