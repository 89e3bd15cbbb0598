"""One generate() call as a loop over four phases, each step one backbone pass:

1. draft   - the drafter fills the tree's node tokens and the lookup grafts its branch (no KV cache is touched);
2. verify  - the backbone decodes pending tokens + root + tree in one pass;
3. accept  - the sampler chain walks the tree from the root: each real token is sampled once, in order, from the
             logits stock decoding would produce (the tree version of llama.cpp's sample_and_accept_n);
4. commit  - the backbone keeps the accepted path, statistics are counted.

Invariants between steps: input_ids[:n_tokens] are the tokens whose logits exist; the backbone's cache holds the
first `kv` of them (the rest are re-decoded next step); `root` is the last sampled token, already yielded, not yet
decoded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ..drafting import lookup
from ..drafting.tree import Tree
from ..stats import MedusaStats


@dataclass
class Draft:
    """A step's candidates: the tree and a token per node (node 0 is the root), with what the lookup added."""
    tree: Tree
    tokens: List[int]
    chain: List[int] = field(default_factory=list)  # the lookup's drafted continuation
    bucket: int = -1  # where it came from (lookup.context_bucket / answers_bucket)
    grafted: Sequence[int] = ()  # rows of the tree that hold lookup tokens
    heads_s: float = 0.0  # seconds the drafter took to fill the tree


