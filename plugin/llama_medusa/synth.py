"""Synthetic GGUFs with random weights: BitNet in I2_S (our own writer: gguf refuses type 36) for kernels, tests and
timing; a small sliding-window (gemma3) model through `gguf` for the tree's KV bookkeeping under SWA. Never a
stand-in for a real model's quality."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .backbones.i2s.gguf_file import I2_S, GGUFFile, i2s_bytes, write_gguf

F32, F16 = 0, 1


def write_bitnet(path: str, n_embd: int = 256, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                 n_ff: int = 384, n_vocab: int = 512, arch: str = "bitnet-b1.58", seed: int = 0,
                 tokenizer_from: Optional[str] = None, rope_theta: float = 500000.0,
                 residual_gain: float = 1.0, heads=None) -> str:
    """Writes a BitNet-2B-4T-architecture GGUF. tokenizer_from: copy tokenizer.* metadata (and the vocabulary
    size, padded up to n_vocab when that is larger) from another GGUF, so llama.cpp can load and tokenise for it.
    residual_gain scales the sub-norm weights: below 1
    the layers' updates are small beside the embedding stream, so logits are less chaotic (random ternary layers
    amplify activation-quantisation noise, and two int8 schemes then disagree on near-ties). heads: MedusaHeads to
    embed as MedusaBitNet does (medusa.head.{k}.layer.{l}.w_in/w_out, F32, projection shared)."""
    rng = np.random.default_rng(seed)
    fields = {"general.architecture": arch, "general.name": f"synthetic {arch}", "general.alignment": 32}
    types = {}
    if tokenizer_from:
        src = GGUFFile(tokenizer_from)
        for k, v in src.fields.items():
            if k.startswith("tokenizer."):
                fields[k] = v
                types[k] = src.types[k]  # token types are INT32, scores FLOAT32: keep the source's exact types
        n_src = len(src.fields["tokenizer.ggml.tokens"])
        if n_vocab > n_src:  # pad to the requested size with user-defined tokens (e.g. 2B-4T's 128,256)
            pad = n_vocab - n_src
            fields["tokenizer.ggml.tokens"] = list(fields["tokenizer.ggml.tokens"]) + [f"<|pad_{i}|>" for i in range(pad)]
            if "tokenizer.ggml.token_type" in fields:
                fields["tokenizer.ggml.token_type"] = list(fields["tokenizer.ggml.token_type"]) + [4] * pad
            if "tokenizer.ggml.scores" in fields:
                fields["tokenizer.ggml.scores"] = list(fields["tokenizer.ggml.scores"]) + [0.0] * pad
        else:
            n_vocab = n_src
    p = arch + "."
    fields.update({p + "context_length": 4096, p + "embedding_length": n_embd, p + "block_count": n_layer,
                   p + "feed_forward_length": n_ff, p + "attention.head_count": n_head,
                   p + "attention.head_count_kv": n_head_kv, p + "rope.dimension_count": n_embd // n_head,
                   p + "attention.layer_norm_rms_epsilon": 1e-5, p + "rope.freq_base": float(rope_theta),
                   p + "vocab_size": n_vocab})
    hd = n_embd // n_head
    tensors = []

    def norm(name, n, gain=1.0):
        tensors.append((name, F32, (n,), (rng.uniform(0.5, 1.5, n) * gain).astype(np.float32).tobytes()))

    def tern(name, rows, cols):
        w = rng.choice(np.array([-1, 0, 1]), size=(rows, cols), p=[0.3, 0.4, 0.3])
        tensors.append((name, I2_S, (cols, rows), i2s_bytes(w, float(rng.uniform(0.5, 2.0)))))

    tensors.append(("token_embd.weight", F16, (n_embd, n_vocab),
                    (rng.standard_normal((n_vocab, n_embd)) * 1.0).astype(np.float16).tobytes()))
    norm("output_norm.weight", n_embd)
    for i in range(n_layer):
        norm(f"blk.{i}.attn_norm.weight", n_embd)
        norm(f"blk.{i}.attn_sub_norm.weight", n_embd, residual_gain)
        norm(f"blk.{i}.ffn_norm.weight", n_embd)
        norm(f"blk.{i}.ffn_sub_norm.weight", n_ff, residual_gain)
        tern(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        tern(f"blk.{i}.attn_k.weight", n_head_kv * hd, n_embd)
        tern(f"blk.{i}.attn_v.weight", n_head_kv * hd, n_embd)
        tern(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        tern(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tern(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tern(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    if heads is not None:
        from .heads.medusabitnet import layout as medusabitnet_layout

        meta, head_tensors = medusabitnet_layout(heads)
        fields.update(meta)
        tensors += [(name, F32, (w.shape[1], w.shape[0]), w.tobytes()) for name, w in head_tensors]
    write_gguf(path, fields, tensors, types=types)
    return path


def write_gemma3(path: str, tokenizer_from: str, window: int = 16, n_embd: int = 256, n_layer: int = 6,
                 n_head: int = 4, n_head_kv: int = 2, n_ff: int = 512, seed: int = 0) -> str:
    """Writes a gemma3-architecture GGUF in F16 (five sliding-window layers per global one, as Gemma 3) with
    `tokenizer_from`'s tokenizer, through `gguf`. It carries its own output matrix: with a tied one the random
    residual stream stays near the input embedding and greedy decoding repeats the last token forever."""
    import gguf

    rng = np.random.default_rng(seed)
    src = gguf.GGUFReader(tokenizer_from)
    w = gguf.GGUFWriter(path, "gemma3")
    hd = n_embd // n_head
    w.add_name("synthetic gemma3")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(window)
    for name, field in src.fields.items():
        if name.startswith("tokenizer."):
            sub = field.types[1] if len(field.types) > 1 else None
            w.add_key_value(name, field.contents(), field.types[0], sub)
    n_vocab = len(src.fields["tokenizer.ggml.tokens"].contents())

    def mat(name, rows, cols, scale=None):
        x = rng.standard_normal((rows, cols)) * (scale if scale is not None else cols ** -0.5)
        w.add_tensor(name, x.astype(np.float16))

    def norm(name, n):  # gemma norms scale by (1 + weight)
        w.add_tensor(name, rng.uniform(0.0, 0.3, n).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, scale=0.05)
    mat("output.weight", n_vocab, n_embd, scale=1.0)
    norm("output_norm.weight", n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        for t in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            norm(p + t + ".weight", n_embd)
        norm(p + "attn_q_norm.weight", hd)
        norm(p + "attn_k_norm.weight", hd)
        mat(p + "attn_q.weight", n_head * hd, n_embd)
        mat(p + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(p + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(p + "attn_output.weight", n_embd, n_head * hd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
