"""Token-conditioned heads: engine pre-activation bias, the sequential drafter, the file format, and refusals."""
import numpy as np
import pytest

from llama_medusa.backbones.gguf_tensors import TokenEmbedding
from llama_medusa.drafting.drafter import HeadsDrafter
from llama_medusa.heads import MedusaHeads

H, I, V, K = 48, 40, 700, 3


def silu(x):
    return x / (1.0 + np.exp(-x))


def make(rng, cond=True):
    blocks = [[(rng.standard_normal((I, H)).astype(np.float32) * 0.3, rng.standard_normal(I).astype(np.float32) * 0.1,
                rng.standard_normal((H, I)).astype(np.float32) * 0.3)] for _ in range(K)]
    us = [[rng.standard_normal((I, H)).astype(np.float32) * 0.3 for _ in range(k + 1)] for k in range(K)] if cond else None
    return MedusaHeads(blocks, [None] * K, H, cond=us)


def ref_propose(heads, proj, emb, h, root, k):
    """numpy: head d sees the root and the top-1 tokens of heads 0..d-1."""
    chain, out = [root], []
    for d in range(K):
        w_in, b_in, w_out = heads.blocks[d][0]
        a = w_in.astype(np.float64) @ h + b_in
        for j, u in enumerate(heads.cond[d]):
            a += u.astype(np.float64) @ emb[chain[j]]
        z = h + w_out.astype(np.float64) @ silu(a)
        logits = proj.astype(np.float64) @ z
        top = np.argsort(-logits, kind="stable")[:k]
        out.append(top)
        chain.append(int(top[0]))
    return np.array(out)


def test_drafter_matches_numpy_reference():
    rng = np.random.default_rng(0)
    heads = make(rng)
    proj = rng.standard_normal((V, H)).astype(np.float32)
    emb_arr = rng.standard_normal((V, H)).astype(np.float32)
    eng = heads.engine(None, H, V, "f32", backbone_proj=proj)
    drafter = HeadsDrafter(heads, eng, TokenEmbedding.from_array(emb_arr))
    hs = rng.standard_normal((4, H)).astype(np.float32)
    roots = np.array([3, 77, 3, 500])
    batched = drafter.propose_rows(hs, roots, 6)
    for r in range(4):
        want = ref_propose(heads, proj, emb_arr.astype(np.float64), hs[r].astype(np.float64), int(roots[r]), 6)
        one = drafter.propose(hs[r], np.array([9, 9, roots[r]]), 6)  # cached path: the root is the last token
        np.testing.assert_array_equal(one, want)
        np.testing.assert_array_equal(batched[r], want)
    # the conditioning matters: another root gives other candidates for some head
    other = drafter.propose(hs[0], np.array([roots[0] + 1]), 6)
    assert not np.array_equal(other, batched[0])
    drafter.max_depth = 2  # a depth-2 tree never reads head 2: it is not evaluated
    cut = drafter.propose(hs[1], np.array([roots[1]]), 6)
    np.testing.assert_array_equal(cut[:2], batched[1][:2])
    assert not cut[2].any()


def ref_topk(heads, proj, emb, h, path, d, k):
    """numpy: head d's top-k given the tokens of a tree path (root first)."""
    w_in, b_in, w_out = heads.blocks[d][0]
    a = w_in.astype(np.float64) @ h + b_in
    for j, u in enumerate(heads.cond[d]):
        a += u.astype(np.float64) @ emb[path[j]]
    logits = proj.astype(np.float64) @ (h + w_out.astype(np.float64) @ silu(a))
    return np.argsort(-logits, kind="stable")[:k]


def test_fill_conditions_every_node_on_its_own_path():
    """In a tree, the children of every node (off the top-1 chain too) come from the next head conditioned on that
    node's own path, equal to a numpy reference; plain heads fill the same tree by rank."""
    from llama_medusa.drafting.tree import Tree

    rng = np.random.default_rng(3)
    heads = make(rng)
    proj = rng.standard_normal((V, H)).astype(np.float32)
    emb_arr = rng.standard_normal((V, H)).astype(np.float32)
    drafter = HeadsDrafter(heads, heads.engine(None, H, V, "f32", backbone_proj=proj), TokenEmbedding.from_array(emb_arr))
    tree = Tree([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (0, 0, 0), (1, 0, 0), (1, 0, 1)])
    h = rng.standard_normal(H).astype(np.float32)
    got = drafter.fill(h, np.array([4, 9, 21]), tree, 3)
    assert got[0] == 21
    for i, node in enumerate(tree.nodes[1:], 1):
        path, j = [], node.parent
        while j >= 0:
            path.append(got[j])
            j = tree.nodes[j].parent
        want = ref_topk(heads, proj, emb_arr.astype(np.float64), h.astype(np.float64), path[::-1], node.depth - 1, 3)
        assert got[i] == want[node.path[-1]], (node.path, got[i], want)
    # off-chain nodes differ from what conditioning on the top-1 chain would give
    chain_cand = drafter.propose(h, np.array([21]), 3)
    assert any(got[i] != chain_cand[n.depth - 1][n.path[-1]] for i, n in enumerate(tree.nodes[1:], 1) if any(n.path[:-1]))
    plain = make(rng, cond=False)
    pd = HeadsDrafter(plain, plain.engine(None, H, V, "f32", backbone_proj=proj))
    assert pd.fill(h, np.array([21]), tree, 3) == tree.tokens(21, pd.propose(h, np.array([21]), 3))
    # auto's time model for such heads: per call and per row, measured on its own trees whatever top_k the user set
    from llama_medusa.drafting import autotree

    cost = autotree.heads_time(drafter, H, top_k=3)
    assert cost.fixed == 0.0 and cost.per_call >= 0.0 and cost.per_row >= 0.0 and cost([(0,), (0, 0)]) > 0.0
    assert autotree.heads_time(pd, H, top_k=3).fixed > 0.0


