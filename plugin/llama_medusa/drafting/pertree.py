"""A tree grown anew every step from the drafter's own calibrated probabilities, sized on the cost curve.

Shared by every drafter that can give a node's children with probabilities (EAGLE heads; token-conditioned Medusa
heads): the root's children come first; each further level expands the `beam` likeliest frontier nodes by path
probability in one batched call, while another level can still pay. The tree verified is the top-T nodes by path
probability (a top-T set of products of probabilities <= 1 is closed under ancestors), T maximising
    (1 + sum of their path probabilities) / (t(1 + T) + step overhead)
on the backbone's cost curve measured on this machine, T = 0 (a plain step) among the choices. Without a cost
curve (medusa_choices="per-step") every node up to max_nodes is kept.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .tree import Tree


class PerStepTree:
    wants_path_states = False
    n_heads: int  # deepest level the drafter can fill (set by the drafter)

    def __init__(self, beam: int = 4, top_k: int = 8, max_nodes: int = 16):
        self.beam, self.top_k, self.max_nodes = beam, top_k, max_nodes
        self.cost: Optional[Dict[int, float]] = None  # t(T) in seconds; None: keep every node (unpriced)
        self.overhead_s = 0.0  # the step's time besides the verify pass (sampling, bookkeeping)
        self.level_s = 0.0  # measured time of one tree level (running mean), what another level costs
        self._trees: Dict[Tuple, Tree] = {}

    def grow_from(self, root_probs: Callable, level: Callable, root: int, room: int, max_depth: int,
                  token_ids: Callable) -> Tuple[Tree, List[int], float]:
        """A tree of at most `room` nodes (the root included) and max_depth levels. root_probs() -> the root's
        children probabilities [vocabulary]; level(nodes, toks, parent, depth) -> the children probabilities of
        `nodes` [n, vocabulary], nodes being indices into toks/parent (parent -1 = the root); token_ids maps
        vocabulary rows to token ids. Returns (tree, node tokens, expected tokens)."""
        depth_cap = min(self.n_heads, max_depth)
        max_nodes = min(room - 1, self.max_nodes)
        if depth_cap < 1 or max_nodes < 1:
            return self._tree([], root)
        probs: List[float] = []  # path probability of each node
        toks: List[int] = []
        parent: List[int] = []

        def add(p_row: np.ndarray, par: int, base: float) -> List[int]:
            k = min(self.top_k, len(p_row))
            top = np.argpartition(-p_row, k - 1)[:k]
            new = list(range(len(probs), len(probs) + k))
            probs.extend((base * p_row[top]).tolist())
            toks.extend(int(t) for t in token_ids(top))
            parent.extend([par] * k)
            return new

        frontier = add(root_probs(), -1, 1.0)
        for d in range(2, depth_cap + 1):
            frontier = sorted(frontier, key=lambda i: -probs[i])[: self.beam]
            if not frontier or not self._worth(probs, sum(probs[i] for i in frontier), max_nodes):
                break
            t1 = time.perf_counter()
            pc = level(frontier, toks, parent, d)
            dt = time.perf_counter() - t1
            self.level_s = dt if self.level_s == 0 else 0.9 * self.level_s + 0.1 * dt
            frontier = [c for r, i in enumerate(frontier) for c in add(pc[r], i, probs[i])]
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        T = self._size([probs[i] for i in order], max_nodes)
        return self._tree(order[:T], root, probs, toks, parent)

    # ------------------------------------------------------------------ pricing on the cost curve
    def _t(self, T: int) -> float:
        from .autotree import interpolate

        return interpolate(self.cost, T)

    def _best(self, sorted_probs: List[float], max_nodes: int) -> Tuple[int, float, float]:
        """(T, expected tokens, tokens per second) of the best top-T tree, T = 0 included."""
        best = (0, 1.0, 1.0 / (self._t(1) + self.overhead_s))
        e = 1.0
        for T in range(1, min(len(sorted_probs), max_nodes) + 1):
            e += sorted_probs[T - 1]
            rate = e / (self._t(T + 1) + self.overhead_s)
            if rate > best[2]:
                best = (T, e, rate)
        return best

    def _worth(self, probs: List[float], gain_bound: float, max_nodes: int) -> bool:
        """Whether another level can still pay: at most gain_bound more expected tokens (the frontier's summed
        path probability), for one more level's time and a verify pass grown by up to `beam` nodes."""
        if self.cost is None:
            return True
        T, e, rate = self._best(sorted(probs, reverse=True), max_nodes)
        grown = min(T + self.beam, max_nodes)
        return (e + gain_bound) / (self._t(grown + 1) + self.overhead_s + self.level_s) > rate

    def _size(self, sorted_probs: List[float], max_nodes: int) -> int:
        if self.cost is None:
            return min(len(sorted_probs), max_nodes)
        return self._best(sorted_probs, max_nodes)[0]

    def _tree(self, chosen: List[int], root: int, probs=None, toks=None, parent=None):
        """Tree of the chosen node indices: ranks among siblings by probability; tokens in batch order."""
        if not chosen:
            return self._cached(()), [root], 1.0
        kids: Dict[int, List[int]] = {}
        for i in sorted(chosen, key=lambda i: -probs[i]):
            kids.setdefault(parent[i], []).append(i)
        path: Dict[int, Tuple[int, ...]] = {-1: ()}
        todo = [-1]
        while todo:
            a = todo.pop()
            for r, c in enumerate(kids.get(a, [])):
                path[c] = path[a] + (r,)
                todo.append(c)
        paths = tuple(sorted(path[i] for i in chosen))  # a chosen node without its parent would be missing here
        tree = self._cached(paths)
        tok_of = {path[i]: toks[i] for i in chosen}
        return tree, [root] + [tok_of[n.path] for n in tree.nodes[1:]], 1.0 + sum(probs[i] for i in chosen)

    def _cached(self, paths: Tuple) -> Tree:
        t = self._trees.get(paths)
        if t is None:
            if len(self._trees) > 4096:
                self._trees.clear()
            t = self._trees[paths] = Tree(list(paths))
        return t
