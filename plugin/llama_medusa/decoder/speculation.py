"""What one model speculates with: the drafter, the tree it verifies, the lookup gate and the batch limits."""
from __future__ import annotations

from typing import Optional

from ..drafting.lookup import LookupGate
from ..drafting.tree import Tree


class Speculation:
    def __init__(self, drafter, tree: Tree, top_k: int, typical=None, max_batch: int = 63,
                 lookup: Optional[LookupGate] = None, dynamic: bool = False):
        if max_batch < tree.depth + 1:
            raise ValueError(f"a verify batch of at most {max_batch} tokens (medusa_max_batch, n_batch) cannot hold "
                             f"even one path of the {tree.depth}-deep tree")
        self.max_batch = max_batch
        self.drafter = drafter
        self.tree = tree
        self.top_k = top_k
        self.typical = typical  # (posterior_threshold, posterior_alpha) or None
        self.lookup = lookup
        self.lookup_tokens = lookup.max_tokens if lookup is not None else 0
        # the drafter grows its own tree each step (drafting/pertree.py): `tree` is then the largest it may grow
        self.dynamic = dynamic
        self.path_states = bool(getattr(drafter, "wants_path_states", False))
        self.max_depth = max(tree.depth, self.lookup_tokens)  # deepest node a step can accept
        self.need_hidden = len(tree) > 1  # the heads read final-norm states; a lookup-only step needs none
        self._limited = {}
        fill = getattr(drafter, "fill", None)
        self.fill = fill if fill is not None else (
            lambda hidden, tokens, tree, k: tree.tokens(int(tokens[-1]), drafter.propose(hidden, tokens, k)))

    @property
    def plain(self) -> bool:
        """Nothing to draft: no heads tree and no lookup branch (`auto` found none that pays)."""
        return len(self.tree) == 1 and self.lookup is None

    @property
    def n_seq(self) -> int:
        """KV sequences a verify pass needs: one per leaf, and the lookup branch adds at most one leaf."""
        leaves = len(self.tree) - 1 if self.dynamic else self.tree.n_leaves  # a grown tree may be all leaves
        return max(1, leaves) + (self.lookup is not None)

    @property
    def batch_capacity(self) -> int:
        """Most tokens one verify pass holds: re-decoded tokens, the tree, a grafted lookup chain."""
        return len(self.tree) + self.lookup_tokens + self.max_depth + 1

    def tree_within(self, max_nodes: int, max_depth: int) -> Tree:
        """The tree cut to the first max_nodes nodes (depth-first, so still a tree) and max_depth levels."""
        if max_nodes >= len(self.tree) and max_depth >= self.tree.depth:
            return self.tree
        key = (min(max_nodes, len(self.tree)), min(max_depth, self.tree.depth))
        if key not in self._limited:
            keep = [n.path for i, n in enumerate(self.tree.nodes[1:], 1) if i < key[0] and n.depth <= key[1]]
            self._limited[key] = Tree(keep)
        return self._limited[key]


def plain(max_batch: int = 63) -> Speculation:
    """A one-node tree with no drafts: plain decoding through the decoder's loop."""
    return Speculation(None, Tree([]), 1, max_batch=max_batch)
