"""The native head evaluator against a numpy reference."""
import numpy as np
import pytest

from llama_medusa import _native
from llama_medusa.heads import MedusaHeads
from llama_medusa.heads.engine import convert_projection, quantize_rows_i8


def silu(x):
    return x / (1.0 + np.exp(-x))


def ref_states(heads, h):
    out = []
    for blocks in heads.blocks:
        x = h.astype(np.float64).copy()
        for w_in, b_in, w_out in blocks:
            a = silu(w_in.astype(np.float64) @ x + (0 if b_in is None else b_in))
            x = x + (a if w_out is None else w_out.astype(np.float64) @ a)
        out.append(x)
    return np.array(out)


def make_heads(rng, H=64, V=1000, K=3, own=True, mlp=False, layers=1):
    blocks, proj = [], []
    for _ in range(K):
        hb = []
        for _ in range(layers):
            if mlp:
                I = 48
                hb.append((rng.standard_normal((I, H)).astype(np.float32) * 0.2, None,
                           rng.standard_normal((H, I)).astype(np.float32) * 0.2))
            else:
                hb.append((rng.standard_normal((H, H)).astype(np.float32) * 0.2,
                           rng.standard_normal(H).astype(np.float32) * 0.1, None))
        blocks.append(hb)
        proj.append(rng.standard_normal((V, H)).astype(np.float32) if own else None)
    return MedusaHeads(blocks, proj, H)


@pytest.mark.parametrize("mlp,layers", [(False, 1), (True, 2)])
def test_head_states_match_numpy(mlp, layers):
    rng = np.random.default_rng(1)
    heads = make_heads(rng, mlp=mlp, layers=layers)
    eng = heads.engine(None, 64, 1000, "f32")
    h = rng.standard_normal((2, 64)).astype(np.float32)
    got = eng.head_states(h)
    for r in range(2):
        np.testing.assert_allclose(got[r], ref_states(heads, h[r]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("half", [False, True])
def test_rows_together_equal_rows_alone_and_numpy_with_ragged_sizes(half):
    # hidden 70 and inner 45 leave tails after the 8- and 32-wide vector steps; 11 rows run as a chunk of 8 + 3
    rng = np.random.default_rng(5)
    H, I, V, n = 70, 45, 777, 11
    blocks = [[(rng.standard_normal((I, H)).astype(np.float32) * 0.2, rng.standard_normal(I).astype(np.float32) * 0.1,
                rng.standard_normal((H, I)).astype(np.float32) * 0.2)] for _ in range(2)]
    if half:  # float16-exact weights: the engine keeps them in float16
        blocks = [[tuple(None if a is None else a.astype(np.float16).astype(np.float32) for a in b) for b in hb]
                  for hb in blocks]
    heads = MedusaHeads(blocks, [rng.standard_normal((V, H)).astype(np.float32)] * 2, H)
    h = rng.standard_normal((n, H)).astype(np.float32)
    for dtype in ("f32", "i8"):
        eng = heads.engine(None, H, V, dtype)
        together = eng.head_states(h)
        ids, scores = eng.topk(h, 7)
        for r in range(n):
            np.testing.assert_array_equal(eng.head_states(h[r : r + 1])[0], together[r])
            one = eng.topk(h[r : r + 1], 7)
            np.testing.assert_array_equal(one[0][0], ids[r])
            np.testing.assert_array_equal(one[1][0], scores[r])
            np.testing.assert_allclose(together[r], ref_states(heads, h[r]), rtol=1e-4, atol=1e-4)
            if dtype == "i8":  # exact integer reference of the projection
                w, s = convert_projection(heads.proj[0], "i8")
                xq, xs = quantize_rows_i8(together[r, 0][None].astype(np.float32))
                logits = (w.astype(np.int64) @ xq[0].astype(np.int64)) * s * xs[0]
                np.testing.assert_allclose(scores[r, 0], np.sort(logits)[::-1][:7], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
@pytest.mark.parametrize("own", [True, False])
def test_topk_matches_numpy(dtype, own):
    rng = np.random.default_rng(2)
    H, V, K, k = 64, 3001, 3, 10
    heads = make_heads(rng, H=H, V=V, K=K, own=own)
    shared = rng.standard_normal((V, H)).astype(np.float32)
    eng = heads.engine(None, H, V, dtype, n_threads=2, backbone_proj=shared)
    h = rng.standard_normal((3, H)).astype(np.float32)
    ids, scores = eng.topk(h, k)
    assert ids.shape == (3, K, k) and scores.shape == (3, K, k)
    for r in range(3):
        states = ref_states(heads, h[r])
        for j in range(K):
            P = heads.proj[j] if own else shared
            w, s = convert_projection(P, dtype)
            if dtype == "i8":
                # reference of the integer path: int8 weights x int8 activations, exact int32 sums
                xq, xs = quantize_rows_i8(states[j][None].astype(np.float32))
                logits = (w.astype(np.int64) @ xq[0].astype(np.int64)) * s * xs[0]
            else:
                logits = w.astype(np.float64) @ states[j].astype(np.float32).astype(np.float64)
            order = np.argsort(-logits, kind="stable")[:k]
            np.testing.assert_allclose(scores[r, j], logits[order], rtol=2e-3, atol=2e-3)
            # ids agree except where two logits are closer than the float tolerance
            for a, b in zip(ids[r, j], order):
                assert a == b or abs(logits[a] - logits[b]) < 2e-3


def test_i8_matches_float_ranking_closely():
    rng = np.random.default_rng(3)
    H, V = 576, 5000
    P = rng.standard_normal((V, H)).astype(np.float32)
    heads = MedusaHeads([[]], [P], H)
    h = rng.standard_normal((1, H)).astype(np.float32)
    top_f = heads.engine(None, H, V, "f32").topk(h, 10)[0][0, 0]
    top_q = heads.engine(None, H, V, "i8").topk(h, 10)[0][0, 0]
    assert len(set(top_f) & set(top_q)) >= 8


def test_threads_do_not_change_results():
    rng = np.random.default_rng(4)
    heads = make_heads(rng, V=4099)
    h = rng.standard_normal((1, 64)).astype(np.float32)
    a = heads.engine(None, 64, 4099, "f16", n_threads=1).topk(h, 16)
    b = heads.engine(None, 64, 4099, "f16", n_threads=2).topk(h, 16)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_shapes_are_rejected():
    eng = _native.HeadsEngine(8, 1)
    with pytest.raises(ValueError, match="columns"):
        eng.add_projection(np.zeros((10, 7), np.float32))
    with pytest.raises(ValueError, match="int8"):
        eng.add_projection(np.zeros((10, 8), np.int8))
    with pytest.raises(ValueError, match="dtype"):
        eng.add_projection(np.zeros((10, 8), np.int32))
    pid = eng.add_projection(np.zeros((10, 8), np.float32))
    with pytest.raises(ValueError, match="projection 5"):
        eng.add_head([], 5)
    with pytest.raises(ValueError, match="columns"):
        eng.add_head([(np.zeros((8, 3), np.float32), None, None)], pid)
    eng.add_head([], pid)
    with pytest.raises(ValueError, match="width"):
        eng.topk(np.zeros((1, 9), np.float32), 3)
    with pytest.raises(ValueError, match="top_k"):
        eng.topk(np.zeros((1, 8), np.float32), 11)
