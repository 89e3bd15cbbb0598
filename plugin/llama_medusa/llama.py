"""`llama_medusa.Llama`: llama_cpp.Llama whose generate() verifies a Medusa tree in one llama_decode per step.

Everything above generate() (completion, chat templates, streaming, stop strings, logprobs, grammar) is stock
llama-cpp-python; this class changes how tokens are produced, not which ones:

* Each step decodes [re-decoded tokens] + root + candidate tree (the heads' candidates, plus a branch looked up in
  the context or in the model's stored answers, lookup.py) in ONE batch; with no heads tree, a step whose lookup
  does not pay decodes the root alone. Every leaf of the tree is a llama.cpp sequence; a node belongs to the
  sequences of the leaves below it, so the unified KV cache's per-cell sequence sets give each node exactly its
  ancestors as context (llama-cpp-python's Llama cannot express this: it has no
  n_seq_max / kv_unified arguments, so the context is rebuilt here).
* The sampler chain (greedy, dist, penalties, grammar, logits processors) samples at the root's batch row; if the
  sampled token is one of the node's children the walk descends and samples again there. Each real token is
  sampled once, in order, from the same logits stock decoding would produce, so output equals stock output,
  sampled output included (same seed, same draws).
* Bit-exact logits need flash attention (batched = token-by-token) and KV cells in position order (flash attention
  sums cells in memory order). The tree is laid out depth-first with the top-1 chain first; accepted nodes that
  sit right after the root in the batch keep their cells, accepted nodes further on (a later branch won) are
  dropped from the cache and decoded again at the front of the next batch. See README "Exactness".
* All sequences mirror the committed prefix (the persistent-mirror bookkeeping of llama.cpp's lookahead example),
  so a step edits only the cells of its own tree.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import time
import warnings
from typing import Dict, Generator, List, Optional, Sequence

import numpy as np

import llama_cpp
from llama_cpp import _internals as internals

from . import answers, lookup
from .autotree import accuracy_table
from .drafter import HeadsDrafter
from .heads import MedusaHeads
from .lookup import LookupGate
from .stats import MedusaStats
from .tree import Tree

DEFAULT_CHOICES = "auto"

# Largest verify batch whose logits equal token-by-token decoding bit for bit on llama.cpp's CPU backend: from 64
# tokens on, the matrix products take another kernel path and a row's logits move by ~0.3 (measured with
# SmolLM2-135M Q4_1, flash attention on; tests/test_exactness.py keeps it honest). Trees are cut to fit.
EXACT_MAX_BATCH = 63


class Llama(llama_cpp.Llama):
    """Drop-in llama_cpp.Llama with Medusa speculative decoding.

    Extra arguments (all keyword-only):
        medusa_heads: path of a heads file (any supported format), a MedusaHeads, or a drafter object with
            ``propose(hidden, tokens, k)``. None: plain llama-cpp-python behaviour.
        medusa_choices: the candidate tree: "auto" (default: measure this machine's verify cost and pick the tree
            with the most expected tokens per second from the heads' measured accuracies, or plain decoding when
            no tree wins; see llm.medusa_auto), a preset ("small", "mc_sim_7b_63", "chain-N"), or a list of rank
            paths as in FasterDecoding/Medusa.
        medusa_top_k: candidates taken from each head (default: the largest rank the tree uses, plus one).
        medusa_proj_dtype: storage of the vocabulary projection in the native head evaluator: "i8" (default),
            "f16" or "f32" (the GPU evaluator always keeps float16).
        medusa_device: where the heads run: "auto" (default: the GPU when the model is offloaded, n_gpu_layers != 0,
            and the GPU module is built and sees a device; else the CPU), "cpu" or "gpu".
        medusa_max_batch: most tokens in one verify batch (tree + re-decoded tokens). The default keeps CPU
            output bit-identical to stock; larger trees are cut (last depth-first nodes first).
        medusa_lookup: most tokens of the lookup branch grafted onto each step's tree (lookup.py: the
            continuation of the last n-gram's earlier occurrence in prompt + output, or of the model's own earlier
            answers stored with the heads, answers.py); 0 turns it off. With "auto" a step adds as many as raise
            its expected tokens per second; when no heads tree wins, steps where no lookup pays decode one token,
            and if replaying the lookup over the heads' reference texts on the measured cost curve promises
            less than lookup.REPLAY_MIN_GAIN, generation is plain (stock's loop; llm.medusa_auto["lookup"]).
        posterior_threshold, posterior_alpha: opt-in typical acceptance (Medusa paper) at temperature > 0: a
            drafted child is accepted if p(child) > min(threshold, alpha * exp(-entropy)). Faster, but the output
            no longer follows the sampling distribution exactly. Ignored at temperature 0 and with a grammar.
    flash_attn defaults to True when heads are given: greedy identity with stock needs it on both sides.

    A BitNet b1.58 GGUF in bitnet.cpp's I2_S format (which llama.cpp cannot load) runs on the native engine
    instead: Llama(...) then returns a BitnetLlama (bitnet_llama.py), same API, heads embedded in the GGUF found.
    """

    _own_plain_decoding = False  # True: plain decoding also runs through _MedusaRun (the backbone is not llama.cpp)

    def __new__(cls, model_path=None, *args, **kwargs):
        if cls is Llama:
            from .bitnet_llama import BitnetLlama, open_i2s_gguf

            parsed = open_i2s_gguf(model_path if model_path is not None else kwargs.get("model_path"))
            if parsed is not None:
                obj = super().__new__(BitnetLlama)
                obj._i2s_file = parsed  # parsed once: BitnetLlama loads from it
                return obj
        return super().__new__(cls)

    def __init__(
        self,
        model_path: str,
        *args,
        medusa_heads=None,
        medusa_choices=DEFAULT_CHOICES,
        medusa_top_k: Optional[int] = None,
        medusa_proj_dtype: str = "i8",
        medusa_device: str = "auto",
        medusa_max_batch: int = EXACT_MAX_BATCH,
        medusa_lookup: int = 8,
        posterior_threshold: Optional[float] = None,
        posterior_alpha: Optional[float] = None,
        **kwargs,
    ):
        if medusa_heads is not None:  # before the model loads: a typo should not cost a load
            _check_arguments(medusa_heads, medusa_top_k, medusa_max_batch, medusa_lookup, posterior_threshold,
                             posterior_alpha)
            if kwargs.get("flash_attn") is None:
                kwargs["flash_attn"] = True
            elif not kwargs["flash_attn"]:
                warnings.warn(
                    "flash_attn=False: llama.cpp's logits then depend on the batch shape, so Medusa output can "
                    "differ from stock output in near-ties",
                    RuntimeWarning,
                )
        self._load_backbone(model_path, *args, **kwargs)
        # what __getstate__ must hand back to __init__ (stock's state knows no medusa_* argument)
        self._medusa_args = dict(medusa_heads=medusa_heads, medusa_choices=medusa_choices, medusa_top_k=medusa_top_k,
                                 medusa_proj_dtype=medusa_proj_dtype, medusa_device=medusa_device,
                                 medusa_max_batch=medusa_max_batch, medusa_lookup=medusa_lookup,
                                 posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha)
        # one llama_decode takes at most n_batch tokens (llama.cpp asserts, taking the process down, past it)
        medusa_max_batch = min(medusa_max_batch, self.n_batch)
        self._medusa = None
        self.medusa_stats = MedusaStats()
        if medusa_heads is None:
            medusa_heads = self._embedded_heads()
        if medusa_heads is None:
            given = [name for name, value, default in (
                ("medusa_choices", medusa_choices, DEFAULT_CHOICES), ("medusa_top_k", medusa_top_k, None),
                ("medusa_lookup", medusa_lookup, 8), ("posterior_threshold", posterior_threshold, None),
                ("posterior_alpha", posterior_alpha, None)) if value != default]
            if given:  # most likely medusa_heads was forgotten: say so rather than decode plainly in silence
                warnings.warn(f"{', '.join(given)} given without medusa_heads: decoding plainly, without Medusa",
                              RuntimeWarning)
            return
        if self.draft_model is not None:  # stock's speculation loop is the one generate() replaces
            warnings.warn("draft_model is not used with medusa_heads: Medusa verifies its own drafts, and its lookup "
                          "branch (medusa_lookup) drafts from the context as LlamaPromptLookupDecoding does",
                          RuntimeWarning)
            self.draft_model = None
            self._logits_all = bool(kwargs.get("logits_all", False))  # stock forces it on for its draft model
        if medusa_max_batch < 2:
            raise ValueError(f"a verify batch of at most {medusa_max_batch} token (medusa_max_batch, n_batch) has no "
                             "room for a draft: Medusa needs at least 2")
        if self._is_recurrent or self._is_hybrid:
            raise ValueError("Medusa trees need an attention-only model: recurrent/hybrid memories cannot branch")
        n_embd = self._n_embd()
        if hasattr(medusa_heads, "propose"):
            drafter = medusa_heads
        else:
            heads = medusa_heads if isinstance(medusa_heads, MedusaHeads) else MedusaHeads.load(medusa_heads)
            engine = heads.engine(
                self.model_path, n_embd, self._n_vocab, medusa_proj_dtype, n_threads=self.n_threads_batch,
                backbone_proj=self._backbone_projection(heads), device=self._heads_device(medusa_device, heads),
            )
            drafter = HeadsDrafter(heads, engine, self._token_embedding() if heads.conditioned else None)
        self.medusa_auto = None
        self._lookup_gate = None  # the lookup gate `auto` priced alone (replay_lookup)
        priced = {}  # under "auto" the lookup gate prices its tokens with the chosen tree's cost model
        if isinstance(medusa_choices, str) and medusa_choices == "auto":
            medusa_choices = self._auto_choices(drafter, n_embd, medusa_top_k or 10, medusa_max_batch)
            a = self.medusa_auto
            priced = dict(cost=a["cost_s"], expected=a["expected_tokens"], fixed_s=a["heads_s"] + a["step_overhead_s"])
        gate = None
        # under "auto" with no tree that pays, the lookup still speculates on the steps where it is likely right
        if medusa_lookup:
            top1 = [float(p) for p in accuracy_table(drafter, 1)[:, 0]]  # where the branch goes (LookupGate.first)
            stored = getattr(getattr(drafter, "heads", None), "answers", None)
            index = answers.index_of(stored, self._n_vocab) if stored is not None else None
            gate = LookupGate(medusa_lookup, heads_top1=top1, answers=index, **priced)
            if priced and not medusa_choices:
                gate = self._lookup_alone(gate, drafter)
        tree = Tree(medusa_choices, n_heads=drafter.n_heads, top_k=medusa_top_k)
        if isinstance(drafter, HeadsDrafter):
            drafter.max_depth = max(tree.depth, 1)  # its propose() then skips heads the tree never reads
        self._medusa = _MedusaState(
            drafter=drafter,
            tree=tree,
            top_k=medusa_top_k or max(tree.top_k, 1),
            n_embd=n_embd,
            typical=(posterior_threshold, posterior_alpha) if posterior_threshold is not None else None,
            max_batch=medusa_max_batch,
            lookup=gate,
        )
        # a lookup branch adds at most one leaf (it hangs below one node as a chain)
        self._prepare_context(n_seq=max(1, tree.n_leaves) + (gate is not None))

    def _lookup_alone(self, gate: LookupGate, drafter) -> Optional[LookupGate]:
        """Under "auto" with no heads tree: the lookup gate, or None (plain decoding in stock's loop) when replaying
        it over the heads file's reference texts on this cost curve promises less than lookup.REPLAY_MIN_GAIN.
        Without reference texts the gate is kept and priced step by step, as before they existed."""
        self._lookup_gate = gate  # kept for replay_lookup() whichever way this goes
        texts = getattr(getattr(drafter, "heads", None), "reference_texts", lambda: [])()
        if not texts:
            return gate
        a = self.medusa_auto
        ratios = self.replay_lookup(texts)
        a.update(lookup_predicted_speedup=float(np.median(ratios)), lookup_replay_texts=len(ratios))
        a["lookup"] = a["lookup_predicted_speedup"] >= lookup.REPLAY_MIN_GAIN
        if a["lookup"]:
            a["predicted_speedup"] = a["lookup_predicted_speedup"]  # what runs: the lookup alone
            return gate
        return None

    def replay_lookup(self, texts) -> Optional[List[float]]:
        """Per text (token ids of prompt + greedy answer, prompt length): the speedup over stock's loop that the
        lookup alone would give on this machine's cost curve, from the same replay as the load-time decision. The
        bench replays stock's answers to its prompts, so its prediction is for the texts it measures. None unless
        `auto` chose no heads tree and the lookup is on (only then is the lookup alone priced). It resets the gate's
        running hit rates, as a new generation does: call it between generations."""
        return self._walk_lookup("replay", texts)

    def lookup_oracle(self, texts) -> Optional[List[float]]:
        """As replay_lookup, for a gate that knew which drafted tokens are right (LookupGate.oracle): the most the
        lookup's drafts could give on these texts on this machine's cost curve. None where replay_lookup is."""
        return self._walk_lookup("oracle", texts)

    def _walk_lookup(self, how: str, texts) -> Optional[List[float]]:
        from .autotree import STOCK_TOKEN_OVERHEAD_S

        gate = getattr(self, "_lookup_gate", None)
        if gate is None:
            return None
        walk = getattr(gate, how)
        return walk([(np.asarray(t), int(n)) for t, n in texts], stock_token_s=STOCK_TOKEN_OVERHEAD_S)

    def _heads_device(self, want: str, heads: MedusaHeads) -> str:
        if want not in ("auto", "cpu", "gpu"):
            raise ValueError(f"medusa_device must be 'auto', 'cpu' or 'gpu', got {want!r}")
        if want != "auto":
            return want
        if heads.conditioned:
            return "cpu"  # the GPU module evaluates plain Medusa heads only
        from . import gpu

        offloaded = self.model_params.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        return "gpu" if offloaded and gpu.available() else "cpu"

    def _auto_choices(self, drafter, n_embd: int, top_k: int, max_batch: int):
        from . import autotree

        self._medusa = _MedusaState(drafter, Tree([]), top_k, n_embd, None, max_batch)
        self._prepare_context(n_seq=1)  # measure on a context like the one that will verify
        cost = autotree.cost_curve(self, sizes=[T for T in autotree.COST_SIZES if T <= max_batch])
        acc = autotree.accuracy_table(drafter, top_k)
        t_heads = autotree.heads_time(drafter, n_embd, top_k)
        self.medusa_auto = autotree.choose(acc, cost, t_heads, max_nodes=max_batch - 1 - drafter.n_heads)
        self.medusa_auto.update(cost_s=cost, heads_cost=t_heads.as_dict())
        return self.medusa_auto["choices"]

    # ------------------------------------------------------------------ the backbone (llama.cpp)
    # _MedusaRun reaches the backbone only through the methods below; BitnetLlama (bitnet_llama.py) implements
    # them over the native I2_S engine. Tree node i is row base + i of the last verify batch.
    def _load_backbone(self, model_path: str, *args, **kwargs) -> None:
        super().__init__(model_path, *args, **kwargs)

    def _n_embd(self) -> int:
        return int(llama_cpp.llama_model_n_embd(self._model.model))

    def _backbone_projection(self, heads) -> Optional[np.ndarray]:
        return None  # heads with a shared projection read output.weight from the GGUF (gguf_heads.py)

    def _token_embedding(self):
        """The backbone's token embedding, for token-conditioned heads (rows dequantised from the GGUF on demand)."""
        from .gguf_heads import TokenEmbedding

        emb = TokenEmbedding.from_gguf(self.model_path)
        if emb.n_vocab != self._n_vocab:
            raise ValueError(f"{self.model_path}: token_embd.weight has {emb.n_vocab} rows, the vocabulary "
                             f"{self._n_vocab}")
        return emb

    def _embedded_heads(self):
        return None  # llama.cpp refuses GGUFs with tensors its graph does not use, so no heads ride along

    def _prepare_context(self, n_seq: int) -> None:
        self._rebuild_context(n_seq)

    def _pending(self):
        """(kv, pending): the cache holds the first kv tokens; pending accepted tokens are decoded again first."""
        kv = min(self._kv_len(), self.n_tokens)
        if self.n_tokens - kv > self._medusa.max_depth:  # more than a step can re-decode (tokens pushed with send())
            self.eval([])
            kv = self.n_tokens
        return kv, [int(t) for t in self.input_ids[kv : self.n_tokens]]

    def _verify(self, pending: List[int], kv: int, P: int, tree: Tree, node_tokens: List[int]) -> int:
        """One llama_decode of pending chain (all sequences) + the tree in depth-first order. Returns its size."""
        m = self._medusa
        b = m.batch.batch
        all_seqs = range(m.n_seq)
        n = 0
        for i, tok in enumerate(pending):
            _put(b, n, tok, kv + i, all_seqs)
            n += 1
        m.base = n
        for i, node in enumerate(tree.nodes):
            _put(b, n, node_tokens[i], P + node.depth, all_seqs if i == 0 else node.seqs)
            n += 1
        b.n_tokens = n
        llama_cpp.llama_set_embeddings(self._ctx.ctx, m.need_hidden)
        rc = llama_cpp.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} while verifying a {n}-token tree")
        return n

    def _node_logits(self, i: int) -> np.ndarray:
        """Node i's logits: a view of llama.cpp's buffer, valid until the next decode (the step's walk, stopping
        criteria and logprobs all read it before then; a copy per token was 0.09 ms, 0.7% of a SmolLM2 token)."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, self._medusa.base + i)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def _sample_node(self, i: int) -> int:
        return self._sampler.sample(self._ctx, self._medusa.base + i)

    def _node_hidden(self, i: int) -> np.ndarray:
        emb = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, self._medusa.base + i)
        return np.ctypeslib.as_array(emb, shape=(self._medusa.n_embd,)).copy()

    def _last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _sample_last(self) -> int:
        return self._sampler.sample(self._ctx, -1)

    def _keep(self, P: int, tree: Tree, path: List[int]) -> None:
        """KV after a step: pending + root + the accepted nodes that directly follow the root in the batch stay;
        accepted nodes further on are dropped (decoded again next step, in position order)."""
        m, mem = self._medusa, self._mem()
        kc = 1
        while kc < len(path) and path[kc] == kc:
            kc += 1
        end = P + kc
        llama_cpp.llama_memory_seq_rm(mem, -1, end, -1)
        if kc > 1:
            keep = set(tree.nodes[path[kc - 1]].seqs)
            src = min(keep)
            for s in range(m.n_seq):
                if s not in keep:
                    llama_cpp.llama_memory_seq_rm(mem, s, P + 1, -1)
                    llama_cpp.llama_memory_seq_cp(mem, src, s, P + 1, end)

    def _measure_verify(self, sizes: Sequence[int], repeats: int) -> Dict[int, float]:
        from .autotree import time_llama_decode

        return time_llama_decode(self, sizes, repeats)

    # ------------------------------------------------------------------ context
    def _rebuild_context(self, n_seq: int) -> None:
        """Recreates the llama_context with what a tree needs: n_seq_max sequences in one unified KV cache and
        per-token final-norm states (pooling NONE, embeddings switched on only for verify decodes)."""
        limit = min(llama_cpp.llama_max_parallel_sequences(), self.n_batch)
        if n_seq > limit:
            raise ValueError(f"the tree has {n_seq} leaves (one KV sequence each); at most {limit} fit (n_batch="
                             f"{self.n_batch} and llama.cpp's limit): raise n_batch or choose a smaller tree")
        if self.context_params.n_ctx < 2:
            raise ValueError("n_ctx is too small for speculation")
        if not hasattr(self, "_user_pooling"):  # the context the user asked for: what embed() and pickle must give
            self._user_pooling = llama_cpp.llama_pooling_type(self._ctx.ctx) if self.context_params.embeddings else None
            self._user_context = dict(embedding=bool(self.context_params.embeddings),
                                      pooling_type=int(self.context_params.pooling_type),
                                      swa_full=bool(self.context_params.swa_full))
        if llama_cpp.llama_model_n_swa(self._model.model) > 0 and not self.context_params.swa_full:
            # A window-sized SWA cache cannot hold a tree: llama.cpp recycles an out-of-window cell only when one
            # sequence owns it, and the tree's leaves share every committed cell, so the cache runs out of slots
            # (measured: llama_decode returned 1 mid-answer, synthetic gemma3 with a 16-token window). llama.cpp's
            # own speculative decoding turns the full-size cache on for SWA models too.
            warnings.warn("swa_full=False does not fit a Medusa tree (the cells its branches share are never "
                          "recycled, so the window-sized cache runs out of slots): using the full-size SWA cache, "
                          "which needs the KV memory of a non-SWA model", RuntimeWarning, stacklevel=4)
            self.context_params.swa_full = True
        pool_nothing(self)
        self._ctx.close()
        self.context_params.n_seq_max = n_seq
        self.context_params.kv_unified = True
        self.context_params.embeddings = False
        self._ctx = self._stack.enter_context(
            contextlib.closing(internals.LlamaContext(model=self._model, params=self.context_params, verbose=self.verbose))
        )
        if self._lora_adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora_adapter)
            scales = (ctypes.c_float * 1)(self.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales):
                raise RuntimeError(f"Failed to set LoRA adapter from lora path: {self.lora_path}")
        m = self._medusa
        m.n_seq = n_seq
        cap = len(m.tree) + m.lookup_tokens + m.max_depth + 1
        m.batch = self._stack.enter_context(
            contextlib.closing(internals.LlamaBatch(n_tokens=cap, embd=0, n_seq_max=n_seq, verbose=self.verbose))
        )
        self.n_tokens = 0
        self._requires_eval = True
        self._fit_buffers_to_context()

    def _fit_buffers_to_context(self) -> None:
        """llama.cpp rounds n_ctx up (to 256); stock sizes its token/score arrays by the requested n_ctx but
        generates up to the real one. Size them by the real one so a full window fits."""
        self._n_ctx = self.n_ctx()
        if self.input_ids.shape[0] < self._n_ctx:
            self.input_ids = np.zeros((self._n_ctx,), dtype=np.intc)
            if self._logits_all:
                self.scores = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)

    @property
    def medusa_tree(self) -> Optional[Tree]:
        return self._medusa.tree if self._medusa else None

    def _mem(self):
        return llama_cpp.llama_get_memory(self._ctx.ctx)

    def _kv_len(self) -> int:
        return int(llama_cpp.llama_memory_seq_pos_max(self._mem(), 0)) + 1

    def _truncate(self, n: int) -> None:
        """Forgets every cell at position >= n in every sequence (stock's kv_cache_seq_rm(-1, ...) only reaches
        sequence 0)."""
        llama_cpp.llama_memory_seq_rm(self._mem(), -1, n, -1)
        self.n_tokens = min(self.n_tokens, n)

    def _mirror(self, start: int) -> None:
        """Copies sequence 0's cells from `start` on into every other sequence (metadata only)."""
        mem = self._mem()
        for s in range(1, self._medusa.n_seq):
            llama_cpp.llama_memory_seq_cp(mem, 0, s, start, -1)

    # ------------------------------------------------------------------ stock entry points kept consistent
    def reset(self):
        super().reset()
        if self._medusa is not None:
            llama_cpp.llama_memory_seq_rm(self._mem(), -1, -1, -1)

    def eval(self, tokens: Sequence[int]):
        if self._medusa is None:
            return super().eval(tokens)
        # Accepted tokens that were dropped from the cache to keep it in position order are decoded first.
        kv = min(self._kv_len(), self.n_tokens)
        tokens = [int(t) for t in self.input_ids[kv : self.n_tokens]] + list(tokens)
        self._truncate(kv)
        llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
        super().eval(tokens)
        self._mirror(kv)

    def embed(self, input, normalize: bool = False, truncate: bool = True, return_count: bool = False):
        """Stock's embed() on the tree context, one text per decode. The tree context pools nothing (the tree
        needs every token's state), so the pooling of the context the user asked for (mean, CLS, last) is applied
        here to the per-token states. One text per decode because stock's reader of unpooled batches offsets
        every text after the first by its predecessors' token count in floats instead of rows (llama-cpp-python
        0.3.36), which returns other texts' numbers for them."""
        if self._medusa is None:
            return super().embed(input, normalize=normalize, truncate=truncate, return_count=return_count)
        pooling = self._user_pooling
        if pooling is None:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        pool = {llama_cpp.LLAMA_POOLING_TYPE_NONE: None,
                llama_cpp.LLAMA_POOLING_TYPE_MEAN: lambda x: x.mean(axis=0),
                llama_cpp.LLAMA_POOLING_TYPE_CLS: lambda x: x[0],
                llama_cpp.LLAMA_POOLING_TYPE_LAST: lambda x: x[-1]}
        if pooling not in pool:
            raise ValueError(f"pooling type {pooling} (reranking) is not available with medusa_heads: the tree "
                             "context pools nothing; load the model without medusa_heads for it")
        pick = pool[pooling]
        data, count = [], 0
        self.context_params.embeddings = True
        llama_cpp.llama_set_embeddings(self._ctx.ctx, True)
        try:
            for text in [input] if isinstance(input, str) else input:
                rows, n = super().embed(text, normalize=normalize and pick is None, truncate=truncate,
                                        return_count=True)
                count += n
                if pick is not None:
                    rows = [float(x) for x in pick(np.asarray(rows, dtype=np.float32))]
                    rows = internals.normalize_embedding(rows) if normalize else rows
                data.append(rows)
        finally:
            self.context_params.embeddings = False
            llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
        data = data[0] if isinstance(input, str) else data
        return (data, count) if return_count else data

    def close(self) -> None:
        if hasattr(self, "_stack"):  # absent when an argument or the model was refused before stock's __init__ ran
            super().close()

    def __getstate__(self):
        """Stock's state (pickling re-runs __init__ with it) plus the medusa_* arguments, and the context the user
        asked for rather than the tree context this one became (embeddings off, pooling NONE)."""
        state = super().__getstate__()
        state.update(self._medusa_args)
        state.update(getattr(self, "_user_context", {}))
        return state

    def load_state(self, state) -> None:
        super().load_state(state)
        if self._medusa is not None:  # a state saved mid-speculation may hold more cells than tokens
            llama_cpp.llama_memory_seq_rm(self._mem(), -1, self.n_tokens, -1)
            self._mirror(0)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        penalize_nl: bool = True,
        logits_processor=None,
        stopping_criteria=None,
        grammar=None,
    ) -> Generator[int, Optional[Sequence[int]], None]:
        sampling = dict(
            top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, tfs_z=tfs_z,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            penalize_nl=penalize_nl, logits_processor=logits_processor, grammar=grammar,
        )
        # no heads, or "auto" found no tree that wins and no lookup branch is tried
        plain = self._medusa is None or (len(self._medusa.tree) == 1 and self._medusa.lookup is None)
        if plain and not self._own_plain_decoding:
            yield from super().generate(tokens, reset=reset, stopping_criteria=stopping_criteria, **sampling)
            return
        self._mirostat_mu = ctypes.c_float(2.0 * mirostat_tau)
        self._sampler = self._init_sampler(**sampling)
        typical = self._medusa.typical if (temp > 0 and grammar is None and mirostat_mode == 0) else None
        yield from _MedusaRun(self, list(tokens), reset, stopping_criteria, typical, temp).run()


