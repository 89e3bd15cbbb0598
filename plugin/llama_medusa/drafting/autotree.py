"""`medusa_choices="auto"`: the tree that maximises expected tokens per second on this machine.

Expected tokens per step of a tree = 1 + sum over its nodes of the product of acc[d][r] along the node's path
(Medusa's explore_graph model: head d's rank-r candidate is right with probability acc[d][r], independently).
Adding the best frontier node first keeps every size's tree optimal for that model (children never beat their
parents when acc falls with rank). Each size n is priced with the backbone's measured verify cost t(n+1) plus
the heads' measured time; the best size wins, and if none beats plain decoding (1 token per t(1)) by MIN_GAIN
the decoder decodes plainly. The verify cost curve is measured once per model, thread count and CPU and cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Rank hit rates used when heads carry no measured accuracy: FasterDecoding/Medusa's Vicuna-7B heads
# (assets/medusa_acc.csv top-1 and top-5, spread over ranks), a middle-of-the-road prior.
PRIOR_TOP1 = [0.56, 0.32, 0.20, 0.15, 0.12]
PRIOR_TOP5 = [0.78, 0.56, 0.42, 0.34, 0.30]

COST_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63)


def prior_accuracy(n_heads: int, top_k: int = 10) -> np.ndarray:
    acc = np.zeros((n_heads, top_k))
    for d in range(n_heads):
        t1, t5 = PRIOR_TOP1[min(d, 4)], PRIOR_TOP5[min(d, 4)]
        acc[d, 0] = t1
        acc[d, 1:5] = (t5 - t1) / 4
        acc[d, 5:] = (t5 - t1) / 16
    return acc


def rank_accuracy(cumulative: Sequence[Sequence[float]]) -> np.ndarray:
    """Cumulative top-1..k hit rates (as stored in heads files) -> per-rank hit rates acc[d][r]."""
    c = np.asarray(cumulative, dtype=np.float64)
    return np.diff(np.concatenate([np.zeros((c.shape[0], 1)), c], axis=1), axis=1).clip(min=0.0)


def grow_tree(acc: np.ndarray, max_nodes: int) -> List[Tuple[Tuple[int, ...], float]]:
    """Nodes in the order the greedy construction adds them, each with its path probability. For
    token-conditioned heads acc[d] is head d's accuracy given that the path before it was right, and every node
    is conditioned on its own path (HeadsDrafter.fill), so the products hold for any tree."""
    n_heads, top_k = acc.shape
    frontier = {(r,): acc[0, r] for r in range(top_k)}
    chosen: List[Tuple[Tuple[int, ...], float]] = []
    while frontier and len(chosen) < max_nodes:
        path = max(frontier, key=lambda p: (frontier[p], [-x for x in p]))
        prob = frontier.pop(path)
        chosen.append((path, prob))
        if len(path) < n_heads:
            for r in range(top_k):
                frontier[path + (r,)] = prob * acc[len(path), r]
    return chosen


def interpolate(cost: Dict[int, float], T: int) -> float:
    ks = sorted(cost)
    if T in cost:
        return cost[T]
    if T > ks[-1]:
        return cost[ks[-1]] * T / ks[-1]
    lo = max(k for k in ks if k < T)
    hi = min(k for k in ks if k > T)
    return cost[lo] + (cost[hi] - cost[lo]) * (T - lo) / (hi - lo)


class HeadsCost:
    """Seconds a drafter needs to fill a tree. Plain heads and propose-only drafters: one evaluation whatever the
    tree (`fixed`). Token-conditioned heads evaluate head d once per depth-d node that has children, a depth per
    engine call: per_call x depth + per_row x parents."""

    def __init__(self, fixed: float = 0.0, per_call: float = 0.0, per_row: float = 0.0):
        self.fixed, self.per_call, self.per_row = fixed, per_call, per_row

    def __call__(self, paths: Sequence[Sequence[int]]) -> float:
        if not paths:
            return 0.0
        depth = max(len(p) for p in paths)
        parents = len({tuple(p[:-1]) for p in paths})
        return self.fixed + self.per_call * depth + self.per_row * parents

    def as_dict(self) -> dict:
        return {"fixed_s": self.fixed, "per_call_s": self.per_call, "per_row_s": self.per_row}


# A tree must promise this much over plain decoding to be used: the cost curve moves by a few % between
# measurements on shared machines (docs/BENCHMARKS-HISTORY.md, commit 2857355).
MIN_GAIN = 1.05

# A speculative step's time besides the verify pass and the heads, fitted to the bench (chain-1, SmolLM2 Q4_1):
# priced into every tree, so a tree must beat it (docs/BENCHMARKS-HISTORY.md, commit 2758b91).
STEP_OVERHEAD_S = 0.8e-3

# What stock's own loop spends per token around llama_decode (sampling, detokenizing, its generator): the lookup's
# replay prices stock's tokens with it; `choose` leaves it out, which errs towards plain decoding
# (docs/BENCHMARKS-HISTORY.md, commit 8bd6d51).
STOCK_TOKEN_OVERHEAD_S = 0.35e-3


def choose(acc: np.ndarray, cost: Dict[int, float], t_heads, max_nodes: int = 62, min_gain: float = MIN_GAIN,
           step_overhead: float = STEP_OVERHEAD_S):
    """Best tree for this accuracy table and cost curve. t_heads: seconds of one heads evaluation, or a
    HeadsCost (heads_time).

    Returns dict: choices (list of paths; [] = plain decoding), predicted_speedup over plain decoding,
    expected_tokens, heads_s (the chosen tree's heads time), step_overhead_s, perfect_bound (speedup of perfect
    heads on this cost curve), and the whole size sweep. Plain decoding is priced at t(1) alone (stock's loop);
    every tree pays the heads and the decoder's per-step overhead too."""
    nodes = grow_tree(acc, max_nodes)
    heads_cost = t_heads if callable(t_heads) else HeadsCost(fixed=float(t_heads))
    t1 = cost[1]
    sweep = []
    expected = 1.0
    for n in range(0, len(nodes) + 1):
        if n:
            expected += nodes[n - 1][1]
        h = heads_cost([p for p, _ in nodes[:n]])
        step = interpolate(cost, n + 1) + (h + step_overhead if n else 0.0)
        sweep.append({"nodes": n, "expected_tokens": expected, "step_s": step, "heads_s": h,
                      "speedup": expected * t1 / step})
    best = max(sweep, key=lambda s: s["speedup"])
    n_heads = acc.shape[0]
    chain_cost = [heads_cost([(0,) * j for j in range(1, d + 1)]) + step_overhead if d else 0.0
                  for d in range(n_heads + 1)]
    perfect = max((d + 1) * t1 / (interpolate(cost, d + 1) + chain_cost[d]) for d in range(n_heads + 1))
    if best["speedup"] < min_gain:
        best = sweep[0]
    return {
        "choices": [list(p) for p, _ in nodes[: best["nodes"]]],
        "predicted_speedup": best["speedup"],
        "expected_tokens": best["expected_tokens"],
        "heads_s": best["heads_s"],
        "step_overhead_s": step_overhead,
        "perfect_bound": perfect,
        "sweep": sweep,
    }


def cpu_name() -> str:
    """This machine's CPU model (part of the cost cache key; printed by the bench)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


CACHE_TOLERANCE = 0.2  # a cached curve whose t(1) is further than this from a fresh one is measured again
SHAPE_TOLERANCE = 0.1  # ... or whose t(2)/t(1) is further than this from a fresh one's: the ratio is what `auto` and
# the lookup gate price
COST_PROTOCOL = 2  # part of the cache key: protocol 1 timed each size right after the one before it in
# 1..63 (t(1) after a 63-token batch, with embeddings on)


def cost_curve(llm, sizes: Sequence[int] = COST_SIZES, repeats: int = 7, use_cache: bool = True,
               validate: bool = True) -> Dict[int, float]:
    """Median seconds of one verify pass of T tokens on this backbone (Backbone.measure_verify), cached per model
    file, thread counts, GPU layers and CPU, and used only while a fresh t(1) and t(2) agree with it (validate=False:
    a cached curve is taken as it is)."""
    from ..default_model import cache_dir

    key = json.dumps([os.path.basename(llm.model_path), os.path.getsize(llm.model_path), llm.n_threads,
                      llm.n_threads_batch, llm.model_params.n_gpu_layers, cpu_name(), list(sizes), COST_PROTOCOL])
    path = os.path.join(cache_dir(), "cost", hashlib.sha1(key.encode()).hexdigest() + ".json")
    if use_cache and os.path.exists(path):
        with open(path) as f:
            cached = {int(k): v for k, v in json.load(f).items()}
        # The CPU's name does not tell these cloud machines apart (two "AMD EPYC" VMs here decoded a token in 10.4
        # and 15.3 ms; on two others t(1) was 14% apart, inside the tolerance, and F16 SmolLM2's t(2)/t(1) 1.40 on
        # one and 1.62 on the other): a quick t(1) and t(2) must agree with the file before the file is trusted.
        if not validate:
            return cached
        now = llm.backbone.measure_verify([1, 2], 6)
        if (abs(now[1] / cached[1] - 1.0) <= CACHE_TOLERANCE
                and abs((now[2] / now[1]) / (interpolate(cached, 2) / cached[1]) - 1.0) <= SHAPE_TOLERANCE):
            return cached
    out = llm.backbone.measure_verify(sizes, repeats)
    # A bigger batch never costs less: a slow outlier (another process, a page fault) at one size must not
    # make it look dearer than a larger one.
    for T in sorted(out, reverse=True)[1:]:
        out[T] = min(out[T], min(v for k, v in out.items() if k > T))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    return out


EVICT_BYTES = 96 << 20  # more than these machines' last-level cache (32 MiB here), read before each heads timing


def heads_time(drafter, n_embd: int, top_k: int, repeats: int = 5) -> HeadsCost:
    """The drafter's measured time model (HeadsCost): for token-conditioned heads from two trees (one call of one
    row; two calls of 1 + 8 rows), else the median time of one propose()."""
    from .tree import Tree

    h = np.random.default_rng(0).standard_normal(n_embd).astype(np.float32)
    # In a decode loop the backbone's pass streams its weights through the caches just before the heads run, so
    # the heads read theirs from memory: SmolLM2's heads took 0.25 ms warm and 0.6-0.8 ms inside a generation.
    # Reading a buffer larger than the last-level cache before each call reproduces that.
    evict = np.ones(EVICT_BYTES // 4, np.float32)

    def median_time(fn):
        times = []
        for i in range(repeats):  # a new root each time: token-conditioned heads pay their embedding rows uncached
            evict.sum()
            t0 = time.perf_counter()
            fn(np.array([i], np.int32))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    heads = getattr(drafter, "heads", None)
    if heads is None or not heads.conditioned:
        return HeadsCost(fixed=median_time(lambda root: drafter.propose(h, root, top_k)))
    one = Tree("chain-1")
    wide = Tree([(r,) for r in range(8)] + [(r, 0) for r in range(8)])
    k = max(top_k, 8)  # the wide tree uses ranks up to 7
    t_one = median_time(lambda root: drafter.fill(h, root, one, k))
    t_wide = median_time(lambda root: drafter.fill(h, root, wide, k))
    per_row = max((t_wide - 2 * t_one) / 7, 0.0)  # t_one = call + row, t_wide = 2 calls + 9 rows
    return HeadsCost(per_call=max(t_one - per_row, 0.0), per_row=per_row)


def accuracy_table(drafter, top_k: int) -> np.ndarray:
    """The drafter's per-rank hit rates: measured ones from its heads file, else the prior."""
    heads = getattr(drafter, "heads", None)
    if heads is None:
        return prior_accuracy(drafter.n_heads, top_k)
    return accuracy_table_of(heads, top_k)


def accuracy_table_of(heads, top_k: int) -> np.ndarray:
    """Per-rank hit rates of a MedusaHeads: the measured ones stored in its file, else the prior."""
    cum: Optional[list] = heads.meta.get("top_k_accuracy")
    if cum:
        acc = rank_accuracy(cum)
        if acc.shape[1] < top_k:
            acc = np.pad(acc, ((0, 0), (0, top_k - acc.shape[1])))
        return acc[: heads.n_heads, :top_k]
    return prior_accuracy(heads.n_heads, top_k)
