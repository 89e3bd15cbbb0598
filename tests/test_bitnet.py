"""The native BitNet engine on small synthetic I2_S models: the whole forward against a numpy reference, tree
passes against sequential decoding (bit for bit), and bad files rejected with a message."""
import os
import struct

import numpy as np
import pytest
from bitnet_ref import forward_sequence

from llama_medusa import _native
from llama_medusa.backbones.i2s import packing as i2s
from llama_medusa.backbones.i2s.engine import BitnetModel
from llama_medusa.backbones.i2s.gguf_file import GGUFFile
from llama_medusa.synth import write_bitnet


@pytest.fixture(scope="module", params=["bitnet-b1.58", "bitnet"])
def model_file(request, tmp_path_factory):
    return write_bitnet(str(tmp_path_factory.mktemp("bn") / f"{request.param}.gguf"), arch=request.param, seed=1)


def test_reader_roundtrip(model_file):
    f = GGUFFile(model_file)
    assert f.fields["general.architecture"] in ("bitnet-b1.58", "bitnet")
    packed, scale = f.i2s("blk.0.attn_q.weight")
    assert packed.shape == (256, 64) and 0.5 <= scale <= 2.0
    assert set(np.unique(i2s.unpack(np.asarray(packed)))) <= {-1, 0, 1}


def test_forward_matches_numpy_reference(model_file):
    m = BitnetModel(model_file, n_ctx=64, n_threads=2)
    tokens = np.random.default_rng(0).integers(0, m.config["n_vocab"], 12)
    hidden, logits = m.forward(tokens)
    ref_logits, ref_hidden = forward_sequence(m, tokens)
    assert np.abs(hidden - ref_hidden).max() / np.abs(ref_hidden).max() < 1e-4
    assert np.abs(logits - ref_logits).max() / np.abs(ref_logits).max() < 1e-4
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).mean() >= 11 / 12


@pytest.mark.parametrize("kernel", _native.ternary_kernels())
def test_every_kernel_equals_the_reference(kernel):
    """Each small-M kernel this CPU runs gives the scalar reference's result bit for bit, at M = 1..16 and odd
    shapes (row counts that are no multiple of anything, K of one and of several blocks)."""
    rng = np.random.default_rng(5)
    for N, K in ((70, 384), (37, 128), (5, 2688)):
        w = i2s.pack(rng.integers(-1, 2, (N, K)))
        ws = rng.uniform(0.5, 2, N).astype(np.float32)
        for M in (*range(1, 17), 64):
            q, s, sm = _native.quantize_acts((rng.standard_normal((M, K)) * 10).astype(np.float32))
            got = _native.ternary_gemm_tiled(w, ws, q, s, sm, kernel=kernel)
            assert (got == _native.ternary_gemm(w, ws, q, s, sm)).all(), (kernel, N, K, M)


@pytest.mark.parametrize("kernel", _native.ternary_kernels())
def test_gemm_extreme_activations_do_not_overflow(kernel):
    # all weights +1 and activations pinned at +-127 over K = 6912: an int16 running sum would wrap
    K = 6912
    w = i2s.pack(np.ones((4, K), np.int64))
    for v in (1e3, -1e3):
        q, s, sm = _native.quantize_acts(np.full((2, K), v, np.float32))
        y = _native.ternary_gemm_tiled(w, np.ones(4, np.float32), q, s, sm, kernel=kernel)
        assert (y == _native.ternary_gemm(w, np.ones(4, np.float32), q, s, sm)).all()
        assert abs(int(q[0, 0])) == 127 and np.allclose(y, K * int(q[0, 0]) / s[0])


def test_a_kernel_the_cpu_lacks_is_never_chosen(model_file, monkeypatch):
    """A forced kernel this CPU or build lacks is refused with the list of those it has; the timed choice is
    always one of those."""
    from llama_medusa.backbones.i2s import engine

    with pytest.raises(ValueError, match=r"ternary kernel 'neon' is not available on this CPU and build "
                                         r"\(available: scalar"):
        BitnetModel(model_file, n_ctx=64, n_threads=1, kernel="neon")
    monkeypatch.setenv(engine.KERNEL_ENV, "sse9")
    with pytest.raises(ValueError, match="'sse9' is not available"):
        BitnetModel(model_file, n_ctx=64, n_threads=1)
    monkeypatch.delenv(engine.KERNEL_ENV)
    m = BitnetModel(model_file, n_ctx=64, n_threads=1)
    assert m.kernel in _native.ternary_kernels() and m.kernel == _native.ternary_kernel()
    assert set(m.kernel_timings) <= set(_native.ternary_kernels())