def pool_nothing(llm: llama_cpp.Llama) -> None:
    """Makes the context llm builds next return every token's state (pooling NONE), naming NONE only where the
    current context pools: naming it where the model's default already resolves to it makes llama.cpp log "model
    default pooling_type is [-1], but [0] was specified" on every load."""
    if llama_cpp.llama_pooling_type(llm._ctx.ctx) != llama_cpp.LLAMA_POOLING_TYPE_NONE:
        llm.context_params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE


def _check_arguments(heads, top_k, max_batch, lookup, threshold, alpha) -> None:
    """The medusa_* arguments' types and ranges, with messages (native code would raise pybind11's TypeError)."""
    def whole(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not (isinstance(heads, (str, os.PathLike, MedusaHeads)) or hasattr(heads, "propose")):
        raise TypeError(f"medusa_heads must be a heads file path, a MedusaHeads or an object with propose(); got "
                        f"{type(heads).__name__}")
    if top_k is not None and not (whole(top_k) and top_k >= 1):
        raise ValueError(f"medusa_top_k must be an integer >= 1 (candidates per head), got {top_k!r}")
    if not whole(max_batch):
        raise ValueError(f"medusa_max_batch must be an integer (tokens per verify batch), got {max_batch!r}")
    if not whole(lookup) or lookup < 0:
        raise ValueError(f"medusa_lookup must be an integer >= 0 (tokens per lookup branch), got {lookup!r}")
    if (threshold is None) != (alpha is None):
        raise ValueError("typical acceptance needs both posterior_threshold and posterior_alpha")
    for name, v in (("posterior_threshold", threshold), ("posterior_alpha", alpha)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
            raise ValueError(f"{name} must be in (0, 1] (the Medusa paper uses 0.09 and 0.3), got {v!r}")


class _MedusaState:
    def __init__(self, drafter, tree: Tree, top_k: int, n_embd: int, typical, max_batch: int,
                 lookup: Optional[LookupGate] = None):
        if max_batch < tree.depth + 1:
            raise ValueError(f"a verify batch of at most {max_batch} tokens (medusa_max_batch, n_batch) cannot hold "
                             f"even one path of the {tree.depth}-deep tree")
        self.max_batch = max_batch
        self.drafter = drafter
        self.tree = tree
        self.top_k = top_k
        self.n_embd = n_embd
        self.typical = typical
        self.n_seq = 1
        self.batch: Optional[internals.LlamaBatch] = None  # the llama.cpp verify batch
        self.base = 0  # batch row of the tree's root in the last verify pass
        self.lookup = lookup
        self.lookup_tokens = lookup.max_tokens if lookup is not None else 0
        self.max_depth = max(tree.depth, self.lookup_tokens)  # deepest node a step can accept
        self.need_hidden = len(tree) > 1  # the heads read final-norm states; a lookup-only step needs none
        self._limited = {}
        fill = getattr(drafter, "fill", None)
        self.fill = fill if fill is not None else (
            lambda hidden, tokens, tree, k: tree.tokens(int(tokens[-1]), drafter.propose(hidden, tokens, k)))

    def tree_within(self, max_nodes: int, max_depth: int) -> Tree:
        """The tree cut to the first max_nodes nodes (depth-first, so still a tree) and max_depth levels."""
        if max_nodes >= len(self.tree) and max_depth >= self.tree.depth:
            return self.tree
        key = (min(max_nodes, len(self.tree)), min(max_depth, self.tree.depth))
        if key not in self._limited:
            keep = [n.path for i, n in enumerate(self.tree.nodes[1:], 1) if i < key[0] and n.depth <= key[1]]
            self._limited[key] = Tree(keep)
        return self._limited[key]


class _MedusaRun:
    """One generate() call. Invariants between steps: input_ids[:n_tokens] are the tokens whose logits exist;
    the KV cache holds the first `kv` of them in every sequence (the rest are re-decoded next step); `root` is the
    last sampled token, already yielded, not yet decoded."""

    def __init__(self, llm: Llama, tokens: List[int], reset: bool, stopping_criteria, typical, temp: float):
        self.llm = llm
        self.m = llm._medusa
        self.tokens = tokens
        self.reset = reset
        self.stopping_criteria = stopping_criteria
        self.typical = typical
        self.temp = temp
        self.stats = MedusaStats()
        llm.medusa_stats = self.stats
        if self.m.lookup is not None:
            self.m.lookup.reset()  # hit rates are per text
        self.n_vocab = llm._n_vocab

    def _prefill(self) -> int:
        """Decodes the prompt (reusing the cached prefix) like stock and samples the first token."""
        llm = self.llm
        t0 = time.perf_counter()
        known = min(llm.n_tokens, llm._kv_len())
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
        llm._truncate(keep)
        llm.n_tokens = keep
        # The prefix may hold cells decoded into sequence 0 alone, past eval(): llama-cpp-python's multimodal chat
        # handlers decode image embeddings that way. Every tree leaf needs them, so mirror the whole prefix again
        # (metadata only: microseconds per call).
        llm._mirror(0)
        llm.eval(full[keep:])
        self.stats.time_prompt += time.perf_counter() - t0
        return llm._sample_last()

    def run(self):
        llm = self.llm
        root = self._prefill()
        if self.stopping_criteria is not None:
            if self.stopping_criteria(llm._input_ids, llm._last_logits()):
                return
        sent = yield root
        hidden = None
        while True:
            if sent is not None:  # the caller pushed tokens (generator.send): decode them, heads restart
                llm.input_ids[llm.n_tokens] = root
                llm.input_ids[llm.n_tokens + 1 : llm.n_tokens + len(sent)] = list(sent)[:-1]
                llm.n_tokens += len(sent)
                root, hidden = int(list(sent)[-1]), None
            emitted, rows, hidden = self._step(root, hidden)
            p_root = llm.n_tokens - len(emitted)  # position of the root just verified
            for j, tok in enumerate(emitted):
                llm.n_tokens = p_root + j + 1
                if self.stopping_criteria is not None and self.stopping_criteria(
                    llm.input_ids[: llm.n_tokens], rows[j]
                ):
                    return
                sent = yield tok
                if sent is not None:
                    llm.n_tokens = p_root + j + 1
                    self._drop_after(llm.n_tokens)
                    break
            root = emitted[-1] if sent is None else tok

    def _drop_after(self, n: int) -> None:
        """Forgets cells beyond the first n tokens (the caller diverged from the accepted run)."""
        llm = self.llm
        if llm._kv_len() > n:
            llm._truncate(n)

    def _step(self, root: int, hidden: Optional[np.ndarray]):
        """Verifies pending tokens + root + tree in one backbone pass, walks it with the sampler, fixes the cache.
        Returns (sampled tokens, their logits rows for stopping criteria, hidden state of the last accepted node)."""
        llm, m, st = self.llm, self.m, self.stats
        n_ctx = llm._n_ctx
        t0 = time.perf_counter()
        kv, pending = llm._pending()
        P = llm.n_tokens  # the root's position
        room_nodes = n_ctx - kv - len(pending)
        if room_nodes < 1 or P >= n_ctx:
            raise RuntimeError(f"llama_decode returned 1: the context window of {n_ctx} tokens is full")

        # 1. candidates from the heads, then the context-lookup branch
        room, deepest = min(room_nodes, m.max_batch - len(pending)), n_ctx - 1 - P
        tree = m.tree_within(room, deepest)
        llm.input_ids[P] = root
        context = llm.input_ids[: P + 1]  # a view, no copy
        heads_s = 0.0
        if hidden is None or len(tree) == 1:
            tree, node_tokens = m.tree_within(1, 0), [root]
        else:
            t1 = time.perf_counter()
            node_tokens = m.fill(hidden, context, tree, m.top_k)
            heads_s = time.perf_counter() - t1
            st.time_heads += heads_s
        chain, grafted, bucket = [], (), -1
        if m.lookup is not None:
            chain, bucket = m.lookup.draft(context, len(pending) + len(tree))
            if chain:
                tree, node_tokens, grafted = self._graft(tree, node_tokens, chain, bucket, room, deepest,
                                                         len(pending))

        # 2. one backbone pass over pending + tree
        t1 = time.perf_counter()
        st.time_bookkeeping += t1 - t0 - heads_s
        n = llm._verify(pending, kv, P, tree, node_tokens)
        t2 = time.perf_counter()
        st.time_verify += t2 - t1

        # 3. walk the tree with the sampler chain
        ids = llm.input_ids
        ids[kv : kv + len(pending)] = pending
        path = [0]
        emitted, rows = [], []
        want_rows = self.stopping_criteria is not None or llm._logits_all
        while True:
            i = path[-1]
            node = tree.nodes[i]
            ids[P + node.depth] = node_tokens[i]
            llm.n_tokens = P + node.depth + 1  # what logits processors see as input_ids
            row = llm._node_logits(i) if (want_rows or self.typical is not None) else None
            tok = self._choose(i, node, node_tokens, row)
            emitted.append(tok)
            rows.append(row)
            nxt = next((c for c in node.children if node_tokens[c] == tok), None)
            if nxt is None:
                break
            path.append(nxt)
        t3 = time.perf_counter()
        st.time_sample += t3 - t2

        if chain:
            m.lookup.observe(chain, emitted, bucket)
            taken = len(set(path) & set(grafted))
            st.lookup_nodes += len(grafted)
            st.lookup_accepted += taken
            if bucket >= lookup.CONTEXT_NGRAM:
                st.answers_nodes += len(grafted)
                st.answers_accepted += taken

        # 4. results: logits rows for logprobs, the deepest accepted node's final-norm state for the heads
        if llm._logits_all:
            for d, r in enumerate(rows):
                llm.scores[P + d, :] = r
        new_hidden = llm._node_hidden(path[-1]) if m.need_hidden else None

        # 5. the backbone keeps what was accepted
        llm._keep(P, tree, path)
        llm.n_tokens = P + len(path)
        llm._requires_eval = False

        st.steps += 1
        st.tokens += len(emitted)
        st.batch_tokens += n
        st.redecoded += len(pending)
        st.note_depths(tree.depth, len(path) - 1)
        st.time_bookkeeping += time.perf_counter() - t3
        return emitted, rows, new_hidden

    def _graft(self, tree: Tree, node_tokens: List[int], chain: List[int], bucket: int, room: int, deepest: int,
               n_pending: int):
        """Hangs the looked-up tokens that the tree does not already hold below the node where they leave it, as
        many as fit and as the gate finds worth their verify cost. Returns (tree, node tokens, grafted rows)."""
        gate = self.m.lookup
        at, matched = lookup.graft_point(tree, node_tokens, chain)
        new = min(len(chain) - matched, room - len(tree), deepest - tree.nodes[at].depth)
        n = gate.count(n_pending + len(tree), matched, new, bucket) if new > 0 else 0
        if n <= 0:
            return tree, node_tokens, ()
        grown, old_rows, chain_rows = tree.grafted(at, n, gate.first(matched, tree.nodes[at].depth, bucket))
        tokens = [0] * len(grown)
        for i, j in enumerate(old_rows):
            tokens[j] = node_tokens[i]
        for j, tok in zip(chain_rows, chain[matched : matched + n]):
            tokens[j] = tok
        return grown, tokens, chain_rows

    def _choose(self, i: int, node, node_tokens, row) -> int:
        """The token at one tree node: the sampler chain's choice, or with typical acceptance the likeliest
        child when it clears the entropy-scaled threshold."""
        llm = self.llm
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
                llm._sampler.accept(tok)
                return tok
        return llm._sample_node(i)


def _put(b, i: int, tok: int, pos: int, seqs) -> None:
    b.token[i] = tok
    b.pos[i] = pos
    k = 0
    for s in seqs:
        b.seq_id[i][k] = s
        k += 1
    b.n_seq_id[i] = k
    b.logits[i] = True
