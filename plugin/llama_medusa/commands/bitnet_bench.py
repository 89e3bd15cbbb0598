"""`llama-medusa bitnet-bench`: the ternary GEMM and the native BitNet engine at BitNet-b1.58-2B-4T's shapes
(synthetic weights), beside this machine's roofline measured in the same run, and stock llama.cpp running the
Q2_0, TQ2_0 and TQ1_0 conversions of the same weights (llama-medusa convert-i2s). The engine is timed twice: bare
(BitnetModel) and through llama_medusa.Llama (tokenizer and sampler chain from llama.cpp, the decoder's loop).

Roofline, measured in the same run: the read bandwidth of every thread streaming, and each instruction's peak from
register-only chains (vpmaddubsw, vpdpbusd on 256 and 512 bits, vpshufb's byte lookups for the table kernel). Each
GEMM row stands beside its roofline: the slower of streaming its weights at the read bandwidth and multiplying at
its instruction's peak.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, Sequence, Tuple

import numpy as np

LAYER = [(3840, 2560), (2560, 2560), (13824, 2560), (2560, 6912)]  # q|k|v, o, gate|up, down: (N, K)
TOKENS = (1, 2, 4, 8, 16, 64)


# The instruction each ternary kernel multiplies with: its rows are placed beside that instruction's in-run peak.
# The lookup kernel's rate is counted in the same multiply-adds; each takes one byte lookup (four 32-byte vpshufb per
# 32 rows x 4 weights), so its probe is vpshufb's byte lookups per second. Its interleaves use the same shuffle
# port, which caps that kernel near half of its probe.
KERNEL_INSTRUCTION = {"avx2": "vpmaddubsw", "avx512_vnni": "vpdpbusd", "lut": "vpshufb"}


def kernel_instruction(kernel: str, M: int) -> str:
    """The instruction whose peak bounds a kernel's GEMM row at M tokens: VNNI multiplies one token on 256-bit
    lanes and two or more on 512-bit ones (cpp/ternary_gemm.cpp, rows_tile512)."""
    if kernel == "avx512_vnni" and M >= 2:
        return "vpdpbusd512"
    return KERNEL_INSTRUCTION.get(kernel)


def gemm_table(n_layers: int, threads: int, rounds: int = 5, kernel: str = None):
    """All n_layers x 4 matrices, distinct (0.52 GB for 30 layers: far beyond the caches), 64-byte aligned as a
    GGUF's tensors are at least 32-byte aligned; per M the median of `rounds` passes, the rounds going over every M
    in turn so that a slow spell on a shared machine lands on all of them alike."""
    from .. import _native
    from ..backbones.i2s.packing import cache_aligned

    rng = np.random.default_rng(0)
    mats = [cache_aligned(rng.integers(0, 256, (n, k // 4), dtype=np.uint8) & 0xAA)
            for _ in range(n_layers) for n, k in LAYER]
    wbytes = sum(m.nbytes for m in mats)
    acts = {M: {k: tuple(map(cache_aligned, _native.quantize_acts(rng.standard_normal((M, k)).astype(np.float32))))
                for k in {2560, 6912}} for M in TOKENS}
    times = {M: [] for M in TOKENS}
    for _ in range(rounds):
        for M in TOKENS:
            times[M].append(_native.ternary_sequence_timed(mats, acts[M], threads, 1, kernel))
    rows = []
    for M in TOKENS:
        t = statistics.median(times[M])
        rows.append({"M": M, "seconds": t, "GBps": wbytes / t / 1e9, "GMACps": wbytes * 4 * M / t / 1e9})
    return rows, wbytes


def roofline_share(g: Dict, read_GBps: float, peak_GMACps: float) -> float:
    """The share of its roofline a GEMM row reaches: the time the slower of streaming its weights at the read
    bandwidth and multiplying at the instruction's peak would take, over the time it took. Below M = read x 4 /
    peak tokens the weights' read is the bound, above it the multiply-adds."""
    return max(g["GBps"] / read_GBps, g["GMACps"] / peak_GMACps) if peak_GMACps else g["GBps"] / read_GBps


