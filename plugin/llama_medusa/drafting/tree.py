"""Candidate trees: Medusa's `medusa_choices` turned into a batch layout for one llama_decode.

A choice is a path of ranks: (0, 1) is "head 0's best token, then head 1's second best". Node 0 is the root (the
token the backbone just sampled); a node at depth d holds head d-1's candidate of the rank its path ends with, so
the whole tree is a sub-selection of the Cartesian product of the heads' top-k lists (Medusa's tree_indices).

Batch order is depth-first with children by rank, so the all-top-1 chain comes first in the batch: when it is the
accepted path its KV cells follow the committed prefix with no hole in between, which keeps llama.cpp's flash
attention summing cells in position order (bit-exact against stock, see the decoder).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from typing import Dict, List, Optional, Sequence, Tuple, Union

# Medusa's published 63-node tree for Vicuna-7B (FasterDecoding/Medusa medusa/model/medusa_choices.py).
MC_SIM_7B_63 = [
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0), (0, 5),
    (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,),
    (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1),
    (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4), (7, 0),
    (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0),
    (0, 0, 0, 1), (1, 6), (0, 7, 0),
]

# A small tree for machines where every extra token in a verify batch costs nearly a full token (the 2-core CPUs
# with quantised weights): 7 candidates, most of the expected acceptance of the 63-node tree's first levels.
SMALL_8 = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (2,)]


def chain(n: int) -> List[Tuple[int, ...]]:
    """The plain top-1 chain of n drafted tokens (one per head)."""
    return [tuple([0] * d) for d in range(1, n + 1)]


PRESETS: Dict[str, List[Tuple[int, ...]]] = {
    "mc_sim_7b_63": MC_SIM_7B_63,
    "small": SMALL_8,
}

Choices = Union[str, Sequence[Sequence[int]]]

# Ranks given to the nodes of a grafted context-lookup branch (Tree.grafted): GRAFT_RANK is above every head rank,
# so the branch sorts after the heads' candidates of its parent; GRAFT_FIRST sorts before them.
GRAFT_RANK = 1 << 20
GRAFT_FIRST = GRAFT_RANK + 1


def resolve_choices(choices: Choices) -> List[Tuple[int, ...]]:
    """Preset name, "chain-N", or an explicit list of rank paths -> validated list of tuples."""
    if isinstance(choices, str):
        if choices.startswith("chain-") and choices[6:].isdigit():
            return chain(int(choices[6:]))
        if choices not in PRESETS:
            raise ValueError(f"unknown medusa_choices preset {choices!r}; use 'auto', one of {sorted(PRESETS)}, "
                             "'chain-N' or a list of paths")
        return list(PRESETS[choices])
    if not isinstance(choices, Sequence):
        raise ValueError(f"medusa_choices must be 'auto', a preset name, 'chain-N' or a list of rank paths, "
                         f"got {choices!r}")
    out = []
    for c in choices:
        # ranks must be integers as given: int() would truncate 0.5 or parse "1" into a tree the user did not ask for
        if (not isinstance(c, Sequence) or isinstance(c, str) or not c
                or not all(isinstance(r, Integral) and not isinstance(r, bool) for r in c) or min(c) < 0):
            raise ValueError(f"medusa_choices path {c!r} must be a non-empty list of integer ranks >= 0")
        out.append(tuple(int(r) for r in c))
    return out


@dataclass
class Node:
    path: Tuple[int, ...]
    parent: int  # batch index of the parent, -1 for the root
    depth: int
    children: List[int] = field(default_factory=list)  # batch indices, by rank
    seqs: List[int] = field(default_factory=list)  # ids of the leaves below (the llama.cpp sequences it joins)


class Tree:
    """A validated tree in depth-first batch order. Pure structure: tokens are filled per step."""

    def __init__(self, choices: Choices, n_heads: Optional[int] = None, top_k: Optional[int] = None):
        paths = sorted(set(resolve_choices(choices)))
        known = set(paths) | {()}
        for p in paths:
            if p[:-1] not in known:
                raise ValueError(f"medusa_choices path {list(p)} has no parent path {list(p[:-1])} in the tree")
            if n_heads is not None and len(p) > n_heads:
                raise ValueError(f"medusa_choices path {list(p)} is {len(p)} deep but only {n_heads} heads are loaded")
            if top_k is not None and max(p) >= top_k:
                raise ValueError(f"medusa_choices path {list(p)} uses rank {max(p)} but medusa_top_k is {top_k}")
        kids: Dict[Tuple[int, ...], List[Tuple[int, ...]]] = {}
        for p in paths:
            kids.setdefault(p[:-1], []).append(p)
        self.nodes: List[Node] = []

        def visit(path: Tuple[int, ...], parent: int) -> int:
            idx = len(self.nodes)
            self.nodes.append(Node(path=path, parent=parent, depth=len(path)))
            for child in sorted(kids.get(path, []), key=lambda q: -1 if q[-1] == GRAFT_FIRST else q[-1]):
                self.nodes[idx].children.append(visit(child, idx))
            return idx

        visit((), -1)
        leaves = [i for i, n in enumerate(self.nodes) if not n.children]
        for sid, leaf in enumerate(leaves):
            i = leaf
            while i >= 0:
                self.nodes[i].seqs.append(sid)
                i = self.nodes[i].parent
        self.n_leaves = len(leaves)
        self.depth = max(n.depth for n in self.nodes)
        self.top_k = 1 + max((max(n.path) for n in self.nodes if n.path), default=-1)
        self.choices = [n.path for n in self.nodes[1:]]
        self.levels = [[i for i, n in enumerate(self.nodes) if n.depth == d] for d in range(self.depth + 1)]
        self._grafts: Dict[Tuple[int, int, bool], Tuple["Tree", List[int], List[int]]] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    def tokens(self, root: int, cand: Sequence[Sequence[int]]) -> List[int]:
        """Token of every node: the root, then cand[depth - 1][rank] (cand[d] = head d's top-k ids)."""
        return [root] + [int(cand[n.depth - 1][n.path[-1]]) for n in self.nodes[1:]]

    def grafted(self, attach: int, n: int, first: bool = False) -> Tuple["Tree", List[int], List[int]]:
        """This tree plus a chain of n new nodes below node `attach` (a context-lookup branch; a step's trees take
        a few shapes, so they are cached): (tree, batch index of each of this tree's nodes in it, batch indices of
        the chain's nodes, top down). The chain comes after `attach`'s other children in batch order, or right
        after `attach` itself with `first` (accepted nodes that directly follow the root in the batch stay in the
        cache; the others are decoded again next step)."""
        key = (attach, n, first)
        if key not in self._grafts:
            base = self.nodes[attach].path
            rank = GRAFT_FIRST if first else GRAFT_RANK
            chain_paths = [base + (rank,) * j for j in range(1, n + 1)]
            t = Tree(self.choices + chain_paths)
            where = {node.path: i for i, node in enumerate(t.nodes)}
            self._grafts[key] = (t, [where[node.path] for node in self.nodes], [where[p] for p in chain_paths])
        return self._grafts[key]

    def truncated(self, max_depth: int) -> "Tree":
        """The same tree without nodes deeper than max_depth (used near the end of the context window)."""
        return Tree([p for p in self.choices if len(p) <= max_depth]) if max_depth > 0 else Tree([])

    def __repr__(self) -> str:
        return f"Tree(nodes={len(self)}, depth={self.depth}, leaves={self.n_leaves})"