def test_engine_output_does_not_change_with_the_kernel(model_file):
    outs = {}
    for kernel in _native.ternary_kernels():
        m = BitnetModel(model_file, n_ctx=64, n_threads=2, kernel=kernel)
        _, logits = m.forward(list(range(3, 12)))
        outs[kernel] = logits
    _native.set_ternary_kernel(BitnetModel(model_file, n_ctx=64, n_threads=2).kernel)  # back to the timed choice
    first = next(iter(outs.values()))
    assert all((o == first).all() for o in outs.values()), list(outs)


def test_tree_pass_equals_sequential_decoding(model_file):
    m = BitnetModel(model_file, n_ctx=64, n_threads=2)
    prompt = [5, 17, 99, 3]
    m.forward(prompt)
    m.commit(range(4))
    # tree: 0 -> (1 -> 2, 3), 4 ; two branches of depth 3 and one of depth 1
    tokens, parents = [7, 8, 9, 10, 11], [-1, 0, 1, 1, -1]
    _, tree_logits = m.forward(tokens, parents)
    for path in ([0, 1, 2], [0, 1, 3], [4]):
        seq = BitnetModel(model_file, n_ctx=64, n_threads=1)
        seq.forward(prompt)
        seq.commit(range(4))
        for node in path:
            _, lg = seq.forward([tokens[node]])
            seq.commit([0])
            assert (lg[0] == tree_logits[node]).all(), f"path {path} node {node}"
    # committing a path leaves the cache as sequential decoding of it would
    m.commit([0, 1, 3])
    _, after = m.forward([12])
    seq = BitnetModel(model_file, n_ctx=64, n_threads=2)
    _, ref = seq.forward(prompt + [7, 8, 10, 12])
    assert np.allclose(after[0], ref[-1], rtol=0, atol=1e-5 * np.abs(ref[-1]).max())


def test_context_overflow_is_an_error(model_file):
    m = BitnetModel(model_file, n_ctx=8, n_threads=1)
    m.forward(list(range(8)))
    m.commit(range(8))
    with pytest.raises(ValueError, match="context overflow"):
        m.forward([1])


def test_bad_parents_and_tokens(model_file):
    m = BitnetModel(model_file, n_ctx=16, n_threads=1)
    with pytest.raises(ValueError, match="parent"):
        m.forward([1, 2], [1, -1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.forward([10**6])


def corrupt(src, dst, fn):
    data = bytearray(open(src, "rb").read())
    fn(data)
    open(dst, "wb").write(bytes(data))
    return dst


def test_bad_files(model_file, tmp_path):
    size = os.path.getsize(model_file)
    f = GGUFFile(model_file)
    t = f.tensor("blk.1.ffn_down.weight")
    with pytest.raises(ValueError, match="truncated"):
        GGUFFile(corrupt(model_file, tmp_path / "trunc.gguf", lambda d: d.__delitem__(slice(size - 1000, size))))
    with pytest.raises(ValueError, match="not a GGUF"):
        GGUFFile(corrupt(model_file, tmp_path / "magic.gguf", lambda d: d.__setitem__(slice(0, 4), b"GGML")))
    with pytest.raises(ValueError, match="ends inside its header"):
        GGUFFile(corrupt(model_file, tmp_path / "head.gguf", lambda d: d.__delitem__(slice(200, size))))

    def code3(d):
        d[t.offset:t.offset + 8] = b"\xff" * 8

    bad = BitnetModel.__new__(BitnetModel)
    g = GGUFFile(corrupt(model_file, tmp_path / "code3.gguf", code3))
    with pytest.raises(ValueError, match="code 3"):
        i2s.unpack(np.asarray(g.i2s("blk.1.ffn_down.weight")[0]))
    del bad
    # unknown architecture
    arch = f.fields["general.architecture"].encode()
    with pytest.raises(ValueError, match="not a BitNet"):
        BitnetModel(corrupt(model_file, tmp_path / "arch.gguf",
                            lambda d: d.__setitem__(slice(d.find(arch), d.find(arch) + len(arch)), b"x" * len(arch))))
    # unknown tensor type: patch the type field of the first tensor info (after its name and dims)
    name = b"token_embd.weight"

    def bad_type(d):
        i = d.find(name) + len(name)
        nd = struct.unpack_from("<I", d, i)[0]
        struct.pack_into("<I", d, i + 4 + 8 * nd, 77)

    with pytest.raises(ValueError, match="unknown type 77"):
        GGUFFile(corrupt(model_file, tmp_path / "type.gguf", bad_type))