class Decode:
    def __init__(self, llm, backbone, spec, tokens: List[int], reset: bool, stopping_criteria, typical,
                 temp: float):
        self.llm, self.backbone, self.spec = llm, backbone, spec
        self.tokens = tokens
        self.reset = reset
        self.stopping_criteria = stopping_criteria
        self.typical = typical
        self.temp = temp
        self.stats = MedusaStats()
        llm.medusa_stats = self.stats
        if spec.lookup is not None:
            spec.lookup.reset()  # hit rates are per text
        if hasattr(spec.drafter, "reset"):
            spec.drafter.reset()  # a drafter's own cache (EAGLE's) covers this text only

    def run(self):
        llm = self.llm
        root = self._prefill()
        if self.stopping_criteria is not None:
            if self.stopping_criteria(llm._input_ids, self.backbone.last_logits()):
                return
        sent = yield root
        hidden = None
        while True:
            if sent is not None:  # the caller pushed tokens (generator.send): decode them, heads restart
                llm.input_ids[llm.n_tokens] = root
                llm.input_ids[llm.n_tokens + 1 : llm.n_tokens + len(sent)] = list(sent)[:-1]
                llm.n_tokens += len(sent)
                root, hidden = int(list(sent)[-1]), None
            emitted, rows, hidden = self.step(root, hidden)
            p_root = llm.n_tokens - len(emitted)  # position of the root just verified
            for j, tok in enumerate(emitted):
                llm.n_tokens = p_root + j + 1
                if self.stopping_criteria is not None and self.stopping_criteria(
                    llm.input_ids[: llm.n_tokens], rows[j]
                ):
                    return
                sent = yield tok
                if sent is not None:  # the caller diverged from the accepted run: forget the cells after it
                    llm.n_tokens = p_root + j + 1
                    if self.backbone.kv_len() > llm.n_tokens:
                        self.backbone.truncate(llm.n_tokens)
                    break
            root = emitted[-1] if sent is None else tok

    def _prefill(self) -> int:
        """Decodes the prompt (reusing the cached prefix) like stock and samples the first token."""
        llm, bb = self.llm, self.backbone
        t0 = time.perf_counter()
        known = min(llm.n_tokens, bb.kv_len())
        if not self.tokens and (self.reset or llm.n_tokens == 0):
            raise ValueError("generate() needs at least one token")
        if self.reset:
            full = self.tokens
            common = 0
            for a, b in zip(llm.input_ids[:known], full):
                if a != b:
                    break
                common += 1
            keep = min(common, len(full) - 1)
        else:
            full = [int(t) for t in llm.input_ids[: llm.n_tokens]] + self.tokens
            keep = min(known, len(full) - 1)
        if len(full) > llm._n_ctx:
            raise ValueError(f"Requested tokens ({len(full)}) exceed context window of {llm._n_ctx}")
        bb.truncate(keep)
        llm.n_tokens = keep
        # The prefix may hold cells decoded into sequence 0 alone, past eval(): llama-cpp-python's multimodal chat
        # handlers decode image embeddings that way. Every tree leaf needs them, so mirror the whole prefix again
        # (metadata only: microseconds per call).
        bb.mirror(0)
        llm.eval(full[keep:])
        self.stats.time_prompt += time.perf_counter() - t0
        return bb.sample_last()

    # ------------------------------------------------------------------ one step, phase by phase
    def step(self, root: int, hidden: Optional[np.ndarray]):
        """Returns (sampled tokens, their logits rows for stopping criteria, final-norm state of the deepest
        accepted node, for the heads)."""
        llm, st = self.llm, self.stats
        t0 = time.perf_counter()
        kv, pending = self.backbone.pending(self.spec.max_depth)
        P = llm.n_tokens  # the root's position
        n_ctx = llm._n_ctx
        if n_ctx - kv - len(pending) < 1 or P >= n_ctx:
            raise RuntimeError(f"llama_decode returned 1: the context window of {n_ctx} tokens is full")
        llm.input_ids[P] = root
        draft = self.draft(root, hidden, P, len(pending), kv)
        t1 = time.perf_counter()
        st.time_bookkeeping += t1 - t0 - draft.heads_s
        n = self.backbone.verify(pending, kv, P, draft.tree, draft.tokens, self.spec.need_hidden)
        t2 = time.perf_counter()
        st.time_verify += t2 - t1
        llm.input_ids[kv : kv + len(pending)] = pending
        path, emitted, rows = self.accept(draft, P)
        t3 = time.perf_counter()
        st.time_sample += t3 - t2
        new_hidden = self.commit(draft, P, path, emitted, rows)
        st.batch_tokens += n
        st.redecoded += len(pending)
        st.time_bookkeeping += time.perf_counter() - t3
        return emitted, rows, new_hidden

    def draft(self, root: int, hidden: Optional[np.ndarray], P: int, n_pending: int, kv: int) -> Draft:
        """Phase 1: the heads' tree (cut to the room left in the batch and the window), then the lookup branch."""
        spec, n_ctx = self.spec, self.llm._n_ctx
        room = min(n_ctx - kv - n_pending, spec.max_batch - n_pending)
        deepest = n_ctx - 1 - P
        tree = spec.tree_within(room, deepest)
        context = self.llm.input_ids[: P + 1]  # a view, no copy
        if hidden is None or (len(tree) == 1 and not spec.dynamic):
            d = Draft(spec.tree_within(1, 0), [root])
        else:
            t1 = time.perf_counter()
            if spec.dynamic:  # a tree grown for this step (it may be the root alone)
                tree, tokens, _ = spec.drafter.grow(hidden, context, room, deepest)
            else:
                tokens = spec.fill(hidden, context, tree, spec.top_k)
            d = Draft(tree, tokens)
            d.heads_s = time.perf_counter() - t1
            self.stats.time_heads += d.heads_s
        if spec.lookup is not None:
            d.chain, d.bucket = spec.lookup.draft(context, n_pending + len(d.tree))
            if d.chain:
                self._graft(d, room, deepest, n_pending)
        return d

    def _graft(self, d: Draft, room: int, deepest: int, n_pending: int) -> None:
        """Hangs the looked-up tokens that the tree does not already hold below the node where they leave it, as
        many as fit and as the gate finds worth their verify cost."""
        gate = self.spec.lookup
        at, matched = lookup.graft_point(d.tree, d.tokens, d.chain)
        new = min(len(d.chain) - matched, room - len(d.tree), deepest - d.tree.nodes[at].depth)
        n = gate.count(n_pending + len(d.tree), matched, new, d.bucket) if new > 0 else 0
        if n <= 0:
            return
        grown, old_rows, chain_rows = d.tree.grafted(at, n, gate.first(matched, d.tree.nodes[at].depth, d.bucket))
        tokens = [0] * len(grown)
        for i, j in enumerate(old_rows):
            tokens[j] = d.tokens[i]
        for j, tok in zip(chain_rows, d.chain[matched : matched + n]):
            tokens[j] = tok
        d.tree, d.tokens, d.grafted = grown, tokens, chain_rows

    def accept(self, d: Draft, P: int):
        """Phase 3: the sampler chain at the root; while the sampled token is one of the node's children, descend
        and sample again there. Returns (path of tree rows, sampled tokens, their logits rows or None)."""
        llm, bb = self.llm, self.backbone
        ids = llm.input_ids
        path = [0]
        emitted, rows = [], []
        want_rows = self.stopping_criteria is not None or llm._logits_all
        while True:
            i = path[-1]
            node = d.tree.nodes[i]
            ids[P + node.depth] = d.tokens[i]
            llm.n_tokens = P + node.depth + 1  # what logits processors see as input_ids
            row = bb.node_logits(i) if (want_rows or self.typical is not None) else None
            tok = self._choose(i, node, d.tokens, row)
            emitted.append(tok)
            rows.append(row)
            nxt = next((c for c in node.children if d.tokens[c] == tok), None)
            if nxt is None:
                break
            path.append(nxt)
        return path, emitted, rows

    def _choose(self, i: int, node, node_tokens, row) -> int:
        """The token at one tree node: the sampler chain's choice, or with typical acceptance the likeliest
        child when it clears the entropy-scaled threshold."""
        if self.typical is not None and node.children:
            eps, alpha = self.typical
            z = row.astype(np.float64) / self.temp
            z -= z.max()
            p = np.exp(z)
            p /= p.sum()
            ent = -float(np.sum(p * np.log(p + 1e-10)))
            best = max(node.children, key=lambda c: p[node_tokens[c]])
            if p[node_tokens[best]] > min(eps, alpha * np.exp(-ent)):
                tok = node_tokens[best]
                self.llm._sampler.accept(tok)
                return tok
        return self.backbone.sample_node(i)

    def commit(self, d: Draft, P: int, path: List[int], emitted: List[int], rows) -> Optional[np.ndarray]:
        """Phase 4: the lookup learns its hit rate, logprobs get their rows, the backbone keeps the accepted path.
        Returns the deepest accepted node's final-norm state (None when the heads do not need it)."""
        llm, st, spec = self.llm, self.stats, self.spec
        if d.chain:
            spec.lookup.observe(d.chain, emitted, d.bucket)
            taken = len(set(path) & set(d.grafted))
            st.lookup_nodes += len(d.grafted)
            st.lookup_accepted += taken
            if d.bucket >= lookup.CONTEXT_NGRAM:
                st.answers_nodes += len(d.grafted)
                st.answers_accepted += taken
        if llm._logits_all:
            for k, r in enumerate(rows):
                llm.scores[P + k, :] = r
        if not spec.need_hidden:
            new_hidden = None
        elif spec.path_states:  # the drafter extends its own cache with every accepted token's state
            new_hidden = np.stack([self.backbone.node_hidden(i) for i in path])
        else:
            new_hidden = self.backbone.node_hidden(path[-1])
        self.backbone.keep(P, d.tree, path)
        llm.n_tokens = P + len(path)
        llm._requires_eval = False
        st.steps += 1
        st.tokens += len(emitted)
        st.note_depths(d.tree.depth, len(path) - 1)
        return new_hidden
