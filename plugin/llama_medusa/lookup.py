"""Context lookup: a branch grafted onto each step's tree from the text so far (prompt lookup decoding).

Small models repeat their prompt and themselves (names, code identifiers, list templates); the continuation of the
last n-gram's earlier occurrence is a cheap guess the heads do not make. It is found as llama-cpp-python's own
`LlamaPromptLookupDecoding.find_candidate_pred_tokens` finds it (n-grams of 3, 2, then 1 token, earliest occurrence
first; a test holds the two equal) in a few vectorised comparisons instead of its per-n sliding windows (which
cost 0.3 ms per step here, 2% of a SmolLM2 token), then walked down the heads' tree as far as its tokens match
nodes there, and the rest hung below the last match as a chain. The verify pass checks both in one backbone
call, so output is unchanged; only the speed and the tokens per pass move. On the bench and validation prompts
it lifts SmolLM2's tokens per pass by 0.2-0.6 (BENCHMARKS.md).

How many of its tokens a step adds is the `LookupGate`'s call when the backbone's cost curve is known ("auto"):
the j-th token is added while it raises expected tokens per second, its chance being the lookup's running hit
rate at depth j in this generation (seeded with a prior); without a cost curve every proposed token is added.
The gate also says whether the branch goes before or after the heads' children where it hangs (`first`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .autotree import interpolate

MAX_NGRAM = 3

# P(the first j looked-up tokens are all right), measured on SmolLM2-135M's answers to the bench and validation
# prompts (0.34-0.57 at j=1 depending on the prompt set): a starting point worth PRIOR_WEIGHT observations.
PRIOR_HITS = (0.45, 0.35, 0.3, 0.25, 0.22, 0.2, 0.2, 0.2)
PRIOR_WEIGHT = 4.0


def propose(tokens: np.ndarray, max_tokens: int) -> List[int]:
    """The continuation of the last n-gram's earlier occurrence in `tokens` (up to max_tokens), or []."""
    ids = np.asarray(tokens)
    n_ids = len(ids)
    if max_tokens <= 0 or n_ids < 2:
        return []
    for n in range(min(MAX_NGRAM, n_ids - 1), 0, -1):
        # start positions i < n_ids - n (the match must be followed by at least one token) where ids[i:i+n] is the
        # last n-gram
        hit = ids[: n_ids - n] == ids[n_ids - n]
        for j in range(1, n):
            hit &= ids[j : n_ids - n + j] == ids[n_ids - n + j]
        first = int(np.argmax(hit))
        if hit[first]:
            return [int(t) for t in ids[first + n : first + n + max_tokens]]
    return []


def graft_point(tree, node_tokens: Sequence[int], chain: Sequence[int]) -> Tuple[int, int]:
    """(node, matched): the deepest tree node reached by following `chain` from the root through nodes holding
    its tokens, and how many chain tokens that consumed."""
    node, j = 0, 0
    while j < len(chain):
        nxt = next((c for c in tree.nodes[node].children if node_tokens[c] == chain[j]), None)
        if nxt is None:
            break
        node, j = nxt, j + 1
    return node, j


class LookupGate:
    """How many new lookup nodes a step adds, from the verify cost curve and the lookup's running hit rates.

    Adding a node that is right with probability p to a batch of T tokens is worth it when
    (E + p) / (t(T+1) + f) > E / (t(T) + f), E being the step's expected tokens so far and f the step's time
    besides the verify pass (the heads and the decoder's own overhead)."""

    def __init__(self, max_tokens: int, cost: Optional[Dict[int, float]] = None, expected: float = 1.0,
                 fixed_s: float = 0.0, heads_top1: Sequence[float] = ()):
        self.max_tokens = max_tokens
        self.cost = cost
        self.expected = expected
        self.fixed_s = fixed_s
        self.heads_top1 = list(heads_top1)  # per depth: P(the heads' first child is right | its parent was)
        self.reset()

    def reset(self) -> None:
        """Forget the running hit rates (a new generation: another text, another rate)."""
        prior = [PRIOR_HITS[min(j, len(PRIOR_HITS) - 1)] for j in range(self.max_tokens)]
        self.hits = np.array(prior) * PRIOR_WEIGHT
        self.seen = np.full(self.max_tokens, PRIOR_WEIGHT)

    def rate(self, j: int) -> float:
        """Estimated P(the first j+1 looked-up tokens are right)."""
        return float(self.hits[j] / self.seen[j])

    def count(self, batch: int, matched: int, new: int) -> int:
        """How many of `new` chain nodes (looked-up tokens matched..matched+new-1) to add to a batch of `batch`
        tokens."""
        if self.cost is None:
            return new
        e, n = self.expected, 0
        for j in range(matched, matched + new):
            p = self.rate(j)
            t0 = interpolate(self.cost, batch + n) + self.fixed_s
            t1 = interpolate(self.cost, batch + n + 1) + self.fixed_s
            if (e + p) * t0 <= e * t1:
                break
            e, n = e + p, n + 1
        return n

    def first(self, matched: int, depth: int) -> bool:
        """Whether the branch should go before the heads' children of the node at `depth` it hangs from, where
        `matched` looked-up tokens already matched the tree: when its next token is likelier right than the heads'
        first child there. The branch placed first keeps its accepted tokens in the cache; placed after, they are
        decoded again next step (10% of the batch on a lookup-heavy answer, BENCHMARKS.md session 6)."""
        p_heads = self.heads_top1[depth] if depth < len(self.heads_top1) else 0.0
        p_look = self.rate(matched) / (self.rate(matched - 1) if matched else 1.0)
        return p_look > p_heads

    def observe(self, chain: Sequence[int], emitted: Sequence[int]) -> None:
        """Update the hit rates with what the backbone produced after the root (`emitted`): depth j counts where
        the output is known that far."""
        right = 0
        while right < min(len(chain), len(emitted)) and chain[right] == emitted[right]:
            right += 1
        known = min(len(chain), len(emitted), self.max_tokens)
        self.seen[:known] += 1
        self.hits[: min(right, known)] += 1
