"""A numpy reference of the BitNet b1.58 graph (float64 except where bitnet.cpp quantises: the int8 activations
and the exact integer ternary product), independent of the native engine's code."""
import numpy as np

from llama_medusa.backbones.i2s import packing as i2s


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def quant(x):
    x32 = x.astype(np.float32)
    amax = np.maximum(np.abs(x32).max(-1).astype(np.float64), 1e-5)
    s = (127.0 / amax).astype(np.float32)
    q = np.clip(np.rint(x32 * s[:, None]), -128, 127)
    return q, s


def tern(x, w):
    packed, scale = w
    W = i2s.unpack(np.asarray(packed)).astype(np.float64)
    q, s = quant(x)
    return (q @ W.T) / s[:, None].astype(np.float64) * scale


def rope(v, pos, theta):  # v [n_heads, d]
    d = v.shape[-1]
    half = d // 2
    f = theta ** (-2.0 * np.arange(half) / d)
    a = pos * f
    c, s = np.cos(a), np.sin(a)
    x0, x1 = v[:, :half].copy(), v[:, half:].copy()
    return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)


def forward_sequence(model, tokens):
    """Logits [T, V] and final-norm hidden [T, H] of a plain causal pass over tokens from position 0."""
    cfg, f = model.config, model.file
    H, nh, nkv = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"]
    hd, eps = H // nh, cfg["eps"]
    T = len(tokens)
    emb = f.array("token_embd.weight").astype(np.float64)
    x = emb[tokens]
    for i in range(cfg["n_layer"]):
        g = lambda n, i=i: f.array(f"blk.{i}.{n}.weight").astype(np.float64)
        t = lambda n, i=i: f.i2s(f"blk.{i}.{n}.weight")
        h = rms(x, g("attn_norm"), eps)
        q, k, v = tern(h, t("attn_q")), tern(h, t("attn_k")), tern(h, t("attn_v"))
        q = np.stack([rope(q[p].reshape(nh, hd), p, cfg["rope_theta"]) for p in range(T)])
        k = np.stack([rope(k[p].reshape(nkv, hd), p, cfg["rope_theta"]) for p in range(T)])
        v = v.reshape(T, nkv, hd)
        a = np.zeros((T, nh, hd))
        for p in range(T):
            for hh in range(nh):
                s = k[: p + 1, hh // (nh // nkv)] @ q[p, hh] / np.sqrt(hd)
                w = np.exp(s - s.max())
                a[p, hh] = w @ v[: p + 1, hh // (nh // nkv)] / w.sum()
        x = x + tern(rms(a.reshape(T, H), g("attn_sub_norm"), eps), t("attn_output"))
        h = rms(x, g("ffn_norm"), eps)
        z, u = tern(h, t("ffn_gate")), tern(h, t("ffn_up"))
        act = np.maximum(z, 0) ** 2 if cfg["relu2"] else z / (1 + np.exp(-z))
        x = x + tern(rms(act * u, g("ffn_sub_norm"), eps), t("ffn_down"))
    hidden = rms(x, f.array("output_norm.weight").astype(np.float64), eps)
    return hidden @ emb.T, hidden
