"""Continuations retrieved from the model's own answers (REST, He et al. 2023, on the heads' training data).

A small model answers alike across requests: "Here's a simple example", "In summary, ...", the same code idioms.
`llama-medusa train` keeps the greedy answers it trained the heads on (tokens, in the heads file as `answers`);
this index maps every n-gram of them (n = 3..6) that occurs at least twice to its most frequent next token and
that token's share. A step's draft is the continuation of the longest n-gram that ends the context, extended token
by token while the shares stay high; lookup.py weighs it against the context's own repeats, and the verify pass
decides, so output is unchanged.

The index (n-gram hash -> next token, share) is built with numpy when a Llama loads the heads, half a second for
SmolLM2's 570k answer tokens, and queried through dicts (~20 us per drafted token).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

# n-gram lengths indexed; shorter ones predict too poorly to verify (docs/BENCHMARKS-HISTORY.md, commit 72a0e2d)
MIN_N, MAX_N = 3, 6
MIN_COUNT = 2  # an n-gram seen once says little about what follows it
KEEP_GOING = 0.5  # a continuation stops after a token whose share is below this
SEPARATOR = -1  # between answers in the stored token array

_MUL = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def _window_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of tokens[i:i+n] for every i (uint64, wrapping); the same function as _hash below."""
    h = np.zeros(len(tokens) - n + 1, dtype=np.uint64)
    mul = np.uint64(_MUL)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * mul + (tokens[j : len(tokens) - n + 1 + j].astype(np.uint64) + np.uint64(1))
    return h


def _hash(window: Sequence[int]) -> int:
    h = 0
    for t in window:
        h = (h * _MUL + int(t) + 1) & _MASK
    return h


def check(answers, n_vocab: Optional[int] = None, what: str = "answers") -> np.ndarray:
    """`answers` as an int32 array, or a ValueError that says what is wrong with it (`what` names it there).

    The one check of the format, for the heads file (load and model match) and for the index built from it.
    """
    a = np.asarray(answers)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D array of token ids ({SEPARATOR} between answers), "
                         f"got {a.dtype} of shape {a.shape}")
    if len(a) and a.min() < SEPARATOR:
        raise ValueError(f"{what} hold {int(a.min())}: token ids are >= 0, with {SEPARATOR} between answers")
    if len(a) and a.max() > np.iinfo(np.int32).max:  # stored as int32: a bigger id would wrap, not fail
        raise ValueError(f"{what} hold {int(a.max())}, which is no token id (they are stored as int32)")
    if len(a) and n_vocab is not None and a.max() >= n_vocab:
        raise ValueError(f"{what} hold token id {int(a.max())}, outside the model's vocabulary of {n_vocab} "
                         "tokens (were they written for another model?)")
    return a.astype(np.int32)


class AnswerIndex:
    """n-gram -> (most frequent next token, its share) over a set of answers."""

    def __init__(self, answers: np.ndarray, n_vocab: Optional[int] = None):
        a = check(answers, n_vocab).astype(np.int64)
        self.n_tokens = int(np.sum(a >= 0))
        # built with numpy, queried through dicts: a step asks up to 4 n-grams per drafted token, and a dict probe
        # costs a tenth of a numpy binary search's call
        self._lookup = {}
        for n in range(MIN_N, MAX_N + 1):
            keys, toks, shares = self._table(a, n)
            self._lookup[n] = dict(zip(keys.tolist(), zip(toks.tolist(), shares.tolist())))

    @staticmethod
    def _table(a: np.ndarray, n: int):
        if len(a) <= n:
            return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        keys = _window_hashes(a, n)[: len(a) - n]  # n-gram a[i:i+n], followed by a[i+n]
        nxt = a[n:]
        bad = nxt < 0
        for j in range(n):  # no n-gram across a separator
            bad |= a[j : len(a) - n + j] < 0
        keys, nxt = keys[~bad], nxt[~bad]
        if len(keys) == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        order = np.lexsort((nxt, keys))
        keys, nxt = keys[order], nxt[order]
        # runs of equal (key, next token), then per key the longest run (ties: the smallest token id)
        pair_start = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]) | (nxt[1:] != nxt[:-1])])
        pair_count = np.diff(np.r_[pair_start, len(keys)])
        pk, pt = keys[pair_start], nxt[pair_start]
        key_start = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
        total = np.add.reduceat(pair_count, key_start)
        key_id = np.repeat(np.arange(len(key_start)), np.diff(np.r_[key_start, len(pk)]))
        best = np.lexsort((np.arange(len(pk)), -pair_count, key_id))  # by key, then count desc, then first
        first_of_key = best[np.r_[True, key_id[best][1:] != key_id[best][:-1]]]
        keep = total >= MIN_COUNT
        return (pk[key_start][keep], pt[first_of_key][keep].astype(np.int32),
                (pair_count[first_of_key] / total)[keep].astype(np.float32))

    def next_token(self, context: Sequence[int]) -> Optional[Tuple[int, float, int]]:
        """(token, share, n) for the longest indexed n-gram ending `context`, or None."""
        for n in range(min(MAX_N, len(context)), MIN_N - 1, -1):
            hit = self._lookup[n].get(_hash(context[-n:]))
            if hit is not None:
                return hit[0], hit[1], n
        return None

    def continuation(self, context: Sequence[int], max_tokens: int) -> Tuple[List[int], float, int]:
        """Up to max_tokens retrieved tokens after `context`, the first one's share and the length of the n-gram
        that found it ([], 0.0, 0 when none)."""
        window = [int(t) for t in context[-MAX_N:]]
        out: List[int] = []
        first, first_n = 0.0, 0
        while len(out) < max_tokens:
            hit = self.next_token(window)
            if hit is None:
                break
            tok, share, n = hit
            if not out:
                first, first_n = share, n
            out.append(tok)
            window = window[1:] + [tok]
            if share < KEEP_GOING:
                break
        return out, first, first_n


def concatenate(answers: Sequence[Sequence[int]]) -> np.ndarray:
    """Answers as one int32 array with SEPARATOR between them (the heads file's `answers` tensor)."""
    parts = []
    for a in answers:
        parts.append(np.asarray(a, dtype=np.int32))
        parts.append(np.array([SEPARATOR], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)



def split(a: np.ndarray) -> List[np.ndarray]:
    """The inverse of concatenate: each text that a SEPARATOR ends, without it."""
    ends = np.flatnonzero(a == SEPARATOR)
    return [a[start:end] for start, end in zip(np.r_[0, ends[:-1] + 1], ends)]

_INDEXES = {}


def index_of(answers: np.ndarray, n_vocab: Optional[int] = None) -> AnswerIndex:
    """The index of an `answers` array, built once per content (every Llama loading the same heads shares it)."""
    import hashlib

    a = np.ascontiguousarray(answers)
    key = (hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest(), str(a.dtype), n_vocab)
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.clear()
        _INDEXES[key] = AnswerIndex(a, n_vocab)
    return _INDEXES[key]
