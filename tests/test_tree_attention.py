"""The CPU tree attention (cpp/tree_attention.cpp, the engine's attention and the reference for
hip/tree_attention.cu) against a numpy reference: each node sees the committed prefix and its ancestors-or-self."""
import numpy as np
import pytest

from llama_medusa import _native


def reference(q, k, v, anc, scale):
    T, Hq, D = q.shape
    L, Hkv, _ = k.shape
    out = np.zeros_like(q, dtype=np.float64)
    for i in range(T):
        seen = list(range(L - T)) + [L - T + j for j in range(T) if anc[i, j // 32] >> (j % 32) & 1]
        for h in range(Hq):
            kh = k[seen, h // (Hq // Hkv)].astype(np.float64)
            s = kh @ q[i, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ v[seen, h // (Hq // Hkv)].astype(np.float64)
    return out


def ancestors(parents):
    """[T, ceil(T/32)] bitmask of ancestors-or-self from a parent list (-1: the prefix)."""
    T = len(parents)
    anc = np.zeros((T, (T + 31) // 32), np.uint32)
    for i in range(T):
        j = i
        while j >= 0:
            anc[i, j // 32] |= np.uint32(1 << (j % 32))
            j = parents[j]
    return anc


# (70 nodes: a batch past the 64 kept per query on the stack; 16 query heads a KV head: several sweeps of 16 queries;
# head size 36: the lanes' scalar tails)
@pytest.mark.parametrize("T,prefix,Hq,Hkv,D", [(1, 7, 4, 2, 64), (5, 0, 4, 4, 64), (40, 13, 6, 2, 64),
                                               (70, 9, 4, 2, 64), (3, 21, 16, 1, 64), (4, 11, 4, 2, 36)])
def test_tree_attention_equals_numpy(T, prefix, Hq, Hkv, D):
    rng = np.random.default_rng(T)
    parents = [-1] + [int(rng.integers(-1, i)) for i in range(1, T)]
    q = rng.standard_normal((T, Hq, D)).astype(np.float32)
    k = rng.standard_normal((prefix + T, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((prefix + T, Hkv, D)).astype(np.float32)
    anc = ancestors(parents)
    got = _native.tree_attention(q, k, v, anc, n_threads=2)
    np.testing.assert_allclose(got, reference(q, k, v, anc, 1 / np.sqrt(D)), rtol=2e-5, atol=2e-6)


def test_a_node_does_not_depend_on_its_batch():
    """A node's output is the same, bit for bit, alone or beside other branches: what keeps tree passes exact."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((3, 4, 64)).astype(np.float32)
    k = rng.standard_normal((10, 2, 64)).astype(np.float32)
    v = rng.standard_normal((10, 2, 64)).astype(np.float32)
    tree = _native.tree_attention(q, k, v, ancestors([-1, 0, 0]))  # node 2 is node 0's second child
    alone = _native.tree_attention(q[[0, 2]], k[[*range(7), 7, 9]], v[[*range(7), 7, 9]], ancestors([-1, 0]))
    assert (tree[[0, 2]] == alone).all()


@pytest.mark.parametrize("D,Hq,Hkv", [(64, 4, 2), (36, 8, 1), (128, 20, 5)])
def test_a_slot_weighs_the_same_committed_or_in_the_batch(D, Hq, Hkv):
    """Node 2 of a chain sees its ancestors as batch slots; decoded after them, as committed slots. Committed slots
    are scored several rows and queries at a time, batch slots one by one: both give the same bits."""
    rng = np.random.default_rng(D)
    q = rng.standard_normal((3, Hq, D)).astype(np.float32)
    k = rng.standard_normal((20, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((20, Hkv, D)).astype(np.float32)
    chain = _native.tree_attention(q, k, v, ancestors([-1, 0, 1]))
    after = _native.tree_attention(q[2:], k, v, ancestors([-1]))
    assert (chain[2] == after[0]).all()


def test_bad_shapes_are_refused():
    q = np.zeros((2, 4, 8), np.float32)
    kv = np.zeros((5, 2, 8), np.float32)
    with pytest.raises(ValueError, match="ancestor mask must be"):
        _native.tree_attention(q, kv, kv, np.zeros((2, 2), np.uint32))
    with pytest.raises(ValueError, match="multiple of k's heads"):
        _native.tree_attention(np.zeros((2, 3, 8), np.float32), kv, kv, np.zeros((2, 1), np.uint32))
    with pytest.raises(ValueError, match="L >= T"):
        _native.tree_attention(q, kv[:1], kv[:1], np.zeros((2, 1), np.uint32))
