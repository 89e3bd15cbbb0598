"""A small run of every GPU kernel under compute-sanitizer (memcheck): out-of-bounds reads of the clamped tails."""
import numpy as np

from llama_medusa import _native, gpu
from llama_medusa.backbones.i2s import packing as i2s

g = gpu.module()
rng = np.random.default_rng(0)
for M, N, K in [(3, 40, 256), (13, 33, 384), (64, 16, 128)]:
    w = i2s.pack(rng.integers(-1, 2, (N, K)))
    q, s, sm = _native.quantize_acts(rng.standard_normal((M, K)).astype(np.float32))
    for kern in (1, 2):
        ones = np.ones(N, np.float32)
        assert (g.ternary_gemm(w, ones, q, s, sm, kern) == _native.ternary_gemm(w, ones, q, s, sm)).all()
anc = np.array([[1], [3], [5]], np.uint32)
g.tree_attention(rng.standard_normal((3, 4, 64)).astype(np.float32), rng.standard_normal((20, 2, 64)).astype(np.float16),
                 rng.standard_normal((20, 2, 64)).astype(np.float16), anc, chunk=7)
print("sanitize case ran")
