import pytest

from llama_medusa.drafting.tree import MC_SIM_7B_63, Tree


def test_mc_sim_tree_layout():
    t = Tree("mc_sim_7b_63")
    assert len(t) == 64 and t.depth == 4 and t.top_k == 10 and t.n_leaves == 42
    # depth-first, children by rank: the all-top-1 chain is first in the batch
    assert [n.path for n in t.nodes[:5]] == [(), (0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)]
    for i, n in enumerate(t.nodes[1:], 1):
        assert n.parent < i and t.nodes[n.parent].path == n.path[:-1]
        # a node's sequences are the leaves below it, so each leaf's sequence holds exactly its ancestors
        assert set(n.seqs) <= set(t.nodes[n.parent].seqs)
    assert sorted(t.nodes[0].seqs) == list(range(42))
    assert sorted(t.choices) == sorted(MC_SIM_7B_63)


def test_tokens_come_from_head_ranks():
    t = Tree([(0,), (1,), (0, 0), (0, 2)])
    cand = [[10, 11, 12], [20, 21, 22]]
    assert t.tokens(5, cand) == [5, 10, 20, 22, 11]


def test_chain_and_errors():
    assert len(Tree("chain-3")) == 4 and Tree("chain-3").n_leaves == 1
    with pytest.raises(ValueError, match="no parent"):
        Tree([(0, 0)])
    with pytest.raises(ValueError, match="unknown medusa_choices"):
        Tree("bogus")
    with pytest.raises(ValueError, match="only 2 heads"):
        Tree("chain-3", n_heads=2)
    with pytest.raises(ValueError, match="medusa_top_k is 5"):
        Tree("mc_sim_7b_63", top_k=5)
    with pytest.raises(ValueError, match="ranks >= 0"):
        Tree([(-1,)])


@pytest.mark.parametrize("bad, message", [
    (42, "must be 'auto', a preset name, 'chain-N' or a list of rank paths, got 42"),
    (None, "must be 'auto', a preset name, 'chain-N' or a list of rank paths, got None"),
    ([0, 1], "path 0 must be a non-empty list of integer ranks"),
    (["01"], "path '01' must be a non-empty list of integer ranks"),
    ([(0,), (0.5,)], r"path \(0.5,\) must be a non-empty list of integer ranks"),
    ([(True,)], "must be a non-empty list of integer ranks"),
    ([()], "must be a non-empty list of integer ranks"),
])
def test_malformed_choices_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Tree(bad)


def test_numpy_ranks_and_duplicate_paths_are_one_tree():
    import numpy as np

    t = Tree([(np.int64(0),), [0], (np.int32(0), 1), (0, 1)])
    assert t.choices == [(0,), (0, 1)] and all(type(r) is int for p in t.choices for r in p)


def test_grafted_lookup_branch():
    """A lookup chain hung below a node: it sorts after the heads' candidates there (the top-1 chain stays first
    in the batch), keeps the tree prefix-closed, adds one leaf, and maps every old node to its new row."""
    from llama_medusa.drafting import lookup

    t = Tree([(0,), (1,), (0, 0), (0, 1)])
    toks = t.tokens(5, [[10, 11], [20, 21]])  # root 5; 10 -> (20, 21); 11
    at, matched = lookup.graft_point(t, toks, [10, 21, 30, 31])
    assert (t.nodes[at].path, matched) == ((0, 1), 2)
    g, old_rows, chain_rows = t.grafted(at, 2)
    assert len(g) == len(t) + 2 and g.n_leaves == t.n_leaves and g.depth == 4
    assert [g.nodes[j].path for j in old_rows] == [n.path for n in t.nodes]
    assert [n.path for n in g.nodes[:3]] == [(), (0,), (0, 0)]  # the heads' top-1 chain first
    for j in chain_rows:
        assert g.nodes[j].parent in old_rows + chain_rows and g.nodes[j].parent < j
    at0, m0 = lookup.graft_point(t, toks, [12, 13])  # leaves the tree at the root
    g0, _, rows0 = t.grafted(at0, 2)
    assert m0 == 0 and g0.n_leaves == t.n_leaves + 1 and rows0 == [len(t), len(t) + 1]  # last in the batch
    assert t.grafted(at, 2)[0] is g  # cached
    # placed first: right after the node it hangs from, before the heads' children there
    f0, old0, rowsf = t.grafted(at0, 2, first=True)
    assert rowsf == [1, 2] and [f0.nodes[j].path for j in old0] == [n.path for n in t.nodes]
    assert f0.nodes[1].parent == 0 and f0.nodes[2].parent == 1 and f0.nodes[0].children[0] == 1
    assert f0.n_leaves == t.n_leaves + 1 and t.grafted(at0, 2, first=True)[0] is f0
    f, oldf, rowsf = t.grafted(at, 2, first=True)  # below (0, 1), a leaf: nothing to go before
    assert [n.path[:2] for n in f.nodes] == [n.path[:2] for n in g.nodes] and oldf == old_rows


def test_lookup_finds_what_llama_cpp_python_finds():
    """lookup.find is llama-cpp-python's prompt-lookup search (n-grams 3..1, earliest match), vectorised."""
    import numpy as np
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from llama_medusa.drafting import lookup

    rng = np.random.default_rng(0)
    for trial in range(400):
        ids = rng.integers(0, 2 + trial % 12, size=int(rng.integers(1, 60))).astype(np.intc)
        want = LlamaPromptLookupDecoding.find_candidate_pred_tokens(ids, lookup.MAX_NGRAM, 8).tolist()
        assert lookup.find(ids, 8)[0] == (want if len(ids) >= 2 else []), ids
    assert lookup.find(np.array([1, 2, 3, 1, 2]), 0) == ([], 0)
