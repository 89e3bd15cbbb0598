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
from typing import Dict, List, Optional, Sequence

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


def divergence(stock, stock_ids: List[int], other_ids: List[int]) -> Optional[dict]:
    """Where two greedy runs first differ and how close stock's own choice was there: the gap between stock's two
    best logits at that position (prefix re-evaluated by stock). A gap of the order of the backbone's batch-vs-single
    rounding (F16 on CPU: ~0.03) is a near-tie, not a bug."""
    import llama_cpp
    import numpy as np

    i = next((j for j, (a, b) in enumerate(zip(stock_ids, other_ids)) if a != b), None)
    if i is None:
        return None
    stock.reset()
    stock.eval(stock_ids[:i])
    ptr = llama_cpp.llama_get_logits_ith(stock._ctx.ctx, -1)  # stock keeps no scores without logits_all
    row = np.ctypeslib.as_array(ptr, shape=(stock.n_vocab(),)).astype(np.float64)
    top = np.argsort(-row)[:2]
    return {"position": i, "stock_token": int(stock_ids[i]), "other_token": int(other_ids[i]),
            "top2_gap": float(row[top[0]] - row[top[1]])}


def _timed_chat(llm, prompt: str, max_tokens: int):
    t0 = time.perf_counter()
    r = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                   temperature=0.0)
    dt = time.perf_counter() - t0
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"], dt, r["usage"]["prompt_tokens"]


