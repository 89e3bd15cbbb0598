"""The llama.cpp backbone: a tree verified in one `llama_decode` over a unified KV cache.

Every leaf of the tree is a llama.cpp sequence; a node belongs to the sequences of the leaves below it, so the
cache's per-cell sequence sets give each node exactly its ancestors as context. All sequences mirror the committed
prefix (the bookkeeping of llama.cpp's lookahead example), so a step edits only the cells of its own tree.
llama-cpp-python's Llama has no n_seq_max / kv_unified arguments, so the context is rebuilt here (`prepare`).
Exactness needs KV cells in position order (docs/DESIGN.md, "Exactness"): `keep` drops accepted nodes that do not
directly follow the root in the batch, and `pending` hands them back to be decoded again first.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from ..drafting.tree import Tree
from .base import PendingTokens

# Batches this big cost 5-20 t(1) on a CPU and no tree of them wins there: three timings each are enough, and they
# were most of the measuring time (BENCHMARKS.md, "Cost curve")
BIG_BATCH, BIG_REPEATS = 24, 3


class LlamaCppBackbone(PendingTokens):
    name = "llama.cpp"

    @staticmethod
    def claims(model_path) -> Optional[object]:
        return True  # the fallback: llama.cpp reports what is wrong with a file it cannot load

    def __init__(self, llm, model_path, handle, *args, **kwargs):
        self.llm = llm
        llm._backbone = self  # stock's __init__ may already call what the public class forwards here
        llama_cpp.Llama.__init__(llm, model_path, *args, **kwargs)
        self.n_embd = int(llama_cpp.llama_model_n_embd(llm._model.model))
        self.speculating = False  # True once prepare() made the tree context
        self.batch: Optional[internals.LlamaBatch] = None  # the verify batch
        self.n_seq = 1
        self.base = 0  # batch row of the tree's root in the last verify pass
        self._run = None  # runs every llama_decode (decode_thread.run) when set

    def run_decodes_on(self, run) -> None:
        """Every llama_decode of this model through run(fn, *args) (backbones/decode_thread.py), stock's paths
        included; kept when prepare() makes a new context."""
        self._run = run
        ctx = self.llm._ctx
        decode = type(ctx).decode
        ctx.decode = lambda batch: run(decode, ctx, batch)

    def _decode(self, ctx, batch) -> int:
        return self._run(llama_cpp.llama_decode, ctx, batch) if self._run else llama_cpp.llama_decode(ctx, batch)

    # ------------------------------------------------------------------ what heads read from the model
    def projection(self, heads) -> Optional[np.ndarray]:
        return None  # heads with a shared projection read output.weight from the GGUF (gguf_tensors.py)

    def token_embedding(self):
        """The token embedding, for token-conditioned heads (rows dequantised from the GGUF on demand)."""
        from .gguf_tensors import TokenEmbedding

        llm = self.llm
        emb = TokenEmbedding.from_gguf(llm.model_path)
        if emb.n_vocab != llm._n_vocab:
            raise ValueError(f"{llm.model_path}: token_embd.weight has {emb.n_vocab} rows, the vocabulary "
                             f"{llm._n_vocab}")
        return emb

    def embedded_heads(self):
        return None  # llama.cpp refuses GGUFs with tensors its graph does not use, so no heads ride along

    def heads_device(self, want: str, heads) -> str:
        if want != "auto":
            return want
        if heads.conditioned:
            return "cpu"  # the GPU module evaluates plain Medusa heads only
        from .. import gpu

        offloaded = self.llm.model_params.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        return "gpu" if offloaded and gpu.available() else "cpu"

    def thread_settings(self) -> List[Tuple[int, int]]:
        """(threads for one-token decodes, threads for batches) worth timing: 1, powers of two and every core,
        each for either (llama.cpp's n_threads and n_threads_batch). Offloaded models keep theirs."""
        llm = self.llm
        if llm.model_params.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload():
            return [(llm.n_threads, llm.n_threads_batch)]
        counts = thread_counts()
        return [(n, nb) for n in counts for nb in counts]

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        llm = self.llm
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, n_threads, n_threads_batch)
        llm.n_threads = llm.context_params.n_threads = n_threads  # a rebuilt context keeps them
        llm.n_threads_batch = llm.context_params.n_threads_batch = n_threads_batch

    def check_speculation(self) -> None:
        llm = self.llm
        if llm._is_recurrent or llm._is_hybrid:
            raise ValueError("Medusa trees need an attention-only model: recurrent/hybrid memories cannot branch")

    # ------------------------------------------------------------------ the verify pass
    def prepare(self, n_seq: int, batch_capacity: int) -> None:
        """Recreates the llama_context with what a tree needs: n_seq_max sequences in one unified KV cache and
        per-token final-norm states (pooling NONE, embeddings switched on only for verify decodes)."""
        llm = self.llm
        limit = min(llama_cpp.llama_max_parallel_sequences(), llm.n_batch)
        if n_seq > limit:
            raise ValueError(f"the tree has {n_seq} leaves (one KV sequence each); at most {limit} fit (n_batch="
                             f"{llm.n_batch} and llama.cpp's limit): raise n_batch or choose a smaller tree")
        if llm.context_params.n_ctx < 2:
            raise ValueError("n_ctx is too small for speculation")
        if not hasattr(llm, "_user_pooling"):  # the context the user asked for: what embed() and pickle must give
            llm._user_pooling = llama_cpp.llama_pooling_type(llm._ctx.ctx) if llm.context_params.embeddings else None
            llm._user_context = dict(embedding=bool(llm.context_params.embeddings),
                                     pooling_type=int(llm.context_params.pooling_type),
                                     swa_full=bool(llm.context_params.swa_full))
        if llama_cpp.llama_model_n_swa(llm._model.model) > 0 and not llm.context_params.swa_full:
            # A window-sized SWA cache cannot hold a tree: llama.cpp recycles an out-of-window cell only when one
            # sequence owns it, and the tree's leaves share every committed cell, so the cache runs out of slots.
            # llama.cpp's own speculative decoding turns the full-size cache on for SWA models too.
            warnings.warn("swa_full=False does not fit a Medusa tree (the cells its branches share are never "
                          "recycled, so the window-sized cache runs out of slots): using the full-size SWA cache, "
                          "which needs the KV memory of a non-SWA model", RuntimeWarning, stacklevel=5)
            llm.context_params.swa_full = True
        pool_nothing(llm)
        llm._ctx.close()
        llm.context_params.n_seq_max = n_seq
        llm.context_params.kv_unified = True
        llm.context_params.embeddings = False
        llm._ctx = llm._stack.enter_context(
            contextlib.closing(internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=llm.verbose))
        )
        if llm._lora_adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
                raise RuntimeError(f"Failed to set LoRA adapter from lora path: {llm.lora_path}")
        self.n_seq = n_seq
        self.batch = llm._stack.enter_context(
            contextlib.closing(internals.LlamaBatch(n_tokens=batch_capacity, embd=0, n_seq_max=n_seq,
                                                    verbose=llm.verbose))
        )
        self.speculating = True
        llm.n_tokens = 0
        llm._requires_eval = True
        fit_buffers_to_context(llm)
        if self._run is not None:
            self.run_decodes_on(self._run)

    def verify(self, pending: List[int], kv: int, P: int, tree: Tree, node_tokens: List[int],
               need_hidden: bool) -> int:
        """One llama_decode of pending chain (all sequences) + the tree in depth-first order. Returns its size."""
        b = self.batch.batch
        all_seqs = range(self.n_seq)
        n = 0
        for i, tok in enumerate(pending):
            _put(b, n, tok, kv + i, all_seqs)
            n += 1
        self.base = n
        for i, node in enumerate(tree.nodes):
            _put(b, n, node_tokens[i], P + node.depth, all_seqs if i == 0 else node.seqs)
            n += 1
        b.n_tokens = n
        ctx = self.llm._ctx.ctx
        llama_cpp.llama_set_embeddings(ctx, need_hidden)
        rc = self._decode(ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} while verifying a {n}-token tree")
        return n

    def node_logits(self, i: int) -> np.ndarray:
        """Node i's logits: a view of llama.cpp's buffer, valid until the next decode (the step's walk, stopping
        criteria and logprobs all read it before then; a copy per token was 0.7% of a SmolLM2 token)."""
        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, self.base + i)
        return np.ctypeslib.as_array(ptr, shape=(self.llm._n_vocab,))

    def sample_node(self, i: int) -> int:
        return self.llm._sampler.sample(self.llm._ctx, self.base + i)

    def node_hidden(self, i: int) -> np.ndarray:
        emb = llama_cpp.llama_get_embeddings_ith(self.llm._ctx.ctx, self.base + i)
        return np.ctypeslib.as_array(emb, shape=(self.n_embd,)).copy()

    def last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm._n_vocab,)).copy()

    def sample_last(self) -> int:
        return self.llm._sampler.sample(self.llm._ctx, -1)

    def keep(self, P: int, tree: Tree, path: List[int]) -> None:
        """KV after a step: pending + root + the accepted nodes that directly follow the root in the batch stay;
        accepted nodes further on are dropped (decoded again next step, in position order)."""
        mem = self._mem()
        kc = 1
        while kc < len(path) and path[kc] == kc:
            kc += 1
        end = P + kc
        llama_cpp.llama_memory_seq_rm(mem, -1, end, -1)
        if kc > 1:
            keep = set(tree.nodes[path[kc - 1]].seqs)
            src = min(keep)
            for s in range(self.n_seq):
                if s not in keep:
                    llama_cpp.llama_memory_seq_rm(mem, s, P + 1, -1)
                    llama_cpp.llama_memory_seq_cp(mem, src, s, P + 1, end)

    def measure_verify(self, sizes: Sequence[int], repeats: int) -> Dict[int, float]:
        """Median seconds of one llama_decode of T tokens after a prefix, each timed as the decode loop meets it:
        right after a plain one-token decode. T = 1 is then stock's token (embeddings off, the graph of the token
        before reused); T > 1 a verify pass (every token an output, embeddings on), which after a one-token decode
        also wakes the batch threads (BENCHMARKS.md, "Cost curve")."""
        llm = self.llm
        ctx = llm._ctx.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        prefix = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6)
        prefix = prefix[: max(1, min(len(prefix), llm.n_ctx() - max(sizes) - 1))]
        batch = llama_cpp.llama_batch_init(max(len(prefix), max(sizes)), 0, 1)

        def decode(toks, p0, outputs) -> float:
            for i, t in enumerate(toks):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p0 + i, 1, outputs
                batch.seq_id[i][0] = 0
            batch.logits[len(toks) - 1] = True
            batch.n_tokens = len(toks)
            t0 = time.perf_counter()
            if self._decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed while measuring the verify cost")
            return time.perf_counter() - t0

        def step(T) -> float:
            llama_cpp.llama_memory_seq_rm(mem, -1, len(prefix), -1)
            llama_cpp.llama_set_embeddings(ctx, T > 1)
            return decode([prefix[i % len(prefix)] for i in range(T)], len(prefix), True)

        try:
            llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
            llama_cpp.llama_set_embeddings(ctx, False)
            for i in range(0, len(prefix), llm.n_batch):  # at most n_batch tokens per llama_decode
                decode(prefix[i : i + llm.n_batch], i, False)
            times: Dict[int, List[float]] = {T: [] for T in sizes}
            # sizes interleaved, round after round, so that a slow spell on a shared machine hits all sizes alike;
            # the big sizes go last, in rounds of their own, so that t(1) and t(2) are timed among small batches
            # only, as the quick check of a cached curve times them
            small = [T for T in sizes if T < BIG_BATCH]
            for group, n in ((small, repeats), ([T for T in sizes if T >= BIG_BATCH], min(repeats, BIG_REPEATS))):
                for rnd in range(n + 1):  # round 0 warms each size's graph
                    for T in group:
                        step(1)  # the plain step before it
                        dt = step(T)
                        if rnd:
                            times[T].append(dt)
            out = {T: statistics.median(v) for T, v in times.items()}
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
            llama_cpp.llama_set_embeddings(ctx, False)
            llm.n_tokens = 0
        return out

    # ------------------------------------------------------------------ the cache
    def _mem(self):
        return llama_cpp.llama_get_memory(self.llm._ctx.ctx)

    def kv_len(self) -> int:
        return int(llama_cpp.llama_memory_seq_pos_max(self._mem(), 0)) + 1

    def truncate(self, n: int) -> None:
        """Forgets every cell at position >= n in every sequence (stock's kv_cache_seq_rm(-1, ...) only reaches
        sequence 0)."""
        llama_cpp.llama_memory_seq_rm(self._mem(), -1, n, -1)
        self.llm.n_tokens = min(self.llm.n_tokens, n)

    def mirror(self, start: int) -> None:
        """Copies sequence 0's cells from `start` on into every other sequence (metadata only)."""
        mem = self._mem()
        for s in range(1, self.n_seq):
            llama_cpp.llama_memory_seq_cp(mem, 0, s, start, -1)

    # ------------------------------------------------------------------ stock entry points, kept consistent
    def generate_plainly(self, tokens, reset: bool, stopping_criteria, sampling: dict):
        return llama_cpp.Llama.generate(self.llm, tokens, reset=reset, stopping_criteria=stopping_criteria, **sampling)

    def sample(self, *args, **kwargs) -> int:
        return llama_cpp.Llama.sample(self.llm, *args, **kwargs)

    def reset(self) -> None:
        llama_cpp.Llama.reset(self.llm)
        if self.speculating:
            llama_cpp.llama_memory_seq_rm(self._mem(), -1, -1, -1)

    def eval(self, tokens: Sequence[int]) -> None:
        llm = self.llm
        if not self.speculating:
            return llama_cpp.Llama.eval(llm, tokens)
        # Accepted tokens that were dropped from the cache to keep it in position order are decoded first.
        kv = min(self.kv_len(), llm.n_tokens)
        tokens = [int(t) for t in llm.input_ids[kv : llm.n_tokens]] + list(tokens)
        self.truncate(kv)
        llama_cpp.llama_set_embeddings(llm._ctx.ctx, False)
        llama_cpp.Llama.eval(llm, tokens)
        self.mirror(kv)

    def save_state(self):
        return llama_cpp.Llama.save_state(self.llm)

    def load_state(self, state) -> None:
        llama_cpp.Llama.load_state(self.llm, state)
        if self.speculating:  # a state saved mid-speculation may hold more cells than tokens
            llama_cpp.llama_memory_seq_rm(self._mem(), -1, self.llm.n_tokens, -1)
            self.mirror(0)

    def embed(self, input, normalize: bool = False, truncate: bool = True, return_count: bool = False):
        """Stock's embed() on the tree context, one text per decode. The tree context pools nothing (the tree
        needs every token's state), so the pooling of the context the user asked for (mean, CLS, last) is applied
        here to the per-token states. One text per decode because stock's reader of unpooled batches offsets
        every text after the first by its predecessors' token count in floats instead of rows (llama-cpp-python
        0.3.36), which returns other texts' numbers for them."""
        llm = self.llm
        stock_embed = llama_cpp.Llama.embed
        if not self.speculating:
            return stock_embed(llm, input, normalize=normalize, truncate=truncate, return_count=return_count)
        pooling = llm._user_pooling
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
        llm.context_params.embeddings = True
        llama_cpp.llama_set_embeddings(llm._ctx.ctx, True)
        try:
            for text in [input] if isinstance(input, str) else input:
                rows, n = stock_embed(llm, text, normalize=normalize and pick is None, truncate=truncate,
                                      return_count=True)
                count += n
                if pick is not None:
                    rows = [float(x) for x in pick(np.asarray(rows, dtype=np.float32))]
                    rows = internals.normalize_embedding(rows) if normalize else rows
                data.append(rows)
        finally:
            llm.context_params.embeddings = False
            llama_cpp.llama_set_embeddings(llm._ctx.ctx, False)
        data = data[0] if isinstance(input, str) else data
        return (data, count) if return_count else data

    def create_embedding(self, *args, **kwargs):
        return llama_cpp.Llama.create_embedding(self.llm, *args, **kwargs)


