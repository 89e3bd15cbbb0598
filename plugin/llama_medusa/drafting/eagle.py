"""The EAGLE drafter: the draft layer's KV cache over the answer so far, and a tree grown anew every step.

Cache: after each verify the accepted tokens' true final-norm states extend it, as pairs (f_t, x_{t+1}); the tree's
own entries are scratch and dropped (EAGLE's stable_kv). It starts at the first state the decoder hands over (the
answer's first token; prompt states are never computed, so a prompt costs what it costs stock), and the trainer
draws the same window.

Tree: EAGLE-2's, grown every step from the draft's calibrated probabilities and sized on this machine's cost curve
(pertree.PerStepTree), or a fixed tree filled level by level (`fill`).

The layer runs natively (cpp/eagle.cpp: int8 matrices, one call per tree level, the attention split over heads on
a thread pool); EagleHeads.forward is the numpy reference the tests hold it to.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..heads.eagle import LAYER, EagleHeads
from .calibration import softmax
from .pertree import PerStepTree
from .tree import Tree

MAX_CONTEXT = 4096  # draft positions kept; older ones are dropped (the backbone's features carry the long context)


class EagleDrafter(PerStepTree):
    wants_path_states = True  # the decoder hands over every accepted node's state, not just the deepest
    can_grow = True

    def __init__(self, heads: EagleHeads, embedding, lm_head: np.ndarray, n_threads: int = 1, beam: int = 4,
                 top_k: int = 8, max_nodes: int = 16):
        """lm_head: the backbone's output matrix, [n_vocab, hidden] (its draft-vocabulary rows are kept).
        n_threads: the native layer's thread pool; one by default: a level's products are small, and on the
        2-core VMs a second thread gave 9.2 against 10.1 ms per grown 16-node tree, within the noise of a
        machine whose cores the backbone also uses."""
        self.heads = heads
        self.embedding = embedding
        self.n_heads = heads.n_heads
        c = heads.config
        self.H, self.nh, self.nkv, self.hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], \
            c["head_dim"]
        rows = lm_head if heads.draft_vocab is None else lm_head[heads.draft_vocab]
        self.layer = _layer(heads, rows, n_threads)
        PerStepTree.__init__(self, beam, top_k, max_nodes)
        self.reset()

    def reset(self) -> None:
        self.layer.reset()
        self.start = self.end = 0  # positions the cache covers

    def _embed(self, toks) -> np.ndarray:
        return self.embedding.rows(np.asarray(toks))

    def logits(self, g: np.ndarray) -> np.ndarray:
        """Logits over the draft vocabulary of output features g [n, H] (enough for ranks: a fixed tree)."""
        return self.layer.logits(np.ascontiguousarray(g, dtype=np.float32))

    def probs(self, g: np.ndarray, depth: int) -> np.ndarray:
        """Calibrated softmax over the draft vocabulary of output features g [n, H], for tree level `depth` (1-)."""
        return softmax(self.logits(g), self.heads.temperature[min(depth, len(self.heads.temperature)) - 1])

    # ------------------------------------------------------------------ the cache
    def observe(self, states: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Extends the cache with (states[i], context[p0 + i + 1]) at positions p0.. (p0 = len(context) - 1 -
        len(states): the states of the tokens before the root) and returns the last pair's output feature."""
        m = len(states)
        p0 = len(context) - 1 - m
        if p0 != self.end or self.end - self.start + m > MAX_CONTEXT:
            self.reset()
            self.start = self.end = p0
        out = self.layer.extend(self._embed(context[p0 + 1 : p0 + 1 + m]), np.ascontiguousarray(states, np.float32),
                                p0)
        self.end = p0 + m
        return out[-1]

    def cache(self):
        """The cache's keys (after RoPE) and values, [positions, kv heads, head_dim] each."""
        return self.layer.cache()

    # ------------------------------------------------------------------ the tree
    def _level(self, nodes: List[int], toks, parent, depth: int, P: int, feats: Dict[int, np.ndarray],
               entry: Dict[int, int], calibrated: bool = True):
        """One tree level in one native call: each node's entry (e(token), its parent's output) at position
        P + depth - 2 attends to the cache, its ancestors' entries and itself. Sets feats[node] and entry[node];
        returns the calibrated child probabilities [len(nodes), draft vocabulary] (the logits if not
        `calibrated`)."""
        base = self.layer.scratch_len
        out = self.layer.level(self._embed([toks[i] for i in nodes]), np.stack([feats[parent[i]] for i in nodes]),
                               np.full(len(nodes), P + depth - 2, np.int32),
                               np.array([entry.get(parent[i], -1) for i in nodes], np.int32))
        for r, i in enumerate(nodes):
            feats[i] = out[r]
            entry[i] = base + r
        return self.probs(out, depth) if calibrated else self.logits(out)

    def grow(self, states: np.ndarray, context: np.ndarray, room: int, max_depth: int):
        """This step's tree and node tokens (node 0 = the root, context[-1]), or a one-node tree when no tree
        pays (pertree.PerStepTree). The accepted states extend the cache first, whatever the tree.
        Returns (Tree, tokens, expected accepted tokens incl. the bonus)."""
        g_root = self.observe(np.asarray(states, np.float32).reshape(-1, self.H), context)
        P = len(context) - 1
        feats = {-1: g_root}
        entry: Dict[int, int] = {}

        def level(nodes, toks, parent, d):
            return self._level(nodes, toks, parent, d, P, feats, entry)

        return self.grow_from(lambda: self.probs(g_root[None, :], 1)[0], level, int(context[-1]), room, max_depth,
                              self.heads.token_ids)

    def fill(self, states: np.ndarray, context: np.ndarray, tree: Tree, k: int) -> List[int]:
        """Tokens of a fixed tree (medusa_choices): each node's children are the top ranks of its own path's
        draft, level by level. Ranks need only the logits: no softmax, and no sort beyond the ranks used."""
        g_root = self.observe(np.asarray(states, np.float32).reshape(-1, self.H), context)
        P = len(context) - 1
        out = [int(context[-1])] + [0] * (len(tree) - 1)
        parent = [n.parent - 1 if n.parent > 0 else -1 for n in tree.nodes[1:]]  # node i+1 of the tree is i here
        feats = {-1: g_root}
        entry: Dict[int, int] = {}
        toks = [0] * (len(tree) - 1)
        for d in range(1, tree.depth + 1):
            parents = [i for i in tree.levels[d - 1] if tree.nodes[i].children]
            if d == 1:
                pc = self.logits(g_root[None, :])
            else:
                pc = self._level([i - 1 for i in parents], toks, parent, d, P, feats, entry, calibrated=False)
            for r, i in enumerate(parents):
                ids = self.heads.token_ids(top_ranks(pc[r], max(tree.nodes[c].path[-1] for c in tree.nodes[i].children) + 1))
                for c in tree.nodes[i].children:
                    out[c] = toks[c - 1] = int(ids[tree.nodes[c].path[-1]])
        self.features = {i + 1: f for i, f in feats.items()}  # tree node -> its output feature (root: node 0)
        return out


