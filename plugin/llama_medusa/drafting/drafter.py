"""What proposes candidate tokens for the tree. The decoder needs `propose` (the top-k of each head, which fills a
tree by rank) or `fill` (a token for every node of a given tree); heads are the usual drafter."""
from __future__ import annotations

from typing import List, Protocol

import numpy as np

from .calibration import softmax
from .pertree import PerStepTree


class Drafter(Protocol):
    n_heads: int  # deepest tree level it can fill

    def propose(self, hidden: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        """[n_heads, k] token ids, best first. hidden: final-norm state of the last accepted token; tokens: the
        context up to and including the tree's root."""
        ...


class HeadsDrafter(PerStepTree):
    """Medusa heads evaluated by the native engine: head d proposes the token d+1 places after the root.

    Token-conditioned heads (``heads.cond``) also see the embeddings of the tokens between the hidden state and
    their target: the root (just sampled by the backbone, so known) and the drafts before it. In a tree every node
    is conditioned on its own path (Hydra's sequential dependence): the children of the depth-d nodes come from
    head d evaluated once per such node, all of a depth in one engine call, the engine adding U . embedding(token)
    to each first block's pre-activation (`fill`, what the decoder calls). `propose` and `propose_rows`
    condition on the top-1 chain (training's accuracy pass) and evaluate heads up to `max_depth` only
    (set by Llama to its tree's depth; `fill` reads the tree's own depth)."""

    def __init__(self, heads, engine, embedding=None):
        PerStepTree.__init__(self)
        self.heads = heads
        self.engine = engine
        self.n_heads = heads.n_heads
        self.max_depth = heads.n_heads
        self.embedding = embedding
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

    def fill(self, hidden: np.ndarray, tokens: np.ndarray, tree, k: int) -> List[int]:
        """The token of every node of `tree` (root = tokens[-1]): plain heads fill it by rank from one top-k
        evaluation; token-conditioned heads give each parent's children from its own path."""
        root = int(tokens[-1])
        if not self.heads.conditioned:
            return tree.tokens(root, self.propose(hidden, tokens, k))
        out = [root] + [0] * (len(tree) - 1)
        h = hidden.reshape(1, -1)
        path_emb = {0: self._embed(np.array([root]))[None, :]}  # node -> embeddings of root..node
        for d in range(min(tree.depth, self.n_heads)):
            parents = [i for i in tree.levels[d] if tree.nodes[i].children]
            if not parents:
                break
            emb = np.stack([path_emb[i] for i in parents])
            ids, _ = self.engine.topk(np.repeat(h, len(parents), axis=0), k, head=d, emb=emb)
            ids = self.heads.token_ids(ids[:, 0])
            for row, i in enumerate(parents):
                for c in tree.nodes[i].children:
                    tok = int(ids[row, tree.nodes[c].path[-1]])
                    out[c] = tok
                    if tree.nodes[c].children:
                        path_emb[c] = np.concatenate([path_emb[i], self._embed(np.array([tok]))[None, :]])
        return out

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
        """Embedding rows of toks; one token gives its row alone."""
        rows = self.embedding.rows(toks)
        return rows[0] if len(toks) == 1 else rows

    # ------------------------------------------------------------------ the per-step tree
    @property
    def can_grow(self) -> bool:
        """Token-conditioned heads that share the backbone's projection (the kind that ships beside the EAGLE heads)
        give each node's children from its own path with probabilities, which a per-step tree needs."""
        return self.heads.conditioned and all(p is None for p in self.heads.proj)

    def probs(self, hidden: np.ndarray, emb: np.ndarray, head: int) -> np.ndarray:
        """Calibrated softmax over the draft vocabulary of head `head` for rows (hidden, path embeddings)."""
        states = self.engine.head_states(hidden, head=head, emb=emb)[:, 0]
        temps = self.heads.meta.get("temperature") or [1.0]
        return softmax(self.engine.project(0, np.ascontiguousarray(states)), float(temps[min(head, len(temps) - 1)]))

    def grow(self, hidden: np.ndarray, context: np.ndarray, room: int, max_depth: int):
        """This step's tree (pertree.PerStepTree): head d gives the children of each depth-d node from its own
        path's embeddings."""
        root = int(context[-1])
        h = np.ascontiguousarray(hidden, dtype=np.float32).reshape(1, -1)
        path_emb = {-1: self._embed(np.array([root]))[None, :]}

        def level(nodes, toks, parent, d):
            for i in nodes:
                path_emb[i] = np.concatenate([path_emb[parent[i]], self._embed(np.array([toks[i]]))[None, :]])
            return self.probs(np.repeat(h, len(nodes), axis=0), np.stack([path_emb[i] for i in nodes]), d - 1)

        return self.grow_from(lambda: self.probs(h, path_emb[-1][None], 0)[0], level, root, room, max_depth,
                              self.heads.token_ids)

