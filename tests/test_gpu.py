"""GPU kernels against their CPU references. Skips cleanly where the GPU module is not built or sees no device;
runs on a GPU machine (tools/device/gpu_tests.sh)."""
import numpy as np
import pytest
from test_tree_attention import ancestors as tree_mask

from llama_medusa import _native, gpu
from llama_medusa.backbones.i2s import packing as i2s

pytestmark = pytest.mark.skipif(not gpu.available(), reason=f"no GPU: {gpu.why_not()}")


@pytest.fixture(scope="module")
def g():
    return gpu.module()


def acts(rng, M, K):
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[:, rng.integers(0, K, 4)] *= 40  # outliers, as real activations have
    return x


def test_quantize_bit_identical(g):
    rng = np.random.default_rng(0)
    x = acts(rng, 9, 2560)
    for a, b in zip(g.quantize_acts(x), _native.quantize_acts(x)):
        assert (a == b).all()


@pytest.mark.parametrize("kernel", [1, 2])
@pytest.mark.parametrize("M", [1, 2, 5, 8, 9, 16, 33, 64])
@pytest.mark.parametrize("N,K", [(2560, 2560), (640, 2560), (200, 6912)])
def test_ternary_gemm_bit_identical(g, kernel, M, N, K):
    if kernel == 2 and not g.mma_available():
        pytest.skip("tensor-core int8 mma needs NVIDIA sm_80+")
    rng = np.random.default_rng(M * 7 + N)
    w = i2s.pack(rng.integers(-1, 2, size=(N, K)))
    ws = rng.uniform(0.5, 2, N).astype(np.float32)
    q, s, sm = _native.quantize_acts(acts(rng, M, K))
    ref = _native.ternary_gemm(w, ws, q, s, sm)
    y = g.ternary_gemm(w, ws, q, s, sm, kernel)
    assert y.shape == (M, N)
    assert (y == ref).all(), f"max diff {np.abs(y - ref).max()}"


def test_ternary_gemm_rejects_bad_input(g):
    q, s, sm = _native.quantize_acts(np.ones((65, 128), np.float32))
    with pytest.raises(ValueError, match="1..64 tokens"):
        g.ternary_gemm(np.zeros((4, 32), np.uint8), np.ones(4, np.float32), q, s, sm, 0)
    with pytest.raises(ValueError, match="columns"):
        g.ternary_gemm(np.zeros((4, 64), np.uint8), np.ones(4, np.float32), q[:2], s[:2], sm[:2], 0)


def attention_ref(q, k, v, parents, scale):
    T, Hq, D = q.shape
    L, Hkv, _ = k.shape
    P, G = L - T, Hq // Hkv
    kf, vf = k.astype(np.float64), v.astype(np.float64)
    out = np.zeros((T, Hq, D))
    for t in range(T):
        vis = list(range(P))
        j = t
        while j >= 0:
            vis.append(P + j)
            j = parents[j]
        vis = sorted(vis)
        for h in range(Hq):
            s = kf[vis, h // G] @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[t, h] = p @ vf[vis, h // G] / p.sum()
    return out


@pytest.mark.parametrize("T,L,Hq,Hkv,D", [(1, 300, 9, 3, 64), (25, 1000, 20, 5, 128), (128, 700, 8, 8, 64)])
def test_tree_attention_matches_reference(g, T, L, Hq, Hkv, D):
    rng = np.random.default_rng(T)
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, T)]  # a random tree in batch (DFS-like) order
    q = rng.standard_normal((T, Hq, D)).astype(np.float32)
    k = rng.standard_normal((L, Hkv, D)).astype(np.float16)
    v = rng.standard_normal((L, Hkv, D)).astype(np.float16)
    scale = 1 / np.sqrt(D)
    out = g.tree_attention(q, k, v, tree_mask(parents), chunk=128)
    ref = attention_ref(q, k, v, parents, scale)
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 1e-5, err
    # its CPU counterpart (the engine's attention) on the same float16 cache, read as float32
    cpu = _native.tree_attention(q, k.astype(np.float32), v.astype(np.float32), tree_mask(parents), scale=scale)
    assert np.linalg.norm(out - cpu) / np.linalg.norm(cpu) < 1e-5


def test_tree_attention_rejects_bad_shapes(g):
    q = np.zeros((2, 4, 64), np.float32)
    k = np.zeros((10, 2, 64), np.float16)
    with pytest.raises(ValueError, match="float16"):
        g.tree_attention(q, k.astype(np.float32), k, tree_mask([-1, 0]))
    with pytest.raises(ValueError, match="ancestor mask"):
        g.tree_attention(q, k, k, np.zeros((3, 1), np.uint32))


def test_heads_topk_matches_cpu_engine(g):
    from llama_medusa.heads import MedusaHeads
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    shipped = MedusaHeads.load(SMOLLM2_HEADS)
    # the GPU module evaluates plain heads: the shipped blocks without their token conditioning
    heads = MedusaHeads(shipped.blocks, shipped.proj, shipped.hidden_size, draft_vocab=shipped.draft_vocab)
    rng = np.random.default_rng(3)
    V, H = 49152, heads.hidden_size
    backbone = (rng.standard_normal((V, H)) * 0.05).astype(np.float32)
    cpu = heads.engine(None, H, V, "f16", backbone_proj=backbone, device="cpu")
    dev = heads.engine(None, H, V, "f16", backbone_proj=backbone, device="gpu")
    hidden = rng.standard_normal((4, H)).astype(np.float32)
    ids_c, sc_c = cpu.topk(hidden, 10)
    ids_g, sc_g = dev.topk(hidden, 10)
    np.testing.assert_allclose(sc_g, sc_c, rtol=1e-4, atol=1e-4)
    # ids agree wherever the scores are not a near-tie
    gap = np.abs(np.diff(sc_c, axis=-1)) > 1e-3
    same = ids_c == ids_g
    assert same[..., 0][gap[..., 0]].all() and same.mean() > 0.95
    st_c = cpu.head_states(hidden) if hasattr(cpu, "head_states") else None
    if st_c is not None:
        np.testing.assert_allclose(dev.head_states(hidden), st_c, rtol=1e-4, atol=1e-5)
