import pytest

from llama_medusa.tree import MC_SIM_7B_63, Tree


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
