"""BitNet b1.58 GGUFs in bitnet.cpp's I2_S format, run by the native engine (cpp/bitnet.cpp).

Architectures: "bitnet-b1.58" (BitNet-b1.58-2B-4T; "bitnet-25" is its earlier name) with the ReLU^2 FFN, and
upstream llama.cpp's "bitnet" with SiLU (the variant stock llama.cpp runs, so the one we can compare against).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from .gguf_file import I2_S, GGUFFile, type_name
from .packing import cache_aligned

ARCHS = {"bitnet-b1.58": True, "bitnet-25": True, "bitnet": False}  # arch -> ReLU^2 FFN (else SiLU)
TERNARY = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")


def read_config(f: GGUFFile, n_ctx: Optional[int] = None) -> Dict:
    arch = f.fields.get("general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"{f.path}: architecture {arch!r} is not a BitNet b1.58 model "
                         f"(expected one of {', '.join(ARCHS)})")

    def key(name, default=None):
        v = f.fields.get(f"{arch}.{name}", default)
        if v is None:
            raise ValueError(f"{f.path}: metadata {arch}.{name} is missing")
        return v

    emb = f.tensor("token_embd.weight")
    n_embd = int(key("embedding_length"))
    cfg = dict(
        arch=arch, n_embd=n_embd, n_layer=int(key("block_count")), n_head=int(key("attention.head_count")),
        n_head_kv=int(key("attention.head_count_kv")), n_ff=int(key("feed_forward_length")),
        n_vocab=int(emb.shape[1]), rope_theta=float(key("rope.freq_base", 10000.0)),
        eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)), relu2=ARCHS[arch],
        n_ctx_train=int(key("context_length", 4096)),
    )
    cfg["n_ctx"] = int(n_ctx or min(cfg["n_ctx_train"], 4096))
    return cfg


# Forces a small-M ternary kernel ("scalar", "avx2", "avx512_vnni", "lut") instead of the one timed fastest at load.
KERNEL_ENV = "LLAMA_MEDUSA_TERNARY_KERNEL"
_chosen: Dict[int, Tuple[str, Dict[str, float]]] = {}  # threads -> (kernel, seconds per kernel), once per process


def choose_kernel(n_threads: int, forced: Optional[str] = None) -> Tuple[str, Dict[str, float]]:
    """The ternary kernel the engine uses, set for the process: `forced` (or $LLAMA_MEDUSA_TERNARY_KERNEL) when
    given, refused if this CPU or build lacks it; else the available kernel fastest over 1 and 4 tokens on
    2B-4T-wide matrices (16 MB, timed in a few milliseconds). Returns (kernel, seconds per kernel)."""
    from ... import _native

    forced = forced or os.environ.get(KERNEL_ENV) or None
    if forced:
        _native.set_ternary_kernel(forced)  # a ValueError that lists the available ones
        return forced, {}
    if n_threads not in _chosen:
        names = [k for k in _native.ternary_kernels() if k != "scalar"] or ["scalar"]
        rng = np.random.default_rng(0)
        mats = [cache_aligned(rng.integers(0, 256, (1024, 2560 // 4), dtype=np.uint8) & 0xAA) for _ in range(6)]
        timings = {}
        for name in names:
            t = 0.0
            for M in (1, 4):
                acts = {2560: tuple(map(cache_aligned, _native.quantize_acts(rng.standard_normal((M, 2560))
                                                                             .astype(np.float32))))}
                t += _native.ternary_sequence_timed(mats, acts, n_threads, 5, name)
            timings[name] = t
        _chosen[n_threads] = (min(timings, key=timings.get), timings)
    kernel, timings = _chosen[n_threads]
    _native.set_ternary_kernel(kernel)
    return kernel, timings


class BitnetModel:
    """An I2_S BitNet GGUF mapped into memory and the native engine over it."""

    def __init__(self, path: str, n_ctx: Optional[int] = None, n_threads: Optional[int] = None,
                 file: Optional[GGUFFile] = None, kernel: Optional[str] = None):
        """file: `path` already parsed (Llama parses it once to pick this backbone; its tokenizer is large).
        kernel: force a small-M ternary kernel (see choose_kernel)."""
        from ... import _native

        if file is None:
            if not os.path.exists(path):
                raise ValueError(f"{path}: no such file")
            file = GGUFFile(path)
        self.file = f = file
        self.config = cfg = read_config(f, n_ctx)
        H, F = cfg["n_embd"], cfg["n_ff"]
        kvw = cfg["n_head_kv"] * (H // cfg["n_head"])
        shapes = {"attn_q": (H, H), "attn_k": (H, kvw), "attn_v": (H, kvw), "attn_output": (H, H),
                  "ffn_gate": (H, F), "ffn_up": (H, F), "ffn_down": (F, H)}
        layers = []
        for i in range(cfg["n_layer"]):
            d = {}
            for name in TERNARY:
                t = f.tensor(f"blk.{i}.{name}.weight")
                if t.type != I2_S:
                    raise ValueError(f"{path}: blk.{i}.{name}.weight is {type_name(t.type)}; this engine runs I2_S "
                                     "(convert other types with llama.cpp instead)")
                if tuple(t.shape) != shapes[name]:
                    raise ValueError(f"{path}: blk.{i}.{name}.weight has shape {t.shape}, expected {shapes[name]}")
                d[name] = f.i2s(t.name)
            for name in NORMS:
                d[name] = np.ascontiguousarray(f.array(f"blk.{i}.{name}.weight"), dtype=np.float32)
            layers.append(d)
        emb = f.array("token_embd.weight")
        if emb.dtype != np.float16 or emb.shape[1] != H:
            raise ValueError(f"{path}: token_embd.weight must be F16 [{H}, vocab]")
        out = f.array("output.weight").view(np.uint16) if "output.weight" in f.tensors else None
        threads = n_threads or max(1, os.cpu_count() or 1)
        self.kernel, self.kernel_timings = choose_kernel(threads, kernel)
        self.engine = _native.BitnetEngine(
            {k: cfg[k] for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_vocab", "n_ctx", "rope_theta",
                                 "eps", "relu2")},
            layers, emb.view(np.uint16), np.asarray(f.array("output_norm.weight"), np.float32), out,
            threads,
        )

    # -- the backbone interface the decoder uses
    @property
    def n_past(self) -> int:
        return self.engine.n_past

    def forward(self, tokens, parents=None, logits: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Nodes (tokens; parents = batch index or -1 for the committed prefix; None: a plain sequence) ->
        (hidden, logits). Positions are n_past + depth in the tree."""
        tokens = np.asarray(tokens, dtype=np.int32)
        if parents is None:  # a plain sequence: each token's parent is the one before it
            parents = np.arange(-1, len(tokens) - 1, dtype=np.int32)
        parents = np.asarray(parents, np.int32)
        depth = np.zeros(len(tokens), np.int32)
        for i, p in enumerate(parents):
            if p >= i:
                raise ValueError(f"node {i}: its parent {p} must come earlier in the batch")
            depth[i] = 0 if p < 0 else depth[p] + 1
        return self.engine.forward(tokens, self.n_past + depth, parents, logits)

    def commit(self, idx) -> None:
        self.engine.commit(np.asarray(idx, np.int32))

    def truncate(self, n_past: int) -> None:
        self.engine.truncate(n_past)

    def greedy(self, prompt, n: int):
        """Plain greedy decoding (one token per pass): the reference a tree decoder must reproduce."""
        _, lg = self.forward(prompt)
        self.commit(range(len(prompt)))
        out = []
        for _ in range(n):
            t = int(np.argmax(lg[-1]))
            out.append(t)
            _, lg = self.forward([t])
            self.commit([0])
        return out