def thread_counts() -> List[int]:
    """1, the powers of two below the cores this process may use, and all of them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return sorted({1, cores} | {c for c in (2, 4, 8, 16, 32, 64) if c < cores})


def fit_buffers_to_context(llm) -> None:
    """llama.cpp rounds n_ctx up (to 256); stock sizes its token/score arrays by the requested n_ctx but generates
    up to the real one. Size them by the real one so a full window fits."""
    llm._n_ctx = llm.n_ctx()
    if llm.input_ids.shape[0] < llm._n_ctx:
        llm.input_ids = np.zeros((llm._n_ctx,), dtype=np.intc)
        if llm._logits_all:
            llm.scores = np.zeros((llm._n_ctx, llm._n_vocab), dtype=np.single)


def pool_nothing(llm: llama_cpp.Llama) -> None:
    """Makes the context llm builds next return every token's state (pooling NONE), naming NONE only where the
    current context pools: naming it where the model's default already resolves to it makes llama.cpp log "model
    default pooling_type is [-1], but [0] was specified" on every load."""
    if llama_cpp.llama_pooling_type(llm._ctx.ctx) != llama_cpp.LLAMA_POOLING_TYPE_NONE:
        llm.context_params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE


def _put(b, i: int, tok: int, pos: int, seqs) -> None:
    b.token[i] = tok
    b.pos[i] = pos
    k = 0
    for s in seqs:
        b.seq_id[i][k] = s
        k += 1
    b.n_seq_id[i] = k
    b.logits[i] = True
