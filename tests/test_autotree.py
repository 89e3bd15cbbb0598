"""The hardware-aware tree choice: direction of its answers on known cost curves, and its accuracy model."""
import numpy as np

from llama_medusa import autotree


def test_rank_accuracy_from_cumulative():
    acc = autotree.rank_accuracy([[0.5, 0.7, 0.8], [0.2, 0.3, 0.3]])
    np.testing.assert_allclose(acc, [[0.5, 0.2, 0.1], [0.2, 0.1, 0.0]])


def test_grow_tree_is_prefix_closed_and_greedy():
    acc = autotree.prior_accuracy(3)
    nodes = autotree.grow_tree(acc, 20)
    paths = [p for p, _ in nodes]
    assert paths[0] == (0,)
    for i, p in enumerate(paths):
        assert len(p) == 1 or p[:-1] in paths[:i]  # parents first
    probs = [q for _, q in nodes]
    assert probs == sorted(probs, reverse=True)


def test_steep_cost_picks_small_tree_flat_cost_picks_big_tree():
    acc = autotree.prior_accuracy(4)
    flat = {T: 0.010 * (1 + 0.01 * (T - 1)) for T in range(1, 64)}  # GPU-like: 64 tokens ~1.6x one
    steep = {T: 0.010 * (1 + 0.9 * (T - 1)) for T in range(1, 64)}  # 2-core CPU, quantised weights
    big = autotree.choose(acc, flat, t_heads=0.0005)
    small = autotree.choose(acc, steep, t_heads=0.0005)
    assert len(big["choices"]) >= 8 and big["predicted_speedup"] > 1.5
    assert len(small["choices"]) < len(big["choices"]) and small["predicted_speedup"] < 1.1
    assert big["perfect_bound"] >= big["predicted_speedup"]


def test_no_winning_tree_means_plain_decoding():
    acc = autotree.prior_accuracy(3) * 0.1  # weak heads
    linear = {T: 0.01 * T for T in range(1, 64)}  # every token costs a full pass
    r = autotree.choose(acc, linear, t_heads=0.002)
    assert r["choices"] == [] and r["predicted_speedup"] == 1.0


def test_interpolation():
    cost = {1: 1.0, 4: 4.0, 8: 6.0}
    assert autotree.interpolate(cost, 2) == 2.0
    assert autotree.interpolate(cost, 6) == 5.0
    assert autotree.interpolate(cost, 16) == 12.0


def test_chain_branching_trees_for_token_conditioned_heads():
    acc = autotree.prior_accuracy(4)
    flat = {T: 0.010 * (1 + 0.01 * (T - 1)) for T in range(1, 64)}
    chain = autotree.choose(acc, flat, t_heads=0.0005, chain_branching=True)
    assert any(any(p[:-1]) for p, _ in autotree.grow_tree(acc, 62))  # Medusa's trees branch off the chain
    assert not any(any(p[:-1]) for p, _ in autotree.grow_tree(acc, 62, chain_branching=True))
    for p in chain["choices"]:  # here only all-top-1 paths have children
        assert not any(p[:-1]), p
    assert 4 < len(chain["choices"]) <= 4 * 10
    # exact for this family: 1 + sum of path products (rank r at depth d below a right top-1 chain)
    want = 1 + sum(np.prod([acc[i, 0] for i in range(len(p) - 1)]) * acc[len(p) - 1, p[-1]] for p in map(tuple, chain["choices"]))
    assert abs(chain["expected_tokens"] - want) < 1e-9
