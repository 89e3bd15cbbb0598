"""EAGLE draft heads (Li et al. 2024): one decoder layer that carries the backbone's final-norm feature forward.

Input at draft position t is fc(concat(e(x_{t+1}), f_t)) (embedding first, as EAGLE's cnets1.py); layer 0 has no
input norm, so that is both the attention input and the residual; then the post-attention RMSNorm and a SwiGLU MLP.
Its output g_t stands for f_{t+1}: the backbone's output matrix, restricted to the draft vocabulary, turns it into
the candidates for x_{t+2}, and (g_t, x_{t+2}) is the input one position further on.

The tensor names are EAGLE-1/2's checkpoint keys (``fc.weight``, ``layers.0.self_attn.q_proj.weight``, ...), so
this project's file (one safetensors, the config in its metadata) and a published checkpoint (a directory with
config.json and model.safetensors) load through the same code. ``EagleHeads.forward`` is the numpy reference every
other implementation (the decoder's drafter, the JAX trainer, tests) is checked against.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

FORMAT_KEY = "llama_medusa_eagle"
LAYER = "layers.0."
MATRICES = {  # name -> shape as a function of the config (rows, cols)
    "fc.weight": lambda c: (c["hidden_size"], 2 * c["hidden_size"]),
    LAYER + "self_attn.q_proj.weight": lambda c: (c["num_attention_heads"] * c["head_dim"], c["hidden_size"]),
    LAYER + "self_attn.k_proj.weight": lambda c: (c["num_key_value_heads"] * c["head_dim"], c["hidden_size"]),
    LAYER + "self_attn.v_proj.weight": lambda c: (c["num_key_value_heads"] * c["head_dim"], c["hidden_size"]),
    LAYER + "self_attn.o_proj.weight": lambda c: (c["hidden_size"], c["num_attention_heads"] * c["head_dim"]),
    LAYER + "mlp.gate_proj.weight": lambda c: (c["intermediate_size"], c["hidden_size"]),
    LAYER + "mlp.up_proj.weight": lambda c: (c["intermediate_size"], c["hidden_size"]),
    LAYER + "mlp.down_proj.weight": lambda c: (c["hidden_size"], c["intermediate_size"]),
    LAYER + "post_attention_layernorm.weight": lambda c: (c["hidden_size"],),
}
OPTIONAL = {  # biases a checkpoint may carry (config "bias" / "qkv_bias")
    "fc.bias": lambda c: (c["hidden_size"],),
    LAYER + "self_attn.q_proj.bias": lambda c: (c["num_attention_heads"] * c["head_dim"],),
    LAYER + "self_attn.k_proj.bias": lambda c: (c["num_key_value_heads"] * c["head_dim"],),
    LAYER + "self_attn.v_proj.bias": lambda c: (c["num_key_value_heads"] * c["head_dim"],),
}
IGNORED = ("embed_tokens.weight",)  # EAGLE's copy of the backbone's embedding: the backbone's own is used
CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
DEFAULT_DEPTH = 5  # deepest tree level drafted (EAGLE-2's eval scripts use 5-7; a CPU tree rarely pays past 5)


def config_of(raw: Dict[str, Any], where: str) -> Dict[str, Any]:
    """The fields the forward pass reads, from an EAGLE / Hugging Face config.json dict."""
    missing = [k for k in CONFIG_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{where}: the EAGLE config lacks {', '.join(missing)}")
    if int(raw.get("num_hidden_layers", 1)) != 1:
        raise ValueError(f"{where}: EAGLE drafts have one decoder layer, the config says {raw['num_hidden_layers']}")
    scaling = raw.get("rope_scaling")
    if scaling and scaling.get("type", scaling.get("rope_type")) not in (None, "default", "linear"):
        raise ValueError(f"{where}: rope_scaling {scaling} is not supported (default and linear are)")
    c = {k: int(raw[k]) for k in CONFIG_KEYS}
    c["head_dim"] = int(raw.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
    c["rms_norm_eps"] = float(raw.get("rms_norm_eps", 1e-6))
    c["rope_theta"] = float(raw.get("rope_theta", 10000.0))
    c["rope_scale"] = float(scaling.get("factor", 1.0)) if scaling else 1.0
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        raise ValueError(f"{where}: {c['num_attention_heads']} attention heads do not share "
                         f"{c['num_key_value_heads']} key/value heads evenly")
    return c


@dataclass
class EagleHeads:
    """An EAGLE draft layer with what the decoder needs beside it (drafting/eagle.py runs it)."""

    weights: Dict[str, np.ndarray]
    config: Dict[str, Any]
    source: str = "<memory>"
    format: str = "eagle"
    meta: Dict[str, Any] = field(default_factory=dict)
    draft_vocab: Optional[np.ndarray] = None  # token ids the draft may propose (sorted), None = all
    # softmax temperature per depth, fitted on held-out answers (calibration: the tree is grown by these
    # probabilities and sized by the expected tokens they give); 1.0 where none was fitted
    temperature: Optional[np.ndarray] = None
    n_heads: int = DEFAULT_DEPTH  # deepest tree level it drafts (the decoder's name for it)
    answers: Optional[np.ndarray] = None  # as MedusaHeads: the lookup's second source
    reference: Optional[np.ndarray] = None
    reference_prompt_tokens: Optional[np.ndarray] = None

    conditioned = True  # each draft sees its own path (and needs the backbone's token embedding)
    shared_projection = True
    vocab_size = None

    def __post_init__(self):
        c = self.config
        for name in IGNORED:
            self.weights.pop(name, None)
        for table, required in ((MATRICES, True), (OPTIONAL, False)):
            for name, shape in table.items():
                w = self.weights.get(name)
                if w is None:
                    if required:
                        raise ValueError(f"{self.source}: EAGLE tensor {name} is missing")
                    continue
                if tuple(w.shape) != shape(c):
                    raise ValueError(f"{self.source}: EAGLE tensor {name} has shape {tuple(w.shape)}, the config "
                                     f"(hidden size {c['hidden_size']}) needs {shape(c)}")
                self.weights[name] = np.ascontiguousarray(w, dtype=np.float32)
        unknown = sorted(set(self.weights) - set(MATRICES) - set(OPTIONAL))
        if unknown:
            raise ValueError(f"{self.source}: unknown tensors for an EAGLE-1/2 draft layer: {', '.join(unknown[:4])}"
                             " (EAGLE-3 checkpoints, with their own norm and vocabulary, are not supported)")
        if self.draft_vocab is not None:
            dv = np.asarray(self.draft_vocab)
            if dv.ndim != 1 or len(dv) == 0 or dv.min() < 0 or np.any(np.diff(dv) <= 0):
                raise ValueError(f"{self.source}: draft_vocab must be a non-empty sorted list of distinct token ids")
            self.draft_vocab = dv.astype(np.int32)
        t = np.ones(self.n_heads) if self.temperature is None else np.asarray(self.temperature, np.float64)
        if t.ndim != 1 or len(t) < 1 or not np.all(t > 0):
            raise ValueError(f"{self.source}: temperature must be a list of positive numbers, got {t}")
        self.temperature = np.concatenate([t, np.full(max(self.n_heads - len(t), 0), t[-1])])

    @property
    def hidden_size(self) -> int:
        return self.config["hidden_size"]

    def check_model(self, n_embd: int, n_vocab: int) -> None:
        if self.hidden_size != n_embd:
            raise ValueError(f"EAGLE heads {self.source} have hidden size {self.hidden_size}, but the model's is "
                             f"{n_embd}: these heads were trained for another model")
        if self.draft_vocab is not None and int(self.draft_vocab.max()) >= n_vocab:
            raise ValueError(f"EAGLE heads {self.source} draft token id {int(self.draft_vocab.max())}, but the "
                             f"model's vocabulary has {n_vocab} tokens: these heads were trained for another model")
        expect = self.meta.get("n_vocab")
        if expect is not None and int(expect) != n_vocab:
            raise ValueError(f"EAGLE heads {self.source} were trained on a model with a {expect}-token vocabulary, "
                             f"this model has {n_vocab}")

    def token_ids(self, local: np.ndarray) -> np.ndarray:
        return local if self.draft_vocab is None else self.draft_vocab[local]

    def reference_texts(self):
        from ..drafting.answers import split

        if self.reference is None:
            return []
        return [(t, int(n)) for t, n in zip(split(self.reference), self.reference_prompt_tokens)]

    # ------------------------------------------------------------------ the numpy reference forward
    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """NeoX / Hugging Face rotate-half RoPE: x [n, heads, head_dim], pos [n]."""
        c = self.config
        d = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d))
        ang = (np.asarray(pos, np.float64) / c["rope_scale"])[:, None] * inv[None, :]
        cos, sin = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def qkv(self, emb: np.ndarray, feat: np.ndarray, pos: np.ndarray):
        """fc, then the rotated queries/keys and values of n inputs: (x, q [n,h,d], k [n,kv,d], v [n,kv,d])."""
        c, W = self.config, self.weights
        x = np.concatenate([emb, feat], axis=1).astype(np.float32) @ W["fc.weight"].T
        if "fc.bias" in W:
            x = x + W["fc.bias"]
        out = []
        for name, heads in (("q", c["num_attention_heads"]), ("k", c["num_key_value_heads"]),
                            ("v", c["num_key_value_heads"])):
            y = x @ W[f"{LAYER}self_attn.{name}_proj.weight"].T
            bias = W.get(f"{LAYER}self_attn.{name}_proj.bias")
            if bias is not None:
                y = y + bias
            out.append(y.reshape(len(x), heads, c["head_dim"]))
        q, k, v = out
        return x, self.rope(q, pos), self.rope(k, pos), v

    def finish(self, x: np.ndarray, q: np.ndarray, keys: np.ndarray, values: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
        """Attention of q [n,h,d] over keys/values [m,kv,d] where mask [n,m] allows, then o_proj, the residual,
        the post-attention norm and the MLP: the output features [n, H]."""
        c, W = self.config, self.weights
        n, h, d = q.shape
        group = h // c["num_key_value_heads"]
        kk = np.repeat(keys, group, axis=1)  # [m, h, d]
        vv = np.repeat(values, group, axis=1)
        s = np.einsum("nhd,mhd->hnm", q, kk) / np.sqrt(d)
        s = np.where(mask[None], s, -np.inf)
        s -= s.max(axis=2, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=2, keepdims=True)
        a = np.einsum("hnm,mhd->nhd", p, vv).reshape(n, h * d)
        x = x + a @ W[LAYER + "self_attn.o_proj.weight"].T
        y = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + c["rms_norm_eps"])
        y = y * W[LAYER + "post_attention_layernorm.weight"]
        g = y @ W[LAYER + "mlp.gate_proj.weight"].T
        u = y @ W[LAYER + "mlp.up_proj.weight"].T
        return (x + (g / (1.0 + np.exp(-g)) * u) @ W[LAYER + "mlp.down_proj.weight"].T).astype(np.float32)

    def forward(self, emb: np.ndarray, feat: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """A causal sequence from scratch: output features [n, H] of inputs (e(x_{t+1}), f_t) at positions pos."""
        x, q, k, v = self.qkv(emb, feat, pos)
        mask = np.tril(np.ones((len(x), len(x)), dtype=bool))
        return self.finish(x, q, k, v, mask)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path) -> "EagleHeads":
        return cls(**read(os.fspath(path)))

    def save(self, path: str, extra_meta: Optional[Dict[str, Any]] = None, half: bool = True) -> None:
        from safetensors.numpy import save_file

        dt = np.float16 if half else np.float32
        tensors = {k: np.ascontiguousarray(v.astype(dt)) for k, v in self.weights.items()}
        tensors["temperature"] = np.asarray(self.temperature, np.float32)
        for name in ("draft_vocab", "answers", "reference", "reference_prompt_tokens"):
            if getattr(self, name) is not None:
                tensors[name] = np.ascontiguousarray(getattr(self, name), dtype=np.int32)
        meta = dict(self.meta, **(extra_meta or {}))
        meta.update(config=self.config, depth=self.n_heads)
        save_file(tensors, path, metadata={FORMAT_KEY: json.dumps(meta)})


def is_eagle(path) -> bool:
    """Whether a heads path is an EAGLE draft: this project's eagle file or a checkpoint directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        cfg = os.path.join(path, "config.json")
        if not os.path.exists(cfg):
            return False
        try:
            with open(cfg) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            return False
        return "medusa_num_heads" not in raw and "num_key_value_heads" in raw
    try:
        with open(path, "rb") as f:
            head = f.read(8 + 4096)
    except OSError:
        return False
    return len(head) > 8 and FORMAT_KEY.encode() in head[8:]