def run_bench(model: Optional[str] = None, heads: Optional[str] = None, prompts: Optional[List[str]] = None,
              max_tokens: int = 128, runs: int = 3, choices="auto", n_threads: Optional[int] = None,
              n_threads_batch: Optional[int] = None, n_ctx: int = 2048, peer: bool = True,
              sweep: Sequence = (), log=print, n_gpu_layers: int = 0, lookup: int = 8, thread_peers: bool = True,
              llama_bench: Optional[str] = None) -> dict:
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from ..backbones.llamacpp import thread_counts
    from ..default_model import check_model_path, default_model_path
    from ..drafting import autotree
    from ..llama import Llama

    if runs < 1 or max_tokens < 1:
        raise ValueError(f"runs and max_tokens must be at least 1 (got runs={runs}, max_tokens={max_tokens})")
    model = model or default_model_path()
    check_model_path(model)
    if heads is None:
        from ..heads.shipped import shipped_heads_for

        heads = shipped_heads_for(model, flag="--heads")
    prompts = prompts or DEFAULT_PROMPTS
    common = dict(n_ctx=n_ctx, flash_attn=True, verbose=False, n_threads=n_threads, n_threads_batch=n_threads_batch,
                  n_gpu_layers=n_gpu_layers)
    roof = roofline()
    if n_gpu_layers:
        from .. import gpu

        if gpu.available():  # the GPU's own roofline beside the CPU's: its copy rate, read + written
            g = gpu.module()
            roof.update(gpu=g.device_name(), gpu_copy_GBps=g.copy_bandwidth(1 << 30, 20) / 1e9)
    engines = {"stock": llama_cpp.Llama(model, **common)}
    # stock at every thread count worth trying: the comparison a user makes is with stock at its best
    counts = thread_counts() if (thread_peers and not n_gpu_layers) else []
    for n in counts:
        if n != engines["stock"].n_threads:
            engines[f"stock@{n}"] = llama_cpp.Llama(model, **dict(common, n_threads=n))
    med = Llama(model, medusa_heads=heads, medusa_choices=choices, medusa_lookup=lookup, **common)
    engines["medusa"] = med
    if peer:
        engines["lookup"] = llama_cpp.Llama(model, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4),
                                            logits_all=True, **common)
    cost = autotree.cost_curve(med)
    rows = []
    for i, p in enumerate(prompts):
        times = {k: [] for k in engines}
        texts, ntok, stats = {}, {}, []
        ids, n_prompt = {}, 0
        for _ in range(runs):
            for name, llm in engines.items():
                texts[name], ntok[name], dt, n_prompt = _timed_chat(llm, p, max_tokens)
                times[name].append(dt)
                ids[name] = [int(t) for t in llm.input_ids[: llm.n_tokens]]
            stats.append(med.medusa_stats)
        st = stats[-1]
        row = {"prompt": p, "tokens": ntok["stock"],
               "identical": texts["medusa"] == texts["stock"] and ntok["medusa"] == ntok["stock"]}
        for name in engines:
            row[f"{name}_tok_s"] = ntok[name] / statistics.median(times[name])
        row["speedup"] = row["medusa_tok_s"] / row["stock_tok_s"]
        for n in counts:  # stock at each thread count (its own default among them)
            name = "stock" if n == engines["stock"].n_threads else f"stock@{n}"
            row[f"stock_{n}t_tok_s"] = row[f"{name}_tok_s"]
            row[f"stock_{n}t_identical"] = texts[name] == texts["stock"]
        if not row["identical"]:
            row["divergence"] = divergence(engines["stock"], ids["stock"], ids["medusa"])
        # what the lookup alone would give on stock's answer to this very prompt, by the replay `auto` decides with
        replay = med.replay_lookup([(ids["stock"], n_prompt)])
        if replay:
            row["lookup_replay"] = replay[0]
            row["lookup_oracle"] = med.lookup_oracle([(ids["stock"], n_prompt)])[0]  # a gate that knew the answer
        if peer:
            row["lookup_speedup"] = row["lookup_tok_s"] / row["stock_tok_s"]
            row["lookup_identical"] = texts["lookup"] == texts["stock"]
        # no steps: `auto` decoded plainly, in stock's loop (one token per pass)
        row.update(mean_accepted=st.mean_accepted if st.steps else 1.0, head_acceptance=st.head_acceptance,
                   accepted_lengths=st.accepted_lengths,
                   steps=st.steps, medusa_tokens=st.tokens, lookup_nodes=st.lookup_nodes,
                   lookup_accepted=st.lookup_accepted,
                   answers_nodes=st.answers_nodes, answers_accepted=st.answers_accepted,
                   time_split_ms={"verify": st.time_verify * 1e3, "heads": st.time_heads * 1e3,
                                  "sample": st.time_sample * 1e3, "bookkeeping": st.time_bookkeeping * 1e3})
        rows.append(row)
        log(f"[{i + 1}/{len(prompts)}] stock {row['stock_tok_s']:.1f} tok/s, medusa {row['medusa_tok_s']:.1f} "
            f"({row['speedup']:.2f}x, {row['mean_accepted']:.2f} tokens/pass), identical={row['identical']}")
    speedups = [r["speedup"] for r in rows]
    threads = {}
    if counts:  # stock's best thread count over the prompts, and Medusa against it prompt by prompt
        med_stock = {n: statistics.median(r[f"stock_{n}t_tok_s"] for r in rows) for n in counts}
        best = max(med_stock, key=med_stock.get)
        for r in rows:
            r["speedup_vs_stock_best"] = r["medusa_tok_s"] / r[f"stock_{best}t_tok_s"]
        vs_best = [r["speedup_vs_stock_best"] for r in rows]
        threads = {"stock_threads_tok_s": med_stock, "stock_best_threads": best,
                   "speedup_vs_stock_best_median": statistics.median(vs_best),
                   "speedup_vs_stock_best_min": min(vs_best)}
    if med.medusa_auto and "threads" in med.medusa_auto:
        threads["medusa_threads"] = list(med.medusa_auto["threads"])
        threads["medusa_threads_would_choose"] = list(med.medusa_auto["threads_would_choose"])
        threads["medusa_threads_options"] = [dict(o, threads=list(o["threads"]))
                                             for o in med.medusa_auto["threads_options"]]
    if llama_bench:
        threads["native"] = native_tg(llama_bench, model, counts or [engines["stock"].n_threads], max_tokens, log)
    n_heads = max(len(r["head_acceptance"]) for r in rows)
    tree = med.medusa_tree
    split = {k: sum(r["time_split_ms"][k] for r in rows) for k in rows[0]["time_split_ms"]}
    summary = {
        "machine": {"cpu": autotree.cpu_name(), "cores": os.cpu_count(), **roof},
        "model": os.path.basename(model), "heads": os.path.basename(str(heads)),
        "choices": choices if isinstance(choices, str) else "custom",
        "tree": tree.choices, "tree_nodes": len(tree), "lookup": lookup,
        "per_step_tree": (med.medusa_auto or {}).get("per_step_tree"), "runs": runs, "max_tokens": max_tokens,
        "verify_cost_ms": {str(k): v * 1e3 for k, v in cost.items()},
        "verify_cost_ratio": {str(k): v / cost[1] for k, v in cost.items()},
        "speedup_median": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
        "mean_accepted": statistics.mean(r["mean_accepted"] for r in rows),
        "tokens_per_pass": (sum(r["medusa_tokens"] for r in rows) / sum(r["steps"] for r in rows)
                            if any(r["steps"] for r in rows) else 1.0),
        "head_acceptance": [statistics.mean(r["head_acceptance"][d] for r in rows if d < len(r["head_acceptance"]))
                            for d in range(n_heads)],
        # passes by drafted tokens kept, over all prompts (last run of each); empty when stock's loop ran
        "accepted_lengths": [sum(r["accepted_lengths"][j] for r in rows if j < len(r["accepted_lengths"]))
                             for j in range(max(len(r["accepted_lengths"]) for r in rows))],
        "time_split_ms": split,
        **{k: sum(r[k] for r in rows) for k in ("lookup_nodes", "lookup_accepted", "answers_nodes",
                                                 "answers_accepted")},
        "overhead_fraction": (split["heads"] + split["sample"] + split["bookkeeping"]) / max(sum(split.values()), 1e-9),
        "all_identical": all(r["identical"] for r in rows),
        **threads,
        "divergences": [dict(r["divergence"], prompt=r["prompt"]) for r in rows if r.get("divergence")],
        "prompts": rows,
    }
    if med.medusa_auto:
        summary["predicted_speedup"] = med.medusa_auto["predicted_speedup"]
        if "lookup" in med.medusa_auto:  # no heads tree: whether the lookup runs alone, and its replay
            summary["lookup_alone"] = med.medusa_auto["lookup"]
            summary["lookup_predicted_speedup"] = med.medusa_auto["lookup_predicted_speedup"]
        walked = [r for r in rows if "lookup_replay" in r]  # each with its oracle too
        if walked:
            summary["lookup_replay_median"] = statistics.median(r["lookup_replay"] for r in walked)
            summary["lookup_oracle_median"] = statistics.median(r["lookup_oracle"] for r in walked)
        summary["perfect_bound"] = med.medusa_auto["perfect_bound"]
    if peer:
        summary["lookup_speedup_median"] = statistics.median(r["lookup_speedup"] for r in rows)
        summary["lookup_all_identical"] = all(r["lookup_identical"] for r in rows)
    if sweep:
        n_heads_loaded = med._medusa.drafter.n_heads
        summary["sweep"] = run_sweep(model, heads, prompts, max_tokens, sweep, common, engines["stock"],
                                     n_heads_loaded, log, lookup)
    return summary


