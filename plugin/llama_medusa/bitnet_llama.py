"""`Llama(model_path="ggml-model-i2_s.gguf")`: the same Llama, with the native BitNet engine as the backbone.

llama.cpp cannot load I2_S files (type 36 is bitnet.cpp's; the "bitnet-b1.58" graph is not upstream's), but
everything around the backbone should still be llama.cpp's: tokenizer, chat template, samplers, grammar. So
llama-cpp-python loads a tokenizer-only GGUF made from the I2_S file's metadata (vocab_only: no tensors, no KV
cache), and the native engine (cpp/bitnet.cpp) computes. Samplers run on the engine's logits through
llama_sampler_apply, the call llama_sampler_sample makes on a context's logits.

The decoder (_MedusaRun in llama.py) is the same one: it reaches the backbone through the hooks overridden here.
The engine verifies a tree in one pass and commits any root-to-leaf path, so nothing is decoded twice. Plain
decoding (no heads, or "auto" finding no tree that wins) is the same loop with a one-node tree.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import statistics
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

import llama_cpp

from .bitnet import ARCHS, BitnetModel
from .i2s_gguf import I2_S, GGUFFile, peek_architecture, write_gguf
from .llama import EXACT_MAX_BATCH, Llama, _MedusaState
from .tree import Tree

_HEAD_TENSOR = re.compile(r"^medusa\.head\.\d+\.")
# llama_token_data {int32 id; float logit; float p}
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def open_i2s_gguf(path) -> Optional[GGUFFile]:
    """The parsed file when it is a GGUF the native engine runs (a BitNet architecture with I2_S tensors), else
    None. Other GGUFs are not parsed beyond their first keys."""
    try:
        arch = peek_architecture(os.fspath(path))
    except (OSError, TypeError):
        return None  # llama.cpp reports a missing or unreadable file in its own words
    if arch is not None and arch not in ARCHS:
        return None
    try:
        f = GGUFFile(os.fspath(path))
    except ValueError:
        if arch is None:
            return None  # not ours to judge: llama.cpp reports what is wrong with it
        raise  # a BitNet file: our reader's message says what is wrong (truncated, bad type, ...)
    if f.fields.get("general.architecture") not in ARCHS or not any(t.type == I2_S for t in f.tensors.values()):
        return None
    return f


def is_i2s_gguf(path) -> bool:
    return open_i2s_gguf(path) is not None


def vocab_gguf(f: GGUFFile) -> str:
    """A tokenizer-only GGUF (arch "bitnet", f's metadata, no tensors) for llama.cpp's vocab_only load, cached
    per source file (path, size, mtime)."""
    from .convert import upstream_metadata
    from .models import cache_dir

    st = os.stat(f.path)
    key = f"{os.path.abspath(f.path)}|{st.st_size}|{st.st_mtime_ns}"
    out = os.path.join(cache_dir(), "vocab", hashlib.sha1(key.encode()).hexdigest() + ".gguf")
    if os.path.exists(out):
        return out
    if "tokenizer.ggml.tokens" not in f.fields:
        raise ValueError(f"{f.path}: no tokenizer in this GGUF (tokenizer.ggml.* metadata missing)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    fields, types = upstream_metadata(f)
    write_gguf(tmp, fields, [], types)
    os.replace(tmp, out)
    return out


class BitnetLlama(Llama):
    """llama_medusa.Llama over the native BitNet engine. Made by Llama(...) when model_path is an I2_S GGUF."""

    _own_plain_decoding = True

    # ------------------------------------------------------------------ loading
    def _load_backbone(self, model_path: str, *args, **kwargs) -> None:
        for key in ("n_gpu_layers", "embedding", "lora_path"):
            if kwargs.get(key):
                raise ValueError(f"{key}= is not supported by the native BitNet engine (CPU, generation only)")
        f = self.__dict__.pop("_i2s_file", None) or GGUFFile(os.fspath(model_path))  # set by Llama.__new__
        n_ctx = kwargs.get("n_ctx", 512)
        if not n_ctx:  # 0 = the model's training context, as in llama-cpp-python
            n_ctx = int(f.fields.get(f"{f.fields['general.architecture']}.context_length", 4096))
        kwargs["n_ctx"] = n_ctx
        kwargs["vocab_only"] = True
        llama_cpp.Llama.__init__(self, vocab_gguf(f), *args, **kwargs)
        self.model_path = os.fspath(model_path)
        self._fit_buffers_to_context()  # the engine's cache follows llama.cpp's rounded window
        self._bitnet = BitnetModel(self.model_path, n_ctx=self._n_ctx, n_threads=self.n_threads_batch, file=f)
        if self._bitnet.config["n_vocab"] != self._n_vocab:
            raise ValueError(f"{model_path}: the tokenizer has {self._n_vocab} tokens but token_embd has "
                             f"{self._bitnet.config['n_vocab']} rows")
        self._cand = np.zeros(self._n_vocab, _TOKEN_DATA)
        self._cand_ids = np.arange(self._n_vocab, dtype=np.int32)
        self._cand_arr = llama_cpp.llama_token_data_array(
            data=self._cand.ctypes.data_as(llama_cpp.llama_token_data_p), size=self._n_vocab, selected=-1, sorted=False
        )
        self._last_row = None  # logits of the last evaluated token
        self._vhidden = self._vlogits = None  # the last verify pass
        self._medusa = None

    def __init__(self, model_path: str, *args, **kwargs):
        super().__init__(model_path, *args, **kwargs)
        if self._medusa is None:  # no heads: plain decoding through the same loop
            self._medusa = _MedusaState(None, Tree([]), 1, self._n_embd(), None, EXACT_MAX_BATCH)

    def _n_embd(self) -> int:
        return int(self._bitnet.config["n_embd"])

    def _backbone_projection(self, heads) -> Optional[np.ndarray]:
        if not heads.shared_projection:
            return None
        f = self._bitnet.file
        name = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
        return f.array(name)  # float16 [n_vocab, n_embd], memory-mapped

    def _token_embedding(self):
        from .gguf_heads import TokenEmbedding

        return TokenEmbedding.from_array(self._bitnet.file.array("token_embd.weight"), self.model_path)

    def _embedded_heads(self):
        """MedusaBitNet's heads stored in the model's own GGUF (medusa.head.{k}.layer.{l}.w_in/w_out)."""
        if any(_HEAD_TENSOR.match(n) for n in self._bitnet.file.tensors):
            from .gguf_heads import load_gguf_heads

            return load_gguf_heads(self.model_path, parsed=self._bitnet.file)
        return None

    def _heads_device(self, want: str, heads) -> str:
        return "cpu" if want == "auto" else super()._heads_device(want, heads)

    def _prepare_context(self, n_seq: int) -> None:
        self._truncate(0)

    # ------------------------------------------------------------------ stock entry points
    def reset(self):
        self.n_tokens = 0
        self._requires_eval = True
        self._bitnet.truncate(0)

    def eval(self, tokens: Sequence[int]):
        """Decodes pending accepted tokens and `tokens` as a chain, n_batch at a time, and commits them."""
        kv = self._bitnet.n_past
        if kv > self.n_tokens:
            self._bitnet.truncate(self.n_tokens)
            kv = self.n_tokens
        toks = [int(t) for t in self.input_ids[kv : self.n_tokens]] + [int(t) for t in tokens]
        if kv + len(toks) > self._n_ctx:
            raise ValueError(f"Requested tokens ({kv + len(toks)}) exceed context window of {self._n_ctx}")
        hidden = None
        for i in range(0, len(toks), self.n_batch):
            chunk = toks[i : i + self.n_batch]
            p0 = self._bitnet.n_past
            hidden, logits = self._bitnet.forward(chunk, logits=self._logits_all)
            self._bitnet.commit(range(len(chunk)))
            self.input_ids[p0 : p0 + len(chunk)] = chunk
            if self._logits_all:
                self.scores[p0 : p0 + len(chunk), :] = logits
        if hidden is not None:  # only the last token's logits are sampled: one projection, after the last chunk
            self._last_row = self.scores[kv + len(toks) - 1].copy() if self._logits_all else \
                self._bitnet.engine.project(hidden[-1:])[0]
        self.n_tokens = kv + len(toks)
        self._requires_eval = False

    def sample(self, *args, idx: Optional[int] = None, **kwargs) -> int:
        """Stock sample() on the last evaluated token's logits (idx other than the last needs logits_all)."""
        if self._last_row is None:
            raise RuntimeError("sample() before eval(): there are no logits yet")
        if idx is not None and idx != self.n_tokens - 1:
            if not self._logits_all:
                raise ValueError("sample(idx=...) of an earlier token needs logits_all=True")
            row = self.scores[idx]
        else:
            row = self._last_row
        tmp = self._sampler is None
        if tmp:
            params = dict(zip(("top_k", "top_p", "min_p", "typical_p", "temp", "repeat_penalty"), args))
            params.update({k: v for k, v in kwargs.items() if k != "idx"})
            self._sampler = self._init_sampler(**params)
        try:
            return self._sample_row(row)
        finally:
            if tmp:
                self._sampler = None

    def save_state(self):
        raise NotImplementedError("the native BitNet engine does not save or restore states")

    def load_state(self, state) -> None:
        raise NotImplementedError("the native BitNet engine does not save or restore states")

    def embed(self, *args, **kwargs):
        raise NotImplementedError("the native BitNet engine generates text; it does not compute embeddings")

    def create_embedding(self, *args, **kwargs):
        raise NotImplementedError("the native BitNet engine generates text; it does not compute embeddings")

    # ------------------------------------------------------------------ the backbone hooks
    def _kv_len(self) -> int:
        return self._bitnet.n_past

    def _truncate(self, n: int) -> None:
        self._bitnet.truncate(min(n, self._bitnet.n_past))
        self.n_tokens = min(self.n_tokens, n)

    def _pending(self):
        kv = self._bitnet.n_past
        if self.n_tokens - kv > self._medusa.max_depth:  # tokens pushed with send(): decode them first
            self.eval([])
            kv = self.n_tokens
        return kv, [int(t) for t in self.input_ids[kv : self.n_tokens]]

    def _verify(self, pending: List[int], kv: int, P: int, tree: Tree, node_tokens: List[int]) -> int:
        base = len(pending)
        parents = list(range(-1, base - 1))  # the pending chain, then the root after it, then the tree
        parents += [base - 1] + [base + n.parent for n in tree.nodes[1:]]
        self._vhidden, self._vlogits = self._bitnet.forward(pending + list(node_tokens), parents)
        self._medusa.base = base
        return base + len(node_tokens)

    def _node_logits(self, i: int) -> np.ndarray:
        return self._vlogits[self._medusa.base + i]  # a view, valid until the next verify (as Llama's)

    def _sample_node(self, i: int) -> int:
        return self._sample_row(self._vlogits[self._medusa.base + i])

    def _node_hidden(self, i: int) -> np.ndarray:
        return self._vhidden[self._medusa.base + i].copy()

    def _last_logits(self) -> np.ndarray:
        return self._last_row.copy()

    def _sample_last(self) -> int:
        return self._sample_row(self._last_row)

    def _keep(self, P: int, tree: Tree, path: List[int]) -> None:
        base = self._medusa.base
        self._bitnet.commit(list(range(base)) + [base + i for i in path])
        self._last_row = self._vlogits[base + path[-1]]

    def _sample_row(self, row: np.ndarray) -> int:
        """The sampler chain on one row of logits: what llama_sampler_sample does with a context's logits."""
        c = self._cand
        c["id"] = self._cand_ids  # samplers sort and cut the array in place
        c["logit"] = row
        c["p"] = 0.0
        a = self._cand_arr
        a.size, a.selected, a.sorted = self._n_vocab, -1, False
        smpl = self._sampler.sampler
        llama_cpp.llama_sampler_apply(smpl, ctypes.byref(a))
        if not 0 <= a.selected < a.size:
            raise RuntimeError(f"the sampler chain selected no token (selected={a.selected})")
        tok = int(a.data[a.selected].id)
        llama_cpp.llama_sampler_accept(smpl, tok)
        return tok

    def _measure_verify(self, sizes: Sequence[int], repeats: int) -> Dict[int, float]:
        """Median seconds of one engine pass of T chained tokens after a 60-token prefix."""
        prefix = self.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6)
        eng = self._bitnet
        try:
            eng.truncate(0)
            eng.forward(prefix, logits=False)
            eng.commit(range(len(prefix)))
            times: Dict[int, List[float]] = {T: [] for T in sizes}
            # sizes interleaved round after round, as for llama.cpp (autotree.time_llama_decode): a slow spell on
            # a shared machine then hits every size alike; round 0 warms up
            for rnd in range(repeats + 1):
                for T in sizes:
                    t0 = time.perf_counter()
                    eng.forward([prefix[i % len(prefix)] for i in range(T)])
                    if rnd:
                        times[T].append(time.perf_counter() - t0)
            out = {T: statistics.median(v) for T, v in times.items()}
        finally:
            eng.truncate(0)
            self.n_tokens = 0
        return out
