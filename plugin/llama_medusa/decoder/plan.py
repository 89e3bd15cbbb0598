"""From a Llama's medusa_* arguments to its Speculation: the drafter, the tree, the lookup gate and, under
`auto`, the thread counts: each candidate setting's cost curve is measured on this machine, and the fastest way
to produce tokens wins, plain decoding at the best thread count included (docs/DESIGN.md, "`auto`")."""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..backbones.gguf_tensors import read_output_matrix
from ..drafting import answers, autotree, lookup
from ..drafting.drafter import HeadsDrafter
from ..drafting.eagle import EagleDrafter
from ..drafting.lookup import LookupGate
from ..drafting.tree import Tree
from ..heads import MedusaHeads, load_heads
from ..heads.eagle import EagleHeads
from .speculation import Speculation

# Thread settings other than the chosen one are compared on these sizes only: trees past 16 nodes never pay on a
# CPU (BENCHMARKS.md, "Cost curve"), and each setting's curve costs load time the first time it is measured.
SEARCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


def drafter_for(llm, backbone, medusa_heads, proj_dtype: str, device: str):
    """medusa_heads (a drafter, a MedusaHeads or a path) as a drafter bound to this backbone."""
    if hasattr(medusa_heads, "propose") or hasattr(medusa_heads, "grow"):
        return medusa_heads
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"medusa_device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    heads = medusa_heads if isinstance(medusa_heads, (MedusaHeads, EagleHeads)) else load_heads(medusa_heads)
    if isinstance(heads, EagleHeads):
        if device == "gpu":
            raise ValueError(f"EAGLE heads {heads.source} run on the CPU only: use medusa_device='cpu' or 'auto'")
        heads.check_model(backbone.n_embd, llm._n_vocab)
        proj = backbone.projection(heads)
        if proj is None:
            proj = read_output_matrix(llm.model_path)
        return EagleDrafter(heads, backbone.token_embedding(), proj)
    engine = heads.engine(
        llm.model_path, backbone.n_embd, llm._n_vocab, proj_dtype, n_threads=llm.n_threads_batch,
        backbone_proj=backbone.projection(heads), device=backbone.heads_device(device, heads),
    )
    return HeadsDrafter(heads, engine, backbone.token_embedding() if heads.conditioned else None)


def plan(llm, backbone, drafter, choices, top_k: Optional[int], max_batch: int, lookup_tokens: int,
         typical, fixed_threads: Tuple[Optional[int], Optional[int]] = (None, None)) -> Speculation:
    """The Speculation for these arguments. Under "auto" llm.medusa_auto says what was measured and chosen;
    fixed_threads: the (n_threads, n_threads_batch) the user set, which `auto` keeps."""
    llm.medusa_auto = None
    llm._lookup_gate = None  # the lookup gate `auto` priced alone (Llama.replay_lookup)
    top1 = [float(p) for p in autotree.accuracy_table(drafter, 1)[:, 0]]  # where a lookup branch goes
    stored = getattr(getattr(drafter, "heads", None), "answers", None)
    index = answers.index_of(stored, llm._n_vocab) if (stored is not None and lookup_tokens) else None

    def make_gate(**priced):  # priced: the cost model `auto` measured, else every proposed token is added
        return LookupGate(lookup_tokens, heads_top1=top1, answers=index, **priced) if lookup_tokens else None

    gate = make_gate()
    grows = False
    if isinstance(choices, str) and choices in ("auto", "auto-static"):
        a = _auto(llm, backbone, drafter, top_k or 10, max_batch, fixed_threads, make_gate)
        per_step = choices == "auto" and getattr(drafter, "can_grow", False)
        choices, gate = a["choices"], a.pop("gate")
        if choices and per_step:  # a tree per step, sized on the curve `auto` measured
            drafter.cost, drafter.overhead_s = a["cost_s"], a["step_overhead_s"]
            grows = True
    elif isinstance(choices, str) and choices == "per-step":  # grown every step, every node kept (no pricing)
        if not getattr(drafter, "can_grow", False):
            raise ValueError("medusa_choices='per-step' needs heads that give each node's children with "
                             "probabilities: EAGLE heads, or token-conditioned heads sharing the backbone's "
                             "output matrix")
        grows = True
    if grows:
        drafter.max_nodes = min(drafter.max_nodes, max_batch - 1 - drafter.n_heads)
        choices = _capacity(drafter)
        if llm.medusa_auto is not None:
            llm.medusa_auto["per_step_tree"] = dict(max_nodes=drafter.max_nodes, beam=drafter.beam,
                                                    depth=drafter.n_heads)
    tree = Tree(choices, n_heads=drafter.n_heads, top_k=top_k)
    if isinstance(drafter, HeadsDrafter):
        drafter.max_depth = max(tree.depth, 1)  # its propose() then skips heads the tree never reads
    return Speculation(drafter, tree, top_k or max(tree.top_k, 1), typical, max_batch, gate, dynamic=grows)


def _capacity(drafter) -> List[Tuple[int, ...]]:
    """A tree as large as any the drafter may grow (max_nodes nodes, n_heads deep): what the context's sequences
    and batch are sized for."""
    chain = [(0,) * d for d in range(1, drafter.n_heads + 1)]
    return chain + [(r,) for r in range(1, max(drafter.max_nodes - len(chain), 0) + 1)]


