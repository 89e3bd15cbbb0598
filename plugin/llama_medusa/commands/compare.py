"""`llama-medusa bench --variants`: several drafters and trees side by side with stock, in one run.

Each variant is HEADS[:CHOICES] (HEADS: a heads file, an EAGLE file or checkpoint, or "shipped"; CHOICES: any
medusa_choices, default "auto"). Every engine runs on the same thread settings (the machine's default unless
given), prompts are interleaved engine by engine, and each figure is the median of `runs`. Per variant: tokens per
pass, speedup over stock, draft time per step as a fraction of stock's t(1), and whether every output was identical.
"""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence


def parse_variant(text: str):
    heads, _, choices = text.partition(":")
    return heads, (choices or "auto")


def run_compare(model: Optional[str], variants: Sequence[str], prompts: Sequence[str], max_tokens: int = 128,
                runs: int = 3, n_threads: Optional[int] = None, n_threads_batch: Optional[int] = None,
                n_ctx: int = 2048, lookup: int = 0, log=print) -> Dict:
    import llama_cpp

    from ..default_model import check_model_path, default_model_path
    from ..drafting import autotree
    from ..llama import Llama
    from .bench import _timed_chat, roofline

    model = model or default_model_path()
    check_model_path(model)
    common = dict(n_ctx=n_ctx, flash_attn=True, verbose=False, n_threads=n_threads, n_threads_batch=n_threads_batch)
    stock = llama_cpp.Llama(model, **common)
    common.update(n_threads=stock.n_threads, n_threads_batch=stock.n_threads_batch)  # one setting for all sides
    engines = {"stock": stock}
    for v in variants:
        heads, choices = parse_variant(v)
        engines[v] = Llama(model, medusa_heads="auto" if heads == "shipped" else heads, medusa_choices=choices,
                           medusa_lookup=lookup, **common)
    t1 = autotree.cost_curve(engines[variants[0]], sizes=(1,))[1] if variants else None
    roof = roofline()
    per: Dict[str, Dict[str, List]] = {k: {"tok_s": [], "tpp": [], "draft": [], "same": []} for k in engines}
    for i, p in enumerate(prompts):
        times: Dict[str, List[float]] = {k: [] for k in engines}
        texts, ntok = {}, {}
        for _ in range(runs):
            for name, llm in engines.items():
                texts[name], ntok[name], dt, _ = _timed_chat(llm, p, max_tokens)
                times[name].append(dt)
        for name, llm in engines.items():
            per[name]["tok_s"].append(ntok[name] / statistics.median(times[name]))
            per[name]["same"].append(texts[name] == texts["stock"])
            st = getattr(llm, "medusa_stats", None)
            if name != "stock" and st is not None:
                per[name]["tpp"].append(st.tokens / st.steps if st.steps else 1.0)
                per[name]["draft"].append(st.time_heads / st.steps if st.steps else 0.0)
        log(f"[{i + 1}/{len(prompts)}] " + ", ".join(f"{k} {per[k]['tok_s'][-1]:.1f}" for k in engines) + " tok/s")
    rows = []
    base = per["stock"]["tok_s"]
    for name in variants:
        d = per[name]
        ratios = [a / b for a, b in zip(d["tok_s"], base)]
        rows.append({"variant": name, "speedup_median": statistics.median(ratios), "speedup_min": min(ratios),
                     "tokens_per_pass": statistics.median(d["tpp"]) if d["tpp"] else 1.0,
                     "draft_ms_per_step": 1e3 * statistics.median(d["draft"]) if d["draft"] else 0.0,
                     "draft_vs_t1": (statistics.median(d["draft"]) / t1) if (d["draft"] and t1) else 0.0,
                     "identical": f"{sum(d['same'])}/{len(d['same'])}",
                     "per_step_tree": getattr(engines[name]._medusa, "dynamic", False),
                     "tok_s_median": statistics.median(d["tok_s"])})
    return {"model": model, "threads": [common["n_threads"], common["n_threads_batch"]],
            "stock_tok_s_median": statistics.median(base), "t1_ms": (t1 or 0) * 1e3, "roofline": roof,
            "cpu": autotree.cpu_name(), "rows": rows, "prompts": len(prompts), "runs": runs,
            "max_tokens": max_tokens}


def table(res: Dict) -> str:
    out = [f"{res['cpu']}, threads {res['threads']}, stock {res['stock_tok_s_median']:.1f} tok/s, t(1) "
           f"{res['t1_ms']:.2f} ms, {res['prompts']} prompts x {res['runs']} runs, {res['max_tokens']} tokens",
           "| variant | tokens/pass | speedup (median, min) | draft ms/step (of t(1)) | identical |",
           "|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['variant']} | {r['tokens_per_pass']:.2f} | {r['speedup_median']:.2f}x, "
                   f"{r['speedup_min']:.2f}x | {r['draft_ms_per_step']:.2f} ({r['draft_vs_t1']:.0%}) | "
                   f"{r['identical']} |")
    return "\n".join(out)