def run_sweep(model, heads, prompts, max_tokens, trees, common, stock, n_heads, log, lookup: int = 8) -> List[dict]:
    """Tokens/s and tokens per pass of each candidate tree on the same prompts (one run each), beside stock, for
    checking "auto" and for the acceptance of the best tree. An entry is a tree (preset, list of paths, or
    "grown-N": the greedy tree of N nodes from the heads' accuracies) or (tree, lookup tokens); trees are cut to
    the depth the loaded heads can fill."""
    from ..drafting import autotree
    from ..drafting.tree import resolve_choices
    from ..heads import load_heads
    from ..llama import Llama

    out = []
    stock_runs, stock_ids = [], []
    for p in prompts:  # (text, tokens, seconds, prompt tokens) and the token ids, once for all trees
        stock_runs.append(_timed_chat(stock, p, max_tokens))
        stock_ids.append([int(t) for t in stock.input_ids[: stock.n_tokens]])
    base = sum(dt for _, _, dt, _ in stock_runs)
    acc = None  # the heads' accuracy table, read once for the "grown-N" entries
    for entry in trees:
        choice, lk = entry if isinstance(entry, tuple) else (entry, lookup)
        if isinstance(choice, str) and choice.startswith("grown-"):
            if acc is None:  # the accuracies stored in either kind of heads file
                acc = autotree.accuracy_table_of(load_heads(heads), 10)
            paths = [p for p, _ in autotree.grow_tree(acc, int(choice[6:]))]
        else:
            paths = [p for p in resolve_choices(choice) if len(p) <= n_heads]
        llm = Llama(model, medusa_heads=heads, medusa_choices=paths, medusa_lookup=lk, **common)
        total, toks, steps, differ = 0.0, 0, 0, []
        for p, (stock_text, _, _, _), want in zip(prompts, stock_runs, stock_ids):
            text, _, dt, _ = _timed_chat(llm, p, max_tokens)
            total += dt
            toks, steps = toks + llm.medusa_stats.tokens, steps + llm.medusa_stats.steps
            if text != stock_text:
                got = [int(t) for t in llm.input_ids[: llm.n_tokens]]
                differ.append(dict(divergence(stock, want, got) or {"position": None, "top2_gap": None}, prompt=p))
        name = (choice if isinstance(choice, str) else f"{len(paths)} nodes") + (f" +lookup {lk}" if lk else "")
        same = not differ
        out.append({"tree": name, "nodes": len(llm.medusa_tree), "lookup": lk, "speedup": base / total,
                    "mean_accepted": toks / max(steps, 1), "identical": same, "divergences": differ})
        log(f"sweep {name}: {base / total:.2f}x, {toks / max(steps, 1):.2f} tokens/pass, identical={same}")
    return out