def _auto(llm, backbone, drafter, top_k: int, max_batch: int, fixed_threads, make_gate) -> Dict:
    """Times every thread setting the backbone offers, prices the best tree and the lookup alone on each, and keeps
    the fastest: speculation only where it beats plain decoding at the best thread count by its margin."""
    acc = autotree.accuracy_table(drafter, top_k)
    t_heads = autotree.heads_time(drafter, backbone.n_embd, top_k)
    texts = getattr(getattr(drafter, "heads", None), "reference_texts", lambda: [])()
    backbone.prepare(1, 2)  # measure on a context like the one that will verify
    settings = backbone.thread_settings()
    options = []
    for n, nb in settings:
        backbone.set_threads(n, nb)
        sizes = [T for T in (autotree.COST_SIZES if len(settings) == 1 else SEARCH_SIZES) if T <= max_batch]
        # every setting's cached curve is checked against a quick t(1) and t(2): one measured while other work
        # loaded the machine would otherwise steer the search
        cost = autotree.cost_curve(llm, sizes=sizes)
        options.append(_price(llm, drafter, acc, cost, t_heads, max_batch, texts, make_gate, (n, nb)))
    allowed = [o for o in options if all(f is None or f == v for f, v in zip(fixed_threads, o["threads"]))]
    would, scored = _pick(options)  # what `auto` would choose with every count free
    pick, _ = _pick(allowed)
    plain_tokens_per_s = pick["plain_best_tokens_per_s"]
    backbone.set_threads(*pick["threads"])
    if len(settings) > 1:  # the chosen setting's whole curve, for trees of any size
        sizes = [T for T in autotree.COST_SIZES if T <= max_batch]
        pick = _price(llm, drafter, acc, autotree.cost_curve(llm, sizes=sizes), t_heads, max_batch, texts, make_gate,
                      pick["threads"], keep=pick["wins"])
    a = pick["auto"]
    a.update(threads=pick["threads"], threads_would_choose=would["threads"],
             threads_options=[{k: o[k] for k in ("threads", "tokens_per_s", "plain_tokens_per_s", "vs_best_plain",
                                                 "speculates", "lookup_alone", "wins")} for o in scored],
             predicted_vs_best_plain=pick["tokens_per_s"] / plain_tokens_per_s)
    llm.medusa_auto = a
    llm._lookup_gate = pick["replayed_gate"]
    if not pick["wins"]:  # plain decoding at this setting: the best count, or the one the user fixed
        a.update(choices=[], predicted_speedup=1.0)
        if "lookup" in a:
            a["lookup"] = False
        a["gate"] = None
    return a


def _pick(options: List[Dict]) -> Tuple[Dict, List[Dict]]:
    """The fastest option whose speculation clears its margin (5% for a tree, 8% for the lookup alone) against
    plain decoding at the best thread count among these options; else plain decoding at that count, with the most
    batch threads among those (a plain step never batches, but the prompt does). Returns it and the options
    scored (vs_best_plain, wins)."""
    plain = max(options, key=lambda o: o["plain_tokens_per_s"])
    scored = []
    for o in options:
        margin = lookup.REPLAY_MIN_GAIN if o["lookup_alone"] else autotree.MIN_GAIN
        vs = float(o["tokens_per_s"] / plain["plain_tokens_per_s"])
        scored.append(dict(o, vs_best_plain=vs, wins=bool(o["speculates"] and (o["unpriced"] or vs >= margin)),
                           plain_best_tokens_per_s=plain["plain_tokens_per_s"]))
    winners = [o for o in scored if o["wins"]]
    if winners:
        return max(winners, key=lambda o: o["tokens_per_s"]), scored
    n = plain["threads"][0]
    return max((o for o in scored if o["threads"][0] == n), key=lambda o: o["threads"][1]), scored


def _price(llm, drafter, acc, cost, t_heads, max_batch: int, texts, make_gate, threads, keep: bool = True) -> Dict:
    """One thread setting: the best heads tree on its cost curve, else the lookup alone replayed over the heads
    file's reference texts; its tokens per second, and plain decoding's."""
    a = autotree.choose(acc, cost, t_heads, max_nodes=max_batch - 1 - drafter.n_heads)
    a.update(cost_s=cost, heads_cost=t_heads.as_dict())
    gate = make_gate(cost=cost, expected=a["expected_tokens"], fixed_s=a["heads_s"] + a["step_overhead_s"])
    speedup, lookup_alone, replayed, unpriced = a["predicted_speedup"], False, None, False
    if not a["choices"] and gate is not None:
        replayed = gate
        if texts:  # without reference texts the gate is kept and priced step by step
            ratios = gate.replay([(np.asarray(t), int(n)) for t, n in texts],
                                 stock_token_s=autotree.STOCK_TOKEN_OVERHEAD_S)
            a.update(lookup_predicted_speedup=float(statistics.median(ratios)), lookup_replay_texts=len(ratios))
            a["lookup"] = a["lookup_predicted_speedup"] >= lookup.REPLAY_MIN_GAIN
            if a["lookup"]:
                a["predicted_speedup"] = speedup = a["lookup_predicted_speedup"]  # what runs: the lookup alone
            else:
                gate = None
        else:
            unpriced = True  # kept as before reference texts existed: priced step by step as it runs
        lookup_alone = gate is not None
    speculates = bool(a["choices"]) or lookup_alone
    a["gate"] = gate if (keep and speculates) else None
    return {"threads": threads, "auto": a, "replayed_gate": replayed, "speculates": speculates,
            "lookup_alone": lookup_alone, "unpriced": unpriced, "wins": keep and speculates,
            "tokens_per_s": float((speedup if speculates else 1.0) / cost[1]), "plain_tokens_per_s": 1.0 / cost[1]}


def walk_lookup(llm, how: str, texts) -> Optional[List[float]]:
    """LookupGate.replay or .oracle over (token ids, prompt length) texts, priced against stock's loop."""
    gate = getattr(llm, "_lookup_gate", None)
    if gate is None:
        return None
    walk = getattr(gate, how)
    return walk([(np.asarray(t), int(n)) for t, n in texts], stock_token_s=autotree.STOCK_TOKEN_OVERHEAD_S)
