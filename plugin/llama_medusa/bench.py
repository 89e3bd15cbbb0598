"""`llama-medusa bench`: stock llama-cpp-python and Medusa side by side on the same prompts, greedy.

Both run in one process on the same machine, interleaved prompt by prompt, each measured `runs` times (median),
so machine noise hits both alike. Next to the speedups it prints what bounds them on this machine: the backbone's
verify cost t(T)/t(1) and a read-bandwidth / arithmetic roofline measured in the same run.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

# Chat and code prompts written for the bench (not drawn from any training set).
DEFAULT_PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "What are the main differences between a cat and a dog as pets?",
    "Write a JavaScript function that removes duplicate values from an array.",
    "Give me a short plan for learning to play the guitar.",
    "Explain what a binary search is and when to use it.",
]


def roofline(seconds: float = 0.5) -> Dict[str, float]:
    """Read bandwidth (numpy sum over 256 MB, best of a few) and f32 matmul rate of this machine, now."""
    import numpy as np

    a = np.ones(64 * 1024 * 1024, dtype=np.float32)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    m = np.ones((1024, 1024), dtype=np.float32)
    t_mm = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        m @ m
        t_mm = min(t_mm, time.perf_counter() - t0)
    return {"read_GBps": a.nbytes / best / 1e9, "f32_GFLOPs": 2 * 1024**3 / t_mm / 1e9}


def verify_cost(llm, sizes=(1, 2, 4, 8, 16, 32), repeats: int = 5) -> Dict[int, float]:
    """Median llama_decode time of T tokens (all with logits) after a short prefix, per T: the backbone's price of
    verifying a T-node tree."""
    import llama_cpp

    out = {}
    prefix = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 4)
    batch = llama_cpp.llama_batch_init(max(sizes) + len(prefix), 0, 1)
    ctx, mem = llm._ctx.ctx, llama_cpp.llama_get_memory(llm._ctx.ctx)

    def decode(toks, p0):
        for i, t in enumerate(toks):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p0 + i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(toks)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed while measuring the verify cost")

    llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
    decode(prefix, 0)
    for T in sizes:
        times = []
        for _ in range(repeats):
            llama_cpp.llama_memory_seq_rm(mem, -1, len(prefix), -1)
            t0 = time.perf_counter()
            decode([prefix[i % len(prefix)] for i in range(T)], len(prefix))
            times.append(time.perf_counter() - t0)
        out[T] = statistics.median(times)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
    llm.n_tokens = 0
    return out


def _timed_chat(llm, prompt: str, max_tokens: int):
    t0 = time.perf_counter()
    r = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                   temperature=0.0)
    dt = time.perf_counter() - t0
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"], dt


def run_bench(model: Optional[str] = None, heads: Optional[str] = None, prompts: Optional[List[str]] = None,
              max_tokens: int = 128, runs: int = 3, choices="small", n_threads: Optional[int] = None,
              n_threads_batch: Optional[int] = None, n_ctx: int = 2048, log=print) -> dict:
    import llama_cpp

    from .llama import Llama
    from .models import default_model_path

    model = model or default_model_path()
    if heads is None:
        from .shipped import default_heads_path

        heads = default_heads_path(model)
    prompts = prompts or DEFAULT_PROMPTS
    common = dict(n_ctx=n_ctx, flash_attn=True, verbose=False, n_threads=n_threads, n_threads_batch=n_threads_batch)
    stock = llama_cpp.Llama(model, **common)
    med = Llama(model, medusa_heads=heads, medusa_choices=choices, **common)
    roof = roofline()
    cost = verify_cost(stock)
    rows = []
    for i, p in enumerate(prompts):
        s_times, m_times, stats = [], [], []
        for _ in range(runs):
            s_text, s_n, s_dt = _timed_chat(stock, p, max_tokens)
            m_text, m_n, m_dt = _timed_chat(med, p, max_tokens)
            s_times.append(s_dt)
            m_times.append(m_dt)
            stats.append(med.medusa_stats)
        st = stats[-1]
        row = {
            "prompt": p, "tokens": s_n, "identical": s_text == m_text and s_n == m_n,
            "stock_tok_s": s_n / statistics.median(s_times), "medusa_tok_s": m_n / statistics.median(m_times),
            "mean_accepted": st.mean_accepted, "head_acceptance": st.head_acceptance,
            "time_split_ms": {"verify": st.time_verify * 1e3, "heads": st.time_heads * 1e3,
                              "sample": st.time_sample * 1e3, "bookkeeping": st.time_bookkeeping * 1e3},
        }
        row["speedup"] = row["medusa_tok_s"] / row["stock_tok_s"]
        rows.append(row)
        log(f"[{i + 1}/{len(prompts)}] {row['stock_tok_s']:.1f} -> {row['medusa_tok_s']:.1f} tok/s "
            f"({row['speedup']:.2f}x), {row['mean_accepted']:.2f} tokens/pass, identical={row['identical']}")
    speedups = [r["speedup"] for r in rows]
    acc = [r["mean_accepted"] for r in rows]
    n_heads = max(len(r["head_acceptance"]) for r in rows)
    summary = {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), **roof},
        "model": os.path.basename(model), "heads": os.path.basename(str(heads)),
        "tree": med.medusa_tree.choices, "tree_nodes": len(med.medusa_tree), "runs": runs,
        "max_tokens": max_tokens,
        "verify_cost_ms": {str(k): v * 1e3 for k, v in cost.items()},
        "verify_cost_ratio": {str(k): v / cost[1] for k, v in cost.items()},
        "speedup_median": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
        "mean_accepted": statistics.mean(acc),
        "head_acceptance": [statistics.mean(r["head_acceptance"][d] for r in rows if d < len(r["head_acceptance"]))
                            for d in range(n_heads)],
        "all_identical": all(r["identical"] for r in rows),
        "prompts": rows,
    }
    return summary


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def format_table(s: dict) -> str:
    m = s["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; read {m['read_GBps']:.1f} GB/s, f32 matmul {m['f32_GFLOPs']:.0f} GFLOP/s",
        f"model {s['model']}, heads {s['heads']}, tree {s['tree_nodes']} nodes, {s['max_tokens']} tokens, "
        f"median of {s['runs']} runs",
        "verify cost t(T)/t(1): " + ", ".join(f"T={k}: {v:.2f}" for k, v in s["verify_cost_ratio"].items())
        + f"  (t(1) = {s['verify_cost_ms']['1']:.1f} ms)",
        "",
        f"{'prompt':44s} {'stock tok/s':>11s} {'medusa tok/s':>12s} {'speedup':>8s} {'acc/pass':>8s} {'same':>5s}",
    ]
    for r in s["prompts"]:
        lines.append(f"{r['prompt'][:44]:44s} {r['stock_tok_s']:11.1f} {r['medusa_tok_s']:12.1f} "
                     f"{r['speedup']:7.2f}x {r['mean_accepted']:8.2f} {'yes' if r['identical'] else 'NO':>5s}")
    lines += [
        "",
        f"speedup median {s['speedup_median']:.2f}x (min {s['speedup_min']:.2f}, max {s['speedup_max']:.2f}); "
        f"mean accepted {s['mean_accepted']:.2f} tokens/pass; per-head acceptance "
        + ", ".join(f"{a:.2f}" for a in s["head_acceptance"]),
        f"outputs identical to stock: {'all' if s['all_identical'] else 'NOT all'}",
    ]
    return "\n".join(lines)


def main(args) -> int:
    prompts = None
    if args.prompts:
        prompts = read_prompts(args.prompts)
    s = run_bench(model=args.model, heads=args.heads, prompts=prompts, max_tokens=args.max_tokens, runs=args.runs,
                  choices=args.choices, n_threads=args.threads, n_threads_batch=args.threads_batch,
                  log=lambda msg: print(msg, file=sys.stderr))
    print(format_table(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0 if s["all_identical"] else 1


def read_prompts(path: str) -> List[str]:
    """One prompt per line (blank lines skipped), or a JSON list of strings."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the prompt file is not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    if "\x00" in text:
        raise ValueError(f"{path}: the prompt file is not text (it contains NUL bytes)")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: looks like JSON but does not parse ({e})") from None
        if not all(isinstance(x, str) for x in items):
            raise ValueError(f"{path}: a JSON prompt file must be a list of strings")
        prompts = [x for x in items if x.strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts in the file")
    return prompts