def native_tg(binary: str, model: str, counts: Sequence[int], n: int, log=print) -> Dict[str, float]:
    """Native llama.cpp's token generation rate (llama-bench tg<n>, flash attention on, 3 repetitions) at each
    thread count: {threads: tok/s}."""
    import shutil
    import subprocess

    path = shutil.which(binary) or binary
    if not os.path.isfile(path):
        raise ValueError(f"llama-bench not found: {binary} (build llama.cpp's llama-bench, or leave --llama-bench out)")
    cmd = [path, "-m", model, "-p", "0", "-n", str(n), "-fa", "1", "-r", "3", "-o", "json",
           "-t", ",".join(str(c) for c in counts)]
    log("native: " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return {str(e["n_threads"]): float(e["avg_ts"]) for e in json.loads(r.stdout) if e.get("n_gen")}


def format_table(s: dict) -> str:
    m = s["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; read {m['read_GBps']:.1f} GB/s, f32 matmul {m['f32_GFLOPs']:.0f} GFLOP/s",
        f"model {s['model']}, heads {s['heads']}, tree ({s['choices']}) {s['tree_nodes']} nodes, "
        f"{s['max_tokens']} tokens, median of {s['runs']} runs",
        "verify cost t(T)/t(1): " + ", ".join(f"T={k}: {v:.2f}" for k, v in s["verify_cost_ratio"].items())
        + f"  (t(1) = {s['verify_cost_ms']['1']:.1f} ms)",
        "",
        f"{'prompt':40s} {'stock tok/s':>11s} {'medusa tok/s':>12s} {'speedup':>8s} {'acc/pass':>8s} {'same':>5s}"
        + (f" {'replay':>7s} {'oracle':>7s}" if "lookup_replay_median" in s else "")
        + (f" {'lookup':>8s}" if "lookup_speedup_median" in s else ""),
    ]
    for r in s["prompts"]:
        lines.append(f"{r['prompt'][:40]:40s} {r['stock_tok_s']:11.1f} {r['medusa_tok_s']:12.1f} "
                     f"{r['speedup']:7.2f}x {r['mean_accepted']:8.2f} {'yes' if r['identical'] else 'NO':>5s}"
                     + (f" {r['lookup_replay']:6.2f}x {r['lookup_oracle']:6.2f}x" if "lookup_replay" in r else "")
                     + (f" {r['lookup_speedup']:7.2f}x" if "lookup_speedup" in r else ""))
    lines += [
        "",
        f"speedup median {s['speedup_median']:.2f}x (min {s['speedup_min']:.2f}, max {s['speedup_max']:.2f}); "
        f"mean accepted {s['mean_accepted']:.2f} tokens/pass ({s['tokens_per_pass']:.2f} over all passes; lookup "
        f"branch up to {s['lookup']} tokens); acceptance by tree depth "
        + ", ".join(f"{a:.2f}" for a in s["head_acceptance"]),
        "passes by tokens they gave (last run): " + (", ".join(f"{j + 1}: {n}" for j, n in
                                                       enumerate(s["accepted_lengths"])) or "stock's loop ran"),
        f"lookup (last run): {s['lookup_accepted']} of {s['lookup_nodes']} grafted tokens accepted, of which from the "
        f"model's stored answers {s['answers_accepted']} of {s['answers_nodes']}",
        f"outputs identical to stock: {'all' if s['all_identical'] else 'NOT all'}",
        *[f"  differs at token {d['position']} (prompt + answer): stock's top-2 logit gap there {d['top2_gap']:.4f} "
          f"({d['prompt'][:40]!r})" for d in s["divergences"]],
        "time split (all prompts, last run): " + ", ".join(f"{k} {v:.0f} ms" for k, v in s["time_split_ms"].items())
        + f"; heads + Python bookkeeping = {s['overhead_fraction']:.0%} of the speculative time",
    ]
    if "predicted_speedup" in s:
        what = "tree"
        if "lookup_alone" in s:  # no heads tree: the lookup alone, kept or not by its replay over the reference texts
            what = ("lookup alone" if s["lookup_alone"] else "plain decoding, stock's loop") + \
                f" (the lookup replays at {s['lookup_predicted_speedup']:.2f}x on the heads file's reference texts"
            if "lookup_replay_median" in s:  # the same replay over stock's answers to the bench's prompts
                what += (f", {s['lookup_replay_median']:.2f}x on stock's answers to these prompts (column 'replay'), "
                         f"{s['lookup_oracle_median']:.2f}x there for a gate that knew which drafts are right "
                         "(column 'oracle')")
            what += ")"
        lines.append(f"auto {what}: predicted {s['predicted_speedup']:.2f}x, measured median "
                     f"{s['speedup_median']:.2f}x; perfect heads on this cost curve: {s['perfect_bound']:.2f}x")
    if "stock_threads_tok_s" in s:
        lines.append("stock by thread count (median tok/s over prompts): " + ", ".join(
            f"{n} threads {v:.1f}" for n, v in s["stock_threads_tok_s"].items())
            + f"; Medusa against stock at its best ({s['stock_best_threads']} threads): median "
            f"{s['speedup_vs_stock_best_median']:.2f}x, min {s['speedup_vs_stock_best_min']:.2f}x")
    if "medusa_threads" in s:
        n, nb = s["medusa_threads"]
        lines.append(f"Medusa ran {n} threads for single tokens, {nb} for batches (auto would choose "
                     f"{tuple(s['medusa_threads_would_choose'])})")
    if "native" in s:
        lines.append("native llama.cpp (llama-bench tg): " + ", ".join(f"{n} threads {v:.1f} tok/s"
                                                                      for n, v in s["native"].items()))
    if "lookup_speedup_median" in s:
        lines.append(f"peer: llama-cpp-python prompt-lookup speculation {s['lookup_speedup_median']:.2f}x median, "
                     f"identical {'all' if s['lookup_all_identical'] else 'NOT all'}")
    for w in s.get("sweep", []):
        gaps = [d["top2_gap"] for d in w.get("divergences", []) if d["top2_gap"] is not None]
        lines.append(f"sweep: {w['tree']:>24s} ({w['nodes']:2d} nodes) {w['speedup']:.2f}x, "
                     f"{w['mean_accepted']:.2f} tokens/pass" + ("" if w["identical"] else
                     f", {len(w['divergences'])} outputs differ (stock's top-2 gaps there: "
                     + ", ".join(f"{g:.4f}" for g in gaps) + ")"))
    return "\n".join(lines)


def main(args) -> int:
    import shutil

    from .prompts import read_prompts

    prompts = None
    if args.prompts:
        prompts = read_prompts(args.prompts)
    if args.variants:  # several drafters and trees side by side with stock (compare.py)
        from .compare import run_compare, table

        res = run_compare(args.model, args.variants.split(","), prompts or DEFAULT_PROMPTS, args.max_tokens, args.runs,
                          args.threads, args.threads_batch, lookup=args.lookup or 0,
                          log=lambda msg: print(msg, file=sys.stderr))
        print(table(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return 0 if all(r["identical"].split("/")[0] == r["identical"].split("/")[1] for r in res["rows"]) else 1
    sweep = SWEEP_TREES if args.sweep else ()
    s = run_bench(model=args.model, heads=args.heads, prompts=prompts, max_tokens=args.max_tokens, runs=args.runs,
                  choices=args.choices, n_threads=args.threads, n_threads_batch=args.threads_batch,
                  peer=not args.no_peer, sweep=sweep, log=lambda msg: print(msg, file=sys.stderr),
                  n_gpu_layers=args.n_gpu_layers, lookup=8 if args.lookup is None else args.lookup,
                  thread_peers=not args.no_thread_peers,
                  llama_bench=args.llama_bench or shutil.which("llama-bench"))
    print(format_table(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    if args.plot:
        plot(s, args.plot)
    return 0 if s["all_identical"] else 1


# Trees the sweep tries, each with the lookup branch (ungated: a fixed tree has no cost curve), then chain-1 and
# the biggest without it (heads alone) and lookup alone.
# "grown-52": the greedy tree from the heads' accuracies, 52 nodes leaving room in a 63-token batch for 8 lookup
# tokens and 3 re-decoded ones.
SWEEP_TREES = ("chain-1", "chain-2", "chain-3", "small", [[0], [1], [0, 0], [2], [0, 1], [1, 0], [0, 0, 0], [3],
                [0, 2], [1, 1], [2, 0], [0, 0, 1], [4], [0, 3], [0, 0, 0, 0]], "mc_sim_7b_63", "grown-52",
               ("chain-1", 0), ("grown-52", 0), ([], 8))


def plot(s: dict, path: str):
    """tokens/s per prompt, the histogram of tokens per pass, and the verify cost curve (needs matplotlib); returns
    the figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'llama-medusa[plot]'") from None
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    idx = range(len(s["prompts"]))
    ax[0].bar([i - 0.2 for i in idx], [r["stock_tok_s"] for r in s["prompts"]], 0.4, label="stock")
    ax[0].bar([i + 0.2 for i in idx], [r["medusa_tok_s"] for r in s["prompts"]], 0.4, label="medusa")
    ax[0].set(title="tokens/s per prompt", xlabel="prompt")
    ax[0].legend(loc="lower right")
    hist = s["accepted_lengths"]
    if hist:  # a pass that kept j drafted tokens gave j + 1
        ax[1].bar(range(1, len(hist) + 1), hist)
    else:
        ax[1].text(0.5, 0.5, "stock's loop ran:\none token per pass", ha="center", va="center",
                   transform=ax[1].transAxes)
    ax[1].set(title=f"tokens per pass (mean {s['tokens_per_pass']:.2f})", xlabel="tokens", ylabel="passes")
    ks = [int(k) for k in s["verify_cost_ratio"]]
    ax[2].plot(ks, [s["verify_cost_ratio"][str(k)] for k in ks], "o-")
    ax[2].set(title="verify cost t(T)/t(1)", xlabel="T tokens")
    fig.tight_layout()
    fig.savefig(path)
    return fig
