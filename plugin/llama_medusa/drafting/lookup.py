"""Lookup: a branch grafted onto each step's tree from text already seen (prompt lookup decoding and REST).

Two sources propose a chain of tokens: the continuation of the last n-gram's earlier occurrence in the context (as
llama-cpp-python's `LlamaPromptLookupDecoding` finds it, longest n-gram first, here up to 6 tokens, since the
match length says how likely the continuation is), and the model's own earlier answers (answers.py). The chain is
walked down the heads' tree as far as its tokens match, and the rest hung below the last match.

`LookupGate` decides per step, on the backbone's cost curve: which source, how many tokens (as many as maximise
expected tokens per second, each token's chance its bucket's running hit rate), and whether the branch goes before
or after the heads' children where it hangs. Whether the lookup alone is worth running at all is decided once, at
load, by replaying the gate over the heads file's reference texts (`LookupGate.replay`, docs/DESIGN.md).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .answers import MAX_N as ANSWERS_MAX_N
from .autotree import interpolate

MAX_NGRAM = 3  # llama-cpp-python's prompt-lookup default (what `find` reproduces by default)
CONTEXT_NGRAM = 6  # what the decoder searches for

# Buckets: a context match of n tokens is bucket n - 1 (n = 1..6); an answers continuation is bucket 6..13 by the
# share of its first token (< 0.5, 0.5-0.7, 0.7-0.9, >= 0.9), found by a 3..5-token n-gram or by a 6-token one
# (at a share of 0.7-0.9: 38-63% right against 78%).
SHARE_EDGES = (0.5, 0.7, 0.9)
N_BUCKETS = CONTEXT_NGRAM + 2 * (len(SHARE_EDGES) + 1)

# P(the first j+1 drafted tokens are all right) per bucket, SmolLM2-135M-Instruct's held-out greedy answers: a
# starting point worth PRIOR_WEIGHT observations (docs/BENCHMARKS-HISTORY.md, commit 72a0e2d).
PRIOR_HITS = (
    (0.14, 0.06, 0.04, 0.03, 0.02, 0.02, 0.01, 0.01),  # context, 1-token match
    (0.48, 0.29, 0.20, 0.15, 0.12, 0.09, 0.08, 0.07),
    (0.61, 0.41, 0.31, 0.25, 0.20, 0.16, 0.14, 0.13),
    (0.69, 0.52, 0.41, 0.34, 0.27, 0.23, 0.22, 0.19),
    (0.77, 0.61, 0.50, 0.40, 0.35, 0.32, 0.29, 0.26),
    (0.89, 0.80, 0.74, 0.69, 0.64, 0.60, 0.57, 0.54),  # context, 6-token match
    (0.19, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # answers, 3..5-token n-gram, first share < 0.5
    (0.32, 0.11, 0.06, 0.03, 0.02, 0.01, 0.01, 0.00),
    (0.49, 0.22, 0.11, 0.06, 0.03, 0.02, 0.01, 0.01),
    (0.70, 0.35, 0.16, 0.09, 0.06, 0.04, 0.03, 0.02),  # answers, 3..5-token n-gram, first share >= 0.9
    (0.21, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # answers, 6-token n-gram, first share < 0.5
    (0.37, 0.21, 0.13, 0.08, 0.06, 0.05, 0.04, 0.04),
    (0.68, 0.53, 0.34, 0.22, 0.15, 0.12, 0.11, 0.09),
    (0.89, 0.66, 0.52, 0.44, 0.38, 0.33, 0.29, 0.26),  # answers, 6-token n-gram, first share >= 0.9
)
PRIOR_WEIGHT = 8.0

# A branch must raise the step's expected tokens per second by this factor: below it the estimate is within the
# noise of the hit rates and the cost curve (a 1-token context match in a repetitive text sits at break-even).
MIN_GAIN = 1.02

# With no heads tree, the lookup alone must promise this much over stock's loop on the reference texts
# (LookupGate.replay) or `auto` decodes plainly: the replay reads up to 10% above what the loop then measures
# (docs/BENCHMARKS-HISTORY.md, commit 8bd6d51).
REPLAY_MIN_GAIN = 1.08


def context_bucket(n: int) -> int:
    return min(max(n, 1), CONTEXT_NGRAM) - 1


def answers_bucket(share: float, n: int) -> int:
    long = n >= ANSWERS_MAX_N
    return CONTEXT_NGRAM + long * (len(SHARE_EDGES) + 1) + int(np.searchsorted(SHARE_EDGES, share, side="right"))


def find(tokens: np.ndarray, max_tokens: int, max_ngram: int = MAX_NGRAM) -> Tuple[List[int], int]:
    """(continuation, n): the continuation of the last n-gram's earlier occurrence in `tokens` (up to max_tokens)
    and the length n of the n-gram matched ([], 0 when none).

    Every earlier occurrence of the last token is a candidate end of a match; each is extended backwards while
    the tokens agree (up to max_ngram), and the earliest of the longest wins: the same answer as trying
    n = max_ngram..1 over the whole context, in one comparison over the context and a few over the candidates."""
    ids = np.asarray(tokens)
    n_ids = len(ids)
    if max_tokens <= 0 or n_ids < 2 or max_ngram < 1:
        return [], 0
    ends = np.flatnonzero(ids[: n_ids - 1] == ids[n_ids - 1])  # the match must be followed by a token
    if len(ends) == 0:
        return [], 0
    k = np.arange(min(max_ngram, n_ids - 1))
    back = ends[:, None] - k  # candidate c's token k places before its end
    same = (back >= 0) & (ids[np.maximum(back, 0)] == ids[n_ids - 1 - k])
    length = np.cumprod(same, axis=1).sum(axis=1)  # agreeing tokens counted back from the end
    n = int(length.max())
    end = int(ends[np.argmax(length == n)])
    return [int(t) for t in ids[end + 1 : end + 1 + max_tokens]], n


def agreeing(drafted: Sequence[int], actual: Sequence[int]) -> int:
    """How many leading tokens of `drafted` equal `actual`'s (the drafted tokens a verify pass would accept)."""
    k = 0
    while k < min(len(drafted), len(actual)) and drafted[k] == actual[k]:
        k += 1
    return k


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
    """Which lookup chain a step verifies and how many of its tokens, from the verify cost curve and the sources'
    running hit rates.

    With E the step's expected tokens before the branch, T its batch and f its time besides the verify pass (the
    heads and the decoder's own overhead), the branch's first n tokens are worth (E + sum of their chances) /
    (t(T + n) + f); the gate takes the n that maximises it (the first token past a single one costs most on these
    CPUs, the next ones little, so a greedy one-at-a-time rule would stop too early)."""

    def __init__(self, max_tokens: int, cost: Optional[Dict[int, float]] = None, expected: float = 1.0,
                 fixed_s: float = 0.0, heads_top1: Sequence[float] = (), answers=None):
        self.max_tokens = max_tokens
        self.cost = cost
        self.expected = expected
        self.fixed_s = fixed_s
        self.heads_top1 = list(heads_top1)  # per depth: P(the heads' first child is right | its parent was)
        self.answers = answers  # an answers.AnswerIndex, or None
        self._times: List[float] = []
        self.reset()

    def reset(self) -> None:
        """Forget the running hit rates (a new generation: another text, another rate)."""
        prior = np.array([[row[min(j, len(row) - 1)] for j in range(self.max_tokens)] for row in PRIOR_HITS])
        self.hits = prior * PRIOR_WEIGHT
        self.seen = np.full(prior.shape, PRIOR_WEIGHT)

    def rate(self, j: int, bucket: int) -> float:
        """Estimated P(the first j+1 tokens of a chain from `bucket` are right)."""
        return float(self.hits[bucket, j] / self.seen[bucket, j])

    def sources(self, context: np.ndarray) -> List[Tuple[List[int], int]]:
        """The (chain, bucket) each source proposes after `context`: the context's own repeat, then the stored
        answers' continuation, asked only below a 6-token context match (there the context is right 89% of the
        time, docs/BENCHMARKS-HISTORY.md, commit 72a0e2d)."""
        out = []
        chain, n = find(context, self.max_tokens, CONTEXT_NGRAM)
        if chain:
            out.append((chain, context_bucket(n)))
        if self.answers is not None and n < CONTEXT_NGRAM:
            cont, share, m = self.answers.continuation(context, self.max_tokens)
            if cont:
                out.append((cont, answers_bucket(share, m)))
        return out

    def draft(self, context: np.ndarray, batch: int = 1) -> Tuple[List[int], int]:
        """(chain, bucket): the context's or the answers' continuation, whichever is worth more ([], -1: none)."""
        found = self.sources(context)
        if not found:
            return [], -1
        return max(found, key=lambda cb: self._best(batch, 0, len(cb[0]), cb[1])[1])

    def count(self, batch: int, matched: int, new: int, bucket: int) -> int:
        """How many of `new` chain nodes (chain tokens matched..matched+new-1) to add to a batch of `batch` tokens:
        none unless they beat the step without them by MIN_GAIN."""
        return self._best(batch, matched, new, bucket)[0]

    def _best(self, batch: int, matched: int, new: int, bucket: int) -> Tuple[int, float]:
        """(count, the step's expected tokens per second with it; without a cost curve: expected tokens)."""
        hits, seen = self.hits[bucket], self.seen[bucket]
        e = self.expected
        if self.cost is None:
            return new, e + float(np.sum(hits[matched : matched + new] / seen[matched : matched + new]))
        t = self._step_times(batch + new)
        best_n, best = 0, e / t[batch] * MIN_GAIN
        for k in range(new):
            e += hits[matched + k] / seen[matched + k]
            v = e / t[batch + k + 1]
            if v > best:
                best_n, best = k + 1, v
        return best_n, (best if best_n else best / MIN_GAIN)

    def _step_times(self, up_to: int) -> List[float]:
        """t(T) + fixed time for T = 0..up_to (index T), extended on demand."""
        t = self._times
        while len(t) <= up_to:
            t.append(interpolate(self.cost, max(len(t), 1)) + self.fixed_s)
        return t

    def first(self, matched: int, depth: int, bucket: int) -> bool:
        """Whether the branch should go before the heads' children of the node at `depth` it hangs from, where
        `matched` chain tokens already matched the tree: when its next token is likelier right than the heads'
        first child there. The branch placed first keeps its accepted tokens in the cache; placed after, they are
        decoded again next step (10% of the batch on a lookup-heavy answer, docs/BENCHMARKS-HISTORY.md, commit 2758b91)."""
        p_heads = self.heads_top1[depth] if depth < len(self.heads_top1) else 0.0
        p_look = self.rate(matched, bucket) / (self.rate(matched - 1, bucket) if matched else 1.0)
        return p_look > p_heads

    def _against_stock(self, what: str, stock_token_s: float) -> Tuple[List[float], float]:
        """(the decoder's step time per batch size, stock's time per token) for replaying texts on the curve."""
        if self.cost is None:
            raise ValueError(f"{what} needs a cost curve: an unpriced gate adds every proposed token")
        t = self._step_times(self.max_tokens + 1)
        return t, t[1] - self.fixed_s + stock_token_s

    def replay(self, texts: Sequence[Tuple[np.ndarray, int]], stock_token_s: float = 0.0) -> List[float]:
        """Per reference text (prompt + greedy answer, prompt length): the speedup over stock's loop that this
        gate's choices would give while decoding the answer, priced on its cost curve. A step verifies the branch
        the gate adds and keeps its right tokens plus one, as a decode would, and costs t(T) plus the gate's fixed
        time; a token of stock's loop costs t(1) plus `stock_token_s` (its own time around the decode). The answer
        stands in for the backbone, so no model runs. Hit rates are reset before each text and after the last."""
        t, stock = self._against_stock("replay", stock_token_s)
        out = []
        for tokens, n_prompt in texts:
            ids = np.asarray(tokens)
            self.reset()
            pos, produced, spent = n_prompt, 0, 0.0  # pos: the position of the last token, already sampled
            while pos < len(ids) - 1:
                chain, bucket = self.draft(ids[: pos + 1])
                n = self.count(1, 0, len(chain), bucket) if chain else 0
                truth = ids[pos + 1 : pos + 1 + n + 1]
                right = agreeing(chain[:n], truth)
                emitted = [int(x) for x in truth[: right + 1]]
                if chain:
                    self.observe(chain, emitted, bucket)
                spent += t[1 + n]
                produced += len(emitted)
                pos += len(emitted)
            if produced:
                out.append(produced * stock / spent)
        self.reset()
        return out

    def oracle(self, texts: Sequence[Tuple[np.ndarray, int]], stock_token_s: float = 0.0) -> List[float]:
        """Per text, as `replay` but the most any gate could reach with these drafts on this cost curve: the
        cheapest way through the answer when every step may verify any prefix of any source's chain, knowing which
        tokens are right. The sources' chains at a position depend only on the text before it, whatever steps led
        there, so a shortest path over positions finds it exactly. The bench prints it beside the replay: a
        shortfall there is the drafts', not the gate's."""
        t, stock = self._against_stock("oracle", stock_token_s)
        out = []
        for tokens, n_prompt in texts:
            ids = np.asarray(tokens)
            end = len(ids) - 1  # the last position; n_prompt holds the first answer token, sampled by the prompt
            if end <= n_prompt:
                continue
            best = np.full(end + 1, np.inf)  # least time to have sampled every token up to each position
            best[n_prompt] = 0.0
            for pos in range(n_prompt, end):
                best[pos + 1] = min(best[pos + 1], best[pos] + t[1])  # a plain step
                for chain, _ in self.sources(ids[: pos + 1]):
                    right = agreeing(chain, ids[pos + 1 : pos + 1 + len(chain)])
                    for n in range(1, len(chain) + 1):  # verify n drafted tokens: the right ones and one more
                        q = min(pos + min(n, right) + 1, end)
                        best[q] = min(best[q], best[pos] + t[1 + n])
            out.append(float((end - n_prompt) * stock / best[end]))
        return out

    def observe(self, chain: Sequence[int], emitted: Sequence[int], bucket: int) -> None:
        """Update the bucket's hit rates with what the backbone produced after the root (`emitted`): depth j counts
        where the output is known that far."""
        right = agreeing(chain, emitted)
        known = min(len(chain), len(emitted), self.max_tokens)
        self.seen[bucket, :known] += 1
        self.hits[bucket, : min(right, known)] += 1
