"""The per-step tree: pricing on a cost curve, trees closed under ancestors, and with the shipped token-conditioned
heads greedy output identical to stock within medusa_max_batch."""
import numpy as np
import pytest
from conftest import N_CTX, PROMPTS, THREADS, stock_tokens, watch_grow

from llama_medusa.drafting.pertree import PerStepTree


def grown(probs_by_level, cost=None, max_nodes=16, beam=4, top_k=4, level_s=0.0):
    """A tree from fixed child distributions: level d gives every node the distribution probs_by_level[d]."""
    p = PerStepTree(beam=beam, top_k=top_k, max_nodes=max_nodes)
    p.cost, p.n_heads = cost, len(probs_by_level)
    calls = []

    def level(nodes, toks, parent, d):
        calls.append((d, len(nodes)))
        return np.tile(probs_by_level[d - 1], (len(nodes), 1))

    p.level_s = level_s  # a level's cost so far (grow_from then folds each call's measured time into it)
    tree, tokens, e = p.grow_from(lambda: probs_by_level[0], level, 7, max_nodes + 1, len(probs_by_level),
                                  lambda ix: ix + 100)
    return tree, tokens, e, calls


def test_steep_curve_and_doubtful_drafts_decode_plainly():
    flat_doubt = [np.array([0.2, 0.2, 0.2, 0.2, 0.2])] * 3
    steep = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}  # every extra token costs a full one
    tree, tokens, e, calls = grown(flat_doubt, steep)
    assert len(tree) == 1 and tokens == [7] and e == 1.0
    assert calls == []  # no level past the first was worth its time


def test_confident_drafts_on_a_flat_curve_verify_deep_chains():
    sure = [np.array([0.9, 0.05, 0.03, 0.02])] * 4
    flat = {1: 1.0, 2: 1.0, 4: 1.05, 8: 1.2, 16: 1.6}
    tree, tokens, e, _ = grown(sure, flat, level_s=0.01)
    assert tree.depth == 4 and tokens[:5] == [7, 100, 100, 100, 100]  # the likeliest chain first in the batch
    assert e > 1 + 0.9 + 0.81 + 0.72
    # every chosen node's parent is chosen (the tree is closed under ancestors)
    assert all(n.parent < i for i, n in enumerate(tree.nodes) if i)


def test_unpriced_tree_fills_max_nodes():
    tree, tokens, _, calls = grown([np.full(10, 0.1)] * 3, None, max_nodes=9)
    assert len(tree) == 10 and len(tokens) == 10
    assert calls[0] == (2, 4)  # the beam of 4 frontier nodes, one batched call per level


@pytest.mark.parametrize("max_batch", [6, 12])
def test_shipped_heads_per_step_identical_to_stock(model_path, reference, max_batch):
    """The token-conditioned heads that ship for SmolLM2 grow a tree every step (the EAGLE heads' own test is in
    test_eagle.py)."""
    from llama_medusa import Llama
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    m = Llama(model_path, n_ctx=N_CTX, verbose=False, medusa_heads=SMOLLM2_HEADS, medusa_choices="per-step",
              medusa_max_batch=max_batch, medusa_lookup=0, **THREADS)
    drafter = m._medusa.drafter
    assert drafter.can_grow and m._medusa.dynamic
    sizes = watch_grow(drafter)
    for user in PROMPTS:
        pt, want = reference(user, 60)
        assert stock_tokens(m, pt, len(want), temp=0.0) == want
    assert all(n <= room <= max_batch for n, room in sizes)
    assert max(n for n, _ in sizes) == min(max_batch - 3, 17)  # unpriced: grown to what the batch leaves
    assert m.medusa_stats.tokens / m.medusa_stats.steps > 1.1  # the grown trees were accepted in part


def test_per_step_needs_heads_that_can_grow(model_path, tmp_path):
    from llama_medusa import Llama, MedusaHeads
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    h = MedusaHeads.load(SMOLLM2_HEADS)
    plain = MedusaHeads([b[:] for b in h.blocks], h.proj, h.hidden_size, draft_vocab=h.draft_vocab)
    with pytest.raises(ValueError, match="per-step.*probabilities"):
        Llama(model_path, n_ctx=512, verbose=False, medusa_heads=plain, medusa_choices="per-step", **THREADS)
