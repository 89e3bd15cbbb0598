"""The native I2_S backbone: BitNet b1.58 GGUFs in bitnet.cpp's format, computed by cpp/bitnet.cpp.

llama.cpp cannot load I2_S files (type 36 is bitnet.cpp's; the "bitnet-b1.58" graph is not upstream's), but
everything around the backbone should still be llama.cpp's: tokenizer, chat template, samplers, grammar. So
llama-cpp-python loads a tokenizer-only GGUF made from the I2_S file's metadata (vocab_only: no tensors, no KV
cache), and the native engine computes. Samplers run on the engine's logits through llama_sampler_apply, the call
llama_sampler_sample makes on a context's logits. The engine verifies a tree in one pass and commits any
root-to-leaf path, so nothing is decoded twice; plain decoding is the decoder's loop with a one-node tree.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import llama_cpp
import numpy as np

from ... import decoder
from ...drafting.tree import Tree
from ..base import PendingTokens, Unsupported
from ..llamacpp import fit_buffers_to_context
from .engine import ARCHS, BitnetModel
from .gguf_file import I2_S, GGUFFile, peek_architecture, write_gguf

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
    from ..gguf_tensors import reader_of

    try:
        f = reader_of(os.fspath(path))  # the parse heads and `auto` reuse (their own reads of the model file)
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
    from ...default_model import cache_dir
    from .convert import upstream_metadata

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


class I2SBackbone(PendingTokens):
    name = "i2s"
    claims = staticmethod(open_i2s_gguf)

    def __init__(self, llm, model_path, f: GGUFFile, *args, **kwargs):
        self.llm = llm
        llm._backbone = self
        for key in ("n_gpu_layers", "embedding", "lora_path"):
            if kwargs.get(key):
                raise ValueError(f"{key}= is not supported by the native BitNet engine (CPU, generation only)")
        n_ctx = kwargs.get("n_ctx", 512)
        if not n_ctx:  # 0 = the model's training context, as in llama-cpp-python
            n_ctx = int(f.fields.get(f"{f.fields['general.architecture']}.context_length", 4096))
        kwargs["n_ctx"] = n_ctx
        kwargs["vocab_only"] = True
        llama_cpp.Llama.__init__(llm, vocab_gguf(f), *args, **kwargs)
        llm.model_path = os.fspath(model_path)
        fit_buffers_to_context(llm)  # the engine's cache follows llama.cpp's rounded window
        self.engine = BitnetModel(llm.model_path, n_ctx=llm._n_ctx, n_threads=llm.n_threads_batch, file=f)
        if self.engine.config["n_vocab"] != llm._n_vocab:
            raise ValueError(f"{model_path}: the tokenizer has {llm._n_vocab} tokens but token_embd has "
                             f"{self.engine.config['n_vocab']} rows")
        self.n_embd = int(self.engine.config["n_embd"])
        self._cand = np.zeros(llm._n_vocab, _TOKEN_DATA)
        self._cand_ids = np.arange(llm._n_vocab, dtype=np.int32)
        self._cand_arr = llama_cpp.llama_token_data_array(
            data=self._cand.ctypes.data_as(llama_cpp.llama_token_data_p), size=llm._n_vocab, selected=-1, sorted=False
        )
        self._last_row = None  # logits of the last evaluated token
        self._vhidden = self._vlogits = None  # the last verify pass
        self.base = 0

    # ------------------------------------------------------------------ what heads read from the model
    def projection(self, heads) -> Optional[np.ndarray]:
        if not heads.shared_projection:
            return None
        f = self.engine.file
        name = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
        return f.array(name)  # float16 [n_vocab, n_embd], memory-mapped

    def token_embedding(self):
        from ..gguf_tensors import TokenEmbedding

        return TokenEmbedding.from_array(self.engine.file.array("token_embd.weight"), self.llm.model_path)

    def embedded_heads(self):
        """MedusaBitNet's heads stored in the model's own GGUF (medusa.head.{k}.layer.{l}.w_in/w_out)."""
        if any(_HEAD_TENSOR.match(n) for n in self.engine.file.tensors):
            from ...heads import MedusaHeads
            from ...heads.medusabitnet import parts

            return MedusaHeads(**parts(self.llm.model_path, parsed=self.engine.file))
        return None

    def heads_device(self, want: str, heads) -> str:
        return "cpu" if want == "auto" else want

    def thread_settings(self) -> List[Tuple[int, int]]:
        return [(self.llm.n_threads, self.llm.n_threads_batch)]  # the engine's pool is sized once, at load

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        pass

    def check_speculation(self) -> None:
        pass  # attention only: every tree fits

    # ------------------------------------------------------------------ stock entry points
    def generate_plainly(self, tokens, reset: bool, stopping_criteria, sampling: dict):
        """No stock loop runs this model: plain decoding is the decoder's loop with a one-node tree."""
        return decoder.generate(self.llm, self, decoder.plain(), tokens, reset, stopping_criteria, sampling)

    def reset(self) -> None:
        self.llm.n_tokens = 0
        self.llm._requires_eval = True
        self.engine.truncate(0)

    def eval(self, tokens: Sequence[int]) -> None:
        """Decodes pending accepted tokens and `tokens` as a chain, n_batch at a time, and commits them."""
        llm, eng = self.llm, self.engine
        kv = eng.n_past
        if kv > llm.n_tokens:
            eng.truncate(llm.n_tokens)
            kv = llm.n_tokens
        toks = [int(t) for t in llm.input_ids[kv : llm.n_tokens]] + [int(t) for t in tokens]
        if kv + len(toks) > llm._n_ctx:
            raise ValueError(f"Requested tokens ({kv + len(toks)}) exceed context window of {llm._n_ctx}")
        hidden = None
        for i in range(0, len(toks), llm.n_batch):
            chunk = toks[i : i + llm.n_batch]
            p0 = eng.n_past
            hidden, logits = eng.forward(chunk, logits=llm._logits_all)
            eng.commit(range(len(chunk)))
            llm.input_ids[p0 : p0 + len(chunk)] = chunk
            if llm._logits_all:
                llm.scores[p0 : p0 + len(chunk), :] = logits
        if hidden is not None:  # only the last token's logits are sampled: one projection, after the last chunk
            self._last_row = llm.scores[kv + len(toks) - 1].copy() if llm._logits_all else \
                eng.engine.project(hidden[-1:])[0]
        llm.n_tokens = kv + len(toks)
        llm._requires_eval = False

    def sample(self, *args, idx: Optional[int] = None, **kwargs) -> int:
        """Stock sample() on the last evaluated token's logits (idx other than the last needs logits_all)."""
        llm = self.llm
        if self._last_row is None:
            raise RuntimeError("sample() before eval(): there are no logits yet")
        if idx is not None and idx != llm.n_tokens - 1:
            if not llm._logits_all:
                raise ValueError("sample(idx=...) of an earlier token needs logits_all=True")
            row = llm.scores[idx]
        else:
            row = self._last_row
        tmp = llm._sampler is None
        if tmp:
            params = dict(zip(("top_k", "top_p", "min_p", "typical_p", "temp", "repeat_penalty"), args))
            params.update({k: v for k, v in kwargs.items() if k != "idx"})
            llm._sampler = llm._init_sampler(**params)
        try:
            return self._sample_row(row)
        finally:
            if tmp:
                llm._sampler = None

    def save_state(self):
        raise Unsupported("the native BitNet engine does not save or restore states")

    def load_state(self, state) -> None:
        raise Unsupported("the native BitNet engine does not save or restore states")

    def embed(self, *args, **kwargs):
        raise Unsupported("the native BitNet engine generates text; it does not compute embeddings")

    create_embedding = embed

    # ------------------------------------------------------------------ the verify pass
    def prepare(self, n_seq: int, batch_capacity: int) -> None:
        self.truncate(0)  # one tree of any shape fits the engine's own cache

    def kv_len(self) -> int:
        return self.engine.n_past

    def truncate(self, n: int) -> None:
        self.engine.truncate(min(n, self.engine.n_past))
        self.llm.n_tokens = min(self.llm.n_tokens, n)

    def mirror(self, start: int) -> None:
        pass  # one sequence: the engine commits the accepted path itself

    def verify(self, pending: List[int], kv: int, P: int, tree: Tree, node_tokens: List[int],
               need_hidden: bool) -> int:
        base = len(pending)
        parents = list(range(-1, base - 1))  # the pending chain, then the root after it, then the tree
        parents += [base - 1] + [base + n.parent for n in tree.nodes[1:]]
        self._vhidden, self._vlogits = self.engine.forward(pending + list(node_tokens), parents)
        self.base = base
        return base + len(node_tokens)

    def node_logits(self, i: int) -> np.ndarray:
        return self._vlogits[self.base + i]  # a view, valid until the next verify (as llama.cpp's)

    def sample_node(self, i: int) -> int:
        return self._sample_row(self._vlogits[self.base + i])

    def node_hidden(self, i: int) -> np.ndarray:
        return self._vhidden[self.base + i].copy()

    def last_logits(self) -> np.ndarray:
        return self._last_row.copy()

    def sample_last(self) -> int:
        return self._sample_row(self._last_row)

    def keep(self, P: int, tree: Tree, path: List[int]) -> None:
        base = self.base
        self.engine.commit(list(range(base)) + [base + i for i in path])
        self._last_row = self._vlogits[base + path[-1]]

    def _sample_row(self, row: np.ndarray) -> int:
        """The sampler chain on one row of logits: what llama_sampler_sample does with a context's logits."""
        n_vocab = self.llm._n_vocab
        c = self._cand
        c["id"] = self._cand_ids  # samplers sort and cut the array in place
        c["logit"] = row
        c["p"] = 0.0
        a = self._cand_arr
        a.size, a.selected, a.sorted = n_vocab, -1, False
        smpl = self.llm._sampler.sampler
        llama_cpp.llama_sampler_apply(smpl, ctypes.byref(a))
        if not 0 <= a.selected < a.size:
            raise RuntimeError(f"the sampler chain selected no token (selected={a.selected})")
        tok = int(a.data[a.selected].id)
        llama_cpp.llama_sampler_accept(smpl, tok)
        return tok

    def measure_verify(self, sizes: Sequence[int], repeats: int) -> Dict[int, float]:
        """Median seconds of one engine pass of T chained tokens after a 60-token prefix."""
        llm, eng = self.llm, self.engine
        prefix = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6)
        try:
            eng.truncate(0)
            eng.forward(prefix, logits=False)
            eng.commit(range(len(prefix)))
            times: Dict[int, List[float]] = {T: [] for T in sizes}
            # sizes interleaved round after round, as for llama.cpp: a slow spell on a shared machine then hits
            # every size alike; round 0 warms up
            for rnd in range(repeats + 1):
                for T in sizes:
                    t0 = time.perf_counter()
                    eng.forward([prefix[i % len(prefix)] for i in range(T)])
                    if rnd:
                        times[T].append(time.perf_counter() - t0)
            out = {T: statistics.median(v) for T, v in times.items()}
        finally:
            eng.truncate(0)
            llm.n_tokens = 0
        return out