def top_ranks(z: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of z, largest first (a partial sort: the vocabulary is thousands long)."""
    if k == 1:
        return np.array([int(np.argmax(z))])
    k = min(k, len(z))
    top = np.argpartition(-z, k - 1)[:k]
    return top[np.argsort(-z[top], kind="stable")]


def _layer(heads: EagleHeads, lm_head: np.ndarray, n_threads: int):
    """The native layer with int8 matrices (q|k|v and gate|up stacked: one product each)."""
    from .. import _native
    from ..heads.engine import quantize_rows_i8

    W, c = heads.weights, heads.config
    mats = {
        "fc": W["fc.weight"],
        "qkv": np.concatenate([W[LAYER + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
        "o": W[LAYER + "self_attn.o_proj.weight"],
        "gate_up": np.concatenate([W[LAYER + "mlp.gate_proj.weight"], W[LAYER + "mlp.up_proj.weight"]]),
        "down": W[LAYER + "mlp.down_proj.weight"],
        "lm_head": lm_head,
    }
    qkv_b = None
    if any(W.get(LAYER + f"self_attn.{n}_proj.bias") is not None for n in "qkv"):
        rows = {n: W[LAYER + f"self_attn.{n}_proj.weight"].shape[0] for n in "qkv"}
        qkv_b = np.concatenate([W.get(LAYER + f"self_attn.{n}_proj.bias", np.zeros(rows[n], np.float32))
                                for n in "qkv"])
    cfg = dict(hidden=c["hidden_size"], n_head=c["num_attention_heads"], n_kv=c["num_key_value_heads"],
               head_dim=c["head_dim"], inter=c["intermediate_size"], eps=c["rms_norm_eps"],
               rope_theta=c["rope_theta"], rope_scale=c["rope_scale"])
    return _native.EagleLayer(cfg, {k: quantize_rows_i8(np.asarray(m, np.float32)) for k, m in mats.items()},
                              W.get("fc.bias"), qkv_b, W[LAYER + "post_attention_layernorm.weight"], n_threads)
