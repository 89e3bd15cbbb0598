"""What proposes candidate tokens for the tree. The decoder only needs `propose`; heads are the usual drafter."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Drafter(Protocol):
    n_heads: int  # deepest tree level it can fill

    def propose(self, hidden: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        """[n_heads, k] token ids, best first. hidden: final-norm state of the last accepted token; tokens: the
        context up to and including the tree's root."""
        ...


class HeadsDrafter:
    """Medusa heads evaluated by the native engine: head d proposes the token d+1 places after the root."""

    def __init__(self, heads, engine):
        self.heads = heads
        self.engine = engine
        self.n_heads = heads.n_heads

    def propose(self, hidden: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        ids, _ = self.engine.topk(hidden.reshape(1, -1), k)
        return self.heads.token_ids(ids[0])