def read(path: str) -> Dict[str, Any]:
    """EagleHeads fields of this project's eagle file or of an EAGLE-1/2 checkpoint directory."""
    from .files import _PICKLE_HINT

    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            try:
                raw = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path}/config.json is not valid JSON ({e})") from None
        st = os.path.join(path, "model.safetensors")
        if not os.path.exists(st):
            if os.path.exists(os.path.join(path, "pytorch_model.bin")):
                hint = _PICKLE_HINT.format(path=os.path.join(path, "pytorch_model.bin"))
                raise ValueError(hint.replace("medusa_lm_head.safetensors", "model.safetensors"))
            raise ValueError(f"{path}: no model.safetensors beside config.json")
        tensors, _ = _tensors(st)
        return dict(weights=tensors, config=config_of(raw, path), source=path, format="eagle-checkpoint")
    tensors, meta = _tensors(path)
    try:
        m = json.loads(meta[FORMAT_KEY])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not an EAGLE heads file of this project ({e})") from None
    ints = {k: tensors.pop(k) for k in ("draft_vocab", "answers", "reference", "reference_prompt_tokens")
            if k in tensors}
    temp = tensors.pop("temperature", None)
    return dict(weights=tensors, config=config_of(m.get("config", {}), path), source=path, meta=m,
                n_heads=int(m.get("depth", DEFAULT_DEPTH)), temperature=temp, **ints)


def _tensors(path: str):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except Exception as e:  # safetensors raises bare exceptions for some malformed headers
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None

