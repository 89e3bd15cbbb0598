"""What proposes candidate tokens for the tree. The decoder only needs `propose`; heads are the usual drafter."""
from __future__ import annotations

from typing import Dict, Protocol

import numpy as np


class Drafter(Protocol):
    n_heads: int  # deepest tree level it can fill

    def propose(self, hidden: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        """[n_heads, k] token ids, best first. hidden: final-norm state of the last accepted token; tokens: the
        context up to and including the tree's root."""
        ...


class HeadsDrafter:
    """Medusa heads evaluated by the native engine: head d proposes the token d+1 places after the root.

    Token-conditioned heads (``heads.cond``) also see the embeddings of the tokens between the hidden state and
    their target: the root (just sampled by the backbone, so known) and the top-1 drafts of the heads before them.
    They are evaluated one head at a time, the engine adding U . embedding(token) to each first block's
    pre-activation; the candidates of head d are those of the top-1 chain's prefix (auto's trees branch only
    there). `max_depth` (set by Llama to its tree's depth) skips heads the tree never reads."""

    def __init__(self, heads, engine, embedding=None):
        self.heads = heads
        self.engine = engine
        self.n_heads = heads.n_heads
        self.max_depth = heads.n_heads
        self.embedding = embedding
        self._rows: Dict[int, np.ndarray] = {}
        if heads.conditioned:
            if embedding is None:
                raise ValueError(f"Medusa heads {heads.source} are token-conditioned: they need the backbone's "
                                 "token embedding")
            if embedding.n_embd != heads.hidden_size:
                raise ValueError(f"the token embedding has width {embedding.n_embd}, the heads' hidden size is "
                                 f"{heads.hidden_size}")

    def propose(self, hidden: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        if not self.heads.conditioned:
            ids, _ = self.engine.topk(hidden.reshape(1, -1), k)
            return self.heads.token_ids(ids[0])
        return self.propose_rows(hidden.reshape(1, -1), np.asarray(tokens[-1:], dtype=np.int64), k)[0]

    def propose_rows(self, hidden: np.ndarray, roots: np.ndarray, k: int) -> np.ndarray:
        """[n, n_heads, k] candidates for n (hidden state, root token) pairs at once (training's accuracy pass).
        Heads beyond max_depth are not evaluated (their rows are 0)."""
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        n = len(hidden)
        if not self.heads.conditioned:
            ids, _ = self.engine.topk(hidden, k)
            return self.heads.token_ids(ids)
        depth = min(self.max_depth, self.n_heads)
        out = np.zeros((n, self.n_heads, k), dtype=np.int32)
        emb = np.empty((n, depth, self.heads.hidden_size), dtype=np.float32)
        emb[:, 0] = self._embed(roots)
        for d in range(depth):
            ids, _ = self.engine.topk(hidden, k, head=d, emb=emb[:, : d + 1])
            out[:, d] = self.heads.token_ids(ids[:, 0])
            if d + 1 < depth:
                emb[:, d + 1] = self._embed(out[:, d, 0])
        return out

    def _embed(self, toks: np.ndarray) -> np.ndarray:
        if len(toks) != 1:
            return self.embedding.rows(toks)
        t = int(toks[0])
        row = self._rows.get(t)
        if row is None:  # a decode step needs up to n_heads rows; common tokens come back often
            if len(self._rows) > 8192:
                self._rows.clear()
            row = self._rows[t] = self.embedding.rows(toks)[0]
        return row
