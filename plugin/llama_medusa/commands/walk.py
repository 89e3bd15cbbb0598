"""`llama-medusa walk`: tokens per pass of the heads alone, offline, over the model's own greedy answers.

Greedy verification accepts the longest drafted path that matches the answer, so stepping through stock's greedy
answers with the drafter gives exactly what the decoder would accept, without a backbone pass: the stored final-norm
states stand in for the verify passes. It measures the drafts apart from any machine's cost curve, for fixed trees
(Medusa's `mc_sim_7b_63` and its first 16 paths) and for the per-step tree at a node budget.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np


def offline_walk(drafter, texts, tree=None, k: int = 10, max_nodes: int = 16, max_depth: int = 8) -> Dict[str, float]:
    """Tokens per pass of the heads alone over greedy answers, exactly as the decoder would step through them
    (greedy verification accepts the longest path that matches the answer; the backbone's token after it is the
    bonus). With `tree`, that fixed tree every step; without, the drafter's per-step tree (pertree.PerStepTree,
    unpriced) of at most `max_nodes` drafted nodes. texts: (tokens, states, prompt length) from train.collect: the
    states stand in for the verify pass. Also head 0's top-1 rate over every step (its likeliest child). Needs no
    backbone."""
    steps = tokens = hits0 = nodes = 0
    if tree is None:
        saved = drafter.cost, drafter.max_nodes
        drafter.cost, drafter.max_nodes = None, max_nodes
    try:
        for toks, states, n_prompt in texts:
            toks = np.asarray(toks)
            if hasattr(drafter, "reset"):
                drafter.reset()
            p = n_prompt  # the root's position: the first answer token (the decoder's first step is plain)
            prev = p  # states handed over start here (EAGLE's cache), as after that first plain step
            while p < len(toks) - 1:
                context = toks[: p + 1]
                hidden = states[prev:p] if getattr(drafter, "wants_path_states", False) else states[p - 1]
                if p == prev:
                    acc = 0  # the first step is plain: the prompt's decode gives no state to draft from
                else:
                    if tree is None:
                        t, filled, _ = drafter.grow(hidden, context, max_nodes + 1, max_depth)
                    else:
                        t, filled = tree, drafter.fill(hidden, context, tree, k)
                    node, acc = 0, 0
                    while True:
                        nxt = next((c for c in t.nodes[node].children
                                    if p + acc + 1 < len(toks) and filled[c] == toks[p + acc + 1]), None)
                        if nxt is None:
                            break
                        node, acc = nxt, acc + 1
                    first = t.nodes[0].children[:1]
                    hits0 += any(filled[c] == toks[p + 1] for c in first) if p + 1 < len(toks) else 0
                    steps += 1
                    tokens += acc + 1
                    nodes += len(t) - 1
                prev = p
                p += acc + 1
    finally:
        if tree is None:
            drafter.cost, drafter.max_nodes = saved
    return {"tokens_per_pass": tokens / max(steps, 1), "head0_top1": hits0 / max(steps, 1), "steps": steps,
            "nodes_per_step": nodes / max(steps, 1)}


def drafter_from_file(model_path: str, heads_path: str, proj: np.ndarray, emb):
    """The drafter for a heads file of either kind, bound to the GGUF's output matrix `proj` and token embedding
    `emb` (read once by the caller for every heads file; no Llama)."""
    from ..drafting.drafter import HeadsDrafter
    from ..drafting.eagle import EagleDrafter
    from ..heads import load_heads
    from ..heads.eagle import EagleHeads

    heads = load_heads(heads_path)
    if isinstance(heads, EagleHeads):
        heads.check_model(proj.shape[1], proj.shape[0])
        return EagleDrafter(heads, emb, proj)
    engine = heads.engine(model_path, proj.shape[1], proj.shape[0], "i8", backbone_proj=proj)
    return HeadsDrafter(heads, engine, emb if heads.conditioned else None)


def run_walk(model: Optional[str], heads: Sequence[str], prompts: Optional[Sequence[str]] = None,
             max_tokens: int = 200, budgets: Sequence[int] = (16, 63), log=print) -> List[Dict]:
    """One row per heads file and tree: fixed trees (the first 16 paths of mc_sim_7b_63, all of it; paths deeper
    than the heads are dropped) and the per-step tree at each node budget. Default prompts: the validation prompts,
    never trained on."""
    from ..backbones.gguf_tensors import TokenEmbedding, read_output_matrix
    from ..default_model import check_model_path, default_model_path
    from ..drafting.tree import MC_SIM_7B_63, Tree
    from ..heads.shipped import SMOLLM2_EAGLE, SMOLLM2_HEADS, shipped_heads_for
    from .prompts import VALIDATION_PROMPTS
    from .train import collect

    model = model or default_model_path()
    check_model_path(model)
    if not heads:  # what ships for this model; for SmolLM2 the token-conditioned heads beside the EAGLE ones
        shipped = shipped_heads_for(model, "--heads")
        heads = [shipped] + ([SMOLLM2_HEADS] if shipped == SMOLLM2_EAGLE else [])
    texts = collect(model, list(prompts or VALIDATION_PROMPTS), max_tokens=max_tokens, log=log)
    proj, emb = read_output_matrix(model), TokenEmbedding.from_gguf(model)
    trees = [("mc_sim_7b_63[:16]", MC_SIM_7B_63[:16]), ("mc_sim_7b_63", MC_SIM_7B_63)]
    rows = []
    for path in heads:
        d = drafter_from_file(model, path, proj, emb)
        for name, paths in trees:
            t = Tree([p for p in paths if len(p) <= d.n_heads])
            r = offline_walk(d, texts, t)
            rows.append(dict(r, heads=path, tree=name, nodes=len(t) - 1))
            log(_row(rows[-1]))
        if getattr(d, "can_grow", False):
            for n in budgets:
                d.beam, d.top_k = (4, 8) if n <= 16 else (6, 16)  # a wider, deeper search for a larger budget
                r = offline_walk(d, texts, None, max_nodes=n)
                rows.append(dict(r, heads=path, tree=f"per-step, at most {n} nodes", nodes=n))
                log(_row(rows[-1]))
    return rows


def _row(r: Dict) -> str:
    import os

    return (f"| {os.path.basename(r['heads'])} | {r['tree']} | {r['nodes']} | {r['tokens_per_pass']:.2f} | "
            f"{r['head0_top1']:.2f} | {r['steps']} |")


def main(args) -> int:
    from .prompts import read_prompts

    prompts = read_prompts(args.prompts) if args.prompts else None
    print("| heads | tree | nodes | tokens/pass | head 0 top-1 | steps |\n|---|---|---|---|---|---|")

    def log(m):  # table rows on stdout, progress (answering the prompts the first time) on stderr
        print(m, flush=True, file=sys.stdout if m.startswith("|") else sys.stderr)

    rows = run_walk(args.model, args.heads.split(",") if args.heads else [], prompts, args.max_tokens,
                    [int(x) for x in args.nodes.split(",")], log=log)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