def greedy_tokens(m, n_past: int, tok: int, n: int) -> Tuple[float, int]:
    """n greedy single tokens on the engine from n_past cached positions, starting at tok: (seconds per token,
    the last token chosen)."""
    m.truncate(n_past)
    t0 = time.perf_counter()
    for _ in range(n):
        _, lg = m.forward([tok])
        m.commit([0])
        tok = int(np.argmax(lg[0]))
    return (time.perf_counter() - t0) / n, tok


def decode_speed(path: str, threads: int, n: int = 16, rounds: int = 5) -> Dict:
    """Single-token decode (median over rounds of n tokens) and tree passes of T nodes, each timed right after a
    round of single tokens and reported as the median of its ratio to that round's token: on a shared machine the
    ratio drifts less than either time."""

    from ..backbones.i2s.engine import BitnetModel

    m = BitnetModel(path, n_ctx=256, n_threads=threads)
    prompt = list(range(100, 108))
    m.forward(prompt, logits=False)
    m.commit(range(len(prompt)))
    tok, singles, ratios = 1000, [], {T: [] for T in (4, 16, 64)}
    for _ in range(rounds):
        s, tok = greedy_tokens(m, len(prompt), tok, n)
        singles.append(s)
        for T in ratios:
            parents = [-1] + [i // 2 for i in range(T - 1)]  # a binary tree in batch order
            t0 = time.perf_counter()
            m.forward([tok] * T, parents)
            ratios[T].append((time.perf_counter() - t0) / singles[-1])
    single = statistics.median(singles)
    return {"s_per_token": single, "tok_s": 1 / single,
            "tree_s": {T: statistics.median(r) * single for T, r in ratios.items()}}


class ReplayDrafter:
    """Proposes a recorded continuation at rank 0 of every head: perfect heads, or with `hit_rates`, heads whose
    depth-d draft is right with probability hit_rates[d] given that the drafts before it were (a wrong draft is
    another token). Each (position, depth) draws once, seeded, so a run is reproducible whatever the tree asks.
    No trained heads exist for a synthetic model: this measures the verify path at a chosen acceptance."""

    def __init__(self, continuation, n_heads: int, hit_rates: Sequence[float] = None, seed: int = 0):
        self.seq, self.n_heads, self.seed = [int(t) for t in continuation], n_heads, seed
        self.hit_rates = list(hit_rates) if hit_rates is not None else [1.0] * n_heads
        if len(self.hit_rates) < n_heads or not all(0.0 <= p <= 1.0 for p in self.hit_rates):
            raise ValueError(f"hit_rates needs a probability in [0, 1] for each of {n_heads} heads: {hit_rates}")

    def propose(self, hidden, tokens, k):
        n = len(tokens)
        out = np.zeros((self.n_heads, k), np.int64)
        for d in range(self.n_heads):
            true = self.seq[n + d] if n + d < len(self.seq) else 0
            hit = self.hit_rates[d] >= 1.0 or np.random.default_rng([self.seed, n, d]).random() < self.hit_rates[d]
            out[d, 0] = true if hit else true ^ 1  # another token, inside any even-sized vocabulary
        return out


def chain_tokens_per_pass(hit_rates: Sequence[float]) -> float:
    """Expected tokens per pass of a chain over drafts right with these conditional rates."""
    out, run = 1.0, 1.0
    for p in hit_rates:
        run *= p
        out += run
    return out


# Per-depth rates replayed besides perfect drafts (chain-3): 0.57 at every depth gives MedusaBitNet's published 2.08
# tokens per pass; the others are the shipped SmolLM2 heads' top-1 rates on their validation prompts (heads file).
REPLAYED = {"2.08 tokens/pass (0.57 per depth)": [0.57, 0.57, 0.57],
            "SmolLM2 heads' rates (0.39, 0.41, 0.56)": [0.39, 0.41, 0.56]}


def tree_upper_bound(path: str, threads: int, n: int = 48, rounds: int = 3) -> Dict:
    """Plain greedy vs tree decoding through Llama with replayed drafts (ReplayDrafter), side by side: perfect
    chains of 1-3, then chain-3 at the REPLAYED acceptance rates. The plain run is also the engine's speed through
    the Llama API (llama.cpp tokenizer + sampler chain). Every output must equal plain decoding's. Median of
    `rounds` rounds, each variant's speedup taken against the plain run of its own round."""

    from ..llama import Llama

    prompt = list(range(100, 108))
    plain = Llama(path, n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False)

    def timed(llm):
        gen = llm.generate(prompt, temp=0.0)
        out = [next(gen)]  # the prompt pass, not timed
        t0 = time.perf_counter()
        while len(out) < n + 1:
            out.append(next(gen))
        return out, time.perf_counter() - t0

    ref, _ = timed(plain)
    runs = [(name, depth, None) for name, depth in (("chain-1", 1), ("chain-2", 2), ("chain-3", 3))]
    runs += [(f"chain-3, {label}", 3, rates) for label, rates in REPLAYED.items()]
    llms = {name: Llama(path, n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False,
                        medusa_heads=ReplayDrafter(prompt + ref, depth, rates), medusa_choices=f"chain-{depth}")
            for name, depth, rates in runs}
    speedups, plain_s = {name: [] for name in llms}, []
    for _ in range(rounds):  # each variant beside a plain run of the same round: the median of the ratios
        out, t_plain = timed(plain)
        plain_s.append(t_plain)
        for name, llm in llms.items():
            out, t = timed(llm)
            if out != ref:
                raise RuntimeError(f"{name}: tree decoding differs from plain decoding")
            speedups[name].append(t_plain / t)
    rows = {}
    for name, _, rates in runs:
        rows[name] = {"speedup": statistics.median(speedups[name]),
                      "tokens_per_pass": llms[name].medusa_stats.mean_accepted}
        if rates is not None:
            rows[name]["expected_tokens_per_pass"] = chain_tokens_per_pass(rates)
    return {"plain_tok_s": n / statistics.median(plain_s), "trees": rows}


def stock_speed(path: str, threads: int, n: int = 16) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(path, n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.eval(list(range(100, 108)))
    t0 = time.perf_counter()
    for _ in range(n):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return n / (time.perf_counter() - t0)


def long_context_speed(engine_path: str, stock_path: str, threads: int, n: int = 1024, tokens: int = 8,
                       rounds: int = 3) -> Dict:
    """Decoding after an n-token context, where attention reads n cached keys and values per layer: the engine's
    single token and 4-node tree pass (median of rounds, each over `tokens` tokens), and stock llama-cpp-python's
    single token on the same weights converted (flash attention, as every stock run here)."""
    import llama_cpp

    from ..backbones.i2s.engine import BitnetModel

    prompt = [100 + (i * 7919) % 30000 for i in range(n)]
    m = BitnetModel(engine_path, n_ctx=n + 64, n_threads=threads)
    for c in range(0, n, 512):
        m.forward(prompt[c : c + 512], logits=False)
        m.commit(range(len(prompt[c : c + 512])))
    singles, trees = [], []
    for _ in range(rounds):
        s, tok = greedy_tokens(m, n, 1000, tokens)
        singles.append(s)
        m.truncate(n)
        t0 = time.perf_counter()
        m.forward([tok] * 4, [-1, 0, 0, 1])
        trees.append(time.perf_counter() - t0)
    del m
    llm = llama_cpp.Llama(stock_path, n_ctx=n + 64, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          flash_attn=True, verbose=False)
    llm.eval(prompt)
    stock = []
    for _ in range(rounds):
        llm.n_tokens = n
        t0 = time.perf_counter()
        for _ in range(tokens):
            llm.eval([1000])  # which token does not change the time
        stock.append((time.perf_counter() - t0) / tokens)
    return {"n": n, "s_per_token": statistics.median(singles), "tree4_s": statistics.median(trees),
            "stock_s_per_token": statistics.median(stock)}


def prompt_speed(engine_path: str, stock_path: str, threads: int, n: int = 512, rounds: int = 3) -> Dict:
    """Prompt processing: tokens/s of one n-token prompt through Llama.eval (n_batch = n, the last token's logits
    only), this engine against stock llama-cpp-python on the same weights converted, alternated, median of rounds."""

    import llama_cpp

    from ..llama import Llama

    prompt = [100 + (i * 7919) % 30000 for i in range(n)]
    kw = dict(n_ctx=n + 64, n_batch=n, n_ubatch=n, n_threads=threads, n_threads_batch=threads, verbose=False)
    ours, stock = Llama(engine_path, **kw), llama_cpp.Llama(stock_path, **kw)
    out = {"engine": [], "stock": []}
    for _ in range(rounds):
        for name, llm in (("engine", ours), ("stock", stock)):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            out[name].append(n / (time.perf_counter() - t0))
    return {"n": n, "engine_tok_s": statistics.median(out["engine"]), "stock_tok_s": statistics.median(out["stock"])}


def run(n_layers: int = 30, threads: int = None, log=print, tokenizer_from: str = None) -> Dict:
    from .. import _native
    from ..backbones.i2s.convert import convert
    from ..synth import write_bitnet
    from .bench import roofline

    threads = threads or os.cpu_count() or 1
    roof = roofline()
    roof["numpy_read_GBps"] = roof.pop("read_GBps")  # one thread: not a ceiling for a kernel on all of them
    roof["read_GBps"] = _native.read_bandwidth(0.5, threads) / 1e9  # every thread streaming, as the kernels do
    peaks = {}
    for ins in ("vpmaddubsw", "vpdpbusd", "vpdpbusd512", "vpshufb"):
        try:
            # the best of three: a ceiling is the highest rate the instruction reaches, and a neighbour on a shared
            # machine only ever lowers a probe
            peaks[ins] = max(_native.int8_peak(0.3, threads, ins) for _ in range(3)) / 1e9
        except ValueError:  # not in this build
            pass
    roof["int8_peak_GMACps"] = peaks
    s = {"threads": threads, "roofline": roof, "kernels": _native.ternary_kernels(), "gemm_by_kernel": {}}
    for kernel in s["kernels"]:
        if kernel == "scalar" and len(s["kernels"]) > 1:
            continue  # the reference, far slower: not a candidate where a vector kernel runs
        log(f"ternary GEMM at the 2B-4T shapes, {kernel} kernel ...")
        s["gemm_by_kernel"][kernel], s["ternary_bytes"] = gemm_table(n_layers, threads, kernel=kernel)
    s["kernel"] = _native.ternary_kernel()
    with tempfile.TemporaryDirectory() as d:
        log("writing a synthetic 2B-4T-shaped I2_S model (SiLU 'bitnet' arch, so stock llama.cpp runs it too) ...")
        src = write_bitnet(os.path.join(d, "bitnet.gguf"), n_embd=2560, n_layer=n_layers, n_head=20, n_head_kv=5,
                           n_ff=6912, n_vocab=128256, arch="bitnet", seed=0, tokenizer_from=tokenizer_from)
        s["engine"] = decode_speed(src, threads)
        log("plain and tree decoding through Llama (perfect drafts) ...")
        s["engine"]["perfect_drafts"] = tree_upper_bound(src, threads)
        s["engine"]["llama_api_tok_s"] = s["engine"]["perfect_drafts"]["plain_tok_s"]
        s["bytes_per_token"] = s["ternary_bytes"] + 128256 * 2560 * 2  # + the tied F16 output projection
        s["stock_tok_s"] = {}
        for to in ("tq2_0", "q2_0", "tq1_0"):
            log(f"converting to {to.upper()} and timing stock llama.cpp ...")
            dst = os.path.join(d, f"{to}.gguf")
            convert(src, dst, to=to, log=lambda m: None)
            s["stock_tok_s"][to] = stock_speed(dst, threads)
            if to == "tq2_0":
                log("a 512-token prompt: the engine against stock llama.cpp's TQ2_0 ...")
                s["prompt"] = prompt_speed(src, dst, threads)
                log("decoding after a 1,024-token context: the engine against stock llama.cpp's TQ2_0 ...")
                s["long_context"] = long_context_speed(src, dst, threads)
            os.remove(dst)
    return s


def format_table(s: Dict) -> str:
    r = s["roofline"]
    lines = [f"roofline ({s['threads']} threads, in this run): read {r['read_GBps']:.1f} GB/s (every thread streaming; "
             f"numpy on one thread: {r['numpy_read_GBps']:.1f}), int8 multiply-add peaks "
             + ", ".join(f"{k} {v:.0f} G {'lookups' if k == 'vpshufb' else 'MAC'}/s"
                         for k, v in r["int8_peak_GMACps"].items()),
             f"ternary GEMM over the 2B-4T matrices ({s['ternary_bytes'] / 1e9:.2f} GB of I2_S), by kernel "
             f"(the engine runs {s['kernel']}):",
             f"{'kernel':>12} {'M':>3} {'ms':>8} {'t(M)/t(1)':>9} {'GB/s':>6} {'of read':>7} {'G MAC/s':>8} "
             f"{'of peak':>7} {'of roofline':>11}"]
    for kernel, rows in s["gemm_by_kernel"].items():
        t1 = rows[0]["seconds"]
        for g in rows:
            peak = r["int8_peak_GMACps"].get(kernel_instruction(kernel, g["M"]))
            lines.append(f"{kernel:>12} {g['M']:3d} {g['seconds'] * 1e3:8.1f} {g['seconds'] / t1:9.2f} "
                         f"{g['GBps']:6.1f} {g['GBps'] / r['read_GBps']:7.0%} {g['GMACps']:8.1f} "
                         + (f"{g['GMACps'] / peak:7.0%}" if peak else f"{'':>7}")
                         + f" {roofline_share(g, r['read_GBps'], peak):11.0%}")
    e = s.get("engine")
    if e:
        roof_tok = r["read_GBps"] * 1e9 / s["bytes_per_token"]
        lines.append(f"engine decode: {e['tok_s']:.2f} tok/s (roofline of {s['bytes_per_token'] / 1e9:.2f} GB/token: "
                     f"{roof_tok:.2f} tok/s, {e['tok_s'] / roof_tok:.0%}); tree pass "
                     + ", ".join(f"T={k}: {v / e['s_per_token']:.2f}x one token" for k, v in e["tree_s"].items()))
        lines.append(f"engine through llama_medusa.Llama (llama.cpp tokenizer + sampler chain): "
                     f"{e['llama_api_tok_s']:.2f} tok/s")
        pb = e["perfect_drafts"]
        lines.append("tree decoding with replayed drafts (perfect unless rates are named; outputs identical): "
                     + ", ".join(f"{k} {v['speedup']:.2f}x ({v['tokens_per_pass']:.2f} tokens/pass)"
                                 for k, v in pb["trees"].items()))
        lines.append("stock llama.cpp on the same weights: " + ", ".join(
            f"{to.upper()} {v:.2f} tok/s" for to, v in s["stock_tok_s"].items()))
    if s.get("prompt"):
        pp = s["prompt"]
        lines.append(f"a {pp['n']}-token prompt through Llama.eval: engine {pp['engine_tok_s']:.1f} tok/s, stock "
                     f"llama.cpp TQ2_0 {pp['stock_tok_s']:.1f} tok/s ({pp['engine_tok_s'] / pp['stock_tok_s']:.2f}x)")
    if s.get("long_context") and e:
        lc = s["long_context"]
        lines.append(f"after a {lc['n']}-token context: engine {1 / lc['s_per_token']:.2f} tok/s "
                     f"({lc['s_per_token'] / e['s_per_token']:.2f}x the short context's token), tree pass T=4: "
                     f"{lc['tree4_s'] / lc['s_per_token']:.2f}x one token; stock llama.cpp TQ2_0 "
                     f"{1 / lc['stock_s_per_token']:.2f} tok/s ({lc['stock_s_per_token'] / lc['s_per_token']:.2f}x "
                     "the engine's time)")
    return "\n".join(lines)


def main(args) -> int:
    from ..default_model import default_model_path

    # SmolLM2's tokenizer, padded to 2B-4T's 128,256 entries: stock llama.cpp needs one to load the model
    s = run(args.layers, args.threads, log=lambda m: print(m, file=sys.stderr), tokenizer_from=default_model_path())
    print(format_table(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0