def test_engine_adds_token_terms_before_silu():
    rng = np.random.default_rng(1)
    heads = make(rng)
    eng = heads.engine(None, H, V, "f32", backbone_proj=rng.standard_normal((V, H)).astype(np.float32))
    h = rng.standard_normal((2, H)).astype(np.float32)
    emb = rng.standard_normal((2, 3, H)).astype(np.float32)
    w_in, b_in, w_out = heads.blocks[1][0]
    for used in (1, 2, 3):  # head 1 has two U matrices: a third embedding is ignored
        got = eng.head_states(h, head=1, emb=emb[:, :used])
        for r in range(2):
            a = w_in @ h[r] + b_in + sum(heads.cond[1][j] @ emb[r, j] for j in range(min(used, 2)))
            np.testing.assert_allclose(got[r, 0], h[r] + w_out @ silu(a), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"token embeddings must have shape \[2, tokens, 48\]"):
        eng.topk(h, 5, head=1, emb=emb[:, :, :7])
    with pytest.raises(ValueError, match="head 3 does not exist"):
        eng.topk(h, 5, head=3)


def test_format_roundtrip_and_version(tmp_path):
    import json

    from safetensors import safe_open

    rng = np.random.default_rng(2)
    heads = make(rng)
    path = str(tmp_path / "c.safetensors")
    heads.save(path)
    with safe_open(path, framework="numpy") as f:
        meta = json.loads(f.metadata()["llama_medusa"])
    assert meta["version"] == 2 and meta["conditioning"] == "tokens"
    back = MedusaHeads.load(path)
    assert back.conditioned and [len(u) for u in back.cond] == [1, 2, 3]
    for a, b in zip(sum(heads.cond, []), sum(back.cond, [])):
        np.testing.assert_array_equal(a, b)
    plain = str(tmp_path / "p.safetensors")
    make(rng, cond=False).save(plain)
    with safe_open(plain, framework="numpy") as f:
        assert json.loads(f.metadata()["llama_medusa"])["version"] == 1  # older readers still load plain heads


def test_bad_conditioning_is_rejected():
    rng = np.random.default_rng(3)
    heads = make(rng)
    with pytest.raises(ValueError, match="head 0 conditions on 2 tokens; at most 1"):
        MedusaHeads(heads.blocks, [None] * K, H, cond=[heads.cond[1]] + heads.cond[1:])
    with pytest.raises(ValueError, match=r"head 1 conditioning 0 has shape \(40, 47\)"):
        MedusaHeads(heads.blocks, [None] * K, H, cond=[heads.cond[0], [np.zeros((I, H - 1), np.float32)], []])
    eng = heads.engine(None, H, V, "f32", backbone_proj=np.zeros((V, H), np.float32))
    with pytest.raises(ValueError, match="token-conditioned: they need the backbone's token embedding"):
        HeadsDrafter(heads, eng)
    with pytest.raises(ValueError, match="GPU module evaluates plain Medusa heads only"):
        heads.engine(None, H, V, "f32", backbone_proj=np.zeros((V, H), np.float32), device="gpu")
    emb = TokenEmbedding.from_array(np.zeros((V, H), np.float32))
    with pytest.raises(ValueError, match="token id 700 is outside the embedding's 700 rows"):
        emb.rows([700])


def test_token_embedding_rows_equal_gguf_dequantisation(model_path):
    import gguf

    emb = TokenEmbedding.from_gguf(model_path)
    t = next(t for t in gguf.GGUFReader(model_path).tensors if t.name == "token_embd.weight")
    full = gguf.quants.dequantize(t.data[:300], t.tensor_type)
    np.testing.assert_array_equal(emb.rows([0, 17, 299]), full[[0, 17, 299]])
    assert (emb.n_vocab, emb.n_embd) == (49152, 576)


def test_float16_weights_are_kept_exactly():
    """Weights that are exactly float16 (as heads files store them) run from float16 storage: same results."""
    rng = np.random.default_rng(4)
    heads = make(rng)
    half = lambda w: w.astype(np.float16).astype(np.float32)
    heads16 = MedusaHeads([[(half(a), b, half(c))] for [(a, b, c)] in heads.blocks], [None] * K, H,
                          cond=[[half(u) for u in us] for us in heads.cond])
    proj = rng.standard_normal((V, H)).astype(np.float32)
    emb_arr = rng.standard_normal((V, H)).astype(np.float32)
    drafter = HeadsDrafter(heads16, heads16.engine(None, H, V, "f32", backbone_proj=proj),
                           TokenEmbedding.from_array(emb_arr))
    h = rng.standard_normal(H).astype(np.float32)
    want = ref_propose(heads16, proj, emb_arr.astype(np.float64), h.astype(np.float64), 11, 5)
    np.testing.assert_array_equal(drafter.propose(h, np.array([11]), 5), want)
