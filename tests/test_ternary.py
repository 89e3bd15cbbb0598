"""I2_S packing and the CPU ternary reference (the GPU kernels are tested against it in test_gpu.py)."""
import numpy as np
import pytest

from llama_medusa import _native
from llama_medusa.backbones.i2s import packing as i2s


def quantize_ref(x):
    """bitnet.cpp quantize_row_i8_s in numpy: 127/absmax in double, round half to even, clamp."""
    amax = np.maximum(np.abs(x).max(axis=1).astype(np.float64), 1e-5)
    s = (127.0 / amax).astype(np.float32)
    q = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)  # float32 product, then half-even
    return q, s, q.astype(np.int32).sum(axis=1)


def test_pack_unpack_roundtrip_and_layout():
    rng = np.random.default_rng(1)
    w = rng.integers(-1, 2, size=(3, 256))
    b = i2s.pack(w)
    assert b.shape == (3, 64) and b.dtype == np.uint8
    assert (i2s.unpack(b) == w).all()
    # byte p of a block = codes of weights p, 32+p, 64+p, 96+p at shifts 6/4/2/0 (the reference note's layout)
    assert b[0, 5] == ((w[0, 5] + 1) << 6) | ((w[0, 37] + 1) << 4) | ((w[0, 69] + 1) << 2) | (w[0, 101] + 1)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 128"):
        i2s.pack(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="only -1, 0 and \\+1"):
        i2s.pack(np.full((1, 128), 2))
    with pytest.raises(ValueError, match="code 3"):
        i2s.unpack(np.full((1, 32), 0xFF, dtype=np.uint8))


@pytest.mark.parametrize("K", [640, 645, 31])
def test_quantize_matches_bitnet_semantics(K):
    """The vector loop (32 values at a time) and the scalar tail both give the reference's bytes, scales and sums:
    exact halves round to even, the largest value maps to 127, an all-zero row floors at 1e-5."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((7, K)) * rng.uniform(0.01, 30, size=(7, 1))).astype(np.float32)
    x[3] = 0.0  # all-zero row: absmax floors at 1e-5
    x[4, :10] = [0.5, -0.5, 1.5, -1.5, 2.5, 0, 0, 0, 0, 127]  # exact halves after scaling test half-even
    x[5, -1] = -1000.0  # the extreme value in the tail
    q, s, sm = _native.quantize_acts(x)
    rq, rs, rsm = quantize_ref(x)
    assert (q == rq).all() and (s == rs).all() and (sm == rsm).all()


@pytest.mark.parametrize("M", [1, 3, 8, 17])
def test_gemm_is_exact_integer_product(M):
    rng = np.random.default_rng(M)
    N, K = 37, 384
    w = rng.integers(-1, 2, size=(N, K))
    ws = rng.uniform(0.5, 2, size=N).astype(np.float32)
    q, s, sm = _native.quantize_acts(rng.standard_normal((M, K)).astype(np.float32))
    y = _native.ternary_gemm(i2s.pack(w), ws, q, s, sm)
    S = q.astype(np.int64) @ w.T.astype(np.int64)  # sum of w * q = sum of code * q - sum q
    ref = ((S.astype(np.float32) / s[:, None]).astype(np.float32) * ws[None, :]).astype(np.float32)
    assert (y == ref).all()


def test_gemm_rejects_mismatched_shapes():
    q, s, sm = _native.quantize_acts(np.ones((2, 256), np.float32))
    with pytest.raises(ValueError, match="columns"):
        _native.ternary_gemm(np.zeros((4, 32), np.uint8), np.ones(4, np.float32), q, s, sm)
    with pytest.raises(ValueError, match="multiple of 128"):
        _native.ternary_gemm(np.zeros((4, 16), np.uint8), np.ones(4, np.float32), q[:, :64], s, sm)


def test_no_kernel_runs_past_its_roofline_probe():
    """The probes bound what they claim to bound, on the machine the test runs on: at BitNet-2B-4T's shapes (8
    layers, 139 MB of weights, beyond the caches), M = 1 streams no faster than read_bandwidth and M = 2..8 multiply
    no faster than the int8_peak of the instruction the kernel uses at that M. The slack (15%) covers timing noise
    between the two measurements on a shared VM; a probe that measured the wrong thing was off by 15-23% (a kernel
    at 115-123%)."""
    import os

    from llama_medusa.commands.bitnet_bench import LAYER, kernel_instruction

    threads = os.cpu_count() or 1
    read = _native.read_bandwidth(0.3, threads)
    peaks = {}

    def peak_of(instruction):  # a ceiling: the best of three probes (a busy neighbour only ever lowers one)
        if instruction not in peaks:
            peaks[instruction] = max(_native.int8_peak(0.2, threads, instruction) for _ in range(3))
        return peaks[instruction]

    rng = np.random.default_rng(0)
    mats = [rng.integers(0, 256, (n, k // 4), dtype=np.uint8) & 0xAA for _ in range(8) for n, k in LAYER]
    wbytes = sum(m.nbytes for m in mats)
    checked = 0
    for kernel in _native.ternary_kernels():
        if kernel == "scalar":
            continue
        for M in (1, 2, 4, 8):
            peak = peak_of(kernel_instruction(kernel, M))
            acts = {k: _native.quantize_acts(rng.standard_normal((M, k)).astype(np.float32)) for k in {2560, 6912}}
            t = _native.ternary_sequence_timed(mats, acts, threads, 2, kernel)
            if M == 1:
                assert wbytes / t <= 1.15 * read, (kernel, wbytes / t / 1e9, read / 1e9)
            else:
                assert wbytes * 4 * M / t <= 1.15 * peak, (kernel, M, wbytes * 4 * M / t / 1e9, peak / 1e9)
            checked += 1
    assert checked >= 4


def test_lookup_layout_puts_pair_indices_where_documented():
    """lut_pack: tile t, quad u, byte j holds row 32t + j's index of pair 2u (low nibble) and 2u + 1 (high), an
    index being code(2p) | code(2p + 1) << 2; rows past N are zero. One nonzero weight at a time shows each place."""
    N, K = 40, 256
    for n, k, w in ((0, 0, 1), (5, 1, -1), (33, 2, 1), (39, 255, -1), (17, 130, 1)):
        W = np.zeros((N, K), np.int64)
        W[n, k] = w
        packed = _native.lut_pack(i2s.pack(W))
        assert packed.shape == (64 * K // 4,)  # two tiles of 32 rows
        tiles = packed.reshape(2, K // 4, 32)
        code = w + 1
        u, pair_in_quad, pos = k // 4, (k // 2) % 2, k % 2
        expect = np.full((2, K // 4, 32), 0x55, np.uint8)  # every other weight is 0: code 1 in each 2-bit field
        expect[1, :, N - 32:] = 0  # padding rows
        t, j = n // 32, n % 32
        nib = (0x5 & ~(3 << (2 * pos))) | code << (2 * pos)
        expect[t, u, j] = (expect[t, u, j] & (0xF0 if pair_in_quad == 0 else 0x0F)) | nib << (4 * pair_in_quad)
        assert (tiles == expect).all(), (n, k, w)
