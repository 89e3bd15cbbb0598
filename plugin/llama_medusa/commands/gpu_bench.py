"""`llama-medusa gpu-bench`: the GPU kernels timed beside the device's own roofline, measured in the same run.

Ternary GEMM: the 210 I2_S matrices of BitNet-b1.58-2B-4T (30 layers; q|k|v and gate|up fused as the engine
launches them), M = 1..64 tokens, each M as one graph replay over distinct weights (1.04 GB of weights, far
beyond L2), median of `reps`. Bandwidth = weight bytes / time, against the device-to-device copy rate.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Dict, List

import numpy as np

# (N, K) per layer of BitNet-b1.58-2B-4T: q|k|v (2560+640+640), o, gate|up (2*6912), down
LAYER_SHAPES = [(3840, 2560), (2560, 2560), (13824, 2560), (2560, 6912)]
N_LAYERS = 30
TOKENS = (1, 2, 4, 8, 16, 32, 64)


def ternary_table(g, reps: int = 20, kernels=("mma", "dp4a")) -> List[Dict]:
    shapes = LAYER_SHAPES * N_LAYERS
    wbytes = sum(n * k // 4 for n, k in shapes)
    rows = []
    for name in kernels:
        kid = {"mma": 2, "dp4a": 1}[name]
        if kid == 2 and not g.mma_available():
            continue
        for m in TOKENS:
            t = g.time_ternary_sequence(shapes, m, reps, kid)
            rows.append({"kernel": name, "M": m, "seconds": t, "weight_bytes": wbytes, "GBps": wbytes / t / 1e9,
                         "int8_TOPs": 2 * m * wbytes * 4 / t / 1e12})
    return rows


def heads_timing(g, reps: int = 50) -> Dict:
    """Shipped SmolLM2 heads: one step's top-10 on the GPU and on the CPU engine (random backbone projection)."""
    from ..heads import MedusaHeads
    from ..heads.shipped import SMOLLM2_HEADS

    shipped = MedusaHeads.load(SMOLLM2_HEADS)
    # the GPU module evaluates plain heads: the shipped blocks without their token conditioning
    heads = MedusaHeads(shipped.blocks, shipped.proj, shipped.hidden_size, draft_vocab=shipped.draft_vocab)
    H, V = heads.hidden_size, 49152
    proj = (np.random.default_rng(0).standard_normal((V, H)) * 0.05).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((1, H)).astype(np.float32)
    out = {}
    for dev in ("gpu", "cpu"):
        eng = heads.engine(None, H, V, "i8", backbone_proj=proj, device=dev)
        eng.topk(x, 10)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            eng.topk(x, 10)
            ts.append(time.perf_counter() - t0)
        out[f"{dev}_ms"] = float(np.median(ts) * 1e3)
    return out


def run(reps: int = 20) -> Dict:
    from .. import gpu

    reason = gpu.why_not()
    if reason:
        raise ValueError(reason)
    g = gpu.module()
    copy = g.copy_bandwidth(1 << 30, reps)
    s = {"device": g.device_name(), "backend": g.backend, "warp": g.warp_size(), "copy_GBps": copy / 1e9}
    s["ternary"] = ternary_table(g, reps)
    s["heads"] = heads_timing(g)
    return s


def format_table(s: Dict) -> str:
    lines = [f"device: {s['device']} ({s['backend']}, warp {s['warp']}); device-to-device copy "
             f"{s['copy_GBps']:.0f} GB/s (read + written)",
             "ternary GEMM, BitNet-2B-4T's 210 matrices per replay (1 graph):",
             f"{'kernel':>6} {'M':>3} {'us':>9} {'GB/s':>7} {'of copy':>8} {'int8 TOP/s':>10} {'t(M)/t(1)':>9}"]
    base = {}
    for r in s["ternary"]:
        base.setdefault(r["kernel"], r["seconds"])
        lines.append(f"{r['kernel']:>6} {r['M']:3d} {r['seconds'] * 1e6:9.1f} {r['GBps']:7.0f} "
                     f"{r['GBps'] / s['copy_GBps']:8.0%} {r['int8_TOPs']:10.1f} {r['seconds'] / base[r['kernel']]:9.2f}")
    h = s.get("heads")
    if h:
        lines.append("heads (shipped SmolLM2 heads without conditioning, top-10, one step): "
                     f"GPU {h['gpu_ms']:.3f} ms, CPU {h['cpu_ms']:.3f} ms")
    return "\n".join(lines)


def main(args) -> int:
    s = run(args.reps)
    print(format_table(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(type("A", (), {"reps": 20, "json": None})))
